//! The executor hyper uses to spawn connection tasks: the worker's own thread.
//!
//! Each worker runs a single-threaded runtime with a `LocalSet`, so per-worker state (the
//! upstream pool) needs no locks and tasks never migrate between cores.

use std::future::Future;

/// Spawns hyper's background tasks with `tokio::task::spawn_local`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
