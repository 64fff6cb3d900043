//! Unit tests through the SDK's fake host.
//!
//! The RSA and EC keys below are test keys made once with openssl; the RS256 and ES256 tokens
//! were signed offline with their private keys (not kept), e.g.
//! `printf %s "$header.$claims" | openssl dgst -sha256 -sign rsa.key | base64url`, the ES256
//! signature converted from DER to the JWS `r || s` form. HS256 tokens are signed here.
//!
//! The fake clock starts at `testing::START_MS` = 1 700 000 000 s; the signed tokens carry
//! `exp` = START + 3600 and `nbf` = START − 3600.

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_sdk::testing;
use sluice_sdk::{HeaderOp, Reply};

use super::*;

/// RSA 2048, SPKI.
const RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA03CyPBOM5EGjBr65GFqF
dx/I0clNxwhrLsMuBwdPUPnYaOrISqXdE/SKZiht9MikmoIFGkxfzdcIyPeUXq/X
xTD4To92zwTrnSzsgk6SoTQfIwZWonm4ATccQKT6LwdpctomjSUhusSgXVA8LLm8
+10fHCX4gItB40aUT/1xb+hv5HoTe+0y0SZOOfpzJLFIWantqJI96+/6P87vDIer
omJuWS5Q8sLco2jM8YeJHYwQwd9XQiBgqLWb05ISqEHZW9V8XqdO8cV6Np3fKnHx
6A3M/PtRTIpJ1ZlCEtfUga1/QXRKZptLyEdu37ko/J61n/wEncYJL13LX+tar2R0
dQIDAQAB
-----END PUBLIC KEY-----
";

/// The same RSA key, PKCS#1.
const RSA_PUBLIC_KEY_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEA03CyPBOM5EGjBr65GFqFdx/I0clNxwhrLsMuBwdPUPnYaOrISqXd
E/SKZiht9MikmoIFGkxfzdcIyPeUXq/XxTD4To92zwTrnSzsgk6SoTQfIwZWonm4
ATccQKT6LwdpctomjSUhusSgXVA8LLm8+10fHCX4gItB40aUT/1xb+hv5HoTe+0y
0SZOOfpzJLFIWantqJI96+/6P87vDIeromJuWS5Q8sLco2jM8YeJHYwQwd9XQiBg
qLWb05ISqEHZW9V8XqdO8cV6Np3fKnHx6A3M/PtRTIpJ1ZlCEtfUga1/QXRKZptL
yEdu37ko/J61n/wEncYJL13LX+tar2R0dQIDAQAB
-----END RSA PUBLIC KEY-----
";

/// EC P-256, SPKI.
const EC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAER8sPscDRpi0LWYrqkHpyr0ce5CxQ
/wK9o2bdqBqVKN/HrzbExKtOLdPyDEHke4Xo/ypVFd93W/6rFKE34pQybw==
-----END PUBLIC KEY-----
";

/// EC P-384: not supported (ES384).
const P384_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEmKIem9w7H71guhTtWf1Ke41EMLQVI6Ac
W76by3AwS54bxbbuJvqopZM639ej8//2oRHLYYqVkwunTbT0JrdYSgh1/xGsAsaW
AQXcRTLRt5bRHEJDgymjHMuUgN6Zcuk0
-----END PUBLIC KEY-----
";

/// RSA 1024: too small.
const RSA_1024_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC7B4jwgpfjD4TcmJfoLiwmlh1S
wWYYLFmH9D4k5GJI7KUHAC9ulubrQB+Yojlc1gt32/yHfP3L1DV5/b10FGqXKUti
acgSU67j4CLCWVwnYoR3v18Msjj/7B6SpwOviYiXgkA5t8rdvv9dJqc782mnF1Cv
r8WnwSwH8QREVKKffQIDAQAB
-----END PUBLIC KEY-----
";

/// The claims of both signed tokens.
const SIGNED_CLAIMS: &str = r#"{"sub":"ada","scope":"read write","iss":"https://issuer.test","aud":["sluice","other"],"exp":1700003600,"nbf":1699996400}"#;

