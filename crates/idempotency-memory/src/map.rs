//! The store's map: shards of `hashbrown::HashTable` behind `parking_lot` read-write locks,
//! hashed with a randomly seeded `foldhash`.
//!
//! Why not `DashMap` (used before): an operation hashes its key once and uses that hash for
//! the shard, the look-up and the insert (a claim looks the key up under the read lock, then
//! inserts under the write lock: `DashMap` hashed the key for each), and the hasher is
//! `foldhash` instead of SipHash, several times cheaper on keys of a few dozen bytes. A slot
//! keeps its key's hash and boxes the key and the record (see [`Slot`]): a growing shard moves
//! 16 bytes per record and hashes nothing again. The box holds a short key's bytes inline
//! ([`KeyBytes`]), so a record is one allocation, not two.
//!
//! Hash flooding: store keys contain the caller's idempotency key verbatim (after the prefix
//! and scope), so an attacker chooses part of what is hashed. The hasher is seeded from the
//! operating system's randomness (through std's `RandomState`, whose SipHash keys come from
//! it): a seed shared by the process and one per map, so colliding keys cannot be computed
//! offline (foldhash's own `RandomState` seeds from address-space layout and the time only).

use std::hash::BuildHasher;
use std::sync::OnceLock;

use crossbeam_utils::CachePadded;
use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;

use hashbrown::HashTable;
use idempotency_core::StoreKey;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A key and its value, as held in a shard: the key's hash beside a box holding both.
///
/// A slot is 16 bytes whatever `V` is, so a shard that grows moves 16 bytes per record (not
/// the ~170 of an inline key and record) and never re-hashes a key (the hash is kept): growth
/// of a table holding millions of records was the rare long claim that carried a third of the
/// mean claim time in the load generator. The hash is also compared before the key, so a
/// probe reads a node only when the whole 64-bit hash matches.
#[derive(Debug)]
pub(crate) struct Slot<V> {
    hash: u64,
    node: Box<Node<V>>,
}

/// What a slot points to.
#[derive(Debug)]
struct Node<V> {
    key: KeyBytes,
    value: V,
}

impl<V> Slot<V> {
    fn is(&self, hash: u64, key: &StoreKey) -> bool {
        self.hash == hash && self.node.key.as_bytes() == key.as_str().as_bytes()
    }
}

/// Longest key held inline in its node (the engine's default prefix, a short scope and a
/// UUID key fit: `idempotency:` + `tenant-42` + `:` + 36 = 58 bytes).
const INLINE_KEY: usize = 62;

/// A store key's bytes as a node keeps them: inline when short (one allocation per record,
/// the node, instead of the node and a copy of the key: ~220 instructions and one cache line
/// less per claim, `cargo xtask instructions`), boxed otherwise.
#[derive(Debug)]
pub(crate) enum KeyBytes {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Boxed(Box<str>),
}

impl KeyBytes {
    fn new(key: &str) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0u8; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Boxed(key.into()),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Boxed(key) => key.as_bytes(),
        }
    }

    /// The key as text. The bytes were copied from a `&str`, so they are UTF-8 (the lossy
    /// conversion never replaces anything; it borrows). For the rare whole-map visits only.
    pub(crate) fn to_store_key(&self) -> StoreKey {
        StoreKey::from_raw(String::from_utf8_lossy(self.as_bytes()).into_owned())
    }
}

/// One shard: its lock and its table.
type Shard<V> = RwLock<HashTable<Slot<V>>>;

/// A sharded concurrent map from store keys to `V`.
#[derive(Debug)]
pub(crate) struct Map<V> {
    /// Each shard (its lock and its table's header) on cache lines of its own: a claim
    /// write-locks its shard, and neighbouring shards packed five to a line made claims on
    /// different shards from different threads move that line between cores (false sharing).
    shards: Box<[CachePadded<Shard<V>>]>,
    /// `64 - log2(shards)`: the shard is taken from the bits just below the top 7 (as in
    /// `DashMap`). hashbrown uses the top 7 bits for its tag and the low bits for the bucket:
    /// a shard chosen from the top bits would leave every key of a shard with the same tag
    /// bits, and look-ups would compare many more keys on tag collisions.
    shift: u32,
    hasher: SeedableRandomState,
}

