//! What hooks see and change: [`Request`] (on-request, select-backend), [`Response`]
//! (on-response) and [`Backend`] (select-backend).
//!
//! Headers and the request context arrive from the gateway in the flat `fields` encoding and are
//! read in place, so a hook pays only for what it reads. Every mutator does two things: it
//! records the change for the gateway ([`Request::changes`], [`Response::changes`]), and it
//! updates the value, so later reads in the same hook see the change. The gateway applies the
//! recorded changes only when the hook returns normally.

use std::str::FromStr;

use crate::fields::{Fields, Names};

/// TLS facts of the client connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<String>,
    /// The subject of the client certificate, when mutual TLS verified one.
    pub client_subject: Option<String>,
}

/// A healthy backend offered to [`Plugin::select_backend`](crate::Plugin::select_backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The address as configured, e.g. `10.0.0.5:8080` or `api-2.internal:9002`.
    pub address: String,
    /// Its weight (at least 1).
    pub weight: u32,
    /// Its zone; empty when none is configured.
    pub zone: String,
}

/// One change to a list of headers, as recorded by the header mutators. Names are lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the header (name, value) with this one.
    Set(String, String),
    /// Add a value (name, value), keeping the existing ones.
    Append(String, String),
    /// Remove the header.
    Remove(String),
}

/// What a hook changed in the request, in the order the gateway applies it. Read it in tests
/// through [`Request::changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestChanges {
    /// A new method.
    pub method: Option<String>,
    /// A new path.
    pub path: Option<String>,
    /// A new query (empty removes it).
    pub query: Option<String>,
    /// Header changes, in order.
    pub headers: Vec<HeaderOp>,
    /// Header changes for the response, in order (see [`Request::set_response_header`]).
    pub response_headers: Vec<HeaderOp>,
    /// Context entries set, one per key, in the order first set; an empty value removes the key.
    pub context: Vec<(String, String)>,
}

/// What on-response changed. Read it in tests through [`Response::changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseChanges {
    /// A new status code.
    pub status: Option<u16>,
    /// Header changes, in order.
    pub headers: Vec<HeaderOp>,
    /// Context entries set, as in [`RequestChanges::context`].
    pub context: Vec<(String, String)>,
}

/// A request, as [`Plugin::on_request`](crate::Plugin::on_request) and
/// [`Plugin::select_backend`](crate::Plugin::select_backend) see it: after routing and path
/// normalisation, and, for select-backend, with every change on-request made.
///
/// Header names compare without regard to ASCII case. The string accessors skip values that are
/// not UTF-8 (HTTP allows some other bytes); [`Request::header_bytes`] returns any value.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: Text,
    pub(crate) path: Text,
    pub(crate) query: Text,
    /// The headers; the request line's pseudo-header entries lie before them in the same buffer,
    /// where the `Text::At` values above point.
    pub(crate) headers: Fields,
    pub(crate) client_ip: Text,
    pub(crate) route: Text,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) context: Fields,
    pub(crate) changes: RequestChanges,
}

