//! The validated configuration: what the rest of the gateway builds a snapshot from.
//!
//! Every value here has passed validation (names are unique, references resolve, numbers are in
//! range), so the code that consumes it never re-checks. Defaults are applied here, once; each
//! field's doc gives the TOML key and its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::net::Cidr;

/// A whole configuration file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; relative paths inside it are already resolved against its folder.
    pub path: PathBuf,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[[listener]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[[upstream]]`, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[plugin]]`, in file order.
    pub plugins: Vec<PluginConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
}

impl Config {
    /// Every certificate, key and CA bundle the config names.
    pub fn tls_files(&self) -> impl Iterator<Item = &std::path::Path> {
        let listeners = self.listeners.iter().filter_map(|l| match &l.protocol {
            ListenerProtocol::Https(tls) => Some(tls),
            ListenerProtocol::Http | ListenerProtocol::Tcp(_) | ListenerProtocol::Forward(_) => None,
        });
        let served = listeners.flat_map(|tls| {
            let pairs = tls.certificates.iter().flat_map(|c| [c.cert.as_path(), c.key.as_path()]);
            pairs.chain(tls.client_ca.as_deref())
        });
        let upstream = self.upstreams.iter().filter_map(|u| u.tls.as_ref()).flat_map(|tls| {
            let client = tls.client.iter().flat_map(|c| [c.cert.as_path(), c.key.as_path()]);
            client.chain(tls.ca.as_deref())
        });
        served.chain(upstream)
    }
}

/// `[admin]`: where the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `listen = "127.0.0.1:9901"` (the default).
    pub listen: SocketAddr,
    /// `token = "..."`: a bearer token the admin API demands; none by default.
    pub token: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// `format = "text" | "json"`, default `"text"`.
    pub format: LogFormat,
    /// `access = true | false`, default `true`: one line per request.
    pub access: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// `drain_timeout_ms = 30000`: how long SIGTERM waits for requests in flight.
    pub drain_timeout: Duration,
    /// `watch = true`: reload when the config file or a plugin file changes (read at start).
    pub watch: bool,
    /// Limits on what clients send, read at start.
    pub limits: ClientLimits,
}

/// `[server]` limits on client requests, against clients that are slow, large or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// `header_read_timeout_ms = 10000`: an HTTP/1 client must send a whole request head within
    /// this time of the connection going idle (new, or after a response): slowloris clients and
    /// idle keep-alive connections are closed after it.
    pub header_read_timeout: Duration,
    /// `max_header_bytes = 65536`: a larger request head gets 431 (HTTP/2: the header list).
    pub max_header_bytes: usize,
    /// `max_headers = 100`: more request header fields get 431.
    pub max_headers: usize,
    /// `http2_max_concurrent_streams = 100`: per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
}

/// `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// `name = "public"`: unique among listeners.
    pub name: String,
    /// `listen = "127.0.0.1:8080"`.
    pub listen: SocketAddr,
    /// `protocol = "http" | "https" | "tcp" | "forward"`, with the settings of that protocol.
    pub protocol: ListenerProtocol,
    /// `trusted_proxies = ["10.0.0.0/8"]`: peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<Cidr>,
    /// `max_connections = 10000`: open client connections (all workers); more are closed at once.
    pub max_connections: usize,
}

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 cleartext (prior knowledge), told apart by the connection preface.
    Http,
    /// HTTP/1.1 and HTTP/2 (by ALPN) over TLS.
    Https(ListenerTls),
    /// Bytes, relayed to a backend of an upstream.
    Tcp(TcpProxy),
    /// A forward proxy: absolute-form requests and CONNECT tunnels, to wherever clients ask.
    Forward(ForwardProxy),
}

