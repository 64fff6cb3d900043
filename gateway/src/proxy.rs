//! The life of a request: the one place that orders the phases.
//!
//! ```text
//! request ─▶ route (host, path normalised, method) ─▶ forwarding rules ─▶ pick a backend
//!         ─▶ send over a pooled connection (connect / response-header deadlines)
//!         ─▶ response: hop-by-hop headers dropped, body streamed back (idle deadline)
//! ```
//!
//! Protocol code (the `server`, the `pool`) moves bytes; this file decides. Plugins
//! (on-request before the backend is picked, on-response after it answers) slot in here. Every
//! failure is a [`ProxyError`] and becomes a response in one place ([`ProxyError::response`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::balance::{self, Lease};
use crate::body::{BackendBody, RequestBody, ResponseBody, UpstreamBody};
use crate::config::{BalancePolicy, HashKey, OnError, RouteConfig, UpstreamConfig, UpstreamProtocol};
use crate::error::{ProxyError, Source, TimeoutPhase};
use crate::forward::{self, Forwarded};
use crate::h1_client::Upgraded;
use crate::logging;
use crate::metrics::METRICS;
use crate::net::IpText;
use crate::path;
use crate::plugin::bindings::types;
use crate::plugin::chain::{self, Chain, Target, Verdict};
use crate::pool::Pool;
use crate::snapshot::Snapshot;
use crate::tls::TlsFacts;
use crate::upstream::Upstream;

/// What a worker thread shares between its connections.
pub struct Worker {
    /// The current snapshot; swapped by reloads.
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    /// The snapshot this worker's requests last used, shared among them without touching the
    /// snapshot's process-wide reference count (a cache line every worker would write to).
    #[expect(clippy::redundant_allocation, reason = "an Rc per worker in front of the shared Arc")]
    current: RefCell<Rc<Arc<Snapshot>>>,
    /// This worker's upstream connections.
    pub pool: Rc<Pool>,
}

impl Worker {
    /// A worker serving from `snapshots`.
    pub fn new(snapshots: Arc<ArcSwap<Snapshot>>) -> Worker {
        let current = RefCell::new(Rc::new(snapshots.load_full()));
        Worker { snapshots, current, pool: Rc::new(Pool::default()) }
    }

    /// The current snapshot, for one request: it stays whole while the request runs, whatever
    /// reloads do meanwhile.
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        let latest = self.snapshots.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(&current, &latest) {
            *current = Rc::new(arc_swap::Guard::into_inner(latest));
        }
        current.clone()
    }
}

/// What is known about the client connection a request came on.
pub struct Downstream {
    /// The listener's name.
    pub listener: String,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer's address as a header value, formatted once per connection.
    pub peer_text: HeaderValue,
    /// What TLS told about the connection; `None` for cleartext.
    pub tls: Option<TlsFacts>,
}

impl Downstream {
    /// A connection from `peer` on the listener `listener`, over TLS when `tls` is set.
    pub fn new(listener: String, peer: SocketAddr, tls: Option<TlsFacts>) -> Self {
        let peer_text =
            HeaderValue::from_str(IpText::new(peer.ip()).as_str()).expect("an address is a valid header value");
        Downstream { listener, peer, peer_text, tls }
    }
}

/// The facts the access log reports, filled in as the phases run.
#[derive(Default)]
struct Trace<'s> {
    route: Option<&'s Arc<str>>,
    backend: Option<&'s str>,
    client: Option<std::net::IpAddr>,
}

/// Serves one request; never fails: errors become responses here.
pub async fn handle(
    worker: &Worker,
    downstream: &Downstream,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snapshot = worker.snapshot();
    let log_access = snapshot.config.log.access;
    let method = log_access.then(|| request.method().clone());
    let uri = log_access.then(|| request.uri().clone());
    let mut trace = Trace::default();
    let response = match proxy(worker, &snapshot, downstream, request, &mut trace).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(route = trace.route.map(|r| &**r), error = %error, "request failed");
            error.response()
        }
    };
    METRICS.request(trace.route, response.status().as_u16(), started.elapsed());
    if let (Some(method), Some(uri)) = (method, uri) {
        tracing::info!(
            target: logging::ACCESS,
            method = %method,
            path = uri.path(),
            route = trace.route.map_or("-", |r| &**r),
            backend = trace.backend.unwrap_or("-"),
            status = response.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            client = %trace.client.unwrap_or(downstream.peer.ip()),
        );
    }
    Ok(response)
}

