//! Bodies stream through without being buffered: 512 MiB each way in a few MiB of memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use crate::support::*;

const TOTAL: u64 = 512 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// `remaining` bytes of `x`, produced as they are read.
struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(total: u64) -> Generated {
        Generated { remaining: total, chunk: Bytes::from(vec![b'x'; CHUNK]) }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Reads a body to its end, counting bytes without keeping them.
async fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> u64
where
    B::Error: std::fmt::Debug,
{
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
        }
    }
    total
}

#[tokio::test]
async fn half_a_gigabyte_streams_both_ways_in_bounded_memory() {
    let backend = Backend::start(|req| async move {
        if req.method() == http::Method::POST {
            let received = drain(req.into_body()).await;
            http::Response::new(full(received.to_string()))
        } else {
            http::Response::new(Generated::new(TOTAL).boxed())
        }
    })
    .await;
    let config = format!(
        "{LISTENER}\n[log]\naccess = false\n\n{}\n[[route]]\nname = \"r\"\nupstream = \"big\"\n",
        upstream("big", &[&backend])
    );
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    client.send(Request::post("/warm-up").header("host", "x").body(full("x")).unwrap()).await;
    let (idle_rss, _) = gateway.memory_kib();

    let response = client.raw(Request::get("/download").header("host", "x").body(full("")).unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(drain(response.into_body()).await, TOTAL);

    let upload = Request::post("/upload").header("host", "x").body(Generated::new(TOTAL).boxed()).unwrap();
    let reply = client.send(upload).await;
    assert_eq!((reply.status.as_u16(), reply.body), (200, TOTAL.to_string()));

    let (_, peak_rss) = gateway.memory_kib();
    let growth_mib = peak_rss.saturating_sub(idle_rss) as f64 / 1024.0;
    eprintln!("gateway RSS: idle {} KiB, peak {} KiB, growth {growth_mib:.1} MiB for 2 x 512 MiB", idle_rss, peak_rss);
    assert!(growth_mib < 8.0, "streaming 512 MiB each way grew the gateway by {growth_mib:.1} MiB");
}

#[tokio::test]
async fn a_backend_that_answers_while_it_reads_gets_the_whole_body_both_ways_at_once() {
    // An echo: the backend's response head goes out at once, its body as the request body comes.
    let backend =
        Backend::start(|req| async move { http::Response::new(req.into_body().map_err(Into::into).boxed()) }).await;
    let config =
        format!("{LISTENER}\n{}\n[[route]]\nname = \"r\"\nupstream = \"echo\"\n", upstream("echo", &[&backend]));
    let gateway = Gateway::start(&config);
    let mut client = Client::connect(gateway.addr()).await;
    // Far more than the socket buffers hold, so the backend answers long before the upload ends.
    let total = 16 * 1024 * 1024;
    let upload = Request::post("/echo").header("host", "x").body(Generated::new(total).boxed()).unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(20), client.raw(upload)).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = tokio::time::timeout(std::time::Duration::from_secs(20), drain(response.into_body())).await;
    assert_eq!(echoed.expect("the echo completes"), total);
}
