//! Singleton machines' leases on SQLite (`turnstile_leases`, see
//! [`crate::store::leases`]): each call reads and writes the row in one write of the
//! group-commit writer, inside one `BEGIN IMMEDIATE` transaction, so processes sharing the
//! file are serialised by SQLite's write lock. Times are milliseconds of the writer's clock.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::rows::Cached;
use super::SqliteStore;
use crate::store::instances::ms;
use crate::store::{now_ms, Acquired, LeaseRecord, LeaseStore, StoreError};

fn remaining(expires_at: i64, now: i64) -> Option<Duration> {
    (expires_at > now).then(|| Duration::from_millis(u64::try_from(expires_at - now).unwrap_or(0)))
}

impl LeaseStore for SqliteStore {
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Acquired, StoreError> {
        let (name, holder, lease) = (name.to_owned(), holder.to_owned(), ms(lease));
        self.write(move |tx| {
            let now = now_ms();
            let row: Option<(Option<String>, i64, i64)> = tx
                .row_cached(
                    "SELECT holder, epoch, expires_at FROM turnstile_leases WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let epoch = match row {
                Some((Some(h), epoch, expires_at)) if expires_at > now => {
                    return Ok(Acquired::Taken {
                        holder: h,
                        epoch,
                        expires_in: remaining(expires_at, now).unwrap_or_default(),
                    })
                }
                Some((_, epoch, _)) => epoch + 1,
                None => 1,
            };
            tx.exec_cached(
                "INSERT INTO turnstile_leases (name, holder, epoch, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET holder = excluded.holder,
                    epoch = excluded.epoch, expires_at = excluded.expires_at",
                params![name, holder, epoch, now + lease],
            )?;
            Ok(Acquired::Held { epoch })
        })
    }

    fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        epoch: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (name, holder, lease) = (name.to_owned(), holder.to_owned(), ms(lease));
        self.write(move |tx| {
            Ok(tx.exec_cached(
                "UPDATE turnstile_leases SET expires_at = ?4
                 WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
                params![name, holder, epoch, now_ms() + lease],
            )? > 0)
        })
    }

    fn release_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |tx| {
            Ok(tx.exec_cached(
                "UPDATE turnstile_leases SET holder = NULL, expires_at = ?4
                 WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
                params![name, holder, epoch, now_ms()],
            )? > 0)
        })
    }

    fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT name, holder, epoch, expires_at FROM turnstile_leases ORDER BY name",
        )?;
        let now = now_ms();
        let rows = st.query_map([], |r| {
            let holder: Option<String> = r.get(1)?;
            Ok(LeaseRecord {
                name: r.get(0)?,
                expires_in: holder
                    .as_ref()
                    .and_then(|_| remaining(r.get(3).unwrap_or(0), now)),
                holder,
                epoch: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn fence(&self, machine: &str, epoch: i64) {
        self.inner.fences.set(machine, epoch);
    }
}
