//! Machine state, events and the transition audit on PostgreSQL (the `machine_state`,
//! `machine_events` and `transitions` tables of [`super::schema`]). The state writes of a
//! fenced singleton machine are made only while its lease's epoch is the fenced one,
//! checked in the same transaction ([`crate::store::leases`]).

use serde_json::{Map, Value as Json};

use super::error::{pg_error, pool_error};
use super::leases::epoch_holds;
use super::rows::{machine, time_col, MACHINE_COLUMNS};
use super::PgStore;
use crate::store::leases::fenced;
use crate::store::{
    EventRecord, InstanceMark, MachineRecord, SavedStates, StateStore, StoreError, TransitionRecord,
};

const SAVE_STATE: &str = "
    INSERT INTO machine_state (machine_name, current_state, last_activity, pid, context,
        instance_id, paused)
    VALUES ($1, $2, clock_timestamp(), $3, $4, $5, $6)
    ON CONFLICT (machine_name) DO UPDATE SET current_state = excluded.current_state,
        last_activity = excluded.last_activity, pid = excluded.pid, context = excluded.context,
        instance_id = excluded.instance_id, paused = excluded.paused
    WHERE machine_state.definition IS NULL OR machine_state.retired
        OR machine_state.instance_id IS NULL
        OR machine_state.instance_id = excluded.instance_id";

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Records an instance's definition, its owner (this process) and whether it is retired
/// (its state left alone). A start always takes the row (a new instance of that name); a
/// retirement only by its owner (not by a process whose instance was taken over).
const MARK_INSTANCE: &str = "
    INSERT INTO machine_state (machine_name, definition, retired, instance_id)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (machine_name) DO UPDATE SET definition = excluded.definition,
        retired = excluded.retired, instance_id = excluded.instance_id
    WHERE NOT excluded.retired OR machine_state.instance_id IS NULL
        OR machine_state.instance_id = excluded.instance_id";

/// Takes live instances of definitions `$2` for `$1`: its own and unowned ones.
const CLAIM_OWN: &str = "
    UPDATE machine_state SET instance_id = $1
    WHERE definition = ANY($2) AND NOT retired AND current_state IS NOT NULL
        AND (instance_id IS NULL OR instance_id = $1)
    RETURNING ";

/// Takes live instances of definitions `$2` for `$1`: released ones (no owner, after a
/// clean exit) and those of owners whose heartbeat is older than `$3` ms (found in the
/// small `turnstile_instances`, then their rows by the owner index: the live owners'
/// instances are not read). Run at once by several processes, the second to reach a row
/// re-checks it after the first's commit, finds it owned, and leaves it.
const CLAIM_DEAD: &str = "
    UPDATE machine_state SET instance_id = $1
    WHERE definition = ANY($2) AND NOT retired AND current_state IS NOT NULL
        AND (instance_id IS NULL OR instance_id IN (SELECT i.instance_id
            FROM turnstile_instances i WHERE i.instance_id <> $1
                AND i.heartbeat_at < clock_timestamp() - $3 * interval '1 millisecond'))
    RETURNING ";

/// Takes the name `$1` for a new instance of `$2` owned by `$3`, unless another process's
/// instance holds it: a state is saved, or its owner is not known dead (a heartbeat older
/// than `$4` ms)
/// (see [`StateStore::claim_instance_name`]). Two processes inserting one name at once:
/// the second waits for the first's commit and re-checks the row it then conflicts with.
/// One statement (one round trip) whose commit does not wait for the WAL flush
/// (`synchronous_commit` off for its own transaction): the claim is seen by every other
/// transaction at its commit all the same (one winner), and the instance's start mark,
/// written durably in the persister's batch, records it again; a server crash in between
/// loses only a claim whose start mark was not written yet.
const CLAIM_NAME: &str = "
    WITH quick AS (SELECT set_config('synchronous_commit', 'off', true))
    INSERT INTO machine_state AS m (machine_name, definition, retired, instance_id)
    SELECT $1, $2, false, $3 FROM quick
    ON CONFLICT (machine_name) DO UPDATE SET definition = excluded.definition,
        retired = false, instance_id = excluded.instance_id
    WHERE m.definition IS NULL OR m.retired OR m.instance_id = excluded.instance_id
        OR (m.current_state IS NULL AND (m.instance_id IS NULL
            OR EXISTS (SELECT 1 FROM turnstile_instances i WHERE i.instance_id = m.instance_id
                AND i.heartbeat_at < clock_timestamp() - $4 * interval '1 millisecond')))";

