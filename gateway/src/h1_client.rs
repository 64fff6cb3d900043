//! HTTP/1.1 exchanges with backends, driven by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and hands it each request, and
//! takes back each response, over channels: per request a channel send, a move of the whole
//! request, and two more task wake-ups — about a tenth of the CPU of a small proxied request.
//! Here the request's task writes the head (and streams the body) itself, reads the response head
//! (parsed by `httparse`, as hyper does), and the response body reads straight from the socket as
//! the client side polls it. The connection goes back to the pool the moment its body ends — for
//! a small response, in the same read as its head — so an idle connection costs no task.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding`
//! ending in `chunked` before `Content-Length`; otherwise the body runs until the backend closes.
//! A connection is reused only when its response said it may be and was read exactly to its end.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite};

use crate::body::{BoxError, RequestBody};
use crate::forward;
use crate::framing;
use crate::pool::Checkin;
use crate::tls::Stream;

/// The most header fields a response head may have (hyper's default too).
const MAX_HEADERS: usize = 100;
/// The largest response head accepted, and the largest chunk-size line or trailer section.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The first read of a response, and of a body.
const FIRST_READ: usize = 8 * 1024;
/// Reads of a large body grow up to this: fewer, larger writes to the client (hyper's ~400 KiB).
const MAX_READ: usize = 400 * 1024;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The backend closed the connection before a complete response head.
    #[error("the backend closed the connection before answering")]
    ClosedBeforeResponse,
    /// The backend closed the connection before the end of the body it announced.
    #[error("the backend closed the connection in the middle of the response body")]
    ClosedMidBody,
    /// The response head is not HTTP/1.x.
    #[error("invalid response head: {0}")]
    InvalidHead(String),
    /// The response head is larger than [`MAX_HEAD_BYTES`].
    #[error("the response head is over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The chunked body is malformed.
    #[error("invalid chunked response body: {0}")]
    InvalidChunk(&'static str),
}

/// A failed [`Connection::send`].
pub enum SendError {
    /// Not a byte of the request reached the backend: it can be sent elsewhere.
    Unsent(Box<Request<RequestBody>>, Error),
    /// The client's request body failed (malformed, too large, stalled).
    ClientBody(BoxError),
    /// The exchange failed after the request was (perhaps partly) sent.
    Backend(Error),
}

/// A connection to a backend, between requests.
pub struct Connection {
    io: Stream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The size of the next body read; grows while reads fill it.
    read_size: usize,
    /// The request head being written, kept to reuse its allocation.
    head: Vec<u8>,
}

impl Connection {
    /// A fresh connection over `io`.
    pub fn new(io: Stream) -> Self {
        Connection { io, read: BytesMut::new(), read_size: FIRST_READ, head: Vec::new() }
    }

