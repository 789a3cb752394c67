//! Lua scripts shared by every Redis-protocol backend (the `redis` crate store and the KV REST
//! store), kept here so both speak exactly the same protocol over the same record format.
//!
//! Each script touches only `KEYS[1]`, so it is safe on Redis Cluster and under Upstash's
//! per-key script locking. The header of each `.lua` file states its KEYS, ARGV and replies.

/// Claim for servers without `SET NX GET` (Redis < 7.0). Reply: nil when claimed, else the
/// existing record.
pub const CLAIM: &str = include_str!("lua/claim.lua");
/// Fenced completion. Reply: 1 stored (or already completed under this token), 0 lease lost.
/// Publishes on the wake-up channel given as ARGV\[4\], if any.
pub const COMPLETE: &str = include_str!("lua/complete.lua");
/// Fenced release. Reply: 1 deleted, 0 lease lost. Publishes on the wake-up channel given as
/// ARGV\[2\], if any.
pub const RELEASE: &str = include_str!("lua/release.lua");
/// Fenced lease extension. Reply: 1 extended, 0 lease lost.
pub const EXTEND: &str = include_str!("lua/extend.lua");

/// Prefix of the wake-up channels (see [`wake_channel`]).
pub const WAKE_CHANNEL_PREFIX: &str = "idempotency:wake:";

/// The pub/sub channel on which the completion and release scripts announce a change of the
/// record under `key` to waiting duplicates (when the caller passes it; the Redis store does,
/// the KV REST store does not).
///
/// Injective: a fixed prefix followed by the whole key text. It cannot collide with a record
/// key because Redis keeps channels apart from the keyspace ("Pub/Sub has no relation to the
/// key space", <https://redis.io/docs/latest/develop/interact/pubsub/>); the prefix keeps it
/// apart from other applications' channels, which, unlike keys, are shared by every database
/// number of the server (a wake-up seen across databases only costs a waiter one re-read).
pub fn wake_channel(key: &crate::StoreKey) -> String {
    let mut channel = String::with_capacity(WAKE_CHANNEL_PREFIX.len() + key.as_str().len());
    channel.push_str(WAKE_CHANNEL_PREFIX);
    channel.push_str(key.as_str());
    channel
}

/// First line Upstash understands as "lock only the keys in KEYS" (scripts on different keys run
/// in parallel). Stock Redis refuses the flag; our KV REST gateway strips it.
pub const UPSTASH_KEY_LOCKING_SHEBANG: &str = "#!lua flags=allow-key-locking\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::{Fingerprint, InProgress, LeaseToken, Record};

    /// The scripts match records by their textual prefix; prove the encoder writes exactly it.
    #[test]
    fn scripts_match_the_encoder_prefix() {
        let token = LeaseToken::generate();
        let record = Record::InProgress(InProgress {
            token,
            fingerprint: Fingerprint::of("x"),
            created_at_ms: 1,
        });
        let text = codec::encode(&record);
        let prefix = format!("{{\"v\":1,\"s\":\"p\",\"t\":\"{}\"", token.to_hex());
        assert!(text.starts_with(&prefix), "{text}");
        for script in [COMPLETE, RELEASE, EXTEND] {
            assert!(script.contains(r#"'{"v":1,"s":"p","t":"' .. ARGV[1] .. '"'"#));
            assert!(script.starts_with("-- "), "scripts start with their header");
        }
        assert!(COMPLETE.contains(r#"'{"v":1,"s":"c","t":"' .. ARGV[1] .. '"'"#));
    }

    #[test]
    fn wake_channels_are_injective_and_published_by_complete_and_release() {
        use crate::StoreKey;
        let a = wake_channel(&StoreKey::from_raw("p:s:k"));
        assert_eq!(a, "idempotency:wake:p:s:k");
        assert_ne!(a, wake_channel(&StoreKey::from_raw("p:s:k2")));
        assert_ne!(a, wake_channel(&StoreKey::from_raw("p:s:")));
        assert!(COMPLETE.contains("redis.pcall('PUBLISH', ARGV[4], '1')"));
        assert!(RELEASE.contains("redis.pcall('PUBLISH', ARGV[2], '1')"));
        assert!(!EXTEND.contains("PUBLISH") && !CLAIM.contains("PUBLISH"));
    }
}
