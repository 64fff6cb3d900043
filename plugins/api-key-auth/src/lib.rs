//! `api-key-auth`: lets a request through only if it carries one of the configured API keys, and
//! tells the backend and later plugins who the caller is.
//!
//! The key is read from a header (`header`, default `x-api-key`) or, when that header is absent
//! and `query` names a parameter, from the query. Each key belongs to a consumer:
//!
//! ```toml
//! [plugin.config]
//! query = "api_key"
//! [plugin.config.keys]
//! alice = "${ALICE_KEY}"
//! bob = "${BOB_KEY}"
//! ```
//!
//! - A missing or unknown key gets `401` with `WWW-Authenticate: ApiKey realm="<realm>"` and the
//!   body `{"error":"missing or invalid API key"}`; the backend is never called.
//! - A known key continues with the consumer's name in the request header `consumer_header`
//!   (default `x-consumer`, replacing any value the client sent) and in the request context under
//!   [`CONSUMER_KEY`], where a later plugin (a rate limiter with `key = "context:consumer"`, say)
//!   reads it. The key itself never reaches the backend: the key header and every query
//!   parameter named `query` are removed, the other parameters keep their order and spelling.
//!
//! A key is looked up by a keyed hash (SipHash under a random key drawn per instance, so a client
//! cannot aim at a hash) and then compared with the stored key byte by byte, without stopping at
//! the first difference: the time a check takes says nothing about how much of a guess was right.
//! See the README for every config key.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher, RandomState};

use serde::Deserialize;
use sluice_sdk::check::{equal_in_constant_time, is_header_name, is_header_value};
use sluice_sdk::prelude::*;

/// The request context key the consumer's name is stored under.
pub const CONSUMER_KEY: &str = "consumer";

/// The body of every 401.
pub const DENIED_BODY: &str = r#"{"error":"missing or invalid API key"}"#;

/// The plugin, made from its config.
#[derive(Debug)]
pub struct ApiKeyAuth {
    /// The header the key is read from (lower-case).
    header: String,
    /// The query parameter the key is read from, when the header is absent.
    query: Option<String>,
    /// Every consumer with its key.
    consumers: Vec<Consumer>,
    /// The keyed hash that finds a consumer by key.
    hasher: RandomState,
    /// The `WWW-Authenticate` value of a 401.
    challenge: String,
    /// The header that carries the consumer's name to the backend.
    consumer_header: String,
}

#[derive(Debug)]
struct Consumer {
    name: String,
    key: Vec<u8>,
    /// `hasher`'s hash of `key`.
    tag: u64,
}

/// `[plugin.config]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    query: Option<String>,
    keys: BTreeMap<String, String>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn default_realm() -> String {
    "sluice".into()
}

fn default_consumer_header() -> String {
    "x-consumer".into()
}

impl Plugin for ApiKeyAuth {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        for (key, name) in [("header", &settings.header), ("consumer_header", &settings.consumer_header)] {
            if !is_header_name(name) {
                return Err(format!("api-key-auth: `{key}` = {name:?} is not a valid header name"));
            }
        }
        if settings.query.as_deref() == Some("") {
            return Err(
                "api-key-auth: `query` must name a query parameter; leave it out to read the header only".into()
            );
        }
        if settings.realm.contains(['"', '\\']) || !is_header_value(&settings.realm) {
            return Err(format!(
                "api-key-auth: `realm` = {:?} may not contain quotes, backslashes or control characters",
                settings.realm
            ));
        }
        if settings.keys.is_empty() {
            return Err("api-key-auth: `keys` must map at least one consumer name to its key".into());
        }
        let hasher = RandomState::new();
        let mut consumers = Vec::with_capacity(settings.keys.len());
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, key) in &settings.keys {
            if name.is_empty() || !is_header_value(name) {
                return Err(format!(
                    "api-key-auth: consumer name {name:?} must be non-empty, without control characters"
                ));
            }
            if key.is_empty() {
                return Err(format!("api-key-auth: the key of consumer `{name}` is empty"));
            }
            if let Some(other) = owners.insert(key, name) {
                return Err(format!("api-key-auth: consumers `{other}` and `{name}` have the same key"));
            }
            consumers.push(Consumer {
                name: name.clone(),
                key: key.as_bytes().to_vec(),
                tag: tag(&hasher, key.as_bytes()),
            });
        }
        Ok(ApiKeyAuth {
            header: settings.header.to_ascii_lowercase(),
            query: settings.query,
            consumers,
            hasher,
            challenge: format!("ApiKey realm=\"{}\"", settings.realm),
            consumer_header: settings.consumer_header,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let from_header = req.header_bytes(&self.header).map(|key| self.consumer_of(key));
        let found = match (from_header, &self.query) {
            (Some(found), _) => found,
            (None, Some(param)) => query_param(req.query(), param).and_then(|key| self.consumer_of(&key)),
            (None, None) => None,
        };
        let Some(consumer) = found else {
            return Action::respond(401)
                .header("www-authenticate", &self.challenge)
                .header("content-type", "application/json")
                .body(DENIED_BODY);
        };
        if from_header.is_some() {
            req.remove_header(&self.header);
        }
        if let Some(param) = &self.query
            && let Some(rest) = without_param(req.query(), param)
        {
            req.set_query(rest);
        }
        req.set_header(&self.consumer_header, consumer);
        req.set_context(CONSUMER_KEY, consumer);
        Action::Continue
    }
}

