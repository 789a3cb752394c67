//! Criterion benchmarks live in `benches/`; run `cargo bench -p idempotency-benches`.
