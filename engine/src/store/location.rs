//! Where a store lives, from what `--db` (or `TURNSTILE_DB`) says, and the one place that
//! opens a store from it.
//!
//! `--db` takes a file path, a `sqlite://` URL or a `postgres://` (`postgresql://`) URL.
//! A URL is never taken for a path: before this rule,
//! `--db postgres://host/db` created a directory named `postgres:` and a SQLite file in
//! it, and a process that was meant to share a queue worked alone without a word. Anything
//! that starts like a URL (`scheme://`, or a scheme this module knows followed by `:`)
//! must name a backend this build serves.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::{PgStore, SqliteStore, Store, StoreError, StoreOptions};

/// A store's location.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (a plain path, `sqlite:PATH` or `sqlite://PATH`).
    Sqlite(PathBuf),
    /// A PostgreSQL database: the URL as given (it may hold a password: shown without it).
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Location::Postgres(u) => f.debug_tuple("Postgres").field(&redact(u)).finish(),
        }
    }
}

/// Schemes people write for databases that this build has no backend for.
const KNOWN_ELSEWHERE: &[(&str, &str)] = &[
    ("mysql", "MySQL"),
    ("mariadb", "MariaDB"),
    ("redis", "Redis"),
];

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(
                "the store location is empty: give a file path, a sqlite:// or a postgres:// URL"
                    .into(),
            );
        }
        let Some((scheme, rest)) = split_scheme(s) else {
            return Ok(Location::Sqlite(PathBuf::from(s)));
        };
        let lower = scheme.to_ascii_lowercase();
        if lower == "sqlite" {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!(
                    "`{s}` names no file: write sqlite://PATH or just PATH"
                ));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if lower == "postgres" || lower == "postgresql" {
            super::postgres::parse_url(s).map_err(|e| e.to_string())?;
            return Ok(Location::Postgres(s.to_owned()));
        }
        if let Some((_, what)) = KNOWN_ELSEWHERE.iter().find(|(k, _)| *k == lower) {
            return Err(format!(
                "`{scheme}:` is a {what} URL, and this build of Turnstile has no {what} \
                 backend; it serves SQLite files (a path, or sqlite://PATH) and PostgreSQL \
                 (a postgres:// URL)"
            ));
        }
        Err(format!(
            "unknown store scheme `{scheme}:` in `{}`: --db takes a file path, a \
             sqlite://PATH URL or a postgres:// URL (a file whose name contains `://` can be \
             given as ./NAME)",
            redact(s)
        ))
    }
}

/// `(scheme, rest)` when `s` starts like a URL: `scheme://...`, or `scheme:...` for a
/// scheme this module knows. A path such as `./a:b.db` or `data/x.db` is not a URL.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once(':')?;
    let well_formed = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return None;
    }
    let lower = scheme.to_ascii_lowercase();
    let known = matches!(lower.as_str(), "sqlite" | "postgres" | "postgresql")
        || KNOWN_ELSEWHERE.iter().any(|(k, _)| *k == lower);
    (rest.starts_with("//") || known).then_some((scheme, rest))
}

/// `s` with the password of a `user:password@` part replaced by `***`.
fn redact(s: &str) -> String {
    let Some((head, tail)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = tail.find('/').unwrap_or(tail.len());
    let authority = &tail[..authority_end];
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{head}://{name}:***@{host}{}", &tail[authority_end..]),
            None => s.to_owned(),
        },
        None => s.to_owned(),
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

/// Opens (creating when needed) the store at `location`.
pub fn open(location: &Location, opts: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        Location::Sqlite(path) => Ok(Arc::new(SqliteStore::open_with(path, opts)?)),
        Location::Postgres(url) => Ok(Arc::new(PgStore::open(url, opts)?)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sqlite(p: &str) -> Location {
        Location::Sqlite(PathBuf::from(p))
    }

    #[test]
    fn paths_and_sqlite_urls_are_files() {
        for (given, path) in [
            ("turnstile.db", "turnstile.db"),
            ("/var/lib/t/jobs.db", "/var/lib/t/jobs.db"),
            ("./a:b.db", "./a:b.db"),
            ("data/x:1.db", "data/x:1.db"),
            ("sqlite://jobs.db", "jobs.db"),
            ("sqlite:///var/jobs.db", "/var/jobs.db"),
            ("sqlite:jobs.db", "jobs.db"),
            ("SQLITE://jobs.db", "jobs.db"),
        ] {
            assert_eq!(given.parse::<Location>().unwrap(), sqlite(path), "{given}");
        }
    }

    #[test]
    fn urls_this_build_does_not_serve_are_refused() {
        for (given, says) in [
            (
                "postgres://u:secret@db:notaport/jobs",
                "malformed PostgreSQL URL",
            ),
            (
                "postgres://u:secret@db/jobs?sslmode=require",
                "connects to PostgreSQL without TLS",
            ),
            ("postgres://u:secret@/jobs", "names no host"),
            ("mysql://u:secret@db/jobs", "no MySQL backend"),
            ("s3://bucket/jobs.db", "unknown store scheme `s3:`"),
            ("sqlite://", "names no file"),
            ("", "empty"),
        ] {
            let e = given.parse::<Location>().unwrap_err();
            assert!(e.contains(says), "{given}: {e}");
            assert!(!e.contains("secret"), "{given}: the password shows: {e}");
        }
        let e = "foo://u:secret@h/x".parse::<Location>().unwrap_err();
        assert!(e.contains("foo://u:***@h/x"), "{e}");
    }

    #[test]
    fn postgres_urls_are_databases_shown_without_their_password() {
        for url in ["postgres://u:secret@db:5432/jobs", "postgresql://db/jobs"] {
            let l = url.parse::<Location>().unwrap();
            assert_eq!(l, Location::Postgres(url.into()));
            assert!(!l.to_string().contains("secret"), "{l}");
            assert!(!format!("{l:?}").contains("secret"), "{l:?}");
        }
    }
}