/// 64 bits from the operating system's randomness: std's `RandomState` draws its SipHash keys
/// from it (once per thread, then varied per instance), and hashing a constant under them
/// gives an unpredictable value.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// A hasher with a process-wide random seed and a random seed of its own.
fn seeded_hasher() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random_u64()));
    SeedableRandomState::with_seed(random_u64(), shared)
}

/// The outcome of [`Map::entry`]'s look-up.
pub(crate) enum Entry<'a, V> {
    /// The key is held: its value, under the shard's write lock.
    Occupied(Occupied<'a, V>),
    /// The key is absent: insert with [`Vacant::insert`] while the shard lock is held.
    Vacant(Vacant<'a, V>),
}

/// A held key, its shard write-locked.
pub(crate) struct Occupied<'a, V> {
    entry: hashbrown::hash_table::OccupiedEntry<'a, Slot<V>>,
}

impl<V> Occupied<'_, V> {
    /// The value held under the key.
    pub(crate) fn get_mut(&mut self) -> &mut V {
        &mut self.entry.get_mut().node.value
    }
}

/// An absent key, its shard write-locked.
pub(crate) struct Vacant<'a, V> {
    table: &'a mut HashTable<Slot<V>>,
    key: &'a StoreKey,
    hash: u64,
}

impl<V> Vacant<'_, V> {
    /// Insert `value` under the key (the node, holding a short key inline: the one allocation
    /// of an insert).
    pub(crate) fn insert(self, value: V) {
        let slot = Slot {
            hash: self.hash,
            node: Box::new(Node {
                key: KeyBytes::new(self.key.as_str()),
                value,
            }),
        };
        // Growth re-uses the kept hashes: no key is read or hashed again.
        self.table.insert_unique(self.hash, slot, |slot| slot.hash);
    }
}

/// The number of shards: as `DashMap` chooses it, four per available core rounded up to a
/// power of two (at least 4).
fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores * 4).next_power_of_two().max(4)
}

