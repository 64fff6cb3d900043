//! What metrics cost a request: the per-request update (`sluice_requests_total` and the duration
//! histogram) against doing nothing, in the same run.
//!
//! Run: `cargo bench -p sluice --bench metrics`.

use std::sync::Arc;
use std::time::Duration;

use sluice::metrics::METRICS;

fn main() {
    divan::main();
}

#[divan::bench]
fn request_metrics_on(bencher: divan::Bencher) {
    let route: Arc<str> = Arc::from("api");
    bencher.bench_local(|| METRICS.request(Some(divan::black_box(&route)), 200, Duration::from_micros(180)));
}

#[divan::bench]
fn request_metrics_off(bencher: divan::Bencher) {
    let route: Arc<str> = Arc::from("api");
    bencher.bench_local(|| divan::black_box((Some(divan::black_box(&route)), 200u16, Duration::from_micros(180))));
}
