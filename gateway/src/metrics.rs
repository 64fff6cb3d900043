//! Prometheus metrics, served by the admin API at `/metrics`.
//!
//! One registry for the process, so counters keep counting across reloads. On the request path a
//! metric update is a hash lookup of a small label set and an atomic add; route names are shared
//! `Arc<str>`s so building the labels allocates nothing.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    duration: Histogram,
    plugin_calls: Family<PluginLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    backend_healthy: Family<BackendLabels, Gauge>,
    tls_handshake_failures: Family<ListenerLabels, Counter>,
    tcp_connections: Family<ListenerLabels, Counter>,
    tcp_active: Family<ListenerLabels, Gauge>,
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
        let duration = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
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
        let route = Name(route.unwrap_or(&NO_ROUTE).clone());
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        self.duration.observe(elapsed.as_secs_f64());
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
