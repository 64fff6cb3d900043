//! What a hook decides: [`Action`] for on-request, [`ResponseAction`] for on-response,
//! [`Selection`] for select-backend, and the [`Reply`] a plugin answers with.
//!
//! The enums are `#[non_exhaustive]`: later contract versions may add decisions. Each has a
//! hidden `NotImplemented` variant that only the [`Plugin`](crate::Plugin) trait's default hooks
//! return; the glue turns it into the WIT `not-implemented` case, and the gateway then stops
//! calling that hook for the plugin.

/// A complete response made by a plugin: what [`Action::Respond`] answers with and what
/// [`ResponseAction::Replace`] puts in place of the backend's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code: a final one, 200 to 999 (the gateway refuses 1xx as an invalid result).
    pub status: u16,
    /// The headers, in order; names are sent as given and compared without regard to case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Reply { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of the header `name` (ASCII case-insensitive); handy in tests.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, if it is UTF-8; handy in tests.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// What on-request decided.
///
/// ```
/// use sluice_sdk::Action;
///
/// let deny = Action::respond(403)
///     .header("content-type", "text/plain")
///     .body("forbidden");
/// assert_eq!(deny.reply().unwrap().status, 403);
/// assert!(Action::Continue.reply().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Go on: the next plugin, then the backend. Changes made to the request apply.
    Continue,
    /// Answer now with this reply; the backend is never called. Changes made to the request
    /// (context included) still apply, and every plugin whose on-request ran, this one included,
    /// still sees the reply in on-response.
    Respond(Reply),
    /// What the default `on_request` returns; see [`Action::not_implemented`].
    #[doc(hidden)]
    NotImplemented,
}

impl Action {
    /// Answers with this status; add headers and a body with [`Action::header`] and
    /// [`Action::body`].
    pub fn respond(status: u16) -> Self {
        Action::Respond(Reply::new(status))
    }

    /// Adds a header to the reply. Does nothing unless this is [`Action::Respond`].
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        match self {
            Action::Respond(reply) => Action::Respond(reply.header(name, value)),
            other => other,
        }
    }

    /// Sets the reply's body. Does nothing unless this is [`Action::Respond`].
    pub fn body(self, body: impl Into<Vec<u8>>) -> Self {
        match self {
            Action::Respond(reply) => Action::Respond(reply.body(body)),
            other => other,
        }
    }

    /// The reply, when this is [`Action::Respond`].
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Action::Respond(reply) => Some(reply),
            _ => None,
        }
    }

    /// Whether this is [`Action::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Action::Continue)
    }

    /// What the default [`Plugin::on_request`](crate::Plugin::on_request) returns: "this plugin
    /// does not implement on-request". The gateway treats the call as [`Action::Continue`],
    /// ignores any changes the hook made, and never calls the hook for this plugin again.
    ///
    /// Return it yourself only when the plugin's config decides which hooks it uses. Every
    /// instance of a `[[plugin]]` gets the same config, so the answer must depend on the config
    /// alone, never on the request.
    pub fn not_implemented() -> Self {
        Action::NotImplemented
    }
}

/// What on-response decided.
///
/// ```
/// use sluice_sdk::ResponseAction;
///
/// let replaced = ResponseAction::replace(503).body("try again later");
/// assert_eq!(replaced.reply().unwrap().body_str(), Some("try again later"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseAction {
    /// Keep the response, with the changes made to it.
    Continue,
    /// Replace the response, body included. Changes made to the context still apply.
    Replace(Reply),
    /// What the default `on_response` returns; see [`ResponseAction::not_implemented`].
    #[doc(hidden)]
    NotImplemented,
}

impl ResponseAction {
    /// Replaces the response with one of this status; add headers and a body with
    /// [`ResponseAction::header`] and [`ResponseAction::body`].
    pub fn replace(status: u16) -> Self {
        ResponseAction::Replace(Reply::new(status))
    }

    /// Adds a header to the replacement. Does nothing unless this is [`ResponseAction::Replace`].
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        match self {
            ResponseAction::Replace(reply) => ResponseAction::Replace(reply.header(name, value)),
            other => other,
        }
    }

    /// Sets the replacement's body. Does nothing unless this is [`ResponseAction::Replace`].
    pub fn body(self, body: impl Into<Vec<u8>>) -> Self {
        match self {
            ResponseAction::Replace(reply) => ResponseAction::Replace(reply.body(body)),
            other => other,
        }
    }

    /// The replacement, when this is [`ResponseAction::Replace`].
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ResponseAction::Replace(reply) => Some(reply),
            _ => None,
        }
    }

    /// Whether this is [`ResponseAction::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, ResponseAction::Continue)
    }

    /// What the default [`Plugin::on_response`](crate::Plugin::on_response) returns; the same
    /// rules as [`Action::not_implemented`].
    pub fn not_implemented() -> Self {
        ResponseAction::NotImplemented
    }
}

/// What select-backend decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selection {
    /// The index of the chosen backend in the slice given to the hook. An index out of range
    /// counts as a plugin failure.
    Backend(usize),
    /// Leave the choice to the upstream's own balancing policy.
    Default,
    /// What the default `select_backend` returns; see [`Selection::not_implemented`].
    #[doc(hidden)]
    NotImplemented,
}

impl Selection {
    /// What the default [`Plugin::select_backend`](crate::Plugin::select_backend) returns; the
    /// same rules as [`Action::not_implemented`]. The gateway uses the upstream's own policy.
    pub fn not_implemented() -> Self {
        Selection::NotImplemented
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_reply() {
        let action = Action::respond(401).header("www-authenticate", "Bearer").header("x-a", "1").body("no");
        let reply = action.reply().expect("a reply");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.get_header("WWW-Authenticate"), Some("Bearer"));
        assert_eq!(reply.headers.len(), 2);
        assert_eq!(reply.body_str(), Some("no"));
        assert!(!action.is_continue());
    }

    #[test]
    fn builders_leave_continue_alone() {
        assert_eq!(Action::Continue.header("a", "b").body("x"), Action::Continue);
        assert_eq!(ResponseAction::Continue.header("a", "b").body(vec![1]), ResponseAction::Continue);
        assert!(ResponseAction::Continue.is_continue());
    }

    #[test]
    fn replace_builds_a_replacement() {
        let action = ResponseAction::replace(502).header("x", "y").body(vec![0xff]);
        let reply = action.reply().expect("a replacement");
        assert_eq!((reply.status, reply.body.as_slice()), (502, &[0xff][..]));
        assert_eq!(reply.body_str(), None);
    }
}
