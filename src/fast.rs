//! Hash tables for the analysis stage: hashbrown with foldhash, seeded per process (keys come
//! from the traffic, so an attacker must not be able to predict collisions). Iteration order is
//! not deterministic: code that writes in iteration order sorts first.

pub type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;
