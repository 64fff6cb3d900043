//! From the file as written to the typed config: defaults, ranges, names and references.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path};
use std::time::Duration;

use http::{HeaderName, Method};
use toml::Spanned;

use super::env::Text;
use super::error::ConfigError;
use super::model::*;
use super::raw::*;
use crate::net::Cidr;

type Result<T> = std::result::Result<T, ConfigError>;

/// Validation of one file: knows its path and text so every error can point at a line.
pub struct Validator<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.text, span, message)
    }

    pub fn config(&self, raw: RawConfig) -> Result<Config> {
        let plugins = raw.plugin.into_iter().map(|p| self.plugin(p)).collect::<Result<Vec<_>>>()?;
        let plugin_names = self.unique_names("plugin", plugins.iter().map(|(n, _)| n))?;
        let upstreams =
            raw.upstream.into_iter().map(|u| self.upstream(u, &plugin_names)).collect::<Result<Vec<_>>>()?;
        let upstream_names = self.unique_names("upstream", upstreams.iter().map(|(n, _)| n))?;
        let admin = self.admin(raw.admin)?;
        self.distinct_addresses(&raw.listener, admin.listen)?;
        let listeners = raw
            .listener
            .into_iter()
            .map(|l| self.listener(l, &upstream_names, &plugin_names))
            .collect::<Result<Vec<_>>>()?;
        if listeners.is_empty() {
            return Err(ConfigError::whole_file(
                self.file,
                "no [[listener]]: add one, e.g. [[listener]] name = \"public\" listen = \"127.0.0.1:8080\" protocol = \"http\"",
            ));
        }
        let listener_names = self.unique_names("listener", listeners.iter().map(|(n, _)| n))?;
        let other_listeners: HashSet<&str> = listeners
            .iter()
            .filter(|(_, l)| matches!(l.protocol, ListenerProtocol::Tcp(_) | ListenerProtocol::Forward(_)))
            .map(|(n, _)| n.get_ref().0.as_str())
            .collect();
        let routes = raw
            .route
            .into_iter()
            .map(|r| self.route(r, &listener_names, &other_listeners, &upstream_names, &plugin_names))
            .collect::<Result<Vec<_>>>()?;
        let routes_named = routes.iter().map(|(n, _)| n);
        self.unique_names("route", routes_named)?;
        Ok(Config {
            path: self.file.to_path_buf(),
            admin,
            log: LogConfig {
                format: match raw.log.format {
                    Some(LogFormatKey::Json) => LogFormat::Json,
                    Some(LogFormatKey::Text) | None => LogFormat::Text,
                },
                access: raw.log.access.unwrap_or(true),
            },
            server: ServerConfig {
                drain_timeout: self.duration(raw.server.drain_timeout_ms, 30_000)?,
                watch: raw.server.watch.unwrap_or(true),
                limits: ClientLimits {
                    header_read_timeout: self.duration(raw.server.header_read_timeout_ms, 10_000)?,
                    max_header_bytes: self.count(raw.server.max_header_bytes, 65_536, 8_192, "max_header_bytes")?,
                    max_headers: self.count(raw.server.max_headers, 100, 1, "max_headers")?,
                    http2_max_concurrent_streams: self.count(
                        raw.server.http2_max_concurrent_streams,
                        100,
                        1,
                        "http2_max_concurrent_streams",
                    )?,
                },
            },
            listeners: listeners.into_iter().map(|(_, l)| l).collect(),
            upstreams: upstreams.into_iter().map(|(_, u)| u).collect(),
            plugins: plugins.into_iter().map(|(_, p)| p).collect(),
            routes: routes.into_iter().map(|(_, r)| r).collect(),
        })
    }

    /// Checks that no two items of a kind share a name; returns name -> index for references.
    fn unique_names<'n>(
        &self,
        kind: &str,
        names: impl Iterator<Item = &'n Spanned<Text>>,
    ) -> Result<HashMap<&'n str, usize>> {
        let mut seen = HashMap::new();
        for (index, name) in names.enumerate() {
            if seen.insert(name.get_ref().0.as_str(), index).is_some() {
                return Err(self.err(
                    name.span(),
                    format!("duplicate {kind} name `{}`: each {kind} needs its own name", name.get_ref().0),
                ));
            }
        }
        Ok(seen)
    }

    /// Checks that no two listeners, the admin API's included, would bind the same address: the
    /// second would fail with "address in use" only at start or at a reload. Port 0 (a free port
    /// chosen at bind) never clashes.
    fn distinct_addresses(&self, listeners: &[Spanned<RawListener>], admin: SocketAddr) -> Result<()> {
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        let mut bound = vec![("the admin API".to_string(), admin)];
        for raw in listeners {
            let raw = raw.get_ref();
            let listen = self.socket_addr(&raw.listen)?;
            if let Some((other, _)) = bound.iter().find(|(_, address)| clash(*address, listen)) {
                return Err(self.err(
                    raw.listen.span(),
                    format!("{listen} is where {other} listens already; give each listener an address of its own"),
                ));
            }
            bound.push((format!("listener `{}`", raw.name.get_ref().0), listen));
        }
        Ok(())
    }

    /// Resolves a reference to a named item, or says which names exist.
    fn reference(&self, kind: &str, name: &Spanned<Text>, names: &HashMap<&str, usize>) -> Result<usize> {
        names.get(name.get_ref().0.as_str()).copied().ok_or_else(|| {
            let mut known: Vec<_> = names.keys().copied().collect();
            known.sort_unstable();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            self.err(name.span(), format!("{kind} `{}` is not defined (defined: {known})", name.get_ref().0))
        })
    }

    fn duration(&self, value: Option<Spanned<u64>>, default_ms: u64) -> Result<Duration> {
        match value {
            None => Ok(Duration::from_millis(default_ms)),
            Some(v) if *v.get_ref() == 0 => Err(self.err(v.span(), "must be at least 1 (milliseconds)")),
            Some(v) => Ok(Duration::from_millis(*v.get_ref())),
        }
    }

    /// A positive count with a floor, e.g. `max_headers = 100`.
    fn count<T: TryFrom<u64>>(&self, value: Option<Spanned<u64>>, default: T, min: u64, key: &str) -> Result<T> {
        let Some(value) = value else { return Ok(default) };
        let number = *value.get_ref();
        if number < min {
            return Err(self.err(value.span(), format!("{key} must be at least {min}")));
        }
        T::try_from(number).map_err(|_| self.err(value.span(), format!("{key} is too large")))
    }

    fn socket_addr(&self, value: &Spanned<Text>) -> Result<SocketAddr> {
        value.get_ref().0.parse().map_err(|_| {
            self.err(
                value.span(),
                format!("`{}` is not a socket address: expected IP:PORT, e.g. 127.0.0.1:8080", value.get_ref().0),
            )
        })
    }

    fn admin(&self, raw: RawAdmin) -> Result<AdminConfig> {
        let listen = match &raw.listen {
            Some(addr) => self.socket_addr(addr)?,
            None => SocketAddr::from(([127, 0, 0, 1], 9901)),
        };
        Ok(AdminConfig { listen, token: raw.token.map(|t| t.0) })
    }

    fn listener(
        &self,
        raw: Spanned<RawListener>,
        upstreams: &HashMap<&str, usize>,
        plugins: &HashMap<&str, usize>,
    ) -> Result<(Spanned<Text>, ListenerConfig)> {
        let raw = raw.into_inner();
        let protocol = match raw.protocol.get_ref() {
            ListenerProtocolKey::Http => ListenerProtocol::Http,
            ListenerProtocolKey::Https => ListenerProtocol::Https(self.listener_tls(&raw)?),
            ListenerProtocolKey::Tcp => ListenerProtocol::Tcp(self.tcp_proxy(&raw, upstreams)?),
            ListenerProtocolKey::Forward => ListenerProtocol::Forward(self.forward_proxy(&raw, plugins)?),
        };
        let (https, tcp, forward) = match protocol {
            ListenerProtocol::Http => (false, false, false),
            ListenerProtocol::Https(_) => (true, false, false),
            ListenerProtocol::Tcp(_) => (false, true, false),
            ListenerProtocol::Forward(_) => (false, false, true),
        };
        let span = |value: Option<Range<usize>>, applies: bool| value.filter(|_| !applies);
        let mode_keys = [
            ("tls", span(raw.tls.as_ref().map(Spanned::span), https)),
            ("client_ca", span(raw.client_ca.as_ref().map(Spanned::span), https)),
            ("handshake_timeout_ms", span(raw.handshake_timeout_ms.as_ref().map(Spanned::span), https)),
            ("upstream", span(raw.upstream.as_ref().map(Spanned::span), tcp)),
            ("connect_timeout_ms", span(raw.connect_timeout_ms.as_ref().map(Spanned::span), tcp || forward)),
            ("idle_timeout_ms", span(raw.idle_timeout_ms.as_ref().map(Spanned::span), tcp || forward)),
            ("timeout_ms", span(raw.timeout_ms.as_ref().map(Spanned::span), forward)),
            ("plugins", span(raw.plugins.as_ref().map(Spanned::span), forward)),
            ("connect_ports", span(raw.connect_ports.as_ref().map(Spanned::span), forward)),
            ("allow", span(raw.allow.as_ref().map(Spanned::span), forward)),
            ("deny_targets", span(raw.deny_targets.as_ref().map(Spanned::span), forward)),
            ("anonymous", span(raw.anonymous.as_ref().map(Spanned::span), forward)),
        ];
        if let Some((key, Some(span))) = mode_keys.into_iter().find(|(_, span)| span.is_some()) {
            let protocol = match protocol {
                ListenerProtocol::Http => "an http",
                ListenerProtocol::Https(_) => "an https",
                ListenerProtocol::Tcp(_) => "a tcp",
                ListenerProtocol::Forward(_) => "a forward",
            };
            return Err(self.err(span, format!("`{key}` does not apply to {protocol} listener; remove it")));
        }
        let trusted_proxies = self.cidr_list(&raw.trusted_proxies)?;
        let listener = ListenerConfig {
            name: raw.name.get_ref().0.clone(),
            listen: self.socket_addr(&raw.listen)?,
            protocol,
            trusted_proxies,
            max_connections: self.count(raw.max_connections.clone(), 10_000, 1, "max_connections")?,
        };
        Ok((raw.name, listener))
    }

    fn listener_tls(&self, raw: &RawListener) -> Result<ListenerTls> {
        let Some(tls) = &raw.tls else {
            return Err(self.err(
                raw.protocol.span(),
                "an https listener needs `tls = { cert = \"cert.pem\", key = \"key.pem\" }` (or an array of them)",
            ));
        };
        let certificates: Vec<CertificateFiles> = match tls.get_ref() {
            RawListenerTls::One(c) => vec![self.certificate_files(&c.cert, &c.key)],
            RawListenerTls::Many(list) => list.iter().map(|c| self.certificate_files(&c.cert, &c.key)).collect(),
        };
        if certificates.is_empty() {
            return Err(self.err(tls.span(), "`tls` lists no certificate: add at least one { cert, key }"));
        }
        Ok(ListenerTls {
            certificates,
            client_ca: raw.client_ca.as_ref().map(|ca| self.relative_path(&ca.get_ref().0)),
            handshake_timeout: self.duration(raw.handshake_timeout_ms.clone(), 10_000)?,
        })
    }

    fn tcp_proxy(&self, raw: &RawListener, upstreams: &HashMap<&str, usize>) -> Result<TcpProxy> {
        let Some(upstream) = &raw.upstream else {
            return Err(
                self.err(raw.protocol.span(), "a tcp listener needs `upstream = \"NAME\"`: where to relay connections")
            );
        };
        Ok(TcpProxy {
            upstream: self.reference("upstream", upstream, upstreams)?,
            connect_timeout: self.duration(raw.connect_timeout_ms.clone(), 2_000)?,
            idle_timeout: self.duration(raw.idle_timeout_ms.clone(), 300_000)?,
        })
    }

    fn forward_proxy(&self, raw: &RawListener, plugins: &HashMap<&str, usize>) -> Result<ForwardProxy> {
        let listed = raw.plugins.as_ref().map_or(&[][..], |p| p.get_ref());
        if let Some(extra) = listed.get(crate::plugin::chain::MAX_PLUGINS_PER_ROUTE) {
            return Err(self.err(
                extra.span(),
                format!("a listener may have at most {} plugins", crate::plugin::chain::MAX_PLUGINS_PER_ROUTE),
            ));
        }
        let allow = self.cidrs(&raw.allow, &["127.0.0.0/8", "::1/128"])?;
        let local = ["127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128", "169.254.0.0/16", "fe80::/10"];
        let local_clients_only = allow.iter().all(Cidr::is_loopback);
        let deny_targets = self.cidrs(&raw.deny_targets, if local_clients_only { &[] } else { &local })?;
        let connect_ports = match &raw.connect_ports {
            None => vec![443],
            Some(ports) if ports.get_ref().contains(&0) => {
                return Err(self.err(ports.span(), "port 0 cannot be connected to"));
            }
            Some(ports) => ports.get_ref().clone(),
        };
        Ok(ForwardProxy {
            plugins: listed.iter().map(|p| self.reference("plugin", p, plugins)).collect::<Result<_>>()?,
            connect_ports,
            allow,
            deny_targets,
            anonymous: raw.anonymous.as_ref().is_some_and(|a| *a.get_ref()),
            connect_timeout: self.duration(raw.connect_timeout_ms.clone(), 2_000)?,
            timeout: self.duration(raw.timeout_ms.clone(), 30_000)?,
            idle_timeout: self.duration(raw.idle_timeout_ms.clone(), 300_000)?,
        })
    }

    /// A list of networks, or `default` when the key is absent.
    fn cidrs(&self, list: &Option<Spanned<Vec<Spanned<Text>>>>, default: &[&str]) -> Result<Vec<Cidr>> {
        match list {
            None => Ok(default.iter().map(|c| c.parse().expect("a valid default network")).collect()),
            Some(list) => self.cidr_list(list.get_ref()),
        }
    }

    fn cidr_list(&self, list: &[Spanned<Text>]) -> Result<Vec<Cidr>> {
        list.iter().map(|c| c.get_ref().0.parse::<Cidr>().map_err(|e| self.err(c.span(), e))).collect()
    }

    fn certificate_files(&self, cert: &Text, key: &Text) -> CertificateFiles {
        CertificateFiles { cert: self.relative_path(&cert.0), key: self.relative_path(&key.0) }
    }

    fn upstream_tls(&self, raw: Option<&Spanned<RawUpstreamTls>>) -> Result<Option<UpstreamTls>> {
        let (table, span) = match raw.map(|r| (r.get_ref(), r.span())) {
            None | Some((RawUpstreamTls::Enabled(false), _)) => return Ok(None),
            Some((RawUpstreamTls::Enabled(true), _)) => {
                return Ok(Some(UpstreamTls { ca: None, server_name: None, client: None, verify: true }));
            }
            Some((RawUpstreamTls::Table(table), span)) => (table, span),
        };
        let client = match (&table.cert, &table.key) {
            (Some(cert), Some(key)) => Some(self.certificate_files(cert, key)),
            (None, None) => None,
            _ => return Err(self.err(span, "a client certificate needs both `cert` and `key`")),
        };
        if let Some(name) = &table.server_name
            && rustls::pki_types::ServerName::try_from(name.0.as_str()).is_err()
        {
            return Err(self.err(span, format!("server_name `{}` is not a DNS name or IP address", name.0)));
        }
        Ok(Some(UpstreamTls {
            ca: table.ca.as_ref().map(|ca| self.relative_path(&ca.0)),
            server_name: table.server_name.as_ref().map(|n| n.0.clone()),
            client,
            verify: !table.danger_skip_verify,
        }))
    }

    fn health(&self, raw: &Spanned<RawHealth>) -> Result<HealthCheck> {
        let (health, span) = (raw.get_ref(), raw.span());
        let probe = match (&health.path, health.tcp) {
            (Some(path), None | Some(false)) if path.0.starts_with('/') => HealthProbe::Http(path.0.clone()),
            (Some(path), None | Some(false)) => {
                return Err(self.err(span, format!("health path `{}` must start with `/`", path.0)));
            }
            (None, Some(true)) => HealthProbe::Tcp,
            _ => {
                return Err(self.err(span, "health needs either `path = \"/healthz\"` (HTTP) or `tcp = true`"));
            }
        };
        let threshold = |value: Option<u32>, default: u32, key: &str| match value {
            Some(0) => Err(self.err(span.clone(), format!("health {key} must be at least 1"))),
            value => Ok(value.unwrap_or(default)),
        };
        Ok(HealthCheck {
            probe,
            interval: self.duration(health.interval_ms.clone(), 2_000)?,
            timeout: self.duration(health.timeout_ms.clone(), 500)?,
            healthy_threshold: threshold(health.healthy_threshold, 2, "healthy_threshold")?,
            unhealthy_threshold: threshold(health.unhealthy_threshold, 3, "unhealthy_threshold")?,
        })
    }

    fn upstream(
        &self,
        raw: Spanned<RawUpstream>,
        plugins: &HashMap<&str, usize>,
    ) -> Result<(Spanned<Text>, UpstreamConfig)> {
        let raw = raw.into_inner();
        let health = raw.health.as_ref().map(|h| self.health(h)).transpose()?;
        if raw.backends.get_ref().is_empty() {
            return Err(self.err(raw.backends.span(), "an upstream needs at least one backend"));
        }
        let backends = raw.backends.get_ref().iter().map(|b| self.backend(b)).collect::<Result<Vec<_>>>()?;
        let policy = match raw.balance.as_ref().map(|b| (b.get_ref(), b.span())) {
            None | Some((RawBalance::Policy(BalanceKey::RoundRobin), _)) => BalancePolicy::RoundRobin,
            Some((RawBalance::Policy(BalanceKey::LeastConn), _)) => BalancePolicy::LeastConn,
            Some((RawBalance::Policy(BalanceKey::Random), _)) => BalancePolicy::Random,
            Some((RawBalance::Policy(BalanceKey::ConsistentHash), _)) => {
                BalancePolicy::ConsistentHash(self.hash_key(raw.hash_key.as_ref())?)
            }
            Some((RawBalance::Plugin { plugin }, span)) => {
                let name = Spanned::new(span, plugin.clone());
                BalancePolicy::Plugin(self.reference("plugin", &name, plugins)?)
            }
        };
        if let (Some(key), false) = (&raw.hash_key, matches!(policy, BalancePolicy::ConsistentHash(_))) {
            return Err(self.err(key.span(), "`hash_key` only applies with balance = \"consistent_hash\""));
        }
        let upstream = UpstreamConfig {
            name: raw.name.get_ref().0.clone(),
            backends,
            balance: policy,
            protocol: match raw.protocol {
                Some(UpstreamProtocolKey::Http2) => UpstreamProtocol::Http2,
                Some(UpstreamProtocolKey::Http1) | None => UpstreamProtocol::Http1,
            },
            resolve_interval: self.duration(raw.resolve_interval_ms, 30_000)?,
            tls: self.upstream_tls(raw.tls.as_ref())?,
            health,
            max_requests: self.count(raw.max_requests.clone(), 1024, 1, "max_requests")?,
        };
        Ok((raw.name, upstream))
    }

    fn hash_key(&self, raw: Option<&Spanned<Text>>) -> Result<HashKey> {
        let Some(raw) = raw else {
            return Ok(HashKey::ClientIp);
        };
        let value = raw.get_ref().0.as_str();
        if value == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        value
            .strip_prefix("header:")
            .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .map(HashKey::Header)
            .ok_or_else(|| {
                self.err(
                    raw.span(),
                    format!("hash_key `{value}` is invalid: expected \"client_ip\" or \"header:NAME\""),
                )
            })
    }

    fn backend(&self, raw: &Spanned<RawBackend>) -> Result<BackendConfig> {
        let (address, weight, zone) = match raw.get_ref() {
            RawBackend::Address(a) => (&a.0, 1, None),
            RawBackend::Table(t) => (&t.address.0, t.weight.unwrap_or(1), t.zone.as_ref().map(|z| z.0.clone())),
        };
        if weight == 0 {
            return Err(self.err(raw.span(), "a backend's weight must be at least 1"));
        }
        let (host, port) = split_host_port(address).ok_or_else(|| {
            self.err(
                raw.span(),
                format!("backend `{address}` is not HOST:PORT, e.g. \"127.0.0.1:9001\" or \"api.internal:80\""),
            )
        })?;
        Ok(BackendConfig { address: address.clone(), host: host.to_string(), port, weight, zone })
    }

    fn plugin(&self, raw: Spanned<RawPlugin>) -> Result<(Spanned<Text>, PluginConfig)> {
        let raw = raw.into_inner();
        let memory_mb = self.count(raw.memory_mb, 16, 1, "memory_mb")?;
        let state_mb = self.count(raw.state_mb, 256, 1, "state_mb")?;
        let config = match raw.config {
            Some(table) => {
                let span = table.span();
                let mut value = toml::Value::Table(table.into_inner());
                substitute_strings(&mut value, "plugin.config").map_err(|e| self.err(span.clone(), e))?;
                serde_json::to_value(value)
                    .map_err(|e| self.err(span, format!("plugin config cannot be handed over as JSON: {e}")))?
            }
            None => serde_json::Value::Object(Default::default()),
        };
        let plugin = PluginConfig {
            name: raw.name.get_ref().0.clone(),
            path: self.relative_path(&raw.path.get_ref().0),
            on_error: match raw.on_error {
                Some(OnErrorKey::Allow) => OnError::Allow,
                Some(OnErrorKey::Deny) | None => OnError::Deny,
            },
            timeout: self.duration(raw.timeout_ms, 20)?,
            memory_mb,
            state_mb,
            isolation: match raw.isolation {
                Some(IsolationKey::Fresh) => Isolation::Fresh,
                Some(IsolationKey::Pooled) | None => Isolation::Pooled,
            },
            config,
        };
        Ok((raw.name, plugin))
    }

    /// `path` relative to the config file's folder, with `.` and `..` resolved where the text
    /// allows (no symlinks are followed), so messages name `target/x.wasm`, not
    /// `examples/../target/x.wasm`.
    fn relative_path(&self, path: &str) -> std::path::PathBuf {
        let mut out = std::path::PathBuf::new();
        for part in self.file.parent().unwrap_or(Path::new(".")).join(path).components() {
            match part {
                Component::CurDir => {}
                Component::ParentDir => match out.components().next_back() {
                    Some(Component::Normal(_)) => {
                        out.pop();
                    }
                    // `/..` is `/`.
                    Some(Component::RootDir) => {}
                    _ => out.push(".."),
                },
                other => out.push(other),
            }
        }
        if out.as_os_str().is_empty() { std::path::PathBuf::from(".") } else { out }
    }

    fn route(
        &self,
        raw: Spanned<RawRoute>,
        listeners: &HashMap<&str, usize>,
        other_listeners: &HashSet<&str>,
        upstreams: &HashMap<&str, usize>,
        plugins: &HashMap<&str, usize>,
    ) -> Result<(Spanned<Text>, RouteConfig)> {
        let raw = raw.into_inner();
        if let Some(listener) = &raw.listener {
            self.reference("listener", listener, listeners)?;
            if other_listeners.contains(listener.get_ref().0.as_str()) {
                return Err(self.err(
                    listener.span(),
                    format!(
                        "listener `{}` is not an http or https listener: routes apply to those only",
                        listener.get_ref().0
                    ),
                ));
            }
        }
        if let Some(extra) = raw.plugins.get(crate::plugin::chain::MAX_PLUGINS_PER_ROUTE) {
            return Err(self.err(
                extra.span(),
                format!("a route may have at most {} plugins", crate::plugin::chain::MAX_PLUGINS_PER_ROUTE),
            ));
        }
        let host = raw.host.as_ref().map(|h| self.host(h)).transpose()?;
        let methods = raw
            .methods
            .as_ref()
            .map(|methods| {
                methods
                    .iter()
                    .map(|m| {
                        Method::from_bytes(m.get_ref().0.to_ascii_uppercase().as_bytes())
                            .map_err(|_| self.err(m.span(), format!("`{}` is not an HTTP method", m.get_ref().0)))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let path_prefix = match &raw.path_prefix {
            None => "/".to_string(),
            Some(p) if !p.get_ref().0.starts_with('/') => {
                return Err(self.err(p.span(), "path_prefix must start with `/`, e.g. \"/api\""));
            }
            Some(p) => {
                let trimmed = p.get_ref().0.trim_end_matches('/');
                if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() }
            }
        };
        let route = RouteConfig {
            name: raw.name.get_ref().0.clone(),
            listener: raw.listener.as_ref().map(|l| l.get_ref().0.clone()),
            host,
            methods,
            path_prefix,
            upstream: self.reference("upstream", &raw.upstream, upstreams)?,
            plugins: raw.plugins.iter().map(|p| self.reference("plugin", p, plugins)).collect::<Result<_>>()?,
            strip_prefix: raw.strip_prefix.unwrap_or(false),
            timeout: self.duration(raw.timeout_ms, 30_000)?,
            connect_timeout: self.duration(raw.connect_timeout_ms, 2_000)?,
            idle_timeout: self.duration(raw.idle_timeout_ms, 60_000)?,
            retries: raw.retries.unwrap_or(2),
            max_body_bytes: raw.max_body_bytes.map(|m| *m.get_ref()),
        };
        Ok((raw.name, route))
    }

    fn host(&self, raw: &Spanned<Text>) -> Result<HostMatch> {
        let host = raw.get_ref().0.trim_end_matches('.').to_ascii_lowercase();
        let (pattern, name) = match host.strip_prefix("*.") {
            Some(rest) => (HostMatch::Wildcard(format!(".{rest}")), rest),
            None => (HostMatch::Exact(host.clone()), host.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(pattern)
        } else {
            Err(self.err(
                raw.span(),
                format!(
                    "host `{}` is not a host name: expected e.g. \"api.example.com\" or \"*.example.com\" (no port)",
                    raw.get_ref().0
                ),
            ))
        }
    }
}

/// Replaces `${VAR}` in every string of a plugin's config table; `at` names the key for errors.
fn substitute_strings(value: &mut toml::Value, at: &str) -> std::result::Result<(), String> {
    match value {
        toml::Value::String(text) => {
            if let std::borrow::Cow::Owned(replaced) =
                super::env::substitute(text, |name| std::env::var(name).ok()).map_err(|e| format!("{at}: {e}"))?
            {
                *text = replaced;
            }
            Ok(())
        }
        toml::Value::Array(items) => {
            items.iter_mut().enumerate().try_for_each(|(i, item)| substitute_strings(item, &format!("{at}[{i}]")))
        }
        toml::Value::Table(table) => {
            table.iter_mut().try_for_each(|(key, item)| substitute_strings(item, &format!("{at}.{key}")))
        }
        _ => Ok(()),
    }
}

/// `host:port` or `[v6]:port`, with a port that parses.
fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some(())?;
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    #[test]
    fn plugin_paths_are_relative_to_the_config_file_with_dot_segments_resolved() {
        let text = |path: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n[[upstream]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n\n\
                 [[plugin]]\nname = \"p\"\npath = \"{path}\"\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [\"p\"]\n"
            )
        };
        for (file, path, expected) in [
            ("examples/sluice.toml", "../target/p.wasm", "target/p.wasm"),
            ("examples/sluice.toml", "./plugins/./p.wasm", "examples/plugins/p.wasm"),
            ("/etc/sluice/sluice.toml", "../../../p.wasm", "/p.wasm"),
            ("sluice.toml", "../p.wasm", "../p.wasm"),
            ("examples/sluice.toml", "/opt/p.wasm", "/opt/p.wasm"),
        ] {
            let config = crate::config::parse(Path::new(file), &text(path)).expect("a valid config");
            assert_eq!(config.plugins[0].path, PathBuf::from(expected), "{path} from {file}");
        }
    }

    #[test]
    fn tls_settings_are_typed_with_paths_resolved_and_their_mistakes_pointed_at() {
        use crate::config::{CertificateFiles, ListenerProtocol, UpstreamTls};
        let text = |listener: &str, upstream: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\n\
                 [[upstream]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n{upstream}\n\n\
                 [[route]]\nname = \"r\"\nupstream = \"u\"\n"
            )
        };
        let file = Path::new("/etc/sluice/sluice.toml");
        let config = crate::config::parse(
            file,
            &text(
                "protocol = \"https\"\ntls = { cert = \"site.pem\", key = \"site.key\" }\nclient_ca = \"ca.pem\"",
                "tls = { ca = \"../ca.pem\", server_name = \"api.internal\", cert = \"c.pem\", key = \"c.key\" }",
            ),
        )
        .expect("a valid config");
        let ListenerProtocol::Https(tls) = &config.listeners[0].protocol else { panic!("an https listener") };
        let files = |cert: &str, key: &str| CertificateFiles { cert: PathBuf::from(cert), key: PathBuf::from(key) };
        assert_eq!(tls.certificates, [files("/etc/sluice/site.pem", "/etc/sluice/site.key")]);
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/etc/sluice/ca.pem")));
        assert_eq!(tls.handshake_timeout, std::time::Duration::from_secs(10));
        assert_eq!(
            config.upstreams[0].tls,
            Some(UpstreamTls {
                ca: Some(PathBuf::from("/etc/ca.pem")),
                server_name: Some("api.internal".into()),
                client: Some(files("/etc/sluice/c.pem", "/etc/sluice/c.key")),
                verify: true,
            })
        );

        let http = "protocol = \"http\"";
        for (listener, upstream, expected) in [
            ("protocol = \"https\"", "", ":4:12: an https listener needs `tls = { cert"),
            (http, "tls = { cert = \"c.pem\" }", ":9:7: a client certificate needs both `cert` and `key`"),
            (
                http,
                "tls = { server_name = \"not a name\" }",
                "server_name `not a name` is not a DNS name or IP address",
            ),
            (http, "tls = \"yes\"", "expected true, false, or { ca = "),
            (http, "tls = { verify = false }", "expected true, false, or { ca = "),
            ("protocol = \"https\"\ntls = { cert = \"a\" }", "", "expected { cert = \"cert.pem\", key = \"key.pem\" }"),
            (&format!("{http}\nclient_ca = \"ca.pem\""), "", "`client_ca` does not apply to an http listener"),
        ] {
            let error = crate::config::parse(file, &text(listener, upstream)).expect_err(expected).to_string();
            assert!(error.contains(expected), "expected {expected:?} in: {error}");
        }
        let skip = crate::config::parse(file, &text(http, "tls = { danger_skip_verify = true }")).expect("valid");
        assert!(skip.upstreams[0].tls.as_ref().is_some_and(|t| !t.verify && t.ca.is_none()));
    }

    #[test]
    fn health_checks_retries_and_limits_have_defaults_and_checked_values() {
        use crate::config::{HealthCheck, HealthProbe};
        use std::time::Duration;
        let text = |upstream: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
                 [[upstream]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n{upstream}\n\n\
                 [[route]]\nname = \"r\"\nupstream = \"u\"\n"
            )
        };
        let file = Path::new("sluice.toml");
        let config = crate::config::parse(file, &text("health = { path = \"/healthz\" }")).expect("valid");
        let expected = HealthCheck {
            probe: HealthProbe::Http("/healthz".into()),
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        assert_eq!(config.upstreams[0].health, Some(expected));
        assert_eq!((config.upstreams[0].max_requests, config.routes[0].retries), (1024, 2));
        let tcp = crate::config::parse(file, &text("health = { tcp = true, interval_ms = 100 }")).expect("valid");
        assert_eq!(
            tcp.upstreams[0].health.as_ref().map(|h| (&h.probe, h.interval)),
            Some((&HealthProbe::Tcp, Duration::from_millis(100)))
        );
        for (upstream, expected) in [
            ("health = { path = \"healthz\" }", "health path `healthz` must start with `/`"),
            ("health = { interval_ms = 100 }", "health needs either `path = \"/healthz\"` (HTTP) or `tcp = true`"),
            ("health = { tcp = true, unhealthy_threshold = 0 }", "health unhealthy_threshold must be at least 1"),
            ("health = { tcp = true, every = 1 }", "unknown field `every`"),
            ("max_requests = 0", "max_requests must be at least 1"),
        ] {
            let error = crate::config::parse(file, &text(upstream)).expect_err(expected).to_string();
            assert!(error.contains(expected), "expected {expected:?} in: {error}");
        }
    }

    #[test]
    fn plugin_limits_have_defaults_and_a_floor() {
        let text = |limits: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
                 [[plugin]]\nname = \"p\"\npath = \"p.wasm\"\n{limits}\n"
            )
        };
        let file = Path::new("sluice.toml");
        let config = crate::config::parse(file, &text("")).expect("valid");
        assert_eq!((config.plugins[0].memory_mb, config.plugins[0].state_mb), (16, 256));
        let config = crate::config::parse(file, &text("memory_mb = 8\nstate_mb = 1")).expect("valid");
        assert_eq!((config.plugins[0].memory_mb, config.plugins[0].state_mb), (8, 1));
        for (limits, expected) in [
            ("memory_mb = 0", "memory_mb must be at least 1"),
            ("state_mb = 0", "state_mb must be at least 1"),
            ("state_mb = 4294967296", "state_mb is too large"),
        ] {
            let error = crate::config::parse(file, &text(limits)).expect_err(expected).to_string();
            assert!(error.contains(expected), "expected {expected:?} in: {error}");
        }
    }
}
