//! The hasher of the rollups' hot in-memory maps: the log rollup's (tree nodes, leaves,
//! resources, groups) and the span-metric series of a request.
//!
//! Those maps are looked up once or more per log line or span, where the standard SipHash
//! costs more than the rest of the lookup. This one hashes byte strings with xxh3 and integers
//! with a folded multiply, from a seed drawn per map from the standard library's random
//! state, so the layout differs between processes. The maps are bounded (by the template,
//! resource and severity limits, or the request), which also bounds what colliding keys
//! could cost. It
//! never decides a template id: those are the unseeded xxh3 of the template text.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` with [`FastState`].
pub(crate) type FastMap<K, V> = HashMap<K, V, FastState>;

/// An empty [`FastMap`] with a fresh seed.
pub(crate) fn fast_map<K, V>() -> FastMap<K, V> {
    HashMap::with_hasher(FastState::new())
}

/// Builds [`FastHasher`]s from one random seed.
#[derive(Debug, Clone)]
pub(crate) struct FastState(u64);

impl FastState {
    /// A state with a seed drawn from the standard library's random state.
    pub(crate) fn new() -> Self {
        FastState(RandomState::new().hash_one(0x6c6f_6773_u64))
    }
}

impl Default for FastState {
    fn default() -> Self {
        FastState::new()
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// Multiplier of the integer mix (the 64-bit golden ratio).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// Multiplies in 128 bits and folds the halves: every input bit reaches every output bit.
fn fold(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = fold(self.0 ^ n, MIX);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }

    fn finish(&self) -> u64 {
        fold(self.0, MIX ^ 0xff51_afd7_ed55_8ccd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_alike_and_near_keys_apart() {
        let state = FastState::new();
        assert_eq!(
            state.hash_one(b"abc".as_slice()),
            state.hash_one(b"abc".as_slice())
        );
        assert_ne!(
            state.hash_one(b"abc".as_slice()),
            state.hash_one(b"abd".as_slice())
        );
        assert_ne!(state.hash_one((9i32, 1u64)), state.hash_one((9i32, 2u64)));
        assert_ne!(state.hash_one((9i32, 1u64)), state.hash_one((17i32, 1u64)));
        // Both halves of the hash vary with the key (the map uses the top bits as tags).
        let hashes: Vec<u64> = (0u64..64).map(|n| state.hash_one(n)).collect();
        let tops: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        let bottoms: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 127).collect();
        assert!(
            tops.len() > 32 && bottoms.len() > 32,
            "{tops:?} {bottoms:?}"
        );
    }
}
