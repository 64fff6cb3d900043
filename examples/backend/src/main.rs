//! `demo-backend NAME ADDR`: a backend for the Sluice demo (`scripts/demo`).
//!
//! It answers every request with 200 and a JSON echo of what it received: its own NAME (so you
//! can see which backend the gateway picked), the method, the path and query exactly as they
//! arrived (so you can see `strip_prefix` and path normalisation at work), and every request
//! header (so you can see `x-forwarded-for`, `x-request-id` and friends). It stops on ctrl-c or
//! SIGTERM. It depends on nothing but the crates the gateway already uses.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(addr), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: demo-backend NAME ADDR, e.g. demo-backend api-1 127.0.0.1:9001".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("`{addr}`: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let mut terminate = signal(SignalKind::terminate())?;
    say(&format!("demo-backend {name}: listening on {addr}"));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        };
        let name = name.clone();
        let service = hyper::service::service_fn(move |request| echo(name.clone(), request));
        tokio::spawn(async move {
            // A client that goes away mid-request is not our problem: nothing to report.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
    // Leaving main drops the runtime, which closes the open (idle keep-alive) connections.
    say(&format!("demo-backend {name}: stopped"));
    Ok(())
}

/// What the server answers: never an error.
type Answer = Result<Response<Full<Bytes>>, Infallible>;

/// Answers 200 with `{"backend", "method", "path", "headers"}`; a repeated header's values are
/// joined with ", ".
async fn echo(name: String, request: Request<Incoming>) -> Answer {
    let mut headers = Map::new();
    for key in request.headers().keys() {
        let values = request.headers().get_all(key).iter();
        let values: Vec<_> = values.map(|v| v.to_str().unwrap_or("(binary)")).collect();
        headers.insert(key.to_string(), Value::from(values.join(", ")));
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = request.method().as_str();
    let body = json!({ "backend": name, "method": method, "path": path, "headers": headers });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    let response_headers = response.headers_mut();
    response_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Writes a line to stderr in one write, so the lines of the demo's processes do not interleave.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}
