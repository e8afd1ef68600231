//! Packet time: the only clock of the pipeline.
//!
//! Every timeout, window and alert timestamp comes from capture timestamps, never from the wall
//! clock, so that replaying a capture and watching the same traffic live give the same alerts.

use std::fmt;

/// A capture timestamp in nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn from_secs_nanos(secs: u64, nanos: u32) -> Self {
        Timestamp(
            secs.saturating_mul(1_000_000_000)
                .saturating_add(u64::from(nanos)),
        )
    }
    pub fn from_secs(secs: u64) -> Self {
        Timestamp::from_secs_nanos(secs, 0)
    }
    pub fn secs(self) -> u64 {
        self.0 / 1_000_000_000
    }
    pub fn subsec_nanos(self) -> u32 {
        (self.0 % 1_000_000_000) as u32
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    /// `self + secs` seconds, saturating.
    pub fn plus_secs(self, secs: u64) -> Self {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1_000_000_000)))
    }
    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// Whole seconds from `earlier` to `self`.
    pub fn secs_since(self, earlier: Timestamp) -> u64 {
        self.since(earlier) / 1_000_000_000
    }
    /// RFC 3339 with microseconds and an explicit UTC offset, as EVE consumers expect:
    /// `2024-05-01T12:00:03.123456+00:00`.
    pub fn rfc3339(self) -> Rfc3339 {
        Rfc3339(self)
    }
}

/// Display adapter writing a [`Timestamp`] in RFC 3339 without allocating.
pub struct Rfc3339(Timestamp);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digits put in place by hand: event logs write several timestamps per flow.
        let secs = self.0.secs();
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let mut b = *b"0000-00-00T00:00:00.000000+00:00";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for c in b[at..at + width].iter_mut().rev() {
                *c = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        // Years run to 2554 at most (u64 nanoseconds): four digits.
        put(0, 4, y as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, rem / 3600);
        put(14, 2, (rem % 3600) / 60);
        put(17, 2, rem % 60);
        put(20, 6, u64::from(self.0.subsec_nanos() / 1000));
        f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses a duration such as `90`, `90s`, `10m`, `2h`, `1d` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        Some(_) => (s, 1),
        None => return Err("empty duration".into()),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 30s, 10m, 2h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_micros() {
        // 2009-11-18T08:00:00.000123Z, checked against `date -u -d @1258531200`.
        let t = Timestamp::from_secs_nanos(1_258_531_200, 123_999);
        assert_eq!(t.rfc3339().to_string(), "2009-11-18T08:00:00.000123+00:00");
        assert_eq!(
            Timestamp::ZERO.rfc3339().to_string(),
            "1970-01-01T00:00:00.000000+00:00"
        );
        // Leap day.
        let t = Timestamp::from_secs(951_782_400 + 86_399);
        assert_eq!(t.rfc3339().to_string(), "2000-02-29T23:59:59.000000+00:00");
        // The last second u64 nanoseconds can hold (`date -u -d @18446744073`).
        let t = Timestamp::from_secs_nanos(18_446_744_073, 709_551_615);
        assert_eq!(t.rfc3339().to_string(), "2554-07-21T23:34:33.709551+00:00");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert!(parse_duration_secs("x").is_err());
        assert!(parse_duration_secs("").is_err());
    }
}
