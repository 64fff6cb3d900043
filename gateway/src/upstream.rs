//! Upstreams at run time: backends with their current addresses, and the balancer that picks one.
//!
//! Backends may be named by DNS name. Names are resolved when the snapshot is built and again every
//! `resolve_interval_ms` by a background task, which swaps the new addresses in atomically; requests
//! read them without locking. Each backend has a [`BackendKey`] that stays the same across reloads,
//! so pooled connections survive a reload.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balance::Balancer;
use crate::config::{BackendConfig, UpstreamConfig, UpstreamProtocol, UpstreamTls};
use crate::health::{self, Health};
use crate::pool::Destination;
use crate::tls::BackendTls;

/// A backend's identity in the connection pools: the same address, protocol and TLS settings get
/// the same key in every snapshot. A forward proxy's targets get theirs from the worker's pool
/// ([`Pool::forward_key`](crate::pool::Pool::forward_key)), above [`FORWARD_KEYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey(u64);

/// Where the keys of forward proxy targets start: configured backends, interned once each, stay
/// far below.
const FORWARD_KEYS: u64 = 1 << 32;

/// What makes two backends' connections interchangeable.
type Identity = (String, UpstreamProtocol, Option<UpstreamTls>);

impl BackendKey {
    fn of(address: &str, config: &UpstreamConfig) -> BackendKey {
        BackendKey::new((address.to_string(), config.protocol, config.tls.clone()))
    }

    /// The key numbered `n` from [`FORWARD_KEYS`], for a forward proxy's target.
    pub fn forward_target(n: u64) -> BackendKey {
        BackendKey(FORWARD_KEYS + n)
    }

    fn new(identity: Identity) -> BackendKey {
        static KEYS: LazyLock<Mutex<HashMap<Identity, u64>>> = LazyLock::new(Default::default);
        let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        let next = keys.len() as u64;
        BackendKey(*keys.entry(identity).or_insert(next))
    }
}

/// One backend of an upstream.
pub struct Backend {
    /// As configured.
    pub config: BackendConfig,
    /// Its identity in the connection pools.
    pub key: BackendKey,
    /// How to open TLS to it, when its upstream has `tls`.
    pub tls: Option<BackendTls>,
    /// The addresses its name resolves to now.
    addrs: Arc<ArcSwap<Vec<SocketAddr>>>,
    /// Active checks' verdict and passive ejections.
    pub health: Arc<Health>,
}

impl Backend {
    /// The addresses to connect to, in the order to try them.
    pub fn addrs(&self) -> arc_swap::Guard<Arc<Vec<SocketAddr>>> {
        self.addrs.load()
    }

    /// Whether the balancer may pick this backend.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// Where the pool sends to this backend at `addrs` (its [`addrs`](Self::addrs) now).
    pub fn destination<'a>(
        &'a self,
        addrs: &'a [SocketAddr],
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
    ) -> Destination<'a> {
        Destination {
            key: self.key,
            name: &self.config.address,
            addrs,
            protocol,
            connect_timeout,
            tls: self.tls.as_ref(),
        }
    }
}

/// A named pool of backends and its balancer.
pub struct Upstream {
    /// As configured.
    pub config: UpstreamConfig,
    /// Parallel to `config.backends`.
    pub backends: Vec<Backend>,
    /// Picks among `backends`.
    pub balancer: Balancer,
    /// Bounds retries to this upstream.
    pub retry_budget: RetryBudget,
}

/// Retries may add at most a fifth to an upstream's requests (after a burst of 10), so a failing
/// upstream is not hit by every request several times over.
#[derive(Debug)]
pub struct RetryBudget {
    /// In tenths of a retry.
    tokens: AtomicU32,
}

impl RetryBudget {
    const CAP: u32 = 100;
    const PER_REQUEST: u32 = 2;
    const PER_RETRY: u32 = 10;

    fn new() -> RetryBudget {
        RetryBudget { tokens: AtomicU32::new(Self::CAP) }
    }

    /// A request that may be retried was made.
    pub fn deposit(&self) {
        let _ = self
            .tokens
            .fetch_update(Relaxed, Relaxed, |t| (t < Self::CAP).then(|| (t + Self::PER_REQUEST).min(Self::CAP)));
    }

