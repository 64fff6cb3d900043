//! Everything built from one config file, immutable once built.
//!
//! A request takes the current snapshot when it starts and keeps it to its end, so a reload that
//! swaps in a new snapshot never changes the rules under a request in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Config, ListenerConfig, ListenerProtocol, RouteConfig};
use crate::plugin::{LoadedPlugin, PluginRuntime};
use crate::router::Router;
use crate::tls::ServerTls;
use crate::upstream::Upstream;

/// The gateway's state for one version of the config.
pub struct Snapshot {
    /// Counts successful loads, starting at 1.
    pub generation: u64,
    /// The config this snapshot was built from.
    pub config: Config,
    /// Finds the route of a request.
    pub router: Router,
    /// The TLS of each `https` listener, parallel to `config.listeners`.
    tls: Vec<Option<Arc<ServerTls>>>,
    /// Parallel to `config.upstreams`.
    pub upstreams: Vec<Upstream>,
    /// Parallel to `config.plugins`.
    pub plugins: Vec<LoadedPlugin>,
    /// Route names, parallel to `config.routes`, shared with metric labels.
    pub route_names: Vec<Arc<str>>,
    /// Set once a reload has replaced the snapshot: its background work stops then, although an
    /// idle worker may hold on to the snapshot itself until its next request.
    retired: Arc<AtomicBool>,
}

impl Snapshot {
    /// Builds the run-time state of `config`: reads and checks TLS certificates and keys, loads
    /// every plugin (compiling, checking its contract, running its init), resolves backend names,
    /// builds balancers. The error names the listener, upstream or plugin, and the file.
    pub fn build(config: Config, generation: u64, runtime: &PluginRuntime) -> Result<Snapshot, String> {
        let tls = config
            .listeners
            .iter()
            .map(|l| match &l.protocol {
                ListenerProtocol::Https(tls) => ServerTls::build(&l.name, tls).map(|t| Some(Arc::new(t))),
                ListenerProtocol::Http | ListenerProtocol::Tcp(_) | ListenerProtocol::Forward(_) => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        let upstreams = config.upstreams.iter().cloned().map(Upstream::new).collect::<Result<_, _>>()?;
        let plugins = config.plugins.iter().map(|p| runtime.load(p)).collect::<Result<Vec<_>, _>>()?;
        let router = Router::new(&config.routes);
        let route_names = config.routes.iter().map(|r| Arc::from(r.name.as_str())).collect();
        Ok(Snapshot { generation, config, router, tls, upstreams, plugins, route_names, retired: Arc::default() })
    }

    /// Starts the background work the snapshot needs (DNS re-resolution, health checks) on the
    /// current runtime;
    /// it stops by itself once the snapshot is retired or dropped.
    pub fn spawn_background(&self) {
        for upstream in &self.upstreams {
            upstream.spawn_resolver(&self.retired);
            upstream.spawn_health_checks(&self.retired);
        }
    }

    /// Stops the snapshot's background work: a reload replaced it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Every backend as (upstream, address, healthy now), for the metrics.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.upstreams.iter().flat_map(|upstream| {
            let name = upstream.config.name.as_str();
            upstream.backends.iter().map(move |b| (name, b.config.address.as_str(), b.is_healthy()))
        })
    }

    /// The route at `index`, as returned by the router.
    pub fn route(&self, index: usize) -> &RouteConfig {
        &self.config.routes[index]
    }

    /// The listener named `name`, if this snapshot still has it.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.config.listeners.iter().find(|l| l.name == name)
    }

    /// The TLS of the listener named `name`; `None` when it is not an `https` listener.
    pub fn server_tls(&self, name: &str) -> Option<&Arc<ServerTls>> {
        let index = self.config.listeners.iter().position(|l| l.name == name)?;
        self.tls[index].as_ref()
    }
}