impl Request {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.method.get(self.headers.buffer())
    }

    /// The normalised path, without the query, e.g. `/api/users`.
    pub fn path(&self) -> &str {
        self.path.get(self.headers.buffer())
    }

    /// The query without the leading `?`; empty when there is none.
    pub fn query(&self) -> &str {
        self.query.get(self.headers.buffer())
    }

    /// The client address: the TCP peer, or the client named by a trusted proxy.
    pub fn client_ip(&self) -> &str {
        self.client_ip.get(self.headers.buffer())
    }

    /// The name of the route that matched.
    pub fn route(&self) -> &str {
        self.route.get(self.headers.buffer())
    }

    /// TLS facts, when the request came over TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The first value of the header `name`, copied; `None` when absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_str(name).map(str::to_owned)
    }

    /// The first value of the header `name`, borrowed; `None` when absent or not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.first_str(name)
    }

    /// The first value of the header `name` as bytes, whatever they are.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.first(name)
    }

    /// Every UTF-8 value of the header `name`, in the order received.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        utf8_values(&self.headers, name)
    }

    /// Every header as (lower-case name, value), in order, skipping values that are not UTF-8.
    pub fn header_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        utf8_entries(&self.headers)
    }

    /// Changes the method.
    pub fn set_method(&mut self, method: impl Into<String>) {
        let method = method.into();
        self.changes.method = Some(method.clone());
        self.method = Text::Owned(method);
    }

    /// Changes the path, which must start with `/`.
    pub fn set_path(&mut self, path: impl Into<String>) {
        let path = path.into();
        self.changes.path = Some(path.clone());
        self.path = Text::Owned(path);
    }

    /// Changes the query (without `?`); an empty query removes it.
    pub fn set_query(&mut self, query: impl Into<String>) {
        let query = query.into();
        self.changes.query = Some(query.clone());
        self.query = Text::Owned(query);
    }

    /// Replaces every value of the header `name` with `value`. The name is lower-cased; the
    /// gateway checks names and values when it applies the change.
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        set_header(&mut self.headers, &mut self.changes.headers, name, value);
    }

    /// Adds a value to the header `name`, keeping the existing ones.
    pub fn append_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        append_header(&mut self.headers, &mut self.changes.headers, name, value);
    }

    /// Removes the header `name`.
    pub fn remove_header(&mut self, name: impl Into<String>) {
        remove_header(&mut self.headers, &mut self.changes.headers, name);
    }

    /// Sets the header `name` of the response this request gets, whether the backend's or a
    /// plugin's, replacing its values. The gateway applies it as the response arrives, before any
    /// on-response hook: a plugin whose response headers are known at on-request time (limits,
    /// CORS, security headers) needs no on-response at all, and saves the gateway a hook call.
    pub fn set_response_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.changes.response_headers.push(HeaderOp::Set(lower(name), value.into()));
    }

    /// Adds a value to the header `name` of the response (see [`Request::set_response_header`]).
    pub fn append_response_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.changes.response_headers.push(HeaderOp::Append(lower(name), value.into()));
    }

    /// Removes the header `name` from the response (see [`Request::set_response_header`]).
    pub fn remove_response_header(&mut self, name: impl Into<String>) {
        self.changes.response_headers.push(HeaderOp::Remove(lower(name)));
    }

    /// The request context entry `key`: a small string map the gateway keeps for the request,
    /// written by earlier hooks of this and other plugins. Keys are case-sensitive.
    pub fn context(&self, key: &str) -> Option<&str> {
        self.context.first_str(key)
    }

    /// The context entry `key` parsed as `T`; `None` when absent or when it does not parse.
    pub fn context_as<T: FromStr>(&self, key: &str) -> Option<T> {
        self.context(key)?.parse().ok()
    }

    /// Sets the context entry `key`, for later hooks of this request (any plugin) and the access
    /// log. An empty value removes the key.
    pub fn set_context(&mut self, key: impl Into<String>, value: impl Into<String>) {
        set_context(&mut self.context, &mut self.changes.context, key, value);
    }

    /// Removes the context entry `key`.
    pub fn remove_context(&mut self, key: impl Into<String>) {
        set_context(&mut self.context, &mut self.changes.context, key, "");
    }

    /// What this hook changed so far, in the form the gateway receives.
    pub fn changes(&self) -> &RequestChanges {
        &self.changes
    }
}

/// A response, as [`Plugin::on_response`](crate::Plugin::on_response) sees it: status and
/// headers, with the request it answers. The body is not available (yet).
#[derive(Debug, Clone)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Fields,
    pub(crate) request_method: String,
    pub(crate) request_path: String,
    pub(crate) request_headers: Fields,
    pub(crate) route: String,
    pub(crate) context: Fields,
    pub(crate) changes: ResponseChanges,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Changes the status code (100 to 999).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
        self.changes.status = Some(status);
    }

    /// The first value of the response header `name`, copied; `None` when absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_str(name).map(str::to_owned)
    }

    /// The first value of the response header `name`, borrowed.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.first_str(name)
    }

    /// The first value of the response header `name` as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.first(name)
    }

    /// Every UTF-8 value of the response header `name`, in order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        utf8_values(&self.headers, name)
    }

    /// Every response header as (lower-case name, value), in order.
    pub fn header_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        utf8_entries(&self.headers)
    }

    /// Replaces every value of the response header `name` with `value` (see
    /// [`Request::set_header`]).
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        set_header(&mut self.headers, &mut self.changes.headers, name, value);
    }

    /// Adds a value to the response header `name`.
    pub fn append_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        append_header(&mut self.headers, &mut self.changes.headers, name, value);
    }

    /// Removes the response header `name`.
    pub fn remove_header(&mut self, name: impl Into<String>) {
        remove_header(&mut self.headers, &mut self.changes.headers, name);
    }

    /// The request's method.
    pub fn request_method(&self) -> &str {
        &self.request_method
    }

    /// The request's path as the backend saw it.
    pub fn request_path(&self) -> &str {
        &self.request_path
    }

    /// The first value of the request header `name` as the backend saw it, copied.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.request_header_str(name).map(str::to_owned)
    }

    /// The first value of the request header `name`, borrowed.
    pub fn request_header_str(&self, name: &str) -> Option<&str> {
        self.request_headers.first_str(name)
    }

    /// Every UTF-8 value of the request header `name`, in order.
    pub fn request_headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        utf8_values(&self.request_headers, name)
    }

    /// The name of the route.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The request context entry `key` (see [`Request::context`]).
    pub fn context(&self, key: &str) -> Option<&str> {
        self.context.first_str(key)
    }

    /// The context entry `key` parsed as `T`; `None` when absent or when it does not parse.
    pub fn context_as<T: FromStr>(&self, key: &str) -> Option<T> {
        self.context(key)?.parse().ok()
    }

    /// Sets the context entry `key` (an empty value removes it): later on-response hooks and
    /// the access log see it.
    pub fn set_context(&mut self, key: impl Into<String>, value: impl Into<String>) {
        set_context(&mut self.context, &mut self.changes.context, key, value);
    }

    /// Removes the context entry `key`.
    pub fn remove_context(&mut self, key: impl Into<String>) {
        set_context(&mut self.context, &mut self.changes.context, key, "");
    }

    /// What this hook changed so far, in the form the gateway receives.
    pub fn changes(&self) -> &ResponseChanges {
        &self.changes
    }
}

