//! Samples from workers and the JMeter-style summary.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Raw results of one worker (or, merged, of the run).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Samples {
    /// Step name → successful durations in microseconds.
    pub ok_us: BTreeMap<String, Vec<u64>>,
    /// Step name → error kind → count.
    pub errors: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Samples {
    pub fn ok(&mut self, step: &str, us: u64) {
        self.ok_us.entry(step.to_string()).or_default().push(us);
    }

    pub fn error(&mut self, step: &str, kind: &str) {
        *self
            .errors
            .entry(step.to_string())
            .or_default()
            .entry(kind.to_string())
            .or_default() += 1;
    }

    pub fn merge(&mut self, other: Samples) {
        for (k, v) in other.ok_us {
            self.ok_us.entry(k).or_default().extend(v);
        }
        for (k, kinds) in other.errors {
            let e = self.errors.entry(k).or_default();
            for (kind, n) in kinds {
                *e.entry(kind).or_default() += n;
            }
        }
    }
}

/// One row of the summary (times in milliseconds).
#[derive(Debug, Serialize)]
pub struct Row {
    pub step: String,
    pub count: u64,
    pub errors: u64,
    pub error_pct: f64,
    pub error_kinds: BTreeMap<String, u64>,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub rows: Vec<Row>,
}

impl Summary {
    pub fn from_samples(s: &Samples, steps: &[&str]) -> Summary {
        let rows = steps
            .iter()
            .map(|&step| {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                for &us in s.ok_us.get(step).map(Vec::as_slice).unwrap_or(&[]) {
                    h.record(us.max(1)).expect("auto-resizing histogram");
                }
                let kinds = s.errors.get(step).cloned().unwrap_or_default();
                let errors: u64 = kinds.values().sum();
                let count = h.len() + errors;
                let ms = |us: u64| us as f64 / 1000.0;
                Row {
                    step: step.to_string(),
                    count,
                    errors,
                    error_pct: if count == 0 {
                        0.0
                    } else {
                        100.0 * errors as f64 / count as f64
                    },
                    error_kinds: kinds,
                    avg_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p90_ms: ms(h.value_at_quantile(0.90)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    max_ms: ms(h.max()),
                }
            })
            .collect();
        Summary { rows }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| step | count | errors | error % | avg ms | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                r.step,
                r.count,
                r.errors,
                r.error_pct,
                r.avg_ms,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.max_ms
            ));
        }
        let kinds: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.error_kinds
                    .iter()
                    .map(move |(k, n)| format!("{}: {k} x{n}", r.step))
            })
            .collect();
        if !kinds.is_empty() {
            out.push_str(&format!("\nerrors: {}\n", kinds.join(", ")));
        }
        out
    }
}

/// Percentiles of a latency histogram recorded in µs, as printed.
pub fn latency_line(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    )
}

/// The same percentiles (ms) for the JSON.
pub fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0})
}

/// Latency histograms (µs): the total and, for messages whose read had a
/// kernel receive timestamp, the server's and the client's shares of it
/// (see [`crate::rawws::split_us`]).
pub struct Hists {
    pub total: Histogram<u64>,
    pub server: Histogram<u64>,
    pub client: Histogram<u64>,
}

impl Hists {
    pub fn new() -> Hists {
        let h = || Histogram::new(3).expect("histogram");
        Hists {
            total: h(),
            server: h(),
            client: h(),
        }
    }

    /// One message: (total, Some((server, client))) in µs.
    pub fn record(&mut self, (total, split): (u64, Option<(u64, u64)>)) {
        let _ = self.total.record(total.max(1));
        if let Some((server, client)) = split {
            let _ = self.server.record(server.max(1));
            let _ = self.client.record(client.max(1));
        }
    }

    pub fn add(&mut self, other: &Hists) {
        self.total.add(&other.total).expect("merge histograms");
        self.server.add(&other.server).expect("merge histograms");
        self.client.add(&other.client).expect("merge histograms");
    }

    /// The lines a scenario prints: the total, then the server's and the
    /// client's shares, each in ms.
    pub fn lines(&self, name: &str) -> String {
        let mut out = format!("{name}: {}\n", latency_line(&self.total));
        if self.server.is_empty() {
            out.push_str("  server / client share: n/a (no kernel receive timestamps)\n");
        } else {
            out.push_str(&format!(
                "  server share ms: {} (send to the kernel's arrival at the receiver)\n",
                latency_line(&self.server)
            ));
            out.push_str(&format!(
                "  client share ms: {} (that arrival to parsing; {} of {} stamped)\n",
                latency_line(&self.client),
                self.server.len(),
                self.total.len()
            ));
        }
        out
    }
}

/// `latency_json`, or null for an empty histogram (no timestamps).
pub fn latency_json_opt(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        serde_json::Value::Null
    } else {
        latency_json(h)
    }
}

/// A target rate as printed: `max` for 0 (as fast as possible).
pub fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate:.0}")
    } else {
        "max".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_summarise() {
        let mut a = Samples::default();
        for us in [1000, 2000, 3000] {
            a.ok("flow", us);
        }
        let mut b = Samples::default();
        b.ok("flow", 4000);
        b.error("flow", "timeout");
        a.merge(b);
        let s = Summary::from_samples(&a, &["flow"]);
        let r = &s.rows[0];
        assert_eq!((r.count, r.errors), (5, 1));
        assert!((r.error_pct - 20.0).abs() < 1e-9);
        assert!((r.avg_ms - 2.5).abs() < 0.01, "{}", r.avg_ms);
        assert!((r.max_ms - 4.0).abs() < 0.01);
        assert!(s.markdown().contains("flow: timeout x1"));
    }

    #[test]
    fn latency_lines_with_and_without_shares() {
        let mut h = Hists::new();
        h.record((3000, Some((1000, 2000))));
        let out = h.lines("latency ms");
        assert!(out.starts_with("latency ms: p50 3.00"), "{out}");
        assert!(out.contains("server share ms: p50 1.000"), "{out}");
        assert!(out.contains("client share ms: p50 2.000"), "{out}");
        assert!(out.contains("1 of 1 stamped"), "{out}");
        assert_eq!(latency_json_opt(&h.server)["p99"], 1.0);
        let mut none = Hists::new();
        none.record((3000, None));
        assert!(none.lines("latency ms").contains("n/a"));
        assert_eq!(latency_json_opt(&none.server), serde_json::Value::Null);
        let mut sum = Hists::new();
        sum.add(&h);
        sum.add(&none);
        assert_eq!((sum.total.len(), sum.server.len()), (2, 1));
    }
}
