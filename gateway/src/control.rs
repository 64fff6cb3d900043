//! The control plane: the current snapshot, reloads, and the listening sockets.
//!
//! A reload builds a complete new snapshot off the hot path (parse, validate, load plugins,
//! binding any new listener) and only then swaps it in, in one atomic store: requests in flight
//! keep the snapshot they started with, keep-alive connections pick up the new one on their next
//! request. Anything that fails leaves the old snapshot serving; the error is logged, counted and
//! shown by the admin API. Listeners the new config adds, removes or moves are opened and closed
//! after the swap; workers learn about them through their command channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{self, Config};
use crate::metrics::METRICS;
use crate::plugin::{PluginRuntime, limits};
use crate::snapshot::Snapshot;

/// What the control plane asks a worker to do.
pub enum WorkerCommand {
    /// Start accepting on this socket, under this listener name.
    Listen(String, std::net::TcpListener),
    /// Stop accepting on the listener of this name.
    Close(String),
}

/// A listener socket the control plane keeps, so reloads know what is bound where.
struct Bound {
    address: SocketAddr,
}

/// The gateway's control plane, shared by the signal handler, the file watcher and the admin API.
pub struct Control {
    path: PathBuf,
    runtime: PluginRuntime,
    /// The snapshot requests use.
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    listeners: Mutex<HashMap<String, Bound>>,
    workers: Vec<UnboundedSender<WorkerCommand>>,
    last_error: Mutex<Option<String>>,
    reloading: tokio::sync::Mutex<()>,
    /// Set once shutdown began: `/healthz` answers 503.
    pub draining: AtomicBool,
}

impl Control {
    /// Builds the first snapshot from `config` and binds its listeners; the returned sockets are
    /// handed to the workers, whose command channels are `workers`.
    pub fn start(
        path: PathBuf,
        config: Config,
        workers: Vec<UnboundedSender<WorkerCommand>>,
    ) -> anyhow::Result<Control> {
        // Room for this config's plugins twice over: the old and the new snapshot of a reload.
        let needed = limits::instances_needed(workers.len(), 2 * config.plugins.len());
        let runtime = PluginRuntime::new(needed.max(limits::MIN_INSTANCES))?;
        let snapshot = Snapshot::build(config, 1, &runtime).map_err(anyhow::Error::msg)?;
        snapshot.spawn_background();
        let control = Control {
            path,
            runtime,
            snapshots: Arc::new(ArcSwap::from_pointee(snapshot)),
            listeners: Mutex::new(HashMap::new()),
            workers,
            last_error: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
        };
        let snapshot = control.snapshots.load_full();
        control.open_listeners(&snapshot.config).map_err(anyhow::Error::msg)?;
        METRICS.show_backends(snapshot.backends());
        METRICS.reload(true);
        Ok(control)
    }