/// A request-line value: where it lies in the request's buffer, as it came from the host, or
/// the value a hook or test set. Reading in place saves an allocation per value per hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Text {
    /// `buffer[start..end]`; the host sends UTF-8, and anything else reads as empty.
    At(usize, usize),
    /// A value of its own.
    Owned(String),
}

impl Text {
    /// The value, given the buffer `At` points into.
    fn get<'a>(&'a self, buffer: &'a [u8]) -> &'a str {
        match self {
            Text::At(start, end) => buffer.get(*start..*end).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or(""),
            Text::Owned(text) => text,
        }
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Text::Owned(text.to_string())
    }
}

fn utf8_values<'a>(fields: &'a Fields, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    fields.values(name).filter_map(|v| std::str::from_utf8(v).ok())
}

fn utf8_entries(fields: &Fields) -> impl Iterator<Item = (&str, &str)> {
    fields.iter().filter_map(|(n, v)| Some((std::str::from_utf8(n).ok()?, std::str::from_utf8(v).ok()?)))
}

fn lower(name: impl Into<String>) -> String {
    let mut name = name.into();
    name.make_ascii_lowercase();
    name
}

fn set_header(fields: &mut Fields, ops: &mut Vec<HeaderOp>, name: impl Into<String>, value: impl Into<String>) {
    let (name, value) = (lower(name), value.into());
    fields.set(&name, value.as_bytes());
    ops.push(HeaderOp::Set(name, value));
}

fn append_header(fields: &mut Fields, ops: &mut Vec<HeaderOp>, name: impl Into<String>, value: impl Into<String>) {
    let (name, value) = (lower(name), value.into());
    fields.append(name.as_bytes(), value.as_bytes());
    ops.push(HeaderOp::Append(name, value));
}

fn remove_header(fields: &mut Fields, ops: &mut Vec<HeaderOp>, name: impl Into<String>) {
    let name = lower(name);
    fields.remove(&name);
    ops.push(HeaderOp::Remove(name));
}

fn set_context(
    fields: &mut Fields,
    changes: &mut Vec<(String, String)>,
    key: impl Into<String>,
    value: impl Into<String>,
) {
    let (key, value) = (key.into(), value.into());
    if value.is_empty() {
        fields.remove(&key);
    } else {
        fields.set(&key, value.as_bytes());
    }
    // Only the last value of a key matters to the gateway: keep one entry per key.
    match changes.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => changes.push((key, value)),
    }
}

impl Request {
    /// A `GET /` request with no headers: the starting point of the test builder.
    pub(crate) fn blank() -> Self {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: "".into(),
            headers: Fields::new(Names::CaseInsensitive),
            client_ip: "127.0.0.1".into(),
            route: "test".into(),
            tls: None,
            context: Fields::new(Names::Exact),
            changes: RequestChanges::default(),
        }
    }
}

impl Response {
    /// A `200` response to `GET /` with no headers: the starting point of the test builder.
    pub(crate) fn blank() -> Self {
        Response {
            status: 200,
            headers: Fields::new(Names::CaseInsensitive),
            request_method: "GET".into(),
            request_path: "/".into(),
            request_headers: Fields::new(Names::CaseInsensitive),
            route: "test".into(),
            context: Fields::new(Names::Exact),
            changes: ResponseChanges::default(),
        }
    }
}
