//! The config file as written: serde types that mirror the TOML keys one to one.
//!
//! Unknown keys are rejected here (`deny_unknown_fields`) so a typo fails the load instead of being
//! silently ignored. Names and references keep their position in the file (`Spanned`) so the
//! validation that follows can point at the line of a duplicate name or an undefined upstream.

use serde::Deserialize;
use toml::Spanned;

use super::env::Text;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub upstream: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    pub plugin: Vec<Spanned<RawPlugin>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<Text>>,
    pub token: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormatKey>,
    pub access: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatKey {
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub drain_timeout_ms: Option<Spanned<u64>>,
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub http2_max_concurrent_streams: Option<Spanned<u64>>,
    pub watch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<Text>,
    pub listen: Spanned<Text>,
    pub protocol: Spanned<ListenerProtocolKey>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<Text>>,
    pub tls: Option<Spanned<RawListenerTls>>,
    pub client_ca: Option<Spanned<Text>>,
    pub handshake_timeout_ms: Option<Spanned<u64>>,
    pub upstream: Option<Spanned<Text>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub plugins: Option<Spanned<Vec<Spanned<Text>>>>,
    pub connect_ports: Option<Spanned<Vec<u16>>>,
    pub allow: Option<Spanned<Vec<Spanned<Text>>>>,
    pub deny_targets: Option<Spanned<Vec<Spanned<Text>>>>,
    pub anonymous: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocolKey {
    Http,
    Https,
    Forward,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<Text>,
    pub backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub balance: Option<Spanned<RawBalance>>,
    pub hash_key: Option<Spanned<Text>>,
    pub protocol: Option<UpstreamProtocolKey>,
    pub resolve_interval_ms: Option<Spanned<u64>>,
    pub health: Option<Spanned<RawHealth>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub max_requests: Option<Spanned<u64>>,
}

/// An upstream's `health`: an HTTP probe (`path`) or a TCP connect (`tcp = true`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<Text>,
    pub tcp: Option<bool>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// An https listener's `tls`: one `{ cert, key }` table or an array of them.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected { cert = \"cert.pem\", key = \"key.pem\" } or an array of such tables")]
pub enum RawListenerTls {
    One(RawCertificate),
    Many(Vec<RawCertificate>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Text,
    pub key: Text,
}

/// An upstream's `tls`: `true` or a table.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected true, false, or { ca = \"ca.pem\", server_name = \"api.internal\", cert = \"...\", key = \"...\" }"
)]
pub enum RawUpstreamTls {
    Enabled(bool),
    Table(RawUpstreamTlsTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTlsTable {
    pub ca: Option<Text>,
    pub server_name: Option<Text>,
    pub cert: Option<Text>,
    pub key: Option<Text>,
    #[serde(default)]
    pub danger_skip_verify: bool,
}

/// `"127.0.0.1:9001"` or `{ address = "...", weight = 2, zone = "eu" }`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a backend: \"host:port\" or { address = \"host:port\", weight = 1, zone = \"eu\" }"
)]
pub enum RawBackend {
    Address(Text),
    Table(RawBackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTable {
    pub address: Text,
    pub weight: Option<u32>,
    pub zone: Option<Text>,
}

/// `"round_robin"` or `{ plugin = "NAME" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected round_robin, least_conn, random, consistent_hash or { plugin = \"NAME\" }")]
pub enum RawBalance {
    Policy(BalanceKey),
    Plugin { plugin: Text },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceKey {
    RoundRobin,
    LeastConn,
    Random,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocolKey {
    Http1,
    Http2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: Spanned<Text>,
    pub path: Spanned<Text>,
    pub on_error: Option<OnErrorKey>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub memory_mb: Option<Spanned<u64>>,
    pub state_mb: Option<Spanned<u64>>,
    pub isolation: Option<IsolationKey>,
    pub config: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorKey {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationKey {
    Pooled,
    Fresh,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<Text>,
    pub listener: Option<Spanned<Text>>,
    pub host: Option<Spanned<Text>>,
    pub methods: Option<Vec<Spanned<Text>>>,
    pub path_prefix: Option<Spanned<Text>>,
    pub upstream: Spanned<Text>,
    #[serde(default)]
    pub plugins: Vec<Spanned<Text>>,
    pub strip_prefix: Option<bool>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    pub retries: Option<u32>,
    pub max_body_bytes: Option<Spanned<u64>>,
}
