//! The PostgreSQL schema, versioned. Every process runs [`migrate`] at start, inside one
//! transaction holding an advisory lock, so replicas that start together apply each
//! migration once and in order, and none of them sees a half-made schema. A database whose
//! schema is newer than this binary knows is refused: an old binary would write rows the
//! new schema's readers misread.
//!
//! The tables keep the SQLite store's names and meanings (`jobs`, `machine_state`,
//! `machine_events`, `transitions`, `turnstile_instances`, `turnstile_leases`,
//! `turnstile_machines`, `turnstile_event_consumers`), with PostgreSQL's types: `jsonb` for data, results
//! and contexts, `timestamptz` for every time (the database's clock: every process on
//! every host reads the same one).

use deadpool_postgres::Object;

use super::error::pg_error;
use crate::store::StoreError;

/// The advisory lock key migrations hold (`'turnstile'` read as a number).
const MIGRATION_LOCK: i64 = 0x7475_726e_7374_696c;

/// The schema version this binary writes and reads.
pub const VERSION: i32 = 8;

/// Migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the job queue, machine state, events, the transition audit.
    "CREATE TABLE jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE,
        job_type TEXT NOT NULL,
        machine_type TEXT,
        source_job_id TEXT,
        data JSONB,
        result JSONB,
        priority BIGINT NOT NULL DEFAULT 5,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        started_at TIMESTAMPTZ,
        completed_at TIMESTAMPTZ,
        error_message TEXT,
        metadata JSONB,
        lease_owner TEXT,
        lease_until TIMESTAMPTZ,
        attempts BIGINT NOT NULL DEFAULT 0,
        max_attempts BIGINT,
        next_attempt_at TIMESTAMPTZ,
        traceparent TEXT
    );
    CREATE INDEX jobs_pending ON jobs (priority, created_at, id) WHERE status = 'pending';
    CREATE INDEX jobs_pending_type ON jobs (job_type, priority, created_at, id)
        WHERE status = 'pending';
    CREATE INDEX jobs_pending_machine ON jobs (machine_type, priority, created_at, id)
        WHERE status = 'pending';
    CREATE INDEX jobs_leased ON jobs (lease_until) WHERE status = 'processing';
    CREATE INDEX jobs_status ON jobs (status, job_type);
    CREATE TABLE machine_state (
        machine_name TEXT PRIMARY KEY,
        current_state TEXT,
        last_activity TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        pid BIGINT,
        context JSONB
    );
    CREATE TABLE machine_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source_machine TEXT,
        target_machine TEXT NOT NULL,
        event_type TEXT NOT NULL,
        job_id TEXT,
        payload JSONB,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        processed_at TIMESTAMPTZ
    );
    CREATE INDEX machine_events_target ON machine_events (target_machine, status, id);
    CREATE TABLE transitions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        machine_name TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        event TEXT NOT NULL,
        job_id TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX transitions_machine ON transitions (machine_name, id);",
    // 2: unique keys: at most one pending or processing job per key.
    "ALTER TABLE jobs ADD COLUMN unique_key TEXT;
    CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
        WHERE status IN ('pending', 'processing') AND unique_key IS NOT NULL;",
    // 3: live instances (one process per instance id), and the instance that saved each
    // machine state.
    "CREATE TABLE turnstile_instances (
        instance_id TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    ALTER TABLE machine_state ADD COLUMN instance_id TEXT;",
    // 4: leases of singleton machines (which process runs each, under which epoch).
    "CREATE TABLE turnstile_leases (
        name TEXT PRIMARY KEY,
        holder TEXT,
        epoch BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );",
    // 5: events across processes: which process runs which machine, who consumes a
    // machine's events, the sender's trace context.
    "CREATE TABLE turnstile_machines (
        machine_name TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (machine_name, incarnation)
    );
    CREATE TABLE turnstile_event_consumers (
        target_machine TEXT PRIMARY KEY,
        consumer TEXT NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL
    );
    ALTER TABLE machine_events ADD COLUMN traceparent TEXT;
    CREATE INDEX machine_events_pending ON machine_events (target_machine, id)
        WHERE status = 'pending';",
    // 6: a machine saved while paused starts paused again.
    "ALTER TABLE machine_state ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;",
    // 7: an instance started at run time records its definition, and that it is retired,
    // so that the live ones are started again after a restart.
    "ALTER TABLE machine_state ADD COLUMN definition TEXT;
    ALTER TABLE machine_state ADD COLUMN retired BOOLEAN NOT NULL DEFAULT false;",
    // 8: the live instances each process owns (`instance_id`), read by its event
    // consumer and by a takeover.
    "CREATE INDEX machine_state_owner ON machine_state (instance_id)
        WHERE definition IS NOT NULL AND NOT retired;",
];

/// Brings the database to [`VERSION`], or refuses a newer one.
pub(super) async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS turnstile_schema (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )",
    )
    .await
    .map_err(pg_error)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM turnstile_schema",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if current > VERSION {
        return Err(StoreError::Config(format!(
            "the database's schema is version {current}, newer than this Turnstile's \
             ({VERSION}): a newer Turnstile migrated it; run that version (or newer) here"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Db(format!(
                "schema migration {version} failed: {}",
                pg_error(e)
            ))
        })?;
        tx.execute(
            "INSERT INTO turnstile_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(target: "turnstile::store", version, "schema migrated");
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_its_migration() {
        assert_eq!(MIGRATIONS.len(), VERSION as usize);
    }
}
