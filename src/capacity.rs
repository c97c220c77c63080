//! What this host's limits allow: open files, memory, the accept backlog,
//! locked memory and cores, against the settings.
//!
//! At start the server logs [`Report`]'s one line and a warning for each
//! limit the settings go past; `--check-capacity` prints
//! [`Report::details`] and exits 0 when the host holds `--max-connections`,
//! 1 when it does not. `tuning/check.sh` runs that, so there is one
//! source of truth. [`Host::probe`] reads the limits (anything unreadable is
//! `None`, shown as "unknown"); [`assess`] is pure, over plain numbers.

use std::fmt;

/// Descriptors kept back from connections: listeners, the database and its
/// WAL, io_uring rings, logs. The same 64 that `config` takes off the
/// open-file limit for the default `--max-connections`.
pub const FD_RESERVE: u64 = 64;

/// Server memory per idle, subscribed WebSocket session: 2,098 B with two
/// shards (`benches/RESULTS.md`, 2026-11-25, `scripts/idle-memory.py
/// --sessions 10000 --rooms 100 --shards 2`; 1,488 B on one shard; README:
/// "~1.5 KiB ... on one shard (~2.1 KiB with two)"), and 2,098–2,104 B on
/// one shard with the store (`benches/RESULTS.md`, 2026-11-29). Each shard
/// allocates from its own heap, so the two-shard figure is the one to plan
/// with.
pub const SERVER_BYTES_PER_SESSION: u64 = 2_098;

/// Kernel socket memory per idle connection: "~9–10 KB per loopback pair"
/// (`benches/RESULTS.md`, 2026-11-25; `tuning/sysctl.conf`), taken as
/// 10 KiB, the figure the old `tuning/capacity-check.sh` used ("~10 KB of kernel
/// socket buffers per idle connection (measured on loopback)").
pub const KERNEL_BYTES_PER_SESSION: u64 = 10 * 1024;

/// Memory one idle connection costs, server and kernel: ~12.0 KiB. Busy
/// connections cost more (outbound buffers up to `--max-outbound-bytes`,
/// autotuned socket buffers), so the memory bound is an upper one.
pub const BYTES_PER_SESSION: u64 = SERVER_BYTES_PER_SESSION + KERNEL_BYTES_PER_SESSION;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A resource limit: a number, or none at all. `Finite` sorts below
/// `Unlimited`, so `min` picks the tighter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    Finite(u64),
    Unlimited,
}

impl Limit {
    /// An rlimit value (`rlim_t` is `u64` on Linux, the only target).
    fn from_rlim(v: u64) -> Limit {
        if v == libc::RLIM_INFINITY {
            Limit::Unlimited
        } else {
            Limit::Finite(v)
        }
    }

    /// Whether `n` is above this limit.
    fn exceeded_by(self, n: u64) -> bool {
        matches!(self, Limit::Finite(l) if n > l)
    }
}

/// The host's limits as this process sees them; `None` is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// Soft RLIMIT_NOFILE: the most descriptors this process may hold.
    pub nofile: Option<Limit>,
    /// Hard RLIMIT_NOFILE: how far the soft limit may be raised without root.
    pub nofile_hard: Option<Limit>,
    /// `/proc/sys/fs/nr_open`: how far root may raise the hard limit.
    pub nr_open: Option<u64>,
    /// `/proc/sys/net/core/somaxconn`: the kernel's cap on a listen backlog.
    pub somaxconn: Option<u64>,
    /// Soft RLIMIT_MEMLOCK, in bytes.
    pub memlock: Option<Limit>,
    /// CPUs this process may run on (affinity and cgroup quota).
    pub cores: Option<usize>,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub mem_total: Option<u64>,
    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    pub mem_available: Option<u64>,
}

