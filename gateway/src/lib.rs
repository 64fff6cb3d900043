//! Sluice: a programmable API gateway.
//!
//! A request travels `server` (listeners, workers, connections) → [`proxy`] (the one file that
//! orders the phases: route, forward, pick a backend, call it, answer) → `pool` (upstream
//! connections) and back. Everything built from the config lives in an immutable
//! [`snapshot::Snapshot`]; a request keeps the snapshot it started with.
//!
//! Start reading at [`proxy`], then [`server`].

pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod control;
pub mod error;
pub mod forward;
pub mod forward_proxy;
pub mod framing;
pub mod h1_client;
pub mod health;
pub mod l4;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod path;
pub mod plugin;
pub mod pool;
pub mod preface;
pub mod proxy;
pub mod relay;
pub mod router;
pub mod scaffold;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod watch;

/// Validates the config at `path` and builds everything a snapshot needs, without serving.
/// Returns a one-line summary.
pub fn check(path: &std::path::Path) -> anyhow::Result<String> {
    let config = config::load(path)?;
    let summary = format!(
        "{}: ok ({} listeners, {} upstreams, {} routes, {} plugins)",
        path.display(),
        config.listeners.len(),
        config.upstreams.len(),
        config.routes.len(),
        config.plugins.len()
    );
    let runtime = plugin::PluginRuntime::new(plugin::limits::MIN_INSTANCES)?;
    snapshot::Snapshot::build(config, 1, &runtime).map_err(anyhow::Error::msg)?;
    Ok(summary)
}
