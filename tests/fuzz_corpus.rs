//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same property checks the fuzz targets run (`stampede::fuzzing`), on a
//! stable toolchain without libFuzzer. How to fuzz: `fuzz/RESULTS.md`.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    for path in files {
        let data = fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn stomp_frame_corpus() {
    replay("stomp_frame", stampede::fuzzing::stomp_frame);
}

#[test]
fn ws_reader_corpus() {
    replay("ws_reader", stampede::fuzzing::ws_reader);
}

#[test]
fn http_upgrade_corpus() {
    replay("http_upgrade", stampede::fuzzing::http_upgrade);
}

#[test]
fn history_query_corpus() {
    replay("history_query", stampede::fuzzing::history_query);
}