impl<V> Map<V> {
    /// A map with room for `capacity` entries up front (spread over the shards).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self::with_capacity_and_shards(capacity, default_shards())
    }

    /// As [`Map::with_capacity`] with `shards` shards (a power of two, at least 1).
    pub(crate) fn with_capacity_and_shards(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1).next_power_of_two();
        let per_shard = capacity.div_ceil(shards);
        Self {
            shards: (0..shards)
                .map(|_| CachePadded::new(RwLock::new(HashTable::with_capacity(per_shard))))
                .collect(),
            shift: 64 - shards.trailing_zeros(),
            hasher: seeded_hasher(),
        }
    }

    /// The key's hash: compute it once per operation and pass it to the other methods.
    pub(crate) fn hash(&self, key: &StoreKey) -> u64 {
        self.hasher.hash_one(key.as_str())
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        // With one shard the shift is 64: `checked_shr` gives `None`, shard 0.
        let index = (hash << 7).checked_shr(self.shift).unwrap_or(0) as usize;
        &self.shards[index]
    }

    /// The value under `key` (whose hash is `hash`), under the shard's read lock.
    pub(crate) fn get(
        &self,
        key: &StoreKey,
        hash: u64,
    ) -> Option<parking_lot::MappedRwLockReadGuard<'_, V>> {
        let shard = self.shard(hash).read();
        RwLockReadGuard::try_map(shard, |table| {
            table
                .find(hash, |slot| slot.is(hash, key))
                .map(|slot| &slot.node.value)
        })
        .ok()
    }

    /// The value under `key`, under the shard's write lock.
    pub(crate) fn get_mut(
        &self,
        key: &StoreKey,
        hash: u64,
    ) -> Option<parking_lot::MappedRwLockWriteGuard<'_, V>> {
        let shard = self.shard(hash).write();
        RwLockWriteGuard::try_map(shard, |table| {
            table
                .find_mut(hash, |slot| slot.is(hash, key))
                .map(|slot| &mut slot.node.value)
        })
        .ok()
    }

    /// Look `key` up under the shard's write lock and hand the entry to `f`, to insert or
    /// replace atomically; the lock is released when `f` returns.
    pub(crate) fn entry<R>(
        &self,
        key: &StoreKey,
        hash: u64,
        f: impl FnOnce(Entry<'_, V>) -> R,
    ) -> R {
        let mut shard = self.shard(hash).write();
        // A plain look-up first (a held key, the replay's case, costs what a read does); an
        // absent key's insert probes again, in the lines this look-up just brought in.
        let entry = match shard.find_entry(hash, |slot| slot.is(hash, key)) {
            Ok(entry) => Entry::Occupied(Occupied { entry }),
            Err(absent) => Entry::Vacant(Vacant {
                table: absent.into_table(),
                key,
                hash,
            }),
        };
        f(entry)
    }

    /// Remove `key` if `keep_out` says so of its value; returns the removed value.
    pub(crate) fn remove_if(
        &self,
        key: &StoreKey,
        hash: u64,
        keep_out: impl FnOnce(&V) -> bool,
    ) -> Option<V> {
        let mut shard = self.shard(hash).write();
        match shard.find_entry(hash, |slot| slot.is(hash, key)) {
            Ok(occupied) if keep_out(&occupied.get().node.value) => {
                Some(occupied.remove().0.node.value)
            }
            _ => None,
        }
    }

    /// Keep only the entries for which `keep` (given each key and value) answers `true`, one
    /// shard at a time (each under its write lock, held while `keep` runs).
    pub(crate) fn retain(&self, mut keep: impl FnMut(&KeyBytes, &mut V) -> bool) {
        for shard in &*self.shards {
            shard.write().retain(|slot| {
                let node = &mut *slot.node;
                keep(&node.key, &mut node.value)
            });
        }
    }

    /// Call `visit` on every entry, one shard at a time (each under its read lock).
    pub(crate) fn for_each(&self, mut visit: impl FnMut(&KeyBytes, &V)) {
        for shard in &*self.shards {
            for slot in shard.read().iter() {
                visit(&slot.node.key, &slot.node.value);
            }
        }
    }

    /// Entries held, counted shard by shard (for tests; the store keeps its own count).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> StoreKey {
        StoreKey::from_raw(format!("idem:scope:key-{n}"))
    }

    fn insert(map: &Map<usize>, n: usize) -> bool {
        let k = key(n);
        let hash = map.hash(&k);
        map.entry(&k, hash, |entry| match entry {
            Entry::Occupied(_) => false,
            Entry::Vacant(vacant) => {
                vacant.insert(n);
                true
            }
        })
    }

    #[test]
    fn inserts_finds_and_removes_across_shards_and_growth() {
        for shards in [1, 2, 8] {
            let map = Map::with_capacity_and_shards(0, shards);
            for n in 0..5000 {
                assert!(insert(&map, n), "{n} inserted once");
            }
            assert!(!insert(&map, 17), "a held key is occupied");
            assert_eq!(map.len(), 5000);
            for n in 0..5000 {
                let k = key(n);
                assert_eq!(map.get(&k, map.hash(&k)).as_deref(), Some(&n));
            }
            let k = key(42);
            let hash = map.hash(&k);
            *map.get_mut(&k, hash).expect("held") += 1;
            assert_eq!(map.get(&k, hash).as_deref(), Some(&43));
            assert_eq!(map.remove_if(&k, hash, |v| *v == 0), None, "kept");
            assert_eq!(map.remove_if(&k, hash, |v| *v == 43), Some(43));
            assert!(map.get(&k, hash).is_none());
            assert!(map.get(&key(9999), map.hash(&key(9999))).is_none());
            map.retain(|k, v| {
                assert_eq!(k.to_store_key(), key(*v), "each value beside its own key");
                *v % 2 == 0
            });
            let mut seen = 0;
            map.for_each(|k, v| {
                assert_eq!(k.to_store_key(), key(*v));
                assert_eq!(v % 2, 0);
                seen += 1;
            });
            // The even values but 42 (removed above).
            assert_eq!(seen, 2499);
            assert_eq!(map.len(), 2499);
        }
    }

    #[test]
    fn a_slot_is_a_hash_and_a_box() {
        // What a growing table moves per record, whatever the record's size.
        assert_eq!(std::mem::size_of::<Slot<[u8; 200]>>(), 16);
        let slot = Slot {
            hash: 7,
            node: Box::new(Node {
                key: KeyBytes::new(key(1).as_str()),
                value: (),
            }),
        };
        assert!(slot.is(7, &key(1)));
        assert!(
            !slot.is(8, &key(1)),
            "another hash: the key is not compared"
        );
        assert!(!slot.is(7, &key(2)), "same hash, another key");
    }

    #[test]
    fn short_keys_are_held_inline_and_long_ones_boxed() {
        // The node is then the one allocation of a record with a short key.
        assert_eq!(std::mem::size_of::<KeyBytes>(), 64);
        for len in [0, 1, INLINE_KEY - 1, INLINE_KEY, INLINE_KEY + 1, 300] {
            let text = "k".repeat(len);
            let held = KeyBytes::new(&text);
            assert_eq!(
                matches!(held, KeyBytes::Inline { .. }),
                len <= INLINE_KEY,
                "{len}"
            );
            assert_eq!(held.as_bytes(), text.as_bytes());
            assert_eq!(held.to_store_key(), StoreKey::from_raw(text));
        }
        // Multi-byte UTF-8 survives the copy.
        let text = "idem:t\u{e9}nant:\u{1f511}-\u{4e2d}";
        assert_eq!(KeyBytes::new(text).to_store_key().as_str(), text);
        // A key that is a prefix of another (same bytes up to the shorter length) is distinct,
        // inline or boxed.
        let map = Map::with_capacity_and_shards(0, 1);
        let long = "x".repeat(INLINE_KEY + 5);
        let keys = [
            "abc".to_owned(),
            "abcd".to_owned(),
            long[..INLINE_KEY].to_owned(),
            long.clone(),
            long[..INLINE_KEY + 1].to_owned(),
        ];
        for (n, k) in keys.iter().enumerate() {
            let k = StoreKey::from_raw(k.as_str());
            let hash = map.hash(&k);
            map.entry(&k, hash, |entry| match entry {
                Entry::Vacant(vacant) => vacant.insert(n),
                Entry::Occupied(_) => panic!("{k} was already held"),
            });
        }
        for (n, k) in keys.iter().enumerate() {
            let k = StoreKey::from_raw(k.as_str());
            assert_eq!(map.get(&k, map.hash(&k)).as_deref(), Some(&n), "{k}");
        }
        let mut visited = Vec::new();
        map.for_each(|k, v| visited.push((k.to_store_key(), *v)));
        visited.sort_by_key(|(_, v)| *v);
        let expected: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| (StoreKey::from_raw(k.as_str()), n))
            .collect();
        assert_eq!(visited, expected);
    }

    #[test]
    fn growth_keeps_every_record_reachable_by_its_kept_hash() {
        // One shard grown from nothing through many doublings: growth places slots by the hash
        // kept in them, which must be the hash that look-ups use.
        let map = Map::with_capacity_and_shards(0, 1);
        for n in 0..20_000 {
            assert!(insert(&map, n));
        }
        for n in (0..20_000).step_by(7) {
            let k = key(n);
            assert_eq!(map.get(&k, map.hash(&k)).as_deref(), Some(&n));
        }
        assert_eq!(map.len(), 20_000);
    }

    #[test]
    fn the_hasher_is_seeded_per_map() {
        // Randomly seeded: two maps hash the same key differently, so colliding keys cannot be
        // precomputed. Equal by chance with probability 2^-64.
        let (a, b) = (Map::<()>::with_capacity(0), Map::<()>::with_capacity(0));
        let k = key(1);
        assert_ne!(a.hash(&k), b.hash(&k));
        assert_eq!(a.hash(&k), a.hash(&key(1)), "stable within a map");
    }

    #[test]
    fn the_shard_does_not_take_the_tag_bits() {
        // hashbrown's tag is the hash's top 7 bits: keys of one shard must not all share them.
        let map = Map::<()>::with_capacity_and_shards(0, 8);
        let mut tops_in_shard_0 = std::collections::HashSet::new();
        let mut shards = std::collections::HashSet::new();
        for n in 0..2000 {
            let hash = map.hash(&key(n));
            let shard = (hash << 7) >> map.shift;
            shards.insert(shard);
            if shard == 0 {
                tops_in_shard_0.insert(hash >> 57);
            }
        }
        assert_eq!(shards.len(), 8, "every shard is used");
        assert!(
            tops_in_shard_0.len() > 64,
            "{} tag values",
            tops_in_shard_0.len()
        );
    }

    /// breaker6: keys whose whole 64-bit hash collides (forced: the hash is passed in) stay
    /// distinct through inserts, growth, look-ups, removals and `retain`.
    #[test]
    fn keys_with_the_same_full_hash_stay_distinct() {
        for shards in [1, 4] {
            let map = Map::with_capacity_and_shards(0, shards);
            const SAME: u64 = 0xdead_beef_0bad_f00d;
            let put = |n: usize| {
                map.entry(&key(n), SAME, |entry| match entry {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(vacant) => {
                        vacant.insert(n);
                        true
                    }
                })
            };
            for n in 0..300 {
                assert!(put(n), "{n} inserted once");
            }
            for n in 0..300 {
                assert!(!put(n), "{n} found occupied");
                assert_eq!(map.get(&key(n), SAME).as_deref(), Some(&n));
            }
            assert!(map.get(&key(300), SAME).is_none());
            // A colliding key of another hash is not found under this one.
            assert!(map.get(&key(5), SAME ^ 1).is_none());
            *map.get_mut(&key(7), SAME).unwrap() = 1007;
            assert_eq!(map.get(&key(7), SAME).as_deref(), Some(&1007));
            assert_eq!(map.remove_if(&key(8), SAME, |_| true), Some(8));
            assert_eq!(map.remove_if(&key(8), SAME, |_| true), None);
            assert_eq!(map.get(&key(9), SAME).as_deref(), Some(&9));
            map.retain(|_, v| *v % 3 != 0);
            for n in 0..300 {
                let expect = match n {
                    7 => Some(1007),
                    8 => None,
                    n if n % 3 == 0 => None,
                    n => Some(n),
                };
                assert_eq!(map.get(&key(n), SAME).as_deref().copied(), expect, "{n}");
            }
            assert_eq!(
                map.len(),
                199,
                "300, less key 8, less the 100 multiples of 3"
            );
        }
    }

    #[test]
    fn initial_capacity_is_spread_over_the_shards() {
        let map = Map::<()>::with_capacity_and_shards(1000, 8);
        for shard in &*map.shards {
            assert!(shard.read().capacity() >= 125);
        }
        assert_eq!(map.shards.len(), 8);
        assert_eq!(Map::<()>::with_capacity_and_shards(0, 3).shards.len(), 4);
    }

    /// breaker7: inline (at most 62 bytes) and boxed keys whose whole hash collides, equal up
    /// to the inline length or differing only in their last byte, stay distinct through
    /// inserts, look-ups, removals, `retain` and `for_each`.
    #[test]
    fn breaker7_inline_and_boxed_keys_with_the_same_hash_stay_distinct() {
        const SAME: u64 = 0x0123_4567_89ab_cdef;
        let base = "b".repeat(INLINE_KEY + 3);
        let mut texts: Vec<String> = (0..=INLINE_KEY + 3)
            .map(|len| base[..len].to_owned())
            .collect();
        for len in [INLINE_KEY - 1, INLINE_KEY, INLINE_KEY + 1, INLINE_KEY + 2] {
            texts.push(format!("{}c", &base[..len - 1]));
            // Multi-byte UTF-8 across the boundary.
            texts.push(format!("{}\u{e9}", &base[..len - 1]));
        }
        texts.sort();
        texts.dedup();
        for shards in [1, 4] {
            let map = Map::with_capacity_and_shards(0, shards);
            for (n, text) in texts.iter().enumerate() {
                let k = StoreKey::from_raw(text.as_str());
                map.entry(&k, SAME, |entry| match entry {
                    Entry::Vacant(vacant) => vacant.insert(n),
                    Entry::Occupied(_) => panic!("{text:?} was held"),
                });
            }
            for (n, text) in texts.iter().enumerate() {
                let k = StoreKey::from_raw(text.as_str());
                assert_eq!(map.get(&k, SAME).as_deref(), Some(&n), "{text:?}");
            }
            let mut seen = Vec::new();
            map.for_each(|k, v| seen.push((k.to_store_key().as_str().to_owned(), *v)));
            seen.sort_by_key(|(_, v)| *v);
            let expected: Vec<_> = texts.iter().cloned().zip(0..).collect();
            assert_eq!(seen, expected);
            // Remove the boxed ones: the inline ones of the same prefix stay.
            for (n, text) in texts.iter().enumerate() {
                if text.len() > INLINE_KEY {
                    let k = StoreKey::from_raw(text.as_str());
                    assert_eq!(map.remove_if(&k, SAME, |_| true), Some(n), "{text:?}");
                }
            }
            map.retain(|_, v| *v % 2 == 0);
            for (n, text) in texts.iter().enumerate() {
                let k = StoreKey::from_raw(text.as_str());
                let expect = (text.len() <= INLINE_KEY && n % 2 == 0).then_some(n);
                assert_eq!(map.get(&k, SAME).as_deref().copied(), expect, "{text:?}");
            }
        }
    }
}
