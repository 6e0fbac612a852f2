//! Live instances on SQLite (`turnstile_instances`, see [`crate::store::instances`]):
//! registration reads and writes the row in one write of the group-commit writer, that is
//! inside one `BEGIN IMMEDIATE` transaction, so two processes registering one id at once
//! are serialised by SQLite's write lock and the second sees the first's row. Times are
//! milliseconds of the writer's clock (every process sharing the file runs on its host).

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::Cached;
use super::SqliteStore;
use crate::instance::host_name;
use crate::store::instances::ms;
use crate::store::{now_ms, Heartbeat, InstanceStore, LiveInstance, StoreError, Timestamp};

const COLUMNS: &str = "instance_id, incarnation, host, pid, started_at, heartbeat_at";

fn live(r: &rusqlite::Row<'_>, now: i64) -> rusqlite::Result<LiveInstance> {
    let heartbeat: i64 = r.get(5)?;
    Ok(LiveInstance {
        instance_id: r.get(0)?,
        incarnation: r.get(1)?,
        host: r.get(2)?,
        pid: r.get(3)?,
        started_at: Some(Timestamp::from_ms(r.get(4)?)),
        heartbeat_at: Some(Timestamp::from_ms(heartbeat)),
        age: Duration::from_millis(u64::try_from(now - heartbeat).unwrap_or(0)),
    })
}

fn holder(tx: &Connection, id: &str, now: i64) -> rusqlite::Result<Option<LiveInstance>> {
    tx.row_cached(
        &format!("SELECT {COLUMNS} FROM turnstile_instances WHERE instance_id = ?1"),
        [id],
        |r| live(r, now),
    )
    .optional()
}

impl InstanceStore for SqliteStore {
    fn register_instance(
        &self,
        id: &str,
        incarnation: &str,
        stale_after: Duration,
    ) -> Result<(), StoreError> {
        let (id_, inc, stale) = (id.to_owned(), incarnation.to_owned(), ms(stale_after));
        self.write(move |tx| {
            let now = now_ms();
            if let Some(h) = holder(tx, &id_, now)? {
                if h.incarnation != inc && ms(h.age) < stale {
                    return Err(StoreError::InstanceInUse(Box::new(h)));
                }
            }
            tx.exec_cached(
                "INSERT OR REPLACE INTO turnstile_instances
                    (instance_id, incarnation, host, pid, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![id_, inc, host_name(), i64::from(std::process::id()), now],
            )?;
            Ok(())
        })?;
        self.inner.registration.set(id, incarnation);
        Ok(())
    }

    fn heartbeat_instance(&self, id: &str, incarnation: &str) -> Result<Heartbeat, StoreError> {
        let (id, inc) = (id.to_owned(), incarnation.to_owned());
        self.write(move |tx| {
            let now = now_ms();
            match holder(tx, &id, now)? {
                Some(h) if h.incarnation != inc => Ok(Heartbeat::Taken(Box::new(h))),
                Some(_) => {
                    tx.exec_cached(
                        "UPDATE turnstile_instances SET heartbeat_at = ?3
                         WHERE instance_id = ?1 AND incarnation = ?2",
                        params![id, inc, now],
                    )?;
                    Ok(Heartbeat::Ours)
                }
                None => {
                    tx.exec_cached(
                        "INSERT INTO turnstile_instances
                            (instance_id, incarnation, host, pid, started_at, heartbeat_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                        params![id, inc, host_name(), i64::from(std::process::id()), now],
                    )?;
                    Ok(Heartbeat::Ours)
                }
            }
        })
    }

    fn unregister_instance(&self, id: &str, incarnation: &str) -> Result<bool, StoreError> {
        self.inner.registration.clear(id, incarnation);
        let (id, inc) = (id.to_owned(), incarnation.to_owned());
        self.write(move |tx| {
            Ok(tx.exec_cached(
                "DELETE FROM turnstile_instances WHERE instance_id = ?1 AND incarnation = ?2",
                params![id, inc],
            )? > 0)
        })
    }

    fn instances(&self) -> Result<Vec<LiveInstance>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM turnstile_instances ORDER BY instance_id"
        ))?;
        let now = now_ms();
        let rows = st.query_map([], |r| live(r, now))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
