//! What exporters read from the store: finished buckets of flow summaries, alerts stored after
//! a position, and each exporter's cursor (kept in the store itself, so a restart resumes where
//! the last run stopped). Rows hold the stored columns of the field tables.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, params, types::Value as SqlValue};

use super::FILE;
use crate::record::fields::{self, Field, Kind};

/// One stored column of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether exporters send it (others, like a flow's id in the store, only help name the row).
    pub exported: bool,
    pub value: SqlValue,
}

/// One stored row, its columns in field-table order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Column>);

impl Row {
    /// A column's value by name.
    pub fn get(&self, name: &str) -> Option<&SqlValue> {
        self.0.iter().find(|c| c.name == name).map(|c| &c.value)
    }
}

/// Read access for one exporter.
#[derive(Debug, Clone)]
pub struct ExportReader {
    path: PathBuf,
}

fn columns<R>(table: &'static [Field<R>]) -> Vec<(&'static str, &'static Field<R>)> {
    fields::stored(table).collect()
}

fn read<R>(
    r: &rusqlite::Row<'_>,
    cols: &[(&'static str, &'static Field<R>)],
    skip: usize,
) -> rusqlite::Result<Row> {
    cols.iter()
        .enumerate()
        .map(|(i, (name, f))| {
            Ok(Column { name, kind: f.kind, exported: f.clickhouse, value: r.get::<_, SqlValue>(i + skip)? })
        })
        .collect::<rusqlite::Result<_>>()
        .map(Row)
}

impl ExportReader {
    /// The store in the state directory `dir`.
    pub fn new(dir: &Path) -> ExportReader {
        ExportReader { path: dir.join(FILE) }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open(&self.path)?;
        c.busy_timeout(Duration::from_secs(5))?;
        Ok(c)
    }

    /// How far the exporter `name` got (None before its first send).
    pub fn cursor(&self, name: &str) -> rusqlite::Result<Option<i64>> {
        self.connect()?
            .query_row("SELECT position FROM export_cursors WHERE exporter = ?1", [name], |r| r.get(0))
            .optional()
    }

    pub fn set_cursor(&self, name: &str, position: i64) -> rusqlite::Result<()> {
        self.connect()?.execute(
            "INSERT INTO export_cursors (exporter, position) VALUES (?1, ?2)
             ON CONFLICT (exporter) DO UPDATE SET position = excluded.position",
            params![name, position],
        )?;
        Ok(())
    }

    /// The oldest bucket at or after `from` that starts before `done_before`, and its rows in
    /// flow-id order.
    pub fn flow_bucket(&self, from: i64, done_before: i64) -> rusqlite::Result<Option<(i64, Vec<Row>)>> {
        let c = self.connect()?;
        let next: Option<i64> = c.query_row(
            "SELECT MIN(bucket) FROM flows WHERE bucket >= ?1 AND bucket < ?2",
            params![from, done_before],
            |r| r.get(0),
        )?;
        let Some(bucket) = next else { return Ok(None) };
        Ok(Some((bucket, self.bucket_rows(bucket)?)))
    }

    /// Buckets written into after exporter `name` had sent them, oldest first.
    pub fn late_buckets(&self, name: &str) -> rusqlite::Result<Vec<i64>> {
        let c = self.connect()?;
        let mut stmt = c.prepare("SELECT bucket FROM late_buckets WHERE exporter = ?1 ORDER BY bucket")?;
        stmt.query_map([name], |r| r.get(0))?.collect()
    }

    /// Every row of one bucket, in flow-id order.
    pub fn bucket_rows(&self, bucket: i64) -> rusqlite::Result<Vec<Row>> {
        let c = self.connect()?;
        let cols = columns(fields::FLOW);
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let mut stmt =
            c.prepare(&format!("SELECT {} FROM flows WHERE bucket = ?1 ORDER BY flow_id", names.join(", ")))?;
        stmt.query_map([bucket], |r| read(r, &cols, 0))?.collect()
    }

    /// Exporter `name` sent `bucket` again.
    pub fn sent_late_bucket(&self, name: &str, bucket: i64) -> rusqlite::Result<()> {
        self.connect()?
            .execute("DELETE FROM late_buckets WHERE exporter = ?1 AND bucket = ?2", params![name, bucket])?;
        Ok(())
    }