    /// Whether the backend has closed this idle connection (or sent on it unasked), as far as
    /// the socket tells without waiting: no system call unless it has signalled something.
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        !self.read.is_empty() || self.poll_fill(&mut cx, FIRST_READ).is_ready()
    }

    /// Sends `request` (origin-form URI, HTTP/1.1) and reads the response head. The response's
    /// body holds the connection and gives it to `home` once read to its end, when reusable.
    pub async fn send(mut self, request: Request<RequestBody>, home: Checkin) -> Result<Response<Body>, SendError> {
        let (mut parts, mut body) = request.into_parts();
        let framing = request_framing(&mut parts.headers, &body);
        encode_head(&mut self.head, &parts);
        let mut writer = BodyWriter {
            chunked: framing == RequestFraming::Chunked,
            pulled: false,
            pending: Pending::default(),
            done: framing == RequestFraming::None,
        };
        // The body's first frame, when it is already here, goes out with the head; a body that
        // fails at once (malformed chunks, say) sends nothing at all.
        if let Poll::Ready(Err(e)) = poll_fn(|cx| Poll::Ready(writer.poll_next(cx, &mut body))).await {
            return Err(e);
        }
        writer.append_small_to(&mut self.head);
        // Other requests ready in this turn of the event loop run first, so the backend is woken
        // once for all their writes rather than once for each: on loopback, waking a sleeping
        // peer is the dearest part of a small request.
        tokio::task::yield_now().await;
        if let Err(e) = self.write_head().await {
            return Err(match e {
                Written::Nothing(e) if !writer.pulled => {
                    SendError::Unsent(Box::new(Request::from_parts(parts, body)), e.into())
                }
                Written::Nothing(e) | Written::Part(e) => SendError::Backend(e.into()),
            });
        }
        let head_only = parts.method == Method::HEAD;
        let upgrade = parts.headers.contains_key(header::UPGRADE);
        // The request's header map, emptied, holds the response's headers: it has the room the
        // request's forwarding headers made it grow to, and hyper hands the map of the response
        // it writes to the client's next request, so one map serves the connection's requests
        // without allocating or growing again.
        let mut headers = parts.headers;
        headers.clear();
        drop((parts.uri, parts.extensions));
        let head = poll_fn(|cx| {
            let written = match writer.poll_write(cx, &mut self.io, &mut body) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => false,
            };
            match self.poll_head(cx, &mut headers) {
                Poll::Ready(head) => Poll::Ready(head.map(|head| (head, written)).map_err(SendError::Backend)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let (head, body_sent) = head?;
        // Likewise for the answer: the client is written to once this returns, and requests whose
        // plugins run in this turn would otherwise spread those writes out, each waking the client.
        tokio::task::yield_now().await;
        let Head { response, framing, keep_alive } = head;
        let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if upgraded && !upgrade {
            return Err(SendError::Backend(Error::InvalidHead("101 without an upgrade request".into())));
        }
        let framing = match framing {
            _ if upgraded => BodyFraming::Upgraded,
            _ if head_only => BodyFraming::Done,
            framing => framing,
        };
        // A backend may answer before it has read the whole request body (an error, or a stream
        // that echoes as it reads): the rest of the body goes on while the response is read, as
        // hyper's client did, and the connection is not reused.
        let upload = (!body_sent && !upgraded).then(|| Box::new(Upload { writer, body }));
        let home = (keep_alive && body_sent && !upgraded).then_some(home);
        Ok(response.map(|()| Body { conn: Some(self), framing, home, upload }))
    }

    /// Writes the encoded request head.
    async fn write_head(&mut self) -> Result<(), Written> {
        let mut written = 0;
        while written < self.head.len() {
            match poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, &self.head[written..])).await {
                Ok(0) => return Err(Written::at(written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) => return Err(Written::at(written, e)),
            }
        }
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await.map_err(Written::Part)
    }

    /// Reads into `read`, at least `want` bytes of room; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.read.reserve(want);
        let read = self.io.read_buf(&mut self.read);
        std::pin::pin!(read).poll(cx)
    }

    /// Reads until a final response head is complete, its headers in `headers` (an empty map);
    /// interim (1xx) responses are skipped.
    fn poll_head(&mut self, cx: &mut Context<'_>, headers: &mut HeaderMap) -> Poll<Result<Head, Error>> {
        loop {
            if !self.read.is_empty() {
                match parse_head(&mut self.read, headers)? {
                    Some(head)
                        if head.response.status().is_informational()
                            && head.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue;
                    }
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.read.len() >= MAX_HEAD_BYTES => return Poll::Ready(Err(Error::HeadTooLarge)),
                    None => {}
                }
            }
            if ready!(self.poll_fill(cx, FIRST_READ))? == 0 {
                return Poll::Ready(Err(Error::ClosedBeforeResponse));
            }
        }
    }

    /// Reads at least one more byte of a body; the end of the stream is an error.
    fn poll_body_bytes(&mut self, cx: &mut Context<'_>, left: u64) -> Poll<Result<(), Error>> {
        let want = (left.min(self.read_size as u64) as usize).max(1);
        let n = ready!(self.poll_fill(cx, want))?;
        if n == 0 {
            return Poll::Ready(Err(Error::ClosedMidBody));
        }
        if n >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(()))
    }
}

/// How far a failed head write got.
enum Written {
    /// Not a byte went out: the request may go elsewhere.
    Nothing(io::Error),
    /// Some of it did, or the flush failed.
    Part(io::Error),
}

impl Written {
    fn at(written: usize, error: io::Error) -> Written {
        if written == 0 { Written::Nothing(error) } else { Written::Part(error) }
    }
}

/// How the request body is framed to the backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    /// No body.
    None,
    /// As the `Content-Length` header says.
    Length,
    /// Chunked (the length is not known in advance).
    Chunked,
}

/// Decides the request body's framing and sets the header that announces it. The client's
/// `Content-Length` is kept (hyper checked the body against it); `Transfer-Encoding`, a hop-by-hop
/// header, was removed before.
fn request_framing(headers: &mut HeaderMap, body: &RequestBody) -> RequestFraming {
    if headers.contains_key(header::CONTENT_LENGTH) {
        return RequestFraming::Length;
    }
    if body.is_end_stream() {
        return RequestFraming::None;
    }
    match body.size_hint().exact() {
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            RequestFraming::Length
        }
        None => {
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            RequestFraming::Chunked
        }
    }
}

