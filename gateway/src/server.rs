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
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, watch};

use crate::admin;
use crate::config::ListenerProtocol;
use crate::config::{self, ClientLimits, Config};
use crate::control::{Control, WorkerCommand};
use crate::forward_proxy;
use crate::framing::Strict;
use crate::l4;
use crate::local::LocalExec;
use crate::logging;
use crate::metrics::METRICS;
use crate::preface::{self, Version};
use crate::proxy::{self, Downstream, Worker};
use crate::snapshot::Snapshot;
use crate::tls::{ServerTls, Stream, TlsFacts};

/// Loads the config at `path`, serves it with `workers` threads until SIGTERM or ctrl-c, then
/// drains. SIGHUP, a changed file or `POST /reload` reloads. Returns once every worker stopped.
pub fn run(path: &Path, workers: usize) -> anyhow::Result<()> {
    let config = config::load(path)?;
    logging::init(config.log.format);
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    control.block_on(serve(path.to_path_buf(), config, workers))
}

async fn serve(path: std::path::PathBuf, config: Config, workers: usize) -> anyhow::Result<()> {
    let drain_timeout = config.server.drain_timeout;
    let admin = config.admin.clone();
    let (stop, stopped) = watch::channel(false);
    let mut commands = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let mut inboxes = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (sender, inbox) = mpsc::unbounded_channel();
        commands.push(sender);
        inboxes.push(inbox);
    }
    let control = Arc::new(Control::start(path, config, commands)?);
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let (snapshots, stopped) = (control.snapshots.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || worker(inbox, snapshots, stopped, drain_timeout))
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    let admin_listener = tokio::net::TcpListener::bind(admin.listen)
        .await
        .with_context(|| format!("[admin]: cannot listen on {}", admin.listen))?;
    tracing::info!(listener = "admin", address = %admin_listener.local_addr()?, "listening");
    let admin_api = tokio::spawn(admin::serve(admin_listener, control.clone(), admin.token));
    let watcher =
        if control.snapshots.load().config.server.watch { crate::watch::start(control.clone()) } else { None };
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
    tracing::info!(workers, version = env!("CARGO_PKG_VERSION"), "sluice started");
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            result = tokio::signal::ctrl_c() => {
                result.context("cannot watch for ctrl-c")?;
                break;
            }
            _ = hangup.recv() => {
                let _ = control.reload("SIGHUP").await;
            }
        }
    }
    tracing::info!(drain_timeout_ms = drain_timeout.as_millis() as u64, "shutting down: draining requests in flight");
    control.draining.store(true, Ordering::Relaxed);
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    control.close_all_listeners();
    let _ = stop.send(true);
    for thread in threads {
        if let Err(e) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!(error = %e, "a worker thread could not be joined");
        }
    }
    admin_api.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Connections a worker is serving, so the drain knows when it is done.
#[derive(Default)]
struct Connections {
    open: Cell<usize>,
    all_closed: Notify,
}