/// `SIGNED_CLAIMS` signed with the RSA key (RS256).
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJzY29wZSI6InJlYWQgd3JpdGUiLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjpbInNsdWljZSIsIm90aGVyIl0sImV4cCI6MTcwMDAwMzYwMCwibmJmIjoxNjk5OTk2NDAwfQ.VhSjUlprGOy1wLD_MuUopjlZ6m5rcSQPutYBVwmBOJMpd5Quy1f-gqr0i-DC4AT5_QkL2AB-tRlniENLezRfo2MfgS8j9NLCsiZMTFdWHYLqgTl9BE94dE44JkLL5w57EeEpaPllCnhXx8k14VmoWC3u2EO_DtVeiAlVP-EuULkwQgj9P_lmsW46way4mKIZ-1GYo3PbIyYi69gtBK9xV4YZkMjFrCwpYXYe8wgmOsTvVzzoZ4JpbvF5rHkNFgt6pFve_cCSO2_4OJIY-_DK50x8_NMdpo7cybHXptdi1kGKXnxzD9N_8ZSbKIvCYTWJUlMrgZUbbYDoPhAqUV0Khg";

/// `SIGNED_CLAIMS` signed with the EC key (ES256).
const ES256_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJzY29wZSI6InJlYWQgd3JpdGUiLCJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjpbInNsdWljZSIsIm90aGVyIl0sImV4cCI6MTcwMDAwMzYwMCwibmJmIjoxNjk5OTk2NDAwfQ.LQ7rRlxK6bkMWdaTJZte3-WFlTC3vIB0MuTmyq8DiGUoBEvymj86et8kioRzs3bDhjj-9oVy9cTkkRTmS5Wf7Q";

const SECRET: &str = "unit-test-secret-of-32-bytes-ok!";

/// The fake clock's start, in seconds.
const NOW: u64 = testing::START_MS / 1000;

fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// An HS256 token over this header and these claims (both JSON text), signed with `secret`.
fn hs256_with(secret: &[u8], header: &str, claims: &str) -> String {
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", b64(&mac.finalize().into_bytes()))
}

