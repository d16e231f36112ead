//! RFC 3339 timestamps (`2024-05-01T12:30:00.250Z`), UTC only on output.
//!
//! A few dozen lines instead of a date-time crate: the relay only needs to
//! turn milliseconds since the epoch into text and back, and the civil-date
//! arithmetic (Howard Hinnant's `days_from_civil`) is exact for every year
//! RFC 3339 can write (0000-9999).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An instant with nanosecond precision. Parsing keeps every digit the client
/// sent, so a timestamp echoed back (a `field_conflict`'s client timestamp)
/// reads the same instant; output always uses `Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (negative before it).
    pub secs: i64,
    /// 0..1_000_000_000.
    pub nanos: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 timestamp like \"2024-05-01T12:30:00Z\"")]
pub struct ParseError(pub String);

impl Timestamp {
    pub fn from_unix_ms(ms: u64) -> Timestamp {
        Timestamp {
            secs: (ms / 1000) as i64,
            nanos: (ms % 1000) as u32 * 1_000_000,
        }
    }

    /// Milliseconds since the epoch (sub-millisecond digits are dropped);
    /// None before 1970, which no stamp in the relay can be.
    pub fn unix_ms(&self) -> Option<u64> {
        if self.secs < 0 {
            return None;
        }
        (self.secs as u64)
            .checked_mul(1000)?
            .checked_add(u64::from(self.nanos / 1_000_000))
    }

    /// Parse `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; `t` or a space may
    /// stand for `T` and `z` for `Z` (RFC 3339 section 5.6 and its note).
    pub fn parse(s: &str) -> Result<Timestamp, ParseError> {
        parse(s.as_bytes()).ok_or_else(|| ParseError(s.to_string()))
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = b.get(at..at + n)?;
    part.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn parse(b: &[u8]) -> Option<Timestamp> {
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let min = digits(b, 14, 2)?;
    let sec = digits(b, 17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (digits(b, i + 1, 2)?, digits(b, i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // A leap second (:60) reads as the first instant of the next minute.
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Some(Timestamp { secs, nanos })
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    /// UTC with `Z`, and as many fraction digits as needed: none, 3, 6 or 9
    /// (the same shape chrono's `DateTime<Utc>` serializes to).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        let n = self.nanos;
        if n == 0 {
        } else if n.is_multiple_of(1_000_000) {
            write!(f, ".{:03}", n / 1_000_000)?;
        } else if n.is_multiple_of(1000) {
            write!(f, ".{:06}", n / 1000)?;
        } else {
            write!(f, ".{n:09}")?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            Timestamp::from_unix_ms(0).to_string(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix_ms(1_714_566_600_250).to_string(),
            "2024-05-01T12:30:00.250Z"
        );
        // A leap day.
        assert_eq!(
            Timestamp::from_unix_ms(951_782_400_000).to_string(),
            "2000-02-29T00:00:00Z"
        );
        let t = Timestamp {
            secs: 1,
            nanos: 1500,
        };
        assert_eq!(t.to_string(), "1970-01-01T00:00:01.000001500Z");
    }

    #[test]
    fn parses_offsets_fractions_and_separators() {
        let t = Timestamp::parse("2024-05-01T14:30:00.25+02:00").unwrap();
        assert_eq!(t.unix_ms(), Some(1_714_566_600_250));
        assert_eq!(
            Timestamp::parse("2024-05-01t12:30:00z").unwrap().unix_ms(),
            Some(1_714_566_600_000)
        );
        assert_eq!(
            Timestamp::parse("2024-05-01 07:30:00-05:00")
                .unwrap()
                .unix_ms(),
            Some(1_714_566_600_000)
        );
        let n = Timestamp::parse("2024-05-01T12:30:00.123456789123Z").unwrap();
        assert_eq!(n.nanos, 123_456_789);
    }

    #[test]
    fn round_trips() {
        for ms in [
            0u64,
            1,
            999,
            86_399_999,
            1_700_000_000_123,
            253_402_300_799_000,
        ] {
            let t = Timestamp::from_unix_ms(ms);
            assert_eq!(Timestamp::parse(&t.to_string()), Ok(t), "{ms}");
        }
        let t = Timestamp::parse("1969-12-31T23:59:59.5Z").unwrap();
        assert_eq!((t.secs, t.nanos), (-1, 500_000_000));
        assert_eq!(t.unix_ms(), None);
        assert_eq!(t.to_string(), "1969-12-31T23:59:59.500Z");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2024-05-01",
            "2024-05-01T12:30:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:30:00.Z",
            "2024-05-01T12:30:00+2:00",
            "2024-05-01T12:30:00Zjunk",
            "2024/05/01T12:30:00Z",
            "１０24-05-01T12:30:00Z",
        ] {
            assert!(Timestamp::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let t: Timestamp = serde_json::from_str("\"2024-05-01T12:30:00Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2024-05-01T12:30:00Z\""
        );
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
    }
}
