//! Micro-benchmarks: fingerprints, key derivation, the record codec, and the memory store with
//! and without the engine. Run: `cargo bench -p idempotency-benches`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idempotency_core::{
    Begin, Claim, Completed, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Record, Scope, StoreKey, StoredOutcome, codec,
};
use idempotency_memory::MemoryStore;

fn fingerprint(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    for size in [64usize, 4096, 65536] {
        let body = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("http_request", size), &body, |b, body| {
            b.iter(|| {
                Fingerprint::builder()
                    .part("POST")
                    .part("/api/orders?x=1")
                    .part("application/json")
                    .part(black_box(body))
                    .finish()
            })
        });
    }
    group.finish();
}

fn keys(c: &mut Criterion) {
    let key = IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324")
        .unwrap_or_else(|e| panic!("{e}"));
    let scope = Scope::new("tenant:acme/user@example.com");
    c.bench_function("key/validate", |b| {
        b.iter(|| IdempotencyKey::new(black_box("8e03978e-40d5-43e8-bc93-6894a57f9324")))
    });
    c.bench_function("key/derive", |b| {
        b.iter(|| StoreKey::derive("idempotency:", black_box(&scope), black_box(&key)))
    });
}

fn completed_record(size: usize, compress: bool) -> Record {
    let pattern = b"{\"id\":12345,\"name\":\"widget\"},";
    let body: Vec<u8> = (0..size).map(|i| pattern[i % pattern.len()]).collect();
    let outcome = StoredOutcome::new(body, Some("application/json".into()));
    let outcome = if compress {
        outcome.compressed_above(4096)
    } else {
        outcome
    };
    Record::Completed(Completed {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1_764_000_000_000,
        completed_at_ms: 1_764_000_000_010,
        outcome,
    })
}

fn codec_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let in_progress = Record::InProgress(InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1_764_000_000_000,
    });
    let cases = [
        ("in_progress", in_progress),
        ("completed_200B", completed_record(200, false)),
        ("completed_64KiB", completed_record(65536, false)),
        ("completed_64KiB_lz4", completed_record(65536, true)),
    ];
    for (name, record) in cases {
        let text = codec::encode(&record);
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| codec::encode(black_box(&record)))
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| codec::decode(black_box(text.as_bytes())))
        });
    }
    // The same 200 B record with its fields reordered: not the encoder's layout, so it takes the
    // general JSON decoder instead of the canonical reader (what a foreign writer would cost).
    let reordered = {
        let text = codec::encode(&completed_record(200, false));
        let (head, body) = text.split_once(",\"b\":").unwrap_or((&text, ""));
        let body = body.trim_end_matches('}');
        format!("{{\"b\":{body},{}}}", &head[1..])
    };
    if codec::decode(reordered.as_bytes()).is_err() {
        panic!("the reordered record does not decode: {reordered}");
    }
    group.bench_function(
        BenchmarkId::new("decode", "completed_200B_reordered"),
        |b| b.iter(|| codec::decode(black_box(reordered.as_bytes()))),
    );
    let big = StoredOutcome::new(vec![b'a'; 65536], None);
    group.bench_function("compress_64KiB", |b| {
        b.iter(|| black_box(big.clone()).compressed_above(4096))
    });
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));
    let lease = Duration::from_secs(60);
    let retention = Duration::from_secs(3600);
    let keys: Vec<StoreKey> = (0..1_000_000)
        .map(|n| StoreKey::from_raw(format!("idempotency:bench:{n}")))
        .collect();

    group.bench_function("store_claim_complete", |b| {
        b.iter_custom(|iters| {
            let store = MemoryStore::builder().max_entries(usize::MAX).build();
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters as usize {
                    let key = &keys[n % keys.len()];
                    let claim = InProgress {
                        token: LeaseToken::generate(),
                        fingerprint: Fingerprint::from_bytes([1; 32]),
                        created_at_ms: 0,
                    };
                    let claimed = store.try_claim(key, &claim, lease).await;
                    if matches!(claimed, Ok(Claim::Claimed)) {
                        let done = Completed {
                            token: claim.token,
                            fingerprint: claim.fingerprint,
                            created_at_ms: 0,
                            completed_at_ms: 1,
                            outcome: StoredOutcome::new(&b"{\"ok\":true}"[..], None),
                        };
                        let _ =
                            black_box(store.complete(key, &claim.token, &done, retention).await);
                    }
                }
                start.elapsed()
            })
        })
    });

    let store = MemoryStore::new();
    let replay_key = StoreKey::from_raw("idempotency:bench:replay");
    rt.block_on(async {
        let claim = InProgress {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::from_bytes([1; 32]),
            created_at_ms: 0,
        };
        let _ = store.try_claim(&replay_key, &claim, lease).await;
        let done = Completed {
            token: claim.token,
            fingerprint: claim.fingerprint,
            created_at_ms: 0,
            completed_at_ms: 1,
            outcome: StoredOutcome::new(&b"{\"ok\":true}"[..], None),
        };
        let _ = store
            .complete(&replay_key, &claim.token, &done, retention)
            .await;
    });
    group.bench_function("store_replay", |b| {
        let claim = InProgress {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::from_bytes([1; 32]),
            created_at_ms: 0,
        };
        b.iter(|| futures::executor::block_on(store.try_claim(&replay_key, &claim, lease)))
    });

    let scope = Scope::new("tenant-1");
    let ids: Vec<IdempotencyKey> = (0..1_000_000)
        .map(|n| IdempotencyKey::new(format!("key-{n}")).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    group.bench_function("engine_begin_complete", |b| {
        b.iter_custom(|iters| {
            let engine =
                Idempotency::builder(MemoryStore::builder().max_entries(usize::MAX).build())
                    .ignore_env()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters as usize {
                    if let Ok(Begin::Run(guard)) = engine
                        .begin(
                            &scope,
                            &ids[n % ids.len()],
                            Fingerprint::from_bytes([2; 32]),
                        )
                        .await
                    {
                        let _ = guard
                            .complete(StoredOutcome::new(&b"{\"ok\":true}"[..], None))
                            .await;
                    }
                }
                start.elapsed()
            })
        })
    });
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        if let Ok(Begin::Run(guard)) = engine
            .begin(&scope, &ids[0], Fingerprint::from_bytes([2; 32]))
            .await
        {
            let _ = guard
                .complete(StoredOutcome::new(&b"{\"ok\":true}"[..], None))
                .await;
        }
    });
    group.bench_function("engine_replay", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = black_box(
                        engine
                            .begin(&scope, &ids[0], Fingerprint::from_bytes([2; 32]))
                            .await,
                    );
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, fingerprint, keys, codec_bench, memory);
criterion_main!(benches);
