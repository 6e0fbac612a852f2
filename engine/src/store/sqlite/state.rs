//! Machine state, events and the transition audit on SQLite (statemachine-engine's
//! `machine_state` and `machine_events` tables, Turnstile's `transitions`). The state
//! writes of a fenced singleton machine are made only while its lease's epoch is the
//! fenced one, checked in the same transaction ([`crate::store::leases`]).

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde_json::{Map, Value as Json};

use super::rows::{json_col, machine_from_row, time_col, Cached, MACHINE_COLUMNS};
use super::SqliteStore;
use crate::store::leases::fenced;
use crate::store::{
    EventRecord, InstanceMark, MachineRecord, SavedStates, StateStore, StoreError, TransitionRecord,
};

/// Saves one machine's state, with the process and instance that saved it.
const SAVE_STATE: &str = "INSERT INTO machine_state (machine_name, current_state, last_activity,
        pid, context, instance_id, paused)
    VALUES (?1, ?2, CURRENT_TIMESTAMP, ?3, ?4, ?5, ?6)
    ON CONFLICT(machine_name) DO UPDATE SET current_state = excluded.current_state,
        last_activity = excluded.last_activity, pid = excluded.pid,
        context = excluded.context, instance_id = excluded.instance_id,
        paused = excluded.paused
    WHERE machine_state.definition IS NULL OR machine_state.retired <> 0
        OR machine_state.instance_id IS NULL
        OR machine_state.instance_id = excluded.instance_id";

/// Records an instance's definition, its owner (this process) and whether it is retired
/// (its state left alone). A start always takes the row (a new instance of that name); a
/// retirement only by its owner (not by a process whose instance was taken over).
const MARK_INSTANCE: &str = "INSERT INTO machine_state (machine_name, definition, retired,
        instance_id)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT(machine_name) DO UPDATE SET definition = excluded.definition,
        retired = excluded.retired, instance_id = excluded.instance_id
    WHERE excluded.retired = 0 OR machine_state.instance_id IS NULL
        OR machine_state.instance_id = excluded.instance_id";

/// Takes live instances of definitions `?2` (a JSON array) for `?1`: its own and unowned
/// ones.
const CLAIM_OWN: &str = "UPDATE machine_state SET instance_id = ?1
    WHERE definition IN (SELECT value FROM json_each(?2)) AND retired = 0
        AND current_state IS NOT NULL AND (instance_id IS NULL OR instance_id = ?1)
    RETURNING ";

/// Takes live instances of definitions `?2` for `?1`: released ones (no owner, after a
/// clean exit) and those of owners whose heartbeat is older than `?3` (ms since the
/// epoch); the write lock makes it one taker per instance.
const CLAIM_DEAD: &str = "UPDATE machine_state SET instance_id = ?1
    WHERE definition IN (SELECT value FROM json_each(?2)) AND retired = 0
        AND current_state IS NOT NULL
        AND (instance_id IS NULL OR instance_id IN (SELECT i.instance_id
            FROM turnstile_instances i WHERE i.instance_id <> ?1 AND i.heartbeat_at < ?3))
    RETURNING ";

/// Takes the name `?1` for a new instance of `?2` owned by `?3`, unless another process's
/// instance holds it: a state is saved, or its owner is not known dead (a heartbeat older
/// than `?4`, ms since the epoch)
/// (see [`StateStore::claim_instance_name`]). The write lock orders
/// two processes taking one name.
const CLAIM_NAME: &str = "INSERT INTO machine_state (machine_name, definition, retired,
        instance_id)
    VALUES (?1, ?2, 0, ?3)
    ON CONFLICT(machine_name) DO UPDATE SET definition = excluded.definition,
        retired = 0, instance_id = excluded.instance_id
    WHERE machine_state.definition IS NULL OR machine_state.retired <> 0
        OR machine_state.instance_id = excluded.instance_id
        OR (machine_state.current_state IS NULL AND (machine_state.instance_id IS NULL
            OR EXISTS (SELECT 1 FROM turnstile_instances i
                WHERE i.instance_id = machine_state.instance_id AND i.heartbeat_at < ?4)))";

