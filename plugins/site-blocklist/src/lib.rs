//! `site-blocklist`: a forward proxy's list of places its clients may not go.
//!
//! On a `forward` listener the gateway hands every proxied request to its plugins with the target
//! in `Host`: the authority of an absolute-form request (`GET http://ads.example/x`), or the
//! `host:port` of a CONNECT tunnel. This plugin reduces that to a bare host name (no port, no
//! brackets around an IPv6 literal, lower-case, one trailing dot dropped) and refuses it when it
//! is listed:
//!
//! ```toml
//! [plugin.config]
//! names = ["tracker.example.org"]          # exactly these hosts
//! suffixes = ["ads.example", ".doubleclick.net"]   # these domains and every host under them
//! ```
//!
//! - A listed host gets `403` with `x-blocked-by: site-blocklist`, `content-type: text/plain` and
//!   the body `blocked by policy: <host> (<rule>)\n`, where the rule is `name <entry>` or
//!   `suffix <entry>`; the tunnel is never opened. `message` replaces `blocked by policy`.
//! - Any other request continues untouched, as does one without a `Host` (there is no target to
//!   judge; the gateway refuses it anyway).
//!
//! A suffix is matched on label boundaries: `example.com` (or `.example.com`, the same entry)
//! blocks `example.com` and `a.b.example.com`, never `badexample.com`. The check runs on every
//! request through the proxy, so it allocates nothing once warm: the host is lower-cased into a
//! buffer the plugin keeps, exact names are one hash lookup, and suffixes one lookup per label of
//! the host, on slices of that buffer. See the README for every config key.

use std::collections::HashSet;
use std::fmt::Write;
use std::net::Ipv6Addr;

use serde::Deserialize;
use sluice_sdk::prelude::*;

/// The `message` when none is configured.
pub const DEFAULT_MESSAGE: &str = "blocked by policy";

/// The plugin, made from its config.
#[derive(Debug)]
pub struct SiteBlocklist {
    /// Hosts blocked exactly, in the form [`target_host`] writes.
    names: HashSet<String>,
    /// Domains blocked with everything under them: lower-case, without leading or trailing dot.
    suffixes: HashSet<String>,
    /// The start of the 403 body.
    message: String,
    /// The current request's host, as [`target_host`] writes it; kept so that a check does not
    /// allocate.
    host: String,
}

/// `[plugin.config]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    suffixes: Vec<String>,
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    DEFAULT_MESSAGE.into()
}

/// The entry that blocked a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// The host is in `names`.
    Name,
    /// The host from this byte offset on is in `suffixes`.
    Suffix(usize),
}

impl Plugin for SiteBlocklist {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        if settings.names.is_empty() && settings.suffixes.is_empty() {
            return Err("site-blocklist: `names` and `suffixes` are both empty; list at least one host to block".into());
        }
        if settings.message.is_empty() || settings.message.chars().any(char::is_control) {
            return Err(format!(
                "site-blocklist: `message` = {:?} must be one line of text, without control characters",
                settings.message
            ));
        }
        let names = settings.names.iter().map(|entry| name_entry(entry)).collect::<Result<_, _>>()?;
        let suffixes = settings.suffixes.iter().map(|entry| suffix_entry(entry)).collect::<Result<_, _>>()?;
        Ok(SiteBlocklist { names, suffixes, message: settings.message, host: String::new() })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let Some(value) = req.header_str("host") else {
            return Action::Continue;
        };
        target_host(value, &mut self.host);
        match self.rule_for_host() {
            None => Action::Continue,
            Some(rule) => self.refusal(rule),
        }
    }
}

impl SiteBlocklist {
    /// The rule that blocks `self.host`, if any; the most specific suffix wins.
    fn rule_for_host(&self) -> Option<Rule> {
        let host = self.host.as_str();
        if self.names.contains(host) {
            return Some(Rule::Name);
        }
        let mut start = 0;
        loop {
            if self.suffixes.contains(&host[start..]) {
                return Some(Rule::Suffix(start));
            }
            start += host[start..].find('.')? + 1;
        }
    }

