//! Load balancing: which backend of an upstream serves a request.
//!
//! Why it is built this way:
//! - One [`Balancer`] serves every worker thread, so a pick must not serialize them: counters are
//!   atomics, `random` draws from the thread-local rng, and the only lock (smooth round robin's
//!   current weights) guards a few additions and is skipped entirely when all weights are equal.
//! - Eligibility is a closure rather than state kept here: health belongs to the health checker and
//!   "already tried" to the request's retry loop; the balancer only has to walk past them.
//! - A request counts as in flight from pick until its [`Lease`] drops, and the proxy holds the
//!   lease until the response body has streamed: a long download loads a backend as much as a slow
//!   request does, and that is what `least_conn` and `random` must see. The counters live behind an
//!   `Arc` so a lease outlives a config reload that replaced its balancer.
//! - Round robin is nginx's smooth weighted variant, so a heavy backend's turns are interleaved with
//!   the others' instead of arriving as a burst.
//! - `random` is power of two choices: as cheap and lock-free as plain random, yet it steers away
//!   from a slow backend, without the herding of everyone chasing the same least-loaded one.
//! - `consistent_hash` puts virtual nodes on a ring so that a backend going down (or already tried)
//!   moves only its own keys and the others' caches stay warm. The hash is our own, not std's
//!   (which may change between Rust releases): placements must survive an upgrade and agree between
//!   gateway instances.
//! - Picks allocate nothing: they walk the backends (a handful) instead of collecting eligible ones.

use std::cmp::Ordering;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::BalancePolicy;

/// Ring points per unit of weight: enough to keep each backend within a few percent of its share.
const VNODES_PER_WEIGHT: u64 = 160;
/// Ring size cap (4 MiB): past it, heavy weights are scaled down proportionally.
const MAX_RING_POINTS: u64 = 1 << 18;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// [`Balancer::pick`]'s filter over backend indices.
type Eligible<'a> = &'a dyn Fn(usize) -> bool;

/// Picks backends of one upstream; one per upstream per config snapshot, shared by all workers.
pub struct Balancer {
    /// Backend weights, at least 1.
    weights: Box<[u32]>,
    /// Requests in flight per backend, shared with the leases.
    in_flight: Arc<[AtomicUsize]>,
    policy: Policy,
}

enum Policy {
    /// Round robin with equal weights: the n-th pick takes the (n mod eligible)-th eligible backend.
    Rotate(AtomicUsize),
    /// Smooth weighted round robin: each backend's current weight.
    Smooth(Mutex<Box<[i64]>>),
    /// Least connections; the counter rotates among ties.
    LeastConn(AtomicUsize),
    /// Power of two choices.
    Random,
    /// Consistent hash: (point, backend) sorted.
    Ring(Box<[(u64, usize)]>),
}

impl Balancer {
    /// Builds the balancer for backends with these weights (0 counts as 1) and identity keys (the
    /// address as configured; `keys` must be as long as `weights`), which place backends on the
    /// consistent-hash ring so that placements survive reloads and reorderings.
    pub fn new(policy: &BalancePolicy, weights: &[u32], keys: &[&str]) -> Balancer {
        let weights: Box<[u32]> = weights.iter().map(|&w| w.max(1)).collect();
        let policy = match policy {
            // A plugin's `Selection::Default` falls back to round robin.
            BalancePolicy::RoundRobin | BalancePolicy::Plugin(_) if weights.windows(2).all(|w| w[0] == w[1]) => {
                Policy::Rotate(AtomicUsize::new(0))
            }
            BalancePolicy::RoundRobin | BalancePolicy::Plugin(_) => {
                Policy::Smooth(Mutex::new(vec![0; weights.len()].into()))
            }
            BalancePolicy::LeastConn => Policy::LeastConn(AtomicUsize::new(0)),
            BalancePolicy::Random => Policy::Random,
            BalancePolicy::ConsistentHash(_) => Policy::Ring(ring(&weights, keys)),
        };
        let in_flight = weights.iter().map(|_| AtomicUsize::new(0)).collect();
        Balancer { weights, in_flight, policy }
    }

