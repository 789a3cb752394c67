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

// The Rust examples of the README and docs/*.md, compiled (and the runnable ones run) as this
// crate's doctests by `cargo test --workspace`, so they cannot drift from the API. Doctest builds
// only: nothing here is in the crate or its docs.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
struct GuideExamples;

#[cfg(doctest)]
#[doc = include_str!("../../docs/axum.md")]
struct AxumExamples;
