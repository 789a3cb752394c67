//! What the HTTP layer's request fingerprint costs: the body's bytes (the default) against its
//! RFC 8785 canonical form (`JsonFingerprint::Canonical`), for 1 KiB and 64 KiB JSON bodies.
//! The canonical figure includes the lossless check (every number exact, no repeated member
//! names) that decides whether the canonical form may be used.
//!
//! `cargo bench -p idempotency-benches --bench http`

#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idempotency_core::Fingerprint;
use serde_json::json;

/// An order-like JSON document of about `target` bytes (keys deliberately unsorted, with
/// spacing, numbers and nested objects, as a client library would send it).
fn body(target: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(json!({
            "sku": format!("tea-{i:04}"),
            "qty": i % 7 + 1,
            "price": 4.5 + f64::from(i % 13),
            "note": "green tea, loose leaf, 100 g",
            "gift": i % 3 == 0,
            "meta": {"warehouse": "b-12", "priority": null}
        }));
        let doc = json!({"customer": "cus_4821", "currency": "EUR", "items": items});
        let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        if text.len() >= target || i > 10_000 {
            return text;
        }
        i += 1;
    }
}

fn fingerprint_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("http/fingerprint_body");
    for (label, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let body = body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("bytes", label), &body, |b, body| {
            b.iter(|| Fingerprint::of(body));
        });
        group.bench_with_input(BenchmarkId::new("canonical", label), &body, |b, body| {
            b.iter(|| {
                let canonical = idempotency_http::canonical_json(body);
                Fingerprint::of(canonical.as_deref().unwrap_or(body))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fingerprint_json);
criterion_main!(benches);
