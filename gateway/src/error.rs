//! The one error type of the request path, and the one place it becomes an HTTP response.
//!
//! Every failure knows its source (the client, an upstream, the gateway itself) so the access log,
//! metrics and retry logic can tell them apart, and [`ProxyError::response`] is the only function
//! that turns a failure into what the client sees: a status and a short JSON body that names the
//! cause without leaking internal addresses.

use std::fmt;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ResponseBody;
use crate::plugin::PluginFailure;

/// Why the gateway answered a request itself.
#[derive(Debug)]
pub enum ProxyError {
    /// No route matches the request (404).
    NoRoute,
    /// The request cannot be routed or forwarded as it is (400).
    BadRequest(&'static str),
    /// The request body is larger than the route's `max_body_bytes` (413).
    BodyTooLarge,
    /// The forward proxy's policy refuses the request: a client outside `allow`, a CONNECT port
    /// not in `connect_ports` (403).
    Forbidden(&'static str),
    /// Every backend of the upstream is unhealthy or already tried (503).
    NoHealthyBackend { upstream: String },
    /// The upstream has `max_requests` in flight already (503).
    Overloaded { upstream: String },
    /// No connection could be made to the backend (502).
    Connect { backend: String, cause: String },
    /// The backend closed or reset the connection, or answered with garbage (502).
    Upstream { backend: String, cause: crate::body::BoxError },
    /// The backend did not answer in time (504).
    Timeout { backend: String, phase: TimeoutPhase },
    /// A plugin failed and its `on_error` is `deny` (500).
    Plugin { plugin: String, failure: PluginFailure },
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy)]
pub enum TimeoutPhase {
    /// `connect_timeout_ms`.
    Connect,
    /// `timeout_ms`: the wait for the response headers.
    ResponseHeaders,
}

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we cannot serve.
    Downstream,
    /// A backend failed.
    Upstream,
    /// The gateway's own configuration (no route, no backend left).
    Gateway,
    /// A plugin.
    Plugin,
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoHealthyBackend { .. } | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Plugin { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Where the failure came from.
    pub fn source(&self) -> Source {
        match self {
            ProxyError::BadRequest(_) | ProxyError::Forbidden(_) | ProxyError::BodyTooLarge => Source::Downstream,
            ProxyError::NoRoute | ProxyError::NoHealthyBackend { .. } | ProxyError::Overloaded { .. } => {
                Source::Gateway
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } | ProxyError::Timeout { .. } => Source::Upstream,
            ProxyError::Plugin { .. } => Source::Plugin,
        }
    }

    /// Whether the request certainly never reached a backend, so another backend may be tried.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, ProxyError::Connect { .. } | ProxyError::Timeout { phase: TimeoutPhase::Connect, .. })
    }

    /// What the client is told: no addresses, no internals.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::BadRequest(why) | ProxyError::Forbidden(why) => why,
            ProxyError::BodyTooLarge => "the request body is larger than this route accepts",
            ProxyError::NoHealthyBackend { .. } => "no healthy backend is available",
            ProxyError::Overloaded { .. } => "the upstream is at its limit of requests in flight",
            ProxyError::Connect { .. } => "the backend could not be reached",
            ProxyError::Upstream { .. } => "the backend closed the connection or answered invalidly",
            ProxyError::Timeout { phase: TimeoutPhase::Connect, .. } => {
                "the backend did not accept a connection in time"
            }
            ProxyError::Timeout { phase: TimeoutPhase::ResponseHeaders, .. } => "the backend did not answer in time",
            ProxyError::Plugin { .. } => "a plugin failed on this request",
        }
    }

    /// The response the client gets: the status and `{"error": "..."}`.
    pub fn response(&self) -> Response<ResponseBody> {
        json_error(self.status(), self.public_message())
    }
}

/// A response with a JSON error body; `message` must not need escaping (it is one of ours).
pub fn json_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = format!("{{\"error\":\"{message}\"}}");
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoRoute => write!(f, "no route matches"),
            ProxyError::BadRequest(why) => write!(f, "bad request: {why}"),
            ProxyError::Forbidden(why) => write!(f, "forbidden: {why}"),
            ProxyError::BodyTooLarge => write!(f, "request body over the route's max_body_bytes"),
            ProxyError::NoHealthyBackend { upstream } => {
                write!(f, "upstream `{upstream}`: no healthy backend")
            }
            ProxyError::Overloaded { upstream } => write!(f, "upstream `{upstream}`: max_requests in flight reached"),
            ProxyError::Connect { backend, cause } => {
                write!(f, "backend {backend}: connect failed: {cause}")
            }
            ProxyError::Upstream { backend, cause } => write!(f, "backend {backend}: {cause}"),
            ProxyError::Timeout { backend, phase: TimeoutPhase::Connect } => {
                write!(f, "backend {backend}: connect timed out")
            }
            ProxyError::Timeout { backend, phase: TimeoutPhase::ResponseHeaders } => {
                write!(f, "backend {backend}: no response headers within the route's timeout_ms")
            }
            ProxyError::Plugin { plugin, failure } => write!(f, "plugin `{plugin}` {failure}"),
        }
    }
}

impl std::error::Error for ProxyError {}
