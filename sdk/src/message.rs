//! What hooks see and change: [`Request`] (on-request, select-backend), [`Response`]
//! (on-response) and [`Backend`] (select-backend).
//!
//! Headers and the request context arrive from the gateway in the flat `fields` encoding and are
//! read in place, so a hook pays only for what it reads. A mutator records the change for the
//! gateway, already in the flat encoding the WIT wants (one buffer per kind of change, no
//! allocation per header); later reads in the same hook see the received values through the
//! recorded changes. The gateway applies the changes only when the hook returns normally. Tests
//! read them decoded, through [`Request::changes`] and [`Response::changes`].

use std::str::FromStr;

use crate::fields::{self, Change, Fields, Kind};

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

/// What a hook changed in the request, decoded for tests: see [`Request::changes`].
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

/// What on-response changed, decoded for tests: see [`Response::changes`].
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
    /// The headers and their changes; the request line's pseudo-header entries lie before them
    /// in the same buffer, where the `Text::At` values above point.
    pub(crate) headers: Fields,
    pub(crate) client_ip: Text,
    pub(crate) route: Text,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) context: Fields,
    pub(crate) changes: RequestRecord,
}

/// What on-request or select-backend changed besides the headers and the context (which their
/// [`Fields`] record), as it crosses to the gateway.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestRecord {
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) query: Option<String>,
    /// `header-changes`.
    pub(crate) response_headers: Vec<u8>,
}

/// What on-response changed besides the headers and the context (which their [`Fields`] record).
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseRecord {
    pub(crate) status: Option<u16>,
}

impl Request {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.changes.method.as_deref().unwrap_or_else(|| self.method.get(self.headers.buffer()))
    }

    /// The normalised path, without the query, e.g. `/api/users`.
    pub fn path(&self) -> &str {
        self.changes.path.as_deref().unwrap_or_else(|| self.path.get(self.headers.buffer()))
    }

    /// The query without the leading `?`; empty when there is none.
    pub fn query(&self) -> &str {
        self.changes.query.as_deref().unwrap_or_else(|| self.query.get(self.headers.buffer()))
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

    /// Changes the method (not to `CONNECT`, which the gateway refuses as an invalid result: it
    /// would ask the backend for a tunnel).
    pub fn set_method(&mut self, method: impl Into<String>) {
        self.changes.method = Some(method.into());
    }

    /// Changes the path, which must start with `/`.
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.changes.path = Some(path.into());
    }

    /// Changes the query (without `?`); an empty query removes it.
    pub fn set_query(&mut self, query: impl Into<String>) {
        self.changes.query = Some(query.into());
    }

    /// Replaces every value of the header `name` with `value`. The name is lower-cased; the
    /// gateway checks names and values when it applies the change.
    pub fn set_header(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        self.headers.set(name.as_ref(), value.as_ref());
    }

    /// Adds a value to the header `name`, keeping the existing ones.
    pub fn append_header(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        self.headers.append(name.as_ref(), value.as_ref());
    }

    /// Removes the header `name`.
    pub fn remove_header(&mut self, name: impl AsRef<str>) {
        self.headers.remove(name.as_ref());
    }

    /// Sets the header `name` of the response this request gets, whether the backend's or a
    /// plugin's, replacing its values. The gateway applies it as the response arrives, before any
    /// on-response hook: a plugin whose response headers are known at on-request time (limits,
    /// CORS, security headers) needs no on-response at all, and saves the gateway a hook call.
    pub fn set_response_header(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        fields::push_change(&mut self.changes.response_headers, Change::Set, name.as_ref(), value.as_ref());
    }

    /// Adds a value to the header `name` of the response (see [`Request::set_response_header`]).
    pub fn append_response_header(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        fields::push_change(&mut self.changes.response_headers, Change::Append, name.as_ref(), value.as_ref());
    }

    /// Removes the header `name` from the response (see [`Request::set_response_header`]).
    pub fn remove_response_header(&mut self, name: impl AsRef<str>) {
        fields::push_change(&mut self.changes.response_headers, Change::Remove, name.as_ref(), "");
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
    pub fn set_context(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        self.context.set(key.as_ref(), value.as_ref());
    }

    /// Removes the context entry `key`.
    pub fn remove_context(&mut self, key: impl AsRef<str>) {
        self.context.remove(key.as_ref());
    }

    /// What this hook changed so far, decoded (the gateway receives it in a flat encoding).
    pub fn changes(&self) -> RequestChanges {
        let c = &self.changes;
        RequestChanges {
            method: c.method.clone(),
            path: c.path.clone(),
            query: c.query.clone(),
            headers: fields::header_ops(self.headers.changes()),
            response_headers: fields::header_ops(&c.response_headers),
            context: context_changes(self.context.changes()),
        }
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
    pub(crate) changes: ResponseRecord,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Changes the status code (200 to 999; 1xx is an invalid result).
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
    pub fn set_header(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        self.headers.set(name.as_ref(), value.as_ref());
    }

    /// Adds a value to the response header `name`.
    pub fn append_header(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        self.headers.append(name.as_ref(), value.as_ref());
    }

    /// Removes the response header `name`.
    pub fn remove_header(&mut self, name: impl AsRef<str>) {
        self.headers.remove(name.as_ref());
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
    pub fn set_context(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        self.context.set(key.as_ref(), value.as_ref());
    }

    /// Removes the context entry `key`.
    pub fn remove_context(&mut self, key: impl AsRef<str>) {
        self.context.remove(key.as_ref());
    }

    /// What this hook changed so far, decoded (the gateway receives it in a flat encoding).
    pub fn changes(&self) -> ResponseChanges {
        ResponseChanges {
            status: self.changes.status,
            headers: fields::header_ops(self.headers.changes()),
            context: context_changes(self.context.changes()),
        }
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

/// The context entries a hook set, one per key (its last value), in the order first set.
fn context_changes(buf: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in Fields::entries(buf) {
        let (key, value) = (String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned());
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => out.push((key, value)),
        }
    }
    out
}

impl Request {
    /// A `GET /` request with no headers: the starting point of the test builder.
    pub(crate) fn blank() -> Self {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: "".into(),
            headers: Fields::new(Kind::Headers),
            client_ip: "127.0.0.1".into(),
            route: "test".into(),
            tls: None,
            context: Fields::new(Kind::Context),
            changes: RequestRecord::default(),
        }
    }
}

impl Response {
    /// A `200` response to `GET /` with no headers: the starting point of the test builder.
    pub(crate) fn blank() -> Self {
        Response {
            status: 200,
            headers: Fields::new(Kind::Headers),
            request_method: "GET".into(),
            request_path: "/".into(),
            request_headers: Fields::new(Kind::Headers),
            route: "test".into(),
            context: Fields::new(Kind::Context),
            changes: ResponseRecord::default(),
        }
    }
}
