//! Runnable examples for the idempotency crates (not published). The examples live in this
//! directory; run one with `cargo run -p idempotency-examples --example <name>`:
//!
//! | example | what it shows |
//! |---|---|
//! | `axum_app` | the `Idempotency-Key` layer on an axum router, scoped per bearer principal |
//! | `job_consumer` | a message consumer that survives redelivery with `Idempotency::run` |
//! | `rest_client` | the KV REST store (Upstash / Vercel KV) against `kv-rest-gateway` |
//!
//! `cargo xtask test` builds all of them (clippy `--all-targets`).
