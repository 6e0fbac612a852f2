//! The machine registry and event delivery on SQLite (see [`crate::store::events`]).
//! Registrations, sends, lease changes and marks are writes of the group-commit writer
//! (one `BEGIN IMMEDIATE` transaction each, shared with this process's other writes);
//! taking events reads first and writes only when the consumer lease must be taken or is
//! past a third of its time, so a busy consumer does not commit on every look; those reads
//! (and the registry's) go through the store's second connection, so that they never wait
//! for the writer's commit or for its wait for another process's write lock. Times are
//! milliseconds of the writer's clock (every process sharing the file is on its host).

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::Cached;
use super::SqliteStore;
use crate::instance::host_name;
use crate::store::events::payload_from_text;
use crate::store::instances::ms;
use crate::store::{
    now_ms, EventStore, InstanceOwner, MachineHost, NewEvent, StoreError, StoredEvent, Timestamp,
};

/// Takes or renews `target`'s consumer lease for `consumer`; false when another holds it.
fn lease(tx: &Connection, target: &str, consumer: &str, lease: i64) -> rusqlite::Result<bool> {
    let now = now_ms();
    let n = tx.exec_cached(
        "INSERT INTO turnstile_event_consumers (target_machine, consumer, lease_until)
         VALUES (?1, ?2, ?3)
         ON CONFLICT (target_machine) DO UPDATE SET consumer = excluded.consumer,
            lease_until = excluded.lease_until
         WHERE turnstile_event_consumers.consumer = excluded.consumer
            OR turnstile_event_consumers.lease_until < ?4",
        params![target, consumer, now + lease, now],
    )?;
    Ok(n > 0)
}

fn pending(conn: &Connection, target: &str, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut st = conn.prepare_cached(
        "SELECT id, source_machine, target_machine, event_type, job_id, payload, traceparent
         FROM machine_events WHERE target_machine = ?1 AND status = 'pending'
         ORDER BY id LIMIT ?2",
    )?;
    let rows = st.query_map(
        params![target, i64::try_from(limit).unwrap_or(i64::MAX)],
        stored,
    )?;
    rows.collect()
}

fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: r.get(0)?,
        source: r.get(1)?,
        target: r.get(2)?,
        event_type: r.get(3)?,
        job_id: r.get(4)?,
        payload: payload_from_text(r.get(5)?),
        traceparent: r.get(6)?,
    })
}

/// Marks `ids` processed in `tx`; how many were pending.
pub(super) fn mark(tx: &Connection, ids: &[i64]) -> rusqlite::Result<usize> {
    let mut n = 0;
    for id in ids {
        n += tx.exec_cached(
            "UPDATE machine_events SET status = 'processed', processed_at = CURRENT_TIMESTAMP
             WHERE id = ?1 AND status = 'pending'",
            [id],
        )?;
    }
    Ok(n)
}

