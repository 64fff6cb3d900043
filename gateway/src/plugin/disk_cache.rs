//! Compiled plugins on disk, so that a restart or a reload does not compile an unchanged plugin
//! again: one file per Wasm file's SHA-256 and engine (`{sha256}-{engine}.cwasm`).
//!
//! The cache keeps the [`KEEP`] most recently used files (a file is touched whenever it is
//! loaded) and drops the rest each time it grows: every version of a plugin that was ever loaded
//! would otherwise stay there, a megabyte or two each. It only ever deletes files named as it
//! names them, so a shared directory keeps everything else.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wasmtime::Engine;
use wasmtime::component::Component;

/// How many compiled plugins the cache keeps.
pub const KEEP: usize = 32;

/// How old an unfinished write must be before it is taken for one that died.
const STALE_WRITE: Duration = Duration::from_secs(3600);

/// A private directory of compiled plugins.
#[derive(Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// The cache in `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice` or `~/.cache/sluice`;
    /// created private to this user. None (no cache) if it cannot be.
    pub fn open() -> Option<DiskCache> {
        let dir = std::env::var_os("SLUICE_CACHE_DIR").map(PathBuf::from).or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
                .map(|base| base.join("sluice"))
        })?;
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
        let meta = std::fs::metadata(&dir).ok()?;
        // SAFETY: getuid has no preconditions.
        let private = meta.is_dir() && meta.uid() == unsafe { getuid() } && meta.permissions().mode() & 0o022 == 0;
        if !private {
            tracing::warn!(dir = %dir.display(), "the plugin cache directory is not private to this user; not caching");
            return None;
        }
        Some(DiskCache { dir })
    }

    /// The component compiled from the Wasm file with this SHA-256, compiling (and storing) it
    /// when the cache does not have it.
    pub fn component(&self, engine: &Engine, wasm: &[u8], sha256: &str) -> wasmtime::Result<Component> {
        let compat = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.finish()
        };
        let cached = self.dir.join(format!("{sha256}-{compat:016x}.cwasm"));
        if cached.exists() {
            // SAFETY: the file was written by `precompile_component` below into a directory only
            // this user can write (see `open`), and wasmtime checks that it was compiled by a
            // compatible engine.
            match unsafe { Component::deserialize_file(engine, &cached) } {
                Ok(component) => {
                    // Recently used, for `prune`.
                    let _ = File::open(&cached).and_then(|file| file.set_modified(SystemTime::now()));
                    return Ok(component);
                }
                Err(e) => tracing::warn!(file = %cached.display(), error = %e, "ignoring an unusable cached plugin"),
            }
        }
        let code = engine.precompile_component(wasm)?;
        let temporary = self.dir.join(format!("{sha256}.{}.tmp", std::process::id()));
        if std::fs::write(&temporary, &code).and_then(|()| std::fs::rename(&temporary, &cached)).is_ok() {
            self.prune();
        } else {
            tracing::warn!(dir = %self.dir.display(), "cannot write the plugin cache; plugins will be compiled at every start");
        }
        // SAFETY: `code` was produced by this engine just now.
        unsafe { Component::deserialize(engine, &code) }
    }

    /// Deletes all but the [`KEEP`] most recently used compiled plugins, and the unfinished
    /// writes older than [`STALE_WRITE`]. A process that still runs a deleted file keeps its
    /// mapping; one that needs it again compiles it again.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        let mut compiled = Vec::new();
        for entry in entries.flatten() {
            let (Some(name), Ok(modified)) =
                (entry.file_name().to_str().map(str::to_owned), entry.metadata().and_then(|m| m.modified()))
            else {
                continue;
            };
            match kind(&name) {
                Some(Kind::Compiled) => compiled.push((modified, entry.path())),
                Some(Kind::Unfinished) if now.duration_since(modified).is_ok_and(|age| age > STALE_WRITE) => {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        compiled.sort_by_key(|&(modified, _)| std::cmp::Reverse(modified));
        for (_, path) in compiled.into_iter().skip(KEEP) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the cache writes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `{sha256}-{engine}.cwasm`.
    Compiled,
    /// `{sha256}.{pid}.tmp`, a write in progress (or one that died).
    Unfinished,
}

/// Which of the cache's own files `name` is, if any.
fn kind(name: &str) -> Option<Kind> {
    let hex = |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some((sha256, engine)) = name.strip_suffix(".cwasm").and_then(|stem| stem.split_once('-')) {
        return (hex(sha256, 64) && hex(engine, 16)).then_some(Kind::Compiled);
    }
    let (sha256, pid) = name.strip_suffix(".tmp")?.split_once('.')?;
    (hex(sha256, 64) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(Kind::Unfinished)
}

unsafe extern "C" {
    /// The C library's `getuid(2)`.
    fn getuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_caches_own_names_are_its_files() {
        let sha = "ab".repeat(32);
        assert_eq!(kind(&format!("{sha}-00112233aabbccdd.cwasm")), Some(Kind::Compiled));
        assert_eq!(kind(&format!("{sha}.4242.tmp")), Some(Kind::Unfinished));
        for other in [
            "notes.txt".to_string(),
            "other.cwasm".to_string(),
            format!("{sha}-0011.cwasm"),
            format!("{sha}-00112233aabbccdd.cwasm.bak"),
            format!("{sha}.x1.tmp"),
            format!("{}.1.tmp", "ab".repeat(31)),
        ] {
            assert_eq!(kind(&other), None, "{other}");
        }
    }
}