async fn proxy<'s>(
    worker: &Worker,
    snapshot: &'s Snapshot,
    downstream: &Downstream,
    request: Request<Incoming>,
    trace: &mut Trace<'s>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Phase: route.
    let uri = request.uri().clone();
    let host = request_host(&request)?;
    let normalized = path::normalize(uri.path());
    let route_index = snapshot
        .router
        .route(&downstream.listener, host.as_ref().and_then(|h| h.to_str().ok()), request.method(), &normalized)
        .ok_or(ProxyError::NoRoute)?;
    let route = snapshot.route(route_index);
    trace.route = Some(&snapshot.route_names[route_index]);
    if let Some(max) = route.max_body_bytes
        && request.body().size_hint().lower() > max
    {
        return Err(ProxyError::BodyTooLarge);
    }
    let trusted = snapshot.listener(&downstream.listener).map_or(&[][..], |l| &l.trusted_proxies[..]);
    let client_ip = forward::client_ip(downstream.peer.ip(), request.headers(), trusted);
    trace.client = Some(client_ip);
    let (mut parts, body) = request.into_parts();
    let mut target = Target { path: normalized, query: uri.query().map(Cow::Borrowed) };

    // Phase: on-request of the route's plugins.
    let mut chain = Chain::new(&route.plugins, &snapshot.plugins, &route.name, downstream.tls.as_ref());
    let mut response = match chain.on_request(&mut parts, &mut target, client_ip)? {
        Verdict::Respond(response) => *response,
        // Phase: the backend. Its failures are answers that on-response still sees.
        Verdict::Continue => {
            let context = chain.context();
            let exchange = Exchange { snapshot, route, uri: &uri, host, client_ip, trusted, target, context };
            match forward_to_backend(worker, downstream, exchange, parts, body, trace).await {
                Ok(response) => response,
                Err(ProxyError::Plugin { plugin, failure }) => return Err(ProxyError::Plugin { plugin, failure }),
                Err(error) => {
                    tracing::warn!(route = route.name, error = %error, "request failed");
                    error.response()
                }
            }
        }
    };

    // Phase: on-response, in reverse.
    chain.on_response(&mut response)?;
    Ok(response)
}

/// What the backend phase needs to know about the request beyond its parts.
struct Exchange<'s, 'u> {
    snapshot: &'s Snapshot,
    route: &'s RouteConfig,
    uri: &'u Uri,
    host: Option<HeaderValue>,
    client_ip: IpAddr,
    trusted: &'s [crate::net::Cidr],
    target: Target<'u>,
    context: &'u [u8],
}