/// Gives up `$1`'s live instances (a clean exit).
const RELEASE: &str = "
    UPDATE machine_state SET instance_id = NULL
    WHERE instance_id = $1 AND definition IS NOT NULL AND NOT retired";

impl StateStore for PgStore {
    fn mark_instances(&self, marks: &[InstanceMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        let pool = self.inner.pool.clone();
        let owner = self.inner.opts.instance_id.clone();
        let marks: Vec<(String, String, bool)> = marks
            .iter()
            .map(|m| (m.machine.to_string(), m.definition.to_string(), m.retired))
            .collect();
        self.call(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            let st = tx.prepare_cached(MARK_INSTANCE).await.map_err(pg_error)?;
            // In order: a later mark of one name wins.
            for (m, d, r) in &marks {
                tx.execute(&st, &[m, d, r, &owner])
                    .await
                    .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    fn live_instances(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {MACHINE_COLUMNS} FROM machine_state
                     WHERE definition IS NOT NULL AND NOT retired ORDER BY machine_name"
                ))
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[]).await.map_err(pg_error)?;
            rows.iter().map(|r| machine(r).map_err(pg_error)).collect()
        })
    }

    fn saver_id(&self) -> Option<&str> {
        self.inner.opts.instance_id.as_deref()
    }

    fn claim_instance_name(&self, machine: &str, definition: &str) -> Result<bool, StoreError> {
        let pool = self.inner.pool.clone();
        let owner = self.inner.opts.instance_id.clone();
        let lease = crate::store::instances::ms(self.inner.opts.lease) as f64;
        let (m, d) = (machine.to_owned(), definition.to_owned());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c.prepare_cached(CLAIM_NAME).await.map_err(pg_error)?;
            let n = c
                .execute(&st, &[&m, &d, &owner, &lease])
                .await
                .map_err(pg_error)?;
            Ok(n == 1)
        })
    }

    fn release_instances(&self) -> Result<usize, StoreError> {
        let pool = self.inner.pool.clone();
        let Some(owner) = self.inner.opts.instance_id.clone() else {
            return Ok(0);
        };
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let n = c.execute(RELEASE, &[&owner]).await.map_err(pg_error)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn claim_instances(
        &self,
        definitions: &[String],
        dead_after: Option<std::time::Duration>,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let pool = self.inner.pool.clone();
        let (owner, defs) = (self.inner.opts.instance_id.clone(), definitions.to_vec());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let mut rows = match (dead_after, &owner) {
                (None, _) => c
                    .query(&format!("{CLAIM_OWN}{MACHINE_COLUMNS}"), &[&owner, &defs])
                    .await
                    .map_err(pg_error)?,
                // A process with no instance id takes over nothing.
                (Some(_), None) => Vec::new(),
                (Some(d), Some(_)) => {
                    let d = crate::store::instances::ms(d) as f64;
                    c.query(
                        &format!("{CLAIM_DEAD}{MACHINE_COLUMNS}"),
                        &[&owner, &defs, &d],
                    )
                    .await
                    .map_err(pg_error)?
                }
            };
            let mut out = rows
                .drain(..)
                .map(|r| machine(&r).map_err(pg_error))
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by(|a, b| a.machine_name.cmp(&b.machine_name));
            Ok(out)
        })
    }

    fn save_state(
        &self,
        machine_name: &str,
        state: &str,
        context: &Map<String, Json>,
    ) -> Result<(), StoreError> {
        let (pool, instance) = (self.inner.pool.clone(), self.inner.opts.instance_id.clone());
        let (m, s, ctx) = (
            machine_name.to_owned(),
            state.to_owned(),
            Json::Object(context.clone()),
        );
        let fence = self.inner.fences.of(machine_name);
        self.call(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            if let Some(epoch) = fence {
                if !epoch_holds(&tx, &m, epoch).await? {
                    return Err(fenced(&m, epoch));
                }
            }
            let st = tx.prepare_cached(SAVE_STATE).await.map_err(pg_error)?;
            tx.execute(
                &st,
                &[
                    &m,
                    &s,
                    &i64::from(std::process::id()),
                    &ctx,
                    &instance,
                    &false,
                ],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
    }

    fn load_state(&self, machine_name: &str) -> Result<Option<MachineRecord>, StoreError> {
        let (pool, m) = (self.inner.pool.clone(), machine_name.to_owned());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {MACHINE_COLUMNS} FROM machine_state WHERE machine_name = $1"
                ))
                .await
                .map_err(pg_error)?;
            match c.query_opt(&st, &[&m]).await.map_err(pg_error)? {
                Some(r) => Ok(Some(machine(&r).map_err(pg_error)?)),
                None => Ok(None),
            }
        })
    }

    fn machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {MACHINE_COLUMNS} FROM machine_state ORDER BY machine_name"
                ))
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[]).await.map_err(pg_error)?;
            rows.iter().map(|r| machine(r).map_err(pg_error)).collect()
        })
    }

    fn record_event(
        &self,
        source: Option<&str>,
        target: &str,
        event_type: &str,
        job_id: Option<&str>,
        payload: Option<&Json>,
    ) -> Result<i64, StoreError> {
        let pool = self.inner.pool.clone();
        let (source, target, event_type, job_id, payload) = (
            source.map(str::to_owned),
            target.to_owned(),
            event_type.to_owned(),
            job_id.map(str::to_owned),
            payload.cloned(),
        );
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "INSERT INTO machine_events (source_machine, target_machine, event_type,
                        job_id, payload, status)
                     VALUES ($1, $2, $3, $4, $5, 'pending') RETURNING id",
                )
                .await
                .map_err(pg_error)?;
            c.query_one(&st, &[&source, &target, &event_type, &job_id, &payload])
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)
        })
    }

    fn events(&self, target: Option<&str>, n: usize) -> Result<Vec<EventRecord>, StoreError> {
        let (pool, target) = (self.inner.pool.clone(), target.map(str::to_owned));
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT id, source_machine, target_machine, event_type, job_id, payload,
                        status, created_at, traceparent
                     FROM machine_events WHERE ($1::text IS NULL OR target_machine = $1)
                     ORDER BY id DESC LIMIT $2",
                )
                .await
                .map_err(pg_error)?;
            let rows = c
                .query(&st, &[&target, &limit(n)])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    Ok(EventRecord {
                        id: r.try_get(0)?,
                        source_machine: r.try_get(1)?,
                        target_machine: r.try_get(2)?,
                        event_type: r.try_get(3)?,
                        job_id: r.try_get(4)?,
                        payload: r.try_get(5)?,
                        status: r.try_get(6)?,
                        created_at: time_col(r, 7)?,
                        traceparent: r.try_get(8)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(pg_error)
        })
    }

    fn clear_events(&self, target: &str, types: &[String]) -> Result<usize, StoreError> {
        let (pool, target, types) = (self.inner.pool.clone(), target.to_owned(), types.to_vec());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "UPDATE machine_events SET status = 'processed',
                        processed_at = clock_timestamp()
                     WHERE target_machine = $1 AND event_type = ANY($2) AND status = 'pending'",
                )
                .await
                .map_err(pg_error)?;
            Ok(c.execute(&st, &[&target, &types]).await.map_err(pg_error)? as usize)
        })
    }

    fn persist_processed(
        &self,
        states: &SavedStates,
        audit: &[TransitionRecord],
        processed: &[i64],
    ) -> Result<(), StoreError> {
        let (pool, instance) = (self.inner.pool.clone(), self.inner.opts.instance_id.clone());
        // The fenced machines of the batch, each once, with its epoch.
        let mut fences: Vec<(String, i64)> = Vec::new();
        for m in states
            .keys()
            .map(|m| &**m)
            .chain(audit.iter().map(|r| r.machine_name.as_str()))
        {
            if let Some(epoch) = self.inner.fences.of(m) {
                if !fences.iter().any(|(f, _)| f == m) {
                    fences.push((m.to_owned(), epoch));
                }
            }
        }
        let processed = processed.to_vec();
        // One row array per column: the whole batch is two statements, whatever its size.
        let (mut names, mut froms, mut tos, mut events, mut jobs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in audit {
            names.push(r.machine_name.clone());
            froms.push(r.from_state.clone());
            tos.push(r.to_state.clone());
            events.push(r.event.clone());
            jobs.push(r.job_id.clone());
        }
        let saved: Vec<(String, String, Json, bool)> = states
            .iter()
            .map(|(m, (s, ctx, paused))| {
                (
                    m.to_string(),
                    s.to_string(),
                    Json::Object(ctx.clone()),
                    *paused,
                )
            })
            .collect();
        self.call(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            // Fenced machines whose lease moved on: nothing of theirs is written.
            let mut stale = Vec::new();
            for (m, epoch) in &fences {
                if !epoch_holds(&tx, m, *epoch).await? {
                    stale.push((m.clone(), *epoch));
                }
            }
            let is_stale = |m: &str| stale.iter().any(|(s, _)| s == m);
            if !stale.is_empty() {
                let keep: Vec<usize> = (0..names.len()).filter(|&i| !is_stale(&names[i])).collect();
                let pick = |v: &Vec<String>| keep.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
                let kept_jobs: Vec<Option<String>> =
                    keep.iter().map(|&i| jobs[i].clone()).collect();
                (names, froms, tos, events) =
                    (pick(&names), pick(&froms), pick(&tos), pick(&events));
                jobs = kept_jobs;
            }
            if !names.is_empty() {
                let st = tx
                    .prepare_cached(
                        "INSERT INTO transitions (machine_name, from_state, to_state, event, job_id)
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                            $5::text[])",
                    )
                    .await
                    .map_err(pg_error)?;
                tx.execute(&st, &[&names, &froms, &tos, &events, &jobs])
                    .await
                    .map_err(pg_error)?;
            }
            let st = tx.prepare_cached(SAVE_STATE).await.map_err(pg_error)?;
            let pid = i64::from(std::process::id());
            for (m, s, ctx, paused) in saved.iter().filter(|(m, ..)| !is_stale(m)) {
                tx.execute(&st, &[m, s, &pid, ctx, &instance, paused])
                    .await
                    .map_err(pg_error)?;
            }
            if !processed.is_empty() {
                let st = tx
                    .prepare_cached(super::events::MARK)
                    .await
                    .map_err(pg_error)?;
                tx.execute(&st, &[&processed]).await.map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            match stale.first() {
                Some((m, epoch)) => Err(fenced(m, *epoch)),
                None => Ok(()),
            }
        })
    }

    fn transitions(
        &self,
        machine_name: Option<&str>,
        n: usize,
    ) -> Result<Vec<TransitionRecord>, StoreError> {
        let (pool, m) = (self.inner.pool.clone(), machine_name.map(str::to_owned));
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT id, machine_name, from_state, to_state, event, job_id, created_at
                     FROM transitions WHERE ($1::text IS NULL OR machine_name = $1)
                     ORDER BY id DESC LIMIT $2",
                )
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[&m, &limit(n)]).await.map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    Ok(TransitionRecord {
                        id: r.try_get(0)?,
                        machine_name: r.try_get(1)?,
                        from_state: r.try_get(2)?,
                        to_state: r.try_get(3)?,
                        event: r.try_get(4)?,
                        job_id: r.try_get(5)?,
                        created_at: time_col(r, 6)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(pg_error)
        })
    }
}
