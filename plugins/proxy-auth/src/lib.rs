//! `proxy-auth`: lets only known users through a forward proxy, with HTTP Basic proxy
//! credentials (RFC 9110 §11.7, RFC 7617), and tells later plugins who they are.
//!
//! ```toml
//! [plugin.config]
//! realm = "sluice"
//! [plugin.config.users]
//! alice = "${ALICE_PROXY_PASSWORD}"
//! ```
//!
//! - A request without `Proxy-Authorization` gets `407` with
//!   `Proxy-Authenticate: Basic realm="<realm>"` and the body `proxy authentication required\n`;
//!   clients answer that challenge with credentials.
//! - Credentials that are not `Basic <base64 of user:password>` (scheme in any case), or whose
//!   user or password is wrong, get the same `407` with the body `proxy credentials rejected\n`:
//!   nothing tells a guesser which part was wrong.
//! - Known credentials continue with the user's name in the request context under
//!   [`CONSUMER_KEY`] (the key `api-key-auth` and `jwt-auth` use, so a rate limiter with
//!   `key = "context:consumer"` limits each user apart), and without `Proxy-Authorization`: the
//!   password never travels further, whatever the gateway does with hop-by-hop headers.
//!
//! The decoded `user:password` is looked up by a keyed hash (SipHash under a random key drawn per
//! instance) and then compared with the stored pair byte by byte, without stopping at the first
//! difference, as `api-key-auth` compares keys: a wrong user and a wrong password take the same
//! path, and the time a check takes says nothing about how much of a guess was right. Base64 is
//! decoded by `base64ct`, in constant time, into a buffer the plugin keeps, sized for the longest
//! configured pair: longer credentials are refused before decoding, and a check allocates nothing.
//! See the README for every config key.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};

use base64ct::{Base64, Encoding};
use serde::Deserialize;
use sluice_sdk::check::{equal_in_constant_time, is_header_value};
use sluice_sdk::prelude::*;

/// The request context key the user's name is stored under.
pub const CONSUMER_KEY: &str = "consumer";

/// The body of the 407 for a request without credentials.
pub const MISSING_BODY: &str = "proxy authentication required\n";

/// The body of the 407 for credentials that are malformed or wrong.
pub const REJECTED_BODY: &str = "proxy credentials rejected\n";

/// The header that carries the credentials (lower-case).
const CREDENTIALS_HEADER: &str = "proxy-authorization";

/// The plugin, made from its config.
#[derive(Debug)]
pub struct ProxyAuth {
    /// Every user with their credentials.
    users: Vec<User>,
    /// The keyed hash that finds a user by credentials.
    hasher: RandomState,
    /// The `Proxy-Authenticate` value of a 407.
    challenge: String,
    /// Where credentials are decoded: as long as the longest `user:password`.
    decoded: Vec<u8>,
}

#[derive(Debug)]
struct User {
    name: String,
    /// `name:password`, as a client encodes it.
    credentials: Vec<u8>,
    /// `hasher`'s hash of `credentials`.
    tag: u64,
}

/// `[plugin.config]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    users: BTreeMap<String, String>,
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_realm() -> String {
    "sluice".into()
}

impl Plugin for ProxyAuth {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        if settings.realm.contains(['"', '\\']) || !is_header_value(&settings.realm) {
            return Err(format!(
                "proxy-auth: `realm` = {:?} may not contain quotes, backslashes or control characters",
                settings.realm
            ));
        }
        if settings.users.is_empty() {
            return Err("proxy-auth: `users` must map at least one user name to its password".into());
        }
        let hasher = RandomState::new();
        let mut users = Vec::with_capacity(settings.users.len());
        for (name, password) in &settings.users {
            // RFC 7617 §2: the user-id cannot contain a colon, which ends it.
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                return Err(format!(
                    "proxy-auth: user name {name:?} must be non-empty, without colons or control characters"
                ));
            }
            if password.is_empty() {
                return Err(format!("proxy-auth: the password of user `{name}` is empty"));
            }
            let credentials = format!("{name}:{password}").into_bytes();
            users.push(User { name: name.clone(), tag: hasher.hash_one(credentials.as_slice()), credentials });
        }
        let longest = users.iter().map(|user| user.credentials.len()).max().unwrap_or(0);
        Ok(ProxyAuth {
            users,
            hasher,
            challenge: format!("Basic realm=\"{}\"", settings.realm),
            decoded: vec![0; longest],
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let Some(value) = req.header_bytes(CREDENTIALS_HEADER) else {
            return self.challenge(MISSING_BODY);
        };
        let Some(user) = self.user_of(value) else {
            return self.challenge(REJECTED_BODY);
        };
        let name = &self.users[user].name;
        req.remove_header(CREDENTIALS_HEADER);
        req.set_context(CONSUMER_KEY, name);
        Action::Continue
    }
}