/// Writes the request line and headers into `head`.
fn encode_head(head: &mut Vec<u8>, parts: &http::request::Parts) {
    head.clear();
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// Streams the request body after the head, chunk-encoding it when its length is unknown.
struct BodyWriter {
    chunked: bool,
    /// A frame was taken from the body: the request cannot be sent again.
    pulled: bool,
    /// The bytes of the frame being written.
    pending: Pending,
    /// The body (and its last chunk) is written.
    done: bool,
}

/// The last chunk of a chunked body with its trailer section. Fields that frame or route a
/// message have no meaning there, and a lenient backend could act on them: they are left out.
fn last_chunk(trailers: &HeaderMap) -> Bytes {
    let mut block = b"0\r\n".to_vec();
    for (name, value) in trailers {
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::HOST].contains(name) {
            continue;
        }
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    Bytes::from(block)
}

/// Up to three pieces of one frame on the wire: chunk-size line, data, CRLF.
#[derive(Default)]
struct Pending {
    pieces: [Bytes; 3],
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pieces.iter().all(Bytes::is_empty)
    }

    fn advance(&mut self, mut n: usize) {
        for piece in &mut self.pieces {
            let step = n.min(piece.len());
            piece.advance(step);
            n -= step;
        }
    }
}

impl BodyWriter {
    /// Writes the body frame by frame; ready once all of it is written and flushed.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Stream,
        body: &mut RequestBody,
    ) -> Poll<Result<(), SendError>> {
        loop {
            if !self.pending.is_empty() {
                let slices = self.pending.pieces.each_ref().map(|p| IoSlice::new(p));
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))
                    .map_err(|e| SendError::Backend(e.into()))?;
                if n == 0 {
                    return Poll::Ready(Err(SendError::Backend(Error::Io(io::ErrorKind::WriteZero.into()))));
                }
                self.pending.advance(n);
                continue;
            }
            if self.done {
                return Pin::new(&mut *io).poll_flush(cx).map_err(|e| SendError::Backend(e.into()));
            }
            ready!(self.poll_next(cx, body))?;
        }
    }

    /// Takes the body's next frame into `pending` (or marks the end); ready once there is
    /// something to write or nothing left.
    fn poll_next(&mut self, cx: &mut Context<'_>, body: &mut RequestBody) -> Poll<Result<(), SendError>> {
        while self.pending.is_empty() && !self.done {
            self.pulled = true;
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Err(SendError::ClientBody(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        let size = Bytes::from(format!("{:x}\r\n", data.len()));
                        self.pending.pieces = [size, data, Bytes::from_static(b"\r\n")];
                    }
                    Ok(data) => self.pending.pieces[1] = data,
                    // Trailers follow the last chunk; a body sent with a Content-Length has no
                    // place for them, and they are dropped.
                    Err(frame) => {
                        if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                            self.pending.pieces[1] = last_chunk(&trailers);
                            self.done = true;
                        }
                    }
                },
                None => {
                    self.done = true;
                    if self.chunked {
                        self.pending.pieces[1] = Bytes::from_static(b"0\r\n\r\n");
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Moves what is pending, if small, to the end of `head`, so both go out in one write.
    fn append_small_to(&mut self, head: &mut Vec<u8>) {
        if self.pending.pieces.iter().map(Bytes::len).sum::<usize>() <= FIRST_READ {
            for piece in &mut self.pending.pieces {
                head.extend_from_slice(piece);
                *piece = Bytes::new();
            }
        }
    }
}

/// A parsed final response head and what it says about the body and the connection.
struct Head {
    response: Response<()>,
    framing: BodyFraming,
    keep_alive: bool,
}

/// Where a header's name and value lie in the head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses a response head from the start of `read`, consuming it, into the empty map `headers`
/// (taken when the head is complete); `None` when incomplete. Header values are slices of the
/// head as read, not copies.
fn parse_head(read: &mut BytesMut, headers: &mut HeaderMap) -> Result<Option<Head>, Error> {
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let buf: &[u8] = read;
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::InvalidHead(e.to_string())),
        };
        let base = buf.as_ptr() as usize;
        // Within a head of at most MAX_HEAD_BYTES (plus one read), offsets fit in u32.
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start as u32, (start + s.len()) as u32)
        };
        for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
            *span = Span { name: at(h.name.as_bytes()), value: at(h.value) };
        }
        (len, response.code.unwrap_or(0), response.version.unwrap_or(1), response.headers.len())
    };
    let head = read.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::InvalidHead(format!("status {code}")))?;
    let mut headers = std::mem::take(headers);
    headers.reserve(count);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let (mut told_close, mut told_keep_alive) = (false, false);
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(&head[span.name.0 as usize..span.name.1 as usize])
            .map_err(|_| Error::InvalidHead("invalid header name".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0 as usize..span.value.1 as usize))
            .map_err(|_| Error::InvalidHead(format!("invalid value of header {name}")))?;
        if name == header::CONTENT_LENGTH {
            let parsed = std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.trim().parse::<u64>().ok());
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(before)) if n == before => {}
                _ => return Err(Error::InvalidHead("invalid or conflicting Content-Length".into())),
            }
        } else if name == header::TRANSFER_ENCODING {
            chunked = Some(framing::ends_in_chunked(value.as_bytes()));
        } else if name == header::CONNECTION {
            for option in forward::list_elements(value.as_bytes()) {
                told_close |= option.eq_ignore_ascii_case(b"close");
                told_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    // HTTP/1.1 keeps the connection unless told to close it; HTTP/1.0 closes it unless told not to.
    let mut close = told_close || (minor == 0 && !told_keep_alive);
    let framing = if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        BodyFraming::Done
    } else {
        match (chunked, length) {
            (Some(true), _) => BodyFraming::Chunked(Chunk::Size),
            (Some(false), _) => BodyFraming::Close,
            (None, Some(n)) => BodyFraming::Length(n),
            (None, None) => BodyFraming::Close,
        }
    };
    if chunked.is_some() && length.is_some() {
        // Both: the coding wins, the length goes, and the connection is not trusted again.
        headers.remove(header::CONTENT_LENGTH);
        close = true;
    }
    let keep_alive = !close && !matches!(framing, BodyFraming::Close);
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Some(Head { response, framing, keep_alive }))
}

