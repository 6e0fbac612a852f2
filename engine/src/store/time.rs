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
}