/// A `forward` listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    /// `plugins = ["blocklist"]`: on-request (and on-response) run on every proxied request, the
    /// CONNECT request of a tunnel included (its target in Host). Indices into [`Config::plugins`].
    pub plugins: Vec<usize>,
    /// `connect_ports = [443]`: the ports CONNECT may open tunnels to; others get 403.
    pub connect_ports: Vec<u16>,
    /// `allow = ["127.0.0.0/8", "::1/128"]` (the default: loopback only): the clients served;
    /// others get 403.
    pub allow: Vec<Cidr>,
    /// `deny_targets = ["10.0.0.0/8"]`: the target addresses (as resolved, so a name cannot hide
    /// one) this proxy never connects to; a request for one gets 403. The default keeps clients
    /// from reaching through the proxy what only the gateway's host can: none while `allow`
    /// admits loopback clients only, else loopback, unspecified and link-local addresses (the
    /// gateway's admin API, local services, cloud metadata at 169.254.169.254).
    pub deny_targets: Vec<Cidr>,
    /// `anonymous = false`: when true, what identifies the client (`Forwarded`,
    /// `X-Forwarded-For`, `Via`, `Proxy-Authorization` once plugins checked it) is removed, and
    /// nothing is added.
    pub anonymous: bool,
    /// `connect_timeout_ms = 2000`: to the target.
    pub connect_timeout: Duration,
    /// `timeout_ms = 30000`: the wait for the target's response headers.
    pub timeout: Duration,
    /// `idle_timeout_ms = 300000`: a tunnel or body with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

/// A `tcp` listener's settings: every connection is relayed to a backend of `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProxy {
    /// `upstream = "db"`: index into [`Config::upstreams`]; its balancing policy picks.
    pub upstream: usize,
    /// `connect_timeout_ms = 2000`: per backend tried; a backend that does not accept in time is
    /// skipped for the next one.
    pub connect_timeout: Duration,
    /// `idle_timeout_ms = 300000`: a connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

/// The TLS settings of an `https` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// `tls = { cert, key }` or an array of them: chosen by SNI among the names in each
    /// certificate; the first is the default. Never empty.
    pub certificates: Vec<CertificateFiles>,
    /// `client_ca = "ca.pem"`: clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// `handshake_timeout_ms = 10000`: a client that has not finished its handshake by then is
    /// disconnected.
    pub handshake_timeout: Duration,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    /// `cert = "site.pem"`: the certificate, then its intermediates.
    pub cert: PathBuf,
    /// `key = "site.key"`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// An upstream's `tls`: how the gateway verifies its backends and what it shows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// `ca = "ca.pem"`: the roots backend certificates must chain to; the system's when absent.
    pub ca: Option<PathBuf>,
    /// `server_name = "api.internal"`: the name sent by SNI and checked in the backend's
    /// certificate; the backend's host by default.
    pub server_name: Option<String>,
    /// `cert` and `key`: a client certificate for backends that demand one.
    pub client: Option<CertificateFiles>,
    /// `danger_skip_verify = true` turns verification off (false by default, and loudly logged).
    pub verify: bool,
}

/// `[[upstream]]`: a named pool of backends.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `name = "api"`: unique among upstreams.
    pub name: String,
    /// `backends = ["127.0.0.1:9001", { address = "api-2:9002", weight = 2, zone = "eu" }]`.
    pub backends: Vec<BackendConfig>,
    /// `balance = "round_robin"` (default) and, for `consistent_hash`, `hash_key`.
    pub balance: BalancePolicy,
    /// `protocol = "http1"` (default) or `"http2"` (prior knowledge, for gRPC backends).
    pub protocol: UpstreamProtocol,
    /// `resolve_interval_ms = 30000`: how often backend DNS names are resolved again.
    pub resolve_interval: Duration,
    /// `tls = true` or a table: backends are spoken to over TLS.
    pub tls: Option<UpstreamTls>,
    /// `health = { ... }`: active health checks; none by default (backends are then taken out
    /// only by passive outlier detection).
    pub health: Option<HealthCheck>,
    /// `max_requests = 1024`: requests in flight to this upstream (all workers) past which new
    /// ones get 503 at once instead of queueing behind a struggling upstream.
    pub max_requests: usize,
}

/// Active health checking of an upstream's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is checked.
    pub probe: HealthProbe,
    /// `interval_ms = 2000`: between two checks of a backend.
    pub interval: Duration,
    /// `timeout_ms = 500`: a check that takes longer failed.
    pub timeout: Duration,
    /// `healthy_threshold = 2`: consecutive successes that bring a backend back.
    pub healthy_threshold: u32,
    /// `unhealthy_threshold = 3`: consecutive failures that take it out.
    pub unhealthy_threshold: u32,
}

/// How a backend is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// `path = "/healthz"`: `GET path` must answer 2xx or 3xx.
    Http(String),
    /// `tcp = true`: a connection must be accepted.
    Tcp,
}

