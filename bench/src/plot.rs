//! `stampede-bench report`: the comparison tables (Markdown) and plots
//! (PNG) from a directory of result JSON files written by the scenarios'
//! `--json` (with `--label` naming the target).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Directory of result JSON files.
    #[arg(long)]
    pub dir: PathBuf,
    /// Where the PNGs go (default: the results directory).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// TrueType font for the plot text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

pub fn run(args: ReportArgs) -> i32 {
    match report(&args) {
        Ok(md) => {
            print!("{md}");
            0
        }
        Err(e) => {
            eprintln!("report: {e}");
            2
        }
    }
}

/// One storm run, as the tables and plots need it.
struct Storm {
    label: String,
    users: u64,
    ramp: f64,
    flow: Value,
    cpu_per_flow_us: Option<f64>,
}

fn load(dir: &Path) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        docs.push(doc);
    }
    Ok(docs)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn opt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

pub fn report(args: &ReportArgs) -> Result<String, String> {
    let docs = load(&args.dir)?;
    let by = |s: &'static str| docs.iter().filter(move |d| d["scenario"] == s);
    let mut storms: Vec<Storm> = by("storm")
        .filter_map(|d| {
            let flow = d["steps"]["rows"]
                .as_array()?
                .iter()
                .find(|r| r["step"] == "flow")?
                .clone();
            Some(Storm {
                label: d["label"].as_str().unwrap_or("").to_string(),
                users: d["users"].as_u64()?,
                ramp: f(&d["ramp_up_s"]),
                flow,
                cpu_per_flow_us: d["server_cpu_per_flow_us"].as_f64(),
            })
        })
        .collect();
    storms.sort_by(|a, b| {
        (a.ramp == 0.0, &a.label, a.users).cmp(&(b.ramp == 0.0, &b.label, b.users))
    });

    let mut md = String::new();
    md.push_str("### storm (the seed's JMeter flow): whole flow per user\n\n");
    md.push_str("| target | ramp-up s | users | errors | error % | avg ms | p50 ms | p90 ms | p99 ms | max ms | server CPU µs/flow |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in &storms {
        let r = &s.flow;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            s.label,
            s.ramp,
            s.users,
            r["errors"],
            f(&r["error_pct"]),
            f(&r["avg_ms"]),
            f(&r["p50_ms"]),
            f(&r["p90_ms"]),
            f(&r["p99_ms"]),
            f(&r["max_ms"]),
            s.cpu_per_flow_us
                .map(|u| format!("{u:.0}"))
                .unwrap_or_else(|| "–".into()),
        ));
    }
    // Error kinds, so a reader sees *what* failed.
    let kinds: Vec<String> = storms
        .iter()
        .filter(|s| s.flow["errors"].as_u64().unwrap_or(0) > 0)
        .map(|s| {
            let k = s.flow["error_kinds"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} x{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!("- {} {} users (ramp {} s): {k}", s.label, s.users, s.ramp)
        })
        .collect();
    if !kinds.is_empty() {
        md.push_str("\nErrors by kind:\n\n");
        md.push_str(&kinds.join("\n"));
        md.push('\n');
    }

    let holds: Vec<&Value> = by("hold").collect();
    if !holds.is_empty() {
        md.push_str("\n### hold: server memory per idle subscribed session\n\n| target | sessions | established | errors | RSS before MiB | RSS after MiB | bytes/session |\n|---|---|---|---|---|---|---|\n");
    }
    for d in holds {
        let mib = |v: &Value| {
            v.as_f64()
                .map(|k| format!("{:.1}", k / 1024.0))
                .unwrap_or_else(|| "–".into())
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            d["label"].as_str().unwrap_or(""),
            d["sessions"],
            d["established"],
            d["errors"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_u64).sum::<u64>())
                .unwrap_or(0),
            mib(&d["rss_before_kib"]),
            mib(&d["rss_after_kib"]),
            opt(&d["bytes_per_session"], 0),
        ));
    }

    md.push_str("\n### fanout: deliveries per second, publish-to-delivery latency\n\n| target | rooms x members | rate msg/s | sent | delivered/s | lost | out of order | members dropped | p50 ms | p99 ms | server p99 ms | server CPU s | generator CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let fanouts: Vec<&Value> = by("fanout").collect();
    for d in &fanouts {
        if let Some(why) = d["failed"].as_str() {
            md.push_str(&format!(
                "| {} | {} x {} | {} | failed: {why} ||||||||||\n",
                d["label"].as_str().unwrap_or(""),
                d["rooms"],
                d["members"],
                rate_label(d),
            ));
            continue;
        }
        md.push_str(&format!(
            "| {} | {} x {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            d["label"].as_str().unwrap_or(""),
            d["rooms"],
            d["members"],
            rate_label(d),
            d["sent"],
            f(&d["deliveries_per_s"]),
            d["lost"],
            d["out_of_order"],
            dropped(d),
            opt(&d["latency_ms"]["p50"], 2),
            opt(&d["latency_ms"]["p99"], 2),
            opt(&d["server_latency_ms"]["p99"], 2),
            opt(&d["cost"]["server_cpu_s"], 2),
            opt(&d["cost"]["generator_cpu_s"], 2),
        ));
    }

    let sends: Vec<&Value> = by("send").collect();
    if !sends.is_empty() {
        md.push_str("\n### send: SEND throughput and RECEIPT latency\n\n| target | publishers x window | rate | receipted/s | missing | p50 ms | p99 ms | server p99 ms |\n|---|---|---|---|---|---|---|---|\n");
        for d in sends {
            md.push_str(&format!(
                "| {} | {} x {} | {} | {:.0} | {} | {} | {} | {} |\n",
                d["label"].as_str().unwrap_or(""),
                d["publishers"],
                d["window"],
                rate_label(d),
                f(&d["receipts_per_s"]),
                d["missing_receipts"],
                opt(&d["latency_ms"]["p50"], 2),
                opt(&d["latency_ms"]["p99"], 2),
                opt(&d["server_latency_ms"]["p99"], 2),
            ));
        }
    }

    // Plots.
    let font = std::fs::read(&args.font).map_err(|e| {
        format!(
            "font {}: {e} (Debian: apt-get install fonts-dejavu-core)",
            args.font.display()
        )
    })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "font is not a TrueType/OpenType font".to_string())?;
    let out = args.plots.clone().unwrap_or_else(|| args.dir.clone());
    let mut pngs = Vec::new();
    if !storms.is_empty() {
        for (file, title, metric, log) in [
            (
                "storm-avg.png",
                "storm: average flow time (ms, log scale)",
                "avg_ms",
                true,
            ),
            (
                "storm-p99.png",
                "storm: p99 flow time (ms, log scale)",
                "p99_ms",
                true,
            ),
            ("storm-errors.png", "storm: error %", "error_pct", false),
        ] {
            let path = out.join(file);
            storm_plot(&path, title, &storms, metric, log).map_err(|e| format!("{file}: {e}"))?;
            pngs.push(file);
        }
    }
    if fanouts
        .iter()
        .any(|d| d["failed"].is_null() && f(&d["rate"]) == 0.0)
    {
        let path = out.join("fanout.png");
        fanout_plot(&path, &fanouts).map_err(|e| format!("fanout.png: {e}"))?;
        pngs.push("fanout.png");
    }
    let paced = |d: &&Value| d["failed"].is_null() && f(&d["rate"]) > 0.0;
    if fanouts
        .iter()
        .chain(by("send").collect::<Vec<_>>().iter())
        .any(paced)
    {
        let path = out.join("latency.png");
        let runs: Vec<&Value> = docs
            .iter()
            .filter(|d| d["scenario"] == "fanout" || d["scenario"] == "send")
            .filter(paced)
            .collect();
        latency_plot(&path, &runs).map_err(|e| format!("latency.png: {e}"))?;
        pngs.push("latency.png");
    }
    if !pngs.is_empty() {
        md.push_str("\n### plots\n\n");
        for p in pngs {
            md.push_str(&format!("![{p}]({p})\n"));
        }
    }
    Ok(md)
}

