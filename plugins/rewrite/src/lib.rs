//! `rewrite`: changes where a request goes and what its headers say, or answers it with a
//! redirect.
//!
//! on_request, in this order:
//!
//! 1. `redirects`: the first entry whose `prefix` matches the path answers at once with its
//!    `status` and `Location: <to><rest of the path>?<query>`; nothing below applies and the
//!    backend is never called.
//! 2. `rules`: the first rule that matches the path rewrites it. A `prefix` rule swaps the prefix
//!    for `replace`; a `regex` rule replaces the part of the path the regex matches with `replace`,
//!    where `$1` or `${name}` insert a capture group. The query is kept.
//! 3. `request_headers`: `remove`, then `set` (replace every value), then `add` (append a value).
//!
//! `response_headers` are applied the same way to every response of the route, the redirects
//! included: on_request hands them to the gateway with the request's changes, so the plugin has
//! no on_response hook.
//!
//! Prefixes match whole segments, as route prefixes do: `/old` matches `/old` and `/old/x`, not
//! `/oldx`; a trailing `/` is ignored, and `/` matches every path. Regexes use the `regex` crate's
//! syntax and are compiled once, in init. A hook with nothing to do answers "not implemented", so
//! the gateway stops calling it. See the README for every config key.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use sluice_sdk::HeaderOp;
use sluice_sdk::check::{is_header_name, is_header_value};
use sluice_sdk::prelude::*;

/// The statuses a redirect may answer with.
pub const REDIRECT_STATUSES: [u16; 4] = [301, 302, 307, 308];

/// The plugin, made from its config.
#[derive(Debug)]
pub struct Rewrite {
    redirects: Vec<Redirect>,
    rules: Vec<Rule>,
    request_headers: Vec<HeaderOp>,
    response_headers: Vec<HeaderOp>,
}

#[derive(Debug)]
struct Redirect {
    /// Without its trailing `/`.
    prefix: String,
    to: String,
    status: u16,
}

#[derive(Debug)]
enum Rule {
    /// The prefix and its replacement, both without a trailing `/`.
    Prefix {
        prefix: String,
        replace: String,
    },
    Regex {
        regex: Regex,
        replace: String,
    },
}

/// `[plugin.config]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    redirects: Vec<RedirectSettings>,
    #[serde(default)]
    rules: Vec<RuleSettings>,
    #[serde(default)]
    request_headers: HeaderSettings,
    #[serde(default)]
    response_headers: HeaderSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectSettings {
    prefix: String,
    to: String,
    #[serde(default = "default_status")]
    status: u16,
}

