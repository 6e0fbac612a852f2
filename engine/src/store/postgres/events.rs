//! The machine registry and event delivery on PostgreSQL (see [`crate::store::events`]).
//! A send is one `INSERT ... RETURNING` with a `pg_notify('turnstile_jobs', ...)` in the
//! same statement, so every process's listener ([`super::listen`]) wakes its consumers
//! when the row commits. The consumer lease is one `INSERT ... ON CONFLICT DO UPDATE
//! ... WHERE` (the row lock serialises takers). Times are the database's clock.

use std::time::{Duration, SystemTime};

use super::error::{pg_error, pool_error};
use super::PgStore;
use crate::instance::host_name;
use crate::store::instances::ms;
use crate::store::{
    EventStore, InstanceOwner, MachineHost, NewEvent, StoreError, StoredEvent, Timestamp,
};

/// Takes or renews a consumer lease; returns a row when the caller holds it.
const LEASE: &str = "
    INSERT INTO turnstile_event_consumers AS c (target_machine, consumer, lease_until)
    VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond')
    ON CONFLICT (target_machine) DO UPDATE SET consumer = excluded.consumer,
        lease_until = excluded.lease_until
    WHERE c.consumer = excluded.consumer OR c.lease_until < clock_timestamp()
    RETURNING 1";

impl EventStore for PgStore {
    fn register_machines(
        &self,
        instance_id: &str,
        incarnation: &str,
        machines: &[String],
    ) -> Result<(), StoreError> {
        let pool = self.inner.pool.clone();
        let (id, inc, names) = (
            instance_id.to_owned(),
            incarnation.to_owned(),
            machines.to_vec(),
        );
        self.call(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            tx.execute(
                "DELETE FROM turnstile_machines WHERE incarnation = $1
                    AND NOT (machine_name = ANY($2))",
                &[&inc, &names],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "DELETE FROM turnstile_event_consumers WHERE consumer = $1
                    AND NOT (target_machine = ANY($2))",
                &[&inc, &names],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "INSERT INTO turnstile_machines
                    (machine_name, incarnation, instance_id, host, pid, heartbeat_at)
                 SELECT m, $2, $3, $4, $5, clock_timestamp() FROM UNNEST($1::text[]) AS m
                 ON CONFLICT (machine_name, incarnation) DO UPDATE
                    SET heartbeat_at = excluded.heartbeat_at",
                &[
                    &names,
                    &inc,
                    &id,
                    &host_name(),
                    &i64::from(std::process::id()),
                ],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
    }

    fn unregister_machines(&self, incarnation: &str) -> Result<(), StoreError> {
        let pool = self.inner.pool.clone();
        let inc = incarnation.to_owned();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            c.batch_execute("BEGIN").await.map_err(pg_error)?;
            c.execute(
                "DELETE FROM turnstile_machines WHERE incarnation = $1",
                &[&inc],
            )
            .await
            .map_err(pg_error)?;
            c.execute(
                "DELETE FROM turnstile_event_consumers WHERE consumer = $1",
                &[&inc],
            )
            .await
            .map_err(pg_error)?;
            c.batch_execute("COMMIT").await.map_err(pg_error)
        })
    }