/// One backend of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `address = "host:port"` as written: an IP address or a DNS name.
    pub address: String,
    /// The host part of `address` (brackets removed from IPv6).
    pub host: String,
    /// The port part of `address`.
    pub port: u16,
    /// `weight = 1` (default), at least 1.
    pub weight: u32,
    /// `zone = "eu"`: free-form, for plugins that balance by geography.
    pub zone: Option<String>,
}

/// How an upstream picks a backend for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancePolicy {
    /// `"round_robin"`: smooth weighted round robin.
    RoundRobin,
    /// `"least_conn"`: fewest requests in flight relative to weight.
    LeastConn,
    /// `"random"`: power of two random choices, weighted.
    Random,
    /// `"consistent_hash"`: a hash ring keyed by `hash_key`.
    ConsistentHash(HashKey),
    /// `{ plugin = "NAME" }`: the plugin's select-backend picks (index into [`Config::plugins`]);
    /// when it leaves the choice to the gateway, round robin.
    Plugin(usize),
}

/// `hash_key = "client_ip" | "header:NAME"` for `consistent_hash` (default `client_ip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address plugins and logs see.
    ClientIp,
    /// The value of a request header (requests without it hash as the empty string).
    Header(HeaderName),
}

/// The HTTP version spoken to an upstream's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge: one multiplexed connection per backend and worker.
    Http2,
}

/// `[[plugin]]`: validated and kept for the plugin runtime.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `name = "auth"`: unique among plugins.
    pub name: String,
    /// `path = "plugins/auth.wasm"`, resolved against the config file's folder.
    pub path: PathBuf,
    /// `on_error = "deny"` (default) or `"allow"`.
    pub on_error: OnError,
    /// `timeout_ms = 20`: the deadline of one hook call.
    pub timeout: Duration,
    /// `memory_mb = 16`: the memory limit of one instance.
    pub memory_mb: u32,
    /// `state_mb = 256`: the most the plugin's shared state (counters and stored values, kept by
    /// the gateway outside `memory_mb`) may take.
    pub state_mb: u32,
    /// `isolation = "pooled"` (default) or `"fresh"`.
    pub isolation: Isolation,
    /// `[plugin.config]`: any table, handed to the plugin's `init` as JSON (`{}` when absent).
    pub config: serde_json::Value,
}

/// What happens to a request when a plugin fails on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The request fails with 500.
    Deny,
    /// The plugin is skipped and the request goes on.
    Allow,
}

/// Whether plugin instances are reused across hook calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Instances are pooled per worker and reused.
    Pooled,
    /// A new instance for every hook call.
    Fresh,
}

/// `[[route]]`: which requests go to which upstream, through which plugins.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `name = "api"`: unique among routes.
    pub name: String,
    /// `listener = "public"`: only requests arriving on this listener; every listener when absent.
    pub listener: Option<String>,
    /// `host = "api.example.com" | "*.example.com"`: any host when absent.
    pub host: Option<HostMatch>,
    /// `methods = ["GET", "POST"]`: any method when absent.
    pub methods: Option<Vec<Method>>,
    /// `path_prefix = "/api"` (default `/`), without a trailing slash unless it is `/`.
    pub path_prefix: String,
    /// `upstream = "api"`: the index of that upstream in [`Config::upstreams`].
    pub upstream: usize,
    /// `plugins = ["auth"]`: indices into [`Config::plugins`], in on-request order.
    pub plugins: Vec<usize>,
    /// `strip_prefix = false`: when true, `/api/users` reaches the backend as `/users`.
    pub strip_prefix: bool,
    /// `timeout_ms = 30000`: how long to wait for the backend's response headers.
    pub timeout: Duration,
    /// `connect_timeout_ms = 2000`: how long to wait for a backend connection.
    pub connect_timeout: Duration,
    /// `retries = 2`: how many other backends a request may be tried on when one fails before
    /// answering: any request the backend did not receive (connection refused or dropped before
    /// it was sent), and idempotent requests without a body. Bounded by the upstream's retry budget.
    pub retries: u32,
    /// `max_body_bytes`: a request body announced larger gets 413, and one that streams past it is
    /// cut off; no limit by default.
    pub max_body_bytes: Option<u64>,
    /// `idle_timeout_ms = 60000`: how long a body may stream without a byte in either direction.
    pub idle_timeout: Duration,
}

/// A route's `host` pattern, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`: that host only.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: one or more labels before it.
    Wildcard(String),
}
