//! Hash tables for the analysis stage: hashbrown with foldhash, seeded per process (keys come
//! from the traffic, so an attacker must not be able to predict collisions). Iteration order is
//! not deterministic: code that writes in iteration order sorts first. And the two ways its
//! tables stay within their caps: refusing new keys ([`entry_within`]), or dropping many
//! entries at once when full ([`smallest`]). And sets and maps that hold their first few
//! entries in their owner ([`SmallSet`], [`SmallMap`]), for state kept per source or device
//! that most often holds one or a few.

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

/// Removes and returns the value of `key` when `pred` holds for it, with one look at the table
/// (an episode that is over, closed before its key's next event).
pub fn remove_if<K: Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    pred: impl FnOnce(&V) -> bool,
) -> Option<V> {
    match map.entry(key) {
        hashbrown::hash_map::Entry::Occupied(o) if pred(o.get()) => Some(o.remove()),
        _ => None,
    }
}

/// A set of distinct values that holds its first `N` in place and only the rest in a hash set
/// of its own, made when needed: most devices meet a few peers and ports per window, and most
/// sources of a spoofed flood send one probe; a value held in place costs no allocation and no
/// look at memory other than the set's owner, which stays small. Iteration order is not
/// deterministic.
#[derive(Clone, Debug)]
pub struct SmallSet<T, const N: usize> {
    first: [Option<T>; N],
    rest: Option<Box<HashSet<T>>>,
}

impl<T, const N: usize> Default for SmallSet<T, N> {
    fn default() -> Self {
        SmallSet {
            first: std::array::from_fn(|_| None),
            rest: None,
        }
    }
}

impl<T: Copy + Eq + Hash, const N: usize> SmallSet<T, N> {
    /// Adds `v`; true when it was not held.
    pub fn insert(&mut self, v: T) -> bool {
        for slot in &mut self.first {
            match slot {
                Some(x) if *x == v => return false,
                Some(_) => {}
                None => {
                    *slot = Some(v);
                    return true;
                }
            }
        }
        self.rest.get_or_insert_default().insert(v)
    }

    pub fn contains(&self, v: &T) -> bool {
        self.first.contains(&Some(*v)) || self.rest.as_ref().is_some_and(|r| r.contains(v))
    }

    pub fn len(&self) -> usize {
        self.first.iter().flatten().count() + self.rest.as_ref().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.first
            .iter()
            .flatten()
            .chain(self.rest.iter().flat_map(|r| r.iter()))
    }
}

/// A map that holds its first `N` entries in place and only the rest in a hash map of its own
/// (see [`SmallSet`]). Iteration order is not deterministic.
#[derive(Clone, Debug)]
pub struct SmallMap<K, V, const N: usize> {
    first: [Option<(K, V)>; N],
    rest: Option<Box<HashMap<K, V>>>,
}

impl<K, V, const N: usize> Default for SmallMap<K, V, N> {
    fn default() -> Self {
        SmallMap {
            first: std::array::from_fn(|_| None),
            rest: None,
        }
    }
}

impl<K: Copy + Eq + Hash, V: Default, const N: usize> SmallMap<K, V, N> {
    /// The value of `k`, a default one added if absent.
    pub fn get_or_default(&mut self, k: K) -> &mut V {
        let at = self
            .first
            .iter()
            .position(|e| e.as_ref().is_none_or(|(x, _)| *x == k));
        match at.and_then(|i| self.first.get_mut(i)) {
            Some(slot) => &mut slot.get_or_insert_with(|| (k, V::default())).1,
            None => self.rest.get_or_insert_default().entry(k).or_default(),
        }
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.first.iter().flatten().any(|(x, _)| x == k)
            || self.rest.as_ref().is_some_and(|r| r.contains_key(k))
    }

