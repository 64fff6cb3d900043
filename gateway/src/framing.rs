//! Strict framing of HTTP/1 requests: the raw bytes of every request head are checked before
//! hyper parses them, for the two ambiguities hyper lets through.
//!
//! hyper (through httparse) accepts a bare LF as a line end, and a request that carries both
//! `Content-Length` and `Transfer-Encoding` is read as chunked, with `Content-Length` dropped —
//! both allowed by RFC 9112, and both what request smuggling feeds on when the servers of a chain
//! frame a message differently. A gateway sits in such chains, so it refuses them: 400, and the
//! connection closed.
//!
//! [`Strict`] wraps an HTTP/1 client connection and follows its message framing as the bytes are read:
//! each head line by line, then the body by its `Content-Length` or its chunks, to find where the
//! next head starts. On a violation it overwrites the offending byte (always in the bytes just
//! read, which hyper has not parsed yet) with NUL, which httparse rejects as it reaches it, so
//! hyper answers its own 400 and closes the connection, in order after any pipelined answers.
//!
//! It stops following (and leaves the rest of the connection to hyper, which frames it safely
//! if leniently) where it cannot be sure: after CONNECT and `Upgrade` requests, and on framing it
//! cannot read (a `Content-Length` or `Transfer-Encoding` line longer than the
//! 64 bytes it keeps of a line, a malformed chunk). It never copies or holds bytes
//! back; the cost is a `memchr` over each head (~26 ns for a small request).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// A client connection whose HTTP/1 request heads are checked as they are read.
pub struct Strict<S> {
    inner: S,
    framing: Framing,
}

impl<S> Strict<S> {
    /// Wraps a connection on which the client is about to send its first request.
    pub fn new(inner: S) -> Self {
        Strict { inner, framing: Framing::default() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Strict<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.framing.check(&mut buf.filled_mut()[before..]);
        Poll::Ready(Ok(()))
    }
}

crate::net::write_through!(Strict);

/// Follows the framing of one connection's requests (see the module docs).
#[derive(Default)]
pub struct Framing {
    state: State,
}

/// Where in the request stream the next byte falls.
enum State {
    Head(Head),
    /// Body bytes still to come, by `Content-Length`.
    Body(u64),
    Chunked(Chunk),
    /// Not followed any further.
    Off,
}

impl Default for State {
    fn default() -> Self {
        State::Head(Head::default())
    }
}

/// The most of a head line kept across reads: enough for the names and usual values of the
/// headers that frame a body.
const LINE_KEPT: usize = 64;

/// A request head being read.
#[derive(Default)]
struct Head {
    partial: Partial,
    said: Said,
}

/// What the head has said so far about the body that follows it.
#[derive(Default)]
struct Said {
    /// Whether the request line has been read.
    started: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    /// CONNECT, an upgrade, or a framing header too long to read: stop following after
    /// the head.
    stop: bool,
}

/// The start of a head line that continues in the next read.
struct Partial {
    kept: [u8; LINE_KEPT],
    /// The line's length so far (may exceed what `kept` holds).
    len: usize,
    /// Whether the last byte read was CR.
    cr: bool,
}

/// A request line or header line, without its line end, as far as it is kept.
struct Line<'a> {
    text: &'a [u8],
    /// Longer than what is kept.
    cut: bool,
}

/// A chunked body being read.
enum Chunk {
    /// A chunk-size line: the size so far, its digit count, and whether an extension started.
    Size { size: u64, digits: u8, extension: bool },
    /// Chunk data still to come.
    Data(u64),
    /// The line end after chunk data.
    DataEnd,
    /// The trailer section; `line_start` when the next byte starts a line.
    Trailers { line_start: bool },
}

/// What a head line meant.
enum Verdict {
    More,
    /// The head ended; the body follows.
    End,
    /// The head must be refused.
    Refuse,
}

impl Framing {
    /// Follows `bytes`, the next bytes of the stream, spoiling the first byte of a violation.
    pub fn check(&mut self, bytes: &mut [u8]) {
        self.state.check(bytes);
    }

    /// Whether it has stopped following the stream (after a violation, an upgrade, or framing it
    /// cannot read).
    pub fn stopped(&self) -> bool {
        matches!(self.state, State::Off)
    }
}

