//! Worker processes: this binary re-run with `--worker I`, each connecting
//! from its own source address 127.0.0.(2+I), so neither the per-process
//! open-file limit nor one ephemeral-port range caps a run.
//!
//! A worker talks to its parent over stdout in lines: `progress N` (N is
//! the worker's running count, drawn as the parent's progress bar) and
//! payload lines (JSON) that the parent reads with [`Worker::payload`].
//! Workers that must wait for the parent read their stdin.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// How a scenario's connections are spread over worker processes.
#[derive(Args, Clone, Debug)]
pub struct Workers {
    /// Worker processes; 0 = one per 15,000 connections (each stays well
    /// under the 20,000 open files a process may hold here).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Internal: run as worker I of the parent's run.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    /// Internal: how many workers the parent started.
    #[arg(long, hide = true)]
    pub worker_count: Option<usize>,
}

impl Workers {
    /// How many workers share `connections`.
    pub fn count(&self, connections: usize) -> usize {
        match (self.worker_count, self.workers) {
            (Some(n), _) => n,
            (None, 0) => connections.div_ceil(15_000).max(1),
            (None, n) => n,
        }
    }

    /// Start `n` workers: this binary with the parent's arguments plus the
    /// worker's index, stdin and stdout piped.
    pub fn spawn(n: usize) -> Result<Vec<Worker>, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        (0..n)
            .map(|w| {
                let mut child = tokio::process::Command::new(&exe)
                    .args(std::env::args_os().skip(1))
                    .arg("--worker-count")
                    .arg(n.to_string())
                    .arg("--worker")
                    .arg(w.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start worker {w}: {e}"))?;
                let out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
                Ok(Worker { child, out })
            })
            .collect()
    }
}

/// The parent's handle on one worker.
pub struct Worker {
    pub child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The next payload line; `progress` lines before it move `bar`'s
    /// slot for this worker.
    pub async fn payload(&mut self, bar: &Bar, slot: usize) -> Result<String, String> {
        loop {
            match self.out.next_line().await {
                Ok(Some(line)) => match line.strip_prefix("progress ") {
                    Some(n) => bar.set(slot, n.trim().parse().unwrap_or(0)),
                    None => return Ok(line),
                },
                Ok(None) => {
                    let status = self.child.wait().await;
                    return Err(format!("worker {slot} ended early ({status:?})"));
                }
                Err(e) => return Err(format!("worker {slot}: {e}")),
            }
        }
    }

    /// Send one line to the worker's stdin.
    pub async fn tell(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("worker stdin closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("worker stdin: {e}"))
    }

    /// Close stdin (the worker's signal to finish) and wait for it.
    pub async fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait().await;
    }
}

/// Read the payloads of all workers at once (progress of each moves the
/// shared bar meanwhile).
pub async fn payloads(workers: &mut [Worker], bar: &Bar) -> Result<Vec<String>, String> {
    let futs = workers
        .iter_mut()
        .enumerate()
        .map(|(i, w)| w.payload(bar, i));
    futures_util::future::join_all(futs)
        .await
        .into_iter()
        .collect()
}

/// A progress bar over the workers' summed counts. Drawn on stderr only
/// when it is a terminal, so logs and CI output stay clean.
pub struct Bar {
    bar: ProgressBar,
    slots: Vec<AtomicU64>,
}

impl Bar {
    pub fn new(workers: usize, total: u64, what: &str) -> Bar {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec})",
            )
            .expect("progress template"),
        );
        bar.set_message(what.to_string());
        Bar {
            bar,
            slots: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Restart the bar for the next phase.
    pub fn phase(&self, total: u64, what: &str) {
        for s in &self.slots {
            s.store(0, Ordering::Relaxed);
        }
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_message(what.to_string());
    }

    pub fn set(&self, slot: usize, n: u64) {
        if let Some(s) = self.slots.get(slot) {
            s.store(n, Ordering::Relaxed);
        }
        self.bar
            .set_position(self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum());
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// In a worker: print `progress N` every 200 ms while `count` changes,
/// until the returned handle is dropped or aborted.
pub fn report_progress(count: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            let n = count.load(Ordering::Relaxed);
            if n != last {
                println!("progress {n}");
                last = n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// What a worker reports once its slice of sessions is open.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Opened {
    pub established: usize,
    /// Sessions that could not be opened, by error kind.
    pub errors: BTreeMap<String, u64>,
}

impl Opened {
    /// Every session of a slice failed the same way (before any opened).
    pub fn all_failed(kind: String, n: usize) -> Opened {
        Opened {
            established: 0,
            errors: BTreeMap::from([(kind, n as u64)]),
        }
    }

    /// Add another worker's report.
    pub fn merge(&mut self, other: Opened) {
        self.established += other.established;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// In a worker: open session `i` for every `i` of `slice` with `open`,
/// each started `ramp_up * i / total` seconds from now, printing progress;
/// the sessions that opened, and the tally.
pub async fn open_slice<T, F, Fut>(
    slice: impl Iterator<Item = usize>,
    total: usize,
    ramp_up: f64,
    open: F,
) -> (Vec<T>, Opened)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let opened = Arc::new(AtomicU64::new(0));
    let progress = report_progress(opened.clone());
    let t0 = tokio::time::Instant::now();
    let tasks: Vec<_> = slice
        .map(|i| {
            let offset = Duration::from_secs_f64(ramp_up * i as f64 / total.max(1) as f64);
            let session = open(i);
            let opened = opened.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + offset).await;
                let r = session.await;
                opened.fetch_add(1, Ordering::Relaxed);
                r
            })
        })
        .collect();
    let mut sessions = Vec::new();
    let mut tally = Opened::default();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(kind)) => *tally.errors.entry(kind).or_default() += 1,
            Err(e) => *tally.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    progress.abort();
    tally.established = sessions.len();
    (sessions, tally)
}
