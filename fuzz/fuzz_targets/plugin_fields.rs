//! The decoders of what a plugin hands back (context fields and header changes, flat byte
//! lists written by untrusted guest code): never panic, and what decodes re-encodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::plugin::fields;

fuzz_target!(|bytes: &[u8]| {
    let mut again = Vec::new();
    let mut decoded = Vec::new();
    for entry in fields::entries(bytes) {
        let Ok((name, value)) = entry else { break };
        fields::push(&mut again, name, value);
        decoded.push((name.to_vec(), value.to_vec()));
    }
    let redecoded: Vec<_> =
        fields::entries(&again).map(|e| e.map(|(n, v)| (n.to_vec(), v.to_vec())).unwrap()).collect();
    assert_eq!(decoded, redecoded);
    for change in fields::header_changes(bytes) {
        if change.is_err() {
            break;
        }
    }
});
