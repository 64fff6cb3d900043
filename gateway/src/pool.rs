//! Upstream connections, pooled per worker thread.
//!
//! Each worker owns its pool, so checking a connection out or in is a `RefCell` borrow and a `Vec`
//! push or pop: no lock, no channel, no cross-core traffic. HTTP/1.1 connections serve one request
//! at a time ([`h1_client`](crate::h1_client), in the request's task) and return to the pool when
//! their response body has been read to the end (see [`Checkin`]); HTTP/2 upstreams get one
//! multiplexed hyper connection per backend and worker. A pooled HTTP/1.1 connection the backend
//! closed meanwhile is detected on checkout, or when writing the request fails before a byte of it
//! went out, and the request goes out on another connection. Once a second each worker also
//! sweeps its pool ([`Pool::sweep`]): idle connections past their time or hung up on by their
//! backend are closed there, so no socket waits half-closed for a request that may never come.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::body::{BackendBody, BoxError, RequestBody};
use crate::config::UpstreamProtocol;
use crate::error::{ProxyError, TimeoutPhase};
use crate::h1_client::{self, SendError};
use crate::local::LocalExec;
use crate::tls::{BackendTls, Stream};
use crate::upstream::BackendKey;

/// How many idle HTTP/1.1 connections a worker keeps per backend.
const MAX_IDLE_PER_BACKEND: usize = 256;
/// How often a worker looks over its idle connections (see [`Pool::sweep`]).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long an idle HTTP/1.1 connection is kept before it is closed (60 s), in sweeps.
const IDLE_TTL_SWEEPS: u64 = 60 / SWEEP_INTERVAL.as_secs();

/// Where a request (or a relayed TCP connection) goes.
pub struct Destination<'a> {
    /// The backend's identity in the pool.
    pub key: BackendKey,
    /// The backend's address as configured, for errors and logs.
    pub name: &'a str,
    /// Its current addresses, tried in order.
    pub addrs: &'a [SocketAddr],
    /// HTTP/1.1 or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// The route's `connect_timeout_ms`, for the TCP connection and the TLS handshake together.
    pub connect_timeout: Duration,
    /// TLS to the backend, when its upstream has `tls`.
    pub tls: Option<&'a BackendTls>,
}

/// A request that failed: why, and the request itself when it was certainly not sent.
pub struct Failure {
    /// What went wrong.
    pub error: ProxyError,
    /// The request, when no byte of it reached the backend.
    pub unsent: Option<Request<RequestBody>>,
}

impl Failure {
    /// An HTTP/2 send that hyper refused or that failed, with the request when hyper handed it back.
    fn of(target: &Destination<'_>, mut error: TrySendError<Request<RequestBody>>) -> Failure {
        let unsent = error.take_message();
        Failure::http2(target, error.into_error(), unsent)
    }

    /// An HTTP/2 failure: the client's body when hyper says the fault is on the gateway's side
    /// of the exchange, else the backend's.
    fn http2(target: &Destination<'_>, cause: hyper::Error, unsent: Option<Request<RequestBody>>) -> Failure {
        let error = if cause.is_user() { client_body(&cause) } else { upstream(target, cause.into()) };
        Failure { error, unsent }
    }

    /// An HTTP/1.1 failure.
    fn http1(target: &Destination<'_>, error: SendError) -> Failure {
        match error {
            SendError::Unsent(request, cause) => {
                Failure { error: upstream(target, cause.into()), unsent: Some(*request) }
            }
            SendError::ClientBody(cause) => Failure { error: client_body(&*cause), unsent: None },
            SendError::Backend(cause) => Failure { error: upstream(target, cause.into()), unsent: None },
        }
    }
}

fn upstream(target: &Destination<'_>, cause: BoxError) -> ProxyError {
    ProxyError::Upstream { backend: target.name.to_string(), cause }
}

/// The answer when the client's request body failed on the way (malformed chunks, past
/// `max_body_bytes`, stalled): the client's fault, not the backend's.
fn client_body(cause: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut source = Some(cause);
    while let Some(error) = source {
        if error.is::<crate::body::TooLarge>() {
            return ProxyError::BodyTooLarge;
        }
        source = error.source();
    }
    ProxyError::BadRequest("the request body could not be read")
}