    fn machine_hosts(
        &self,
        machine: &str,
        stale_after: Duration,
    ) -> Result<Vec<MachineHost>, StoreError> {
        let pool = self.inner.pool.clone();
        let (machine, stale) = (machine.to_owned(), ms(stale_after) as f64);
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT machine_name, instance_id, incarnation, host, pid, heartbeat_at
                     FROM turnstile_machines WHERE machine_name = $1
                        AND heartbeat_at >= clock_timestamp() - $2 * interval '1 millisecond'
                     ORDER BY heartbeat_at DESC",
                )
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[&machine, &stale]).await.map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    Ok(MachineHost {
                        machine_name: r.try_get(0)?,
                        instance_id: r.try_get(1)?,
                        incarnation: r.try_get(2)?,
                        host: r.try_get(3)?,
                        pid: r.try_get(4)?,
                        heartbeat_at: r.try_get::<_, Option<SystemTime>>(5)?.map(Timestamp::from),
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(pg_error)
        })
    }

    fn send_event(&self, ev: &NewEvent) -> Result<i64, StoreError> {
        let pool = self.inner.pool.clone();
        let ev = ev.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "WITH e AS (INSERT INTO machine_events (source_machine, target_machine,
                        event_type, job_id, payload, status, traceparent)
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6) RETURNING id, target_machine)
                     SELECT id, pg_notify('turnstile_jobs', 'event:' || target_machine) FROM e",
                )
                .await
                .map_err(pg_error)?;
            c.query_one(
                &st,
                &[
                    &ev.source,
                    &ev.target,
                    &ev.event_type,
                    &ev.job_id,
                    &ev.payload,
                    &ev.traceparent,
                ],
            )
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)
        })
    }

    fn take_events(
        &self,
        target: &str,
        consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        let pool = self.inner.pool.clone();
        let (target, consumer, lease) = (target.to_owned(), consumer.to_owned(), ms(lease));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c.prepare_cached(LEASE).await.map_err(pg_error)?;
            let held = c
                .query_opt(&st, &[&target, &consumer, &(lease as f64)])
                .await
                .map_err(pg_error)?;
            if held.is_none() {
                return Ok(None);
            }
            let st = c
                .prepare_cached(
                    "SELECT id, source_machine, target_machine, event_type, job_id, payload,
                        traceparent
                     FROM machine_events WHERE target_machine = $1 AND status = 'pending'
                     ORDER BY id LIMIT $2",
                )
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[&target, &limit]).await.map_err(pg_error)?;
            rows.iter()
                .map(stored_event)
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map(Some)
                .map_err(pg_error)
        })
    }

    fn instance_owner(
        &self,
        machine: &str,
        stale_after: Duration,
    ) -> Result<Option<InstanceOwner>, StoreError> {
        let pool = self.inner.pool.clone();
        let (machine, stale) = (machine.to_owned(), ms(stale_after) as f64);
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT m.instance_id, m.current_state IS NOT NULL,
                        EXISTS (SELECT 1 FROM turnstile_instances i
                            WHERE i.instance_id = m.instance_id AND i.heartbeat_at
                                >= clock_timestamp() - $2 * interval '1 millisecond')
                     FROM machine_state m WHERE m.machine_name = $1
                        AND m.definition IS NOT NULL AND NOT m.retired",
                )
                .await
                .map_err(pg_error)?;
            let row = c
                .query_opt(&st, &[&machine, &stale])
                .await
                .map_err(pg_error)?;
            row.map(|r| {
                Ok(InstanceOwner {
                    instance_id: r.try_get(0)?,
                    saved: r.try_get(1)?,
                    live: r.try_get(2)?,
                })
            })
            .transpose()
            .map_err(|e: tokio_postgres::Error| pg_error(e))
        })
    }

    fn take_instance_events(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let pool = self.inner.pool.clone();
        let owner = owner.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT e.id, e.source_machine, e.target_machine, e.event_type, e.job_id,
                        e.payload, e.traceparent
                     FROM machine_events e JOIN machine_state m
                        ON m.machine_name = e.target_machine
                     WHERE e.status = 'pending' AND m.instance_id = $1
                        AND m.definition IS NOT NULL AND NOT m.retired
                     ORDER BY e.id LIMIT $2",
                )
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[&owner, &limit]).await.map_err(pg_error)?;
            rows.iter()
                .map(stored_event)
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(pg_error)
        })
    }

    fn mark_processed(&self, ids: &[i64]) -> Result<usize, StoreError> {
        let pool = self.inner.pool.clone();
        let ids = ids.to_vec();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c.prepare_cached(MARK).await.map_err(pg_error)?;
            Ok(c.execute(&st, &[&ids]).await.map_err(pg_error)? as usize)
        })
    }

    fn event_notify(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        self.listen();
        &self.inner.events
    }
}

/// Marks events processed (`$1`: their ids).
pub(super) const MARK: &str = "UPDATE machine_events SET status = 'processed',
        processed_at = clock_timestamp()
    WHERE id = ANY($1) AND status = 'pending'";

/// An event row of `machine_events` (`id, source_machine, target_machine, event_type,
/// job_id, payload, traceparent`, in this order).
fn stored_event(r: &tokio_postgres::Row) -> Result<StoredEvent, tokio_postgres::Error> {
    Ok(StoredEvent {
        id: r.try_get(0)?,
        source: r.try_get(1)?,
        target: r.try_get(2)?,
        event_type: r.try_get(3)?,
        job_id: r.try_get(4)?,
        payload: r.try_get(5)?,
        traceparent: r.try_get(6)?,
    })
}