    /// Re-reads the config file and its plugins and swaps in the new snapshot; on any error the
    /// old one keeps serving. Returns the new generation or the error.
    pub async fn reload(&self, trigger: &'static str) -> Result<u64, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        METRICS.reload(result.is_ok());
        match &result {
            Ok(generation) => {
                tracing::info!(trigger, generation, "reloaded");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(error) => {
                tracing::error!(trigger, error = %error, "reload failed; the previous config keeps serving");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<u64, String> {
        let path = self.path.clone();
        let runtime = self.runtime.clone();
        let generation = self.snapshots.load().generation + 1;
        // Compiling plugins takes a while: keep it off the control thread's event loop.
        let snapshot = tokio::task::spawn_blocking(move || {
            let config = config::load(&path).map_err(|e| e.to_string())?;
            Snapshot::build(config, generation, &runtime)
        })
        .await
        .map_err(|e| format!("the reload task failed: {e}"))??;
        let plugins = self.snapshots.load().plugins.len() + snapshot.plugins.len();
        self.runtime.check_capacity(limits::instances_needed(self.workers.len(), plugins))?;
        self.open_listeners(&snapshot.config)?;
        snapshot.spawn_background();
        let kept: Vec<&str> = snapshot.plugins.iter().map(|p| p.sha256.as_str()).collect();
        self.runtime.retain_compiled(&kept);
        let snapshot = Arc::new(snapshot);
        self.snapshots.swap(snapshot.clone()).retire();
        METRICS.show_backends(snapshot.backends());
        Ok(generation)
    }

    /// Binds the listeners `config` adds or moves and closes those it no longer has. New sockets
    /// are bound before any worker is told, so a port in use fails the reload cleanly.
    fn open_listeners(&self, config: &Config) -> Result<(), String> {
        let mut bound = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut opened = Vec::new();
        for listener in &config.listeners {
            if bound.get(&listener.name).is_some_and(|b| b.address == listener.listen) {
                continue;
            }
            let moved = bound.contains_key(&listener.name);
            let socket = std::net::TcpListener::bind(listener.listen)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| format!("listener `{}`: cannot listen on {}: {e}", listener.name, listener.listen))?;
            opened.push((listener.name.clone(), listener.listen, socket, moved));
        }
        let closed: Vec<String> =
            bound.keys().filter(|name| !config.listeners.iter().any(|l| &&l.name == name)).cloned().collect();
        for (name, configured, socket, moved) in opened {
            let address = socket.local_addr().map_err(|e| e.to_string())?;
            if moved {
                self.tell_workers(|| Ok(WorkerCommand::Close(name.clone())));
            }
            tracing::info!(listener = name, address = %address, "listening");
            self.tell_workers(|| socket.try_clone().map(|s| WorkerCommand::Listen(name.clone(), s)));
            bound.insert(name, Bound { address: configured });
        }
        for name in closed {
            tracing::info!(listener = name, "listener closed");
            self.tell_workers(|| Ok(WorkerCommand::Close(name.clone())));
            bound.remove(&name);
        }
        Ok(())
    }

    fn tell_workers(&self, command: impl Fn() -> std::io::Result<WorkerCommand>) {
        for worker in &self.workers {
            match command() {
                Ok(command) => {
                    let _ = worker.send(command);
                }
                Err(e) => tracing::error!(error = %e, "cannot hand a listening socket to a worker"),
            }
        }
    }

    /// Tells every worker to stop accepting.
    pub fn close_all_listeners(&self) {
        let names: Vec<String> =
            self.listeners.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(n, _)| n).collect();
        for name in names {
            self.tell_workers(|| Ok(WorkerCommand::Close(name.clone())));
        }
    }

    /// The state `/status` reports.
    pub fn status(&self) -> serde_json::Value {
        let snapshot = self.snapshots.load();
        let routes: Vec<_> = snapshot
            .config
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "path_prefix": r.path_prefix,
                    "upstream": snapshot.config.upstreams[r.upstream].name,
                })
            })
            .collect();
        let upstreams: Vec<_> = snapshot
            .upstreams
            .iter()
            .map(|u| {
                let backends: Vec<_> = u
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        serde_json::json!({
                            "address": b.config.address,
                            "healthy": b.is_healthy(),
                            "in_flight": u.balancer.in_flight(i),
                        })
                    })
                    .collect();
                serde_json::json!({ "name": u.config.name, "backends": backends })
            })
            .collect();
        let plugins: Vec<_> =
            snapshot.plugins.iter().map(|p| serde_json::json!({ "name": p.name(), "sha256": p.sha256 })).collect();
        serde_json::json!({
            "generation": snapshot.generation,
            "last_reload_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
            "draining": self.draining.load(Ordering::Relaxed),
            "routes": routes,
            "upstreams": upstreams,
            "plugins": plugins,
        })
    }

    /// The files whose change triggers a reload: the config and every plugin, certificate, key
    /// and CA bundle it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let snapshot = self.snapshots.load();
        let config = &snapshot.config;
        let plugins = config.plugins.iter().map(|p| p.path.clone());
        std::iter::once(self.path.clone()).chain(plugins).chain(config.tls_files().map(Path::to_path_buf)).collect()
    }
}