    /// The 403 for `self.host`, blocked by `rule`.
    fn refusal(&self, rule: Rule) -> Action {
        let host = self.host.as_str();
        let (kind, entry) = match rule {
            Rule::Name => ("name", host),
            Rule::Suffix(start) => ("suffix", &host[start..]),
        };
        Action::respond(403)
            .header("content-type", "text/plain")
            .header("x-blocked-by", "site-blocklist")
            .body(format!("{}: {host} ({kind} {entry})\n", self.message))
    }
}

/// Writes into `out` the host a `Host` value (`host`, `host:port`, `[v6]:port`) names, in the
/// form entries are kept: without port (and without userinfo, should an authority carry one),
/// ASCII lower-case, one trailing dot dropped; an IPv6 literal in its canonical text, so that
/// `[2001:DB8:0::1]` and `2001:db8::1` are the same host.
fn target_host(value: &str, out: &mut String) {
    out.clear();
    let authority = value.rsplit_once('@').map_or(value, |(_, host)| host);
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split_once(']').map_or(bracketed, |(literal, _)| literal)
    } else {
        match authority.split_once(':') {
            // `host:port`; more than one colon is an IPv6 literal someone forgot to bracket.
            Some((host, port)) if !port.contains(':') => host,
            _ => authority,
        }
    };
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        // Writing into a String cannot fail.
        let _ = write!(out, "{ip}");
        return;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    out.extend(host.chars().map(|c| c.to_ascii_lowercase()));
}

/// A `names` entry as kept: a host name, or an IP literal (IPv6 with or without brackets).
fn name_entry(entry: &str) -> Result<String, String> {
    let literal = entry.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(entry);
    if let Ok(ip) = literal.parse::<Ipv6Addr>() {
        return Ok(ip.to_string());
    }
    host_name(entry).ok_or_else(|| invalid_entry("names", entry))
}

/// A `suffixes` entry as kept: a domain name without the optional leading dot.
fn suffix_entry(entry: &str) -> Result<String, String> {
    let domain = host_name(entry.strip_prefix('.').unwrap_or(entry)).ok_or_else(|| invalid_entry("suffixes", entry))?;
    // Top-level domains are never numeric, so an entry that ends in digits is (part of) an IPv4
    // address, and would block by a partial match, e.g. `0.0.1` catching `10.0.0.1`.
    if domain.rsplit('.').next().is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!(
            "site-blocklist: `suffixes` entry {entry:?} ends in a numeric label; list IP addresses under `names`"
        ));
    }
    Ok(domain)
}

