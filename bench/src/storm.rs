//! The `storm` scenario: one user's JMeter flow, and a worker's slice of users.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::StormArgs;
use crate::report::Samples;

/// Run the users `i` with `i % workers == index`, each at its ramp-up offset.
pub async fn run_slice(args: &StormArgs, index: usize, workers: usize) -> Samples {
    let (addr, src) = match resolve(&args.url, index) {
        Ok(x) => x,
        Err(e) => {
            let mut s = Samples::default();
            for _ in (index..args.users).step_by(workers) {
                s.error("ws_open", &e);
                s.error("flow", &e);
            }
            return s;
        }
    };
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for i in (index..args.users).step_by(workers) {
        let offset = if args.users > 1 {
            Duration::from_secs_f64(args.ramp_up * i as f64 / args.users as f64)
        } else {
            Duration::ZERO
        };
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + offset).await;
            user(i, &args, addr, src).await
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        match t.await {
            Ok(steps) => {
                for (step, r) in steps {
                    match r {
                        Ok(us) => samples.ok(step, us),
                        Err(kind) => samples.error(step, &kind),
                    }
                }
            }
            Err(e) => samples.error("flow", &format!("task failed: {e}")),
        }
    }
    samples
}

/// The server address and our source address (127.0.0.(2+worker) when the
/// server is on loopback, so each worker has its own port range).
fn resolve(url: &str, index: usize) -> Result<(SocketAddr, Option<IpAddr>), String> {
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

type Step = (&'static str, Result<u64, String>);

/// One user's flow; every step that ran reports its time or error kind.
async fn user(i: usize, args: &StormArgs, addr: SocketAddr, src: Option<IpAddr>) -> Vec<Step> {
    let mut steps = Vec::with_capacity(5);
    let t0 = Instant::now();
    let r = flow(i, args, addr, src, &mut steps).await;
    steps.push(("flow", r.map(|()| t0.elapsed().as_micros() as u64)));
    steps
}

async fn flow(
    i: usize,
    args: &StormArgs,
    addr: SocketAddr,
    src: Option<IpAddr>,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    let limit = Duration::from_secs_f64(args.step_timeout);
    let mut t = Instant::now();
    let mut record =
        |steps: &mut Vec<Step>, step: &'static str, r: Result<(), String>| -> Result<(), String> {
            let out = r.clone().map(|()| t.elapsed().as_micros() as u64);
            steps.push((step, out));
            t = Instant::now();
            r
        };

    // ws_open: TCP connect + WebSocket upgrade.
    let opened = timeout(limit, async {
        let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
        if let Some(ip) = src {
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind: {}", e.kind()))?;
        }
        let stream = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let mut req = args
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
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
    .unwrap_or_else(|_| Err("timeout".into()));
    let mut ws = match opened {
        Ok(ws) => {
            record(steps, "ws_open", Ok(()))?;
            ws
        }
        Err(e) => return record(steps, "ws_open", Err(e)),
    };

    // connect: CONNECT → CONNECTED.
    let connect = format!(
        "CONNECT\naccept-version:1.2,1.1,1.0\nhost:{}\nlogin:{}\npasscode:{}\nheart-beat:0,0\n\n\0",
        args.vhost, args.login, args.passcode
    );
    let r = async {
        ws.send(Message::text(connect))
            .await
            .map_err(|e| format!("send: {}", short(&e.to_string())))?;
        expect(&mut ws, "CONNECTED", limit, false).await
    }
    .await;
    record(steps, "connect", r)?;

    // subscribe: sent without a receipt (Spring answers none).
    let sub = format!(
        "SUBSCRIBE\nid:sub-0\ndestination:/topic/room-{}\n\n\0",
        i % args.rooms.max(1)
    );
    let r = ws
        .send(Message::text(sub))
        .await
        .map_err(|e| format!("send: {}", short(&e.to_string())));
    record(steps, "subscribe", r)?;

    // disconnect: DISCONNECT receipt:77 → RECEIPT.
    let r = async {
        ws.send(Message::text("DISCONNECT\nreceipt:77\n\n\0"))
            .await
            .map_err(|e| format!("send: {}", short(&e.to_string())))?;
        expect(&mut ws, "RECEIPT", limit, args.close_is_receipt).await
    }
    .await;
    record(steps, "disconnect", r)?;

    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(())
}

/// Read until a frame with `command` arrives (heart-beat EOLs skipped).
async fn expect<S>(ws: &mut S, command: &str, limit: Duration, close_ok: bool) -> Result<(), String>
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
            return Err("ERROR frame".into());
        }
    }
}

/// Error kinds are counted, so keep them short and free of per-user detail.
fn short(s: &str) -> String {
    s.chars().take(60).collect()
}
