//! Hash tables for the analysis stage: hashbrown with foldhash, seeded per process (keys come
//! from the traffic, so an attacker must not be able to predict collisions). Iteration order is
//! not deterministic: code that writes in iteration order sorts first. And the two ways its
//! tables stay within their caps: refusing new keys ([`entry_within`]), or dropping many
//! entries at once when full ([`smallest`]).

use std::hash::Hash;

pub type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;

/// The value of `key`, made by `make` if the map holds fewer than `cap` entries; `None` for a
/// new key once it is full (the caller counts what it did not keep).
pub fn entry_within<K: Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    cap: usize,
    make: impl FnOnce() -> V,
) -> Option<&mut V> {
    let full = map.len() >= cap;
    match map.entry(key) {
        hashbrown::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
        hashbrown::hash_map::Entry::Vacant(v) if !full => Some(v.insert(make())),
        hashbrown::hash_map::Entry::Vacant(_) => None,
    }
}

/// The `n` smallest of `v`, in no particular order: what a full table drops to make room, its
/// entries ordered by when they were last of use and then by key, so that replays drop the same
/// ones. Dropping a share of the table at once keeps a stream of new keys at a constant cost
/// each, where dropping one at a time would look at the whole table for each.
pub fn smallest<T: Ord>(mut v: Vec<T>, n: usize) -> Vec<T> {
    let n = n.min(v.len());
    if n > 0 && n < v.len() {
        v.select_nth_unstable(n - 1);
    }
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_map_refuses_new_keys_only() {
        let mut m = HashMap::default();
        for k in 0..5 {
            assert_eq!(
                entry_within(&mut m, k, 3, || k * 10).copied(),
                (k < 3).then_some(k * 10)
            );
        }
        // A held key is still found, and changed in place.
        *entry_within(&mut m, 1, 3, || 0).unwrap() += 1;
        assert_eq!(m.len(), 3);
        assert_eq!(m[&1], 11);
    }

    #[test]
    fn the_smallest_entries_are_the_ones_dropped() {
        let v: Vec<(u64, u32)> = (0..100).map(|i| ((i * 37) % 100, i as u32)).collect();
        let mut got = smallest(v.clone(), 10);
        got.sort();
        let mut want = v.clone();
        want.sort();
        want.truncate(10);
        assert_eq!(got, want);
        assert_eq!(smallest(v.clone(), 0), []);
        assert_eq!(smallest(v.clone(), 500).len(), 100);
    }
}
