//! Prometheus metrics, served by the admin API at `/metrics`.
//!
//! One registry for the process, so counters keep counting across reloads. On the request path no
//! lock is taken: each worker keeps the request counters it has used (a lookup by route name, then
//! an atomic add), and the duration histogram is a row of atomics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A label value shared without copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Name,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginLabels {
    plugin: Name,
    hook: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    upstream: String,
    backend: String,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Durations,
    plugin_calls: Family<PluginLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    backend_healthy: Family<BackendLabels, Gauge>,
    tls_handshake_failures: Family<ListenerLabels, Counter>,
    tcp_connections: Family<ListenerLabels, Counter>,
    tcp_active: Family<ListenerLabels, Gauge>,
}

/// A worker's request counters of one route, by status.
type ByStatus = Vec<(u16, Counter)>;

/// The request duration histogram (`sluice_request_duration_seconds`) without a lock: an
/// observation adds to its bucket, the count and the sum, each an atomic. prometheus-client's own
/// histogram takes a mutex for every observation, which every worker would contend for.
#[derive(Debug, Clone, Default)]
struct Durations(Arc<DurationCounts>);

#[derive(Debug, Default)]
struct DurationCounts {
    /// Observations per bucket of [`DURATION_BOUNDS`], then the rest (+Inf): not cumulative.
    buckets: [AtomicU64; DURATION_BUCKETS + 1],
    /// The sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

/// The number of finite buckets: 0.1 ms up to ~9 min, each 2.5 times the one before.
const DURATION_BUCKETS: usize = 14;

/// The upper bounds (seconds) of the finite buckets.
static DURATION_BOUNDS: LazyLock<Vec<f64>> = LazyLock::new(|| exponential_buckets(0.0001, 2.5, 14).collect());

impl Durations {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(DURATION_BUCKETS);
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let bounds = DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed))).collect();
        // The count is the buckets' sum, so the two always agree in one scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Keeps a relayed TCP connection counted as active until dropped.
pub struct Active(Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Durations::default();
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let backend_healthy = Family::<BackendLabels, Gauge>::default();
        let tls_handshake_failures = Family::<ListenerLabels, Counter>::default();
        let tcp_connections = Family::<ListenerLabels, Counter>::default();
        let tcp_active = Family::<ListenerLabels, Gauge>::default();
        registry.register("requests", "Requests answered, by route and status", requests.clone());
        registry.register("request_duration_seconds", "Time to the response headers", duration.clone());
        registry.register("plugin_calls", "Plugin hook calls, by outcome", plugin_calls.clone());
        registry.register("reloads", "Config reloads, by result", reloads.clone());
        registry.register(
            "upstream_backend_healthy",
            "1 when the backend may receive requests",
            backend_healthy.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed or timed out, by listener",
            tls_handshake_failures.clone(),
        );
        registry.register("tcp_connections", "Connections accepted by tcp listeners", tcp_connections.clone());
        registry.register("tcp_connections_active", "Connections tcp listeners are relaying now", tcp_active.clone());
        Metrics {
            registry,
            requests,
            duration,
            plugin_calls,
            reloads,
            backend_healthy,
            tls_handshake_failures,
            tcp_connections,
            tcp_active,
        }
    }

    /// Counts an answered request; `route` is `None` when no route matched.
    pub fn request(&self, route: Option<&Arc<str>>, status: u16, elapsed: Duration) {
        static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));
        // This worker's handles on the counters it has used, by route name then status: the
        // family (behind a lock) is asked once per route and status, not once per request. Names
        // are the key, not the `Arc`s, so a reload that rebuilds the routes adds nothing.
        thread_local! {
            static COUNTERS: RefCell<HashMap<Arc<str>, ByStatus>> = RefCell::default();
        }
        let route = route.unwrap_or(&NO_ROUTE);
        COUNTERS.with_borrow_mut(|counters| {
            if let Some((_, counter)) = counters.get(&**route).and_then(|s| s.iter().find(|(code, _)| *code == status))
            {
                counter.inc();
                return;
            }
            let counter = self.requests.get_or_create(&RequestLabels { route: Name(route.clone()), status }).clone();
            counter.inc();
            counters.entry(route.clone()).or_default().push((status, counter));
        });
        self.duration.observe(elapsed);
    }

    /// The counter of a plugin's calls of `hook` that ended with `outcome` (`ok`, `error` or
    /// `timeout`); plugins keep it, so counting a call is one atomic add.
    pub fn plugin_calls(&self, plugin: &Arc<str>, hook: &'static str, outcome: &'static str) -> Counter {
        self.plugin_calls.get_or_create(&PluginLabels { plugin: Name(plugin.clone()), hook, outcome }).clone()
    }

    /// Counts a reload: `ok` or `error`.
    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Records whether a backend may receive requests.
    pub fn backend_health(&self, upstream: &str, backend: &str, healthy: bool) {
        let labels = BackendLabels { upstream: upstream.to_string(), backend: backend.to_string() };
        self.backend_healthy.get_or_create(&labels).set(i64::from(healthy));
    }

    /// Counts a client whose TLS handshake failed or timed out.
    pub fn tls_handshake_failed(&self, listener: &str) {
        self.tls_handshake_failures.get_or_create(&ListenerLabels { listener: listener.to_string() }).inc();
    }

    /// Counts a connection accepted by the tcp listener `listener`; it counts as active until the
    /// returned guard is dropped.
    pub fn tcp_connection(&self, listener: &str) -> Active {
        let labels = ListenerLabels { listener: listener.to_string() };
        self.tcp_connections.get_or_create(&labels).inc();
        let active = self.tcp_active.get_or_create(&labels).clone();
        active.inc();
        Active(active)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# encoding failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them_and_encode_cumulatively() {
        let durations = Durations::default();
        let mut registry = Registry::default();
        registry.register("d", "durations", durations.clone());
        for micros in [50, 100, 101, 2_000_000, 3_600_000_000] {
            durations.observe(Duration::from_micros(micros));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "d_count 5",
            "d_sum 3602.000251",
            "d_bucket{le=\"0.0001\"} 2",
            "d_bucket{le=\"0.00025\"} 3",
            "d_bucket{le=\"0.95367431640625\"} 3",
            "d_bucket{le=\"2.384185791015625\"} 4",
            "d_bucket{le=\"14.901161193847657\"} 4",
            "d_bucket{le=\"+Inf\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
