//! The SQLite group-commit writer on its own (issue 4): messages with
//! 100-byte bodies pushed through the bounded channel as fast as the
//! writer takes them, per durability level. Reports messages/s, batches
//! and the largest batch; the end-to-end figure (RECEIPT after commit)
//! comes once the writer is on the message path.
//!
//!     cargo bench --bench store

use std::time::Instant;

use stampede::config::Durability;
use stampede::message::{Draft, Sequenced};
use stampede::store::open;
use stampede::store::writer::{Committed, Item, spawn};

const MESSAGES: u64 = 500_000;
const ROOMS: u64 = 100;

fn run(durability: Durability, max_batch: usize) {
    let dir = std::env::temp_dir().join(format!("stampede-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let conn = open(&dir, durability).expect("open store");
    let (tx, handle) = spawn(conn, 65_536, max_batch, false, |c: Committed<u64>| {
        assert!(c.error.is_none(), "{:?}", c.error);
    })
    .expect("writer thread");
    let body = vec![b'b'; 100];
    let started = Instant::now();
    for i in 0..MESSAGES {
        let room = i % ROOMS;
        let seq = i / ROOMS + 1;
        let msg = Sequenced {
            draft: Draft {
                room: format!("room-{room}").into(),
                sender: "alice".into(),
                headers: vec![("content-type".into(), "text/plain".into())],
                body: body.clone().into(),
            },
            seq,
            timestamp_ms: 1_700_000_000_000 + i,
            sequenced_at: None,
        };
        tx.send(Item::msg(msg, i)).expect("writer alive");
    }
    drop(tx);
    let stats = handle.join().expect("writer");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "durability {durability:?}, max batch {max_batch}: {} messages in {secs:.2} s = {:.0}/s; {} batches (avg {:.0}, largest {})",
        stats.messages,
        stats.messages as f64 / secs,
        stats.batches,
        stats.messages as f64 / stats.batches.max(1) as f64,
        stats.largest_batch
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep it short.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for d in [Durability::Full, Durability::Normal, Durability::Off] {
        for batch in [1024, 8192] {
            run(d, batch);
        }
    }
}
