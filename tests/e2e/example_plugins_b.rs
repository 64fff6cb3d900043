//! The example plugins `jwt-auth` and `canary-balancer` (plugins/) through a real gateway.

use std::collections::HashMap;

use http::Request;

use crate::support::*;

/// The HS256 secret of the tokens below.
const SECRET: &str = "sluice-e2e-secret-0123456789abcdef";

// The tokens were made once, offline: the JSON header and claims base64url-encoded and signed
// with `openssl dgst -sha256 -hmac SECRET` (HS256) or `openssl dgst -sha256 -sign ec.key` (ES256,
// the DER signature turned into the JWS `r || s` form). `exp` 4102444800 is 2100-01-01; the
// private keys were not kept.

/// `{"alg":"HS256","typ":"JWT"}` `{"sub":"ada","scope":"read write","admin":true,"exp":4102444800}`.
const HS256_VALID: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJzY29wZSI6InJlYWQgd3JpdGUiLCJhZG1pbiI6dHJ1ZSwiZXhwIjo0MTAyNDQ0ODAwfQ.EZimCQ4J78COuuoTX3NOBLL5eSX84jRLPS8qx-msNVY";

/// `{"sub":"ada","exp":1600000000}` (September 2020), signed with `SECRET`.
const HS256_EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJleHAiOjE2MDAwMDAwMDB9.4bPi20QruELb7R2OH9d8pEaeeqg7ZGoXF9p-ZpavEKM";

/// The claims of `HS256_VALID`, signed with another secret.
const HS256_BAD_SIGNATURE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJzY29wZSI6InJlYWQgd3JpdGUiLCJhZG1pbiI6dHJ1ZSwiZXhwIjo0MTAyNDQ0ODAwfQ.yiqsE5OjUVED4WwCgwcr3zOfCTfhv7hse5i-2qkF1vI";

/// The P-256 public key of `ES256_VALID`.
const EC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAER8sPscDRpi0LWYrqkHpyr0ce5CxQ
/wK9o2bdqBqVKN/HrzbExKtOLdPyDEHke4Xo/ypVFd93W/6rFKE34pQybw==
-----END PUBLIC KEY-----";

/// `{"alg":"ES256","typ":"JWT"}` `{"sub":"grace","exp":4102444800}`.
const ES256_VALID: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJncmFjZSIsImV4cCI6NDEwMjQ0NDgwMH0.fWt-OjkuOLuf0hElSti0Gbwi16fOtbPNel37LhdrY7VSLVs3r9hSxJn9XdugDQIN4qT2a0AV2URscCk5vhKhxQ";

/// The RSA (2048-bit) public key of `RS256_VALID`, in PKCS#1 form.
const RSA_PUBLIC_KEY: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEA03CyPBOM5EGjBr65GFqFdx/I0clNxwhrLsMuBwdPUPnYaOrISqXd
E/SKZiht9MikmoIFGkxfzdcIyPeUXq/XxTD4To92zwTrnSzsgk6SoTQfIwZWonm4
ATccQKT6LwdpctomjSUhusSgXVA8LLm8+10fHCX4gItB40aUT/1xb+hv5HoTe+0y
0SZOOfpzJLFIWantqJI96+/6P87vDIeromJuWS5Q8sLco2jM8YeJHYwQwd9XQiBg
qLWb05ISqEHZW9V8XqdO8cV6Np3fKnHx6A3M/PtRTIpJ1ZlCEtfUga1/QXRKZptL
yEdu37ko/J61n/wEncYJL13LX+tar2R0dQIDAQAB
-----END RSA PUBLIC KEY-----";

/// `{"alg":"RS256","typ":"JWT"}` `{"sub":"grace","exp":4102444800}`.
const RS256_VALID: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJncmFjZSIsImV4cCI6NDEwMjQ0NDgwMH0.mFY6ycYwTJGf_W-9EcxE7XsAeOFc48FghP-mubHESnCTPv5aBdmxpQHA8CnE-YLYS-_l4mwXHoPsk7ohC2jQY4uvI9zVU21zlrxFSdqHCGmRpM4It08G20orJ-620tDgo7GFNYhlyNyUH6K3TwM0YU9XtdhKBac0MlKDwi2GrEEXc5sPh6dXQDakpIs29jF3zBtYql1Ry9oNeoMKaoZZ9TyK5mfPTF9cwbEGVgXOUsm-REHR-ndWuwmERq2dSTydR0Ibjb3wxSZOb4MTKzA4Xe0CpuAaCwsIhR9wyI9D8Y4K96Sy4o0bHzddyV_12XrwEEQMRJY9VWoMTbaoBBPB8Q";