impl State {
    fn check(&mut self, mut bytes: &mut [u8]) {
        while !bytes.is_empty() {
            let used = match self {
                State::Off => return,
                State::Body(left) => {
                    let used = usize::try_from(*left).map_or(bytes.len(), |left| left.min(bytes.len()));
                    *left -= used as u64;
                    if *left == 0 {
                        *self = State::default();
                    }
                    used
                }
                State::Chunked(chunk) => match chunk.follow(bytes) {
                    Some((used, done)) => {
                        if done {
                            *self = State::default();
                        }
                        used
                    }
                    None => {
                        *self = State::Off;
                        return;
                    }
                },
                State::Head(head) => {
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
                        head.partial.keep(bytes);
                        return;
                    };
                    let bare = if end == 0 { !head.partial.cr } else { bytes[end - 1] != b'\r' };
                    let line = head.partial.complete(&bytes[..end]);
                    match if bare { Verdict::Refuse } else { head.said.take(line) } {
                        Verdict::More => {}
                        Verdict::End => *self = head.said.body(),
                        Verdict::Refuse => {
                            bytes[end] = 0;
                            *self = State::Off;
                            return;
                        }
                    }
                    end + 1
                }
            };
            bytes = &mut bytes[used..];
        }
    }
}

impl Default for Partial {
    fn default() -> Self {
        Partial { kept: [0; LINE_KEPT], len: 0, cr: false }
    }
}

impl Partial {
    /// Keeps the start of a line that continues in the next read.
    fn keep(&mut self, part: &[u8]) {
        let at = self.len.min(LINE_KEPT);
        let room = (LINE_KEPT - at).min(part.len());
        self.kept[at..at + room].copy_from_slice(&part[..room]);
        self.len += part.len();
        self.cr = part.last() == Some(&b'\r');
    }

    /// The line that `last` (this read's part of it, LF excluded) ends, CR stripped.
    fn complete<'a>(&'a mut self, last: &'a [u8]) -> Line<'a> {
        // A line read whole is cut where a line spanning reads would be, so that how the
        // stream happens to be split into reads never changes the verdict.
        let (text, len) = if self.len == 0 {
            (last, last.len())
        } else {
            self.keep(last);
            (&self.kept[..], self.len)
        };
        let (text, cut) = (&text[..len.min(LINE_KEPT)], len > LINE_KEPT);
        self.len = 0;
        self.cr = false;
        Line { text: text.strip_suffix(b"\r").unwrap_or(text), cut }
    }
}

impl Said {
    /// Takes in one line of the head.
    fn take(&mut self, Line { text, cut }: Line<'_>) -> Verdict {
        if !self.started {
            if text.is_empty() {
                return Verdict::More;
            }
            self.started = true;
            self.stop = text.starts_with(b"CONNECT ");
            return Verdict::More;
        }
        if text.is_empty() {
            let ambiguous = self.transfer_encoding && self.content_length.is_some();
            return if ambiguous { Verdict::Refuse } else { Verdict::End };
        }
        let Some(colon) = text.iter().position(|&b| b == b':') else { return Verdict::More };
        let (name, value) = (&text[..colon], text[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()).filter(|_| !cut);
            self.stop |= length.is_none();
            self.content_length = Some(length.unwrap_or(0));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            self.stop |= cut;
            self.chunked = ends_in_chunked(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.stop = true;
        }
        Verdict::More
    }

    /// What follows a head that ended well.
    fn body(&self) -> State {
        if self.stop || (self.transfer_encoding && !self.chunked) {
            State::Off
        } else if self.transfer_encoding {
            State::Chunked(Chunk::Size { size: 0, digits: 0, extension: false })
        } else {
            match self.content_length {
                Some(length) if length > 0 => State::Body(length),
                _ => State::default(),
            }
        }
    }
}

impl Chunk {
    /// Follows `bytes` through the chunked body: how many it used and whether the body ended
    /// there, or `None` when the framing is not one hyper accepts either.
    fn follow(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        let mut used = 0;
        while used < bytes.len() {
            match self {
                Chunk::Data(left) => {
                    let take = usize::try_from(*left).map_or(bytes.len() - used, |left| left.min(bytes.len() - used));
                    *left -= take as u64;
                    used += take;
                    if *left == 0 {
                        *self = Chunk::DataEnd;
                    }
                    continue;
                }
                Chunk::Size { size, digits, extension } => match bytes[used] {
                    b'\n' if *digits == 0 => return None,
                    b'\n' if *size == 0 => *self = Chunk::Trailers { line_start: true },
                    b'\n' => *self = Chunk::Data(*size),
                    b'\r' => {}
                    _ if *extension => {}
                    b';' | b' ' | b'\t' => *extension = true,
                    digit => {
                        let value = (digit as char).to_digit(16)?;
                        *digits += 1;
                        if *digits > 16 {
                            return None;
                        }
                        *size = *size << 4 | u64::from(value);
                    }
                },
                Chunk::DataEnd => match bytes[used] {
                    b'\r' => {}
                    b'\n' => *self = Chunk::Size { size: 0, digits: 0, extension: false },
                    _ => return None,
                },
                Chunk::Trailers { line_start } => match bytes[used] {
                    b'\n' if *line_start => return Some((used + 1, true)),
                    b'\n' => *line_start = true,
                    b'\r' => {}
                    _ => *line_start = false,
                },
            }
            used += 1;
        }
        Some((used, false))
    }
}

/// Whether a `Transfer-Encoding` value ends in `chunked`: only then does chunked frame the body.
pub fn ends_in_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream as hyper would see it after `check`, fed in pieces of `step` bytes.
    fn checked(stream: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut framing = Framing::default();
        let mut seen = stream.to_vec();
        for piece in seen.chunks_mut(step) {
            framing.check(piece);
        }
        let off = framing.stopped();
        (seen, off)
    }

