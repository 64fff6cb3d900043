//! Request-path normalisation, done once before routing so that the path a route is chosen by is
//! the path the backend receives.
//!
//! Routing on the raw path would let `/public/../admin` take the `/public` route (and skip the
//! plugins guarding `/admin`) while the backend, resolving the dot segments itself, serves
//! `/admin`. Percent-encoded dots count as dots because many backends decode before resolving.
//! Everything else stays byte for byte as the client sent it: decoding `%2F` would move segment
//! boundaries, and what `//` means is the backend's business, not ours.
//!
//! Almost every path has no dot segment, so [`normalize`] then only scans and borrows.

use std::borrow::Cow;

/// Resolves the dot segments of `path` (RFC 3986 §5.2.4 `remove_dot_segments`), with `%2e` and
/// `%2E` counting as `.`; `..` above the root stays at the root. `path` is the path component
/// alone ([`http::Uri::path`]), so the query is never touched. Borrows when there is nothing to
/// resolve. A path that does not start with `/` (`*`, empty) is returned as is: no route matches it.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut ends_with_dots = false;
    for segment in path[1..].split('/') {
        let dots = dots(segment);
        match dots {
            1 => {}
            2 => out.truncate(out.rfind('/').unwrap_or(0)),
            _ => {
                out.push('/');
                out.push_str(segment);
            }
        }
        ends_with_dots = matches!(dots, 1 | 2);
    }
    // A final `.` or `..` names a directory: `/a/b/..` is `/a/`, and `/..` is `/`.
    if ends_with_dots {
        out.push('/');
    }
    Cow::Owned(out)
}

/// `path` without the route prefix `prefix` it was routed by: `/api/users` with `/api` is
/// `/users`, `/api` is `/`, and the prefix `/` leaves `path` as it is. For a normalised
/// `path` the result starts with `/`, so the caller forwards it as is, without adding a slash.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    if prefix == "/" {
        return path;
    }
    match path.strip_prefix(prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        // Not under `prefix`, so not routed by it.
        _ => path,
    }
}

/// Whether `path` can be routed as it is: it starts with `/` and has no dot segment.
pub(crate) fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    // Most paths have no dot or percent sign at all: one pass over the bytes, no segment split.
    !rest.bytes().any(|b| b == b'.' || b == b'%') || !rest.split('/').any(|segment| matches!(dots(segment), 1 | 2))
}

/// How many dots `segment` is made of if it is nothing but dots (`.`, `%2e`, `%2E`), else 0.
fn dots(segment: &str) -> usize {
    let mut rest = segment.as_bytes();
    let mut count = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] | [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return 0,
        };
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dot_segments() {
        for (path, normal) in [
            ("/public/../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/../x", "/x"),
            ("/../../x", "/x"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/...", "/a/..."),
            ("/a/.b/c..", "/a/.b/c.."),
        ] {
            assert_eq!(normalize(path), normal, "{path}");
        }
    }

    #[test]
    fn percent_encoded_dots_are_dots() {
        for (path, normal) in [
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/%2e./admin", "/admin"),
            ("/a/%2e/b", "/a/b"),
            ("/a/%2e%2e%2e", "/a/%2e%2e%2e"),
            ("/a/%2f..", "/a/%2f.."),
        ] {
            assert_eq!(normalize(path), normal, "{path}");
        }
    }

    #[test]
    fn keeps_encoded_slashes_and_empty_segments() {
        assert_eq!(normalize("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(normalize("/a/%2F/../b"), "/a/b");
        assert_eq!(normalize("/a//b"), "/a//b");
        assert_eq!(normalize("/a//../b"), "/a/b");
        assert_eq!(normalize("//x/./y"), "//x/y");
    }

    #[test]
    fn borrows_a_normal_path() {
        for path in ["/", "/api/users", "/a//b/", "/a%2Fb", "*", ""] {
            assert!(matches!(normalize(path), Cow::Borrowed(p) if p == path), "{path}");
        }
        assert!(matches!(normalize("/a/../b"), Cow::Owned(_)));
    }

    #[test]
    fn the_query_is_not_part_of_the_path() {
        let uri: http::Uri = "/public/../admin?next=/../x".parse().unwrap();
        assert_eq!(normalize(uri.path()), "/admin");
        assert_eq!(uri.query(), Some("next=/../x"));
    }

    #[test]
    fn only_paths_from_the_root_are_normal() {
        assert!(is_normal("/") && is_normal("/a/b") && is_normal("/a/.../b"));
        assert!(!is_normal("") && !is_normal("*") && !is_normal("a/b"));
        assert!(!is_normal("/a/..") && !is_normal("/./a") && !is_normal("/a/%2E%2e/b"));
    }

    #[test]
    fn strips_the_prefix() {
        assert_eq!(strip_prefix("/api/users", "/api"), "/users");
        assert_eq!(strip_prefix("/api/", "/api"), "/");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api//x", "/api"), "//x");
        assert_eq!(strip_prefix("/api/v2/x", "/api/v2"), "/x");
        assert_eq!(strip_prefix("/x", "/"), "/x");
        assert_eq!(strip_prefix("//x", "/"), "//x");
        assert_eq!(strip_prefix("/", "/"), "/");
        assert_eq!(strip_prefix("/apix", "/api"), "/apix");
    }
}
