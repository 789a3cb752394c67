//! Every combination of the selection variables, without touching the process environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use super::*;

const SECRET: &str = "s3cr3t-token-value";

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

const ALL: Compiled = Compiled {
    memory: true,
    redis: true,
    redis_tls: true,
    kv_rest: true,
    sql: true,
};

/// The choice in a build with every store (the feature checks have their own tests).
fn plan(vars: &[(&str, &str)]) -> Result<StorePlan, StoreSelectionError> {
    plan_for(ALL, StoreSelection::AllowMemory, env(vars))
}

fn required(vars: &[(&str, &str)]) -> Result<StorePlan, StoreSelectionError> {
    plan_for(ALL, StoreSelection::RequireDistributed, env(vars))
}

/// Nothing a caller can print shows a secret.
fn assert_no_secret(shown: &str) {
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
    assert!(!shown.contains("hunter2"), "password leaked: {shown}");
}

#[test]
fn nothing_configured_means_memory() {
    let plan = plan(&[]).unwrap();
    assert_eq!(plan.kind(), BackendKind::Memory);
    assert!(!plan.kind().is_distributed());
    assert_eq!(plan.description().location(), None);
    assert!(plan.description().to_string().starts_with("memory"));
}

#[test]
fn nothing_configured_is_refused_when_distributed_is_required() {
    let error = required(&[]).unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::DistributedStoreRequired
    ));
    let message = error.to_string();
    for variable in [
        "UPSTASH_REDIS_REST_URL",
        "KV_REST_API_URL",
        "REDIS_URL",
        "KV_URL",
    ] {
        assert!(message.contains(variable), "{message}");
    }
}

#[test]
fn upstash_variables_select_the_rest_store() {
    let vars = [
        ("UPSTASH_REDIS_REST_URL", "https://eu1-fine-cat.upstash.io"),
        ("UPSTASH_REDIS_REST_TOKEN", SECRET),
    ];
    for plan in [plan(&vars).unwrap(), required(&vars).unwrap()] {
        assert_eq!(plan.kind(), BackendKind::KvRest);
        assert_eq!(plan.description().source(), Some("UPSTASH_REDIS_REST_URL"));
        assert_eq!(
            plan.description().to_string(),
            "kv-rest at https://eu1-fine-cat.upstash.io (from UPSTASH_REDIS_REST_URL)"
        );
        assert_no_secret(&format!("{plan:?} {}", plan.description()));
    }
}

