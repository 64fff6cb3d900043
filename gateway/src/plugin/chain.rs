//! A route's plugins over one request: on-request in order, on-response in reverse for every
//! plugin whose on-request ran, and select-backend for upstreams balanced by a plugin.
//!
//! A hook's changes are validated whole and applied only when it returned normally; a hook that
//! fails changes nothing, and its plugin's `on_error` decides: `deny` ends the request with a 500
//! (which no on-response sees), `allow` skips the plugin. The request context, a small string map
//! that carries data from on-request to on-response and from one plugin to the next, lives here
//! and dies with the request.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, request};

use super::bindings::types::{self, RequestAction, ResponseAction, Selection};
use super::fields::{self, Change, RequestLine};
use super::header_names;
use super::hook_calls::{self, Fields};
use super::{Hook, LoadedPlugin, PluginFailure};
use crate::body::ResponseBody;
use crate::config::OnError;
use crate::error::ProxyError;
use crate::net::IpText;
use crate::tls::TlsFacts;

/// What on-request decided for the request as a whole.
pub enum Verdict {
    /// Go on to the backend.
    Continue,
    /// A plugin answered; the backend is not called.
    Respond(Box<Response<ResponseBody>>),
}

/// The request's path and query as plugins leave them.
pub struct Target<'u> {
    /// The normalised path, or the one a plugin set.
    pub path: Cow<'u, str>,
    /// The query without `?`, if any.
    pub query: Option<Cow<'u, str>>,
}

/// The most plugins a route may have (the chain tracks them in a bit set).
pub const MAX_PLUGINS_PER_ROUTE: usize = 64;

/// The plugins of one request and what they share.
pub struct Chain<'s> {
    /// The route's plugins, as indices into `all`.
    chain: &'s [usize],
    all: &'s [LoadedPlugin],
    route: &'s str,
    tls: Option<&'s TlsFacts>,
    /// Bit `i` is set when on-request of `chain[i]` ran.
    ran: u64,
    /// The request context as a `fields` block, one entry per key: it crosses into each hook
    /// as it is, without encoding.
    context: Vec<u8>,
    /// Header changes on-request asked for the response, in plugin order.
    response_ops: Vec<Op>,
    /// The request as on-request left it, for on-response: method, path, encoded headers.
    request: Option<(String, String, Vec<u8>)>,
}

impl<'s> Chain<'s> {
    /// The chain of plugins `chain` (indices into `all`, at most [`MAX_PLUGINS_PER_ROUTE`]) on
    /// route `route`, for a request that came over TLS when `tls` is set.
    pub fn new(chain: &'s [usize], all: &'s [LoadedPlugin], route: &'s str, tls: Option<&'s TlsFacts>) -> Self {
        Chain { chain, all, route, tls, ran: 0, context: Vec::new(), response_ops: Vec::new(), request: None }
    }

