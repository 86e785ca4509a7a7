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
    // 3: alerts numbered by a sequence SQLite never reuses (AUTOINCREMENT; a rowid is reused
    //    once the newest rows are pruned, and an export cursor then skipped new alerts); and
    //    the buckets an exporter must send again because rows were written into them after
    //    it had sent them.
    "
    CREATE TABLE alerts_v3 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
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
    INSERT INTO alerts_v3 (seq, id, time, time_unix, host, class, severity, reason, direction, protocol, pid, comm, uid, cgroup, dst_ip, dst_port, country, subdivision, asn, as_org, cloud_provider, cloud_region, site, bytes, packets, flows, first_seen, last_seen) SELECT rowid, id, time, time_unix, host, class, severity, reason, direction, protocol, pid, comm, uid, cgroup, dst_ip, dst_port, country, subdivision, asn, as_org, cloud_provider, cloud_region, site, bytes, packets, flows, first_seen, last_seen FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts_v3 RENAME TO alerts;
    CREATE INDEX alerts_by_time ON alerts (time_unix);
    DELETE FROM sqlite_sequence WHERE name = 'alerts';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'alerts', MAX(
        (SELECT COALESCE(MAX(seq), 0) FROM alerts),
        (SELECT COALESCE(MAX(position), 0) FROM export_cursors WHERE exporter LIKE '%.alerts'));
    CREATE TABLE late_buckets (
        exporter TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        PRIMARY KEY (exporter, bucket)
    ) WITHOUT ROWID;
    ",
    // 4: loss records (totals at their time), with the overflow's packets and bytes.
    "
    CREATE TABLE losses (
        time TEXT NOT NULL,
        time_unix INTEGER NOT NULL,
        host TEXT NOT NULL,
        overflow_packets INTEGER NOT NULL,
        overflow_bytes INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX losses_by_time ON losses (time_unix);
    ",
    // 5: flow summaries summed per bucket and group (see store/groups.rs), filled from the
    //    flow rows already stored.
    "
    CREATE TABLE flow_groups (
        bucket INTEGER NOT NULL,
        gkey TEXT NOT NULL,
        prev_bucket INTEGER,
        class TEXT,
        verdict TEXT NOT NULL,
        direction TEXT NOT NULL,
        country TEXT,
        cloud_provider TEXT,
        cloud_region TEXT,
        site TEXT,
        internal INTEGER NOT NULL,
        comm TEXT,
        pid INTEGER,
        cgroup TEXT,
        dst_ip TEXT NOT NULL,
        dst_port INTEGER,
        dst_bin BLOB NOT NULL,
        bytes INTEGER NOT NULL,
        packets INTEGER NOT NULL,
        flows INTEGER NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        PRIMARY KEY (bucket, gkey)
    ) WITHOUT ROWID;
    INSERT INTO flow_groups
    SELECT bucket,
           IFNULL('t' || length(class) || ':' || class, 'n')
           || IFNULL('t' || length(verdict) || ':' || verdict, 'n')
           || IFNULL('t' || length(direction) || ':' || direction, 'n')
           || IFNULL('t' || length(country) || ':' || country, 'n')
           || IFNULL('t' || length(cloud_provider) || ':' || cloud_provider, 'n')
           || IFNULL('t' || length(cloud_region) || ':' || cloud_region, 'n')
           || IFNULL('t' || length(site) || ':' || site, 'n')
           || IFNULL('i' || internal, 'n')
           || IFNULL('t' || length(comm) || ':' || comm, 'n')
           || IFNULL('i' || pid, 'n')
           || IFNULL('t' || length(cgroup) || ':' || cgroup, 'n')
           || IFNULL('t' || length(dst_ip) || ':' || dst_ip, 'n')
           || IFNULL('i' || dst_port, 'n')
           || IFNULL('i' || prev_bucket, 'n'),
           prev_bucket, class, verdict, direction, country, cloud_provider, cloud_region, site, internal, comm, pid, cgroup, dst_ip, dst_port, dst_bin,
           SUM(bytes), SUM(packets), COUNT(*), MIN(first_seen), MAX(last_seen)
    FROM (SELECT *, LAG(bucket) OVER (PARTITION BY flow_id ORDER BY bucket) AS prev_bucket FROM flows)
    GROUP BY 1, 2;
    ",
    // 6: grouped questions read flow_groups, and a question per flow groups every row of its
    //    window anyway: the flow rows' class and verdict indexes only slowed the writer.
    "
    DROP INDEX flows_by_class;
    DROP INDEX flows_by_verdict;
    ",
    // 7: alerts keep every field the printed alert has (alerts stored before stay null there).
    "
    ALTER TABLE alerts ADD COLUMN tid INTEGER;
    ALTER TABLE alerts ADD COLUMN cgroup_id INTEGER;
    ALTER TABLE alerts ADD COLUMN internal INTEGER;
    ",
    // 8: whether the kernel refused what an alert is about (null: stored before enforcement).
    "
    ALTER TABLE alerts ADD COLUMN action TEXT;
    ",
    // 9: the name each destination was resolved from, and its CNAME chain (comma-separated);
    //    groups by name too. Rows stored before have none.
    "
    ALTER TABLE flows ADD COLUMN domain TEXT;
    ALTER TABLE flows ADD COLUMN cname_chain TEXT;
    ALTER TABLE alerts ADD COLUMN domain TEXT;
    ALTER TABLE alerts ADD COLUMN cname_chain TEXT;
    ALTER TABLE flow_groups ADD COLUMN domain TEXT;
    ",
    // 10: when the agent ran (for the coverage of residency reports), and the reports made,
    //     chained by their digests.
    "
    CREATE TABLE agent_runs (
        id INTEGER PRIMARY KEY,
        started_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        start_kind TEXT NOT NULL,
        attached_since_ms INTEGER NOT NULL,
        version TEXT NOT NULL,
        store_dropped INTEGER NOT NULL,
        geolocation_errors INTEGER NOT NULL
    );
    CREATE TABLE reports (
        seq INTEGER PRIMARY KEY,
        since TEXT NOT NULL,
        until TEXT NOT NULL,
        digest TEXT NOT NULL,
        report TEXT NOT NULL
    );
    ",
    // 11: the configurations the agent counted under (start, SIGHUP, a replaced database), so
    //     that a report names those in force over its period (classes and sources as JSON);
    //     each run's loss counters as they grew, so that a report counts those of its period,
    //     not of whole runs; which reports the agent made on its schedule (their periods
    //     follow each other; one made by hand does not move the schedule); where retention
    //     cut the store (a report of a period before it would miss rows); and until when the
    //     writer has written every record (a report of a running agent ends there).
    "
    CREATE TABLE run_counters (
        run_id INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        store_dropped INTEGER NOT NULL,
        geolocation_errors INTEGER NOT NULL
    );
    CREATE INDEX run_counters_by_run ON run_counters (run_id, at_ms);
    ALTER TABLE reports ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE prunes (
        at_ms INTEGER NOT NULL,
        cutoff INTEGER NOT NULL,
        rows INTEGER NOT NULL
    );
    CREATE TABLE writer_progress (settled_ms INTEGER NOT NULL);
    INSERT INTO writer_progress VALUES (0);
    CREATE TABLE configurations (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        cause TEXT NOT NULL,
        digest TEXT NOT NULL,
        classes TEXT NOT NULL,
        sources TEXT NOT NULL
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
    fn version_3_keeps_alerts_and_their_positions() {
        let mut c = Connection::open_in_memory().unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.execute_batch(MIGRATIONS[1]).unwrap();
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.commit().unwrap();
        c.execute(
            "INSERT INTO alerts (rowid, id, time, time_unix, host, class, severity, reason, direction, protocol, uid,
                 dst_ip, bytes, packets, flows, first_seen, last_seen)
             VALUES (7, 'a7', 't', 0, 'h', 'c', 'high', 'r', 'outbound', 'tcp', 0, '192.0.2.1', 1, 1, 1, 't', 't')",
            [],
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let (seq, id): (i64, String) =
            c.query_row("SELECT seq, id FROM alerts", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((seq, id.as_str()), (7, "a7"), "an export cursor on rowid 7 still points at it");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        assert!(migrate(&mut c).unwrap_err().to_string().contains("newer than this agent's"));
    }
}
