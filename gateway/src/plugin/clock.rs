//! The epoch clock behind hook deadlines: a thread that advances the engine's epoch every
//! [`EPOCH_TICK`], but only while a plugin is loaded. A gateway without plugins (a plain proxy, a
//! TCP balancer) would otherwise be woken a thousand times a second for nothing, and on a busy
//! core each wake-up preempts a worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use wasmtime::Engine;

use super::limits::EPOCH_TICK;

/// Starts and stops the ticking; clones share one thread.
#[derive(Clone)]
pub struct EpochClock {
    shared: Arc<Shared>,
}

struct Shared {
    /// Plugins loaded now: the clock ticks while this is above zero.
    loaded: AtomicUsize,
    thread: OnceLock<Thread>,
}

/// Keeps the clock ticking while it lives; each loaded plugin holds one.
pub struct Ticking {
    shared: Arc<Shared>,
}

impl EpochClock {
    /// Starts the (idle) clock thread for `engine`; it ends once the engine is gone.
    pub fn start(engine: &Engine) -> std::io::Result<EpochClock> {
        let shared = Arc::new(Shared { loaded: AtomicUsize::new(0), thread: OnceLock::new() });
        let (weak, ticker) = (engine.weak(), shared.clone());
        let thread = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
            loop {
                if ticker.loaded.load(Ordering::Acquire) == 0 {
                    // Woken by `hold`, or by a runtime being dropped (to see if the engine is gone).
                    std::thread::park();
                }
                let Some(engine) = weak.upgrade() else { return };
                if ticker.loaded.load(Ordering::Acquire) > 0 {
                    engine.increment_epoch();
                }
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        let _ = shared.thread.set(thread.thread().clone());
        Ok(EpochClock { shared })
    }

    /// Makes the clock tick until the returned value is dropped.
    pub fn hold(&self) -> Ticking {
        if self.shared.loaded.fetch_add(1, Ordering::AcqRel) == 0 {
            self.shared.wake();
        }
        Ticking { shared: self.shared.clone() }
    }
}

impl Shared {
    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.shared.loaded.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EpochClock {
    fn drop(&mut self) {
        self.shared.wake();
    }
}
