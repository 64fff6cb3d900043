//! Which route a request takes.
//!
//! The most specific route wins, host before path: a route written for `api.example.com` belongs
//! to that host, and a catch-all must not take its traffic just because its prefix is longer.
//! How specific a route is depends on the route alone, so [`Router::new`] sorts the routes once
//! and a lookup is a scan that stops at the first match: nothing is scored or allocated per
//! request, and the tens of routes a gateway has need no cleverer index. For the same reason,
//! hosts are compared ignoring ASCII case in place, never lower-cased into a new string.

use std::cmp::Reverse;

use http::Method;

use crate::config::{HostMatch, RouteConfig};
use crate::path;

/// The routes of one config snapshot, ordered so that the first that matches is the best.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

/// What matching needs of one route.
#[derive(Debug)]
struct Route {
    /// The route's position in the slice given to [`Router::new`].
    index: usize,
    listener: Option<String>,
    host: Option<HostMatch>,
    methods: Option<Vec<Method>>,
    prefix: String,
}

impl Router {
    /// Builds the router of a config snapshot from its routes, in file order.
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut routes: Vec<Route> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| Route {
                index,
                listener: r.listener.clone(),
                host: r.host.clone(),
                methods: r.methods.clone(),
                prefix: r.path_prefix.clone(),
            })
            .collect();
        // A stable sort: equally specific routes stay in file order, so the earlier one wins.
        routes.sort_by_key(|r| Reverse(r.specificity()));
        Router { routes }
    }

    /// The index (into the routes given to [`Router::new`]) of the route for this request, or
    /// `None`. `listener` is the name of the listener the request arrived on; `host` is the raw
    /// Host header or `:authority` value, port, case, trailing dot and all. `path` must already
    /// be [normalised](path::normalize): a path that is not, or that does not start with `/`,
    /// matches no route, so forgetting to normalise fails closed.
    pub fn route(&self, listener: &str, host: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        if !path::is_normal(path) {
            return None;
        }
        let host = host.map(host_without_port);
        self.routes.iter().find(|r| r.matches(listener, host, method, path)).map(|r| r.index)
    }
}

impl Route {
    /// Greater is more specific: the host class (exact, wildcard, none), then the length of a
    /// wildcard's suffix, then the length of the prefix.
    fn specificity(&self) -> (u8, usize, usize) {
        let (class, suffix) = match &self.host {
            Some(HostMatch::Exact(_)) => (2, 0),
            Some(HostMatch::Wildcard(suffix)) => (1, suffix.len()),
            None => (0, 0),
        };
        (class, suffix, self.prefix.len())
    }

    /// Whether the request matches on every criterion; `host` is already without its port.
    fn matches(&self, listener: &str, host: Option<&str>, method: &Method, path: &str) -> bool {
        self.listener.as_deref().is_none_or(|l| l == listener)
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
            && match (&self.host, host) {
                (None, _) => true,
                (Some(pattern), Some(host)) => host_matches(pattern, host),
                (Some(_), None) => false,
            }
            && under_prefix(path, &self.prefix)
    }
}

