//! `forward` listeners: a proxy for clients configured to use one. Absolute-form requests
//! (`GET http://host/path`) go to their target over pooled HTTP/1.1 connections; `CONNECT
//! host:port` opens a tunnel to one of the allowed ports. Policy comes first (the client must be
//! in `allow`, a CONNECT port in `connect_ports`), then the listener's plugins, which see every
//! request with its target in Host, so they can block sites or demand proxy credentials. The
//! target's addresses are checked against `deny_targets` after the name is resolved, so a name
//! that resolves to a denied address (`localtest.me`, a rebinding DNS server) is refused too.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{RequestBody, ResponseBody, UpstreamBody};
use crate::config::{ForwardProxy, ListenerProtocol, UpstreamProtocol};
use crate::error::{ProxyError, TimeoutPhase};
use crate::forward;
use crate::metrics::METRICS;
use crate::plugin::chain::{Chain, Target, Verdict};
use crate::pool::{self, Destination, Pool};
use crate::proxy::{Downstream, Worker};
use crate::relay::relay;
use crate::snapshot::Snapshot;

/// Serves one request on a forward listener; never fails: errors become responses here.
pub async fn handle(
    worker: &Worker,
    downstream: &Downstream,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snapshot = worker.snapshot();
    let access = snapshot.config.log.access.then(|| (request.method().clone(), request.uri().authority().cloned()));
    let response = match snapshot.listener(&downstream.listener).map(|l| &l.protocol) {
        Some(ListenerProtocol::Forward(config)) => match proxy(worker, &snapshot, config, downstream, request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(listener = downstream.listener, client = %downstream.peer, error = %error, "proxy request failed");
                error.response()
            }
        },
        // A reload turned this listener into another kind under a keep-alive connection.
        _ => ProxyError::BadRequest("this listener is no longer a forward proxy").response(),
    };
    METRICS.request(None, response.status().as_u16(), started.elapsed());
    if let Some((method, target)) = access {
        tracing::info!(
            target: crate::logging::ACCESS,
            method = %method,
            target = target.as_ref().map_or("-", Authority::as_str),
            listener = downstream.listener,
            status = response.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            client = %downstream.peer.ip(),
        );
    }
    Ok(response)
}

async fn proxy(
    worker: &Worker,
    snapshot: &Snapshot,
    config: &ForwardProxy,
    downstream: &Downstream,
    mut request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let client_ip = downstream.peer.ip();
    if !config.allow.iter().any(|net| net.contains(client_ip)) {
        return Err(ProxyError::Forbidden("this proxy does not serve your address"));
    }
    let connect = request.method() == Method::CONNECT;
    let uri = request.uri().clone();
    let authority = uri.authority().cloned().ok_or(ProxyError::BadRequest(
        "a proxy request needs an absolute URI (http://host/path) or CONNECT host:port",
    ))?;
    // RFC 9110 §4.2.4: userinfo in a URI is an error; it would also reach the target in Host.
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest("a proxy request's URI must not carry user:password@"));
    }
    if !connect && uri.scheme() != Some(&Scheme::HTTP) {
        return Err(ProxyError::BadRequest("only http:// URIs are proxied; https goes through CONNECT"));
    }
    let port = authority.port_u16().unwrap_or(80);
    if connect && !config.connect_ports.contains(&port) {
        return Err(ProxyError::Forbidden("CONNECT to this port is not allowed"));
    }
    let upgrade = connect.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadRequest("invalid target"))?;
    parts.headers.insert(header::HOST, host);
    let path = if connect { authority.as_str() } else { uri.path() };
    let mut target = Target { path: Cow::Borrowed(path), query: uri.query().map(Cow::Borrowed) };

    let mut chain = Chain::new(&config.plugins, &snapshot.plugins, &downstream.listener, None);
    let mut response = match chain.on_request(&mut parts, &mut target, client_ip)? {
        Verdict::Respond(response) => *response,
        Verdict::Continue => {
            let address = format!("{}:{port}", authority.host());
            let result = match upgrade {
                Some(upgrade) => tunnel(worker, config, &address, upgrade).await,
                None => {
                    forward::remove_hop_by_hop(&mut parts.headers, false);
                    forward::identify_client(&mut parts.headers, &downstream.peer_text, config.anonymous);
                    parts.uri = origin_form(&target)?;
                    parts.version = Version::HTTP_11;
                    let request = Request::from_parts(parts, RequestBody::new(body, config.idle_timeout, None));
                    send(worker, config, &address, request).await
                }
            };
            result.unwrap_or_else(|error| {
                tracing::warn!(listener = downstream.listener, client = %downstream.peer, error = %error, "proxy request failed");
                error.response()
            })
        }
    };
    chain.on_response(&mut response)?;
    Ok(response)
}

