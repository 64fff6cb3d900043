//! CIDR parsing and the client address taken from `X-Forwarded-For` behind trusted proxies:
//! never panic, and the address found is the peer or one written in the header.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::net::Cidr;

fuzz_target!(|input: (&str, &[u8])| {
    let (cidr, forwarded_for) = input;
    let _ = cidr.parse::<Cidr>();
    let Ok(value) = HeaderValue::from_bytes(forwarded_for) else { return };
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", value);
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
    let client = sluice::forward::client_ip(peer, &headers, &trusted);
    let text = String::from_utf8_lossy(forwarded_for);
    assert!(
        client == peer || text.contains(&client.to_string()) || text.split(',').any(|h| h.trim().parse() == Ok(client))
    );
});
