//! Singleton machines' leases on PostgreSQL (`turnstile_leases`, see
//! [`crate::store::leases`]). Taking a lease is one `INSERT ... ON CONFLICT DO UPDATE ...
//! WHERE free or expired RETURNING`: the conflicting row's lock serialises takers across
//! processes. A release sends `NOTIFY turnstile_jobs`, which wakes the standbys of every
//! process at once (they wait on [`crate::store::JobStore::notify`]). Times are the
//! database's clock.

use std::time::Duration;

use super::error::{pg_error, pool_error};
use super::PgStore;
use crate::store::instances::ms;
use crate::store::{Acquired, LeaseRecord, LeaseStore, StoreError};

const ACQUIRE: &str = "
    INSERT INTO turnstile_leases AS l (name, holder, epoch, expires_at)
    VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = l.epoch + 1,
        expires_at = excluded.expires_at
    WHERE l.holder IS NULL OR l.expires_at <= clock_timestamp()
    RETURNING epoch";

/// The columns [`LeaseRecord`]s are read from (the time left in seconds, by the
/// database's clock).
const COLUMNS: &str = "name, holder, epoch,
    EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8";

fn record(r: &tokio_postgres::Row) -> Result<LeaseRecord, tokio_postgres::Error> {
    let holder: Option<String> = r.try_get(1)?;
    let left: f64 = r.try_get(3)?;
    Ok(LeaseRecord {
        name: r.try_get(0)?,
        expires_in: holder
            .as_ref()
            .and_then(|_| Duration::try_from_secs_f64(left).ok())
            .filter(|d| !d.is_zero()),
        holder,
        epoch: r.try_get(2)?,
    })
}

impl LeaseStore for PgStore {
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Acquired, StoreError> {
        let pool = self.inner.pool.clone();
        let (name, holder, lease) = (name.to_owned(), holder.to_owned(), ms(lease) as f64);
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            // A holder that releases between the two statements frees it: try again.
            for _ in 0..3 {
                let got = c
                    .query_opt(ACQUIRE, &[&name, &holder, &lease])
                    .await
                    .map_err(pg_error)?;
                if let Some(r) = got {
                    return Ok(Acquired::Held {
                        epoch: r.try_get(0).map_err(pg_error)?,
                    });
                }
                let row = c
                    .query_opt(
                        &format!("SELECT {COLUMNS} FROM turnstile_leases WHERE name = $1"),
                        &[&name],
                    )
                    .await
                    .map_err(pg_error)?;
                if let Some(r) = row {
                    let rec = record(&r).map_err(pg_error)?;
                    if let (Some(h), Some(left)) = (rec.holder, rec.expires_in) {
                        return Ok(Acquired::Taken {
                            holder: h,
                            epoch: rec.epoch,
                            expires_in: left,
                        });
                    }
                }
            }
            Err(StoreError::Db(format!(
                "taking the lease of `{name}`: its row keeps changing"
            )))
        })
    }

    fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        epoch: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let pool = self.inner.pool.clone();
        let (name, holder, lease) = (name.to_owned(), holder.to_owned(), ms(lease) as f64);
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let n = c
                .execute(
                    "UPDATE turnstile_leases
                     SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
                     WHERE name = $1 AND holder = $2 AND epoch = $3",
                    &[&name, &holder, &epoch, &lease],
                )
                .await
                .map_err(pg_error)?;
            Ok(n > 0)
        })
    }

    fn release_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        let pool = self.inner.pool.clone();
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query(
                    "WITH u AS (
                        UPDATE turnstile_leases SET holder = NULL, expires_at = clock_timestamp()
                        WHERE name = $1 AND holder = $2 AND epoch = $3 RETURNING name)
                     SELECT pg_notify('turnstile_jobs', 'lease:' || name) FROM u",
                    &[&name, &holder, &epoch],
                )
                .await
                .map_err(pg_error)?;
            Ok(!rows.is_empty())
        })
    }

    fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query(
                    &format!("SELECT {COLUMNS} FROM turnstile_leases ORDER BY name"),
                    &[],
                )
                .await
                .map_err(pg_error)?;
            rows.iter().map(|r| record(r).map_err(pg_error)).collect()
        })
    }

    fn fence(&self, machine: &str, epoch: i64) {
        self.inner.fences.set(machine, epoch);
    }
}

/// Whether `machine`'s lease is still at `epoch`, read in `tx` with the row locked
/// `FOR SHARE` until it commits: a takeover that commits meanwhile waits for this
/// transaction, or was committed first and is seen.
pub(super) async fn epoch_holds(
    tx: &deadpool_postgres::Transaction<'_>,
    machine: &str,
    epoch: i64,
) -> Result<bool, StoreError> {
    let st = tx
        .prepare_cached("SELECT epoch FROM turnstile_leases WHERE name = $1 FOR SHARE")
        .await
        .map_err(pg_error)?;
    let now: Option<i64> = tx
        .query_opt(&st, &[&machine])
        .await
        .map_err(pg_error)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(pg_error)?;
    Ok(now == Some(epoch))
}
