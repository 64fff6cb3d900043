//! `forward` listeners driven by curl: absolute-form requests, CONNECT tunnels, the port and client
//! policies, anonymity, and the site-blocklist and proxy-auth plugins.

use std::net::SocketAddr;

use crate::support::*;

/// curl through the proxy at `proxy`; prints the status, then the body. Returns (exit code,
/// stdout, stderr).
async fn curl_via(proxy: SocketAddr, args: &[&str], url: &str) -> (i32, String, String) {
    let proxy = format!("http://{proxy}");
    let mut all = vec!["--write-out", "%{http_code}\n", "--proxy", &proxy];
    all.extend_from_slice(args);
    all.push(url);
    curl(&all).await
}

fn forward_listener(name: &str, extra: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"forward\"\n{extra}\n\n")
}

#[tokio::test]
async fn absolute_form_requests_and_connect_tunnels_reach_their_targets() {
    let target = Backend::named("target").await;
    let other = Backend::named("other").await;
    let port = target.addr.port();
    let gateway = Gateway::start(&forward_listener("proxy", &format!("connect_ports = [{port}]")));
    let proxy = gateway.listeners["proxy"];

    let url = format!("http://{}/hello?x=1", target.addr);
    let (code, out, err) = curl_via(proxy, &["-H", "x-forwarded-for: 192.0.2.7"], &url).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
    let seen = target.last();
    assert_eq!(seen.uri, "/hello?x=1");
    assert_eq!(seen.headers["host"], target.addr.to_string());
    assert_eq!(seen.headers["via"], "1.1 sluice");
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert!(!seen.headers.contains_key("proxy-connection"));

    // Two more requests on one client connection (so one worker): one pooled connection serves them.
    let before = target.connections();
    let request = |close: &str| format!("GET http://{0}/again HTTP/1.1\r\nHost: {0}\r\n{close}\r\n", target.addr);
    let (reply, _) =
        raw_exchange(proxy, format!("{}{}", request(""), request("Connection: close\r\n")).as_bytes()).await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    assert!(target.connections() <= before + 1, "the second request reused the first one's connection");

    // CONNECT: the bytes inside the tunnel are the client's own, untouched.
    let (code, out, err) = curl_via(proxy, &["--proxytunnel"], &format!("http://{}/tunnelled", target.addr)).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
    let seen = target.last();
    assert_eq!(seen.uri, "/tunnelled");
    assert!(!seen.headers.contains_key("via"), "a tunnel is opaque: {:?}", seen.headers);

    // A port that is not in connect_ports.
    let before = other.seen().len();
    let (code, _, err) = curl_via(proxy, &["--proxytunnel"], &format!("http://{}/", other.addr)).await;
    assert_ne!(code, 0);
    assert!(err.contains("CONNECT tunnel failed, response 403"), "{err}");
    assert_eq!(other.seen().len(), before);

    // Not a proxy request at all.
    let reply = get(proxy, "example.test", "/").await;
    assert_eq!(reply.status.as_u16(), 400);
    assert!(reply.body.contains("a proxy request needs an absolute URI"), "{}", reply.body);

    // userinfo in the URI (curl would move it to Authorization, so on a raw socket).
    let before = target.seen().len();
    let request =
        format!("GET http://user:secret@{0}/ HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n", target.addr);
    let (reply, _) = raw_exchange(proxy, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.ends_with("{\"error\":\"a proxy request's URI must not carry user:password@\"}"), "{reply}");
    assert_eq!(target.seen().len(), before);
}