    /// Picks a backend among those for which `eligible(i)` is true (healthy, and not already tried
    /// by this request); `hash` is the request's [`hash_key`], used by `consistent_hash` only.
    /// `None` when no backend is eligible. The request counts as in flight on the picked backend
    /// until the returned lease is dropped.
    #[must_use]
    pub fn pick(&self, eligible: &dyn Fn(usize) -> bool, hash: u64) -> Option<Lease> {
        let index = match &self.policy {
            Policy::Rotate(next) => self.rotate(eligible, next),
            Policy::Smooth(current) => self.smooth(eligible, current),
            Policy::LeastConn(next) => self.least_conn(eligible, next),
            Policy::Random => self.two_choices(eligible),
            Policy::Ring(ring) => self.hashed(eligible, ring, hash),
        }?;
        self.in_flight[index].fetch_add(1, Relaxed);
        Some(Lease { in_flight: Arc::clone(&self.in_flight), index })
    }

    /// Counts a request as in flight on backend `index`, chosen by a plugin.
    /// Requests in flight to every backend together.
    pub fn total_in_flight(&self) -> usize {
        self.in_flight.iter().map(|n| n.load(Relaxed)).sum()
    }

    /// Counts a request to backend `index` until the lease is dropped.
    pub fn lease(&self, index: usize) -> Lease {
        self.in_flight[index].fetch_add(1, Relaxed);
        Lease { in_flight: Arc::clone(&self.in_flight), index }
    }

    /// Requests in flight on backend `i` (0 for an unknown backend).
    pub fn in_flight(&self, i: usize) -> usize {
        self.in_flight.get(i).map_or(0, |n| n.load(Relaxed))
    }

    fn eligible<'a>(&'a self, eligible: Eligible<'a>) -> impl Iterator<Item = usize> + 'a {
        (0..self.weights.len()).filter(move |&i| eligible(i))
    }

    /// Backend `i`'s (in flight, weight), for [`cmp_load`].
    fn load(&self, i: usize) -> (usize, u32) {
        (self.in_flight[i].load(Relaxed), self.weights[i])
    }

    fn rotate(&self, eligible: Eligible<'_>, next: &AtomicUsize) -> Option<usize> {
        let count = self.eligible(eligible).count();
        let k = next.fetch_add(1, Relaxed).checked_rem(count)?;
        // Eligibility may change between the two walks; then any eligible backend will do.
        self.eligible(eligible).nth(k).or_else(|| self.eligible(eligible).next())
    }

    fn smooth(&self, eligible: Eligible<'_>, current: &Mutex<Box<[i64]>>) -> Option<usize> {
        let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut best, mut total) = (None, 0);
        for i in self.eligible(eligible) {
            current[i] += i64::from(self.weights[i]);
            total += i64::from(self.weights[i]);
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }

    fn least_conn(&self, eligible: Eligible<'_>, next: &AtomicUsize) -> Option<usize> {
        let (mut best, mut ties) = (None, 0);
        for i in self.eligible(eligible) {
            let load = self.load(i);
            match best.map(|(_, least)| cmp_load(load, least)) {
                None | Some(Ordering::Less) => (best, ties) = (Some((i, load)), 1),
                Some(Ordering::Equal) => ties += 1,
                Some(Ordering::Greater) => {}
            }
        }
        let (first, least) = best?;
        if ties == 1 {
            return Some(first);
        }
        // Rotate among the tied, or idle backends would all lose to the first one.
        let k = next.fetch_add(1, Relaxed) % ties;
        let mut tied = self.eligible(eligible).filter(|&i| cmp_load(self.load(i), least).is_eq());
        tied.nth(k).or(Some(first))
    }

