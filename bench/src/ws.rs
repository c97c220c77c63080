//! Opening a STOMP-over-WebSocket session, shared by the scenarios.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub type Ws = WebSocketStream<TcpStream>;

/// Where and as whom every scenario connects.
#[derive(clap::Args, Clone, Debug)]
pub struct Endpoint {
    /// WebSocket URL of the STOMP endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// STOMP `login` header value.
    #[arg(long, default_value = "guest")]
    pub login: String,
    /// STOMP `passcode` header value.
    #[arg(long, default_value = "guest")]
    pub passcode: String,
    /// STOMP `host` header value (RabbitMQ's virtual host).
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

/// Send CONNECT (heart-beats off: the scenarios measure, they do not idle
/// on the server's timers) and wait for CONNECTED.
pub async fn login(s: &mut Ws, ep: &Endpoint, limit: Duration) -> Result<(), String> {
    use futures_util::SinkExt;
    let connect = format!(
        "CONNECT\naccept-version:1.2,1.1,1.0\nhost:{}\nlogin:{}\npasscode:{}\nheart-beat:0,0\n\n\0",
        ep.vhost, ep.login, ep.passcode
    );
    s.send(Message::text(connect))
        .await
        .map_err(|e| format!("send: {}", short(&e.to_string())))?;
    expect(s, "CONNECTED", limit, false).await
}

/// The server address and our source address (127.0.0.(2+worker) when the
/// server is on loopback, so each worker has its own port range).
pub fn resolve(url: &str, index: usize) -> Result<(SocketAddr, Option<IpAddr>), String> {
    let req = url
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    let host = req.uri().host().ok_or("url without host")?.to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve: {e}"))?
        .next()
        .ok_or("no address")?;
    let src = match addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => Some(IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (index % 250) as u8,
        ))),
        _ => None,
    };
    Ok((addr, src))
}

/// TCP connect (from `src`) and WebSocket upgrade offering the STOMP subprotocols.
pub async fn open(
    url: &str,
    addr: SocketAddr,
    src: Option<IpAddr>,
    limit: Duration,
) -> Result<Ws, String> {
    timeout(limit, async {
        let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
        if let Some(ip) = src {
            // Pick the port at connect() time, not at bind(): bind(port 0)
            // cannot reuse TIME_WAIT ports, so back-to-back runs from one
            // source address would run out of them.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on our socket with a c_int option value.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind: {}", e.kind()))?;
        }
        let stream = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp, v11.stomp, v10.stomp"),
        );
        tokio_tungstenite::client_async(req, stream)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| format!("upgrade: {}", short(&e.to_string())))
    })
    .await
    .unwrap_or_else(|_| Err("timeout".into()))
}

/// Read until a frame with `command` arrives (heart-beat EOLs skipped).
pub async fn expect<S>(
    ws: &mut S,
    command: &str,
    limit: Duration,
    close_ok: bool,
) -> Result<(), String>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("timeout".into()),
            Ok(None) => {
                return if close_ok {
                    Ok(())
                } else {
                    Err(format!("closed before {command}"))
                };
            }
            Ok(Some(Err(e))) => {
                return if close_ok {
                    Ok(())
                } else {
                    Err(format!("read: {}", short(&e.to_string())))
                };
            }
            Ok(Some(Ok(m))) => m,
        };
        let data: &[u8] = match &msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            Message::Close(_) => {
                return if close_ok {
                    Ok(())
                } else {
                    Err(format!("closed before {command}"))
                };
            }
            _ => continue,
        };
        let frame = data.strip_prefix(b"\r\n").unwrap_or(data);
        let frame = frame.trim_ascii_start();
        if frame.is_empty() {
            continue; // heart-beat
        }
        if frame.starts_with(command.as_bytes()) {
            return Ok(());
        }
        if frame.starts_with(b"ERROR") {
            return Err(error_kind(frame));
        }
    }
}

/// An ERROR frame as an error kind: its `message` header names the cause
/// (stable wording, so it still groups errors by kind).
pub fn error_kind(frame: &[u8]) -> String {
    let message = std::str::from_utf8(frame)
        .ok()
        .and_then(|f| f.lines().find_map(|l| l.strip_prefix("message:")))
        .unwrap_or("");
    format!("ERROR frame: {}", short(message))
}

/// Error kinds are counted, so keep them short and free of per-user detail.
pub fn short(s: &str) -> String {
    s.chars().take(60).collect()
}
