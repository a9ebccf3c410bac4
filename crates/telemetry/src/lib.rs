//! Logging setup (`tracing`, filtered by `RUST_LOG`), a process-wide metrics registry, and the
//! HTTP endpoint that serves it as Prometheus text at `/metrics`.
//!
//! The registry is deliberately small: counters, gauges and latency histograms keyed by a
//! metric name and one label set. Library crates record into it; only binaries serve it.
//! Counters and histograms are atomics behind shared handles, so code on a hot path keeps
//! the handles (per thread, in a [`SeriesCache`]) and records without a lock.

mod http;
mod registry;

pub use http::serve_metrics;
pub use registry::{global, Counter, Histogram, Registry, SeriesCache};

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides `default_filter`.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // A second call (tests start several services in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
