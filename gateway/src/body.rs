//! The bodies that stream through the gateway, and their idle deadline.
//!
//! Bodies are never buffered whole: frames pass from one side to the other as they come, with
//! hyper's flow control providing back-pressure, so a 512 MiB transfer costs a few buffers of
//! memory. An upstream response body also carries what must live exactly as long as the response
//! does: the backend lease (in-flight count for balancing) and, from an HTTP/1.1 backend, the
//! pooled connection, which goes back to the pool only once the body has been read to its end.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::balance::Lease;
use crate::h1_client;

/// The error type of bodies the gateway hands to hyper.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A body that made no progress for the route's `idle_timeout_ms`.
#[derive(Debug)]
pub struct IdleTimeout(Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "body idle for {} ms (idle_timeout_ms)", self.0.as_millis())
    }
}

impl StdError for IdleTimeout {}

/// A request body that streamed past the route's `max_body_bytes`.
#[derive(Debug)]
pub struct TooLarge(u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body over {} bytes (max_body_bytes)", self.0)
    }
}

impl StdError for TooLarge {}

/// Fails a body that stalls. The timer is created only when a body actually waits, so small
/// bodies that arrive in one frame never allocate one.
struct IdleDeadline {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleDeadline {
    fn new(timeout: Duration) -> Self {
        IdleDeadline { timeout, sleep: None }
    }

    /// Polls `frame` under the deadline: progress re-arms it, a stall past it is an error.
    fn poll<T, E: Into<BoxError>>(
        &mut self,
        cx: &mut Context<'_>,
        frame: Poll<Option<Result<T, E>>>,
    ) -> Poll<Option<Result<T, BoxError>>> {
        match frame {
            Poll::Ready(ready) => {
                if let Some(sleep) = &mut self.sleep {
                    sleep.as_mut().reset(Instant::now() + self.timeout);
                }
                Poll::Ready(ready.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(IdleTimeout(timeout).into())))
            }
        }
    }
}

/// A client's request body on its way to a backend; empty for a retried request that had none.
pub struct RequestBody {
    inner: Option<Incoming>,
    idle: IdleDeadline,
    /// `max_body_bytes`, and the bytes still allowed.
    limit: Option<(u64, u64)>,
}

impl RequestBody {
    /// Streams `inner`, failing it after `idle_timeout` without a frame, or past `max_bytes`.
    pub fn new(inner: Incoming, idle_timeout: Duration, max_bytes: Option<u64>) -> Self {
        RequestBody { inner: Some(inner), idle: IdleDeadline::new(idle_timeout), limit: max_bytes.map(|m| (m, m)) }
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody { inner: None, idle: IdleDeadline::new(Duration::MAX), limit: None }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let frame = ready!(this.idle.poll(cx, polled));
        if let (Some(Ok(frame)), Some((max, left))) = (&frame, &mut this.limit) {
            let size = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(size) {
                Some(rest) => *left = rest,
                None => return Poll::Ready(Some(Err(TooLarge(*max).into()))),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What the gateway sends to a client: a backend's body, or a small body of its own.
pub enum ResponseBody {
    /// A body the gateway wrote (errors); `None` once sent.
    Full(Option<Bytes>),
    /// A backend's body, streamed.
    Upstream(UpstreamBody),
}

impl ResponseBody {
    /// A complete body of the gateway's own.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

/// A backend's response body as the pool hands it over: read by the request's task from an
/// HTTP/1.1 connection, or from hyper's HTTP/2 connection.
pub enum BackendBody {
    /// From an HTTP/1.1 backend; it gives the connection back to the pool at its end.
    Http1(h1_client::Body),
    /// From an HTTP/2 backend.
    Http2(Incoming),
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            BackendBody::Http1(body) => Pin::new(body).poll_frame(cx),
            BackendBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Http1(body) => body.is_end_stream(),
            BackendBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Http1(body) => body.size_hint(),
            BackendBody::Http2(body) => body.size_hint(),
        }
    }
}

/// A backend's response body, with the lease it holds until its end.
pub struct UpstreamBody {
    inner: BackendBody,
    idle: IdleDeadline,
    _lease: Option<Lease>,
}

impl UpstreamBody {
    /// `lease` keeps an upstream's backend counted as busy until the body is done.
    pub fn new(inner: BackendBody, idle_timeout: Duration, lease: Option<Lease>) -> Self {
        UpstreamBody { inner, idle: IdleDeadline::new(idle_timeout), _lease: lease }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => {
                let frame = Pin::new(&mut body.inner).poll_frame(cx);
                body.idle.poll(cx, frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Upstream(body) => body.inner.size_hint(),
        }
    }
}
