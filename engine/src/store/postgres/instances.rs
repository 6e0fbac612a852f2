//! Live instances on PostgreSQL (`turnstile_instances`, see [`crate::store::instances`]).
//! Registration is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE stale RETURNING`: the
//! row lock of the conflicting row serialises registrations of one id across processes,
//! and a registration that returns nothing found a live holder. Times are the database's
//! clock.

use std::time::{Duration, SystemTime};

use tokio_postgres::Row;

use super::error::{pg_error, pool_error};
use super::PgStore;
use crate::instance::host_name;
use crate::store::instances::ms;
use crate::store::{Heartbeat, InstanceStore, LiveInstance, StoreError, Timestamp};

/// The columns [`live`] reads, in order (the age in seconds, by the database's clock).
const COLUMNS: &str = "instance_id, incarnation, host, pid, started_at, heartbeat_at,
    EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)::float8";

fn live(r: &Row) -> Result<LiveInstance, tokio_postgres::Error> {
    let age: f64 = r.try_get(6)?;
    Ok(LiveInstance {
        instance_id: r.try_get(0)?,
        incarnation: r.try_get(1)?,
        host: r.try_get(2)?,
        pid: r.try_get(3)?,
        started_at: r.try_get::<_, Option<SystemTime>>(4)?.map(Timestamp::from),
        heartbeat_at: r.try_get::<_, Option<SystemTime>>(5)?.map(Timestamp::from),
        age: Duration::try_from_secs_f64(age).unwrap_or(Duration::ZERO),
    })
}

/// Claims the id when it is free, stale or this incarnation's.
const REGISTER: &str = "
    INSERT INTO turnstile_instances AS i
        (instance_id, incarnation, host, pid, started_at, heartbeat_at)
    VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp())
    ON CONFLICT (instance_id) DO UPDATE SET incarnation = excluded.incarnation,
        host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
        heartbeat_at = excluded.heartbeat_at
    WHERE i.incarnation = excluded.incarnation
        OR i.heartbeat_at < clock_timestamp() - $5 * interval '1 millisecond'
    RETURNING instance_id";

/// Records a heartbeat when the row is this incarnation's, writes it again when gone.
const HEARTBEAT: &str = "
    INSERT INTO turnstile_instances AS i
        (instance_id, incarnation, host, pid, started_at, heartbeat_at)
    VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp())
    ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at
    WHERE i.incarnation = excluded.incarnation
    RETURNING instance_id";

impl InstanceStore for PgStore {
    fn register_instance(
        &self,
        id: &str,
        incarnation: &str,
        stale_after: Duration,
    ) -> Result<(), StoreError> {
        let pool = self.inner.pool.clone();
        let (id_, inc, stale) = (id.to_owned(), incarnation.to_owned(), ms(stale_after));
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let pid = i64::from(std::process::id());
            // A holder that unregisters between the two statements frees the id: try again.
            for _ in 0..3 {
                let claimed = c
                    .query_opt(REGISTER, &[&id_, &inc, &host_name(), &pid, &(stale as f64)])
                    .await
                    .map_err(pg_error)?;
                if claimed.is_some() {
                    return Ok(());
                }
                let holder = c
                    .query_opt(
                        &format!(
                            "SELECT {COLUMNS} FROM turnstile_instances WHERE instance_id = $1"
                        ),
                        &[&id_],
                    )
                    .await
                    .map_err(pg_error)?;
                if let Some(h) = holder {
                    return Err(StoreError::InstanceInUse(Box::new(
                        live(&h).map_err(pg_error)?,
                    )));
                }
            }
            Err(StoreError::Db(format!(
                "registering instance `{id_}`: its row keeps changing"
            )))
        })?;
        self.inner.registration.set(id, incarnation);
        Ok(())
    }

    fn heartbeat_instance(&self, id: &str, incarnation: &str) -> Result<Heartbeat, StoreError> {
        let pool = self.inner.pool.clone();
        let (id, inc) = (id.to_owned(), incarnation.to_owned());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let pid = i64::from(std::process::id());
            let ours = c
                .query_opt(HEARTBEAT, &[&id, &inc, &host_name(), &pid])
                .await
                .map_err(pg_error)?;
            if ours.is_some() {
                return Ok(Heartbeat::Ours);
            }
            let holder = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM turnstile_instances WHERE instance_id = $1"),
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            match holder {
                Some(h) => Ok(Heartbeat::Taken(Box::new(live(&h).map_err(pg_error)?))),
                // Deleted in between: the next heartbeat writes it again.
                None => Ok(Heartbeat::Ours),
            }
        })
    }

    fn unregister_instance(&self, id: &str, incarnation: &str) -> Result<bool, StoreError> {
        self.inner.registration.clear(id, incarnation);
        let pool = self.inner.pool.clone();
        let (id, inc) = (id.to_owned(), incarnation.to_owned());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let n = c
                .execute(
                    "DELETE FROM turnstile_instances WHERE instance_id = $1 AND incarnation = $2",
                    &[&id, &inc],
                )
                .await
                .map_err(pg_error)?;
            Ok(n > 0)
        })
    }

    fn instances(&self) -> Result<Vec<LiveInstance>, StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let rows = c
                .query(
                    &format!("SELECT {COLUMNS} FROM turnstile_instances ORDER BY instance_id"),
                    &[],
                )
                .await
                .map_err(pg_error)?;
            rows.iter().map(|r| live(r).map_err(pg_error)).collect()
        })
    }
}
