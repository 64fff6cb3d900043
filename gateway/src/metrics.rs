//! Prometheus metrics, served by the admin API at `/metrics`.
//!
//! One registry for the process, so counters keep counting across reloads. On the request path no
//! lock is taken and no cache line is shared between workers: each worker keeps the request
//! counters it has used (a lookup by route name), and the per-request counters and the duration
//! histogram are split into a shard per worker thread, summed when scraped.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
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
use rustc_hash::FxHashMap;

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
struct StateLabels {
    plugin: String,
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
    requests: Family<RequestLabels, HotCounter>,
    duration: Durations,
    plugin_calls: Family<PluginLabels, HotCounter>,
    reloads: Family<ReloadLabels, Counter>,
    backend_healthy: Family<BackendLabels, Gauge>,
    /// The backends `backend_healthy` shows: the current snapshot's.
    backends_shown: Mutex<HashSet<BackendLabels>>,
    tls_handshake_failures: Family<ListenerLabels, Counter>,
    tcp_connections: Family<ListenerLabels, Counter>,
    tcp_active: Family<ListenerLabels, Gauge>,
    state_counters: Gauge,
    state_values: Gauge,
    state_bytes: Family<StateLabels, Gauge>,
}

/// A worker's request counters of one route, by status.
type ByStatus = Vec<(u16, HotCounter)>;

/// How many ways the per-request metrics are split: each worker thread adds to a shard of its own
/// (its own cache line), so workers never write to the same line; a scrape sums the shards.
const SHARDS: usize = 16;

/// `N` counts, split by worker thread.
#[derive(Debug)]
struct Shards<const N: usize>(Box<[Shard<N>; SHARDS]>);

/// One thread's counts, alone on their cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Shard<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for Shards<N> {
    fn default() -> Self {
        Shards(Box::new(std::array::from_fn(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))))
    }
}

impl<const N: usize> Shards<N> {
    /// This thread's shard.
    fn mine(&self) -> &[AtomicU64; N] {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        &self.0[SHARD.with(|shard| *shard)].0
    }

    /// Count `i` over every shard.
    fn sum(&self, i: usize) -> u64 {
        self.0.iter().map(|shard| shard.0[i].load(Ordering::Relaxed)).sum()
    }
}

/// A counter that workers add to without sharing a cache line: for those counted per request
/// (`sluice_requests_total`, `sluice_plugin_calls_total`).
#[derive(Debug, Clone, Default)]
pub struct HotCounter(Arc<Shards<1>>);

impl HotCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.mine()[0].fetch_add(1, Ordering::Relaxed);
    }
}

impl TypedMetric for HotCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for HotCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0.sum(0), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The request duration histogram (`sluice_request_duration_seconds`), sharded like
/// [`HotCounter`]: an observation adds to its bucket and the sum. prometheus-client's own
/// histogram takes a mutex for every observation, which every worker would contend for.
#[derive(Debug, Clone, Default)]
struct Durations(Arc<Shards<{ DURATION_BUCKETS + 2 }>>);

/// The number of finite buckets: 0.1 ms up to ~9 min, each 2.5 times the one before. Counts
/// `0..=DURATION_BUCKETS` of a shard are the buckets (the last is +Inf), not cumulative; the one
/// after them is the sum of the observations in nanoseconds.
const DURATION_BUCKETS: usize = 14;

/// The upper bounds (seconds) of the finite buckets.
static DURATION_BOUNDS: LazyLock<Vec<f64>> =
    LazyLock::new(|| exponential_buckets(0.0001, 2.5, DURATION_BUCKETS as u16).collect());