/// How much of a response body is left, and how it is framed.
#[derive(Debug)]
enum BodyFraming {
    /// This many bytes.
    Length(u64),
    /// Chunks, at this step.
    Chunked(Chunk),
    /// Whatever comes until the backend closes.
    Close,
    /// The body is complete.
    Done,
    /// A 101: the connection now belongs to the upgraded protocol.
    Upgraded,
}

/// Where a chunked body's reader is.
#[derive(Debug)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
}

/// A backend's HTTP/1.1 response body, read from its connection as it is polled.
pub struct Body {
    /// The connection, until the body ends (or fails).
    conn: Option<Connection>,
    framing: BodyFraming,
    /// Where the connection goes once the body is complete; `None` when it cannot be reused.
    home: Option<Checkin>,
    /// The rest of a request body the backend answered before reading it all.
    upload: Option<Box<Upload>>,
}

/// A request body still being written.
struct Upload {
    writer: BodyWriter,
    body: RequestBody,
}

/// A connection after a 101: the upgraded protocol's bytes already read, and the stream.
pub struct Upgraded {
    /// Bytes the backend sent after the 101 head, already read.
    pub read_ahead: Bytes,
    /// The connection.
    pub io: Stream,
}

impl Body {
    /// The connection after a 101 response, for the upgraded protocol.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        if !matches!(self.framing, BodyFraming::Upgraded) {
            return None;
        }
        self.home = None;
        self.conn.take().map(|conn| Upgraded { read_ahead: conn.read.freeze(), io: conn.io })
    }

    /// The body is complete: the connection goes home if it may be reused, and is closed if not.
    fn finish(&mut self) {
        self.framing = BodyFraming::Done;
        if let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take())
            && conn.read.is_empty()
        {
            // After a large body the (empty) buffer still holds its large allocation, shared with
            // the frames in flight: an idle connection must not keep that alive.
            if conn.read_size > FIRST_READ {
                conn.read = BytesMut::new();
            }
            home.release(conn);
        }
    }

    /// Fails the body; the connection is closed.
    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.home = None;
        self.framing = BodyFraming::Done;
        Poll::Ready(Some(Err(error.into())))
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            if let Some(upload) = &mut self.upload
                && let Poll::Ready(written) = upload.writer.poll_write(cx, &mut conn.io, &mut upload.body)
            {
                // Written, or failed: either way the response is still read to its end.
                if written.is_err() {
                    tracing::debug!("the rest of a request body could not be sent after the response began");
                }
                self.upload = None;
            }
            match &mut self.framing {
                BodyFraming::Upgraded => return Poll::Ready(Ok(None)),
                BodyFraming::Done | BodyFraming::Length(0) => {
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                BodyFraming::Length(left) | BodyFraming::Chunked(Chunk::Data(left)) => {
                    if conn.read.is_empty() {
                        ready!(conn.poll_body_bytes(cx, *left))?;
                    }
                    let n = (conn.read.len() as u64).min(*left);
                    *left -= n;
                    let data = conn.read.split_to(n as usize).freeze();
                    match &mut self.framing {
                        BodyFraming::Length(0) => self.finish(),
                        BodyFraming::Chunked(chunk @ Chunk::Data(0)) => *chunk = Chunk::DataEnd,
                        _ => {}
                    }
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                BodyFraming::Close => {
                    if conn.read.is_empty() {
                        match ready!(conn.poll_body_bytes(cx, u64::MAX)) {
                            Err(Error::ClosedMidBody) => {
                                self.finish();
                                return Poll::Ready(Ok(None));
                            }
                            other => other?,
                        }
                    }
                    return Poll::Ready(Ok(Some(Frame::data(conn.read.split().freeze()))));
                }
                BodyFraming::Chunked(chunk) => match chunk {
                    Chunk::Size => match httparse::parse_chunk_size(&conn.read) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            conn.read.advance(used);
                            *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                        }
                        Ok(httparse::Status::Partial) if conn.read.len() < MAX_HEAD_BYTES => {
                            ready!(conn.poll_body_bytes(cx, 1))?;
                        }
                        _ => return Poll::Ready(Err(Error::InvalidChunk("bad chunk-size line"))),
                    },
                    Chunk::DataEnd if conn.read.len() < 2 => ready!(conn.poll_body_bytes(cx, 2))?,
                    Chunk::DataEnd if conn.read.starts_with(b"\r\n") => {
                        conn.read.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::DataEnd => return Poll::Ready(Err(Error::InvalidChunk("chunk data not followed by CRLF"))),
                    Chunk::Trailers => {
                        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        match httparse::parse_headers(&conn.read, &mut fields) {
                            Ok(httparse::Status::Complete((used, fields))) => {
                                let mut trailers = HeaderMap::new();
                                for field in fields.iter() {
                                    if let (Ok(name), Ok(value)) = (
                                        HeaderName::from_bytes(field.name.as_bytes()),
                                        HeaderValue::from_bytes(field.value),
                                    ) {
                                        trailers.append(name, value);
                                    }
                                }
                                conn.read.advance(used);
                                self.finish();
                                return Poll::Ready(Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers))));
                            }
                            Ok(httparse::Status::Partial) if conn.read.len() < MAX_HEAD_BYTES => {
                                ready!(conn.poll_body_bytes(cx, 1))?;
                            }
                            _ => return Poll::Ready(Err(Error::InvalidChunk("bad trailer section"))),
                        }
                    }
                    Chunk::Data(_) => unreachable!("handled with Length above"),
                },
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(this.poll_step(cx)) {
            Ok(frame) => Poll::Ready(frame.map(Ok)),
            Err(error) => this.fail(error),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, BodyFraming::Done | BodyFraming::Length(0) | BodyFraming::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(left) => SizeHint::with_exact(left),
            BodyFraming::Done | BodyFraming::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // hyper does not poll a body that is already complete (an empty 204, say): its connection
        // is reused anyway. A body dropped half-read takes its connection down with it.
        if matches!(self.framing, BodyFraming::Done | BodyFraming::Length(0)) {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing and reuse a response head asks for.
    fn framing_of(head: &str) -> Result<(String, bool), Error> {
        let mut read = BytesMut::from(head);
        let head = parse_head(&mut read, &mut HeaderMap::new())?.expect("a complete head");
        Ok((format!("{:?}", head.framing), head.keep_alive))
    }

    #[test]
    fn the_framing_and_reuse_of_a_response_follow_rfc_9112() {
        let cases = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "Length(5)", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "Length(5)", true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Chunked(Size)", true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "Close", false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", "Chunked(Size)", false),
            ("HTTP/1.1 200 OK\r\n\r\n", "Close", false),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", "Done", true),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", "Done", true),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "Length(0)", false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", "Length(2)", false),
            ("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n", "Length(2)", true),
        ];
        for (head, framing, reuse) in cases {
            assert_eq!(framing_of(head).ok(), Some((framing.to_string(), reuse)), "{head:?}");
        }
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 2000 Huge\r\n\r\n",
        ] {
            assert!(framing_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_head_is_consumed_repeated_fields_kept_in_order_and_what_follows_left_unread() {
        let mut read = BytesMut::from("HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody");
        let mut headers = HeaderMap::new();
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nX-A: 1\r\n"), &mut headers).unwrap().is_none());
        let head = parse_head(&mut read, &mut headers).unwrap().unwrap();
        assert_eq!(&read[..], b"body");
        let values: Vec<_> = head.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }
}