#[test]
fn vercel_rest_variables_select_the_rest_store() {
    let plan = plan(&[
        ("KV_REST_API_URL", "https://x.kv.vercel-storage.com"),
        ("KV_REST_API_TOKEN", SECRET),
        ("KV_REST_API_READ_ONLY_TOKEN", "ro"),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::KvRest);
    assert_eq!(plan.description().source(), Some("KV_REST_API_URL"));
}

#[test]
fn upstash_names_win_over_vercel_names_and_rest_over_redis() {
    let plan = plan(&[
        ("KV_REST_API_URL", "https://b.vercel"),
        ("KV_REST_API_TOKEN", "t2"),
        ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io"),
        ("UPSTASH_REDIS_REST_TOKEN", "t1"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("KV_URL", "rediss://default:hunter2@x.upstash.io:6379"),
    ])
    .unwrap();
    assert_eq!(plan.description().source(), Some("UPSTASH_REDIS_REST_URL"));
    // What Vercel sets for a KV database: all four; the REST pair wins.
    let plan = self::plan(&[
        ("KV_URL", "rediss://default:hunter2@x.upstash.io:6379"),
        ("KV_REST_API_URL", "https://x.upstash.io"),
        ("KV_REST_API_TOKEN", SECRET),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::KvRest);
    assert_eq!(plan.description().source(), Some("KV_REST_API_URL"));
}

#[test]
fn a_rest_url_without_its_token_is_an_error_not_a_fall_back() {
    for vars in [
        &[("UPSTASH_REDIS_REST_URL", "https://a.upstash.io")][..],
        &[
            ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io"),
            ("UPSTASH_REDIS_REST_TOKEN", "  "),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ][..],
    ] {
        let error = plan(vars).unwrap_err();
        assert!(
            matches!(
                error,
                StoreSelectionError::IncompleteRestConfig {
                    present: "UPSTASH_REDIS_REST_URL",
                    missing: "UPSTASH_REDIS_REST_TOKEN"
                }
            ),
            "{error:?}"
        );
    }
    let error = plan(&[("KV_REST_API_TOKEN", SECRET)]).unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::IncompleteRestConfig {
            present: "KV_REST_API_TOKEN",
            missing: "KV_REST_API_URL"
        }
    ));
    assert_no_secret(&error.to_string());
}

#[test]
fn redis_url_selects_redis_before_kv_url() {
    let plan = plan(&[
        ("KV_URL", "redis://other:6379"),
        ("REDIS_URL", "redis://:hunter2@10.0.0.5:6379/2"),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::Redis);
    assert_eq!(plan.description().source(), Some("REDIS_URL"));
    assert_eq!(
        plan.description().location(),
        Some("redis://:<redacted>@10.0.0.5:6379/2")
    );
    assert_no_secret(&format!("{plan:?} {}", plan.description()));
    let required = required(&[("REDIS_URL", "redis://127.0.0.1:6379")]).unwrap();
    assert!(required.kind().is_distributed());
}

#[test]
fn kv_url_selects_redis() {
    let plan = plan(&[("KV_URL", "redis://default:hunter2@127.0.0.1:6379")]).unwrap();
    assert_eq!(plan.kind(), BackendKind::Redis);
    assert_eq!(plan.description().source(), Some("KV_URL"));
    assert_no_secret(&plan.description().to_string());
}

#[test]
fn tls_redis_urls_need_the_tls_feature() {
    let vars = env(&[("KV_URL", "rediss://default:hunter2@x.upstash.io:6379")]);
    let with_tls = plan_for(ALL, StoreSelection::AllowMemory, &vars).unwrap();
    assert_eq!(with_tls.kind(), BackendKind::Redis);
    let without = Compiled {
        redis_tls: false,
        ..ALL
    };
    let error = plan_for(without, StoreSelection::AllowMemory, &vars).unwrap_err();
    assert!(
        matches!(
            error,
            StoreSelectionError::FeatureDisabled {
                variable: "KV_URL",
                feature: "redis-tls",
                ..
            }
        ),
        "{error:?}"
    );
    assert_no_secret(&error.to_string());
    // A plain redis:// URL does not need it.
    let plain = env(&[("REDIS_URL", "redis://127.0.0.1:6379")]);
    assert!(plan_for(without, StoreSelection::AllowMemory, &plain).is_ok());
}

#[test]
fn empty_values_count_as_unset() {
    let plan = plan(&[
        ("UPSTASH_REDIS_REST_URL", ""),
        ("UPSTASH_REDIS_REST_TOKEN", ""),
        ("REDIS_URL", " "),
        ("KV_URL", ""),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::Memory);
    assert!(matches!(
        required(&[("REDIS_URL", "")]),
        Err(StoreSelectionError::DistributedStoreRequired)
    ));
}

#[test]
fn unusable_urls_are_named_without_their_secrets() {
    let error = plan(&[("REDIS_URL", "hunter2")]).unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::InvalidVariable {
            variable: "REDIS_URL",
            ..
        }
    ));
    assert_no_secret(&error.to_string());
    let error = plan(&[("REDIS_URL", "http://:hunter2@127.0.0.1:6379")]).unwrap_err();
    assert!(error.to_string().contains("REDIS_URL"), "{error}");
    assert_no_secret(&error.to_string());
    let error = plan(&[
        ("KV_REST_API_URL", "redis://:hunter2@x:6379"),
        ("KV_REST_API_TOKEN", SECRET),
    ])
    .unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::InvalidVariable {
            variable: "KV_REST_API_URL",
            ..
        }
    ));
    assert_no_secret(&error.to_string());
}

#[test]
fn a_store_whose_feature_is_off_is_an_error_not_a_fall_back() {
    let none = Compiled {
        memory: true,
        redis: false,
        redis_tls: false,
        kv_rest: false,
        sql: false,
    };
    let error = plan_for(
        none,
        StoreSelection::AllowMemory,
        env(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:6379")]),
    )
    .unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::FeatureDisabled {
            variable: "REDIS_URL",
            backend: BackendKind::Redis,
            feature: "redis",
        }
    ));
    assert_no_secret(&error.to_string());
    let error = plan_for(
        none,
        StoreSelection::AllowMemory,
        env(&[
            ("KV_REST_API_URL", "https://x"),
            ("KV_REST_API_TOKEN", SECRET),
        ]),
    )
    .unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::FeatureDisabled {
            backend: BackendKind::KvRest,
            feature: "kv-rest",
            ..
        }
    ));
    assert_no_secret(&error.to_string());
}

