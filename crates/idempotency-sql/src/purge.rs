//! Deleting expired rows: [`PurgeExpired`] and the optional background [`PurgeTask`].
//!
//! Expired rows are already invisible (every read compares `expires_at` with the database's
//! clock, and a claim takes an expired row over), so purging only reclaims space. Deletes go in
//! bounded batches so no statement holds many row locks or a long write lock.

use async_trait::async_trait;
use std::time::Duration;

use idempotency_core::StoreError;

/// A store that can delete its expired rows in bounded batches.
#[async_trait]
pub trait PurgeExpired: Send + Sync + 'static {
    /// Delete up to `batch` expired rows; return how many went.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails or the store's time budget runs out.
    async fn purge_expired(&self, batch: u32) -> Result<u64, StoreError>;

    /// Delete every expired row, `batch` at a time, until a batch comes back short. Returns the
    /// total.
    ///
    /// # Errors
    /// The first batch's [`StoreError`] (rows deleted before it stay deleted).
    async fn purge_all_expired(&self, batch: u32) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let deleted = self.purge_expired(batch).await?;
            total += deleted;
            if deleted < u64::from(batch) {
                return Ok(total);
            }
        }
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl PurgeExpired for crate::PostgresStore {
    async fn purge_expired(&self, batch: u32) -> Result<u64, StoreError> {
        crate::PostgresStore::purge_expired(self, batch).await
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl PurgeExpired for crate::SqliteStore {
    async fn purge_expired(&self, batch: u32) -> Result<u64, StoreError> {
        crate::SqliteStore::purge_expired(self, batch).await
    }
}

/// A background task purging expired rows every `period`, `batch` rows per statement. Stops
/// when dropped (or with [`PurgeTask::stop`]). Failures are logged (`tracing` warning) and the
/// next round tries again.
#[derive(Debug)]
pub struct PurgeTask {
    handle: tokio::task::JoinHandle<()>,
}

impl PurgeTask {
    /// Spawn the task on the current tokio runtime. The first round runs after one `period`.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn<P: PurgeExpired>(store: P, period: Duration, batch: u32) -> Self {
        let period = period.max(Duration::from_millis(10));
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.purge_all_expired(batch).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "expired idempotency rows purged"),
                    Err(error) => tracing::warn!(%error, "purging expired idempotency rows failed"),
                }
            }
        });
        Self { handle }
    }

    /// Stop the task (a statement in flight is abandoned; its transaction rolls back).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for PurgeTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