/// An HS256 token with these claims, signed with `SECRET`.
fn hs256(claims: &str) -> String {
    hs256_with(SECRET.as_bytes(), r#"{"alg":"HS256","typ":"JWT"}"#, claims)
}

fn plugin(config: serde_json::Value) -> JwtAuth {
    match testing::init(&config.to_string()) {
        Ok(plugin) => plugin,
        Err(e) => panic!("valid config refused: {e}"),
    }
}

fn init_error(config: serde_json::Value) -> String {
    testing::init::<JwtAuth>(&config.to_string()).err().expect("the config should be refused")
}

fn hs_plugin() -> JwtAuth {
    plugin(serde_json::json!({ "secret": SECRET }))
}

fn rs_plugin() -> JwtAuth {
    plugin(serde_json::json!({ "public_key": RSA_PUBLIC_KEY }))
}

fn es_plugin() -> JwtAuth {
    plugin(serde_json::json!({ "public_key": EC_PUBLIC_KEY }))
}

/// A request bearing `token`.
fn with_token(token: &str) -> Request {
    testing::request("GET", "/api").header("authorization", &format!("Bearer {token}")).build()
}

/// Runs on_request on a request bearing `token`; the request after the hook and the reply, if any.
fn run(plugin: &mut JwtAuth, token: &str) -> (Request, Option<Reply>) {
    let mut req = with_token(token);
    let action = plugin.on_request(&mut req);
    let reply = action.reply().cloned();
    assert!(reply.is_some() || action.is_continue(), "{action:?}");
    (req, reply)
}

fn accepted(plugin: &mut JwtAuth, token: &str) -> bool {
    run(plugin, token).1.is_none()
}

/// Asserts that `token` gets the invalid-token 401, and returns the reason logged.
fn assert_invalid(plugin: &mut JwtAuth, token: &str) -> String {
    let now = host::now_ms();
    testing::reset(); // to clear the logs; keep the clock
    testing::set_now_ms(now);
    let (_, reply) = run(plugin, token);
    let reply = reply.unwrap_or_else(|| panic!("accepted: {token}"));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.get_header("www-authenticate"), Some(r#"Bearer realm="sluice", error="invalid_token""#));
    assert_eq!(reply.get_header("content-type"), Some("application/json"));
    assert_eq!(reply.body_str(), Some(r#"{"error":"invalid token"}"#));
    let logs = testing::logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].0, host::Level::Debug);
    logs[0].1.clone()
}

#[test]
fn a_valid_hs256_token_passes_and_the_authorization_header_is_removed() {
    let mut auth = hs_plugin();
    let (req, reply) = run(&mut auth, &hs256(r#"{"sub":"ada"}"#));
    assert_eq!(reply, None);
    assert_eq!(req.header_str("authorization"), None);
    assert_eq!(req.context(CONSUMER_KEY), Some("ada"), "context_claim defaults to sub");
    assert_eq!(req.changes().headers, [HeaderOp::Remove("authorization".into())]);
}

#[test]
fn valid_rs256_and_es256_tokens_pass() {
    assert!(accepted(&mut rs_plugin(), RS256_TOKEN));
    assert!(accepted(&mut es_plugin(), ES256_TOKEN));
    let mut pkcs1 = plugin(serde_json::json!({ "public_key": RSA_PUBLIC_KEY_PKCS1, "algorithms": ["RS256"] }));
    assert!(accepted(&mut pkcs1, RS256_TOKEN), "a PKCS#1 RSA key works too");
}

#[test]
fn the_signed_tokens_pass_every_claim_check() {
    let config = |key: &str| serde_json::json!({ "public_key": key, "issuer": "https://issuer.test", "audience": "sluice", "leeway_s": 0 });
    assert!(accepted(&mut plugin(config(RSA_PUBLIC_KEY)), RS256_TOKEN));
    assert!(accepted(&mut plugin(config(EC_PUBLIC_KEY)), ES256_TOKEN));
    let claims: serde_json::Value = serde_json::from_str(SIGNED_CLAIMS).unwrap();
    assert_eq!(claims["exp"], NOW + 3600);
}

#[test]
fn a_bad_signature_fails() {
    let reason = assert_invalid(&mut hs_plugin(), &hs256_with(&[7; 32], r#"{"alg":"HS256"}"#, r#"{"sub":"ada"}"#));
    assert!(reason.contains("bad HS256 signature"), "{reason}");

    // The RS256 signature over other claims: an attacker swapping the payload.
    let [header, _, signature] = parts(RS256_TOKEN);
    let forged = format!("{header}.{}.{signature}", b64(br#"{"sub":"admin"}"#));
    assert!(assert_invalid(&mut rs_plugin(), &forged).contains("bad RS256 signature"));

    // The ES256 signature with one byte changed, and the RS256 key's token for the EC plugin.
    let [header, payload, signature] = parts(ES256_TOKEN);
    let mut bytes = Base64UrlUnpadded::decode_vec(signature).unwrap();
    bytes[10] ^= 1;
    assert!(assert_invalid(&mut es_plugin(), &format!("{header}.{payload}.{}", b64(&bytes))).contains("bad ES256"));
    assert!(assert_invalid(&mut es_plugin(), &format!("{header}.{payload}.{}", b64(&[0; 64]))).contains("bad ES256"));
    assert!(assert_invalid(&mut rs_plugin(), &format!("{header}.{payload}.{}", b64(&[1; 256]))).contains("alg"));
}

fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    [parts[0], parts[1], parts[2]]
}

#[test]
fn expired_tokens_fail_after_the_leeway() {
    let token = hs256(&format!(r#"{{"sub":"ada","exp":{NOW}}}"#));
    let mut auth = hs_plugin();
    testing::reset();
    testing::advance_ms(29_999);
    assert!(accepted(&mut auth, &token), "within the default 30 s leeway");
    testing::advance_ms(1);
    assert!(assert_invalid(&mut auth, &token).contains("expired"));

    let mut strict = plugin(serde_json::json!({ "secret": SECRET, "leeway_s": 0 }));
    testing::set_now_ms(testing::START_MS - 1);
    assert!(accepted(&mut strict, &token));
    testing::set_now_ms(testing::START_MS);
    assert!(assert_invalid(&mut strict, &token).contains("expired"), "exp is the first instant it is invalid");

    // The signed tokens expire an hour after the start; fractional dates count too.
    testing::set_now_ms((NOW + 3600 + 30) * 1000);
    assert!(!accepted(&mut rs_plugin(), RS256_TOKEN));
    let fractional = hs256(&format!(r#"{{"exp":{}.5}}"#, NOW - 30));
    testing::set_now_ms(testing::START_MS);
    assert!(accepted(&mut auth, &fractional));
}

#[test]
fn tokens_that_are_not_valid_yet_fail_before_the_leeway() {
    let token = hs256(&format!(r#"{{"sub":"ada","nbf":{}}}"#, NOW + 60));
    let mut auth = hs_plugin();
    testing::reset();
    assert!(assert_invalid(&mut auth, &token).contains("not valid yet"));
    testing::set_now_ms((NOW + 29) * 1000);
    assert!(!accepted(&mut auth, &token));
    testing::set_now_ms((NOW + 30) * 1000);
    assert!(accepted(&mut auth, &token), "30 s early is within the leeway");
}

#[test]
fn the_issuer_must_match() {
    let mut auth = plugin(serde_json::json!({ "secret": SECRET, "issuer": "https://issuer.test" }));
    assert!(accepted(&mut auth, &hs256(r#"{"iss":"https://issuer.test"}"#)));
    for claims in [r#"{"iss":"https://evil.test"}"#, r#"{"iss":["https://issuer.test"]}"#, r#"{"sub":"ada"}"#] {
        assert!(assert_invalid(&mut auth, &hs256(claims)).contains("iss"), "{claims}");
    }
    let mut rs = plugin(serde_json::json!({ "public_key": RSA_PUBLIC_KEY, "issuer": "https://other.test" }));
    assert!(!accepted(&mut rs, RS256_TOKEN));
}

#[test]
fn the_audience_must_be_listed() {
    let mut auth = plugin(serde_json::json!({ "secret": SECRET, "audience": "sluice" }));
    assert!(accepted(&mut auth, &hs256(r#"{"aud":"sluice"}"#)));
    assert!(accepted(&mut auth, &hs256(r#"{"aud":["other","sluice"]}"#)));
    for claims in [r#"{"aud":"other"}"#, r#"{"aud":["a","b"]}"#, r#"{"aud":[]}"#, r#"{"aud":7}"#, "{}"] {
        assert!(assert_invalid(&mut auth, &hs256(claims)).contains("aud"), "{claims}");
    }
    let mut es = plugin(serde_json::json!({ "public_key": EC_PUBLIC_KEY, "audience": "billing" }));
    assert!(!accepted(&mut es, ES256_TOKEN));
}

#[test]
fn alg_none_is_never_accepted() {
    let claims = b64(br#"{"sub":"admin"}"#);
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"None"}"#, r#"{"alg":"NONE"}"#, r#"{"typ":"JWT"}"#] {
        let token = format!("{}.{claims}.", b64(header.as_bytes()));
        assert_invalid(&mut hs_plugin(), &token);
        assert_invalid(&mut rs_plugin(), &token);
    }
    let error = init_error(serde_json::json!({ "secret": SECRET, "algorithms": ["HS256", "none"] }));
    assert_eq!(error, "jwt-auth: algorithm \"none\" (unsigned tokens) is never allowed");
}

#[test]
fn an_hs256_token_signed_with_the_public_key_does_not_pass_an_rs256_plugin() {
    // The classic confusion attack: the public key, which everyone has, used as an HMAC secret.
    let mut auth = rs_plugin();
    for secret in [RSA_PUBLIC_KEY, RSA_PUBLIC_KEY.trim()] {
        let token = hs256_with(secret.as_bytes(), r#"{"alg":"HS256","typ":"JWT"}"#, SIGNED_CLAIMS);
        assert!(assert_invalid(&mut auth, &token).contains(r#"alg "HS256" is not allowed"#));
    }
    // Nor does a token of another asymmetric algorithm.
    assert!(assert_invalid(&mut auth, ES256_TOKEN).contains(r#"alg "ES256" is not allowed"#));
    assert!(assert_invalid(&mut es_plugin(), RS256_TOKEN).contains(r#"alg "RS256" is not allowed"#));
}

#[test]
fn malformed_tokens_fail() {
    let good_header = b64(br#"{"alg":"HS256"}"#);
    let cases = [
        ("garbage", "three"),
        ("a.b", "three"),
        ("a.b.c.d", "three"),
        ("..", "header: not a JSON object"),
        ("!!!.e30.AAAA", "header: not base64url"),
        (&format!("{}.e30.AAAA", b64(b"{not json")), "header: not a JSON object"),
        (&format!("{}.e30.AAAA", b64(b"[1,2]")), "header: not a JSON object"),
        (&format!("{}.e30.AAAA", b64(br#"{"alg":256}"#)), "no alg"),
        (&format!("{good_header}.e30.not*base64"), "signature is not base64url"),
        (&hs256_with(SECRET.as_bytes(), r#"{"alg":"HS256","crit":["exp"]}"#, "{}"), "crit"),
        (&hs256("not json"), "claims: not a JSON object"),
        (&hs256(r#""a string""#), "claims: not a JSON object"),
        (&hs256(r#"{"exp":"tomorrow"}"#), "exp is not a number"),
        (&hs256(r#"{"nbf":null}"#), "nbf is not a number"),
    ];
    let mut auth = hs_plugin();
    for (token, reason) in cases {
        let logged = assert_invalid(&mut auth, token);
        assert!(logged.contains(reason), "{token}: logged {logged:?}, expected {reason:?}");
    }
    // Padding and non-canonical base64 are refused rather than tolerated.
    let token = hs256(r#"{"sub":"ada"}"#);
    assert!(!accepted(&mut auth, &format!("{token}=")));
    // 32 signature bytes take 43 characters, the last of which carries 2 unused bits: setting
    // one gives the same bytes in a non-canonical spelling.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = ALPHABET.iter().position(|&c| c == *token.as_bytes().last().unwrap()).unwrap();
    let respelt = format!("{}{}", &token[..token.len() - 1], ALPHABET[last ^ 1] as char);
    assert!(assert_invalid(&mut auth, &respelt).contains("signature is not base64url"));
}

#[test]
fn no_prefix_of_a_valid_token_passes_and_nothing_panics() {
    for (mut auth, token) in
        [(hs_plugin(), hs256(r#"{"sub":"ada"}"#)), (rs_plugin(), RS256_TOKEN.into()), (es_plugin(), ES256_TOKEN.into())]
    {
        for end in 0..token.len() {
            assert!(!accepted(&mut auth, &token[..end]), "{}", &token[..end]);
        }
        assert!(accepted(&mut auth, &token));
        for odd in ["\u{0}", "é", "Bearer", ".", "..", "...", "\u{1F600}.\u{1F600}.\u{1F600}"] {
            assert!(!accepted(&mut auth, &format!("{token}{odd}")));
        }
    }
}

#[test]
fn a_missing_token_gets_a_challenge_without_an_error_code() {
    let mut auth = hs_plugin();
    let token = hs256(r#"{"sub":"ada"}"#);
    let requests = [
        testing::request("GET", "/").build(),
        testing::request("GET", "/").header("authorization", "Basic YWRhOnNlY3JldA==").build(),
        testing::request("GET", "/").header("authorization", "Bearer ").build(),
        testing::request("GET", "/").header("authorization", "Bearer").build(),
        testing::request("GET", "/").header("authorization", &token).build(),
        testing::request("GET", "/").header("x-token", &format!("Bearer {token}")).build(),
    ];
    for mut req in requests {
        testing::reset();
        let reply = auth.on_request(&mut req).reply().cloned().expect("a 401");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.get_header("www-authenticate"), Some(r#"Bearer realm="sluice""#));
        assert_eq!(reply.body_str(), Some(r#"{"error":"missing token"}"#));
        assert_eq!(testing::logs(), [(host::Level::Debug, "request rejected: no bearer token".to_string())]);
    }
    // The scheme is case-insensitive and spaces around the token do not matter.
    let mut req = testing::request("GET", "/").header("authorization", &format!("  bEaReR   {token} ")).build();
    assert!(auth.on_request(&mut req).is_continue());
}

#[test]
fn claims_become_headers_and_unbacked_headers_are_removed() {
    let mut auth = plugin(serde_json::json!({
        "secret": SECRET,
        "claims_to_headers": {
            "sub": "X-User", "scope": "x-scope", "n": "x-n", "admin": "x-admin",
            "roles": "x-roles", "org": "x-org", "gone": "x-gone", "nothing": "x-nothing", "evil": "x-evil",
        },
    }));
    let token = hs256(
        r#"{"sub":"ada","scope":"read write","n":42.5,"admin":true,"roles":["a","b"],"org":{"id":7},"nothing":null,"evil":"a\r\nx-injected: 1"}"#,
    );
    let mut req = testing::request("GET", "/")
        .header("authorization", &format!("Bearer {token}"))
        .header("x-gone", "spoofed by the client")
        .header("x-nothing", "spoofed")
        .header("x-evil", "spoofed")
        .build();
    testing::reset();
    assert!(auth.on_request(&mut req).is_continue());
    assert_eq!(req.header_str("x-user"), Some("ada"));
    assert_eq!(req.header_str("x-scope"), Some("read write"));
    assert_eq!(req.header_str("x-n"), Some("42.5"));
    assert_eq!(req.header_str("x-admin"), Some("true"));
    assert_eq!(req.header_str("x-roles"), Some(r#"["a","b"]"#));
    assert_eq!(req.header_str("x-org"), Some(r#"{"id":7}"#));
    for removed in ["x-gone", "x-nothing", "x-evil", "authorization"] {
        assert_eq!(req.header_str(removed), None, "{removed}");
    }
    assert_eq!(testing::logs(), [(host::Level::Warn, r#"claim "evil" has control characters; not forwarded"#.into())]);
}

#[test]
fn the_context_claim_is_configurable_and_can_be_turned_off() {
    let token = hs256(r#"{"sub":"ada","client_id":12}"#);
    let (req, _) = run(&mut plugin(serde_json::json!({ "secret": SECRET, "context_claim": "client_id" })), &token);
    assert_eq!(req.context(CONSUMER_KEY), Some("12"));
    let (req, _) = run(&mut plugin(serde_json::json!({ "secret": SECRET, "context_claim": "" })), &token);
    assert_eq!(req.context(CONSUMER_KEY), None);
    let (req, _) = run(&mut hs_plugin(), &hs256(r#"{"iss":"no subject"}"#));
    assert_eq!(req.context(CONSUMER_KEY), None);
}

#[test]
fn the_token_header_is_configurable_and_may_be_forwarded() {
    let token = hs256(r#"{"sub":"ada"}"#);
    let mut auth = plugin(serde_json::json!({ "secret": SECRET, "header": "X-Token", "forward_token": true }));
    let mut req = testing::request("GET", "/").header("x-token", &format!("Bearer {token}")).build();
    assert!(auth.on_request(&mut req).is_continue());
    assert_eq!(req.header("x-token"), Some(format!("Bearer {token}")));
    assert!(req.changes().headers.is_empty());
}

#[test]
fn invalid_configs_are_refused_with_a_clear_message() {
    use serde_json::json;
    let cases = [
        (json!({}), "jwt-auth: a key is required: secret (HS256) or public_key (RS256, ES256)"),
        (
            json!({ "secret": SECRET, "public_key": EC_PUBLIC_KEY }),
            "jwt-auth: give either secret (HS256) or public_key (RS256, ES256), not both",
        ),
        (json!({ "secret": "short" }), "jwt-auth: secret has 5 bytes; HS256 needs at least 32"),
        (
            json!({ "public_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE" }),
            "jwt-auth: public_key must be a PEM block starting with \"-----BEGIN PUBLIC KEY-----\" (RSA or P-256) \
             or \"-----BEGIN RSA PUBLIC KEY-----\"",
        ),
        (
            json!({ "public_key": P384_PUBLIC_KEY }),
            "jwt-auth: public_key is neither an RSA key of 2048 to 4096 bits (RS256) nor a P-256 key (ES256)",
        ),
        (
            json!({ "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" }),
            "jwt-auth: public_key is neither an RSA key of 2048 to 4096 bits (RS256) nor a P-256 key (ES256)",
        ),
        (
            json!({ "public_key": RSA_1024_PUBLIC_KEY }),
            "jwt-auth: the RSA public_key has 1024 bits; RS256 needs at least 2048",
        ),
        (
            json!({ "secret": SECRET, "algorithms": ["HS512"] }),
            "jwt-auth: unknown algorithm \"HS512\"; supported: HS256, RS256, ES256",
        ),
        (
            json!({ "public_key": RSA_PUBLIC_KEY, "algorithms": ["RS256", "HS256"] }),
            "jwt-auth: algorithm HS256 needs a secret, but the configured key is for RS256",
        ),
        (
            json!({ "secret": SECRET, "algorithms": ["ES256"] }),
            "jwt-auth: algorithm ES256 needs a P-256 public_key, but the configured key is for HS256",
        ),
        (json!({ "secret": SECRET, "algorithms": [] }), "jwt-auth: algorithms is empty; list at least HS256"),
        (
            json!({ "secret": SECRET, "header": "bad header" }),
            "jwt-auth: header \"bad header\" is not a valid header name",
        ),
        (
            json!({ "secret": SECRET, "claims_to_headers": { "sub": "x user" } }),
            "jwt-auth: claims_to_headers.sub = \"x user\" is not a valid header name",
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(init_error(config.clone()), expected, "{config}");
    }
    let unknown = init_error(json!({ "secret": SECRET, "leeway": 5 }));
    assert!(unknown.starts_with("invalid plugin config: unknown field `leeway`"), "{unknown}");
    let wrong_type = init_error(json!({ "secret": SECRET, "leeway_s": -1 }));
    assert!(wrong_type.starts_with("invalid plugin config: invalid value: integer `-1`"), "{wrong_type}");
}