impl Host {
    /// Read this process's limits and the host's memory. Never panics.
    pub fn probe() -> Host {
        let rlimit = |resource| {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we pass.
            if unsafe { libc::getrlimit(resource, &mut rl) } == 0 {
                (
                    Some(Limit::from_rlim(rl.rlim_cur)),
                    Some(Limit::from_rlim(rl.rlim_max)),
                )
            } else {
                (None, None)
            }
        };
        let (nofile, nofile_hard) = rlimit(libc::RLIMIT_NOFILE);
        let (memlock, _) = rlimit(libc::RLIMIT_MEMLOCK);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Host {
            nofile,
            nofile_hard,
            nr_open: read_number("/proc/sys/fs/nr_open"),
            somaxconn: read_number("/proc/sys/net/core/somaxconn"),
            memlock,
            cores: std::thread::available_parallelism().ok().map(|n| n.get()),
            mem_total: meminfo_bytes(&meminfo, "MemTotal"),
            mem_available: meminfo_bytes(&meminfo, "MemAvailable"),
        }
    }
}

/// A number alone in a file (a `/proc/sys` setting).
fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `/proc/meminfo` field (`MemAvailable:  24145232 kB`) in bytes.
fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => n.checked_mul(KIB),
            None => Some(n),
            Some(_) => None,
        }
    })
}

/// What the settings ask of the host (plain numbers from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub shards: usize,
    pub max_connections: usize,
    /// Whether `--max-connections` was given; if not, it was derived from
    /// the open-file limit (minus [`FD_RESERVE`]).
    pub max_connections_set: bool,
    pub listen_backlog: usize,
    /// io_uring memory registered per shard.
    pub io_memory_kib: usize,
}

/// A limit the settings go past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// More connections than the open-file limit leaves room for.
    Files {
        max_connections: u64,
        allowed: u64,
        soft: u64,
        hard: Option<Limit>,
        nr_open: Option<u64>,
    },
    /// More idle connections than available memory holds.
    Memory {
        max_connections: u64,
        allowed: u64,
        available: u64,
    },
    /// The kernel caps the listen backlog below the setting.
    Backlog { somaxconn: u64, listen_backlog: u64 },
    /// Locked memory below what the shards register with io_uring.
    Memlock {
        memlock: u64,
        shards: u64,
        io_kib: u64,
    },
    /// More shards than cores.
    Cores { shards: usize, cores: usize },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Warning::Files {
                max_connections,
                allowed,
                soft,
                hard,
                nr_open,
            } => {
                write!(
                    f,
                    "max_connections {max_connections} is above the {allowed} connections the \
                     open-file limit allows (soft nofile {soft} minus {FD_RESERVE} kept back): \
                     accepts past it fail; raise it (ulimit -n, LimitNOFILE=; hard limit {}, \
                     fs.nr_open {}) or lower --max-connections",
                    limit_text(hard, 1),
                    opt_text(nr_open)
                )
            }
            Warning::Memory {
                max_connections,
                allowed,
                available,
            } => write!(
                f,
                "max_connections {max_connections} is above the ~{allowed} idle connections \
                 that {} of available memory holds at {} each: lower --max-connections or add \
                 memory",
                gib(available),
                kib1(BYTES_PER_SESSION)
            ),
            Warning::Backlog {
                somaxconn,
                listen_backlog,
            } => write!(
                f,
                "net.core.somaxconn {somaxconn} is below --listen-backlog {listen_backlog}: the \
                 kernel caps each listener's accept queue at {somaxconn}, and a storm of \
                 connects overflows it (sysctl net.core.somaxconn={listen_backlog}, see \
                 tuning/sysctl.conf)"
            ),
            Warning::Memlock {
                memlock,
                shards,
                io_kib,
            } => write!(
                f,
                "memlock limit {} is below the io_uring memory of {shards} shards x {io_kib} \
                 KiB = {}: on kernels before 5.12 the shards cannot start (ulimit -l, \
                 LimitMEMLOCK=, see tuning/limits.conf); newer kernels charge it to the cgroup \
                 instead",
                bytes(memlock),
                bytes(shards.saturating_mul(io_kib).saturating_mul(KIB))
            ),
            Warning::Cores { shards, cores } => write!(
                f,
                "{shards} shards on {cores} cores: shards share cores (pinned round-robin) and \
                 wait for each other; --shards 0 runs one per core"
            ),
        }
    }
}