#[tokio::test]
async fn plugins_demand_proxy_credentials_and_block_sites_for_requests_and_tunnels() {
    let target = Backend::named("target").await;
    let port = target.addr.port();
    let config = format!(
        "{}[[plugin]]\nname = \"auth\"\npath = \"{}\"\n[plugin.config.users]\nalice = \"s3cret\"\n\n\
         [[plugin]]\nname = \"blocklist\"\npath = \"{}\"\n[plugin.config]\nsuffixes = [\"blocked.test\"]\n",
        forward_listener("proxy", &format!("connect_ports = [{port}]\nplugins = [\"auth\", \"blocklist\"]")),
        plugin_wasm("proxy_auth").display(),
        plugin_wasm("site_blocklist").display(),
    );
    let gateway = Gateway::start(&config);
    let proxy = gateway.listeners["proxy"];
    let url = format!("http://{}/", target.addr);
    let alice = ["--proxy-user", "alice:s3cret", "--include"];

    let (code, out, err) = curl_via(proxy, &["--include"], &url).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 407"), "{out}");
    assert!(out.contains("proxy-authenticate: Basic realm=\"sluice\""), "{out}");
    assert!(out.ends_with("proxy authentication required\n407\n"), "{out}");
    let (_, out, _) = curl_via(proxy, &["--proxy-user", "alice:wrong"], &url).await;
    assert_eq!(out, "proxy credentials rejected\n407\n");

    let (code, out, err) = curl_via(proxy, &alice[..2], &url).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
    assert!(!target.last().headers.contains_key("proxy-authorization"), "credentials are not forwarded");

    let before = target.seen().len();
    let blocked = format!("http://www.blocked.test:{port}/");
    let (_, out, _) = curl_via(proxy, &alice[..2], &blocked).await;
    assert_eq!(out, format!("blocked by policy: www.blocked.test (suffix blocked.test)\n403\n"));
    let (code, _, err) = curl_via(proxy, &["--proxy-user", "alice:s3cret", "--proxytunnel"], &blocked).await;
    assert!(code != 0 && err.contains("CONNECT tunnel failed, response 403"), "{err}");
    let (code, _, err) = curl_via(proxy, &["--proxytunnel"], &url).await;
    assert!(code != 0 && err.contains("CONNECT tunnel failed, response 407"), "{err}");
    let (code, out, err) = curl_via(proxy, &["--proxy-user", "alice:s3cret", "--proxytunnel"], &url).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
    assert_eq!(target.seen().len(), before + 1, "only the allowed tunnel reached the target");
}

/// A proxy that serves clients beyond loopback does not, by default, take them to the gateway's
/// own host: not by address, not by a name that resolves there, not through an IPv4-mapped
/// address, not through a tunnel. `deny_targets` overrides that.
#[tokio::test]
async fn a_proxy_open_to_other_hosts_does_not_reach_loopback_unless_told_to() {
    let target = Backend::named("target").await;
    let port = target.addr.port();
    let open = format!("allow = [\"0.0.0.0/0\", \"::/0\"]\nconnect_ports = [{port}]");
    let config = format!(
        "{}{}",
        forward_listener("open", &open),
        forward_listener("local", &format!("{open}\ndeny_targets = [\"10.0.0.0/8\"]")),
    );
    let gateway = Gateway::start(&config);
    let refused = "{\"error\":\"this proxy does not connect to that address\"}403\n";
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
    ] {
        let (code, out, err) = curl_via(gateway.listeners["open"], &[], &url).await;
        assert_eq!((code, out.as_str()), (0, refused), "{url}: {err}");
    }
    let tunnel = format!("http://127.0.0.1:{port}/");
    let (code, _, err) = curl_via(gateway.listeners["open"], &["--proxytunnel"], &tunnel).await;
    assert_ne!(code, 0);
    assert!(err.contains("CONNECT tunnel failed, response 403"), "{err}");
    assert!(target.seen().is_empty(), "nothing reached the target");

    let (code, out, err) = curl_via(gateway.listeners["local"], &[], &format!("http://127.0.0.1:{port}/")).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
    let (code, out, err) = curl_via(gateway.listeners["local"], &["--proxytunnel"], &tunnel).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
}

#[tokio::test]
async fn clients_outside_the_allow_list_are_refused_and_anonymous_proxies_tell_nothing() {
    let target = Backend::named("target").await;
    let config = format!(
        "{}{}",
        forward_listener("closed", "allow = [\"10.0.0.0/8\"]"),
        forward_listener("anon", "anonymous = true\nallow = [\"127.0.0.1/32\"]"),
    );
    let gateway = Gateway::start(&config);
    let url = format!("http://{}/", target.addr);

    let (code, out, err) = curl_via(gateway.listeners["closed"], &[], &url).await;
    assert_eq!((code, out.as_str()), (0, "{\"error\":\"this proxy does not serve your address\"}403\n"), "{err}");
    assert!(target.seen().is_empty());

    let identifying =
        ["-H", "x-forwarded-for: 192.0.2.7", "-H", "via: 1.0 corp-proxy", "-H", "forwarded: for=192.0.2.7"];
    let (code, out, err) = curl_via(gateway.listeners["anon"], &identifying, &url).await;
    assert_eq!((code, out.as_str()), (0, "target200\n"), "{err}");
    let seen = target.last();
    for name in ["x-forwarded-for", "via", "forwarded", "proxy-authorization"] {
        assert!(!seen.headers.contains_key(name), "{name} reached the target: {:?}", seen.headers);
    }
}