/// An idle HTTP/1.1 connection and the sweep it went idle after.
type Idle = (h1_client::Connection, u64);

/// Whether an idle connection may still carry a request after sweep `now`: fresh, and not closed
/// by its backend.
fn reusable((connection, since): &mut Idle, now: u64) -> bool {
    now - *since < IDLE_TTL_SWEEPS && !connection.is_closed()
}

/// A worker's upstream connections.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<FxHashMap<BackendKey, Vec<Idle>>>,
    multiplexed: RefCell<FxHashMap<BackendKey, http2::SendRequest<RequestBody>>>,
    /// A forward proxy's targets (`host:port`) with idle connections, or asked for since the last
    /// sweep, and their keys. Kept per worker and swept, unlike configured backends' keys: a
    /// forward proxy meets new hosts all its life. Keys are never given twice, so a request still
    /// holding a forgotten one only misses a reuse.
    forward_keys: RefCell<HashMap<Box<str>, BackendKey>>,
    forward_keys_given: Cell<u64>,
    /// The pool's clock: sweeps so far. Idle connections age in sweeps, which spares the request
    /// path a clock read when it takes a connection and another when the connection comes back.
    sweeps: Cell<u64>,
}

/// Where an HTTP/1.1 connection goes back once the response it carried is complete.
pub struct Checkin {
    pool: Weak<Pool>,
    key: BackendKey,
}

impl Checkin {
    /// Returns `connection` for reuse (dropping it instead closes it).
    pub fn release(self, connection: h1_client::Connection) {
        if let Some(pool) = self.pool.upgrade() {
            let mut idle = pool.idle.borrow_mut();
            let list = idle.entry(self.key).or_default();
            if list.len() < MAX_IDLE_PER_BACKEND {
                list.push((connection, pool.sweeps.get()));
            }
        }
    }
}

impl Pool {
    /// Sends `request` to the target. An HTTP/1.1 response's body gives its connection back to
    /// the pool once read to its end. A failure hands the request back when it was certainly not
    /// sent, so it can be tried elsewhere.
    pub async fn send(
        self: &Rc<Self>,
        target: &Destination<'_>,
        request: Request<RequestBody>,
    ) -> Result<Response<BackendBody>, Failure> {
        match target.protocol {
            UpstreamProtocol::Http1 => self.send_http1(target, request).await.map(|r| r.map(BackendBody::Http1)),
            UpstreamProtocol::Http2 => self.send_http2(target, request).await.map(|r| r.map(BackendBody::Http2)),
        }
    }

    async fn send_http1(
        self: &Rc<Self>,
        target: &Destination<'_>,
        mut request: Request<RequestBody>,
    ) -> Result<Response<h1_client::Body>, Failure> {
        while let Some(connection) = self.take_idle(target.key) {
            match connection.send(request, self.checkin(target.key)).await {
                Ok(response) => return Ok(response),
                // The connection died before the request went out: try another.
                Err(SendError::Unsent(unsent, _)) => request = *unsent,
                Err(error) => return Err(Failure::http1(target, error)),
            }
        }
        let stream = match connect(target).await {
            Ok(stream) => stream,
            Err(error) => return Err(Failure { error, unsent: Some(request) }),
        };
        h1_client::Connection::new(stream)
            .send(request, self.checkin(target.key))
            .await
            .map_err(|error| Failure::http1(target, error))
    }