/// A run's `rate` as shown: `max` for as fast as possible.
fn rate_label(d: &Value) -> String {
    if f(&d["rate"]) == 0.0 {
        "max".to_string()
    } else {
        format!("{:.0}", f(&d["rate"]))
    }
}

/// Members the server dropped during a fan-out, and why.
fn dropped(d: &Value) -> String {
    let n = d["sessions_dropped"].as_u64().unwrap_or(0);
    if n == 0 {
        return "0".into();
    }
    let why = d["drop_reasons"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{v} {}", k.trim_start_matches("ERROR frame: ")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!("{n} ({why})")
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn storm_plot(path: &Path, title: &str, storms: &[Storm], metric: &str, log: bool) -> PlotResult {
    // One series per (target, ramp-up).
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in storms {
        let ramp = if s.ramp == 0.0 {
            "all at once".to_string()
        } else {
            format!("{} s ramp", s.ramp)
        };
        let y = f(&s.flow[metric]);
        if y.is_finite() {
            series
                .entry(format!("{} ({ramp})", s.label))
                .or_default()
                .push((s.users as f64, y));
        }
    }
    let xs = storms.iter().map(|s| s.users as f64);
    let (x0, x1) = (
        xs.clone().fold(f64::MAX, f64::min).max(1.0) * 0.8,
        xs.fold(1.0, f64::max) * 1.25,
    );
    let ys = series.values().flatten().map(|p| p.1);
    let ymax = ys.clone().fold(0.0, f64::max);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70);
    if log {
        let ymin = ys.filter(|&y| y > 0.0).fold(f64::MAX, f64::min).min(1.0) * 0.5;
        let mut chart = b.build_cartesian_2d(
            (x0..x1).log_scale(),
            (ymin.max(0.001)..(ymax * 2.0).max(1.0)).log_scale(),
        )?;
        chart.configure_mesh().x_desc("users").y_desc("ms").draw()?;
        draw_series(&mut chart, &series)?;
    } else {
        let mut chart = b.build_cartesian_2d((x0..x1).log_scale(), 0.0..(ymax * 1.1).max(1.0))?;
        chart.configure_mesh().x_desc("users").y_desc("%").draw()?;
        draw_series(&mut chart, &series)?;
    }
    root.present()?;
    Ok(())
}

fn draw_series<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
) -> PlotResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dashed = name.contains("all at once") || name.ends_with(" p50");
        let mut pts = pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = color.stroke_width(if dashed { 1 } else { 3 });
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// Server-side latency against the rate achieved, for runs at a set rate:
/// one series per target and shape (fan-out rooms x members, SEND→RECEIPT),
/// p99 thick and p50 thin, each point the *worst* of the runs at that
/// target rate (a target counts as met when its worst run meets it).
fn latency_plot(path: &Path, runs: &[&Value]) -> PlotResult {
    let series = latency_series(runs);
    let xs = series.values().flatten().map(|p| p.0);
    let (x0, x1) = (
        xs.clone().fold(f64::MAX, f64::min).max(1.0) * 0.7,
        xs.fold(1.0, f64::max) * 1.4,
    );
    let ys = series.values().flatten().map(|p| p.1);
    let ymax = ys.clone().fold(0.0, f64::max);
    let ymin = ys.filter(|&y| y > 0.0).fold(f64::MAX, f64::min).min(1.0) * 0.5;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "server latency vs rate (worst run per rate; ms, log scale)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0..x1).log_scale(),
            (ymin.max(0.01)..(ymax * 2.0).max(1.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("deliveries/s (fan-out), receipts/s (SEND→RECEIPT)")
        .y_desc("ms")
        .draw()?;
    draw_series(&mut chart, &series)?;
    root.present()?;
    Ok(())
}

/// The points of `latency_plot`: series name -> (mean achieved rate, worst
/// latency of the runs at one target rate).
fn latency_series(runs: &[&Value]) -> BTreeMap<String, Vec<(f64, f64)>> {
    // (series, target rate) -> (achieved rates, worst p50, worst p99)
    let mut points: BTreeMap<(String, u64), (Vec<f64>, f64, f64)> = BTreeMap::new();
    for d in runs {
        let label = d["label"].as_str().unwrap_or("");
        let (shape, achieved) = if d["scenario"] == "send" {
            ("SEND→RECEIPT".to_string(), f(&d["receipts_per_s"]))
        } else {
            (
                format!("fan-out {}x{}", d["rooms"], d["members"]),
                f(&d["deliveries_per_s"]),
            )
        };
        // The server's share where the generator measured it.
        let lat = if d["server_latency_ms"].is_object() {
            &d["server_latency_ms"]
        } else {
            &d["latency_ms"]
        };
        let (p50, p99) = (f(&lat["p50"]), f(&lat["p99"]));
        if !(achieved.is_finite() && p50.is_finite() && p99.is_finite()) {
            continue;
        }
        let e = points
            .entry((format!("{label} {shape}"), f(&d["rate"]) as u64))
            .or_insert((Vec::new(), 0.0, 0.0));
        e.0.push(achieved);
        e.1 = e.1.max(p50);
        e.2 = e.2.max(p99);
    }
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((name, _), (rates, p50, p99)) in &points {
        let x = rates.iter().sum::<f64>() / rates.len() as f64;
        series
            .entry(format!("{name} p99"))
            .or_default()
            .push((x, *p99));
        series
            .entry(format!("{name} p50"))
            .or_default()
            .push((x, *p50));
    }
    series
}

fn fanout_plot(path: &Path, fanouts: &[&Value]) -> PlotResult {
    let bars: Vec<(String, f64)> = fanouts
        .iter()
        // Throughput: the as-fast-as-possible runs only.
        .filter(|d| d["failed"].is_null() && f(&d["rate"]) == 0.0)
        .map(|d| {
            (
                format!(
                    "{}\n{}x{}",
                    d["label"].as_str().unwrap_or(""),
                    d["rooms"],
                    d["members"]
                ),
                f(&d["deliveries_per_s"]).max(0.0),
            )
        })
        .collect();
    let ymax = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "fanout: deliveries per second, publishers as fast as members take",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..bars.len() as f64, 0.0..ymax)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.replace('\n', " ")).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("deliveries/s")
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;
    for (i, (_, v)) in bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, *v)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{:.0}k", v / 1000.0),
            (x + 0.3, *v + ymax * 0.02),
            ("sans-serif", 16),
        )))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_and_plots_from_results() {
        let dir = std::env::temp_dir().join(format!("sb-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let storm = |label: &str, users: u64, avg: f64, errs: u64| {
            serde_json::json!({"scenario": "storm", "label": label, "users": users, "ramp_up_s": 1.0,
                "server_cpu_per_flow_us": 80.0,
                "steps": {"rows": [{"step": "flow", "count": users, "errors": errs,
                    "error_pct": 100.0 * errs as f64 / users as f64, "error_kinds": {"timeout": errs},
                    "avg_ms": avg, "p50_ms": avg, "p90_ms": avg, "p99_ms": avg * 2.0, "max_ms": avg * 3.0}]}})
        };
        for (i, d) in [
            storm("stampede", 100, 1.0, 0),
            storm("stampede", 1000, 1.2, 0),
            storm("spring", 100, 50.0, 0),
            storm("spring", 1000, 600.0, 120),
            serde_json::json!({"scenario": "fanout", "label": "stampede", "rooms": 100, "members": 100,
                "rate": 0.0, "sent": 10, "deliveries_per_s": 600000.0, "lost": 0, "out_of_order": 0,
                "latency_ms": {"p50": 1.0, "p99": 2.0}, "server_latency_ms": {"p50": 0.5, "p99": 1.5},
                "cost": {"server_cpu_s": 1.0, "generator_cpu_s": 2.0}}),
            // Older results have no server share: shown as "–".
            serde_json::json!({"scenario": "fanout", "label": "spring", "rooms": 10, "members": 100,
                "rate": 500.0, "sent": 10, "deliveries_per_s": 50000.0, "lost": 0, "out_of_order": 0,
                "latency_ms": {"p50": 1.0, "p99": 2.0}, "cost": {"server_cpu_s": 1.0, "generator_cpu_s": 2.0}}),
            serde_json::json!({"scenario": "send", "label": "stampede", "publishers": 4, "window": 64,
                "rate": 0.0, "receipts_per_s": 50000.0, "missing_receipts": 0,
                "latency_ms": {"p50": 1.0, "p99": 3.0}, "server_latency_ms": {"p50": 0.4, "p99": 2.5}}),
            serde_json::json!({"scenario": "hold", "label": "stampede", "sessions": 100, "established": 100,
                "errors": {}, "rss_before_kib": 1000, "rss_after_kib": 1200, "bytes_per_session": 2048.0}),
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(dir.join(format!("{i}.json")), d.to_string()).unwrap();
        }
        let font = std::path::PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        if !font.exists() {
            eprintln!("no DejaVu font here; plots not tested");
            return;
        }
        let md = super::report(&super::ReportArgs {
            dir: dir.clone(),
            plots: None,
            font,
        })
        .unwrap();
        assert!(
            md.contains("| spring | 1 | 1000 | 120 | 12.00 | 600.00 |"),
            "{md}"
        );
        assert!(
            md.contains("- spring 1000 users (ramp 1 s): timeout x120"),
            "{md}"
        );
        assert!(
            md.contains("| stampede | 100 x 100 | max | 10 | 600000 | 0 | 0 |"),
            "{md}"
        );
        assert!(md.contains("| 1.00 | 2.00 | 1.50 | 1.00 | 2.00 |"), "{md}");
        assert!(
            md.contains("| spring | 10 x 100 | 500 | 10 | 50000 | 0 | 0 | 0 | 1.00 | 2.00 | – |"),
            "{md}"
        );
        assert!(
            md.contains("| stampede | 4 x 64 | max | 50000 | 0 | 1.00 | 3.00 | 2.50 |"),
            "{md}"
        );
        assert!(
            md.contains("| stampede | 100 | 100 | 0 | 1.0 | 1.2 | 2048 |"),
            "{md}"
        );
        for png in [
            "storm-avg.png",
            "storm-p99.png",
            "storm-errors.png",
            "fanout.png",
            "latency.png",
        ] {
            let bytes = std::fs::read(dir.join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5000, "{png}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latency_points_are_the_worst_run_per_rate() {
        let run = |rate: f64, achieved: f64, p99: f64| {
            serde_json::json!({"scenario": "fanout", "label": "A", "rooms": 10, "members": 100,
                "rate": rate, "deliveries_per_s": achieved,
                "latency_ms": {"p50": 9.0, "p99": 99.0},
                "server_latency_ms": {"p50": p99 / 2.0, "p99": p99}})
        };
        let runs = [
            run(100.0, 9_000.0, 1.0),
            run(100.0, 11_000.0, 3.0),
            run(1000.0, 100_000.0, 5.0),
        ];
        let refs: Vec<&serde_json::Value> = runs.iter().collect();
        let s = super::latency_series(&refs);
        assert_eq!(
            s["A fan-out 10x100 p99"],
            vec![(10_000.0, 3.0), (100_000.0, 5.0)]
        );
        assert_eq!(
            s["A fan-out 10x100 p50"],
            vec![(10_000.0, 1.5), (100_000.0, 2.5)]
        );
    }
}
