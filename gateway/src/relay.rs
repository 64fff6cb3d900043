//! Relaying bytes both ways between two connections, for `tcp` listeners and upgraded HTTP
//! connections (WebSocket): each direction ends on its own (a half-close is passed on as a
//! shutdown of the other side's writing), and the pair is closed after `idle` with no byte either
//! way, so an abandoned connection does not hold a backend forever.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Nothing moved for the idle timeout.
    #[error("no byte either way for {0:?}")]
    Idle(Duration),
    /// A read or write failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Copies `a` to `b` and `b` to `a` until both directions are done; returns the bytes sent each
/// way (a to b, b to a).
pub async fn relay<A, B>(a: A, b: B, idle: Duration) -> Result<(u64, u64), RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Cell::new(Instant::now());
    let (mut a, mut b) = (Watched { inner: a, last: &last }, Watched { inner: b, last: &last });
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            result = &mut copy => return Ok(result?),
            _ = tokio::time::sleep_until(last.get() + idle) => {
                if last.get() + idle <= Instant::now() {
                    return Err(RelayError::Idle(idle));
                }
            }
        }
    }
}

/// A connection that notes the time of every read that brought bytes.
struct Watched<'a, S> {
    inner: S,
    last: &'a Cell<Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
