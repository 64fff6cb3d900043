//! The admin API: health, status, metrics and reload, on `[admin] listen`.
//!
//! It runs on the control thread, apart from the workers, so a busy gateway still answers its
//! operators. It listens on loopback unless configured otherwise; with `[admin] token`, every call
//! needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::control::Control;
use crate::metrics::METRICS;
use crate::server;

/// How long a client has to send a request head, as on the gateway's own listeners by default.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, control: Arc<Control>, token: Option<String>) {
    let token: Option<Arc<str>> = token.map(Arc::from);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, _) = server::next_connection(&listener, "admin").await;
        let (control, token, http) = (control.clone(), token.clone(), http.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (control, token) = (control.clone(), token.clone());
                async move { Ok::<_, Infallible>(answer(&control, token.as_deref(), request).await) }
            });
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(control: &Control, token: Option<&str>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|presented| same_in_constant_time(presented.as_bytes(), token.as_bytes())) {
            let mut response =
                json(StatusCode::UNAUTHORIZED, &serde_json::json!({ "error": "a bearer token is required" }));
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => {
            if control.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                text(StatusCode::OK, "ok")
            }
        }
        (&Method::GET, "/status") => json(StatusCode::OK, &control.status()),
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, METRICS.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        (&Method::POST, "/reload") => match control.reload("admin API").await {
            Ok(generation) => json(StatusCode::OK, &serde_json::json!({ "generation": generation })),
            Err(error) => json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({ "error": error })),
        },
        (_, "/healthz" | "/status" | "/metrics" | "/reload") => {
            json(StatusCode::METHOD_NOT_ALLOWED, &serde_json::json!({ "error": "method not allowed" }))
        }
        _ => json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": "no such admin call" })),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// Whether `a` equals `b`, in a time that depends on their lengths only: the token is not
/// guessed a byte at a time from how fast a wrong one is refused.
fn same_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(difference) == 0
}
