//! One micro-benchmark per hot-path primitive: parsing a SEND, unmasking a
//! WebSocket frame, encoding a MESSAGE once per shard, and appending one
//! delivery to a subscriber's buffer.
//!
//!     cargo bench --bench primitives

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stampede::message::{Draft, Sequenced};
use stampede::out::Out;
use stampede::stomp::frame::{Escaping, Limits, Parsed, Version, parse};
use stampede::ws::framing::{Event, WsError, WsReader};

const LIMITS: Limits = Limits {
    max_frame_size: 65536,
    max_headers: 64,
    max_header_length: 8192,
};

fn send_frame() -> Vec<u8> {
    let mut f =
        b"SEND\ndestination:/topic/lobby\ncontent-type:text/plain\nreceipt:r-1234\n\n".to_vec();
    f.extend_from_slice(&[b'x'; 100]);
    f.push(0);
    f
}

fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut v = vec![0x81, 0x80 | 126];
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

fn message() -> Sequenced {
    Sequenced {
        draft: Draft {
            room: "lobby".into(),
            sender: "alice".into(),
            headers: vec![("content-type".into(), "text/plain".into())],
            body: vec![b'x'; 100].into(),
        },
        seq: 123_456,
        timestamp_ms: 1_795_000_000_000,
        sequenced_at: None,
    }
}

fn primitives(c: &mut Criterion) {
    let frame = send_frame();
    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Elements(1));

    g.bench_function("parse SEND (100 B body)", |b| {
        b.iter(|| match parse(black_box(&frame), Escaping::V12, &LIMITS) {
            Ok(Parsed::Frame(f, n)) => black_box((f.headers.len(), n)),
            _ => unreachable!(),
        })
    });

    let ws = masked(&frame);
    g.bench_function("ws unmask+deframe SEND", |b| {
        let mut buf = ws.clone();
        b.iter(|| {
            buf.copy_from_slice(&ws);
            let mut r = WsReader::default();
            let mut n = 0;
            r.feed::<WsError>(&mut buf, |e| {
                if let Event::Data(d) = e {
                    n += d.len();
                }
                Ok(())
            })
            .unwrap();
            black_box(n)
        })
    });

    let msg = message();
    g.bench_function("encode MESSAGE tail (once per shard)", |b| {
        b.iter(|| black_box(msg.encode(Version::V12)).bytes.len())
    });

    let enc = msg.encode(Version::V12);
    let prefix: &[u8] = b"subscription:sub-0\n";
    g.bench_function("append one delivery (ws)", |b| {
        let now = Instant::now();
        let mut out = Out::new(true, now);
        b.iter(|| {
            out.message(prefix, None, &enc, now);
            if out.pending_len() > 1 << 20 {
                out.consume(out.pending_len());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, primitives);
criterion_main!(benches);
