//! Reload on file change: the config file and every plugin file it names are watched.
//!
//! Editors and build tools replace files in several steps (write a temporary, rename, touch), so
//! events are debounced: a reload starts a moment after the first change and takes in every change
//! made meanwhile. The folders are watched rather than the files, since a replaced file is a new
//! inode.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::control::Control;

/// How long after the first change a reload starts.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts watching the files of the current config, reloading when any changes.
///
/// The folders are watched before this returns, so a change made once the gateway says it started
/// is never missed; the returned task runs until aborted.
pub fn start(control: Arc<Control>) -> Option<JoinHandle<()>> {
    let (changed, changes) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            for path in event.paths {
                let _ = changed.send(path);
            }
        }
    }) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    let files = watch_folders(&mut watcher, &control.watched_files(), &HashSet::new());
    Some(tokio::spawn(reload_on_change(control, watcher, files, changes)))
}

async fn reload_on_change(
    control: Arc<Control>,
    mut watcher: RecommendedWatcher,
    mut files: HashSet<PathBuf>,
    mut changes: mpsc::UnboundedReceiver<PathBuf>,
) {
    while let Some(path) = changes.recv().await {
        if !files.contains(&path) {
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        while changes.try_recv().is_ok() {}
        if control.reload("file change").await.is_ok() {
            files = watch_folders(&mut watcher, &control.watched_files(), &files);
        }
    }
}

/// Watches the folders of `files` (those not watched yet) and returns the files to react to.
fn watch_folders(watcher: &mut RecommendedWatcher, files: &[PathBuf], before: &HashSet<PathBuf>) -> HashSet<PathBuf> {
    let files: HashSet<PathBuf> = files.iter().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())).collect();
    let watched: HashSet<PathBuf> = before.iter().filter_map(|f| f.parent().map(PathBuf::from)).collect();
    for folder in files.iter().filter_map(|f| f.parent()) {
        if !watched.contains(folder)
            && let Err(e) = watcher.watch(folder, RecursiveMode::NonRecursive)
        {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot watch a folder for changes");
        }
    }
    files
}
