use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

type SeriesKey = (&'static str, String);

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Series {
    counters: BTreeMap<SeriesKey, u64>,
    gauges: BTreeMap<SeriesKey, i64>,
    histograms: BTreeMap<SeriesKey, Histogram>,
    help: BTreeMap<&'static str, &'static str>,
}

/// Metric values of one process. `labels` is the Prometheus label body, e.g. `method="x"`.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Series>,
}

/// The process-wide registry that services record into and `/metrics` serves.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut Series) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn describe(&self, name: &'static str, help: &'static str) {
        self.with(|s| s.help.insert(name, help));
    }

    pub fn inc(&self, name: &'static str, labels: &str, by: u64) {
        self.with(|s| *s.counters.entry((name, labels.to_owned())).or_default() += by);
    }

    pub fn set_gauge(&self, name: &'static str, labels: &str, value: i64) {
        self.with(|s| s.gauges.insert((name, labels.to_owned()), value));
    }

    pub fn observe(&self, name: &'static str, labels: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.with(|s| {
            let h = s.histograms.entry((name, labels.to_owned())).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        });
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            render_simple(&mut out, &s.help, &s.counters, "counter");
            render_simple(&mut out, &s.help, &s.gauges, "gauge");
            render_histograms(&mut out, &s.help, &s.histograms);
            out
        })
    }
}

fn header(out: &mut String, help: &BTreeMap<&'static str, &'static str>, name: &str, kind: &str) {
    if let Some(h) = help.get(name) {
        let _ = writeln!(out, "# HELP {name} {h}");
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labelled(name: &str, labels: &str, extra: &str) -> String {
    let body: Vec<&str> = [labels, extra].into_iter().filter(|l| !l.is_empty()).collect();
    if body.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", body.join(","))
    }
}

fn render_simple<V: std::fmt::Display>(
    out: &mut String,
    help: &BTreeMap<&'static str, &'static str>,
    series: &BTreeMap<SeriesKey, V>,
    kind: &str,
) {
    let mut last = "";
    for ((name, labels), v) in series {
        if *name != last {
            header(out, help, name, kind);
            last = name;
        }
        let _ = writeln!(out, "{} {v}", labelled(name, labels, ""));
    }
}

fn render_histograms(
    out: &mut String,
    help: &BTreeMap<&'static str, &'static str>,
    series: &BTreeMap<SeriesKey, Histogram>,
) {
    let mut last = "";
    for ((name, labels), h) in series {
        if *name != last {
            header(out, help, name, "histogram");
            last = name;
        }
        let bucket = format!("{name}_bucket");
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let le = format!("le=\"{bound}\"");
            let _ = writeln!(out, "{} {count}", labelled(&bucket, labels, &le));
        }
        let _ = writeln!(out, "{} {}", labelled(&bucket, labels, "le=\"+Inf\""), h.count);
        let _ = writeln!(out, "{} {}", labelled(&format!("{name}_sum"), labels, ""), h.sum);
        let _ = writeln!(out, "{} {}", labelled(&format!("{name}_count"), labels, ""), h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let r = Registry::default();
        r.describe("ember_requests_total", "Requests served.");
        r.inc("ember_requests_total", "method=\"a\"", 2);
        r.inc("ember_requests_total", "method=\"a\"", 1);
        r.set_gauge("ember_up", "", 1);
        r.observe("ember_latency_seconds", "", Duration::from_micros(300));
        r.observe("ember_latency_seconds", "", Duration::from_secs(10));
        let text = r.render();
        assert!(text.contains("# HELP ember_requests_total Requests served."));
        assert!(text.contains("ember_requests_total{method=\"a\"} 3"));
        assert!(text.contains("ember_up 1"));
        assert!(text.contains("ember_latency_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("ember_latency_seconds_bucket{le=\"0.0001\"} 0"));
        assert!(text.contains("ember_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("ember_latency_seconds_count 2"));
    }
}