    /// Takes the cost of a retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.tokens.fetch_update(Relaxed, Relaxed, |t| t.checked_sub(Self::PER_RETRY)).is_ok()
    }
}

impl Upstream {
    /// Builds the upstream, resolving backend names now (a name that does not resolve yet is logged
    /// and retried by [`Upstream::spawn_resolver`]) and reading its TLS files. The error names the
    /// upstream and the file.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, String> {
        let client_tls = match &config.tls {
            Some(tls) => Some((tls, BackendTls::config(&config.name, tls, config.protocol)?)),
            None => None,
        };
        let backends: Vec<Backend> = config
            .backends
            .iter()
            .map(|b| {
                let tls = match &client_tls {
                    Some((tls, client)) => Some(BackendTls::new(&config.name, client.clone(), tls, &b.host)?),
                    None => None,
                };
                Ok(Backend {
                    key: BackendKey::of(&b.address, &config),
                    tls,
                    addrs: Arc::new(ArcSwap::from_pointee(resolve_now(&config.name, b))),
                    health: Arc::default(),
                    config: b.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let weights: Vec<u32> = backends.iter().map(|b| b.config.weight).collect();
        let keys: Vec<&str> = backends.iter().map(|b| b.config.address.as_str()).collect();
        let balancer = Balancer::new(&config.balance, &weights, &keys);
        Ok(Upstream { config, backends, balancer, retry_budget: RetryBudget::new() })
    }

    /// Starts the upstream's active health checks, if it has them, on the current runtime; they
    /// stop once `retired` is set or the upstream is dropped.
    pub fn spawn_health_checks(&self, retired: &Arc<AtomicBool>) {
        let Some(check) = &self.config.health else { return };
        let backends = self
            .backends
            .iter()
            .map(|b| health::Checked {
                address: b.config.address.clone(),
                host: b.config.host.clone(),
                key: b.key,
                tls: b.tls.clone(),
                addrs: Arc::downgrade(&b.addrs),
                health: Arc::downgrade(&b.health),
            })
            .collect();
        health::spawn(self.config.name.clone(), check.clone(), backends, retired.clone());
    }

    /// Re-resolves the backends named by DNS every `resolve_interval_ms`, on the current runtime,
    /// until `retired` is set or the upstream is dropped (a reload replaced it).
    pub fn spawn_resolver(&self, retired: &Arc<AtomicBool>) {
        let named: Vec<(BackendConfig, Weak<ArcSwap<Vec<SocketAddr>>>)> = self
            .backends
            .iter()
            .filter(|b| b.config.host.parse::<std::net::IpAddr>().is_err())
            .map(|b| (b.config.clone(), Arc::downgrade(&b.addrs)))
            .collect();
        if named.is_empty() {
            return;
        }
        let (upstream, interval, retired) = (self.config.name.clone(), self.config.resolve_interval, retired.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if retired.load(Acquire) {
                    return;
                }
                for (backend, addrs) in &named {
                    let Some(addrs) = addrs.upgrade() else { return };
                    match tokio::net::lookup_host((backend.host.as_str(), backend.port)).await {
                        Ok(found) => {
                            let found: Vec<SocketAddr> = found.collect();
                            if **addrs.load() != found {
                                tracing::info!(upstream, backend = backend.address, addrs = ?found, "backend resolves to new addresses");
                                addrs.store(Arc::new(found));
                            }
                        }
                        Err(e) => tracing::warn!(upstream, backend = backend.address, error = %e,
                            "cannot resolve backend; keeping its previous addresses"),
                    }
                }
            }
        });
    }
}

/// The backend's addresses now: parsed when it is an IP address, resolved when it is a name.
fn resolve_now(upstream: &str, backend: &BackendConfig) -> Vec<SocketAddr> {
    if let Ok(ip) = backend.host.parse() {
        return vec![SocketAddr::new(ip, backend.port)];
    }
    match (backend.host.as_str(), backend.port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            tracing::warn!(upstream, backend = backend.address, error = %e,
                "cannot resolve backend yet; requests to it fail until it resolves");
            Vec::new()
        }
    }
}
