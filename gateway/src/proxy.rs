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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::balance::{self, Lease};
use crate::body::{RequestBody, ResponseBody, UpstreamBody};
use crate::config::{BalancePolicy, HashKey, RouteConfig, UpstreamProtocol};
use crate::error::{ProxyError, TimeoutPhase};
use crate::forward::{self, Forwarded};
use crate::logging;
use crate::path;
use crate::pool::{Pool, Target};
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;

/// What a worker thread shares between its connections.
pub struct Worker {
    /// The current snapshot; swapped by reloads.
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    /// This worker's upstream connections.
    pub pool: Rc<Pool>,
}

/// What is known about the client connection a request came on.
pub struct Downstream {
    /// The listener's name.
    pub listener: String,
    /// The TCP peer.
    pub peer: SocketAddr,
}

/// The facts the access log reports, filled in as the phases run.
#[derive(Default)]
struct Trace<'s> {
    route: Option<&'s str>,
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
    let snapshot = worker.snapshots.load_full();
    let log_access = snapshot.config.log.access;
    let method = log_access.then(|| request.method().clone());
    let uri = log_access.then(|| request.uri().clone());
    let mut trace = Trace::default();
    let response = match proxy(worker, &snapshot, downstream, request, &mut trace).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(route = trace.route, error = %error, "request failed");
            error.response()
        }
    };
    if let (Some(method), Some(uri)) = (method, uri) {
        tracing::info!(
            target: logging::ACCESS,
            method = %method,
            path = uri.path(),
            route = trace.route.unwrap_or("-"),
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
    mut request: Request<Incoming>,
    trace: &mut Trace<'s>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Phase: route.
    let host = request_host(&request);
    let normalized = path::normalize(request.uri().path());
    let route_index = snapshot
        .router
        .route(
            &downstream.listener,
            host.as_ref().and_then(|h| h.to_str().ok()),
            request.method(),
            &normalized,
        )
        .ok_or(ProxyError::NoRoute)?;
    let route = snapshot.route(route_index);
    trace.route = Some(&route.name);
    let upstream = &snapshot.upstreams[route.upstream];

    // Phase: forwarding rules.
    let trusted = snapshot
        .listener(&downstream.listener)
        .map_or(&[][..], |l| &l.trusted_proxies[..]);
    let peer_trusted = trusted.iter().any(|net| net.contains(downstream.peer.ip()));
    let client_ip = forward::client_ip(downstream.peer.ip(), request.headers(), trusted);
    trace.client = Some(client_ip);
    let upgrade = forward::is_upgrade_request(request.headers());
    let client_version = request.version();
    let new_uri = upstream_uri(
        &request,
        &normalized,
        route,
        upstream.config.protocol,
        host.as_ref(),
    )?;
    drop(normalized);
    *request.uri_mut() = new_uri;
    let forwarded = Forwarded {
        peer: downstream.peer.ip(),
        peer_trusted,
        scheme: "http",
        host: host.as_ref(),
    };
    forward::prepare_request(request.headers_mut(), upgrade, &forwarded);
    match upstream.config.protocol {
        UpstreamProtocol::Http1 => {
            *request.version_mut() = Version::HTTP_11;
            if let (false, Some(host)) = (request.headers().contains_key(header::HOST), host) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        UpstreamProtocol::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
        }
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

    // Phase: pick a backend.
    let hash = match &upstream.config.balance {
        BalancePolicy::ConsistentHash(HashKey::ClientIp) => match client_ip {
            std::net::IpAddr::V4(ip) => balance::hash_key(&ip.octets()),
            std::net::IpAddr::V6(ip) => balance::hash_key(&ip.octets()),
        },
        BalancePolicy::ConsistentHash(HashKey::Header(name)) => balance::hash_key(
            request
                .headers()
                .get(name)
                .map_or(&b""[..], HeaderValue::as_bytes),
        ),
        _ => 0,
    };
    let lease = pick_backend(upstream, hash)?;
    let backend = &upstream.backends[lease.index()];
    trace.backend = Some(&backend.config.address);

    // Phase: call the backend.
    let addrs = backend.addrs();
    let target = Target {
        key: backend.key,
        name: &backend.config.address,
        addrs: &addrs,
        protocol: upstream.config.protocol,
        connect_timeout: route.connect_timeout,
    };
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, RequestBody::new(body, route.idle_timeout));
    let (mut response, checkin) =
        tokio::time::timeout(route.timeout, worker.pool.send(&target, request))
            .await
            .map_err(|_| ProxyError::Timeout {
                backend: backend.config.address.clone(),
                phase: TimeoutPhase::ResponseHeaders,
            })??;

    // Phase: answer.
    *response.version_mut() = client_version;
    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::task::spawn_local(tunnel(client_upgrade, backend_upgrade, lease));
        forward::remove_hop_by_hop(response.headers_mut(), true);
        return Ok(response.map(|_| ResponseBody::empty()));
    }
    forward::remove_hop_by_hop(response.headers_mut(), false);
    Ok(response.map(|body| {
        ResponseBody::Upstream(UpstreamBody::new(body, route.idle_timeout, checkin, lease))
    }))
}

/// The host the client asked for: the Host header, or the authority of an HTTP/2 request.
fn request_host(request: &Request<Incoming>) -> Option<HeaderValue> {
    match request.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// The request target the backend sees: the normalised path (without the route's prefix when
/// `strip_prefix` is set) and the query; origin-form for HTTP/1.1, with scheme and authority for
/// HTTP/2. The client's URI is kept as it is when nothing changes.
fn upstream_uri(
    request: &Request<Incoming>,
    normalized: &str,
    route: &RouteConfig,
    protocol: UpstreamProtocol,
    host: Option<&HeaderValue>,
) -> Result<Uri, ProxyError> {
    let uri = request.uri();
    let path = if route.strip_prefix {
        path::strip_prefix(normalized, &route.path_prefix)
    } else {
        normalized
    };
    let origin_form = uri.scheme().is_none() && uri.authority().is_none();
    if protocol == UpstreamProtocol::Http1 && origin_form && path == uri.path() {
        return Ok(uri.clone());
    }
    let path_and_query = match uri.query() {
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
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
    }
    Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))
}

/// Picks a healthy backend of the upstream.
fn pick_backend(upstream: &Upstream, hash: u64) -> Result<Lease, ProxyError> {
    upstream
        .balancer
        .pick(&|i| upstream.backends[i].is_healthy(), hash)
        .ok_or_else(|| ProxyError::NoHealthyBackend {
            upstream: upstream.config.name.clone(),
        })
}

/// Joins the client's and the backend's upgraded connections and copies bytes both ways until
/// both sides are done; the lease keeps the backend counted as busy meanwhile.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    _lease: Lease,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}
