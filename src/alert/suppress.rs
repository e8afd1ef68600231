//! Alert policy: repeats of the same finding (same rule, same identifier) within the rule's
//! suppression window are counted instead of written; the next alert written for it says how
//! many were suppressed. Like Zeek's notice `$identifier` + `suppress_for`, in packet time.

use crate::time::Timestamp;

/// Suppression state, bounded.
pub struct Suppressor {
    /// (sid, identifier) -> (suppressed until, count suppressed since last written).
    seen: hashbrown::HashMap<(u32, String), (Timestamp, u64)>,
    cap: usize,
    /// Findings suppressed in all.
    pub suppressed: u64,
    /// Entries dropped because the table was full.
    pub evicted: u64,
}

/// A borrowed (sid, identifier) key: looks up `(u32, String)` entries without allocating (it
/// hashes as the owned tuple does).
#[derive(Hash)]
struct KeyRef<'a>(u32, &'a str);

impl hashbrown::Equivalent<(u32, String)> for KeyRef<'_> {
    fn equivalent(&self, k: &(u32, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

/// The decision for one finding.
pub enum Decision {
    /// Write it; `n` repeats were suppressed since the last one written.
    Write {
        suppressed_before: u64,
    },
    Suppress,
}

impl Suppressor {
    pub fn new(cap: usize) -> Self {
        Suppressor {
            seen: hashbrown::HashMap::new(),
            cap: cap.max(1),
            suppressed: 0,
            evicted: 0,
        }
    }

    pub fn decide(&mut self, sid: u32, identifier: &str, ts: Timestamp, window: u64) -> Decision {
        if window == 0 || identifier.is_empty() {
            return Decision::Write {
                suppressed_before: 0,
            };
        }
        if let Some((until, n)) = self.seen.get_mut(&KeyRef(sid, identifier)) {
            if ts < *until {
                *n += 1;
                self.suppressed += 1;
                return Decision::Suppress;
            }
            let before = *n;
            *until = ts.plus_secs(window);
            *n = 0;
            return Decision::Write {
                suppressed_before: before,
            };
        }
        if self.seen.len() >= self.cap {
            self.make_room(ts);
        }
        self.seen
            .insert((sid, identifier.to_string()), (ts.plus_secs(window), 0));
        Decision::Write {
            suppressed_before: 0,
        }
    }

    /// The table is full: drops the entries whose window has passed, and when that frees less
    /// than an eighth of it (a burst of distinct findings larger than the cap: better to alert
    /// again than to grow), the eighth whose windows end soonest (ties by key, so replays drop
    /// the same ones). Each look at the table makes room for many findings, so a stream of
    /// distinct findings costs a constant time each.
    fn make_room(&mut self, ts: Timestamp) {
        let before = self.seen.len();
        self.seen.retain(|_, (until, _)| *until > ts);
        let room = (self.cap / 8).max(1);
        if self.seen.len() + room > self.cap {
            let ends: Vec<(Timestamp, &(u32, String))> = self
                .seen
                .iter()
                .map(|(k, (until, _))| (*until, k))
                .collect();
            let n = self.seen.len() + room - self.cap;
            let gone: Vec<(u32, String)> = crate::fast::smallest(ends, n)
                .into_iter()
                .map(|(_, k)| k.clone())
                .collect();
            for k in gone {
                self.seen.remove(&k);
            }
        }
        self.evicted += (before - self.seen.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_counted() {
        let mut s = Suppressor::new(10);
        let t = Timestamp::from_secs(1000);
        assert!(matches!(
            s.decide(1, "a", t, 60),
            Decision::Write {
                suppressed_before: 0
            }
        ));
        assert!(matches!(
            s.decide(1, "a", t.plus_secs(10), 60),
            Decision::Suppress
        ));
        assert!(matches!(
            s.decide(1, "b", t.plus_secs(10), 60),
            Decision::Write { .. }
        ));
        assert!(matches!(
            s.decide(2, "a", t.plus_secs(10), 60),
            Decision::Write { .. }
        ));
        assert!(matches!(
            s.decide(1, "a", t.plus_secs(61), 60),
            Decision::Write {
                suppressed_before: 1
            }
        ));
        assert_eq!(s.suppressed, 1);
    }

    #[test]
    fn a_full_table_makes_room_an_eighth_at_a_time() {
        let mut s = Suppressor::new(80);
        let t = Timestamp::from_secs(1000);
        // 80 distinct findings, all still in their window (finding i's ends at t + 600 + i).
        for i in 0..80u64 {
            s.decide(1, &format!("f{i}"), t.plus_secs(i), 600);
        }
        assert_eq!((s.seen.len(), s.evicted), (80, 0));
        // The 81st drops the ten whose windows end soonest: f0..f9.
        s.decide(1, "g0", t.plus_secs(100), 600);
        assert_eq!((s.seen.len(), s.evicted), (71, 10));
        assert!(s.seen.contains_key(&(1, "f10".to_string())));
        assert!(!s.seen.contains_key(&(1, "f9".to_string())));
        // The next nine fit without a look at the table.
        for i in 1..10 {
            s.decide(1, &format!("g{i}"), t.plus_secs(100), 600);
        }
        assert_eq!((s.seen.len(), s.evicted), (80, 10));
        // Past every window: all the old ones go at once.
        s.decide(1, "h", t.plus_secs(10_000), 600);
        assert_eq!((s.seen.len(), s.evicted), (1, 90));
        // A dropped finding alerts again.
        assert!(matches!(
            s.decide(1, "h", t.plus_secs(10_001), 600),
            Decision::Suppress
        ));
        assert!(matches!(
            s.decide(1, "f0", t.plus_secs(10_001), 600),
            Decision::Write { .. }
        ));
    }
}
