//! `tcp` listeners: each client connection is relayed to a backend of the listener's upstream,
//! picked by the upstream's balancing policy (consistent hashing keys on the client address). A
//! backend that refuses or does not answer within the connect timeout is skipped for the next
//! one, so one dead backend costs a client a retry, not a failed connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::balance;
use crate::config::{BalancePolicy, HashKey, TcpProxy, UpstreamProtocol};
use crate::metrics::METRICS;
use crate::pool;
use crate::relay::relay;
use crate::snapshot::Snapshot;

/// Relays `client` to a backend until both sides are done. The snapshot is the one current when
/// the connection was accepted; it is kept for the connection's life.
pub async fn serve(client: TcpStream, peer: SocketAddr, listener: &str, proxy: &TcpProxy, snapshot: Arc<Snapshot>) {
    let _active = METRICS.tcp_connection(listener);
    let upstream = &snapshot.upstreams[proxy.upstream];
    let hash = match &upstream.config.balance {
        BalancePolicy::ConsistentHash(HashKey::ClientIp) => balance::hash_ip(peer.ip()),
        _ => 0,
    };
    let mut failed = vec![false; upstream.backends.len()];
    let eligible = |failed: &[bool], i: usize| upstream.backends[i].is_healthy() && !failed[i];
    let (backend, lease) = loop {
        let Some(lease) = upstream.balancer.pick(&|i| eligible(&failed, i), hash) else {
            tracing::warn!(listener, client = %peer, upstream = upstream.config.name, "no backend accepted the connection; closing it");
            return;
        };
        let backend = &upstream.backends[lease.index()];
        let addrs = backend.addrs();
        let destination = backend.destination(&addrs, UpstreamProtocol::Http1, proxy.connect_timeout);
        match pool::connect(&destination).await {
            Ok(stream) => break (stream, lease),
            Err(error) => {
                tracing::warn!(listener, client = %peer, error = %error, "backend skipped");
                failed[lease.index()] = true;
            }
        }
    };
    match relay(client, backend, proxy.idle_timeout).await {
        Ok((sent, received)) => tracing::debug!(listener, client = %peer, sent, received, "tcp connection done"),
        Err(error) => tracing::debug!(listener, client = %peer, error = %error, "tcp connection ended"),
    }
    drop(lease);
}