    fn two_choices(&self, eligible: Eligible<'_>) -> Option<usize> {
        let total = self.eligible(eligible).map(|i| u64::from(self.weights[i])).sum();
        let first = self.draw(eligible, total, None)?;
        let rest = total.saturating_sub(u64::from(self.weights[first]));
        let Some(second) = self.draw(eligible, rest, Some(first)) else {
            return Some(first);
        };
        Some(if cmp_load(self.load(second), self.load(first)).is_lt() { second } else { first })
    }

    /// Draws an eligible backend other than `skip` with probability proportional to its weight;
    /// `total` is their summed weight.
    fn draw(&self, eligible: Eligible<'_>, total: u64, skip: Option<usize>) -> Option<usize> {
        if total == 0 {
            return None;
        }
        let mut ticket = fastrand::u64(..total);
        let mut last = None;
        for i in self.eligible(eligible).filter(|&i| Some(i) != skip) {
            let weight = u64::from(self.weights[i]);
            if ticket < weight {
                return Some(i);
            }
            ticket -= weight;
            last = Some(i);
        }
        // Only reached when eligibility changed since `total` was summed.
        last
    }

    fn hashed(&self, eligible: Eligible<'_>, ring: &[(u64, usize)], hash: u64) -> Option<usize> {
        // Otherwise, with every backend down, each request would walk the whole ring.
        self.eligible(eligible).next()?;
        let start = ring.partition_point(|&(point, _)| point < hash);
        let walk = ring[start..].iter().chain(&ring[..start]);
        walk.map(|&(_, i)| i).find(|&i| eligible(i))
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match self.policy {
            Policy::Rotate(_) | Policy::Smooth(_) => "round_robin",
            Policy::LeastConn(_) => "least_conn",
            Policy::Random => "random",
            Policy::Ring(_) => "consistent_hash",
        };
        f.debug_struct("Balancer")
            .field("policy", &policy)
            .field("weights", &self.weights)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// A request in flight on one backend: held for the whole proxied request, response body included;
/// dropping it ends the request for `least_conn`, `random` and `/status`.
pub struct Lease {
    in_flight: Arc<[AtomicUsize]>,
    index: usize,
}

impl Lease {
    /// The picked backend's index in the upstream's backend list.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_flight[self.index].fetch_sub(1, Relaxed);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("index", &self.index).finish_non_exhaustive()
    }
}

/// The `consistent_hash` key of a client address: its bytes, hashed.
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(ip) => hash_key(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_key(&ip.octets()),
    }
}

/// A fast hash of a request's key (client IP bytes or a header value) for `consistent_hash`, stable
/// across builds and machines: FNV-1a, then MurmurHash3's finalizer to spread similar keys.
pub fn hash_key(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(FNV_OFFSET, bytes))
}

fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Orders two (in flight, weight) loads by in flight per unit of weight, without floats.
fn cmp_load((a, weight_a): (usize, u32), (b, weight_b): (usize, u32)) -> Ordering {
    (a as u128 * u128::from(weight_b)).cmp(&(b as u128 * u128::from(weight_a)))
}