/// `path?query` as the plugins left them.
fn origin_form(target: &Target<'_>) -> Result<Uri, ProxyError> {
    let text = match &target.query {
        Some(query) => format!("{}?{query}", target.path),
        None => target.path.to_string(),
    };
    Uri::try_from(text).map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))
}

/// The addresses of `host:port` the proxy may connect to, looked up within the connect timeout.
async fn resolve(config: &ForwardProxy, address: &str) -> Result<Vec<SocketAddr>, ProxyError> {
    let mut found: Vec<SocketAddr> = tokio::time::timeout(config.connect_timeout, tokio::net::lookup_host(address))
        .await
        .map_err(|_| ProxyError::Timeout { backend: address.to_string(), phase: TimeoutPhase::Connect })?
        .map_err(|e| ProxyError::Connect { backend: address.to_string(), cause: format!("cannot resolve: {e}") })?
        .collect();
    if found.is_empty() {
        return Err(ProxyError::Connect { backend: address.to_string(), cause: "resolves to no address".into() });
    }
    found.retain(|addr| !config.deny_targets.iter().any(|net| net.contains(addr.ip())));
    if found.is_empty() {
        return Err(ProxyError::Forbidden("this proxy does not connect to that address"));
    }
    Ok(found)
}

/// A proxy target as the connection pool sees it: HTTP/1.1, no TLS.
fn destination<'a>(pool: &Pool, config: &ForwardProxy, address: &'a str, addrs: &'a [SocketAddr]) -> Destination<'a> {
    Destination {
        key: pool.forward_key(address),
        name: address,
        addrs,
        protocol: UpstreamProtocol::Http1,
        connect_timeout: config.connect_timeout,
        tls: None,
    }
}

/// Sends an absolute-form request on to its target over a pooled connection.
async fn send(
    worker: &Worker,
    config: &ForwardProxy,
    address: &str,
    request: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let addrs = resolve(config, address).await?;
    let destination = destination(&worker.pool, config, address, &addrs);
    let mut response = tokio::time::timeout(config.timeout, worker.pool.send(&destination, request))
        .await
        .map_err(|_| ProxyError::Timeout { backend: address.to_string(), phase: TimeoutPhase::ResponseHeaders })?
        .map_err(|failure| failure.error)?;
    forward::remove_hop_by_hop(response.headers_mut(), false);
    Ok(response.map(|body| ResponseBody::Upstream(UpstreamBody::new(body, config.idle_timeout, None))))
}

/// Connects to the CONNECT target, answers 200, and relays bytes once the client's connection is
/// handed over.
async fn tunnel(
    worker: &Worker,
    config: &ForwardProxy,
    address: &str,
    upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Response<ResponseBody>, ProxyError> {
    let addrs = resolve(config, address).await?;
    let destination = destination(&worker.pool, config, address, &addrs);
    let target = pool::connect(&destination).await?;
    let idle = config.idle_timeout;
    tokio::task::spawn_local(async move {
        match upgrade.await {
            Ok(client) => {
                if let Err(e) = relay(TokioIo::new(client), target, idle).await {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "the client left before its tunnel opened"),
        }
    });
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