/// Applies the forwarding rules, picks a backend and calls it.
async fn forward_to_backend<'s>(
    worker: &Worker,
    downstream: &Downstream,
    exchange: Exchange<'s, '_>,
    mut parts: http::request::Parts,
    body: Incoming,
    trace: &mut Trace<'s>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Exchange { snapshot, route, uri, host, client_ip, trusted, target, context } = exchange;
    let upstream = &snapshot.upstreams[route.upstream];

    // Forwarding rules.
    let peer_trusted = trusted.iter().any(|net| net.contains(downstream.peer.ip()));
    let upgrade = forward::is_upgrade_request(&parts.headers);
    let client_version = parts.version;
    parts.uri = upstream_uri(uri, &target, route, &upstream.config, host.as_ref())?;
    let scheme = if downstream.tls.is_some() { "https" } else { "http" };
    let forwarded = Forwarded { peer: &downstream.peer_text, peer_trusted, scheme, host: host.as_ref() };
    forward::prepare_request(&mut parts.headers, upgrade, &forwarded);
    match upstream.config.protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if let (false, Some(host)) = (parts.headers.contains_key(header::HOST), host) {
                parts.headers.insert(header::HOST, host);
            }
        }
        UpstreamProtocol::Http2 => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
    // Only an HTTP/1.0 client may leave Host out; the backend, spoken to in HTTP/1.1, must get one.
    let host_from_backend =
        upstream.config.protocol == UpstreamProtocol::Http1 && !parts.headers.contains_key(header::HOST);
    let mut request = Request::from_parts(parts, RequestBody::new(body, route.idle_timeout, route.max_body_bytes));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

    // Pick a backend and call it; a backend that fails is left out of the next try. Idempotent
    // requests without a body are kept to be sent again if the first backend drops them.
    let replay = (route.retries > 0
        && upstream.backends.len() > 1
        && client_upgrade.is_none()
        && request.method().is_idempotent()
        && request.body().is_end_stream())
    .then(|| Replay::of(&request));
    if replay.is_some() {
        upstream.retry_budget.deposit();
    }
    let mut failed: Vec<usize> = Vec::new();
    let (mut response, lease) = loop {
        if upstream.balancer.total_in_flight() >= upstream.config.max_requests {
            return Err(ProxyError::Overloaded { upstream: upstream.config.name.clone() });
        }
        let selecting = chain::Selecting {
            method: request.method(),
            headers: request.headers(),
            target: &target,
            client_ip,
            tls: downstream.tls.as_ref(),
            route: &route.name,
            context,
        };
        let lease = pick_backend(snapshot, upstream, &selecting, &failed)?;
        let backend = &upstream.backends[lease.index()];
        trace.backend = Some(&backend.config.address);
        if host_from_backend && let Ok(address) = HeaderValue::from_str(&backend.config.address) {
            request.headers_mut().insert(header::HOST, address);
        }
        let addrs = backend.addrs();
        let destination = backend.destination(&addrs, upstream.config.protocol, route.connect_timeout);
        let failure = match tokio::time::timeout(route.timeout, worker.pool.send(&destination, request)).await {
            Ok(Ok(response)) => {
                record(upstream, backend, response.status().as_u16() < 500);
                break (response, lease);
            }
            // The client's own body failed: not the backend's fault, and not retriable.
            Ok(Err(failure)) if matches!(failure.error.source(), Source::Downstream) => return Err(failure.error),
            Ok(Err(failure)) => failure,
            Err(_) => {
                let address = backend.config.address.clone();
                return Err(ProxyError::Timeout { backend: address, phase: TimeoutPhase::ResponseHeaders });
            }
        };
        record(upstream, backend, false);
        let again = failure.unsent.or_else(|| replay.as_ref().map(Replay::request));
        let others_left = (0..upstream.backends.len()).any(|i| i != lease.index() && available(upstream, &failed, i));
        match again {
            Some(again) if failed.len() < route.retries as usize && others_left && upstream.retry_budget.withdraw() => {
                tracing::info!(route = route.name, error = %failure.error, "retrying on another backend");
                failed.push(lease.index());
                request = again;
            }
            _ => return Err(failure.error),
        }
    };

    // Answer. An HTTP/1.0 client gets an HTTP/1.1 response here, which hyper writes as 1.0,
    // keeping the connection when the client asked for keep-alive (a 1.0 response would close it).
    *response.version_mut() = if client_version == Version::HTTP_2 { Version::HTTP_2 } else { Version::HTTP_11 };
    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let (mut parts, body) = response.into_parts();
        if let BackendBody::Http1(body) = body
            && let Some(backend) = body.into_upgraded()
        {
            tokio::task::spawn_local(tunnel(client_upgrade, backend, route.idle_timeout, lease));
        }
        forward::remove_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }
    forward::remove_hop_by_hop(response.headers_mut(), false);
    Ok(response.map(|body| ResponseBody::Upstream(UpstreamBody::new(body, route.idle_timeout, Some(lease)))))
}

/// Records how a request to `backend` went for passive outlier detection, logging an ejection.
fn record(upstream: &Upstream, backend: &crate::upstream::Backend, ok: bool) {
    if let Some(ejection) = backend.health.record(ok) {
        tracing::warn!(
            upstream = upstream.config.name,
            backend = backend.config.address,
            ejection_s = ejection.as_secs(),
            "backend ejected after {} failed requests in a row",
            crate::health::EJECT_AFTER
        );
    }
}

/// What it takes to send a request without a body again.
struct Replay {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(request: &Request<RequestBody>) -> Replay {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        }
    }

    fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The host the client asked for: the Host header, or the authority of an HTTP/2 request.
