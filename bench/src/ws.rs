//! Opening a STOMP-over-WebSocket session, shared by the scenarios:
//! `ws://` over TCP, `wss://` over TLS (rustls, ring provider).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub type Ws = WebSocketStream<Stream>;

/// A session's byte stream: TCP (`ws://`) or TLS over TCP (`wss://`).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Plain(s)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where and as whom every scenario connects.
#[derive(clap::Args, Clone, Debug)]
pub struct Endpoint {
    /// WebSocket URL of the STOMP endpoint: ws://… or wss://… (TLS; needs
    /// --ca-cert).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// PEM file of the CA certificate(s) to trust for a wss:// URL (or the
    /// server's own self-signed certificate: a certificate in this file
    /// that the server presents is trusted as is). Required for wss://,
    /// ignored for ws://. TLS session resumption is off, so every
    /// connection makes a full handshake (storm's ws_open includes it).
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
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

impl Endpoint {
    /// Whether the URL is `wss://`.
    pub fn is_tls(&self) -> bool {
        is_tls(&self.url)
    }

    /// Check the URL and, for `wss://`, load `--ca-cert` into the process's
    /// TLS client configuration, so a bad set-up fails before the run, not
    /// as one error per connection.
    pub fn check(&self) -> Result<(), String> {
        let req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad --url {}: {e}", self.url))?;
        match req.uri().scheme_str() {
            Some("ws") => Ok(()),
            Some("wss") => tls_config(self).map(|_| ()),
            other => Err(format!(
                "bad --url {}: scheme {}, expected ws or wss",
                self.url,
                other.unwrap_or("missing")
            )),
        }
    }
}

fn is_tls(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("wss://"))
}

/// The process's TLS client configuration, built once from `--ca-cert`.
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

fn tls_config(ep: &Endpoint) -> Result<Arc<ClientConfig>, String> {
    if let Some(c) = TLS.get() {
        return Ok(c.clone());
    }
    let path = ep
        .ca_cert
        .as_deref()
        .ok_or("a wss:// URL needs --ca-cert PATH (PEM file of the CA or certificate to trust)")?;
    let config = Arc::new(build_tls_config(path)?);
    // Another task may have won the race; either config is the same.
    Ok(TLS.get_or_init(|| config).clone())
}

fn build_tls_config(path: &Path) -> Result<ClientConfig, String> {
    let what = |e: &dyn std::fmt::Display| format!("--ca-cert {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&e))?;
    if certs.is_empty() {
        return Err(what(&"no PEM certificate in the file"));
    }
    let mut roots = RootCertStore::empty();
    for c in &certs {
        roots.add(c.clone()).map_err(|e| what(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| what(&e))?;
    let verifier = Arc::new(Trust {
        pinned: certs,
        webpki,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| what(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Every connection makes a full handshake: storm measures session
    // set-up, not resumption.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// WebPKI verification against `--ca-cert`, and a certificate that is in
/// that file byte for byte is trusted as is: a self-signed certificate
/// (e.g. `openssl req -x509`, which marks it CA:TRUE, so WebPKI would
/// refuse it as a server's certificate). Handshake signatures are always
/// checked.
#[derive(Debug)]
struct Trust {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
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
    let port = req
        .uri()
        .port_u16()
        .unwrap_or(if is_tls(url) { 443 } else { 80 });
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

/// TCP connect (from `src`), for `wss://` the TLS handshake (a full one:
/// no resumption), and the WebSocket upgrade offering the STOMP
/// subprotocols, all within `limit`.
pub async fn open(
    ep: &Endpoint,
    addr: SocketAddr,
    src: Option<IpAddr>,
    limit: Duration,
) -> Result<Ws, String> {
    let url = ep.url.as_str();
    let tls = if is_tls(url) {
        Some(tls_config(ep)?)
    } else {
        None
    };
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
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = tcp.set_nodelay(true);
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp, v11.stomp, v10.stomp"),
        );
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                // SNI and verification: the URL's host (an IP address too).
                let host = req.uri().host().ok_or("url without host")?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| format!("tls: bad server name: {e}"))?;
                let s = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {}", short(&e.to_string())))?;
                Stream::Tls(Box::new(s))
            }
        };
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

#[cfg(test)]
mod tests {
    use super::Endpoint;

    fn endpoint(url: &str, ca_cert: Option<&str>) -> Endpoint {
        Endpoint {
            url: url.into(),
            ca_cert: ca_cert.map(Into::into),
            login: "guest".into(),
            passcode: "guest".into(),
            vhost: "/".into(),
        }
    }

    #[test]
    fn urls_and_ca_cert_checked() {
        assert!(endpoint("ws://127.0.0.1:8080/ws", None).check().is_ok());
        assert!(!endpoint("ws://127.0.0.1:8080/ws", None).is_tls());
        assert!(endpoint("WSS://127.0.0.1/ws", None).is_tls());
        let e = endpoint("http://127.0.0.1/ws", None).check().unwrap_err();
        assert!(e.contains("expected ws or wss"), "{e}");
        let e = endpoint("wss://127.0.0.1/ws", None).check().unwrap_err();
        assert!(e.contains("--ca-cert"), "{e}");
        let e = endpoint("wss://127.0.0.1/ws", Some("/nonexistent/ca.pem"))
            .check()
            .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = super::build_tls_config(std::path::Path::new("Cargo.toml")).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn default_ports() {
        let (a, _) = super::resolve("ws://127.0.0.1/ws", 0).unwrap();
        assert_eq!(a.port(), 80);
        let (a, _) = super::resolve("wss://127.0.0.1/ws", 0).unwrap();
        assert_eq!(a.port(), 443);
    }
}