/// `GET path` with `Host: example.test` and `headers`.
fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut request = Request::get(path).header("host", "example.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(full("")).unwrap()
}

/// Routes `/hs` (HS256), `/es` (ES256) and `/rs` (RS256) to `backend`, each through its own
/// jwt-auth plugin.
fn jwt_config(backend: &Backend) -> String {
    let wasm = plugin_wasm("jwt_auth");
    let wasm = wasm.display();
    format!(
        r#"{LISTENER}
[[plugin]]
name = "jwt-hs"
path = "{wasm}"
[plugin.config]
secret = "{SECRET}"
claims_to_headers = {{ sub = "x-user", scope = "x-scope", admin = "x-admin" }}

[[plugin]]
name = "jwt-es"
path = "{wasm}"
[plugin.config]
public_key = """
{EC_PUBLIC_KEY}
"""
algorithms = ["ES256"]
claims_to_headers = {{ sub = "x-user" }}

[[plugin]]
name = "jwt-rs"
path = "{wasm}"
[plugin.config]
public_key = """
{RSA_PUBLIC_KEY}
"""
claims_to_headers = {{ sub = "x-user" }}
context_claim = ""

[[upstream]]
name = "api"
backends = ["{addr}"]

[[route]]
name = "hs"
path_prefix = "/hs"
upstream = "api"
plugins = ["jwt-hs"]

[[route]]
name = "es"
path_prefix = "/es"
upstream = "api"
plugins = ["jwt-es"]

[[route]]
name = "rs"
path_prefix = "/rs"
upstream = "api"
plugins = ["jwt-rs"]
"#,
        addr = backend.addr
    )
}

/// Asserts the 401 of jwt-auth: `error` is the WWW-Authenticate error code, if any.
fn assert_unauthorized(reply: &Reply, error: Option<&str>, body: &str) {
    assert_eq!(reply.status, 401, "{reply:?}");
    let challenge = match error {
        Some(code) => format!(r#"Bearer realm="sluice", error="{code}""#),
        None => r#"Bearer realm="sluice""#.to_string(),
    };
    assert_eq!(reply.headers["www-authenticate"], challenge.as_str());
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.body, body);
}

#[tokio::test]
async fn jwt_auth_admits_valid_tokens_and_turns_their_claims_into_headers() {
    let backend = Backend::named("api").await;
    let gateway = Gateway::start(&jwt_config(&backend));
    let mut client = Client::connect(gateway.addr()).await;

    let reply = client.send(get_with("/hs/me", &[])).await;
    assert_unauthorized(&reply, None, r#"{"error":"missing token"}"#);

    let bearer = format!("Bearer {HS256_VALID}");
    let reply = client.send(get_with("/hs/me", &[("authorization", &bearer), ("x-admin", "spoofed")])).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "api"));
    let seen = backend.last();
    assert_eq!(seen.uri, "/hs/me");
    assert_eq!(seen.headers["x-user"], "ada");
    assert_eq!(seen.headers["x-scope"], "read write");
    assert_eq!(seen.headers["x-admin"], "true", "the claim, not the client's header");
    assert!(!seen.headers.contains_key("authorization"), "the token is not forwarded");

    for token in [HS256_EXPIRED, HS256_BAD_SIGNATURE, ES256_VALID, "not.a.jwt"] {
        let bearer = format!("Bearer {token}");
        let reply = client.send(get_with("/hs/me", &[("authorization", &bearer)])).await;
        assert_unauthorized(&reply, Some("invalid_token"), r#"{"error":"invalid token"}"#);
    }
    assert_eq!(backend.seen().len(), 1, "only the valid token reached the backend");
}