    fn plugins(&self) -> impl DoubleEndedIterator<Item = (usize, &'s LoadedPlugin)> + use<'s> {
        let all = self.all;
        self.chain.iter().enumerate().map(move |(position, &index)| (position, &all[index]))
    }

    /// Runs on-request of every plugin in order until one responds.
    pub fn on_request(
        &mut self,
        parts: &mut request::Parts,
        target: &mut Target<'_>,
        client_ip: IpAddr,
    ) -> Result<Verdict, ProxyError> {
        if self.chain.is_empty() {
            return Ok(Verdict::Continue);
        }
        let client_ip = IpText::new(client_ip);
        let client_ip = client_ip.as_str();
        // The request's head is encoded once and crosses into each plugin as it is, until a
        // plugin changes the request; the context crosses as the chain keeps it.
        let verdict = fields::with_scratch(|head| {
            let mut encoded = false;
            for (position, plugin) in self.plugins() {
                if !plugin.implements(Hook::OnRequest) {
                    self.ran |= 1 << position;
                    continue;
                }
                if !encoded {
                    let line = RequestLine {
                        method: parts.method.as_str(),
                        path: &target.path,
                        query: target.query.as_deref().unwrap_or(""),
                        client_ip,
                        route: self.route,
                    };
                    fields::encode_request(head, &line, &parts.headers);
                    encoded = true;
                }
                let view =
                    hook_calls::Request { head, tls: self.tls.map(TlsFacts::view), context: Fields(&self.context) };
                let outcome =
                    plugin.call(|hooks, store| hook_calls::on_request(hooks, store, view)).and_then(|outcome| {
                        let changes = RequestChanges::validate(outcome.changes)?;
                        let respond = match outcome.action {
                            RequestAction::Continue => None,
                            RequestAction::Respond(response) => Some(plugin_response(response)?),
                            RequestAction::NotImplemented => {
                                plugin.mark_unimplemented(Hook::OnRequest);
                                None
                            }
                        };
                        Ok((changes, respond))
                    });
                plugin.count(Hook::OnRequest, &outcome);
                match outcome {
                    Ok((changes, respond)) => {
                        encoded &= !changes.change_the_request();
                        changes.apply(parts, target, &mut self.context, &mut self.response_ops);
                        self.ran |= 1 << position;
                        if let Some(response) = respond {
                            return Ok(Verdict::Respond(Box::new(response)));
                        }
                    }
                    Err(failure) => self.failed(plugin, Hook::OnRequest, failure)?,
                }
            }
            Ok(Verdict::Continue)
        })?;
        if self.plugins().any(|(position, p)| self.ran & (1 << position) != 0 && p.implements(Hook::OnResponse)) {
            self.request =
                Some((parts.method.to_string(), target.path.to_string(), fields::encode_headers(&parts.headers)));
        }
        Ok(verdict)
    }

    /// The request context as the plugins have left it so far, as a `fields` block.
    pub fn context(&self) -> &[u8] {
        &self.context
    }

    /// Applies the response header changes on-request asked for, then runs on-response of every
    /// plugin whose on-request ran, in reverse order.
    pub fn on_response(&mut self, response: &mut Response<ResponseBody>) -> Result<(), ProxyError> {
        apply_ops(response.headers_mut(), std::mem::take(&mut self.response_ops));
        let empty = (String::new(), String::new(), Vec::new());
        let (method, path, request_headers) = self.request.as_ref().unwrap_or(&empty);
        for (position, plugin) in self.plugins().rev() {
            if self.ran & (1 << position) == 0 || !plugin.implements(Hook::OnResponse) {
                continue;
            }
            let status = response.status().as_u16();
            let outcome = fields::with_scratch(|headers| {
                fields::append_headers(headers, response.headers());
                let view = hook_calls::ResponseHead {
                    status,
                    headers: Fields(headers),
                    request_method: method,
                    request_path: path,
                    request_headers: Fields(request_headers),
                    route: self.route,
                    context: Fields(&self.context),
                };
                plugin.call(|hooks, store| hook_calls::on_response(hooks, store, view))
            })
            .and_then(|outcome| {
                let status = outcome.changes.status.map(status_code).transpose()?;
                let ops = outcome.changes.headers.0?;
                validate_context(&outcome.changes.context.0)?;
                let replace = match outcome.action {
                    ResponseAction::Continue => None,
                    ResponseAction::Replace(replacement) => Some(plugin_response(replacement)?),
                    ResponseAction::NotImplemented => {
                        plugin.mark_unimplemented(Hook::OnResponse);
                        None
                    }
                };
                Ok((status, ops, outcome.changes.context.0, replace))
            });
            plugin.count(Hook::OnResponse, &outcome);
            match outcome {
                Ok((status, ops, context, replace)) => {
                    if let Some(replacement) = replace {
                        *response = replacement;
                    }
                    if let Some(status) = status {
                        *response.status_mut() = status;
                    }
                    apply_ops(response.headers_mut(), ops);
                    apply_context(&mut self.context, &context);
                }
                Err(failure) => self.failed(plugin, Hook::OnResponse, failure)?,
            }
        }
        Ok(())
    }

    /// Handles a failed hook by the plugin's `on_error`: an error for `deny`, a log line for `allow`.
    fn failed(&self, plugin: &LoadedPlugin, hook: Hook, failure: PluginFailure) -> Result<(), ProxyError> {
        tracing::warn!(plugin = plugin.name(), hook = hook.name(), route = self.route, error = %failure, "plugin failed");
        match plugin.config.on_error {
            OnError::Allow => Ok(()),
            OnError::Deny => Err(ProxyError::Plugin { plugin: plugin.name().to_string(), failure }),
        }
    }
}

/// The request as select-backend sees it.
pub struct Selecting<'a> {
    /// The method, as on-request left it.
    pub method: &'a Method,
    /// The headers, as on-request left them.
    pub headers: &'a HeaderMap,
    /// The path and query.
    pub target: &'a Target<'a>,
    /// The client address.
    pub client_ip: IpAddr,
    /// What TLS told about the client connection.
    pub tls: Option<&'a TlsFacts>,
    /// The route's name.
    pub route: &'a str,
    /// The request context (a `fields` block).
    pub context: &'a [u8],
}