/// The host of a Host header (or `:authority`) value: without the port, with the brackets of an
/// IPv6 literal kept, without a trailing dot. The case is left as it is: compare it with
/// `eq_ignore_ascii_case`.
pub fn host_without_port(host: &str) -> &str {
    let literal_end = if host.starts_with('[') { host.find(']') } else { None };
    let host = match literal_end {
        Some(end) => &host[..=end],
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Whether `host` (without port, any case) matches the lower-cased `pattern`. A wildcard's
/// suffix starts with a dot, so a longer host has at least one label before it; the apex does not.
fn host_matches(pattern: &HostMatch, host: &str) -> bool {
    match pattern {
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Wildcard(suffix) => {
            let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
            host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// Whether `path` is `prefix` or below it: `/api` covers `/api` and `/api/x`, not `/apix`.
fn under_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/" || path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A route on every listener and method; `host` is written as in the config file.
    fn route(host: Option<&str>, path_prefix: &str) -> RouteConfig {
        RouteConfig {
            name: format!("{host:?} {path_prefix}"),
            listener: None,
            host: host.map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                None => HostMatch::Exact(h.to_string()),
            }),
            methods: None,
            path_prefix: path_prefix.to_string(),
            upstream: 0,
            plugins: Vec::new(),
            strip_prefix: false,
            timeout: Duration::ZERO,
            connect_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            retries: 0,
            max_body_bytes: None,
        }
    }

    /// The route a GET on listener `main` takes.
    fn get(router: &Router, host: Option<&str>, path: &str) -> Option<usize> {
        router.route("main", host, &Method::GET, path)
    }

    #[test]
    fn host_without_port_and_trailing_dot() {
        assert_eq!(host_without_port("api.example.com"), "api.example.com");
        assert_eq!(host_without_port("API.Example.com:8080"), "API.Example.com");
        assert_eq!(host_without_port("api.example.com.:443"), "api.example.com");
        assert_eq!(host_without_port("api.example.com."), "api.example.com");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(host_without_port(""), "");
    }

    #[test]
    fn host_ignores_port_case_and_trailing_dot() {
        let router = Router::new(&[route(Some("api.example.com"), "/")]);
        for host in ["api.example.com", "API.Example.COM:8080", "api.example.com.", "Api.example.com.:1"] {
            assert_eq!(get(&router, Some(host), "/"), Some(0), "{host}");
        }
        for host in ["example.com", "api.example.com.evil", "xapi.example.com", "api.example.co"] {
            assert_eq!(get(&router, Some(host), "/"), None, "{host}");
        }
        assert_eq!(get(&router, None, "/"), None);
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_apex() {
        let router = Router::new(&[route(Some("*.example.com"), "/")]);
        for host in ["a.example.com", "a.b.example.com", "A.Example.Com:80", "a.example.com."] {
            assert_eq!(get(&router, Some(host), "/"), Some(0), "{host}");
        }
        for host in ["example.com", ".example.com", "badexample.com", "example.com.evil"] {
            assert_eq!(get(&router, Some(host), "/"), None, "{host}");
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_none_whatever_the_prefix() {
        let router = Router::new(&[
            route(None, "/api/v2/users"),
            route(Some("*.example.com"), "/api/v2"),
            route(Some("api.example.com"), "/api"),
        ]);
        assert_eq!(get(&router, Some("api.example.com"), "/api/v2/users"), Some(2));
        assert_eq!(get(&router, Some("www.example.com"), "/api/v2/users"), Some(1));
        assert_eq!(get(&router, Some("example.com"), "/api/v2/users"), Some(0));
        assert_eq!(get(&router, None, "/api/v2/users"), Some(0));
        // A more specific host whose prefix does not match leaves the request to the others.
        assert_eq!(get(&router, Some("api.example.com"), "/other"), None);
        assert_eq!(get(&router, Some("api.example.com"), "/api/v2/users/7"), Some(2));
    }

    #[test]
    fn longer_wildcard_suffix_wins() {
        let router = Router::new(&[route(Some("*.example.com"), "/api"), route(Some("*.eu.example.com"), "/")]);
        assert_eq!(get(&router, Some("a.eu.example.com"), "/api"), Some(1));
        assert_eq!(get(&router, Some("a.us.example.com"), "/api"), Some(0));
        assert_eq!(get(&router, Some("eu.example.com"), "/api"), Some(0));
    }

    #[test]
    fn longest_prefix_wins() {
        let router = Router::new(&[route(None, "/"), route(None, "/api/v2"), route(None, "/api")]);
        assert_eq!(get(&router, None, "/api/v2/users"), Some(1));
        assert_eq!(get(&router, None, "/api/v2"), Some(1));
        assert_eq!(get(&router, None, "/api/v3"), Some(2));
        assert_eq!(get(&router, None, "/api"), Some(2));
        assert_eq!(get(&router, None, "/"), Some(0));
        assert_eq!(get(&router, None, "/other"), Some(0));
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let router = Router::new(&[route(None, "/api")]);
        for path in ["/api", "/api/", "/api/x", "/api//x"] {
            assert_eq!(get(&router, None, path), Some(0), "{path}");
        }
        for path in ["/apix", "/ap", "/", "/API", "//api"] {
            assert_eq!(get(&router, None, path), None, "{path}");
        }
    }

    #[test]
    fn methods_restrict_a_route() {
        let post = RouteConfig { methods: Some(vec![Method::POST, Method::PUT]), ..route(None, "/submit") };
        let router = Router::new(&[post, route(None, "/")]);
        assert_eq!(router.route("main", None, &Method::POST, "/submit"), Some(0));
        assert_eq!(router.route("main", None, &Method::PUT, "/submit"), Some(0));
        assert_eq!(router.route("main", None, &Method::GET, "/submit"), Some(1));
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(router.route("main", None, &custom, "/submit"), Some(1));
    }

    #[test]
    fn listener_restricts_a_route() {
        let internal = RouteConfig { listener: Some("internal".into()), ..route(None, "/admin") };
        let router = Router::new(&[internal, route(None, "/")]);
        assert_eq!(router.route("internal", None, &Method::GET, "/admin"), Some(0));
        assert_eq!(router.route("public", None, &Method::GET, "/admin"), Some(1));
        assert_eq!(router.route("Internal", None, &Method::GET, "/admin"), Some(1));
    }

    #[test]
    fn ties_go_to_the_earlier_route() {
        let router = Router::new(&[
            route(None, "/"),
            route(Some("*.example.com"), "/api"),
            route(Some("*.example.com"), "/api"),
            route(None, "/"),
        ]);
        assert_eq!(get(&router, Some("a.example.com"), "/api"), Some(1));
        assert_eq!(get(&router, Some("other.test"), "/api"), Some(0));
    }

    #[test]
    fn routes_the_normalised_path_only() {
        let router = Router::new(&[route(None, "/public"), route(None, "/admin")]);
        for raw in ["/public/../admin", "/public/%2e%2e/admin", "/public/./../admin/."] {
            assert_eq!(get(&router, None, raw), None, "{raw} is not normalised");
            assert_eq!(get(&router, None, &path::normalize(raw)), Some(1), "{raw}");
        }
        assert_eq!(get(&router, None, &path::normalize("/../../public/x")), Some(0));
        assert_eq!(get(&router, None, &path::normalize("/public/a%2F..%2F..%2Fadmin")), Some(0));
    }

    #[test]
    fn paths_not_from_the_root_match_nothing() {
        let router = Router::new(&[route(None, "/")]);
        assert_eq!(get(&router, None, "/"), Some(0));
        for path in ["*", "", "api"] {
            assert_eq!(get(&router, None, path), None, "{path:?}");
        }
    }

    #[test]
    fn no_routes_no_match() {
        assert_eq!(get(&Router::new(&[]), Some("a.test"), "/"), None);
    }
}