impl ApiKeyAuth {
    /// The consumer whose key is `key`.
    fn consumer_of(&self, key: &[u8]) -> Option<&str> {
        let tag = tag(&self.hasher, key);
        let candidate = self.consumers.iter().find(|consumer| consumer.tag == tag)?;
        equal_in_constant_time(&candidate.key, key).then_some(candidate.name.as_str())
    }
}

/// The keyed hash of `key` that finds its consumer: its bytes alone, without the length prefix
/// `Hash` adds to a slice (which a single key does not need, and which costs a round of SipHash).
fn tag(hasher: &RandomState, key: &[u8]) -> u64 {
    let mut state = hasher.build_hasher();
    state.write(key);
    state.finish()
}

/// The (percent-decoded) value of the first parameter called `name` in `query`.
fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    let pair = query.split('&').find(|pair| is_param(pair, name))?;
    Some(percent_decode(pair.split_once('=').map_or("", |(_, value)| value)))
}

/// `query` without any parameter called `name`, the others kept as they were, in order; `None`
/// when there is no such parameter.
fn without_param(query: &str, name: &str) -> Option<String> {
    if !query.split('&').any(|pair| is_param(pair, name)) {
        return None;
    }
    Some(query.split('&').filter(|pair| !is_param(pair, name)).collect::<Vec<_>>().join("&"))
}

/// Whether the query pair `name=value` (or just `name`) is called `name` once percent-decoded.
fn is_param(pair: &str, name: &str) -> bool {
    let written = pair.split_once('=').map_or(pair, |(written, _)| written);
    percent_decode(written) == name.as_bytes()
}

/// Decodes `%XX` escapes; anything else, `+` included, stays as it is (API keys often hold `+`).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