#[tokio::test]
async fn jwt_auth_verifies_es256_and_rs256_tokens_with_a_public_key() {
    let backend = Backend::named("api").await;
    let gateway = Gateway::start(&jwt_config(&backend));
    let mut client = Client::connect(gateway.addr()).await;

    for (path, token) in [("/es/me", ES256_VALID), ("/rs/me", RS256_VALID)] {
        let bearer = format!("Bearer {token}");
        let reply = client.send(get_with(path, &[("authorization", &bearer)])).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "api"), "{path}");
        assert_eq!(backend.last().headers["x-user"], "grace");
    }

    // Each route takes only its own algorithm: no HS256 token (even one valid on /hs), and no
    // token of the other key type.
    for (path, token) in
        [("/es/me", HS256_VALID), ("/rs/me", HS256_VALID), ("/es/me", RS256_VALID), ("/rs/me", ES256_VALID)]
    {
        let bearer = format!("Bearer {token}");
        let reply = client.send(get_with(path, &[("authorization", &bearer)])).await;
        assert_unauthorized(&reply, Some("invalid_token"), r#"{"error":"invalid token"}"#);
    }
}

/// Zones `stable` and `canary`, two backends each, split 50/50 by the canary plugin, which is
/// both in the route's plugins and the upstream's balancer.
struct Canary {
    gateway: Gateway,
    _backends: Vec<Backend>,
}

impl Canary {
    async fn start() -> Canary {
        let (mut backends, mut list) = (Vec::new(), Vec::new());
        for name in ["stable-1", "stable-2", "canary-1", "canary-2"] {
            let backend = Backend::named(name).await;
            let zone = name.split('-').next().unwrap();
            list.push(format!(r#"{{ address = "{}", zone = "{zone}" }}"#, backend.addr));
            backends.push(backend);
        }
        let config = format!(
            r#"{LISTENER}
[[plugin]]
name = "canary"
path = "{wasm}"
[plugin.config]
weights = {{ stable = 50, canary = 50 }}

[[upstream]]
name = "app"
balance = {{ plugin = "canary" }}
backends = [{list}]

[[route]]
name = "app"
upstream = "app"
plugins = ["canary"]
"#,
            wasm = plugin_wasm("canary_balancer").display(),
            list = list.join(", ")
        );
        Canary { gateway: Gateway::start(&config), _backends: backends }
    }
}

/// The group (zone) of the backend that answered: `stable-2` → `stable`.
fn group_of(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body.split('-').next().unwrap()
}

#[tokio::test]
async fn canary_pins_by_header_and_cookie_keep_requests_in_their_group() {
    let canary = Canary::start().await;
    let mut client = Client::connect(canary.gateway.addr()).await;
    for (pin, group) in [
        (("x-canary-group", "canary"), "canary"),
        (("x-canary-group", "stable"), "stable"),
        (("cookie", "theme=dark; canary_group=canary"), "canary"),
        (("cookie", "canary_group=stable"), "stable"),
    ] {
        let mut backends = HashMap::new();
        for _ in 0..30 {
            let reply = client.send(get_with("/", &[pin])).await;
            assert_eq!(group_of(&reply), group, "{pin:?}");
            assert!(!reply.headers.contains_key("set-cookie"), "a pinned request gets no new pin");
            *backends.entry(reply.body).or_insert(0) += 1;
        }
        assert_eq!(backends.len(), 2, "both backends of the group serve it: {backends:?}");
    }
}

#[tokio::test]
async fn canary_pins_a_drawn_group_with_a_cookie_and_uses_both_groups() {
    let canary = Canary::start().await;
    let mut client = Client::connect(canary.gateway.addr()).await;

    let first = client.send(get_with("/", &[])).await;
    let group = group_of(&first).to_string();
    let set_cookie = first.headers["set-cookie"].to_str().unwrap();
    assert_eq!(set_cookie, format!("canary_group={group}; Path=/; HttpOnly; SameSite=Lax"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    for _ in 0..20 {
        let reply = client.send(get_with("/", &[("cookie", &cookie)])).await;
        assert_eq!(group_of(&reply), group, "the cookie keeps the client in its group");
    }

    let mut groups: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let reply = client.send(get_with("/", &[])).await;
        let group = group_of(&reply).to_string();
        let set_cookie = reply.headers["set-cookie"].to_str().unwrap();
        assert_eq!(set_cookie, format!("canary_group={group}; Path=/; HttpOnly; SameSite=Lax"));
        *groups.entry(group).or_insert(0) += 1;
    }
    for group in ["stable", "canary"] {
        let count = groups.get(group).copied().unwrap_or(0);
        assert!(count >= 40, "a 50/50 split sends at least 20% of 200 requests to {group}: {groups:?}");
    }
}
