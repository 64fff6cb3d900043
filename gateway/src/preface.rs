//! Which HTTP version a client connection speaks, told by its first bytes.
//!
//! A cleartext client may speak HTTP/2 from its first byte (prior knowledge, RFC 9113 §3.3), and
//! a TLS client that did not negotiate ALPN may too; such a client opens with the HTTP/2
//! connection preface, which no HTTP/1 request starts with. Reading those bytes before choosing
//! lets each connection be served by hyper's HTTP/1 or HTTP/2 connection directly, with nothing
//! in between on every later read and poll (hyper-util's version-detecting connection cost ~800
//! instructions a request), and bounds the wait: a client that sends nothing is dropped at the
//! header read timeout, as one that stalls inside a request head is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP version a client opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Anything but the HTTP/2 preface: hyper's HTTP/1 side answers what it cannot parse.
    Http1,
    /// The HTTP/2 preface.
    Http2,
}

/// Reads from `stream` until its first bytes are the whole HTTP/2 preface or differ from it;
/// returns the version and the stream with those bytes to be read again. `None` when the client
/// closed the connection before sending anything.
pub async fn sniff<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<Option<(Version, Replay<S>)>> {
    let mut read = Vec::with_capacity(PREFACE.len());
    let version = loop {
        let before = read.len();
        // `take` bounds the read to the preface's length: nothing past it is buffered here.
        if (&mut stream).take((PREFACE.len() - before) as u64).read_buf(&mut read).await? == 0 {
            if before == 0 {
                return Ok(None);
            }
            break Version::Http1;
        }
        if read[before..] != PREFACE[before..read.len()] {
            break Version::Http1;
        }
        if read.len() == PREFACE.len() {
            break Version::Http2;
        }
    };
    Ok(Some((version, Replay { read, at: 0, inner: stream })))
}

/// A stream whose first bytes, already read, are read again before the rest.
pub struct Replay<S> {
    read: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::net::write_through!(Replay);

#[cfg(test)]
mod tests {
    use super::*;

    /// The version a client sending `pieces` (one read each) is told apart as, and the bytes the
    /// replaying stream gives back.
    async fn sniffed(pieces: &[&[u8]]) -> Option<(Version, Vec<u8>)> {
        let mut mock = in_pieces(pieces);
        let (version, mut replay) = sniff(&mut mock).await.unwrap()?;
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        Some((version, all))
    }

    /// A stream that yields `pieces` one read at a time, then ends.
    fn in_pieces(pieces: &[&[u8]]) -> impl AsyncRead + Unpin {
        let end: Box<dyn AsyncRead + Unpin> = Box::new(tokio::io::empty());
        pieces.iter().rev().fold(end, |rest, piece| Box::new(io::Cursor::new(piece.to_vec()).chain(rest)))
    }

    #[tokio::test]
    async fn tells_http2_from_http1_and_gives_back_every_byte() {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(sniffed(&[request]).await, Some((Version::Http1, request.to_vec())));
        let h2 = [&PREFACE[..], b"\0\0\0\x04"].concat();
        assert_eq!(sniffed(&[&h2]).await, Some((Version::Http2, h2.clone())));
        // The preface in pieces, and one that turns out not to be it only late.
        assert_eq!(sniffed(&[b"PRI * ", b"HTTP/2.0\r\n\r\nSM", b"\r\n\r\nrest"]).await.unwrap().0, Version::Http2);
        let almost = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n";
        assert_eq!(sniffed(&[b"PRI * HTTP/2", almost.split_at(12).1]).await, Some((Version::Http1, almost.to_vec())));
        // Cut off inside the preface, and nothing at all.
        assert_eq!(sniffed(&[b"PRI * HT"]).await, Some((Version::Http1, b"PRI * HT".to_vec())));
        assert_eq!(sniffed(&[]).await, None);
    }
}