export_plugin!(ApiKeyAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::testing;
    use sluice_sdk::{HeaderOp, Reply};

    const CONFIG: &str = r#"{"query": "api_key", "keys": {"alice": "alice-key", "bob": "b0b+/key="}}"#;

    fn plugin(config: &str) -> ApiKeyAuth {
        testing::init(config).expect("a valid config")
    }

    fn denied() -> Reply {
        Reply::new(401)
            .header("www-authenticate", r#"ApiKey realm="sluice""#)
            .header("content-type", "application/json")
            .body(DENIED_BODY)
    }

    #[test]
    fn a_missing_or_wrong_key_is_refused_with_a_challenge() {
        let mut auth = plugin(CONFIG);
        for mut req in [
            testing::request("GET", "/").build(),
            testing::request("GET", "/").header("x-api-key", "nope").build(),
            testing::request("GET", "/").header("x-api-key", "").build(),
            testing::request("GET", "/").header("x-api-key", "alice-ke").build(),
            testing::request("GET", "/").header("x-api-key", "alice-keyy").build(),
            testing::request("GET", "/").query("api_key=nope&x=1").build(),
            testing::request("GET", "/").query("apikey=alice-key").build(),
        ] {
            assert_eq!(auth.on_request(&mut req).reply(), Some(&denied()), "{req:?}");
            assert_eq!(req.changes(), Default::default(), "a refused request is left alone");
        }
    }

    #[test]
    fn a_key_in_the_header_names_the_consumer_and_is_removed() {
        let mut auth = plugin(CONFIG);
        let mut req =
            testing::request("GET", "/").header("X-Api-Key", "alice-key").header("x-consumer", "mallory").build();
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!(req.header_str("x-api-key"), None);
        assert_eq!(req.headers("x-consumer").collect::<Vec<_>>(), ["alice"], "the client's claim is replaced");
        assert_eq!(req.context(CONSUMER_KEY), Some("alice"));
        assert_eq!(
            req.changes().headers,
            [HeaderOp::Remove("x-api-key".into()), HeaderOp::Set("x-consumer".into(), "alice".into())]
        );
        assert_eq!(req.changes().query, None, "no key in the query: the query is untouched");
    }

    #[test]
    fn a_key_in_the_query_is_decoded_and_removed_keeping_the_other_parameters() {
        let mut auth = plugin(CONFIG);
        for (query, left) in [
            ("a=1&api_key=b0b%2B%2Fkey%3D&b=%20&c", "a=1&b=%20&c"),
            ("api_key=b0b+/key=", ""),
            ("api%5Fkey=b0b+/key=&api_key=second&z", "z"),
        ] {
            let mut req = testing::request("GET", "/").query(query).build();
            assert!(auth.on_request(&mut req).is_continue(), "{query}");
            assert_eq!(req.query(), left, "{query}");
            assert_eq!(req.context(CONSUMER_KEY), Some("bob"), "{query}");
            assert_eq!(req.changes().headers, [HeaderOp::Set("x-consumer".into(), "bob".into())]);
        }
    }

    #[test]
    fn the_header_wins_over_the_query_and_both_are_removed() {
        let mut auth = plugin(CONFIG);
        let mut req = testing::request("GET", "/").header("x-api-key", "alice-key").query("api_key=nope&q=1").build();
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!((req.query(), req.context(CONSUMER_KEY)), ("q=1", Some("alice")));

        let mut req = testing::request("GET", "/").header("x-api-key", "nope").query("api_key=alice-key").build();
        assert_eq!(auth.on_request(&mut req).reply(), Some(&denied()));
    }

    #[test]
    fn without_query_config_the_query_is_ignored() {
        let mut auth = plugin(r#"{"keys": {"alice": "alice-key"}}"#);
        let mut req = testing::request("GET", "/").query("api_key=alice-key").build();
        assert_eq!(auth.on_request(&mut req).reply(), Some(&denied()));
    }

    #[test]
    fn header_realm_and_consumer_header_are_configurable() {
        let mut auth = plugin(
            r#"{"header": "Authorization-Key", "realm": "api", "consumer_header": "x-user", "keys": {"ci": "k"}}"#,
        );
        let mut req = testing::request("GET", "/").header("x-api-key", "k").build();
        let reply = auth.on_request(&mut req).reply().cloned().expect("refused");
        assert_eq!(reply.get_header("www-authenticate"), Some(r#"ApiKey realm="api""#));

        let mut req = testing::request("GET", "/").header("authorization-key", "k").build();
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!((req.header_str("x-user"), req.header_str("authorization-key")), (Some("ci"), None));
    }

    #[test]
    fn keys_are_compared_as_bytes() {
        let mut auth = plugin(r#"{"keys": {"ünï": "clé-ü"}}"#);
        let mut req = testing::request("GET", "/").header("x-api-key", "clé-ü").build();
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!(req.context(CONSUMER_KEY), Some("ünï"));
    }

    #[test]
    fn odd_queries_do_not_confuse_the_parser() {
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41+"), b"%zzA+");
        assert_eq!(percent_decode("%C3%A9"), "é".as_bytes());
        assert_eq!(query_param("&&a&api_key&", "api_key"), Some(Vec::new()));
        assert_eq!(without_param("&&a&api_key&", "api_key").as_deref(), Some("&&a&"));
        assert_eq!(without_param("a=1", "api_key"), None);
        assert_eq!(query_param("", "api_key"), None);
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        for (config, expected) in [
            ("{}", "missing field `keys`"),
            (r#"{"keys": {}}"#, "`keys` must map at least one consumer"),
            (r#"{"keys": {"a": ""}}"#, "the key of consumer `a` is empty"),
            (r#"{"keys": {"a": "k", "b": "k"}}"#, "consumers `a` and `b` have the same key"),
            (r#"{"keys": {"": "k"}}"#, "consumer name \"\" must be non-empty"),
            (r#"{"keys": {"a\nb": "k"}}"#, "consumer name \"a\\nb\""),
            (r#"{"keys": {"a": 1}}"#, "invalid type: integer `1`, expected a string"),
            (r#"{"keys": {"a": "k"}, "header": "x api key"}"#, "`header` = \"x api key\" is not a valid header name"),
            (r#"{"keys": {"a": "k"}, "consumer_header": ""}"#, "`consumer_header` = \"\" is not a valid header name"),
            (r#"{"keys": {"a": "k"}, "query": ""}"#, "`query` must name a query parameter"),
            (r#"{"keys": {"a": "k"}, "realm": "a\"b"}"#, "`realm` = \"a\\\"b\" may not contain quotes"),
            (r#"{"keys": {"a": "k"}, "relam": "x"}"#, "unknown field `relam`"),
        ] {
            let err = testing::init::<ApiKeyAuth>(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