/// Asks `plugin` to choose among `backends` (address, weight, zone) for this request. `None`
/// leaves the choice to the upstream's own policy.
pub fn select_backend(
    plugin: &LoadedPlugin,
    request: &Selecting<'_>,
    backends: &[types::Backend<'_>],
) -> Result<Option<usize>, PluginFailure> {
    if !plugin.implements(Hook::SelectBackend) {
        return Ok(None);
    }
    let Selecting { method, headers, target, client_ip, tls, route, context } = *request;
    let client_ip = IpText::new(client_ip);
    let line = RequestLine {
        method: method.as_str(),
        path: &target.path,
        query: target.query.as_deref().unwrap_or(""),
        client_ip: client_ip.as_str(),
        route,
    };
    let selection = fields::with_scratch(|head| {
        fields::encode_request(head, &line, headers);
        let view = hook_calls::Request { head, tls: tls.map(TlsFacts::view), context: Fields(context) };
        plugin.call(|hooks, store| hook_calls::select_backend(hooks, store, view, backends))
    });
    let chosen = selection.and_then(|selection| match selection {
        Selection::Backend(index) if (index as usize) < backends.len() => Ok(Some(index as usize)),
        Selection::Backend(index) => Err(PluginFailure::Invalid(format!(
            "select-backend chose index {index} of {} healthy backends",
            backends.len()
        ))),
        Selection::Default => Ok(None),
        Selection::NotImplemented => {
            plugin.mark_unimplemented(Hook::SelectBackend);
            Ok(None)
        }
    });
    plugin.count(Hook::SelectBackend, &chosen);
    chosen
}

/// A header change, checked.
pub(super) enum Op {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

/// The changes of on-request, checked before any is applied.
struct RequestChanges {
    method: Option<Method>,
    path: Option<String>,
    query: Option<String>,
    ops: Vec<Op>,
    response_ops: Vec<Op>,
    /// Context entries to set, a `fields` block.
    context: Vec<u8>,
}

impl RequestChanges {
    fn validate(changes: hook_calls::RequestChanges) -> Result<Self, PluginFailure> {
        let method = changes
            .method
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| invalid(format!("`{m}` is not a method"))))
            .transpose()?;
        // A CONNECT asks the backend for a tunnel, which a proxied request's connection (pooled,
        // shared with other clients' requests) must never become.
        if method == Some(Method::CONNECT) {
            return Err(invalid("a plugin may not turn a request into CONNECT".into()));
        }
        if let Some(path) = &changes.path
            && (!path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err())
        {
            return Err(invalid(format!("`{path}` is not a path")));
        }
        if let Some(query) = &changes.query
            && http::uri::PathAndQuery::try_from(format!("/?{query}")).is_err()
        {
            return Err(invalid(format!("`{query}` is not a query")));
        }
        Ok(RequestChanges {
            method,
            path: changes.path,
            query: changes.query,
            ops: changes.headers.0?,
            response_ops: changes.response_headers.0?,
            context: {
                validate_context(&changes.context.0)?;
                changes.context.0
            },
        })
    }

    /// Whether these changes change what the next plugin's request `head` holds.
    fn change_the_request(&self) -> bool {
        self.method.is_some() || self.path.is_some() || self.query.is_some() || !self.ops.is_empty()
    }

    fn apply(
        self,
        parts: &mut request::Parts,
        target: &mut Target<'_>,
        context: &mut Vec<u8>,
        response_ops: &mut Vec<Op>,
    ) {
        if let Some(method) = self.method {
            parts.method = method;
        }
        if let Some(path) = self.path {
            target.path = Cow::Owned(path);
        }
        if let Some(query) = self.query {
            target.query = (!query.is_empty()).then_some(Cow::Owned(query));
        }
        apply_ops(&mut parts.headers, self.ops);
        response_ops.extend(self.response_ops);
        apply_context(context, &self.context);
    }
}

fn invalid(why: String) -> PluginFailure {
    PluginFailure::Invalid(why)
}

fn header_name(name: &[u8]) -> Result<HeaderName, PluginFailure> {
    header_names::parse(name).map_err(|_| invalid(format!("`{}` is not a header name", String::from_utf8_lossy(name))))
}

/// A header a plugin sets, checked. `Content-Length` and `Transfer-Encoding` frame the message and
/// the gateway sets them from the body it sends: a plugin's value could make a backend read a
/// second request out of this one's body, on a connection other clients' requests share. Plugins
/// may remove them, never set them.
fn header(name: &[u8], value: &[u8]) -> Result<(HeaderName, HeaderValue), PluginFailure> {
    let name = header_name(name)?;
    if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
        return Err(invalid(format!("header `{name}` frames the message: only the gateway sets it")));
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| invalid(format!("header `{name}` has an invalid value")))?;
    Ok((name, value))
}

/// The most header changes one hook may ask for, and the most headers of a response a plugin
/// makes: far more than any plugin needs, and few enough that a runaway plugin cannot grow a
/// header map toward what it can hold (32 768 fields).
const MAX_HEADER_CHANGES: usize = 1000;

