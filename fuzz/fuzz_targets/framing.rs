//! The raw request-framing check: never panics, spoils at most one byte (to NUL), and reaches
//! the same result however the stream is split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::framing::Framing;

fuzz_target!(|input: (u8, &[u8])| {
    let (step, stream) = input;
    let check = |step: usize| {
        let mut framing = Framing::default();
        let mut seen = stream.to_vec();
        for piece in seen.chunks_mut(step.max(1)) {
            framing.check(piece);
        }
        seen
    };
    let whole = check(stream.len());
    assert_eq!(check(usize::from(step)), whole, "split into reads of {step} bytes");
    let changed: Vec<usize> = (0..stream.len()).filter(|&i| whole[i] != stream[i]).collect();
    assert!(changed.len() <= 1 && changed.iter().all(|&i| whole[i] == 0), "{changed:?}");
});