#[test]
fn no_memory_feature_and_nothing_configured_is_an_error() {
    let redis_only = Compiled {
        memory: false,
        ..ALL
    };
    let error = plan_for(redis_only, StoreSelection::AllowMemory, env(&[])).unwrap_err();
    assert!(matches!(error, StoreSelectionError::MemoryUnavailable));
    assert!(matches!(
        plan_for(redis_only, StoreSelection::RequireDistributed, env(&[])),
        Err(StoreSelectionError::DistributedStoreRequired)
    ));
}

#[test]
fn this_build_chooses_what_it_has() {
    let result = plan_store(
        StoreSelection::AllowMemory,
        env(&[("REDIS_URL", "redis://127.0.0.1:6379")]),
    );
    assert_eq!(result.is_ok(), cfg!(feature = "redis"), "{result:?}");
}

#[cfg(feature = "memory")]
#[tokio::test]
async fn opening_the_memory_plan_gives_a_memory_store() {
    let store = store_from_lookup(StoreSelection::AllowMemory, env(&[]))
        .await
        .unwrap();
    assert_eq!(store.kind(), BackendKind::Memory);
    assert!(store.as_memory().is_some());
}

/// `AnyStore` forwards `wait_for_change` (the default would answer `Unsupported`, and every
/// waiting duplicate would poll): on the memory store, a key not held by the token seen has
/// changed, at once.
#[cfg(feature = "memory")]
#[tokio::test]
async fn the_any_store_forwards_wake_ups() {
    use idempotency_core::{IdempotencyStore, LeaseToken, Waited};
    let store = store_from_lookup(StoreSelection::AllowMemory, env(&[]))
        .await
        .unwrap();
    let waited = store
        .wait_for_change(
            &idempotency_core::StoreKey::from_raw("absent"),
            &LeaseToken::generate(),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(waited, Waited::Changed);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_unreachable_redis_starts_unconnected_without_showing_the_password() {
    use idempotency_core::{IdempotencyStore, Scope};
    // Port 1 on loopback: nothing listens there.
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        env(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:1")]),
    )
    .await
    .expect("an unreachable store must not stop start-up");
    assert!(!store.is_connected());
    assert!(store.as_redis().is_none());
    let key = idempotency_core::StoreKey::derive(
        "t:",
        &Scope::global(),
        &idempotency_core::IdempotencyKey::new("k").unwrap(),
    );
    let error = store.get(&key).await.unwrap_err();
    assert!(
        matches!(error, idempotency_core::StoreError::Unavailable { .. }),
        "{error:?}"
    );
    let mut shown = format!("{error} {error:?} {store:?} {}", store.description());
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        shown.push_str(&format!(" {cause}"));
        source = cause.source();
    }
    assert_no_secret(&shown);
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
}

#[cfg(feature = "kv-rest")]
#[tokio::test]
async fn a_rest_plan_opens_without_io_and_keeps_its_token_hidden() {
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        env(&[
            ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
            ("UPSTASH_REDIS_REST_TOKEN", SECRET),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(store.kind(), BackendKind::KvRest);
    assert!(store.as_kv_rest().is_some());
    assert_no_secret(&format!("{store:?} {}", store.description()));
}

#[test]
fn idempotency_store_names_the_store_over_detection() {
    let everything = [
        ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io"),
        ("UPSTASH_REDIS_REST_TOKEN", SECRET),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ];
    let with = |store: &str| {
        let mut vars = everything.to_vec();
        vars.push((STORE_ENV_VAR, store));
        plan(&vars)
    };
    assert_eq!(with("redis").unwrap().kind(), BackendKind::Redis);
    assert_eq!(with(" Valkey ").unwrap().kind(), BackendKind::Redis);
    assert_eq!(with("kv-rest").unwrap().kind(), BackendKind::KvRest);
    assert_eq!(with("memory").unwrap().kind(), BackendKind::Memory);
    // Unset or empty: detection as before (REST first).
    assert_eq!(with("").unwrap().kind(), BackendKind::KvRest);
    // Memory is still refused when a distributed store is required.
    let mut vars = everything.to_vec();
    vars.push((STORE_ENV_VAR, "memory"));
    assert!(matches!(
        required(&vars),
        Err(StoreSelectionError::DistributedStoreRequired)
    ));
}

#[test]
fn idempotency_store_without_its_variables_is_an_error_naming_them() {
    let error = plan(&[(STORE_ENV_VAR, "redis")]).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(STORE_ENV_VAR) && message.contains("REDIS_URL"),
        "{message}"
    );
    // The REST variables do not satisfy a request for Redis.
    let error = plan(&[
        (STORE_ENV_VAR, "redis"),
        ("KV_REST_API_URL", "https://x.kv.vercel-storage.com"),
        ("KV_REST_API_TOKEN", SECRET),
    ])
    .unwrap_err();
    assert!(error.to_string().contains("REDIS_URL"));
    assert_no_secret(&error.to_string());
    let error = plan(&[
        (STORE_ENV_VAR, "kv-rest"),
        ("REDIS_URL", "redis://127.0.0.1"),
    ])
    .unwrap_err();
    assert!(error.to_string().contains("KV_REST_API_URL"), "{error}");
    let error = plan(&[(STORE_ENV_VAR, "postgress")]).unwrap_err();
    assert!(
        matches!(error, StoreSelectionError::InvalidVariable { variable, .. } if variable == STORE_ENV_VAR)
    );
    assert!(error.to_string().contains("postgress"));
}

#[test]
fn redis_cluster_urls_select_the_cluster_store_with_every_password_hidden() {
    let plan = plan(&[
        (
            REDIS_CLUSTER_ENV_VAR,
            "redis://:hunter2@10.0.0.1:7000, redis://u:s3cr3t-token-value@10.0.0.2:7000,",
        ),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::RedisCluster);
    assert!(plan.kind().is_distributed());
    assert_eq!(plan.description().source(), Some(REDIS_CLUSTER_ENV_VAR));
    assert_eq!(
        plan.description().location(),
        Some("redis://:<redacted>@10.0.0.1:7000,redis://u:<redacted>@10.0.0.2:7000")
    );
    assert_no_secret(&format!("{plan:?} {}", plan.description()));
    // REST still wins over any Redis variable; IDEMPOTENCY_STORE can pick the cluster.
    let plan = self::plan(&[
        (REDIS_CLUSTER_ENV_VAR, "redis://10.0.0.1:7000"),
        ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io"),
        ("UPSTASH_REDIS_REST_TOKEN", SECRET),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::KvRest);
    let plan = self::plan(&[
        (REDIS_CLUSTER_ENV_VAR, "redis://10.0.0.1:7000"),
        ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io"),
        ("UPSTASH_REDIS_REST_TOKEN", SECRET),
        (STORE_ENV_VAR, "redis-cluster"),
    ])
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::RedisCluster);
}

#[test]
fn unusable_cluster_lists_are_errors_naming_the_variable() {
    for bad in [
        " , ,",
        "redis://10.0.0.1:7000,http://10.0.0.2:7000",
        "unix:///tmp/redis.sock",
        "10.0.0.1:7000",
    ] {
        let error = plan(&[(REDIS_CLUSTER_ENV_VAR, bad)]).unwrap_err();
        assert!(
            matches!(error, StoreSelectionError::InvalidVariable { variable, .. } if variable == REDIS_CLUSTER_ENV_VAR),
            "{bad}: {error:?}"
        );
    }
    let error = plan(&[(STORE_ENV_VAR, "cluster")]).unwrap_err();
    assert!(error.to_string().contains(REDIS_CLUSTER_ENV_VAR), "{error}");
    // TLS nodes need the redis-tls feature.
    let no_tls = Compiled {
        redis_tls: false,
        ..ALL
    };
    let error = plan_for(
        no_tls,
        StoreSelection::AllowMemory,
        env(&[(REDIS_CLUSTER_ENV_VAR, "rediss://10.0.0.1:7000")]),
    )
    .unwrap_err();
    assert!(matches!(
        error,
        StoreSelectionError::FeatureDisabled {
            feature: "redis-tls",
            ..
        }
    ));
}

#[test]
fn database_url_alone_does_not_move_the_records() {
    let plan = plan(&[("DATABASE_URL", "postgres://app:hunter2@db/shop")]).unwrap();
    assert_eq!(plan.kind(), BackendKind::Memory);
    let plan = plan_for(
        ALL,
        StoreSelection::AllowMemory,
        env(&[
            ("DATABASE_URL", "postgres://app@db/shop"),
            ("REDIS_URL", "redis://cache:6379"),
        ]),
    )
    .unwrap();
    assert_eq!(plan.kind(), BackendKind::Redis);
}

#[test]
fn idempotency_store_sql_uses_the_database_url() {
    for (url, shown) in [
        (
            "postgres://app:hunter2@db:5432/shop",
            "sql at postgres://app:<redacted>@db:5432/shop (from DATABASE_URL)",
        ),
        (
            "sqlite://data/app.db",
            "sql at sqlite://data/app.db (from DATABASE_URL)",
        ),
    ] {
        let plan = required(&[
            ("IDEMPOTENCY_STORE", "sql"),
            ("DATABASE_URL", url),
            ("REDIS_URL", "redis://cache:6379"),
        ])
        .unwrap();
        assert_eq!(plan.kind(), BackendKind::Sql);
        assert!(plan.kind().is_distributed());
        assert_eq!(plan.description().to_string(), shown);
        assert_no_secret(&format!("{plan:?} {}", plan.description()));
    }
}

#[test]
fn idempotency_store_sql_needs_a_usable_database_url() {
    let missing = plan(&[("IDEMPOTENCY_STORE", "sql")]).unwrap_err();
    assert!(
        missing.to_string().contains("DATABASE_URL is not set"),
        "{missing}"
    );
    let wrong = plan(&[
        ("IDEMPOTENCY_STORE", "sql"),
        ("DATABASE_URL", "mysql://app:hunter2@db/shop"),
    ])
    .unwrap_err();
    assert!(
        matches!(
            wrong,
            StoreSelectionError::InvalidVariable {
                variable: "DATABASE_URL",
                ..
            }
        ),
        "{wrong}"
    );
    assert_no_secret(&wrong.to_string());
    let without = Compiled { sql: false, ..ALL };
    let disabled = plan_for(
        without,
        StoreSelection::AllowMemory,
        env(&[
            ("IDEMPOTENCY_STORE", "sql"),
            ("DATABASE_URL", "sqlite://a.db"),
        ]),
    )
    .unwrap_err();
    assert!(matches!(
        disabled,
        StoreSelectionError::FeatureDisabled { feature: "sql", .. }
    ));
}

#[cfg(feature = "sql")]
#[tokio::test]
async fn idempotency_store_sql_opens_and_migrates_a_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let plan = plan(&[("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", &url)]).unwrap();
    let store = plan.open().await.unwrap();
    assert_eq!(store.kind(), BackendKind::Sql);
    let sqlite = store.as_sqlite().expect("a SQLite store");
    let tables: i64 = idempotency_sql::sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'idempotency_records'",
    )
    .fetch_one(sqlite.pool())
    .await
    .unwrap();
    assert_eq!(tables, 1);
    let engine = idempotency_core::Idempotency::builder(store)
        .build()
        .unwrap();
    let key = idempotency_core::IdempotencyKey::new("k").unwrap();
    let scope = idempotency_core::Scope::new("s");
    let begun = engine
        .begin(&scope, &key, idempotency_core::Fingerprint::of("x"))
        .await
        .unwrap();
    assert!(matches!(begun, idempotency_core::Begin::Run(_)));
}

/// `open_existing` (the operators' tool) creates and changes nothing: a SQLite file that does
/// not exist stays absent, a database without the records table gets none (the error names the
/// table), a migrated one opens; a Redis server that does not answer is an error (transient),
/// not a store connecting in the background.
#[cfg(all(feature = "sql", feature = "redis"))]
#[tokio::test]
async fn open_existing_creates_and_migrates_nothing_and_never_defers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let url = format!("sqlite://{}", path.display());
    let vars = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
    let missing = plan(&vars).unwrap().open_existing().await.unwrap_err();
    assert!(
        matches!(missing, StoreSelectionError::Open { .. }),
        "{missing}"
    );
    assert!(!path.exists(), "open_existing created {}", path.display());

    // A database that exists but is not the app's: refused, and no table created in it.
    let options = idempotency_sql::sqlite_connect_options(&path);
    let pool = idempotency_sql::sqlx::sqlite::SqlitePool::connect_with(options)
        .await
        .unwrap();
    idempotency_sql::sqlx::query("CREATE TABLE shop_orders (id INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    let refused = plan(&vars).unwrap().open_existing().await.unwrap_err();
    let StoreSelectionError::Open { source, .. } = &refused else {
        panic!("{refused}");
    };
    assert!(
        matches!(
            source.downcast_ref::<idempotency_sql::SqlStoreError>(),
            Some(idempotency_sql::SqlStoreError::MissingTable { .. })
        ),
        "{source}"
    );
    let tables: Vec<String> =
        idempotency_sql::sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, ["shop_orders"]);

    idempotency_sql::SqliteStore::builder(pool)
        .migrate()
        .await
        .unwrap();
    let opened = plan(&vars).unwrap().open_existing().await.unwrap();
    assert!(opened.as_sqlite().is_some());

    // Nothing listens on port 1.
    let redis = plan(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:1")])
        .unwrap()
        .open_existing()
        .await
        .unwrap_err();
    let StoreSelectionError::Open { source, .. } = &redis else {
        panic!("{redis}");
    };
    assert!(
        source
            .downcast_ref::<idempotency_core::StoreError>()
            .is_some_and(idempotency_core::StoreError::is_transient),
        "{source:?}"
    );
    assert_no_secret(&format!("{redis} {redis:?}"));
}

/// The kill switch as `store_from_lookup` reads it: accepted spellings turn it on (the store
/// is not opened) or leave it off; anything else stops start-up naming the variable.
#[tokio::test]
async fn the_kill_switch_value_is_on_off_or_refused() {
    for value in ["true", " YES", "1"] {
        let store = store_from_lookup(
            StoreSelection::AllowMemory,
            env(&[(idempotency_core::DISABLE_ENV_VAR, value)]),
        )
        .await
        .unwrap();
        assert!(!store.is_connected(), "{value:?}: the store is not opened");
    }
    for value in ["false", "No", "0", "", "  "] {
        let store = store_from_lookup(
            StoreSelection::AllowMemory,
            env(&[(idempotency_core::DISABLE_ENV_VAR, value)]),
        )
        .await
        .unwrap();
        assert!(store.is_connected(), "{value:?}: the store is opened");
    }
    for value in ["flase", "ture", "2", "on", "TRUE!"] {
        let error = store_from_lookup(
            StoreSelection::AllowMemory,
            env(&[(idempotency_core::DISABLE_ENV_VAR, value)]),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                StoreSelectionError::InvalidVariable {
                    variable: idempotency_core::DISABLE_ENV_VAR,
                    ..
                }
            ),
            "{value:?}: {error:?}"
        );
        let message = error.to_string();
        for needle in [
            idempotency_core::DISABLE_ENV_VAR,
            &format!("{value:?}"),
            "`true`",
            "`false`",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
    }
}

#[test]
fn memory_named_by_idempotency_store_says_so() {
    // Chosen explicitly next to a configured Redis: the description (and so the start-up
    // warning) knows it was the operator's choice, not a missing configuration.
    let explicit = plan(&[
        (STORE_ENV_VAR, "memory"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ])
    .unwrap();
    assert_eq!(explicit.kind(), BackendKind::Memory);
    assert_eq!(explicit.description().source(), Some(STORE_ENV_VAR));
    assert!(
        explicit
            .description()
            .to_string()
            .contains("from IDEMPOTENCY_STORE")
    );
    // Nothing set: memory by default, named by no variable.
    assert_eq!(plan(&[]).unwrap().description().source(), None);
}

/// `IDEMPOTENCY_STORE_TIMEOUT` as the stores' own budget (`engine_from_env`): the value, or the
/// engine's default when unset, not each store's own 1 s.
mod store_timeout {
    use std::time::Duration;

    use idempotency_core::IdempotencyStore as _;

    use super::*;

    /// The engine's default store timeout, as the core states it.
    fn engine_default() -> Duration {
        idempotency_core::Config::default().store_timeout()
    }

    /// The engine `engine_from_env` builds from `vars` (plus `IDEMPOTENCY_STORE_TIMEOUT` when
    /// `timeout` is given).
    async fn engine(
        vars: &[(&str, &str)],
        timeout: Option<&str>,
    ) -> idempotency_core::Idempotency<AnyStore> {
        let mut vars = vars.to_vec();
        if let Some(timeout) = timeout {
            vars.push((crate::STORE_TIMEOUT_ENV, timeout));
        }
        engine_from_lookup(StoreSelection::AllowMemory, env(&vars))
            .await
            .unwrap()
    }

    /// The SQL store's own budget (`operation_timeout`).
    #[cfg(feature = "sql")]
    fn sql_budget_is(store: &AnyStore, expected: Duration) {
        let budget = match (store.as_sqlite(), store.as_postgres()) {
            (Some(sqlite), _) => sqlite.operation_timeout(),
            (None, Some(postgres)) => postgres.operation_timeout(),
            (None, None) => panic!("not a connected SQL store: {store:?}"),
        };
        assert_eq!(budget, expected);
    }

    #[cfg(feature = "kv-rest")]
    const REST: [(&str, &str); 2] = [
        ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
        ("UPSTASH_REDIS_REST_TOKEN", SECRET),
    ];

    #[cfg(feature = "kv-rest")]
    #[tokio::test]
    async fn the_kv_rest_store_takes_the_engine_store_timeout() {
        let set = engine(&REST, Some("5s")).await;
        assert_eq!(set.config().store_timeout(), Duration::from_secs(5));
        assert!(set.store().as_kv_rest().is_some());
        assert_eq!(set.store().operation_bound(), Some(Duration::from_secs(5)));

        let unset = engine(&REST, None).await;
        assert_eq!(unset.store().operation_bound(), Some(engine_default()));

        // The plain entry points keep the store's own default, as documented.
        let plain = store_from_lookup(StoreSelection::AllowMemory, env(&REST))
            .await
            .unwrap();
        assert_eq!(
            plain.operation_bound(),
            Some(idempotency_kv_rest::DEFAULT_OPERATION_TIMEOUT)
        );
        let given = store_from_lookup_with_timeout(
            StoreSelection::AllowMemory,
            Duration::from_millis(2500),
            env(&REST),
        )
        .await
        .unwrap();
        assert_eq!(given.operation_bound(), Some(Duration::from_millis(2500)));
    }

    /// A KV REST endpoint that answers every request 1.5 s after reading it
    /// (`{"result":0}`), for `connections` connections; its URL.
    #[cfg(feature = "kv-rest")]
    fn slow_rest_endpoint(connections: usize) -> String {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for _ in 0..connections {
                let Ok((mut socket, _)) = listener.accept() else {
                    return;
                };
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut chunk = [0_u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut chunk) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&chunk[..n]);
                        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1500));
                    let body = r#"{"result":0}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes());
                });
            }
        });
        url
    }

    /// The fault as an operator saw it: `IDEMPOTENCY_STORE_TIMEOUT=3s`, a KV REST endpoint that
    /// answers in 1.5 s, and every call cut at the store's own 1 s.
    #[cfg(feature = "kv-rest")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kv_rest_answer_within_idempotency_store_timeout_is_waited_for() {
        let url = slow_rest_endpoint(2);
        let vars = [
            ("UPSTASH_REDIS_REST_URL", url.as_str()),
            ("UPSTASH_REDIS_REST_TOKEN", SECRET),
        ];
        let key = idempotency_core::StoreKey::derive(
            "t:",
            &idempotency_core::Scope::global(),
            &idempotency_core::IdempotencyKey::new("slow").unwrap(),
        );
        let engine = engine(&vars, Some("3s")).await;
        let deleted = engine.store().delete(&key).await;
        assert!(
            matches!(deleted, Ok(false)),
            "a 1.5 s answer under a 3 s budget: {deleted:?}"
        );

        // The store's default (1 s), which `store_from_lookup` keeps, does cut it.
        let plain = store_from_lookup(StoreSelection::AllowMemory, env(&vars))
            .await
            .unwrap();
        let cut = plain.delete(&key).await;
        assert!(
            matches!(cut, Err(idempotency_core::StoreError::Timeout { .. })),
            "{cut:?}"
        );
    }

    #[cfg(feature = "sql")]
    #[tokio::test]
    async fn the_sqlite_store_takes_the_engine_store_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("app.db").display());
        let vars = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
        let set = engine(&vars, Some("3s")).await;
        sql_budget_is(set.store(), Duration::from_secs(3));
        let unset = engine(&vars, None).await;
        sql_budget_is(unset.store(), engine_default());
        // An operator's tool given a timeout opens the existing database with it too.
        let existing = plan(&vars)
            .unwrap()
            .operation_timeout(Duration::from_secs(7))
            .open_existing()
            .await
            .unwrap();
        sql_budget_is(&existing, Duration::from_secs(7));
    }

    /// Redis connected at start-up, and connected in the background after a start-up outage:
    /// both take the engine's store timeout.
    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_store_takes_the_engine_store_timeout_even_connected_later() {
        let mut server = idempotency_testkit::fixtures::RedisServer::start_local()
            .expect("redis-server (apt-get install redis-server)");
        let url = server.url().to_owned();
        let vars = [("REDIS_URL", url.as_str())];
        let set = engine(&vars, Some("5s")).await;
        assert_eq!(
            set.store().as_redis().unwrap().operation_timeout(),
            Duration::from_secs(5)
        );
        let unset = engine(&vars, None).await;
        assert_eq!(
            unset.store().as_redis().unwrap().operation_timeout(),
            engine_default()
        );

        server.stop().unwrap();
        let deferred = engine(&vars, Some("4s")).await;
        assert!(!deferred.store().is_connected());
        server.restart().unwrap();
        until_connected(deferred.store()).await;
        assert_eq!(
            deferred.store().as_redis().unwrap().operation_timeout(),
            Duration::from_secs(4)
        );
    }

    /// Under `IDEMPOTENCY_STORE_TIMEOUT=4s`, an operation that finds every connection of the
    /// facade's Postgres pool taken by another caller for 2.5 s waits for one and succeeds:
    /// the store's budget includes the wait for a pooled connection, and the pool does not cut
    /// it shorter (its acquire timeout was 2 s whatever the budget: the read failed at 2 s).
    /// Opening the store against a server that accepts and never answers still returns within
    /// the start-up bound (about 2 s, not the hour the store timeout allows).
    #[cfg(feature = "sql")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saturated_postgres_pool_is_waited_for_within_the_store_timeout() {
        let server = idempotency_testkit::fixtures::PostgresServer::start_local()
            .expect("postgres binaries in /usr/local/bin");
        let vars = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", server.url())];
        let set = engine(&vars, Some("4s")).await;
        let pool = set.store().as_postgres().expect("connected").pool().clone();
        let mut held = Vec::new();
        for _ in 0..pool.options().get_max_connections() {
            held.push(pool.acquire().await.unwrap());
        }
        let holder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            drop(held);
        });
        let key = idempotency_core::StoreKey::from_raw("saturated".to_owned());
        let started = std::time::Instant::now();
        let got = set.store().get(&key).await;
        assert!(
            matches!(got, Ok(None)),
            "a pool held for 2.5 s under a 4 s store timeout: {got:?} after {:?}",
            started.elapsed()
        );
        holder.await.unwrap();

        // A server that accepts connections and never answers, under a store timeout of an
        // hour: start-up goes on without it within its own bound.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung = format!(
            "postgres://app@127.0.0.1:{}/app",
            listener.local_addr().unwrap().port()
        );
        let _accepting = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let vars = [
            ("IDEMPOTENCY_STORE", "sql"),
            ("DATABASE_URL", hung.as_str()),
        ];
        let started = std::time::Instant::now();
        let opened = tokio::time::timeout(Duration::from_secs(30), engine(&vars, Some("1h"))).await;
        let took = started.elapsed();
        let opened = opened.expect("start-up against a hung Postgres waited the store timeout");
        assert!(!opened.store().is_connected());
        assert!(took < Duration::from_secs(15), "start-up took {took:?}");
    }

    /// Wait (at most 30 s) until a store connected in the background is connected.
    #[cfg(any(feature = "redis", feature = "sql"))]
    async fn until_connected(store: &AnyStore) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !store.is_connected() {
            assert!(std::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_cluster_store_takes_the_engine_store_timeout() {
        let cluster = idempotency_testkit::fixtures::RedisCluster::start(3)
            .expect("redis-server (apt-get install redis-server)");
        let urls = cluster.urls().join(",");
        let vars = [(REDIS_CLUSTER_ENV_VAR, urls.as_str())];
        let set = engine(&vars, Some("5s")).await;
        let store = set.store().as_redis_cluster().expect("a connected cluster");
        assert_eq!(store.operation_timeout(), Duration::from_secs(5));
        assert_eq!(set.store().operation_bound(), Some(Duration::from_secs(5)));
    }

    /// Postgres connected at start-up, and connected in the background after a start-up
    /// outage: both take the engine's store timeout.
    #[cfg(feature = "sql")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_store_takes_the_engine_store_timeout_even_connected_later() {
        let mut server = idempotency_testkit::fixtures::PostgresServer::start_local()
            .expect("postgres binaries in /usr/local/bin");
        let url = server.url().to_owned();
        let vars = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
        let set = engine(&vars, Some("5s")).await;
        sql_budget_is(set.store(), Duration::from_secs(5));
        let unset = engine(&vars, None).await;
        sql_budget_is(unset.store(), engine_default());
        drop((set, unset));

        server.kill().unwrap();
        let deferred = engine(&vars, Some("4s")).await;
        assert!(!deferred.store().is_connected());
        server.restart().unwrap();
        until_connected(deferred.store()).await;
        sql_budget_is(deferred.store(), Duration::from_secs(4));
    }
}
