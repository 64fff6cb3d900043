//! The forwarding rules: what a request and a response look like on the other side of the gateway.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1, and any header the `Connection` header names) describe one
//! connection and are dropped at each hop; the gateway tells the backend who the client was
//! (`X-Forwarded-*`) and gives every request an `x-request-id` so one request can be followed
//! through every log. The client address is the TCP peer unless that peer is a trusted proxy,
//! in which case it comes from `X-Forwarded-For`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::net::Cidr;

/// The request id header, added when the client sent none.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers removed in both directions (besides those named in `Connection`).
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// Whether the request asks to switch protocols (a WebSocket handshake, say).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether a `Connection` header of `headers` names `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes hop-by-hop headers; an upgrade keeps its `Upgrade` header and `Connection: upgrade`.
/// `TE: trailers` survives, since gRPC backends require it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none, and most others only `Connection: keep-alive` (every nginx
    // response does). Each removal hashes its name, so one pass over the names finds which are
    // there, and only those are removed.
    let hop = hop_by_hop();
    let mut present = 0u8;
    let mut connection = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if let Some(i) = hop.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if connection {
        remove_connection(headers, upgrade, &hop);
    }
    if present == 0 {
        return;
    }
    let te_trailers = headers.get(header::TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade_to = if upgrade { headers.remove(header::UPGRADE) } else { None };
    for (i, name) in hop.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade_to {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes `Connection` and the headers it names; the hop-by-hop ones among them are left to the
/// caller, which removes them anyway (most messages name only those: `keep-alive`, `close`).
fn remove_connection(headers: &mut HeaderMap, upgrade: bool, hop: &[&HeaderName]) {
    let kept = |name: &[u8]| upgrade && name.eq_ignore_ascii_case(b"upgrade");
    let names_others = connection_tokens(headers)
        .any(|name| !kept(name) && !hop.iter().any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name)));
    if names_others {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|name| !kept(name))
            .filter_map(|name| HeaderName::from_bytes(name).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    headers.remove(header::CONNECTION);
}

/// The names a message's `Connection` headers list, trimmed.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).iter().flat_map(|v| list_elements(v.as_bytes()))
}

/// The elements of a comma-separated header value (`Connection: close, x-a`), trimmed; empty
/// ones skipped.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|element| !element.is_empty())
}

/// Adds `peer` (an address as text) to the end of `X-Forwarded-For`.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) => {
            HeaderValue::from_bytes(&[previous.as_bytes(), b", ", peer.as_bytes()].concat()).unwrap_or(peer.clone())
        }
        None => peer.clone(),
    };
    headers.insert(&X_FORWARDED_FOR, xff);
}

/// What a forward proxy tells the target about the client (hop-by-hop headers, Proxy-Authorization
/// among them, already removed): `X-Forwarded-For` and `Via: 1.1 sluice` added, or, when
/// `anonymous`, every header that identifies the client or a proxy on the way removed.
pub fn identify_client(headers: &mut HeaderMap, peer: &HeaderValue, anonymous: bool) {
    if anonymous {
        for name in [&header::FORWARDED, &X_FORWARDED_FOR, &header::VIA] {
            headers.remove(name);
        }
    } else {
        append_forwarded_for(headers, peer);
        headers.append(header::VIA, HeaderValue::from_static("1.1 sluice"));
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most address of
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if is_trusted(ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

/// What the backend is told about the client.
pub struct Forwarded<'a> {
    /// The TCP peer's address as text (appended to `X-Forwarded-For`).
    pub peer: &'a HeaderValue,
    /// Whether the peer is a trusted proxy whose `X-Forwarded-Proto` and `-Host` stand.
    pub peer_trusted: bool,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The Host the client asked for.
    pub host: Option<&'a HeaderValue>,
}

/// Applies the forwarding rules to a request's headers on its way to a backend.
pub fn prepare_request(headers: &mut HeaderMap, upgrade: bool, forwarded: &Forwarded<'_>) {
    remove_hop_by_hop(headers, upgrade);
    append_forwarded_for(headers, forwarded.peer);
    if !(forwarded.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(forwarded.scheme));
    }
    if let Some(host) = forwarded.host
        && !(forwarded.peer_trusted && headers.contains_key(&X_FORWARDED_HOST))
    {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(&X_REQUEST_ID, new_request_id());
    }
}

/// 32 random hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let random = fastrand::u128(..);
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = HEX[((random >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn drops_hop_by_hop_headers_and_those_named_in_connection() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn drops_connection_and_only_what_it_names() {
        let mut h = headers(&[("connection", "close"), ("te", "trailers"), ("server", "nginx")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        assert_eq!(h["te"], "trailers");
        let mut h = headers(&[("connection", "Keep-Alive"), ("server", "nginx")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["server"], "nginx");
        // A client that sends TE must name it in Connection (RFC 9110 §10.1.4): `trailers` stays.
        let mut h = headers(&[("connection", "TE"), ("te", "trailers")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn keeps_upgrade_and_te_trailers() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("te", "trailers")]);
        assert!(is_upgrade_request(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn client_ip_trusts_only_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.5, 10.0.0.9")]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_ip(proxy, &h, &trusted), "203.0.113.5".parse::<IpAddr>().unwrap());
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
    }

    #[test]
    fn request_gets_forwarding_headers() {
        let mut h = headers(&[("x-forwarded-for", "192.0.2.9"), ("x-forwarded-proto", "https")]);
        let host = HeaderValue::from_static("api.example.com");
        let peer = HeaderValue::from_static("127.0.0.1");
        let forwarded = Forwarded { peer: &peer, peer_trusted: false, scheme: "http", host: Some(&host) };
        prepare_request(&mut h, false, &forwarded);
        assert_eq!(h["x-forwarded-for"], "192.0.2.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-request-id"].len(), 32);
    }
}
