//! The sandbox's limits, in one place: per-plugin defaults come from the config, the rest is here.
//!
//! Each limit is broken on purpose by a test plugin (a loop, a memory hog, a trap) in the
//! end-to-end tests, so a change here shows up there.

use std::time::Duration;

/// How often the engine's epoch advances: the resolution of `timeout_ms` deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long `init` may run on a new instance (it parses config, so it gets more than a hook).
pub const INIT_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest `memory_mb` a plugin may ask for; also the pooling allocator's slot size.
pub const MAX_MEMORY_MB: u32 = 256;

/// The least the pooling allocator holds, however small the config: room for reloads that add
/// plugins. Each slot reserves (never commits) ~8 GiB of address space for its memories.
pub const MIN_INSTANCES: u32 = 1000;

/// Instances kept apart for `init` checks at load, beyond what the workers hold.
const SPARE_INSTANCES: u32 = 64;

/// The instances `plugins` plugins can need at once on `workers` workers: one each per worker (a
/// hook call is synchronous, so a worker uses one instance of a plugin at a time and keeps it for
/// the next call). While a reload's new snapshot serves beside the old one, `plugins` counts the
/// plugins of both.
pub fn instances_needed(workers: usize, plugins: usize) -> u32 {
    let needed = workers.saturating_mul(plugins).saturating_add(SPARE_INSTANCES as usize);
    u32::try_from(needed).unwrap_or(u32::MAX)
}

/// The largest `random-bytes` request a plugin may make.
pub const MAX_RANDOM_BYTES: u32 = 4096;

/// Idle instances a worker keeps per plugin (a worker needs about one: hook calls are synchronous).
pub const MAX_IDLE_PER_WORKER: usize = 4;
