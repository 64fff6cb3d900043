//! Whether a backend may receive requests: the verdict of active checks (`health` on the upstream)
//! and passive outlier detection (consecutive connect failures or 5xx answers eject a backend for a
//! back-off that doubles with each ejection). Balancers read one atomic flag and one atomic time
//! per backend; the checks run on the control thread, away from the workers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::config::{HealthCheck, HealthProbe, UpstreamProtocol};
use crate::metrics::METRICS;
use crate::pool::{self, Destination};
use crate::tls::BackendTls;
use crate::upstream::BackendKey;

/// Consecutive failed requests (connect failures, 5xx) that eject a backend.
pub const EJECT_AFTER: u32 = 5;
/// The first ejection's length; each further one doubles it, up to [`MAX_EJECTION`].
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The instant times here are counted from, so they fit in an atomic.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// A backend's health.
#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict; true until they say otherwise.
    up: AtomicBool,
    /// Consecutive failed requests.
    failures: AtomicU32,
    /// Ejections so far (the back-off's exponent); reset by a successful request.
    ejections: AtomicU32,
    /// Ejected until this time ([`now_ms`]).
    ejected_until: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Whether the balancer may pick the backend.
    pub fn is_healthy(&self) -> bool {
        // Never ejected (the usual case): no clock read.
        let until = self.ejected_until.load(Relaxed);
        self.up.load(Relaxed) && (until == 0 || now_ms() >= until)
    }

    /// Records how a request to the backend went; returns the ejection this failure started.
    pub fn record(&self, ok: bool) -> Option<Duration> {
        if ok {
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Relaxed);
            }
            if self.ejections.load(Relaxed) != 0 && self.is_healthy() {
                self.ejections.store(0, Relaxed);
                self.ejected_until.store(0, Relaxed);
            }
            return None;
        }
        if self.failures.fetch_add(1, Relaxed) + 1 < EJECT_AFTER {
            return None;
        }
        self.failures.store(0, Relaxed);
        let exponent = self.ejections.fetch_add(1, Relaxed).min(16);
        let ejection = BASE_EJECTION.saturating_mul(1 << exponent).min(MAX_EJECTION);
        self.ejected_until.store(now_ms() + ejection.as_millis() as u64, Relaxed);
        Some(ejection)
    }
}

/// One backend as the checker sees it; the weak references end the checks once a reload dropped
/// the backend.
pub struct Checked {
    /// `host:port` as configured.
    pub address: String,
    /// The Host of the HTTP probe.
    pub host: String,
    pub key: BackendKey,
    pub tls: Option<BackendTls>,
    pub addrs: Weak<ArcSwap<Vec<SocketAddr>>>,
    pub health: Weak<Health>,
}

/// Checks every backend of `upstream` every interval, on the current runtime, until `retired` is
/// set (a reload replaced the snapshot) or the backends are dropped. A backend goes down after `unhealthy_threshold` failed checks in a row and comes
/// back after `healthy_threshold` good ones; each change is logged and exported.
pub fn spawn(upstream: String, check: HealthCheck, backends: Vec<Checked>, retired: Arc<AtomicBool>) {
    for backend in backends {
        let (upstream, check, retired) = (upstream.clone(), check.clone(), retired.clone());
        tokio::spawn(async move {
            let (mut good, mut bad) = (0u32, 0u32);
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if retired.load(Acquire) {
                    return;
                }
                let (Some(health), Some(addrs)) = (backend.health.upgrade(), backend.addrs.upgrade()) else { return };
                let result = tokio::time::timeout(check.timeout, probe(&check, &backend, &addrs.load())).await;
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(why)) => Some(why),
                    Err(_) => Some(format!("no answer within {:?}", check.timeout)),
                };
                let up = health.up.load(Relaxed);
                match failure {
                    None => (good, bad) = (good + 1, 0),
                    Some(why) => {
                        (good, bad) = (0, bad + 1);
                        if up && bad >= check.unhealthy_threshold {
                            tracing::warn!(upstream, backend = backend.address, reason = why, "backend is unhealthy");
                            health.up.store(false, Relaxed);
                            METRICS.backend_health(&upstream, &backend.address, false, &retired);
                        }
                    }
                }
                if !up && good >= check.healthy_threshold {
                    tracing::info!(upstream, backend = backend.address, "backend is healthy again");
                    health.up.store(true, Relaxed);
                    METRICS.backend_health(&upstream, &backend.address, true, &retired);
                }
            }
        });
    }
}

/// One check: a connection (over TLS when the upstream has it), and for HTTP a `GET` that must
/// answer 2xx or 3xx.
async fn probe(check: &HealthCheck, backend: &Checked, addrs: &[SocketAddr]) -> Result<(), String> {
    let destination = Destination {
        key: backend.key,
        name: &backend.address,
        addrs,
        protocol: UpstreamProtocol::Http1,
        connect_timeout: check.timeout,
        tls: backend.tls.as_ref(),
    };
    let stream = pool::connect(&destination).await.map_err(|e| e.to_string())?;
    let HealthProbe::Http(path) = &check.probe else { return Ok(()) };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path.as_str())
        .header(http::header::HOST, backend.host.as_str())
        .header(http::header::USER_AGENT, "sluice-health-check")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let status = sender.send_request(request).await.map_err(|e| e.to_string())?.status();
    if status.is_success() || status.is_redirection() { Ok(()) } else { Err(format!("{path} answered {status}")) }
}