/// One worker thread: accepts on the listeners the control plane hands it and serves connections
/// until told to stop, then drains them.
fn worker(
    mut inbox: mpsc::UnboundedReceiver<WorkerCommand>,
    snapshots: Arc<ArcSwap<Snapshot>>,
    stopped: watch::Receiver<bool>,
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
    // The worker's own loop runs as a task: the future a `LocalSet` is driven with is polled at
    // every turn of its event loop, woken or not, and polling this loop's channels there cost
    // ~1,500 instructions a request. A task is polled only when woken; awaiting its handle is cheap.
    let serve = local.spawn_local(async move {
        let worker = Rc::new(Worker::new(snapshots));
        tokio::task::spawn_local(worker.pool.clone().sweep_every_interval());
        let connections = Rc::new(Connections::default());
        let builder = Rc::new(HttpBuilders::new(&worker.snapshots.load().config.server.limits));
        let mut accepting: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut stop = stopped.clone();
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(WorkerCommand::Listen(name, socket)) => {
                        let listener = match tokio::net::TcpListener::from_std(socket) {
                            Ok(listener) => listener,
                            Err(e) => {
                                tracing::error!(listener = name, error = %e, "cannot register the listener with the worker");
                                continue;
                            }
                        };
                        let task = tokio::task::spawn_local(accept(
                            name.clone(),
                            listener,
                            worker.clone(),
                            builder.clone(),
                            connections.clone(),
                            stopped.clone(),
                        ));
                        if let Some(previous) = accepting.insert(name, task) {
                            previous.abort();
                        }
                    }
                    Some(WorkerCommand::Close(name)) => {
                        if let Some(task) = accepting.remove(&name) {
                            task.abort();
                        }
                    }
                    None => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        for task in accepting.into_values() {
            task.abort();
        }
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
    if let Err(e) = local.block_on(&runtime, serve) {
        tracing::error!(error = %e, "a worker stopped with an error");
    }
}

/// The HTTP server settings every connection of a worker uses. hyper answers 431 to a request
/// head over the byte or field limit, and closes a connection whose next request head does not
/// arrive within the header read timeout; h2 resets streams past the concurrency limit and closes
/// connections that reset streams too fast (the 2023 rapid-reset attack).
struct HttpBuilders {
    http1: http1::Builder,
    http2: http2::Builder<LocalExec>,
    /// How long a new connection may take to send its first bytes.
    first_bytes_timeout: Duration,
}

impl HttpBuilders {
    fn new(limits: &ClientLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes);
        // hyper's own limit is 100 fields, kept on the stack; setting any limit, even 100, makes it
        // fill a header array per request (~0.3 µs), so only another value is passed on.
        if limits.max_headers != HYPER_MAX_HEADERS {
            http1.max_headers(limits.max_headers);
        }
        let mut http2 = http2::Builder::new(LocalExec);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(Some(1024));
        HttpBuilders { http1, http2, first_bytes_timeout: limits.header_read_timeout }
    }
}

/// The number of request header fields hyper accepts when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// How long a listener waits after a failed accept before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// The next connection on `listener` (named `name` in logs). An accept that fails (out of file
/// descriptors, most likely: the connection stays in the backlog and the next accept fails alike)
/// is tried again every [`ACCEPT_RETRY`] instead of in a busy loop; a run of failures is logged
/// when it starts and when it ends.
pub async fn next_connection(listener: &tokio::net::TcpListener, name: &str) -> (tokio::net::TcpStream, SocketAddr) {
    let mut failures = 0u64;
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                if failures > 0 {
                    tracing::warn!(listener = name, failures, "accepting connections again");
                }
                return accepted;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(listener = name, error = %e, "accept failed; trying again every {} ms", ACCEPT_RETRY.as_millis());
                }
                failures += 1;
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Open client connections per listener name, across workers, for `max_connections`.
fn open_connections(listener: &str) -> Arc<AtomicUsize> {
    static OPEN: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Arc<AtomicUsize>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.entry(listener.to_string()).or_default().clone()
}

/// Accepts connections on one listener until the worker is told to stop.
async fn accept(
    name: String,
    listener: tokio::net::TcpListener,
    worker: Rc<Worker>,
    builder: Rc<HttpBuilders>,
    connections: Rc<Connections>,
    mut stopped: watch::Receiver<bool>,
) {
    let open = open_connections(&name);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = next_connection(&listener, &name) => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        // The listener as the current snapshot has it: a reload may change its protocol or limit.
        let snapshot = worker.snapshots.load_full();
        let limit = snapshot.listener(&name).map_or(usize::MAX, |l| l.max_connections);
        if open.fetch_add(1, Ordering::Relaxed) >= limit {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(listener = name, client = %peer, limit, "max_connections reached: connection closed");
            continue;
        }
        let _ = stream.set_nodelay(true);
        connections.open.set(connections.open.get() + 1);
        let connection = Connection { name: name.clone(), peer, worker: worker.clone(), builder: builder.clone() };
        let (connections, stopped, open) = (connections.clone(), stopped.clone(), open.clone());
        tokio::task::spawn_local(async move {
            match snapshot.listener(&connection.name).map(|l| &l.protocol) {
                Some(ListenerProtocol::Tcp(proxy)) => {
                    l4::serve(stream, peer, &connection.name, proxy, snapshot.clone()).await;
                }
                Some(ListenerProtocol::Https(_)) => {
                    let tls = snapshot.server_tls(&connection.name).cloned();
                    drop(snapshot);
                    if let Some(tls) = tls {
                        connection.serve_tls(stream, &tls, stopped).await;
                    }
                }
                Some(ListenerProtocol::Forward(_)) => {
                    drop(snapshot);
                    connection.serve(Stream::Plain(stream), None, Role::ForwardProxy, stopped).await;
                }
                Some(ListenerProtocol::Http) | None => {
                    drop(snapshot);
                    connection.serve(Stream::Plain(stream), None, Role::Gateway, stopped).await;
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            connections.open.set(connections.open.get() - 1);
            if connections.open.get() == 0 {
                connections.all_closed.notify_waiters();
            }
        });
    }
}

/// What an HTTP connection's requests are served as.
#[derive(Clone, Copy)]
enum Role {
    /// Routed to upstreams (`http`, `https` listeners).
    Gateway,
    /// Sent where they ask to go (`forward` listeners).
    ForwardProxy,
}

/// An accepted client connection and what serving it needs.
struct Connection {
    name: String,
    peer: SocketAddr,
    worker: Rc<Worker>,
    builder: Rc<HttpBuilders>,
}

impl Connection {
    /// Completes the TLS handshake within the listener's deadline, then serves. A failed or slow
    /// handshake costs this connection only.
    async fn serve_tls(self, stream: tokio::net::TcpStream, tls: &ServerTls, stopped: watch::Receiver<bool>) {
        let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await;
        let stream = match handshake.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(listener = self.name, client = %self.peer, error = %e, "TLS handshake failed");
                METRICS.tls_handshake_failed(&self.name);
                return;
            }
        };
        let facts = TlsFacts::of(stream.get_ref().1);
        self.serve(Stream::Tls(Box::new(stream.into())), Some(facts), Role::Gateway, stopped).await;
    }

    /// Serves HTTP/1.1 or HTTP/2 on the connection until it closes or the worker drains.
    async fn serve(self, stream: Stream, tls: Option<TlsFacts>, role: Role, mut stopped: watch::Receiver<bool>) {
        let Connection { name, peer, worker, builder } = self;
        let downstream = Rc::new(Downstream::new(name, peer, tls));
        let service = service_fn(move |request| {
            let (worker, downstream) = (worker.clone(), downstream.clone());
            async move {
                match role {
                    Role::Gateway => proxy::handle(&worker, &downstream, request).await,
                    Role::ForwardProxy => forward_proxy::handle(&worker, &downstream, request).await,
                }
            }
        });
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(builder.first_bytes_timeout, preface::sniff(stream)) => sniffed,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let result = match sniffed {
            Ok(Ok(Some((Version::Http1, stream)))) => {
                let connection =
                    builder.http1.serve_connection(TokioIo::new(Strict::new(stream)), service).with_upgrades();
                until_drained(connection, |c| c.graceful_shutdown(), stopped).await
            }
            Ok(Ok(Some((Version::Http2, stream)))) => {
                let connection = builder.http2.serve_connection(TokioIo::new(stream), service);
                until_drained(connection, |c| c.graceful_shutdown(), stopped).await
            }
            Ok(Ok(None)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "client connection failed before its first request");
                Ok(())
            }
            Err(_) => {
                tracing::debug!(client = %peer, "client sent nothing within the header read timeout: connection closed");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
        }
    }
}

/// Serves `connection` to its end; once the worker is told to stop, `shut_down` asks it to finish
/// the requests in flight and close.
async fn until_drained<C: Future<Output = Result<(), hyper::Error>>>(
    connection: C,
    shut_down: impl Fn(Pin<&mut C>),
    mut stopped: watch::Receiver<bool>,
) -> Result<(), hyper::Error> {
    let mut connection = std::pin::pin!(connection);
    // The stop signal is one watch channel for the process, and polling it takes a lock that
    // every connection of every worker shares: it is polled once, which leaves this task to be
    // woken by it, and after that checked with an atomic load at each wake-up.
    let signal = stopped.clone();
    let stop = stopped.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let (mut registered, mut draining) = (false, false);
    std::future::poll_fn(|cx| {
        if !draining {
            let stop_now = if registered {
                signal.has_changed().unwrap_or(true)
            } else {
                registered = true;
                stop.as_mut().poll(cx).is_ready()
            };
            if stop_now {
                draining = true;
                shut_down(connection.as_mut());
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}