    /// At most `limit` alerts stored after position `after` (their sequence number, never
    /// reused), and the last one's position.
    /// Residency reports recorded after number `after` (at most `limit`): (number, JSON).
    pub fn reports_after(&self, after: i64, limit: usize) -> rusqlite::Result<Vec<(i64, String)>> {
        let c = self.connect()?;
        let mut stmt =
            c.prepare(&format!("SELECT seq, report FROM reports WHERE seq > ?1 ORDER BY seq LIMIT {limit}"))?;
        let rows = stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    pub fn alerts_after(&self, after: i64, limit: usize) -> rusqlite::Result<(Option<i64>, Vec<Row>)> {
        let c = self.connect()?;
        let cols = columns(fields::ALERT);
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let mut stmt = c.prepare(&format!(
            "SELECT seq, {} FROM alerts WHERE seq > ?1 ORDER BY seq LIMIT {limit}",
            names.join(", ")
        ))?;
        let mut last = None;
        let rows = stmt
            .query_map([after], |r| Ok((r.get::<_, i64>(0)?, read(r, &cols, 1)?)))?
            .map(|row| {
                row.map(|(rowid, row)| {
                    last = Some(rowid);
                    row
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((last, rows))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{
        record::{Alert, Destination, FlowRecord, Output, Timestamp},
        store::{Store, StoreSettings},
    };

    fn write(dir: &Path, records: Vec<Output>) {
        let settings = StoreSettings {
            bucket: Duration::from_secs(60),
            retention: Duration::from_secs(86400 * 365 * 100),
            prune_every: Duration::from_secs(3600),
        };
        let store = Store::start(dir, settings).unwrap();
        for r in records {
            store.writer.write(&Arc::new(r));
        }
        store.writer.close();
    }

    fn alert(id: &str) -> Alert {
        let r = FlowRecord::sample("175.16.199.1", 443, Destination::default());
        Alert {
            kind: "alert",
            id: id.into(),
            time: r.time,
            host: r.host,
            class: "c".into(),
            severity: crate::record::Severity::High,
            action: Default::default(),
            reason: "r".into(),
            direction: r.direction,
            protocol: r.protocol,
            process: r.process,
            destination: r.destination,
            bytes: 1,
            packets: 1,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
        }
    }

    #[test]
    fn the_alert_cursor_survives_pruning_every_alert() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), vec![Output::Alert(alert("a1"))]);
        let reader = ExportReader::new(dir.path());
        let (cursor, rows) = reader.alerts_after(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        // Retention prunes every alert; a new one must still be after the cursor.
        rusqlite::Connection::open(dir.path().join(FILE)).unwrap().execute("DELETE FROM alerts", []).unwrap();
        write(dir.path(), vec![Output::Alert(alert("a2"))]);
        let (_, rows) = reader.alerts_after(cursor.unwrap(), 10).unwrap();
        assert_eq!(rows.len(), 1, "the new alert is not hidden behind a reused position");
        assert_eq!(rows[0].get("id"), Some(&SqlValue::Text("a2".into())));
    }

    #[test]
    fn a_bucket_written_into_after_it_was_sent_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = FlowRecord::sample("175.16.199.1", 443, Destination::default());
        r.time = Timestamp(chrono::DateTime::from_timestamp(1_800_000_030, 0).unwrap());
        let bucket = 1_800_000_000;
        write(dir.path(), vec![Output::Flow(r.clone())]);
        let reader = ExportReader::new(dir.path());
        assert_eq!(reader.flow_bucket(i64::MIN, i64::MAX).unwrap().unwrap().0, bucket);
        reader.set_cursor("clickhouse.flows", bucket + 60).unwrap();
        assert!(reader.late_buckets("clickhouse.flows").unwrap().is_empty());
        // Later bytes of the same flow land in the bucket already sent.
        (r.state, r.delta_bytes, r.delta_packets) = (crate::record::FlowState::Active, 500, 1);
        write(dir.path(), vec![Output::Flow(r)]);
        assert_eq!(reader.late_buckets("clickhouse.flows").unwrap(), [bucket]);
        let rows = reader.bucket_rows(bucket).unwrap();
        assert_eq!(rows[0].get("bytes"), Some(&SqlValue::Integer(1500)), "the row with everything");
        reader.sent_late_bucket("clickhouse.flows", bucket).unwrap();
        assert!(reader.late_buckets("clickhouse.flows").unwrap().is_empty());
    }
}
