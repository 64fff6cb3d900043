//! Path normalisation: never panics, and normalising twice changes nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let once = sluice::path::normalize(path);
    let twice = sluice::path::normalize(&once);
    assert_eq!(once, twice, "normalize is not idempotent on {path:?}");
    if path.starts_with('/') {
        assert!(once.starts_with('/'), "{path:?} normalised to {once:?}");
        assert!(!once.split('/').any(|s| s == ".." || s == "."), "{path:?} normalised to {once:?}");
    }
});
