//! `gatehouse metrics`: the extension's counters and latency percentiles in the Prometheus text
//! exposition format, on stdout or atomically into a node_exporter textfile-collector file
//! (`--output`, rewritten every `--interval` with `--interval`). It runs in its own process and
//! asks the control socket, so nothing here touches the delivery thread.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use protocol::StatsReport;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Write into this file (a `.prom` file in the textfile collector's directory), replaced
    /// atomically (written beside it, then renamed), instead of printing.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Keep rewriting --output every this many seconds (a failed round is reported on stderr
    /// and retried).
    #[arg(long, value_name = "SECONDS", requires = "output")]
    pub interval: Option<u64>,
    /// The extension's control socket.
    #[arg(long, default_value = crate::control::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// Counters that are levels, not running totals (exported as gauges).
fn is_gauge(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "log_disk_full",
        "helper_breaker_open",
        "trusted.pinned",
        "backend.fanotify.ignore_budget",
        "backend.fanotify.ignore_marks_live",
        "backend.liveness.pending",
        "backend.opener.running",
        "backend.opener.still_running",
    ];
    EXACT.contains(&name)
        || name.starts_with("backend.marks.")
        || name.contains("_max")
        || name.ends_with(".running")
}

/// A metric name: `gatehouse_` + the counter's name with every other character as `_`.
fn metric_name(name: &str) -> String {
    let mut out = String::from("gatehouse_");
    out.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    out
}

/// The report in the Prometheus text exposition format (version 0.0.4).
pub fn exposition(s: &StatsReport) -> String {
    let mut out = String::new();
    for (name, v) in &s.counters {
        let (m, kind) = if is_gauge(name) {
            (metric_name(name), "gauge")
        } else {
            (format!("{}_total", metric_name(name)), "counter")
        };
        out.push_str(&format!("# TYPE {m} {kind}\n{m} {v}\n"));
    }
    for (m, v) in [
        ("gatehouse_queue_depth", s.queue_depth),
        ("gatehouse_queue_capacity", s.queue_capacity),
    ] {
        out.push_str(&format!("# TYPE {m} gauge\n{m} {v}\n"));
    }
    if !s.latencies.is_empty() {
        let m = "gatehouse_latency_seconds";
        out.push_str(&format!(
            "# HELP {m} Decision latency by stage, from the extension's histograms.\n# TYPE {m} summary\n"
        ));
        for l in &s.latencies {
            let stage = l.name.replace(['\\', '"', '\n'], "_");
            for (q, us) in [("0.5", l.p50_us), ("0.9", l.p90_us), ("0.99", l.p99_us)] {
                out.push_str(&format!(
                    "{m}{{stage=\"{stage}\",quantile=\"{q}\"}} {}\n",
                    us as f64 / 1e6
                ));
            }
            out.push_str(&format!("{m}_count{{stage=\"{stage}\"}} {}\n", l.count));
            let mx = "gatehouse_latency_max_seconds";
            out.push_str(&format!(
                "{mx}{{stage=\"{stage}\"}} {}\n",
                l.max_us as f64 / 1e6
            ));
        }
    }
    out
}

/// Write `text` to `path` atomically: a reader sees the old file or the new one, never half.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn metrics(a: MetricsArgs) -> anyhow::Result<ExitCode> {
    let once = || -> anyhow::Result<()> {
        let text = exposition(&crate::control::fetch_stats(&a.control_socket)?);
        match &a.output {
            Some(p) => write_atomic(p, &text),
            None => {
                print!("{text}");
                Ok(())
            }
        }
    };
    let Some(secs) = a.interval else {
        once()?;
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        if let Err(e) = once() {
            eprintln!("gatehouse: metrics: {e:#}; retrying in {secs} s");
        }
        std::thread::sleep(Duration::from_secs(secs.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LatencySummary;

    #[test]
    fn exposition_names_and_types() {
        let s = StatsReport {
            counters: vec![
                ("answers.deny".into(), 7),
                ("log_disk_full".into(), 1),
                ("backend.delivery.records_max_per_read".into(), 3),
            ],
            latencies: vec![LatencySummary {
                name: "fast_path".into(),
                count: 9,
                p50_us: 2,
                p90_us: 3,
                p99_us: 5,
                max_us: 40,
            }],
            queue_depth: 0,
            queue_capacity: 1024,
        };
        let text = exposition(&s);
        for want in [
            "# TYPE gatehouse_answers_deny_total counter\ngatehouse_answers_deny_total 7\n",
            "# TYPE gatehouse_log_disk_full gauge\ngatehouse_log_disk_full 1\n",
            "# TYPE gatehouse_backend_delivery_records_max_per_read gauge\n",
            "gatehouse_queue_capacity 1024\n",
            "gatehouse_latency_seconds{stage=\"fast_path\",quantile=\"0.99\"} 0.000005\n",
            "gatehouse_latency_seconds_count{stage=\"fast_path\"} 9\n",
            "gatehouse_latency_max_seconds{stage=\"fast_path\"} 0.00004\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }
}
