//! `doctor()` against real servers with different settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use idempotency_redis::{ClaimStrategy, DoctorWarning, RedisStore, ServerMode};
use idempotency_testkit::fixtures::RedisServer;

#[tokio::test(flavor = "multi_thread")]
async fn test_server_without_persistence_is_reported() {
    let server = RedisServer::start_local().unwrap();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let report = store.doctor().await.unwrap();
    assert_eq!(report.mode, ServerMode::Standalone);
    assert_eq!(report.claim_strategy, ClaimStrategy::SetNxGet);
    assert!(
        report
            .server_version
            .as_deref()
            .is_some_and(|v| v.starts_with('7') || v.starts_with('8'))
    );
    assert_eq!(report.maxmemory_policy.as_deref(), Some("noeviction"));
    assert_eq!(report.rdb_enabled, Some(false));
    assert_eq!(report.aof_enabled, Some(false));
    assert_eq!(report.warnings, vec![DoctorWarning::PersistenceOff]);
    assert!(
        report.to_string().contains("maxmemory-policy noeviction"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evicting_policies_warn_and_persistence_on_does_not() {
    for policy in ["allkeys-lru", "volatile-ttl"] {
        let server =
            RedisServer::start_local_with(&["--maxmemory-policy", policy, "--appendonly", "yes"])
                .unwrap();
        let store = RedisStore::connect(server.url()).await.unwrap();
        let report = store.doctor().await.unwrap();
        assert_eq!(report.aof_enabled, Some(true));
        assert_eq!(
            report.warnings,
            vec![DoctorWarning::EvictionPolicy {
                policy: policy.to_owned()
            }],
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_refusing_config_get_report_unknown() {
    let server = RedisServer::start_local_with(&["--rename-command", "CONFIG", ""]).unwrap();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let report = store.doctor().await.unwrap();
    // INFO still tells the policy and the AOF flag; the RDB save points only CONFIG GET knows.
    assert_eq!(report.maxmemory_policy.as_deref(), Some("noeviction"));
    assert_eq!(report.aof_enabled, Some(false));
    assert_eq!(report.rdb_enabled, None);
    assert!(
        report.warnings.is_empty(),
        "persistence unknown is not reported as off"
    );
    assert!(report.to_string().contains("rdb unknown"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_mode_is_detected() {
    let store = common::cluster_store().await;
    assert_eq!(store.mode(), ServerMode::Cluster);
    let report = store.doctor().await.unwrap();
    assert_eq!(report.mode, ServerMode::Cluster);
    assert_eq!(report.maxmemory_policy.as_deref(), Some("noeviction"));
    assert!(
        report.warnings.contains(&DoctorWarning::PersistenceOff),
        "{report}"
    );
}