    pub fn len(&self) -> usize {
        self.first.iter().flatten().count() + self.rest.as_ref().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let first = self.first.iter().flatten().map(|(k, v)| (k, v));
        first.chain(self.rest.iter().flat_map(|r| r.iter()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

/// A set that [`Generations`] can keep.
pub trait GenerationSet: Default {
    type Item: Copy;
    fn contains(&self, x: Self::Item) -> bool;
    fn insert(&mut self, x: Self::Item);
    /// Values held.
    fn size(&self) -> usize;
}

impl<T: Copy + Eq + Hash> GenerationSet for HashSet<T> {
    type Item = T;
    fn contains(&self, x: T) -> bool {
        HashSet::contains(self, &x)
    }
    fn insert(&mut self, x: T) {
        HashSet::insert(self, x);
    }
    fn size(&self) -> usize {
        HashSet::len(self)
    }
}

/// Values remembered in two generations of at most `max` each: when the newer is full it
/// becomes the older one, and the older one's values are dropped (and counted). What was
/// used recently is kept, in bounded memory, with no per-value bookkeeping.
#[derive(Default)]
pub struct Generations<S> {
    gens: [S; 2],
}

impl<S: GenerationSet> Generations<S> {
    pub fn contains(&self, x: S::Item) -> bool {
        self.gens.iter().any(|g| g.contains(x))
    }

    /// Remembers `x` in the newer generation; true when it was remembered before (in either).
    /// Values dropped to make room are added to `evicted`.
    pub fn learn(&mut self, x: S::Item, max: usize, evicted: &mut u64) -> bool {
        if self.gens[0].contains(x) {
            return true;
        }
        let known = self.gens[1].contains(x);
        if self.gens[0].size() >= max {
            let old = std::mem::take(&mut self.gens[0]);
            *evicted += self.gens[1].size() as u64;
            self.gens[1] = old;
        }
        self.gens[0].insert(x);
        known
    }
}

/// Maps of keys of one length each, longest first: a key is looked up in the map of each
/// length in use (an address cut to a network's prefix length, a name cut to a prefix's
/// length), a look per length however many keys share it.
#[derive(Clone, Debug)]
pub struct ByLength<K, V> {
    maps: Vec<(usize, HashMap<K, V>)>,
}

impl<K, V> Default for ByLength<K, V> {
    fn default() -> Self {
        ByLength { maps: Vec::new() }
    }
}

impl<K: Hash + Eq, V> ByLength<K, V> {
    /// The value of `key`, of length `len`, made by `make` if it has none yet.
    pub fn get_or_insert_with(&mut self, len: usize, key: K, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.maps.iter().position(|(l, _)| *l <= len) {
            Some(at) if self.maps.get(at).is_some_and(|(l, _)| *l == len) => at,
            Some(at) => {
                self.maps.insert(at, (len, HashMap::default()));
                at
            }
            None => {
                self.maps.push((len, HashMap::default()));
                self.maps.len() - 1
            }
        };
        let (_, map) = &mut self.maps[at];
        map.entry(key).or_insert_with(make)
    }

    /// Each length in use and its map, longest first.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &HashMap<K, V>)> {
        self.maps.iter().map(|(len, map)| (*len, map))
    }
}

/// Keys by the time they may fall due, soonest first: a detector that closes what went quiet
/// takes at each sweep only the entries due, not a look at every key. An entry is a lower
/// bound on its key's time: when it comes up, a key gone is dropped and one whose time moved
/// later is put back at it. Entries of keys gone wait for their time; should they outnumber
/// the owner's keys, the queue is made again from those, so it holds at most twice their
/// number plus 1,024.
pub struct Deadlines<T, K> {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(T, K)>>,
}

impl<T: Ord, K: Ord> Default for Deadlines<T, K> {
    fn default() -> Self {
        Deadlines {
            heap: std::collections::BinaryHeap::new(),
        }
    }
}

impl<T: Ord + Copy, K: Ord + Copy> Deadlines<T, K> {
    /// Queues `key` at `at` (no later than its time). The owner holds `live` keys, which
    /// `all` gives with their times, for when the queue is made again.
    pub fn push<I: Iterator<Item = (T, K)>>(
        &mut self,
        at: T,
        key: K,
        live: usize,
        all: impl FnOnce() -> I,
    ) {
        self.heap.push(std::cmp::Reverse((at, key)));
        if self.heap.len() > 2 * live + 1_024 {
            self.heap = all().map(std::cmp::Reverse).collect();
        }
    }

    /// The keys due at `now`, in order, once each: `time` tells a key's time now (`None`: it
    /// is gone). Entries come up soonest first; a key not yet due is put back at its time.
    pub fn due(&mut self, now: T, mut time: impl FnMut(K) -> Option<T>) -> Vec<K> {
        let (mut due, mut later) = (Vec::new(), Vec::new());
        while let Some(&std::cmp::Reverse((at, key))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            match time(key) {
                Some(t) if t <= now => due.push(key),
                Some(t) => later.push(std::cmp::Reverse((t, key))),
                None => {}
            }
        }
        self.heap.extend(later);
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Keeps the entries whose key `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.heap.retain(|std::cmp::Reverse((_, k))| keep(k));
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Due keys come once each, in order; a key gone is dropped, one whose time moved later is
    /// put back at it; the queue is made again from the owner's keys past twice their number
    /// plus 1,024.
    #[test]
    fn deadlines_give_what_is_due_and_put_back_the_rest() {
        let mut times: std::collections::BTreeMap<u32, u64> = [(1, 10), (2, 20), (3, 5)].into();
        let mut q = Deadlines::<u64, u32>::default();
        for (&k, &t) in &times {
            q.push(t, k, times.len(), || times.iter().map(|(k, t)| (*t, *k)));
        }
        q.push(4, 1, times.len(), std::iter::empty); // a second, earlier entry for key 1
        assert!(q.due(3, |k| times.get(&k).copied()).is_empty());
        // Key 1 moved to 30; key 3 is gone.
        times.insert(1, 30);
        times.remove(&3);
        assert!(q.due(12, |k| times.get(&k).copied()).is_empty());
        assert_eq!(q.len(), 3, "key 1 put back twice, key 2 waiting");
        assert_eq!(q.due(30, |k| times.get(&k).copied()), [1, 2]);
        assert!(q.is_empty());
        // 5,000 entries for two keys: made again from them.
        let two: Vec<(u64, u32)> = vec![(7, 1), (8, 2)];
        for i in 0..5_000u64 {
            q.push(i, 1, 2, || two.iter().copied());
            assert!(q.len() <= 2 * 2 + 1_024 + 1);
        }
    }

    /// Values past the first `N` go to the hash set, and the set answers the same for both.
    #[test]
    fn a_small_set_holds_values_in_place_then_in_its_hash_set() {
        let mut s = SmallSet::<u16, 2>::default();
        assert!(s.is_empty());
        for (v, new) in [
            (5, true),
            (7, true),
            (5, false),
            (9, true),
            (7, false),
            (9, false),
        ] {
            assert_eq!(s.insert(v), new, "{v}");
        }
        assert_eq!(s.len(), 3);
        assert!(
            s.rest.as_ref().is_some_and(|r| r.len() == 1),
            "9 is in the hash set"
        );
        assert!([5, 7, 9].iter().all(|v| s.contains(v)) && !s.contains(&8));
        let mut all: Vec<u16> = s.iter().copied().collect();
        all.sort();
        assert_eq!(all, [5, 7, 9]);
    }

    /// Entries past the first `N` go to the hash map; a key's value is found where it went.
    #[test]
    fn a_small_map_holds_entries_in_place_then_in_its_hash_map() {
        let mut m = SmallMap::<u16, u32, 1>::default();
        assert!(m.is_empty() && m.rest.is_none());
        for k in [3, 4, 3, 5, 4, 3] {
            *m.get_or_default(k) += 1;
        }
        assert_eq!(m.len(), 3);
        assert!(m.contains_key(&5) && !m.contains_key(&6));
        let mut all: Vec<(u16, u32)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort();
        assert_eq!(all, [(3, 3), (4, 2), (5, 1)]);
        assert_eq!(m.keys().count(), 3);
        assert_eq!(m.values().sum::<u32>(), 6);
        assert_eq!(m.rest.as_ref().map(|r| r.len()), Some(2));
    }

    /// The value goes only when the predicate holds; an absent key stays absent.
    #[test]
    fn remove_if_removes_only_what_the_predicate_picks() {
        let mut m: HashMap<u8, u32> = [(1, 10), (2, 20)].into_iter().collect();
        assert_eq!(remove_if(&mut m, 1, |v| *v > 15), None);
        assert_eq!(remove_if(&mut m, 2, |v| *v > 15), Some(20));
        assert_eq!(remove_if(&mut m, 3, |_| true), None);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key(&1) && !m.contains_key(&3));
    }

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