/// The host against the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub host: Host,
    pub needs: Needs,
    /// Connections the open-file limit leaves room for.
    pub by_files: Option<Limit>,
    /// Idle connections available memory holds.
    pub by_memory: Option<u64>,
    warnings: Vec<Warning>,
}

/// Weigh the host's limits against the settings.
pub fn assess(host: &Host, needs: &Needs) -> Report {
    let max = needs.max_connections as u64;
    let by_files = host.nofile.map(|l| match l {
        Limit::Finite(n) => Limit::Finite(n.saturating_sub(FD_RESERVE)),
        Limit::Unlimited => Limit::Unlimited,
    });
    let by_memory = host.mem_available.map(|m| m / BYTES_PER_SESSION);
    let mut warnings = Vec::new();
    if let (Some(Limit::Finite(allowed)), Some(Limit::Finite(soft))) = (by_files, host.nofile)
        && max > allowed
    {
        warnings.push(Warning::Files {
            max_connections: max,
            allowed,
            soft,
            hard: host.nofile_hard,
            nr_open: host.nr_open,
        });
    }
    if let (Some(allowed), Some(available)) = (by_memory, host.mem_available)
        && max > allowed
    {
        warnings.push(Warning::Memory {
            max_connections: max,
            allowed,
            available,
        });
    }
    let listen_backlog = needs.listen_backlog as u64;
    if let Some(somaxconn) = host.somaxconn
        && somaxconn < listen_backlog
    {
        warnings.push(Warning::Backlog {
            somaxconn,
            listen_backlog,
        });
    }
    let (shards, io_kib) = (needs.shards as u64, needs.io_memory_kib as u64);
    if let Some(Limit::Finite(memlock)) = host.memlock
        && memlock < shards.saturating_mul(io_kib).saturating_mul(KIB)
    {
        warnings.push(Warning::Memlock {
            memlock,
            shards,
            io_kib,
        });
    }
    if let Some(cores) = host.cores
        && needs.shards > cores
    {
        warnings.push(Warning::Cores {
            shards: needs.shards,
            cores,
        });
    }
    Report {
        host: host.clone(),
        needs: *needs,
        by_files,
        by_memory,
        warnings,
    }
}