/// Checks every change of a `header-changes` list.
pub(super) fn validate_ops(changes: &[u8]) -> Result<Vec<Op>, PluginFailure> {
    let mut ops = Vec::new();
    for change in fields::header_changes(changes) {
        if ops.len() == MAX_HEADER_CHANGES {
            return Err(invalid(format!("more than {MAX_HEADER_CHANGES} header changes")));
        }
        ops.push(match change.map_err(invalid)? {
            (Change::Set, name, value) => header(name, value).map(|(n, v)| Op::Set(n, v))?,
            (Change::Append, name, value) => header(name, value).map(|(n, v)| Op::Append(n, v))?,
            (Change::Remove, name, _) => header_name(name).map(Op::Remove)?,
        });
    }
    Ok(ops)
}

/// Checks the context entries of a `fields` list: well formed, and UTF-8, as the WIT's string
/// map promises every plugin that reads them.
fn validate_context(entries: &[u8]) -> Result<(), PluginFailure> {
    // Keys and values are short and nearly always ASCII, which is checked a word at a time; the
    // full UTF-8 check of a short string costs several times as much.
    let text = |bytes: &[u8]| bytes.is_ascii() || std::str::from_utf8(bytes).is_ok();
    for entry in fields::entries(entries) {
        let (key, value) = entry.map_err(invalid)?;
        if !text(key) || !text(value) {
            return Err(invalid("a context entry is not UTF-8".into()));
        }
    }
    Ok(())
}

/// Applies checked header changes. A map that is full (32 768 fields, which only many plugins
/// each near [`MAX_HEADER_CHANGES`] could reach) keeps what it has, where `insert` would panic.
fn apply_ops(headers: &mut HeaderMap, ops: Vec<Op>) {
    for op in ops {
        let applied = match op {
            Op::Set(name, value) => headers.try_insert(name, value).map(drop),
            Op::Append(name, value) => headers.try_append(name, value).map(drop),
            Op::Remove(name) => {
                headers.remove(name);
                Ok(())
            }
        };
        if applied.is_err() {
            tracing::warn!("a header map is full: the rest of a plugin's header changes are dropped");
            return;
        }
    }
}

/// Sets the (validated) context entries `changes`; an empty value removes the key.
fn apply_context(context: &mut Vec<u8>, changes: &[u8]) {
    for (key, value) in fields::entries(changes).flatten() {
        fields::remove(context, key);
        if !value.is_empty() {
            fields::push(context, key, value);
        }
    }
}

/// A status a plugin answers with or sets: a final one. An informational status (1xx) is not an
/// answer: HTTP/1 would send it and keep the client waiting for the real one (hyper refuses it
/// with an empty 500; a 101 would switch a connection nobody asked to upgrade).
fn status_code(status: u16) -> Result<StatusCode, PluginFailure> {
    match StatusCode::from_u16(status) {
        Ok(code) if code.is_informational() => {
            Err(invalid(format!("{status} is informational: a plugin's status must be final (200 to 999)")))
        }
        Ok(code) => Ok(code),
        Err(_) => Err(invalid(format!("{status} is not a status code"))),
    }
}

/// A response a plugin made, as the gateway sends it.
fn plugin_response(response: types::Response) -> Result<Response<ResponseBody>, PluginFailure> {
    if response.headers.len() > MAX_HEADER_CHANGES {
        return Err(invalid(format!("a response with more than {MAX_HEADER_CHANGES} headers")));
    }
    let mut built = Response::new(ResponseBody::full(Bytes::from(response.body)));
    *built.status_mut() = status_code(response.status)?;
    for (name, value) in &response.headers {
        let (name, value) = header(name.as_bytes(), value.as_bytes())?;
        built.headers_mut().append(name, value);
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_entries_must_be_whole_and_utf8() {
        let block = |pairs: &[(&[u8], &[u8])]| {
            let mut block = Vec::new();
            for (key, value) in pairs {
                fields::push(&mut block, key, value);
            }
            block
        };
        assert!(validate_context(&block(&[(b"consumer", b"ann"), ("zoë".as_bytes(), "ünï".as_bytes())])).is_ok());
        for bad in [block(&[(b"k", b"\xff")]), block(&[(b"\xc3", b"v")])] {
            let refused = validate_context(&bad).unwrap_err().to_string();
            assert_eq!(refused, "returned an invalid result: a context entry is not UTF-8");
        }
        let whole = block(&[(b"k", b"v")]);
        assert!(validate_context(&whole[..whole.len() - 1]).is_err(), "a cut-off entry");
    }
}