/// `entry` lower-cased and without one trailing dot, if it is a host name: dot-separated labels
/// of 1 to 63 letters, digits, `-` or `_`, at most 253 characters in all.
fn host_name(entry: &str) -> Option<String> {
    let name = entry.strip_suffix('.').unwrap_or(entry);
    let valid = (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

fn invalid_entry(key: &str, entry: &str) -> String {
    format!(
        "site-blocklist: `{key}` entry {entry:?} is not a valid host name (dot-separated labels of 1 to 63 \
         letters, digits, `-` or `_`; internationalised names in their `xn--` form)"
    )
}

export_plugin!(SiteBlocklist);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::Reply;
    use sluice_sdk::testing;

    const CONFIG: &str = r#"{
        "names": ["exact.example.com", "10.0.0.7", "[2001:db8::1]"],
        "suffixes": ["example.com", ".tracker.net", "Ads.Example."]
    }"#;

    fn plugin(config: &str) -> SiteBlocklist {
        testing::init(config).expect("a valid config")
    }

    fn blocked(body: &str) -> Reply {
        Reply::new(403).header("content-type", "text/plain").header("x-blocked-by", "site-blocklist").body(body)
    }

    /// What the plugin does with a request whose `Host` is `host`, by `method`.
    fn verdict(list: &mut SiteBlocklist, method: &str, host: &str) -> Action {
        let mut req = testing::request(method, "/").header("host", host).build();
        let action = list.on_request(&mut req);
        assert_eq!(req.changes(), Default::default(), "{host}: the request itself is never changed");
        action
    }

    #[test]
    fn an_exact_name_is_blocked_and_only_that_name() {
        let mut list = plugin(r#"{"names": ["exact.example.org"]}"#);
        let action = verdict(&mut list, "GET", "exact.example.org");
        assert_eq!(action.reply(), Some(&blocked("blocked by policy: exact.example.org (name exact.example.org)\n")));
        for host in ["sub.exact.example.org", "example.org", "xexact.example.org", "exact.example.org.evil"] {
            assert!(verdict(&mut list, "GET", host).is_continue(), "{host}");
        }
    }

    #[test]
    fn a_suffix_blocks_the_domain_itself_and_every_host_under_it() {
        let mut list = plugin(CONFIG);
        for (host, body) in [
            ("example.com", "blocked by policy: example.com (suffix example.com)\n"),
            ("www.example.com", "blocked by policy: www.example.com (suffix example.com)\n"),
            ("a.b.c.example.com", "blocked by policy: a.b.c.example.com (suffix example.com)\n"),
            ("tracker.net", "blocked by policy: tracker.net (suffix tracker.net)\n"),
            ("pixel.tracker.net", "blocked by policy: pixel.tracker.net (suffix tracker.net)\n"),
            ("x.ads.example", "blocked by policy: x.ads.example (suffix ads.example)\n"),
        ] {
            assert_eq!(verdict(&mut list, "GET", host).reply(), Some(&blocked(body)), "{host}");
        }
    }

    #[test]
    fn an_exact_name_wins_over_a_suffix_and_a_longer_suffix_over_a_shorter() {
        let mut list = plugin(r#"{"names": ["a.example.com"], "suffixes": ["example.com", "b.example.com"]}"#);
        let reply = |list: &mut SiteBlocklist, host| {
            verdict(list, "GET", host).reply().and_then(|r| r.body_str().map(str::to_owned))
        };
        assert_eq!(
            reply(&mut list, "a.example.com").as_deref(),
            Some("blocked by policy: a.example.com (name a.example.com)\n")
        );
        assert_eq!(
            reply(&mut list, "x.b.example.com").as_deref(),
            Some("blocked by policy: x.b.example.com (suffix b.example.com)\n")
        );
    }

    #[test]
    fn lookalikes_are_not_blocked() {
        let mut list = plugin(CONFIG);
        for host in [
            "badexample.com",
            "example.com.evil.net",
            "example.co",
            "xample.com",
            "nottracker.net",
            "tracker.network",
            "ads.example.org",
            "10.0.0.70",
            "[2001:db8::10]:443",
            "",
        ] {
            assert!(verdict(&mut list, "GET", host).is_continue(), "{host:?}");
        }
    }

    #[test]
    fn the_port_of_a_connect_target_or_an_authority_is_ignored() {
        let mut list = plugin(CONFIG);
        for (method, host, body) in [
            ("CONNECT", "exact.example.com:443", "blocked by policy: exact.example.com (name exact.example.com)\n"),
            ("GET", "www.example.com:8080", "blocked by policy: www.example.com (suffix example.com)\n"),
            ("CONNECT", "10.0.0.7:22", "blocked by policy: 10.0.0.7 (name 10.0.0.7)\n"),
            ("GET", "user:pw@exact.example.com:80", "blocked by policy: exact.example.com (name exact.example.com)\n"),
        ] {
            assert_eq!(verdict(&mut list, method, host).reply(), Some(&blocked(body)), "{host}");
        }
        assert!(verdict(&mut list, "CONNECT", "good.example.org:443").is_continue());
    }

    #[test]
    fn an_ipv6_literal_is_compared_in_its_canonical_form() {
        let mut list = plugin(CONFIG);
        let body = "blocked by policy: 2001:db8::1 (name 2001:db8::1)\n";
        for host in ["[2001:db8::1]:443", "[2001:DB8:0:0::1]", "[2001:db8::1]", "2001:db8::1"] {
            assert_eq!(verdict(&mut list, "CONNECT", host).reply(), Some(&blocked(body)), "{host}");
        }
        assert!(verdict(&mut list, "CONNECT", "[::1]:443").is_continue());
    }

    #[test]
    fn case_and_one_trailing_dot_do_not_matter() {
        let mut list = plugin(CONFIG);
        for (host, body) in [
            ("EXACT.Example.COM", "blocked by policy: exact.example.com (name exact.example.com)\n"),
            ("exact.example.com.", "blocked by policy: exact.example.com (name exact.example.com)\n"),
            ("Www.Example.Com.:443", "blocked by policy: www.example.com (suffix example.com)\n"),
            ("ADS.EXAMPLE", "blocked by policy: ads.example (suffix ads.example)\n"),
        ] {
            assert_eq!(verdict(&mut list, "GET", host).reply(), Some(&blocked(body)), "{host}");
        }
        // Only one dot is dropped, as a resolver would: `example.com..` is no host at all.
        assert!(verdict(&mut list, "GET", "exact.example.com..").is_continue());
    }

    #[test]
    fn a_request_without_host_continues() {
        let mut list = plugin(CONFIG);
        let mut req = testing::request("GET", "/").build();
        assert!(list.on_request(&mut req).is_continue());
    }

    #[test]
    fn the_message_is_configurable() {
        let mut list = plugin(r#"{"suffixes": ["example.com"], "message": "not on this network"}"#);
        let action = verdict(&mut list, "CONNECT", "example.com:443");
        assert_eq!(action.reply(), Some(&blocked("not on this network: example.com (suffix example.com)\n")));
    }

    #[test]
    fn hosts_are_reduced_to_the_form_entries_are_kept_in() {
        let mut out = String::from("left over");
        for (value, host) in [
            ("Example.COM", "example.com"),
            ("example.com:443", "example.com"),
            ("example.com.:443", "example.com"),
            ("example.com:", "example.com"),
            ("[::FFFF:10.0.0.1]:80", "::ffff:10.0.0.1"),
            ("[fe80::1%25eth0]:80", "fe80::1%25eth0"),
            ("[2001:db8::1", "2001:db8::1"),
            ("a@b@Host:1", "host"),
            ("", ""),
        ] {
            target_host(value, &mut out);
            assert_eq!(out, host, "{value}");
        }
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        for (config, expected) in [
            ("{}", "`names` and `suffixes` are both empty"),
            (r#"{"names": [], "suffixes": []}"#, "`names` and `suffixes` are both empty"),
            (r#"{"names": [""]}"#, r#"`names` entry "" is not a valid host name"#),
            (r#"{"names": ["bad host.com"]}"#, r#"`names` entry "bad host.com" is not a valid host name"#),
            (r#"{"names": ["a..b"]}"#, r#"`names` entry "a..b" is not a valid host name"#),
            (r#"{"names": ["example.com:443"]}"#, r#"`names` entry "example.com:443" is not a valid"#),
            (r#"{"names": ["*.example.com"]}"#, r#"`names` entry "*.example.com" is not a valid"#),
            (r#"{"names": ["bücher.de"]}"#, "in their `xn--` form"),
            (r#"{"suffixes": ["."]}"#, r#"`suffixes` entry "." is not a valid host name"#),
            (r#"{"suffixes": ["ok.com", " "]}"#, r#"`suffixes` entry " " is not a valid host name"#),
            (r#"{"suffixes": ["..example.com"]}"#, r#"`suffixes` entry "..example.com" is not a valid"#),
            (r#"{"suffixes": ["[::1]"]}"#, r#"`suffixes` entry "[::1]" is not a valid host name"#),
            (r#"{"suffixes": ["0.0.1"]}"#, r#"`suffixes` entry "0.0.1" ends in a numeric label"#),
            (&format!(r#"{{"names": ["{}.com"]}}"#, "a".repeat(64)), "is not a valid host name"),
            (r#"{"names": ["a.com"], "message": ""}"#, r#"`message` = "" must be one line of text"#),
            (r#"{"names": ["a.com"], "message": "a\nb"}"#, r#"`message` = "a\nb" must be one line"#),
            (r#"{"names": "a.com"}"#, "invalid type: string \"a.com\", expected a sequence"),
            (r#"{"name": ["a.com"]}"#, "unknown field `name`"),
        ] {
            let err = testing::init::<SiteBlocklist>(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }

    #[test]
    fn entries_are_kept_lower_case_without_the_optional_dots() {
        let list =
            plugin(r#"{"names": ["Exact.Example.COM.", "[2001:DB8:0::1]", "::1"], "suffixes": [".Ads.Example."]}"#);
        let mut names: Vec<_> = list.names.iter().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["2001:db8::1", "::1", "exact.example.com"]);
        assert_eq!(list.suffixes.iter().collect::<Vec<_>>(), ["ads.example"]);
    }
}
