//! Versioned schema migrations, applied in order at start; `PRAGMA user_version` records how
//! far a database has come. Never edit a migration that has shipped: add the next one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: flow summaries and alerts.
    "
    CREATE TABLE flows (
        bucket INTEGER NOT NULL,
        flow_id TEXT NOT NULL,
        host TEXT NOT NULL,
        class TEXT,
        verdict TEXT NOT NULL,
        direction TEXT NOT NULL,
        protocol TEXT NOT NULL,
        src_ip TEXT NOT NULL,
        src_port INTEGER,
        dst_ip TEXT NOT NULL,
        dst_port INTEGER,
        dst_bin BLOB NOT NULL,
        country TEXT,
        subdivision TEXT,
        asn INTEGER,
        as_org TEXT,
        cloud_provider TEXT,
        cloud_region TEXT,
        site TEXT,
        internal INTEGER NOT NULL,
        pid INTEGER,
        comm TEXT,
        uid INTEGER NOT NULL,
        cgroup TEXT,
        bytes INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        PRIMARY KEY (bucket, flow_id)
    ) WITHOUT ROWID;
    CREATE INDEX flows_by_class ON flows (class, bucket);
    CREATE INDEX flows_by_verdict ON flows (verdict, bucket);
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        time TEXT NOT NULL,
        time_unix INTEGER NOT NULL,
        host TEXT NOT NULL,
        class TEXT NOT NULL,
        severity TEXT NOT NULL,
        reason TEXT NOT NULL,
        direction TEXT NOT NULL,
        protocol TEXT NOT NULL,
        pid INTEGER,
        comm TEXT,
        uid INTEGER NOT NULL,
        cgroup TEXT,
        dst_ip TEXT NOT NULL,
        dst_port INTEGER,
        country TEXT,
        subdivision TEXT,
        asn INTEGER,
        as_org TEXT,
        cloud_provider TEXT,
        cloud_region TEXT,
        site TEXT,
        bytes INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        flows INTEGER NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL
    );
    CREATE INDEX alerts_by_time ON alerts (time_unix);
    ",
    // 2: how far each exporter has sent (a bucket start for flows, a rowid for alerts).
    "
    CREATE TABLE export_cursors (
        exporter TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    );
    ",
];

/// The schema version this build writes.
pub const VERSION: usize = MIGRATIONS.len();

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let at: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if at > VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the store has schema version {at}, newer than this agent's {VERSION}: upgrade the agent"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(at) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_from_empty_and_is_idempotent() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, VERSION);
        c.execute("INSERT INTO export_cursors VALUES ('clickhouse', 0)", []).unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        assert!(migrate(&mut c).unwrap_err().to_string().contains("newer than this agent's"));
    }
}
