//! `demo-backend NAME ADDR`: a backend for the Sluice demo (`scripts/demo`).
//!
//! It answers every request with 200 and a JSON echo of what it received: its own NAME (so you
//! can see which backend the gateway picked), the method, the path and query exactly as they
//! arrived (so you can see `strip_prefix` and path normalisation at work), and every request
//! header (so you can see `x-forwarded-for`, `x-request-id` and friends). It stops on ctrl-c or
//! SIGTERM. It depends on nothing but the crates the gateway already uses.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(addr), None) = (args.next(), args.next(), args.next()) else {
        return Err(
            "usage: demo-backend NAME ADDR (e.g. demo-backend api-1 127.0.0.1:9001)".into(),
        );
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("`{addr}` is not IP:PORT: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let mut terminate = signal(SignalKind::terminate())?;
    eprintln!("demo-backend {name}: listening on {addr}");
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
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    // Leaving main drops the runtime, which closes the open (idle keep-alive) connections.
    eprintln!("demo-backend {name}: stopped");
    Ok(())
}

/// Answers 200 with `{"backend", "method", "path", "headers"}`.
async fn echo(
    name: String,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut headers = Map::new();
    for (key, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        // Repeated headers are joined as one comma-separated value.
        match headers.get_mut(key.as_str()) {
            Some(Value::String(seen)) => *seen = format!("{seen}, {value}"),
            _ => drop(headers.insert(key.as_str().to_owned(), value.into())),
        }
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let body = json!({ "backend": name, "method": request.method().as_str(), "path": path, "headers": headers });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