    async fn send_http2(
        self: &Rc<Self>,
        target: &Destination<'_>,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Failure> {
        let existing = self.multiplexed.borrow().get(&target.key).filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(sender) => sender,
            // Boxed, like `connect`, so that requests on an open connection do not carry it.
            None => match Box::pin(open_http2(target)).await {
                Ok(sender) => {
                    self.multiplexed.borrow_mut().insert(target.key, sender.clone());
                    sender
                }
                Err(error) => return Err(Failure { error, unsent: Some(request) }),
            },
        };
        if let Err(e) = sender.ready().await {
            return Err(Failure::http2(target, e, Some(request)));
        }
        sender.try_send_request(request).await.map_err(|e| Failure::of(target, e))
    }

    /// The most recently used idle connection that is still open and fresh.
    fn take_idle(&self, key: BackendKey) -> Option<h1_client::Connection> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        let now = self.sweeps.get();
        while let Some(mut idle) = list.pop() {
            if reusable(&mut idle, now) {
                return Some(idle.0);
            }
        }
        None
    }

    /// The key of the forward proxy target `address` (`host:port`, HTTP/1.1 without TLS).
    pub fn forward_key(&self, address: &str) -> BackendKey {
        if let Some(key) = self.forward_keys.borrow().get(address) {
            return *key;
        }
        let key = BackendKey::forward_target(self.forward_keys_given.get());
        self.forward_keys_given.set(self.forward_keys_given.get() + 1);
        self.forward_keys.borrow_mut().insert(address.into(), key);
        key
    }

    fn checkin(self: &Rc<Self>, key: BackendKey) -> Checkin {
        Checkin { pool: Rc::downgrade(self), key }
    }

    /// Closes the idle connections that are past their time or that their backend closed, and
    /// forgets the HTTP/2 connections that ended and the forward proxy targets left without idle
    /// connections. Without it such a socket stays open (half-closed, in CLOSE_WAIT, when the
    /// backend hung up) until the next request to that backend, which may never come: a backend a
    /// reload removed is never asked again.
    fn sweep(&self) {
        let now = self.sweeps.get() + 1;
        self.sweeps.set(now);
        self.idle.borrow_mut().retain(|_, list| {
            list.retain_mut(|idle| reusable(idle, now));
            !list.is_empty()
        });
        self.multiplexed.borrow_mut().retain(|_, sender| !sender.is_closed());
        let idle = self.idle.borrow();
        self.forward_keys.borrow_mut().retain(|_, key| idle.contains_key(key));
    }

    /// Sweeps the pool every [`SWEEP_INTERVAL`] for as long as the worker runs.
    pub async fn sweep_every_interval(self: Rc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep();
        }
    }
}

/// Opens a multiplexed HTTP/2 connection to the target, its connection driven by a task of its own.
async fn open_http2(target: &Destination<'_>) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
    let stream = connect(target).await?;
    let handshake = http2::Builder::new(LocalExec).timer(TokioTimer::new()).handshake(TokioIo::new(stream)).await;
    let (sender, connection) = handshake.map_err(|e| Failure::http2(target, e, None).error)?;
    tokio::task::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Connects to the first of the target's addresses that accepts, then opens TLS when the target
/// has it, all within the connect timeout.
///
/// The work is boxed: a future is as large as everything it may await, and the TCP connect and
/// TLS handshake futures would otherwise enlarge the future of every request, though almost
/// every request finds a pooled connection.
pub async fn connect(target: &Destination<'_>) -> Result<Stream, ProxyError> {
    Box::pin(connect_within_timeout(target)).await
}

async fn connect_within_timeout(target: &Destination<'_>) -> Result<Stream, ProxyError> {
    let attempt = async {
        let mut last_error = None;
        for addr in target.addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small requests and responses must not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    return match target.tls {
                        Some(tls) => tls.connect(stream).await.map_err(|e| format!("TLS handshake failed: {e}")),
                        None => Ok(Stream::Plain(stream)),
                    };
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.map_or_else(|| "the name resolved to no address".to_string(), |e| e.to_string()))
    };
    match timeout(target.connect_timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(cause)) => Err(ProxyError::Connect { backend: target.name.to_string(), cause }),
        Err(_) => Err(ProxyError::Timeout { backend: target.name.to_string(), phase: TimeoutPhase::Connect }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_targets_get_keys_the_sweep_forgets_and_never_gives_again() {
        let pool = Pool::default();
        let a = pool.forward_key("a.example:80");
        assert_eq!(pool.forward_key("a.example:80"), a);
        let b = pool.forward_key("b.example:80");
        assert_ne!(a, b);
        pool.sweep();
        assert!(pool.forward_keys.borrow().is_empty(), "without idle connections, the targets are forgotten");
        let again = pool.forward_key("a.example:80");
        assert!(again != a && again != b, "a forgotten key is not given again");
    }
}
