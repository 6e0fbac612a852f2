//! Times in store records. A backend reads whatever its database keeps (SQLite:
//! `CURRENT_TIMESTAMP` text or milliseconds; PostgreSQL: `timestamptz`) into a
//! [`Timestamp`]; callers never see a database's format. Serialized as RFC 3339 in UTC
//! with milliseconds, like every other time in the sidecar's JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A point in time, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self(SystemTime::now())
    }

    /// Milliseconds since the Unix epoch (negative values clamp to the epoch).
    pub fn from_ms(ms: i64) -> Self {
        Self(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_ms(self) -> i64 {
        self.0
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// As a [`SystemTime`].
    pub fn system_time(self) -> SystemTime {
        self.0
    }

    /// Reads an SQL-style UTC time: `YYYY-MM-DD HH:MM:SS[.fff]` (SQLite's
    /// `CURRENT_TIMESTAMP` and `strftime`), or RFC 3339 (`T` separator, `Z`). `None` when
    /// the text is neither.
    pub fn parse_sql(text: &str) -> Option<Self> {
        humantime::parse_rfc3339_weak(text.trim()).ok().map(Self)
    }

    /// Reads an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.fff]` then `Z` or an offset
    /// (`+02:00`, `-05:30`). `None` for anything else (a time without its offset
    /// included: it would be read in some unknown zone).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let text = text.trim();
        let (base, offset_secs) = if let Some(b) = text.strip_suffix(['Z', 'z']) {
            (b, 0i64)
        } else {
            let at = text.len().checked_sub(6)?;
            let (b, off) = (text.get(..at)?, text.get(at..)?.as_bytes());
            let sign = match off[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits = |d: &[u8]| -> Option<i64> {
                d.iter().try_fold(0i64, |n, c| {
                    c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
                })
            };
            let (h, m) = (digits(&off[1..3])?, digits(&off[4..6])?);
            if off[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            (b, sign * (h * 3600 + m * 60))
        };
        if !matches!(base.as_bytes().get(10), Some(b'T' | b't')) {
            return None;
        }
        let base = format!("{}T{}", base.get(..10)?, base.get(11..)?);
        let utc = humantime::parse_rfc3339_weak(&base).ok()?;
        let shift = Duration::from_secs(offset_secs.unsigned_abs());
        let t = if offset_secs >= 0 {
            utc.checked_sub(shift)?
        } else {
            utc.checked_add(shift)?
        };
        Some(Self(t))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(t)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sql_times_read_as_utc_and_print_as_rfc3339() {
        let t = Timestamp::parse_sql("2026-12-04 10:00:01").unwrap();
        assert_eq!(t.to_string(), "2026-12-04T10:00:01.000Z");
        let t = Timestamp::parse_sql("2026-12-04 10:00:01.250").unwrap();
        assert_eq!(t.as_ms() % 1000, 250);
        assert_eq!(
            Timestamp::parse_sql("2026-12-04T10:00:01Z"),
            Timestamp::parse_sql("2026-12-04 10:00:01")
        );
        assert_eq!(Timestamp::parse_sql("yesterday"), None);
        assert_eq!(Timestamp::from_ms(t.as_ms()), t);
        assert_eq!(
            serde_json::to_string(&Timestamp::from_ms(0)).unwrap(),
            "\"1970-01-01T00:00:00.000Z\""
        );
    }

    #[test]
    fn rfc3339_times_need_their_offset() {
        let z = Timestamp::parse_rfc3339("2026-12-04T10:00:01.250Z").unwrap();
        assert_eq!(z.to_string(), "2026-12-04T10:00:01.250Z");
        let plus = Timestamp::parse_rfc3339("2026-12-04T12:30:01.250+02:30").unwrap();
        assert_eq!(plus, z);
        let minus = Timestamp::parse_rfc3339("2026-12-04t05:00:01.250-05:00").unwrap();
        assert_eq!(minus, z);
        for bad in [
            "2026-12-04 10:00:01Z",
            "2026-12-04T10:00:01",
            "2026-12-04T10:00:01+2:00",
            "2026-12-04T10:00:01+02:60",
            "2026-12-04T10:00:01+0200",
            "2026-13-04T10:00:01Z",
            "tomorrow",
            "",
            "+00:00",
            "é2026-12-04T10:00:01+02:00",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