    /// Checks `stream` in every piece size; all must agree. Returns where a byte was spoilt.
    fn spoilt_at(stream: &[u8]) -> Option<usize> {
        let (whole, _) = checked(stream, stream.len());
        for step in 1..stream.len() {
            assert_eq!(checked(stream, step).0, whole, "pieces of {step} bytes");
        }
        let at = whole.iter().zip(stream).position(|(a, b)| a != b);
        if let Some(at) = at {
            assert_eq!(whole[at], 0);
            assert_eq!(whole[at + 1..], stream[at + 1..], "only one byte is spoilt");
        }
        at
    }

    #[test]
    fn well_framed_pipelines_pass_untouched() {
        let stream = concat!(
            "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: a\r\ncontent-length:  11\r\n\r\nab\ncd\n\nefg",
            "POST /b HTTP/1.1\r\nTransfer-Encoding: gzip ,  Chunked\r\n\r\n",
            "3;ext=1\r\n\n\n\n\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
            "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /d HTTP/1.1\r\nX: \n\r\n",
        );
        let bare_lf_after_the_pipeline = stream.len() - 3;
        assert_eq!(spoilt_at(stream.as_bytes()), Some(bare_lf_after_the_pipeline));
    }

    #[test]
    fn bare_line_feeds_in_a_head_are_spoilt() {
        for (stream, at) in [
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", 14),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", 23),
            ("GET / HTTP/1.1\r\nHost: a\r\n\n", 25),
            ("\nGET / HTTP/1.1\r\n\r\n", 0),
        ] {
            assert_eq!(spoilt_at(stream.as_bytes()), Some(at), "{stream:?}");
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_spoilt_at_the_end_of_the_head() {
        for head in [
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n",
        ] {
            assert_eq!(spoilt_at(head.as_bytes()), Some(head.len() - 1), "{head:?}");
        }
    }

    /// Found by `scripts/fuzz framing`: a line longer than what is kept was judged on all of it
    /// when read whole, on its kept start when split across reads, so the verdict on the rest
    /// of the stream depended on how the client's bytes were split.
    #[test]
    fn a_line_longer_than_what_is_kept_is_judged_alike_however_it_is_read() {
        let stream = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: {}chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\n\r\n",
            " ".repeat(LINE_KEPT)
        );
        assert_eq!(spoilt_at(stream.as_bytes()), None, "not followed past a framing header it cannot read");
        let stream = format!("GET /{} HTTP/1.1\r\nHost: a\n\r\n", "a".repeat(LINE_KEPT));
        assert_eq!(spoilt_at(stream.as_bytes()), Some(stream.len() - 3), "a long request line is no cover");
    }

    #[test]
    fn what_it_cannot_follow_is_left_to_hyper() {
        for stream in [
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\n\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\n\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\n\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n\n\n",
        ] {
            assert_eq!(spoilt_at(stream.as_bytes()), None, "{stream:?}");
            assert!(checked(stream.as_bytes(), 1).1, "{stream:?}: no longer followed");
        }
    }
}
