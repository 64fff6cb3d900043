//! Header names plugins send, parsed once per worker thread.
//!
//! A plugin sets the same few headers on every request (`x-consumer`, `ratelimit-remaining`), and
//! a name that is not one of HTTP's standard ones costs a validation, an allocation and a copy
//! each time it is parsed. A worker keeps the names it has parsed, so a repeated one costs a hash
//! lookup and a reference count. The cache is bounded: past [`MAX_NAMES`] names (a plugin
//! inventing a new one per request), names are parsed as they come.

use std::cell::RefCell;

use http::HeaderName;
use http::header::InvalidHeaderName;
use rustc_hash::FxHashMap;

/// The most names a worker keeps.
const MAX_NAMES: usize = 512;

/// `name` as a header name, from this worker's cache when it has been seen before.
pub fn parse(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    thread_local! {
        static NAMES: RefCell<FxHashMap<Box<[u8]>, HeaderName>> = RefCell::default();
    }
    NAMES.with_borrow_mut(|names| {
        if let Some(known) = names.get(name) {
            return Ok(known.clone());
        }
        let parsed = HeaderName::from_bytes(name)?;
        if names.len() < MAX_NAMES {
            names.insert(name.into(), parsed.clone());
        }
        Ok(parsed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_once_and_refuses_what_is_not_a_name() {
        let first = parse(b"X-Consumer").unwrap();
        assert_eq!(first.as_str(), "x-consumer");
        assert_eq!(parse(b"X-Consumer").unwrap(), first, "the cached name");
        assert!(parse(b"bad name").is_err());
        assert!(parse(b"bad name").is_err(), "a refused name is not cached");
    }
}