impl EventStore for SqliteStore {
    fn register_machines(
        &self,
        instance_id: &str,
        incarnation: &str,
        machines: &[String],
    ) -> Result<(), StoreError> {
        let (id, inc, names) = (
            instance_id.to_owned(),
            incarnation.to_owned(),
            machines.to_vec(),
        );
        self.write(move |tx| {
            let now = now_ms();
            let names_json =
                serde_json::to_string(&names).map_err(|e| StoreError::Invalid(e.to_string()))?;
            tx.exec_cached(
                "DELETE FROM turnstile_machines WHERE incarnation = ?1
                    AND machine_name NOT IN (SELECT value FROM json_each(?2))",
                params![inc, names_json],
            )?;
            tx.exec_cached(
                "DELETE FROM turnstile_event_consumers WHERE consumer = ?1
                    AND target_machine NOT IN (SELECT value FROM json_each(?2))",
                params![inc, names_json],
            )?;
            for m in &names {
                tx.exec_cached(
                    "INSERT OR REPLACE INTO turnstile_machines
                        (machine_name, incarnation, instance_id, host, pid, heartbeat_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![m, inc, id, host_name(), i64::from(std::process::id()), now],
                )?;
            }
            Ok(())
        })
    }

    fn unregister_machines(&self, incarnation: &str) -> Result<(), StoreError> {
        let inc = incarnation.to_owned();
        self.write(move |tx| {
            tx.exec_cached(
                "DELETE FROM turnstile_machines WHERE incarnation = ?1",
                [&inc],
            )?;
            tx.exec_cached(
                "DELETE FROM turnstile_event_consumers WHERE consumer = ?1",
                [&inc],
            )?;
            Ok(())
        })
    }

    fn machine_hosts(
        &self,
        machine: &str,
        stale_after: Duration,
    ) -> Result<Vec<MachineHost>, StoreError> {
        let conn = self.event_reads();
        let mut st = conn.prepare_cached(
            "SELECT machine_name, instance_id, incarnation, host, pid, heartbeat_at
             FROM turnstile_machines WHERE machine_name = ?1 AND heartbeat_at >= ?2
             ORDER BY heartbeat_at DESC",
        )?;
        let rows = st.query_map(params![machine, now_ms() - ms(stale_after)], |r| {
            Ok(MachineHost {
                machine_name: r.get(0)?,
                instance_id: r.get(1)?,
                incarnation: r.get(2)?,
                host: r.get(3)?,
                pid: r.get(4)?,
                heartbeat_at: Some(Timestamp::from_ms(r.get(5)?)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn send_event(&self, ev: &NewEvent) -> Result<i64, StoreError> {
        let ev = ev.clone();
        self.write(move |tx| {
            tx.exec_cached(
                "INSERT INTO machine_events (source_machine, target_machine, event_type, job_id,
                    payload, status, traceparent)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                params![
                    ev.source,
                    ev.target,
                    ev.event_type,
                    ev.job_id,
                    ev.payload.as_ref().map(serde_json::Value::to_string),
                    ev.traceparent
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn take_events(
        &self,
        target: &str,
        consumer: &str,
        lease_time: Duration,
        limit: usize,
    ) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        let lease_ms = ms(lease_time);
        // Held, with more than two thirds of its time left: read only.
        let held: Option<(String, i64)> = self
            .event_reads()
            .row_cached(
                "SELECT consumer, lease_until FROM turnstile_event_consumers
                 WHERE target_machine = ?1",
                [target],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let now = now_ms();
        match held {
            Some((c, until)) if c == consumer && until - now > lease_ms * 2 / 3 => {
                return Ok(Some(pending(&self.event_reads(), target, limit)?));
            }
            Some((c, until)) if c != consumer && until >= now => return Ok(None),
            _ => {}
        }
        let (target, consumer) = (target.to_owned(), consumer.to_owned());
        self.write(move |tx| {
            if !lease(tx, &target, &consumer, lease_ms)? {
                return Ok(None);
            }
            Ok(Some(pending(tx, &target, limit)?))
        })
    }

    fn instance_owner(
        &self,
        machine: &str,
        stale_after: Duration,
    ) -> Result<Option<InstanceOwner>, StoreError> {
        let since = now_ms() - ms(stale_after);
        let conn = self.event_reads();
        Ok(conn
            .row_cached(
                "SELECT m.instance_id, m.current_state IS NOT NULL,
                    EXISTS (SELECT 1 FROM turnstile_instances i
                        WHERE i.instance_id = m.instance_id AND i.heartbeat_at >= ?2)
                 FROM machine_state m WHERE m.machine_name = ?1
                    AND m.definition IS NOT NULL AND m.retired = 0",
                params![machine, since],
                |r| {
                    Ok(InstanceOwner {
                        instance_id: r.get(0)?,
                        saved: r.get(1)?,
                        live: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn take_instance_events(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.event_reads();
        let mut st = conn.prepare_cached(
            "SELECT e.id, e.source_machine, e.target_machine, e.event_type, e.job_id,
                e.payload, e.traceparent
             FROM machine_events e JOIN machine_state m ON m.machine_name = e.target_machine
             WHERE e.status = 'pending' AND m.instance_id = ?1
                AND m.definition IS NOT NULL AND m.retired = 0
             ORDER BY e.id LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![owner, i64::try_from(limit).unwrap_or(i64::MAX)],
            stored,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn mark_processed(&self, ids: &[i64]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.write(move |tx| Ok(mark(tx, &ids)?))
    }

    fn event_notify(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        // The WAL watch cannot tell which table another process wrote.
        crate::store::JobStore::notify(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::StoreOptions;

    /// A take whose lease is fresh reads through the second connection: it is answered
    /// while the store's own connection is held (as by the writer during a commit).
    #[test]
    fn a_take_does_not_wait_for_the_store_s_connection() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            renew: false,
            ..StoreOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("e.db"), opts).unwrap();
        let lease = Duration::from_secs(30);
        store
            .send_event(&NewEvent {
                target: "m".into(),
                event_type: "go".into(),
                ..NewEvent::default()
            })
            .unwrap();
        // The first take writes the consumer lease.
        assert_eq!(
            store
                .take_events("m", "c", lease, 10)
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        let held = store.inner.conn.lock().unwrap();
        let s = store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(
                s.take_events("m", "c", lease, 10)
                    .map(|e| e.map(|e| e.len())),
            );
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        drop(held);
        assert_eq!(got.unwrap().unwrap(), Some(1));
    }
}