impl Report {
    /// The limits the settings go past, worst first (files, memory, then the
    /// rest).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Whether `max_connections` is within what the open files and memory
    /// allow (an unknown limit is not held against it).
    pub fn ok(&self) -> bool {
        !self
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::Files { .. } | Warning::Memory { .. }))
    }

    /// Connections the host allows: the tighter of files and memory.
    pub fn allowed(&self) -> Option<Limit> {
        match (self.by_files, self.by_memory.map(Limit::Finite)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The multi-line report for `--check-capacity`, ending in a newline.
    pub fn details(&self) -> String {
        use std::fmt::Write as _;
        let (h, n) = (&self.host, &self.needs);
        let max = n.max_connections as u64;
        let status = |known: bool, low: bool| match (known, low) {
            (false, _) => "??  ",
            (true, true) => "LOW ",
            (true, false) => "ok  ",
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "stampede capacity check: {} shards, max_connections {max}{}",
            n.shards,
            if n.max_connections_set {
                ""
            } else {
                " (default: open files - 64)"
            }
        );
        let files_low = self.by_files.is_some_and(|l| l.exceeded_by(max));
        let _ = writeln!(
            out,
            "  {}open files     soft {}, hard {}, fs.nr_open {}: {} connections \
             ({FD_RESERVE} kept for listeners, the database, logs)",
            status(self.by_files.is_some(), files_low),
            limit_text(h.nofile, 1),
            limit_text(h.nofile_hard, 1),
            opt_text(h.nr_open),
            limit_text(self.by_files, 1),
        );
        let mem_low = self.by_memory.is_some_and(|m| max > m);
        let _ = writeln!(
            out,
            "  {}memory         {} available of {}: ~{} idle connections at {} each \
             ({SERVER_BYTES_PER_SESSION} B stampede, {KERNEL_BYTES_PER_SESSION} B kernel \
             socket buffers)",
            status(self.by_memory.is_some(), mem_low),
            h.mem_available.map_or("unknown".into(), gib),
            h.mem_total.map_or("unknown".into(), gib),
            opt_text(self.by_memory),
            kib1(BYTES_PER_SESSION),
        );
        let _ = writeln!(
            out,
            "  {}somaxconn      {} (listen backlog {})",
            status(
                h.somaxconn.is_some(),
                h.somaxconn.is_some_and(|s| s < n.listen_backlog as u64)
            ),
            opt_text(h.somaxconn),
            n.listen_backlog,
        );
        let io = (n.shards as u64)
            .saturating_mul(n.io_memory_kib as u64)
            .saturating_mul(KIB);
        let _ = writeln!(
            out,
            "  {}memlock        {} (io_uring: {} shards x {} KiB = {})",
            status(
                h.memlock.is_some(),
                h.memlock.is_some_and(|l| l.exceeded_by(io))
            ),
            memlock_text(h.memlock),
            n.shards,
            n.io_memory_kib,
            bytes(io),
        );
        let _ = writeln!(
            out,
            "  {}cores          {} for {} shards",
            status(h.cores.is_some(), h.cores.is_some_and(|c| n.shards > c)),
            opt_text(h.cores),
            n.shards,
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let allowed = limit_text(self.allowed(), 1);
        if self.ok() {
            let _ = writeln!(
                out,
                "ok: this host allows ~{allowed} connections; max_connections {max} fits"
            );
        } else {
            let _ = writeln!(
                out,
                "too many: max_connections {max} is above the ~{allowed} connections this \
                 host allows"
            );
        }
        out
    }
}

/// One line for the log.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, n) = (&self.host, &self.needs);
        write!(
            f,
            "capacity: nofile={}/{} somaxconn={} memlock={} cores={} shards={} mem={}/{} GiB \
             available; allows ~{} connections (files {}, memory {} at {} each); \
             max_connections={}{}",
            limit_text(h.nofile, 1),
            limit_text(h.nofile_hard, 1),
            opt_text(h.somaxconn),
            memlock_text(h.memlock),
            opt_text(h.cores),
            n.shards,
            h.mem_available.map_or("unknown".into(), gib_number),
            h.mem_total.map_or("unknown".into(), gib_number),
            limit_text(self.allowed(), 1),
            limit_text(self.by_files, 1),
            opt_text(self.by_memory),
            kib1(BYTES_PER_SESSION),
            n.max_connections,
            if n.max_connections_set {
                ""
            } else {
                " (default: open files - 64)"
            }
        )
    }
}

fn opt_text<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

/// A limit counted in `unit`s (1 for counts).
fn limit_text(l: Option<Limit>, unit: u64) -> String {
    match l {
        None => "unknown".into(),
        Some(Limit::Unlimited) => "unlimited".into(),
        Some(Limit::Finite(n)) => (n / unit).to_string(),
    }
}

fn memlock_text(l: Option<Limit>) -> String {
    match l {
        Some(Limit::Finite(b)) => bytes(b),
        other => limit_text(other, 1),
    }
}

/// Bytes in the largest binary unit that divides them evenly (up to MiB).
fn bytes(b: u64) -> String {
    if b >= MIB && b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else if b >= KIB && b.is_multiple_of(KIB) {
        format!("{} KiB", b / KIB)
    } else {
        format!("{b} B")
    }
}

fn gib_number(b: u64) -> String {
    format!("{:.1}", b as f64 / GIB as f64)
}

fn gib(b: u64) -> String {
    format!("{} GiB", gib_number(b))
}