///
/// An HTTP/1.1 request without Host and any request with more than one are refused, as RFC 9112
/// §3.2 requires: with two, the route would be chosen by one and a backend might read the other.
fn request_host(request: &Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("the request has more than one Host header")),
        (Some(host), None) => Ok(Some(host.clone())),
        (None, _) if request.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("an HTTP/1.1 request must have a Host header"))
        }
        (None, _) => Ok(request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())),
    }
}

/// The request target the backend sees: the path (normalised, or as a plugin set it; without the
/// route's prefix when `strip_prefix` is set) and the query; origin-form for HTTP/1.1, with scheme
/// and authority for HTTP/2. The client's URI is kept as it is when nothing changed.
fn upstream_uri(
    uri: &Uri,
    target: &Target<'_>,
    route: &RouteConfig,
    upstream: &UpstreamConfig,
    host: Option<&HeaderValue>,
) -> Result<Uri, ProxyError> {
    let protocol = upstream.protocol;
    let path = if route.strip_prefix { path::strip_prefix(&target.path, &route.path_prefix) } else { &target.path };
    let origin_form = uri.scheme().is_none() && uri.authority().is_none();
    let query = target.query.as_deref();
    if protocol == UpstreamProtocol::Http1 && origin_form && path == uri.path() && query == uri.query() {
        return Ok(uri.clone());
    }
    let path_and_query = match query {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))?;
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path_and_query);
    if protocol == UpstreamProtocol::Http2 {
        let authority = host
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .ok_or(ProxyError::BadRequest("the request has no valid Host"))?;
        parts.scheme = Some(if upstream.tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(authority);
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))
}

/// Picks a healthy backend: by the upstream's plugin when it has one, else by its policy.
fn pick_backend(
    snapshot: &Snapshot,
    upstream: &Upstream,
    request: &chain::Selecting<'_>,
    failed: &[usize],
) -> Result<Lease, ProxyError> {
    let healthy = |i: usize| available(upstream, failed, i);
    let hash = match &upstream.config.balance {
        BalancePolicy::ConsistentHash(HashKey::ClientIp) => balance::hash_ip(request.client_ip),
        BalancePolicy::ConsistentHash(HashKey::Header(name)) => {
            balance::hash_key(request.headers.get(name).map_or(&b""[..], HeaderValue::as_bytes))
        }
        BalancePolicy::Plugin(plugin) => {
            let plugin = &snapshot.plugins[*plugin];
            let offered: Vec<usize> = (0..upstream.backends.len()).filter(|&i| healthy(i)).collect();
            let backends: Vec<types::Backend<'_>> = offered
                .iter()
                .map(|&i| {
                    let config = &upstream.backends[i].config;
                    types::Backend {
                        address: &config.address,
                        weight: config.weight,
                        zone: config.zone.as_deref().unwrap_or(""),
                    }
                })
                .collect();
            match chain::select_backend(plugin, request, &backends) {
                Ok(Some(choice)) => return Ok(upstream.balancer.lease(offered[choice])),
                Ok(None) => 0,
                Err(failure) => {
                    tracing::warn!(plugin = plugin.name(), hook = "select-backend", route = request.route, error = %failure, "plugin failed");
                    if plugin.config.on_error == OnError::Deny {
                        return Err(ProxyError::Plugin { plugin: plugin.name().to_string(), failure });
                    }
                    0
                }
            }
        }
        _ => 0,
    };
    upstream
        .balancer
        .pick(&healthy, hash)
        .ok_or_else(|| ProxyError::NoHealthyBackend { upstream: upstream.config.name.clone() })
}

/// Whether backend `i` may take this request: healthy, and not among those that failed it.
fn available(upstream: &Upstream, failed: &[usize], i: usize) -> bool {
    upstream.backends[i].is_healthy() && !failed.contains(&i)
}

/// Joins the client's and the backend's upgraded connections and copies bytes both ways until
/// both sides are done, or nothing moved for the route's idle timeout; the lease keeps the
/// backend counted as busy meanwhile.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: Upgraded, idle: std::time::Duration, _lease: Lease) {
    let mut client = match client.await {
        Ok(client) => TokioIo::new(client),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let relayed = async {
        client.write_all(&backend.read_ahead).await?;
        crate::relay::relay(client, backend.io, idle).await
    };
    if let Err(e) = relayed.await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}
