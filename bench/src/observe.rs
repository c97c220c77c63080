//! What a run costs: the server's CPU time and RSS (from /proc) and the
//! generator's own CPU time (this process and its waited-for workers).

use serde::Serialize;

/// Common to every scenario: what the run is called and whom to watch.
#[derive(clap::Args, Clone, Debug)]
pub struct Observe {
    /// PID of the server, to read its CPU time and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Name of the target in the JSON (e.g. `stampede-1core`, `spring`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A process's resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A process's CPU time (user + system, all threads) in seconds.
pub fn cpu_s(pid: u32) -> Option<f64> {
    stat_cpu_s(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Name of stampede's SQLite writer thread (its CPU is reported apart).
pub const WRITER_THREAD: &str = "stampede-writer";

/// CPU seconds of a process's threads whose name starts with `prefix`
/// (e.g. the server's `stampede-writer`), summed.
pub fn threads_cpu_s(pid: u32, prefix: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        if let Some(s) = stat_cpu_s(&stat) {
            *total.get_or_insert(0.0) += s;
        }
    }
    total
}

/// utime + stime of a /proc `stat` line, in seconds.
fn stat_cpu_s(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line, 12 and 13 after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// CPU seconds of this process plus its waited-for children.
pub fn own_cpu_s() -> f64 {
    let get = |who| {
        // SAFETY: getrusage fills the zeroed struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// CPU and memory at the start of a run.
pub struct Start {
    pid: Option<u32>,
    server_cpu: Option<f64>,
    writer_cpu: Option<f64>,
    own_cpu: f64,
    wall: std::time::Instant,
}

/// What the run cost, for the JSON and the summary line.
#[derive(Debug, Serialize)]
pub struct Cost {
    pub wall_s: f64,
    /// Server CPU seconds over the run (None without `--server-pid`).
    pub server_cpu_s: Option<f64>,
    /// Generator CPU seconds (this process and its workers).
    pub generator_cpu_s: f64,
    pub server_rss_kib: Option<u64>,
    /// CPU seconds of stampede's SQLite writer thread over the run (part of
    /// `server_cpu_s`; None for other servers or without persistence).
    pub writer_cpu_s: Option<f64>,
}

impl Start {
    pub fn now(pid: Option<u32>) -> Start {
        Start {
            pid,
            server_cpu: pid.and_then(cpu_s),
            writer_cpu: pid.and_then(|p| threads_cpu_s(p, WRITER_THREAD)),
            own_cpu: own_cpu_s(),
            wall: std::time::Instant::now(),
        }
    }

    /// Call after every worker has been waited for.
    pub fn cost(&self) -> Cost {
        Cost {
            wall_s: self.wall.elapsed().as_secs_f64(),
            server_cpu_s: match (self.pid.and_then(cpu_s), self.server_cpu) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            generator_cpu_s: own_cpu_s() - self.own_cpu,
            server_rss_kib: self.pid.and_then(rss_kib),
            writer_cpu_s: match (
                self.pid.and_then(|p| threads_cpu_s(p, WRITER_THREAD)),
                self.writer_cpu,
            ) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
        }
    }
}

impl Cost {
    pub fn line(&self) -> String {
        let server = self
            .server_cpu_s
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| "? (no --server-pid)".into());
        let writer = self
            .writer_cpu_s
            .map(|s| format!(" (SQLite writer {s:.2} s)"))
            .unwrap_or_default();
        format!(
            "cost: wall {:.2} s; server CPU {server}{writer}; generator CPU {:.2} s",
            self.wall_s, self.generator_cpu_s
        )
    }
}

/// Write `doc` to the `--json` path, if any.
pub fn write_json(obs: &Observe, doc: &serde_json::Value) -> Result<(), String> {
    if let Some(path) = &obs.json {
        std::fs::write(path, serde_json::to_string_pretty(doc).expect("json"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_and_rss() {
        let pid = std::process::id();
        // Burn a little CPU so the tick counter moves.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(super::cpu_s(pid).unwrap() > 0.0);
        assert!(super::rss_kib(pid).unwrap() > 100);
        assert!(super::own_cpu_s() > 0.0);
    }
}
