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
            // Drop entries whose window has passed; if none, drop everything (a burst of
            // distinct findings larger than the cap: better to alert again than to grow).
            let before = self.seen.len();
            self.seen.retain(|_, (until, _)| *until > ts);
            if self.seen.len() >= self.cap {
                self.seen.clear();
            }
            self.evicted += (before - self.seen.len()) as u64;
        }
        self.seen
            .insert((sid, identifier.to_string()), (ts.plus_secs(window), 0));
        Decision::Write {
            suppressed_before: 0,
        }
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
}
