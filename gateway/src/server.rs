//! Listeners, worker threads and connections: the part that moves bytes.
//!
//! One worker per core, each a single-threaded tokio runtime that accepts on every listener and
//! serves its connections to the end, so a request never changes threads and per-worker state
//! (the upstream pool) needs no locks. The control thread that called [`run`] handles signals and
//! background work. Shutdown (SIGTERM, ctrl-c) stops accepting, asks every connection to finish
//! its requests in flight (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), and
//! waits up to `[server] drain_timeout_ms` before exiting.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{Notify, watch};

use crate::config::{self, Config};
use crate::local::LocalExec;
use crate::logging;
use crate::plugin::PluginRuntime;
use crate::pool::Pool;
use crate::proxy::{self, Downstream, Worker};
use crate::snapshot::Snapshot;

/// A listener socket bound by the control thread and shared by the workers.
struct BoundListener {
    name: String,
    socket: std::net::TcpListener,
}

/// Loads the config at `path`, serves it with `workers` threads until SIGTERM or ctrl-c, then
/// drains. Returns once every worker has stopped.
pub fn run(path: &Path, workers: usize) -> anyhow::Result<()> {
    let config = config::load(path)?;
    logging::init(config.log.format);
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    control.block_on(serve(config, workers))
}

async fn serve(config: Config, workers: usize) -> anyhow::Result<()> {
    let listeners = bind(&config)?;
    let drain_timeout = config.server.drain_timeout;
    let runtime = PluginRuntime::new()?;
    let snapshot = Snapshot::build(config, 1, &runtime).map_err(anyhow::Error::msg)?;
    snapshot.spawn_background();
    let snapshots = Arc::new(ArcSwap::from_pointee(snapshot));
    let (stop, stopped) = watch::channel(false);
    let mut threads = Vec::with_capacity(workers);
    for id in 0..workers {
        let sockets = listeners
            .iter()
            .map(|l| Ok((l.name.clone(), l.socket.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot share the listening sockets with a worker")?;
        let (snapshots, stopped) = (snapshots.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || worker(sockets, snapshots, stopped, drain_timeout))
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    tracing::info!(workers, version = env!("CARGO_PKG_VERSION"), "sluice started");
    shutdown_signal().await?;
    tracing::info!(drain_timeout_ms = drain_timeout.as_millis() as u64, "shutting down: draining requests in flight");
    let _ = stop.send(true);
    drop(listeners);
    for thread in threads {
        if let Err(e) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!(error = %e, "a worker thread could not be joined");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds every listener, or fails naming the one that could not be bound.
fn bind(config: &Config) -> anyhow::Result<Vec<BoundListener>> {
    config
        .listeners
        .iter()
        .map(|l| {
            let socket = std::net::TcpListener::bind(l.listen)
                .with_context(|| format!("listener `{}`: cannot listen on {}", l.name, l.listen))?;
            socket.set_nonblocking(true)?;
            let address = socket.local_addr()?;
            tracing::info!(listener = l.name, address = %address, "listening");
            Ok(BoundListener { name: l.name.clone(), socket })
        })
        .collect()
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot watch for ctrl-c")?,
    }
    Ok(())
}

/// Connections a worker is serving, so the drain knows when it is done.
#[derive(Default)]
struct Connections {
    open: Cell<usize>,
    all_closed: Notify,
}

/// One worker thread: accepts on every listener and serves connections until told to stop.
fn worker(
    sockets: Vec<(String, std::net::TcpListener)>,
    snapshots: Arc<ArcSwap<Snapshot>>,
    mut stopped: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker { snapshots, pool: Rc::new(Pool::default()) });
        let connections = Rc::new(Connections::default());
        let mut builder = auto::Builder::new(LocalExec);
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let builder = Rc::new(builder);
        for (name, socket) in sockets {
            let listener = match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(listener = name, error = %e, "cannot register the listener with the worker");
                    continue;
                }
            };
            let (worker, builder, connections, stopped) =
                (worker.clone(), builder.clone(), connections.clone(), stopped.clone());
            tokio::task::spawn_local(accept(name, listener, worker, builder, connections, stopped));
        }
        let _ = stopped.wait_for(|stop| *stop).await;
        let drained = tokio::time::timeout(drain_timeout, async {
            while connections.open.get() > 0 {
                connections.all_closed.notified().await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(open = connections.open.get(), "drain deadline passed; closing the remaining connections");
        }
    });
}

/// Accepts connections on one listener until the worker is told to stop.
async fn accept(
    name: String,
    listener: tokio::net::TcpListener,
    worker: Rc<Worker>,
    builder: Rc<auto::Builder<LocalExec>>,
    connections: Rc<Connections>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let downstream = Rc::new(Downstream { listener: name.clone(), peer });
        connections.open.set(connections.open.get() + 1);
        tokio::task::spawn_local(serve_connection(
            stream,
            peer,
            downstream,
            worker.clone(),
            builder.clone(),
            connections.clone(),
            stopped.clone(),
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    downstream: Rc<Downstream>,
    worker: Rc<Worker>,
    builder: Rc<auto::Builder<LocalExec>>,
    connections: Rc<Connections>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let (worker, downstream) = (worker.clone(), downstream.clone());
        async move { proxy::handle(&worker, &downstream, request).await }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.wait_for(|stop| *stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
    connections.open.set(connections.open.get() - 1);
    if connections.open.get() == 0 {
        connections.all_closed.notify_waiters();
    }
}