fn kib1(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / KIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test machine, roughly: 20,000 files, 24 GiB, two cores.
    fn host() -> Host {
        Host {
            nofile: Some(Limit::Finite(20_000)),
            nofile_hard: Some(Limit::Finite(20_000)),
            nr_open: Some(1_048_576),
            somaxconn: Some(4096),
            memlock: Some(Limit::Finite(8 * MIB)),
            cores: Some(2),
            mem_total: Some(24 * GIB),
            mem_available: Some(23 * GIB),
        }
    }

    fn needs(max_connections: usize) -> Needs {
        Needs {
            shards: 2,
            max_connections,
            max_connections_set: true,
            listen_backlog: 4096,
            io_memory_kib: 512,
        }
    }

    #[test]
    fn a_host_that_holds_the_settings() {
        let r = assess(&host(), &needs(19_936));
        assert!(r.ok());
        assert!(r.warnings().is_empty(), "{:?}", r.warnings());
        assert_eq!(r.by_files, Some(Limit::Finite(19_936)));
        assert_eq!(r.by_memory, Some(23 * GIB / BYTES_PER_SESSION));
        assert_eq!(r.allowed(), Some(Limit::Finite(19_936)));
        assert_eq!(
            r.to_string(),
            format!(
                "capacity: nofile=20000/20000 somaxconn=4096 memlock=8 MiB cores=2 shards=2 \
                 mem=23.0/24.0 GiB available; allows ~19936 connections (files 19936, memory \
                 {} at 12.0 KiB each); max_connections=19936",
                23 * GIB / BYTES_PER_SESSION
            )
        );
        assert!(!r.to_string().contains('\n'));
        let d = r.details();
        assert!(d.ends_with("max_connections 19936 fits\n"), "{d}");
        assert!(!d.contains("LOW") && !d.contains("warning"), "{d}");
    }

    #[test]
    fn the_session_cost_is_the_measured_one() {
        assert_eq!(BYTES_PER_SESSION, 12_338);
        assert_eq!(kib1(BYTES_PER_SESSION), "12.0 KiB");
    }

    #[test]
    fn low_open_file_limit() {
        let h = Host {
            nofile: Some(Limit::Finite(1024)),
            nofile_hard: Some(Limit::Finite(4096)),
            ..host()
        };
        let r = assess(&h, &needs(5000));
        assert!(!r.ok());
        assert_eq!(r.allowed(), Some(Limit::Finite(960)));
        assert_eq!(
            r.warnings(),
            [Warning::Files {
                max_connections: 5000,
                allowed: 960,
                soft: 1024,
                hard: Some(Limit::Finite(4096)),
                nr_open: Some(1_048_576),
            }]
        );
        let w = r.warnings()[0].to_string();
        assert!(
            w.contains("960 connections") && w.contains("hard limit 4096"),
            "{w}"
        );
        let d = r.details();
        assert!(
            d.contains("LOW open files") && d.contains("too many:"),
            "{d}"
        );
        // Within the limit: fine.
        assert!(assess(&h, &needs(960)).ok());
    }

    #[test]
    fn a_limit_below_the_reserve_allows_nothing() {
        let h = Host {
            nofile: Some(Limit::Finite(10)),
            ..host()
        };
        let r = assess(&h, &needs(1));
        assert_eq!(r.by_files, Some(Limit::Finite(0)));
        assert!(!r.ok());
    }

    #[test]
    fn low_memory() {
        let h = Host {
            mem_available: Some(100 * MIB),
            ..host()
        };
        let r = assess(&h, &needs(19_936));
        let allowed = 100 * MIB / BYTES_PER_SESSION;
        assert_eq!(allowed, 8498);
        assert!(!r.ok());
        assert_eq!(r.allowed(), Some(Limit::Finite(allowed)));
        assert_eq!(
            r.warnings(),
            [Warning::Memory {
                max_connections: 19_936,
                allowed,
                available: 100 * MIB,
            }]
        );
        assert!(
            r.warnings()[0]
                .to_string()
                .contains("~8498 idle connections")
        );
        // The default max_connections (files - 64) can still be above memory.
        let r = assess(
            &h,
            &Needs {
                max_connections_set: false,
                ..needs(19_936)
            },
        );
        assert!(!r.ok());
        assert!(r.to_string().ends_with("(default: open files - 64)"));
    }

    #[test]
    fn both_files_and_memory() {
        let r = assess(&host(), &needs(50_000_000));
        assert!(!r.ok());
        assert!(matches!(
            r.warnings(),
            [Warning::Files { .. }, Warning::Memory { .. }]
        ));
    }

    #[test]
    fn unknowns_are_reported_not_held_against() {
        let r = assess(&Host::default(), &needs(1_000_000));
        assert!(r.ok());
        assert!(r.warnings().is_empty());
        assert_eq!(r.allowed(), None);
        assert_eq!(
            r.to_string(),
            "capacity: nofile=unknown/unknown somaxconn=unknown memlock=unknown cores=unknown \
             shards=2 mem=unknown/unknown GiB available; allows ~unknown connections (files \
             unknown, memory unknown at 12.0 KiB each); max_connections=1000000"
        );
        let d = Host::default();
        let d = assess(&d, &needs(1)).details();
        assert_eq!(d.matches("??").count(), 5, "{d}");
        // Memory alone known: it decides.
        let h = Host {
            mem_available: Some(GIB),
            ..Host::default()
        };
        assert_eq!(
            assess(&h, &needs(1)).allowed(),
            Some(Limit::Finite(GIB / BYTES_PER_SESSION))
        );
    }

    #[test]
    fn unlimited_limits() {
        let h = Host {
            nofile: Some(Limit::Unlimited),
            memlock: Some(Limit::Unlimited),
            ..host()
        };
        let r = assess(
            &h,
            &Needs {
                shards: 2,
                io_memory_kib: 1 << 20,
                ..needs(1000)
            },
        );
        assert!(r.ok() && r.warnings().is_empty(), "{:?}", r.warnings());
        assert_eq!(r.by_files, Some(Limit::Unlimited));
        assert_eq!(r.allowed(), r.by_memory.map(Limit::Finite));
        assert!(r.to_string().contains("memlock=unlimited"));
    }

    #[test]
    fn low_memlock_is_a_warning_only() {
        let h = Host {
            memlock: Some(Limit::Finite(64 * KIB)),
            ..host()
        };
        let r = assess(&h, &needs(1000));
        assert!(r.ok());
        assert_eq!(
            r.warnings(),
            [Warning::Memlock {
                memlock: 64 * KIB,
                shards: 2,
                io_kib: 512
            }]
        );
        let w = r.warnings()[0].to_string();
        assert!(
            w.contains("64 KiB") && w.contains("= 1 MiB") && w.contains("5.12"),
            "{w}"
        );
        // Exactly enough is enough.
        let h = Host {
            memlock: Some(Limit::Finite(MIB)),
            ..host()
        };
        assert!(assess(&h, &needs(1000)).warnings().is_empty());
    }

    #[test]
    fn somaxconn_below_the_backlog() {
        let h = Host {
            somaxconn: Some(128),
            ..host()
        };
        let r = assess(&h, &needs(1000));
        assert!(r.ok());
        assert_eq!(
            r.warnings(),
            [Warning::Backlog {
                somaxconn: 128,
                listen_backlog: 4096
            }]
        );
        assert!(r.details().contains("LOW somaxconn"));
    }

    #[test]
    fn more_shards_than_cores() {
        let r = assess(
            &host(),
            &Needs {
                shards: 4,
                ..needs(1000)
            },
        );
        assert!(r.ok());
        assert_eq!(
            r.warnings(),
            [Warning::Cores {
                shards: 4,
                cores: 2
            }]
        );
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:       24683584 kB\nMemFree:        11134948 kB\n\
                    MemAvailable:   24145232 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(24_683_584 * 1024));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(24_145_232 * 1024));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_bytes(text, "Mem"), None);
        assert_eq!(meminfo_bytes("", "MemTotal"), None);
        assert_eq!(meminfo_bytes("MemTotal: lots kB", "MemTotal"), None);
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(8 * MIB), "8 MiB");
        assert_eq!(bytes(1536 * KIB), "1536 KiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(gib(24 * GIB), "24.0 GiB");
    }

    #[test]
    fn probing_this_host_does_not_panic() {
        let h = Host::probe();
        if cfg!(target_os = "linux") {
            assert!(h.nofile.is_some() && h.cores.is_some(), "{h:?}");
        }
        let _ = assess(&h, &needs(1)).details();
    }
}
