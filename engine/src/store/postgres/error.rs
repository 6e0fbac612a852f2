//! PostgreSQL errors as [`StoreError`]s. What a caller does next depends on the kind:
//! a server that cannot be reached now ([`StoreError::Unavailable`]: retry, report not
//! ready), settings the server refuses ([`StoreError::Config`]: a wrong password, a
//! missing database; no retry helps), a duplicate job id ([`StoreError::Invalid`]), or
//! anything else the database said ([`StoreError::Db`]).

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// SQLSTATE classes that say the connection or the server is gone or going: `08`
/// (connection exception), `57P0x` (admin shutdown, crash shutdown, cannot connect now),
/// `53` (insufficient resources: too many connections).
fn unavailable(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || c.starts_with("57P0") || c.starts_with("53")
}

/// SQLSTATEs that say this process's settings are refused: `28` (invalid authorization:
/// a wrong password or user), `3D000` (no such database).
fn refused(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("28") || c == "3D000"
}

/// A driver error as a store error.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if refused(c) => StoreError::Config(db_message(&e)),
        Some(c) if unavailable(c) => StoreError::Unavailable(db_message(&e)),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Invalid(db_message(&e)),
        Some(_) => StoreError::Db(db_message(&e)),
        // No SQLSTATE: the connection failed or closed (I/O, a server gone mid-query).
        None => StoreError::Unavailable(format!("PostgreSQL: {}", chain(&e))),
    }
}

/// A pool error as a store error.
pub(super) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => {
            StoreError::Unavailable("PostgreSQL: no connection within the pool's timeout".into())
        }
        e => StoreError::Unavailable(format!("PostgreSQL: {e}")),
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("PostgreSQL: {} ({})", d.message(), d.code().code()),
        None => format!("PostgreSQL: {}", chain(e)),
    }
}

/// An error with its sources ("error connecting to server: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