/// The consistent-hash ring: `VNODES_PER_WEIGHT` points per unit of weight, each hashed from the
/// backend's key and the point's number, so a backend's points depend on nothing else.
fn ring(weights: &[u32], keys: &[&str]) -> Box<[(u64, usize)]> {
    let wanted: u64 = weights.iter().map(|&w| u64::from(w) * VNODES_PER_WEIGHT).sum();
    let mut ring = Vec::new();
    for (i, (&weight, key)) in weights.iter().zip(keys).enumerate() {
        let mut vnodes = u64::from(weight) * VNODES_PER_WEIGHT;
        if wanted > MAX_RING_POINTS {
            vnodes = (vnodes * MAX_RING_POINTS / wanted).max(1);
        }
        let seed = fnv1a(FNV_OFFSET, key.as_bytes());
        ring.extend((0..vnodes).map(|v| (fmix64(fnv1a(seed, &v.to_le_bytes())), i)));
    }
    ring.sort_unstable();
    ring.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HashKey;

    const HASHED: BalancePolicy = BalancePolicy::ConsistentHash(HashKey::ClientIp);

    fn balancer(policy: &BalancePolicy, weights: &[u32]) -> Balancer {
        let keys: Vec<String> = (0..weights.len()).map(|i| format!("10.0.0.{i}:8080")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Balancer::new(policy, weights, &keys)
    }

    fn all(_: usize) -> bool {
        true
    }

    /// Backends picked by `picks` picks whose leases are dropped at once.
    fn sequence(b: &Balancer, picks: usize) -> Vec<usize> {
        (0..picks).map(|_| b.pick(&all, 0).expect("a backend").index()).collect()
    }

    /// How often each backend is picked in `picks` picks whose leases are dropped at once.
    fn counts(b: &Balancer, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; b.weights.len()];
        sequence(b, picks).into_iter().for_each(|i| counts[i] += 1);
        counts
    }

    /// Holds `n` leases on backend `i`.
    fn hold(b: &Balancer, i: usize, n: usize) -> Vec<Lease> {
        (0..n).map(|_| b.pick(&|j| j == i, 0).expect("backend i")).collect()
    }

    fn within(count: usize, expected: usize, tolerance: f64) -> bool {
        (count as f64 - expected as f64).abs() <= expected as f64 * tolerance
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        assert_eq!(counts(&balancer(&BalancePolicy::RoundRobin, &[1, 2, 3]), 600), [100, 200, 300]);
    }

    #[test]
    fn round_robin_interleaves_heavy_backends() {
        let b = balancer(&BalancePolicy::RoundRobin, &[5, 1, 1]);
        assert_eq!(sequence(&b, 14), [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_with_equal_weights_rotates_over_the_eligible() {
        let b = balancer(&BalancePolicy::RoundRobin, &[3, 3, 3]);
        assert_eq!(sequence(&b, 6), [0, 1, 2, 0, 1, 2]);
        let picked: Vec<_> = (0..4).map(|_| b.pick(&|i| i != 1, 0).expect("eligible").index()).collect();
        assert_eq!(picked, [0, 2, 0, 2]);
    }

    #[test]
    fn every_policy_skips_the_ineligible_and_gives_none_without_any() {
        let policies = [BalancePolicy::RoundRobin, BalancePolicy::LeastConn, BalancePolicy::Random, HASHED];
        for policy in &policies {
            for weights in [[1, 1, 1], [1, 2, 3]] {
                let b = balancer(policy, &weights);
                for n in 0..300 {
                    let lease = b.pick(&|i| i != 1, hash_key(&[n as u8]));
                    assert_ne!(lease.expect("eligible").index(), 1, "{policy:?} {weights:?}");
                }
                assert!(b.pick(&|_| false, 7).is_none(), "{policy:?}");
                assert_eq!((0..3).map(|i| b.in_flight(i)).sum::<usize>(), 0);
            }
        }
    }

    #[test]
    fn least_conn_avoids_a_loaded_backend() {
        let b = balancer(&BalancePolicy::LeastConn, &[1, 1, 1]);
        let _held = hold(&b, 0, 3);
        assert!(sequence(&b, 100).iter().all(|&i| i != 0));
    }

    #[test]
    fn least_conn_rotates_between_equally_loaded() {
        let b = balancer(&BalancePolicy::LeastConn, &[1, 1, 1]);
        assert_eq!(sequence(&b, 6), [0, 1, 2, 0, 1, 2]);
        let picked: Vec<_> = (0..4).map(|_| b.pick(&|i| i != 0, 0).expect("eligible").index()).collect();
        assert_eq!(picked, [1, 2, 1, 2]);
    }

    #[test]
    fn least_conn_loads_in_proportion_to_weight() {
        let b = balancer(&BalancePolicy::LeastConn, &[1, 2]);
        let _held: Vec<_> = (0..300).map(|_| b.pick(&all, 0)).collect();
        assert_eq!((b.in_flight(0), b.in_flight(1)), (100, 200));
    }

    #[test]
    fn random_follows_weights() {
        fastrand::seed(7);
        let counts = counts(&balancer(&BalancePolicy::Random, &[1, 1, 2]), 30_000);
        for (count, expected) in counts.into_iter().zip([7_500, 7_500, 15_000]) {
            assert!(within(count, expected, 0.05), "{count} vs {expected}");
        }
    }

    #[test]
    fn random_avoids_a_loaded_backend() {
        fastrand::seed(7);
        let b = balancer(&BalancePolicy::Random, &[1, 1, 1]);
        let _held = hold(&b, 0, 1);
        let counts = counts(&b, 3_000);
        // Two distinct choices always include an idle backend, which beats the loaded one.
        assert_eq!(counts[0], 0);
        assert!(within(counts[1], 1_500, 0.05) && within(counts[2], 1_500, 0.05), "{counts:?}");
    }

    #[test]
    fn consistent_hash_is_stable() {
        let (a, b) = (balancer(&HASHED, &[1, 1, 1, 1, 1]), balancer(&HASHED, &[1, 1, 1, 1, 1]));
        for n in 0u32..1_000 {
            let hash = hash_key(&n.to_le_bytes());
            let first = a.pick(&all, hash).expect("a backend").index();
            assert_eq!(a.pick(&all, hash).expect("a backend").index(), first);
            assert_eq!(b.pick(&all, hash).expect("a backend").index(), first);
        }
    }

    #[test]
    fn consistent_hash_balances_and_moves_only_the_lost_backends_keys() {
        let b = balancer(&HASHED, &[1, 1, 1, 1, 1]);
        let place = |eligible: &dyn Fn(usize) -> bool| -> Vec<usize> {
            let key = |n: u32| hash_key(format!("192.168.{}.{}", n / 256, n % 256).as_bytes());
            (0..10_000).map(|n| b.pick(eligible, key(n)).expect("a backend").index()).collect()
        };
        let before = place(&all);
        let mut counts = [0; 5];
        before.iter().for_each(|&i| counts[i] += 1);
        assert!(counts.iter().all(|&c| within(c, 2_000, 0.3)), "{counts:?}");

        let after = place(&|i| i != 2);
        let mut moved_to = [0; 5];
        for (&was, &is) in before.iter().zip(&after) {
            if was == 2 {
                moved_to[is] += 1;
            } else {
                assert_eq!(was, is);
            }
        }
        assert_eq!(moved_to[2], 0);
        let others = [moved_to[0], moved_to[1], moved_to[3], moved_to[4]];
        assert!(others.iter().all(|&c| c >= counts[2] / 8), "{moved_to:?}");
    }

    #[test]
    fn consistent_hash_ring_is_capped_yet_keeps_every_backend() {
        let ring = ring(&[1, u32::MAX, 7], &["a", "b", "c"]);
        assert!(ring.len() as u64 <= MAX_RING_POINTS + 2);
        assert!((0..3).all(|i| ring.iter().any(|&(_, b)| b == i)));
    }

    #[test]
    fn hash_key_is_stable() {
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        // Pinned: changing it would move every client to another backend on upgrade.
        assert_eq!(hash_key(b"10.0.0.1"), 0xc879_e56d_dc6c_5c88);
    }

    #[test]
    fn dropping_a_lease_ends_its_request() {
        let b = balancer(&BalancePolicy::RoundRobin, &[1]);
        let (first, second) = (b.pick(&all, 0), b.pick(&all, 0));
        assert_eq!(b.in_flight(0), 2);
        drop(first);
        assert_eq!(b.in_flight(0), 1);
        drop(second);
        assert_eq!((b.in_flight(0), b.in_flight(1)), (0, 0));
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send_static<T: Send + 'static>() {}
        send_sync::<Balancer>();
        send_static::<Lease>();
    }
}