fn default_status() -> u16 {
    302
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    prefix: Option<String>,
    regex: Option<String>,
    replace: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderSettings {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Plugin for Rewrite {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        let redirects =
            settings.redirects.into_iter().enumerate().map(|(i, r)| redirect(i, r)).collect::<Result<_, _>>()?;
        let rules = settings.rules.into_iter().enumerate().map(|(i, r)| rule(i, r)).collect::<Result<_, _>>()?;
        Ok(Rewrite {
            redirects,
            rules,
            request_headers: header_ops("request_headers", settings.request_headers)?,
            response_headers: header_ops("response_headers", settings.response_headers)?,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        if self.redirects.is_empty()
            && self.rules.is_empty()
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
        {
            return Action::not_implemented();
        }
        for op in &self.response_headers {
            match op {
                HeaderOp::Set(name, value) => req.set_response_header(name, value),
                HeaderOp::Append(name, value) => req.append_response_header(name, value),
                HeaderOp::Remove(name) => req.remove_response_header(name),
            }
        }
        if let Some((status, location)) = self.redirect(req.path(), req.query()) {
            return Action::respond(status).header("location", location);
        }
        if let Some(path) = self.rewrite(req.path()) {
            req.set_path(path);
        }
        for op in &self.request_headers {
            match op {
                HeaderOp::Set(name, value) => req.set_header(name, value),
                HeaderOp::Append(name, value) => req.append_header(name, value),
                HeaderOp::Remove(name) => req.remove_header(name),
            }
        }
        Action::Continue
    }
}

impl Rewrite {
    /// The status and `Location` of the first redirect that matches `path`.
    fn redirect(&self, path: &str, query: &str) -> Option<(u16, String)> {
        self.redirects.iter().find_map(|redirect| {
            let rest = after_prefix(path, &redirect.prefix)?;
            let mut location = match rest {
                "" => redirect.to.clone(),
                _ => format!("{}{rest}", redirect.to.trim_end_matches('/')),
            };
            if !query.is_empty() {
                location.push('?');
                location.push_str(query);
            }
            Some((redirect.status, location))
        })
    }

    /// The path as the first matching rule rewrites it.
    fn rewrite(&self, path: &str) -> Option<String> {
        let rewritten = self.rules.iter().find_map(|rule| match rule {
            Rule::Prefix { prefix, replace } => {
                after_prefix(path, prefix).map(|rest| [replace.as_str(), rest].concat())
            }
            Rule::Regex { regex, replace } => {
                let captures = regex.captures(path)?;
                let matched = captures.get(0)?;
                let mut out = path[..matched.start()].to_string();
                captures.expand(replace, &mut out);
                out.push_str(&path[matched.end()..]);
                Some(out)
            }
        })?;
        Some(if rewritten.starts_with('/') { rewritten } else { format!("/{rewritten}") })
    }
}

/// What follows `prefix` in `path`, when `prefix` (without a trailing `/`) matches whole segments.
fn after_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn redirect(i: usize, settings: RedirectSettings) -> Result<Redirect, String> {
    let RedirectSettings { prefix, to, status } = settings;
    check_prefix(&format!("redirects[{i}]"), &prefix)?;
    if to.is_empty() || !is_header_value(&to) {
        return Err(format!(
            "rewrite: redirects[{i}]: `to` = {to:?} must be a non-empty URL without control characters"
        ));
    }
    if !REDIRECT_STATUSES.contains(&status) {
        return Err(format!(
            "rewrite: redirects[{i}]: `status` = {status} is not a redirect status; use 301, 302, 307 or 308"
        ));
    }
    Ok(Redirect { prefix: prefix.trim_end_matches('/').to_string(), to, status })
}

fn rule(i: usize, settings: RuleSettings) -> Result<Rule, String> {
    let RuleSettings { prefix, regex, replace } = settings;
    if let Some(bad) = replace.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#')) {
        return Err(format!("rewrite: rules[{i}]: `replace` = {replace:?} may not contain {bad:?}"));
    }
    match (prefix, regex) {
        (Some(prefix), None) => {
            check_prefix(&format!("rules[{i}]"), &prefix)?;
            if !replace.starts_with('/') {
                return Err(format!("rewrite: rules[{i}]: `replace` = {replace:?} must start with `/`"));
            }
            let trim = |s: &str| s.trim_end_matches('/').to_string();
            Ok(Rule::Prefix { prefix: trim(&prefix), replace: trim(&replace) })
        }
        (None, Some(pattern)) => match Regex::new(&pattern) {
            Ok(regex) => Ok(Rule::Regex { regex, replace }),
            Err(e) => Err(format!("rewrite: rules[{i}]: `regex` = {pattern:?} is not a valid regex: {e}")),
        },
        _ => Err(format!("rewrite: rules[{i}]: give either `prefix` or `regex`, not both or neither")),
    }
}

fn check_prefix(at: &str, prefix: &str) -> Result<(), String> {
    if prefix.starts_with('/') {
        Ok(())
    } else {
        Err(format!("rewrite: {at}: `prefix` = {prefix:?} must start with `/`"))
    }
}

/// The header changes of `request_headers` or `response_headers`, in the order they apply:
/// remove, set, add.
fn header_ops(at: &str, settings: HeaderSettings) -> Result<Vec<HeaderOp>, String> {
    let check = |key: &str, name: &str, value: &str| {
        if !is_header_name(name) {
            return Err(format!("rewrite: {at}.{key}: {name:?} is not a valid header name"));
        }
        if !is_header_value(value) {
            return Err(format!("rewrite: {at}.{key}: the value of `{name}` may not contain control characters"));
        }
        Ok(())
    };
    let mut ops = Vec::new();
    for name in settings.remove {
        check("remove", &name, "")?;
        ops.push(HeaderOp::Remove(name.to_ascii_lowercase()));
    }
    for (name, value) in settings.set {
        check("set", &name, &value)?;
        ops.push(HeaderOp::Set(name.to_ascii_lowercase(), value));
    }
    for (name, value) in settings.add {
        check("add", &name, &value)?;
        ops.push(HeaderOp::Append(name.to_ascii_lowercase(), value));
    }
    Ok(ops)
}

export_plugin!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Reply, testing};

    fn plugin(config: &str) -> Rewrite {
        testing::init(config).expect("a valid config")
    }

    /// The path `path` is rewritten to (itself when no rule changes it).
    fn rewritten(p: &mut Rewrite, path: &str) -> String {
        let mut req = testing::request("GET", path).query("q=1").build();
        assert!(p.on_request(&mut req).is_continue());
        assert_eq!(req.query(), "q=1", "the query is kept");
        req.path().to_string()
    }

    #[test]
    fn prefix_rules_match_whole_segments() {
        let mut p = plugin(r#"{"rules": [{"prefix": "/old", "replace": "/new"}]}"#);
        for (path, expected) in
            [("/old", "/new"), ("/old/", "/new/"), ("/old/a/b", "/new/a/b"), ("/oldx", "/oldx"), ("/x/old", "/x/old")]
        {
            assert_eq!(rewritten(&mut p, path), expected, "{path}");
        }
        let mut req = testing::request("GET", "/oldx").build();
        p.on_request(&mut req);
        assert_eq!(req.changes().path, None, "no match, no change");
    }

    #[test]
    fn trailing_slashes_and_the_root_prefix() {
        let mut strip = plugin(r#"{"rules": [{"prefix": "/api/", "replace": "/"}]}"#);
        for (path, expected) in [("/api", "/"), ("/api/users", "/users"), ("/apix", "/apix")] {
            assert_eq!(rewritten(&mut strip, path), expected, "{path}");
        }
        let mut under = plugin(r#"{"rules": [{"prefix": "/", "replace": "/v1/"}]}"#);
        for (path, expected) in [("/", "/v1/"), ("/users", "/v1/users")] {
            assert_eq!(rewritten(&mut under, path), expected, "{path}");
        }
    }

    #[test]
    fn regex_rules_replace_what_they_match_with_captures() {
        let mut p = plugin(
            r#"{"rules": [
                {"regex": "^/users/(\\d+)$", "replace": "/v2/users/$1"},
                {"regex": "/(?P<kind>cats|dogs)/", "replace": "/pets/${kind}-"},
                {"regex": "^/strip(.*)", "replace": "$1"}
            ]}"#,
        );
        for (path, expected) in [
            ("/users/42", "/v2/users/42"),
            ("/users/42/x", "/users/42/x"),
            ("/zoo/cats/tom", "/zoo/pets/cats-tom"),
            ("/strip", "/"),
            ("/strip/me", "/me"),
            ("/other", "/other"),
        ] {
            assert_eq!(rewritten(&mut p, path), expected, "{path}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let mut p = plugin(
            r#"{"rules": [{"prefix": "/a", "replace": "/first"}, {"regex": "^/a", "replace": "/second"}, {"prefix": "/b", "replace": "/third"}]}"#,
        );
        assert_eq!(rewritten(&mut p, "/a/x"), "/first/x");
        assert_eq!(rewritten(&mut p, "/b"), "/third");
    }

    #[test]
    fn header_edits_remove_then_set_then_add_in_both_directions() {
        let edits = r#"{"remove": ["X-Drop"], "set": {"X-Set": "new"}, "add": {"x-add": "two"}}"#;
        let mut p = plugin(&format!(r#"{{"request_headers": {edits}, "response_headers": {edits}}}"#));
        let mut req = testing::request("GET", "/")
            .header("x-drop", "a")
            .header("x-drop", "b")
            .header("x-set", "old")
            .header("x-add", "one")
            .build();
        assert!(p.on_request(&mut req).is_continue());
        let expected = [
            HeaderOp::Remove("x-drop".into()),
            HeaderOp::Set("x-set".into(), "new".into()),
            HeaderOp::Append("x-add".into(), "two".into()),
        ];
        assert_eq!(req.changes().headers, expected);
        assert_eq!(req.changes().response_headers, expected);
        assert_eq!(req.changes().path, None);
        assert_eq!(req.headers("x-add").collect::<Vec<_>>(), ["one", "two"]);
    }

    #[test]
    fn redirects_answer_with_the_rest_of_the_path_and_the_query() {
        let mut p = plugin(
            r#"{"redirects": [
                {"prefix": "/docs", "to": "https://docs.example.com", "status": 308},
                {"prefix": "/old/", "to": "/new/"}
            ], "rules": [{"prefix": "/", "replace": "/never"}], "request_headers": {"set": {"x-never": "1"}}}"#,
        );
        for (path, query, status, location) in [
            ("/docs", "", 308, "https://docs.example.com"),
            ("/docs/guide/intro", "", 308, "https://docs.example.com/guide/intro"),
            ("/docs/a", "v=2&x", 308, "https://docs.example.com/a?v=2&x"),
            ("/old", "", 302, "/new/"),
            ("/old/page", "", 302, "/new/page"),
        ] {
            let mut req = testing::request("GET", path).query(query).build();
            let action = p.on_request(&mut req);
            assert_eq!(action.reply(), Some(&Reply::new(status).header("location", location)), "{path}");
            assert_eq!(req.changes(), Default::default(), "a redirect changes nothing else");
        }
        assert_eq!(rewritten(&mut p, "/docsx"), "/never/docsx", "no redirect matches: the rules apply");
        let mut p = plugin(
            r#"{"redirects": [{"prefix": "/old", "to": "/new"}], "response_headers": {"set": {"x-by": "sluice"}}}"#,
        );
        let mut req = testing::request("GET", "/old").build();
        assert_eq!(p.on_request(&mut req).reply(), Some(&Reply::new(302).header("location", "/new")));
        assert_eq!(
            req.changes().response_headers,
            [HeaderOp::Set("x-by".into(), "sluice".into())],
            "response headers apply to redirects too"
        );
    }

    #[test]
    fn hooks_with_nothing_to_do_are_not_implemented() {
        let mut p = plugin("{}");
        let mut req = testing::request("GET", "/").build();
        assert_eq!(p.on_request(&mut req), Action::not_implemented());
        let mut resp = testing::response(200).build();
        assert_eq!(p.on_response(&mut resp), ResponseAction::not_implemented(), "never needed");

        let mut p = plugin(r#"{"response_headers": {"remove": ["server"]}}"#);
        assert!(p.on_request(&mut req).is_continue());
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        for (config, expected) in [
            (
                r#"{"rules": [{"regex": "^/users/(\\d+", "replace": "/"}]}"#,
                "rules[0]: `regex` = \"^/users/(\\\\d+\" is not a valid regex",
            ),
            (r#"{"rules": [{"replace": "/"}]}"#, "rules[0]: give either `prefix` or `regex`"),
            (
                r#"{"rules": [{"prefix": "/a", "replace": "/"}, {"prefix": "/a", "regex": "a", "replace": "/"}]}"#,
                "rules[1]: give either",
            ),
            (r#"{"rules": [{"prefix": "a", "replace": "/"}]}"#, "rules[0]: `prefix` = \"a\" must start with `/`"),
            (r#"{"rules": [{"prefix": "/a", "replace": "b"}]}"#, "rules[0]: `replace` = \"b\" must start with `/`"),
            (
                r#"{"rules": [{"regex": "a", "replace": "/x?y=1"}]}"#,
                "rules[0]: `replace` = \"/x?y=1\" may not contain '?'",
            ),
            (r#"{"rules": [{"prefix": "/a"}]}"#, "missing field `replace`"),
            (
                r#"{"redirects": [{"prefix": "/a", "to": "/b", "status": 200}]}"#,
                "redirects[0]: `status` = 200 is not a redirect status; use 301, 302, 307 or 308",
            ),
            (r#"{"redirects": [{"prefix": "/a", "to": ""}]}"#, "redirects[0]: `to` = \"\" must be a non-empty URL"),
            (r#"{"redirects": [{"prefix": "a", "to": "/b"}]}"#, "redirects[0]: `prefix` = \"a\" must start with `/`"),
            (
                r#"{"request_headers": {"set": {"bad name": "v"}}}"#,
                "request_headers.set: \"bad name\" is not a valid header name",
            ),
            (
                r#"{"response_headers": {"add": {"x": "a\nb"}}}"#,
                "response_headers.add: the value of `x` may not contain control characters",
            ),
            (r#"{"response_headers": {"remove": [""]}}"#, "response_headers.remove: \"\" is not a valid header name"),
            (r#"{"response_headers": {"append": {}}}"#, "unknown field `append`"),
            (r#"{"rule": []}"#, "unknown field `rule`"),
        ] {
            let err = testing::init::<Rewrite>(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