impl Durations {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(DURATION_BUCKETS);
        let counts = self.0.mine();
        counts[bucket].fetch_add(1, Ordering::Relaxed);
        counts[DURATION_BUCKETS + 1].fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let bounds = DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip((0..=DURATION_BUCKETS).map(|i| self.0.sum(i))).collect();
        // The count is the buckets' sum, so the two always agree in one scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum(DURATION_BUCKETS + 1) as f64 / 1e9;
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
        let requests = Family::<RequestLabels, HotCounter>::default();
        let duration = Durations::default();
        let plugin_calls = Family::<PluginLabels, HotCounter>::default();
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
        let (state_counters, state_values) = (Gauge::default(), Gauge::default());
        registry.register(
            "plugin_state_counters",
            "Windowed counters plugins keep, after the last sweep of those whose windows ended",
            state_counters.clone(),
        );
        registry.register(
            "plugin_state_values",
            "Values plugins stored, after the last sweep of those that expired",
            state_values.clone(),
        );
        let state_bytes = Family::<StateLabels, Gauge>::default();
        registry.register(
            "plugin_state_bytes",
            "Bytes charged to each plugin's shared state, against its state_mb",
            state_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            plugin_calls,
            reloads,
            backend_healthy,
            backends_shown: Mutex::default(),
            tls_handshake_failures,
            tcp_connections,
            tcp_active,
            state_counters,
            state_values,
            state_bytes,
        }
    }

    /// Counts an answered request; `route` is `None` when no route matched.
    pub fn request(&self, route: Option<&Arc<str>>, status: u16, elapsed: Duration) {
        static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));
        // This worker's handles on the counters it has used, by route name then status: the
        // family (behind a lock) is asked once per route and status, not once per request. Names
        // are the key, not the `Arc`s, so a reload that rebuilds the routes adds nothing.
        thread_local! {
            static COUNTERS: RefCell<FxHashMap<Arc<str>, ByStatus>> = RefCell::default();
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
    pub fn plugin_calls(&self, plugin: &Arc<str>, hook: &'static str, outcome: &'static str) -> HotCounter {
        self.plugin_calls.get_or_create(&PluginLabels { plugin: Name(plugin.clone()), hook, outcome }).clone()
    }

    /// Counts a reload: `ok` or `error`.
    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Shows the health of exactly these backends (upstream, address, healthy): the current
    /// snapshot's. The series of backends a reload removed go, rather than report their last
    /// state until the gateway restarts.
    pub fn show_backends<'a>(&self, backends: impl IntoIterator<Item = (&'a str, &'a str, bool)>) {
        let mut shown = self.backends_shown.lock().unwrap_or_else(|e| e.into_inner());
        let now: HashSet<BackendLabels> = backends
            .into_iter()
            .map(|(upstream, backend, healthy)| {
                let labels = BackendLabels { upstream: upstream.to_string(), backend: backend.to_string() };
                self.backend_healthy.get_or_create(&labels).set(i64::from(healthy));
                labels
            })
            .collect();
        for gone in shown.difference(&now) {
            self.backend_healthy.remove(gone);
        }
        *shown = now;
    }

    /// Records whether a backend may receive requests, unless its snapshot is `retired`: checked
    /// under the same lock as [`show_backends`](Self::show_backends), so a replaced snapshot's last
    /// check cannot bring back a series the reload removed.
    pub fn backend_health(&self, upstream: &str, backend: &str, healthy: bool, retired: &AtomicBool) {
        let _shown = self.backends_shown.lock().unwrap_or_else(|e| e.into_inner());
        if retired.load(Ordering::Acquire) {
            return;
        }
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

    /// Records how many entries the plugins' shared state holds, and each plugin's bytes.
    pub fn plugin_state(&self, entries: crate::plugin::state::Entries, usage: Vec<(String, usize)>) {
        self.state_counters.set(entries.counters as i64);
        self.state_values.set(entries.values as i64);
        for (plugin, bytes) in usage {
            self.state_bytes.get_or_create(&StateLabels { plugin }).set(bytes as i64);
        }
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

    #[test]
    fn counts_from_every_thread_add_up() {
        let counter = HotCounter::default();
        let durations = Durations::default();
        std::thread::scope(|scope| {
            for _ in 0..20 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.inc();
                        durations.observe(Duration::from_millis(1));
                    }
                });
            }
        });
        assert_eq!(counter.0.sum(0), 20_000);
        assert_eq!((0..=DURATION_BUCKETS).map(|i| durations.0.sum(i)).sum::<u64>(), 20_000);
        assert_eq!(durations.0.sum(DURATION_BUCKETS + 1), 20_000 * 1_000_000);
    }
}