/// Gives up `?1`'s live instances (a clean exit).
const RELEASE: &str = "UPDATE machine_state SET instance_id = NULL
    WHERE instance_id = ?1 AND definition IS NOT NULL AND retired = 0";

impl StateStore for SqliteStore {
    fn mark_instances(&self, marks: &[InstanceMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for m in marks {
            tx.exec_cached(
                MARK_INSTANCE,
                params![
                    &*m.machine,
                    &*m.definition,
                    m.retired,
                    self.inner.opts.instance_id
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn live_instances(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machine_state
             WHERE definition IS NOT NULL AND retired = 0 ORDER BY machine_name"
        ))?;
        let rows = st.query_map([], machine_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn saver_id(&self) -> Option<&str> {
        self.inner.opts.instance_id.as_deref()
    }

    fn claim_instance_name(&self, machine: &str, definition: &str) -> Result<bool, StoreError> {
        let owner = self.inner.opts.instance_id.clone();
        let live_since =
            crate::store::now_ms() - crate::store::instances::ms(self.inner.opts.lease);
        let (m, d) = (machine.to_owned(), definition.to_owned());
        self.write(move |tx| {
            let n = tx.exec_cached(CLAIM_NAME, params![m, d, owner, live_since])?;
            Ok(n == 1)
        })
    }

    fn release_instances(&self) -> Result<usize, StoreError> {
        let Some(owner) = self.inner.opts.instance_id.clone() else {
            return Ok(0);
        };
        self.write(move |tx| Ok(tx.exec_cached(RELEASE, params![owner])?))
    }

    fn claim_instances(
        &self,
        definitions: &[String],
        dead_after: Option<std::time::Duration>,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let owner = self.inner.opts.instance_id.clone();
        let defs =
            serde_json::to_string(definitions).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if dead_after.is_some() && owner.is_none() {
            // A process with no instance id takes over nothing.
            return Ok(Vec::new());
        }
        let mut out = self.write(move |tx| {
            let rows = match dead_after {
                None => {
                    let mut st = tx.prepare_cached(&format!("{CLAIM_OWN}{MACHINE_COLUMNS}"))?;
                    let rows = st.query_map(params![owner, defs], machine_from_row)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
                Some(d) => {
                    let before = crate::store::now_ms() - crate::store::instances::ms(d);
                    let mut st = tx.prepare_cached(&format!("{CLAIM_DEAD}{MACHINE_COLUMNS}"))?;
                    let rows = st.query_map(params![owner, defs, before], machine_from_row)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
            };
            Ok(rows)
        })?;
        out.sort_by(|a, b| a.machine_name.cmp(&b.machine_name));
        Ok(out)
    }

    fn save_state(
        &self,
        machine: &str,
        state: &str,
        context: &Map<String, Json>,
    ) -> Result<(), StoreError> {
        let ctx = serde_json::to_string(context).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let fence = self.inner.fences.of(machine);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(epoch) = fence {
            if !epoch_holds(&tx, machine, epoch)? {
                return Err(fenced(machine, epoch));
            }
        }
        tx.exec_cached(
            SAVE_STATE,
            params![
                machine,
                state,
                i64::from(std::process::id()),
                ctx,
                self.inner.opts.instance_id,
                false
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn load_state(&self, machine: &str) -> Result<Option<MachineRecord>, StoreError> {
        Ok(self
            .conn()
            .row_cached(
                &format!("SELECT {MACHINE_COLUMNS} FROM machine_state WHERE machine_name = ?1"),
                [machine],
                machine_from_row,
            )
            .optional()?)
    }

    fn machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machine_state ORDER BY machine_name"
        ))?;
        let rows = st.query_map([], machine_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_event(
        &self,
        source: Option<&str>,
        target: &str,
        event_type: &str,
        job_id: Option<&str>,
        payload: Option<&Json>,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.exec_cached(
            "INSERT INTO machine_events (source_machine, target_machine, event_type, job_id,
                payload, status) VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            params![
                source,
                target,
                event_type,
                job_id,
                payload.map(Json::to_string)
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn events(&self, target: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT id, source_machine, target_machine, event_type, job_id, payload,
                COALESCE(status, 'pending'), created_at, traceparent
             FROM machine_events WHERE (?1 IS NULL OR target_machine = ?1)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![target, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    source_machine: r.get(1)?,
                    target_machine: r.get(2)?,
                    event_type: r.get(3)?,
                    job_id: r.get(4)?,
                    payload: json_col(r, 5)?,
                    status: r.get(6)?,
                    created_at: time_col(r, 7)?,
                    traceparent: r.get(8)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn persist_processed(
        &self,
        states: &SavedStates,
        audit: &[TransitionRecord],
        processed: &[i64],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Fenced machines whose lease moved on: nothing of theirs is written.
        let mut refused: Option<(String, i64)> = None;
        let mut stale = std::collections::HashSet::new();
        let names = states
            .keys()
            .map(|m| &**m)
            .chain(audit.iter().map(|r| r.machine_name.as_str()));
        for m in names {
            if let Some(epoch) = self.inner.fences.of(m) {
                if !stale.contains(m) && !epoch_holds(&tx, m, epoch)? {
                    stale.insert(m.to_owned());
                    refused.get_or_insert((m.to_owned(), epoch));
                }
            }
        }
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO transitions (machine_name, from_state, to_state, event, job_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in audit.iter().filter(|r| !stale.contains(&r.machine_name)) {
                ins.execute(params![
                    r.machine_name,
                    r.from_state,
                    r.to_state,
                    r.event,
                    r.job_id
                ])?;
            }
            let mut up = tx.prepare_cached(SAVE_STATE)?;
            let pid = i64::from(std::process::id());
            let instance = self.inner.opts.instance_id.as_deref();
            for (m, (state, ctx, paused)) in states.iter().filter(|(m, _)| !stale.contains(&***m)) {
                let ctx =
                    serde_json::to_string(ctx).map_err(|e| StoreError::Invalid(e.to_string()))?;
                up.execute(params![&**m, &**state, pid, ctx, instance, paused])?;
            }
        }
        super::events::mark(&tx, processed)?;
        tx.commit()?;
        match refused {
            Some((m, epoch)) => Err(fenced(&m, epoch)),
            None => Ok(()),
        }
    }

    fn transitions(
        &self,
        machine: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TransitionRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT id, machine_name, from_state, to_state, event, job_id, created_at
             FROM transitions WHERE (?1 IS NULL OR machine_name = ?1)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![machine, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(TransitionRecord {
                    id: r.get(0)?,
                    machine_name: r.get(1)?,
                    from_state: r.get(2)?,
                    to_state: r.get(3)?,
                    event: r.get(4)?,
                    job_id: r.get(5)?,
                    created_at: time_col(r, 6)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn clear_events(&self, target: &str, types: &[String]) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        for t in types {
            n += tx.exec_cached(
                "UPDATE machine_events SET status = 'processed', processed_at = CURRENT_TIMESTAMP
                 WHERE target_machine = ?1 AND event_type = ?2 AND status = 'pending'",
                params![target, t],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }
}

/// Whether `machine`'s lease is still at `epoch` (read inside the write's transaction).
fn epoch_holds(tx: &rusqlite::Connection, machine: &str, epoch: i64) -> rusqlite::Result<bool> {
    let now: Option<i64> = tx
        .row_cached(
            "SELECT epoch FROM turnstile_leases WHERE name = ?1",
            [machine],
            |r| r.get(0),
        )
        .optional()?;
    Ok(now == Some(epoch))
}