impl ProxyAuth {
    /// The index of the user whose credentials `value` (a `Proxy-Authorization` value) carries.
    fn user_of(&mut self, value: &[u8]) -> Option<usize> {
        let encoded = basic_credentials(value)?;
        let credentials = Base64::decode(encoded, &mut self.decoded).ok()?;
        let tag = self.hasher.hash_one(credentials);
        let index = self.users.iter().position(|user| user.tag == tag)?;
        equal_in_constant_time(&self.users[index].credentials, credentials).then_some(index)
    }

    /// A 407 with the challenge and `body`.
    fn challenge(&self, body: &'static str) -> Action {
        Action::respond(407)
            .header("proxy-authenticate", &self.challenge)
            .header("content-type", "text/plain")
            .body(body)
    }
}

/// The base64 part of `Basic <base64>` (scheme in any case, spaces around allowed); `None` for
/// other schemes or no credentials.
fn basic_credentials(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(5)?;
    let encoded = rest.trim_ascii_start();
    let separated = rest.len() > encoded.len();
    (scheme.eq_ignore_ascii_case(b"basic") && separated && !encoded.is_empty()).then_some(encoded)
}

export_plugin!(ProxyAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::testing;
    use sluice_sdk::{HeaderOp, Reply};

    const CONFIG: &str = r#"{"users": {"alice": "secret", "bob": "pa:ss wörd", "carol": "pass"}}"#;

    fn plugin(config: &str) -> ProxyAuth {
        testing::init(config).expect("a valid config")
    }

    fn challenge(body: &str) -> Reply {
        Reply::new(407)
            .header("proxy-authenticate", r#"Basic realm="sluice""#)
            .header("content-type", "text/plain")
            .body(body)
    }

    fn basic(credentials: &str) -> String {
        format!("Basic {}", Base64::encode_string(credentials.as_bytes()))
    }

    /// A CONNECT request with `Proxy-Authorization: value`.
    fn connect(value: &str) -> Request {
        testing::request("CONNECT", "/").header("host", "example.com:443").header("proxy-authorization", value).build()
    }

    #[test]
    fn a_request_without_credentials_is_challenged() {
        let mut auth = plugin(CONFIG);
        let mut req = testing::request("CONNECT", "/").header("host", "example.com:443").build();
        assert_eq!(auth.on_request(&mut req).reply(), Some(&challenge("proxy authentication required\n")));
        assert_eq!(req.changes(), Default::default());
    }

    #[test]
    fn wrong_credentials_are_rejected_without_saying_which_part_is_wrong() {
        let mut auth = plugin(CONFIG);
        for value in [
            basic("alice:wrong"),
            basic("alice:secre"),
            basic("alice:secrett"),
            basic("alice:"),
            basic("mallory:secret"),
            basic("Alice:secret"),
            basic("alice"),
            basic(":secret"),
            basic("bob:pa"),
            basic("bob:secret"),
        ] {
            let mut req = connect(&value);
            assert_eq!(auth.on_request(&mut req).reply(), Some(&challenge(REJECTED_BODY)), "{value}");
            assert_eq!(req.changes(), Default::default(), "{value}: a rejected request is left alone");
        }
    }

    #[test]
    fn malformed_credentials_are_rejected() {
        let mut auth = plugin(CONFIG);
        let alice = Base64::encode_string(b"alice:secret");
        for value in [
            String::new(),
            "Basic".into(),
            "Basic ".into(),
            "Basic !!!!".into(),
            "Basic Y2Fyb2w6cGFzcw".into(), // carol:pass without its `==` padding
            format!("Basic {alice}="),
            format!("Basic {alice}x"),
            format!("Basic{alice}"),
            format!("Bearer {alice}"),
            format!("Digest {alice}"),
            alice.clone(),
            basic(&format!("alice:secret{}", "x".repeat(1000))),
        ] {
            let mut req = connect(&value);
            assert_eq!(auth.on_request(&mut req).reply(), Some(&challenge(REJECTED_BODY)), "{value:?}");
        }
        let mut req = testing::request("GET", "/").header("proxy-authorization", "Basic").build();
        assert_eq!(auth.on_request(&mut req).reply(), Some(&challenge(REJECTED_BODY)));
    }

    #[test]
    fn good_credentials_name_the_consumer_and_are_not_forwarded() {
        let mut auth = plugin(CONFIG);
        let mut req = connect(&basic("alice:secret"));
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!(req.context(CONSUMER_KEY), Some("alice"));
        assert_eq!(req.header_str("proxy-authorization"), None);
        assert_eq!(req.header_str("host"), Some("example.com:443"), "other headers are left alone");
        let changes = req.changes();
        assert_eq!(changes.headers, [HeaderOp::Remove("proxy-authorization".into())]);
        assert_eq!(changes.context, [(CONSUMER_KEY.to_owned(), "alice".to_owned())]);

        // The password is everything after the first colon, colons and non-ASCII included.
        let mut req = connect(&basic("bob:pa:ss wörd"));
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!(req.context(CONSUMER_KEY), Some("bob"));

        let mut req = connect("Basic Y2Fyb2w6cGFzcw==");
        assert!(auth.on_request(&mut req).is_continue(), "padded carol:pass");
        assert_eq!(req.context(CONSUMER_KEY), Some("carol"));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_spaces_around_are_allowed() {
        let mut auth = plugin(CONFIG);
        let alice = Base64::encode_string(b"alice:secret");
        for value in [
            format!("basic {alice}"),
            format!("BASIC {alice}"),
            format!("bAsIc {alice}"),
            format!("Basic   {alice}"),
            format!(" Basic\t{alice} "),
        ] {
            let mut req = connect(&value);
            assert!(auth.on_request(&mut req).is_continue(), "{value:?}");
            assert_eq!(req.context(CONSUMER_KEY), Some("alice"), "{value:?}");
        }
    }

    #[test]
    fn a_context_consumer_sent_by_an_earlier_plugin_is_replaced() {
        let mut auth = plugin(CONFIG);
        let mut req = testing::request("GET", "/")
            .header("proxy-authorization", &basic("bob:pa:ss wörd"))
            .context(CONSUMER_KEY, "mallory")
            .build();
        assert!(auth.on_request(&mut req).is_continue());
        assert_eq!(req.context(CONSUMER_KEY), Some("bob"));
    }

    #[test]
    fn the_realm_is_configurable() {
        let mut auth = plugin(r#"{"users": {"u": "p"}, "realm": "office proxy"}"#);
        let mut req = testing::request("GET", "/").build();
        let reply = auth.on_request(&mut req).reply().cloned().expect("challenged");
        assert_eq!(reply.get_header("proxy-authenticate"), Some(r#"Basic realm="office proxy""#));
    }

    #[test]
    fn credentials_are_found_whatever_the_number_of_users() {
        let users: Vec<String> = (0..50).map(|i| format!(r#""user{i}": "password{i}""#)).collect();
        let mut auth = plugin(&format!(r#"{{"users": {{{}}}}}"#, users.join(",")));
        for i in [0, 17, 49] {
            let mut req = connect(&basic(&format!("user{i}:password{i}")));
            assert!(auth.on_request(&mut req).is_continue(), "user{i}");
            assert_eq!(req.context(CONSUMER_KEY), Some(format!("user{i}").as_str()));
        }
        let mut req = connect(&basic("user1:password2"));
        assert_eq!(auth.on_request(&mut req).reply(), Some(&challenge(REJECTED_BODY)));
    }

    #[test]
    fn basic_credentials_are_parsed_strictly() {
        assert_eq!(basic_credentials(b"Basic abc="), Some(&b"abc="[..]));
        assert_eq!(basic_credentials(b"  basic \t abc=  "), Some(&b"abc="[..]));
        assert_eq!(basic_credentials(b"Basicabc="), None);
        assert_eq!(basic_credentials(b"Basic"), None);
        assert_eq!(basic_credentials(b"Basic   "), None);
        assert_eq!(basic_credentials(b"Basi"), None);
        assert_eq!(basic_credentials("Bäsi abc=".as_bytes()), None);
    }

    #[test]
    fn invalid_configs_are_refused_with_a_reason() {
        for (config, expected) in [
            ("{}", "missing field `users`"),
            (r#"{"users": {}}"#, "`users` must map at least one user name to its password"),
            (r#"{"users": {"a": ""}}"#, "the password of user `a` is empty"),
            (r#"{"users": {"": "p"}}"#, "user name \"\" must be non-empty"),
            (r#"{"users": {"a:b": "p"}}"#, "user name \"a:b\" must be non-empty, without colons"),
            (r#"{"users": {"a\nb": "p"}}"#, "user name \"a\\nb\""),
            (r#"{"users": {"a": 1}}"#, "invalid type: integer `1`, expected a string"),
            (r#"{"users": ["a"]}"#, "invalid type: sequence, expected a map"),
            (r#"{"users": {"a": "p"}, "realm": "a\"b"}"#, "`realm` = \"a\\\"b\" may not contain quotes"),
            (r#"{"users": {"a": "p"}, "realm": "a\u0007"}"#, "may not contain quotes, backslashes or control"),
            (r#"{"users": {"a": "p"}, "relam": "x"}"#, "unknown field `relam`"),
        ] {
            let err = testing::init::<ProxyAuth>(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
