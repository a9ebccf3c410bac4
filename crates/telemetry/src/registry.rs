use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

type SeriesKey = (&'static str, String);

/// A counter series. Clones share it; `add` takes no lock.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, by: u64) {
        self.0.fetch_add(by, Ordering::Relaxed);
    }
}

/// A latency histogram series. Clones share it; `observe` takes no lock.
#[derive(Clone, Default)]
pub struct Histogram(Arc<Buckets>);

/// Per-bucket counts (not cumulative: one add per observation; rendering sums them up), and
/// one more for observations past the last bound.
#[derive(Default)]
struct Buckets {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|bound| secs <= *bound).unwrap_or(BUCKETS.len());
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Series handles of one call site, kept per thread under a key of the caller's (say, an
/// operation's name): after a thread's first use of a key, recording takes neither the
/// registry's lock nor an allocation. Declare it in a `thread_local!`.
pub struct SeriesCache<K, V>(RefCell<HashMap<K, V>>);

impl<K, V> Default for SeriesCache<K, V> {
    fn default() -> Self {
        SeriesCache(RefCell::new(HashMap::new()))
    }
}

impl<K: Hash + Eq, V> SeriesCache<K, V> {
    /// Runs `f` on the handles of `key`, made by `make` on the first use in this thread.
    pub fn with<R>(&self, key: K, make: impl FnOnce() -> V, f: impl FnOnce(&V) -> R) -> R {
        let mut map = self.0.borrow_mut();
        f(map.entry(key).or_insert_with(make))
    }
}

#[derive(Default)]
struct Series {
    counters: BTreeMap<SeriesKey, Counter>,
    gauges: BTreeMap<SeriesKey, i64>,
    histograms: BTreeMap<SeriesKey, Histogram>,
    help: BTreeMap<&'static str, &'static str>,
}

/// Metric values of one process. `labels` is the Prometheus label body, e.g. `method="x"`.
/// `inc` and `observe` look the series up under a lock; hot paths keep the handles `counter`
/// and `histogram` return instead (see [`SeriesCache`]).
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

    /// The counter `name{labels}`, registered on first use.
    pub fn counter(&self, name: &'static str, labels: &str) -> Counter {
        self.with(|s| s.counters.entry((name, labels.to_owned())).or_default().clone())
    }

    /// The histogram `name{labels}`, registered on first use.
    pub fn histogram(&self, name: &'static str, labels: &str) -> Histogram {
        self.with(|s| s.histograms.entry((name, labels.to_owned())).or_default().clone())
    }

    pub fn inc(&self, name: &'static str, labels: &str, by: u64) {
        self.counter(name, labels).add(by);
    }

    pub fn set_gauge(&self, name: &'static str, labels: &str, value: i64) {
        self.with(|s| s.gauges.insert((name, labels.to_owned()), value));
    }

    pub fn observe(&self, name: &'static str, labels: &str, elapsed: Duration) {
        self.histogram(name, labels).observe(elapsed);
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

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.load(Ordering::Relaxed))
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
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&h.0.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let le = format!("le=\"{bound}\"");
            let _ = writeln!(out, "{} {cumulative}", labelled(&bucket, labels, &le));
        }
        let total = cumulative + h.0.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let sum = h.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{} {total}", labelled(&bucket, labels, "le=\"+Inf\""));
        let _ = writeln!(out, "{} {sum}", labelled(&format!("{name}_sum"), labels, ""));
        let _ = writeln!(out, "{} {total}", labelled(&format!("{name}_count"), labels, ""));
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
        assert!(text.contains("ember_latency_seconds_sum 10.0003"), "{text}");
    }

    #[test]
    fn handles_record_into_the_series_the_lookups_see() {
        let r = Registry::default();
        let hits = r.counter("ember_hits_total", "op=\"x\"");
        hits.add(2);
        r.inc("ember_hits_total", "op=\"x\"", 1);
        r.counter("ember_hits_total", "op=\"x\"").add(4);
        let took = r.histogram("ember_took_seconds", "");
        took.observe(Duration::from_micros(50));
        r.observe("ember_took_seconds", "", Duration::from_millis(3));
        let text = r.render();
        assert!(text.contains("ember_hits_total{op=\"x\"} 7"), "{text}");
        assert!(text.contains("ember_took_seconds_bucket{le=\"0.0001\"} 1"), "{text}");
        assert!(text.contains("ember_took_seconds_bucket{le=\"0.005\"} 2"), "{text}");
        assert!(text.contains("ember_took_seconds_count 2"), "{text}");
    }

    #[test]
    fn a_series_cache_makes_each_key_once_per_thread() {
        let cache: SeriesCache<&str, u32> = SeriesCache::default();
        let mut made = 0;
        for key in ["a", "b", "a", "a"] {
            cache.with(key, || { made += 1; made }, |_| ());
        }
        assert_eq!(made, 2);
        assert_eq!(cache.with("a", || 99, |v| *v), 1);
    }
}
