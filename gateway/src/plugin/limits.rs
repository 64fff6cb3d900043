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

/// Instances the pooling allocator can hold at once across all plugins and snapshots.
pub const MAX_INSTANCES: u32 = 1000;

/// The largest `random-bytes` request a plugin may make.
pub const MAX_RANDOM_BYTES: u32 = 4096;

/// Idle instances a worker keeps per plugin (a worker needs about one: hook calls are synchronous).
pub const MAX_IDLE_PER_WORKER: usize = 4;
