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
        let cols = columns(fields::FLOW);
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let mut stmt =
            c.prepare(&format!("SELECT {} FROM flows WHERE bucket = ?1 ORDER BY flow_id", names.join(", ")))?;
        let rows = stmt.query_map([bucket], |r| read(r, &cols, 0))?.collect::<Result<_, _>>()?;
        Ok(Some((bucket, rows)))
    }

    /// At most `limit` alerts stored after position `after`, and the last one's position.
    pub fn alerts_after(&self, after: i64, limit: usize) -> rusqlite::Result<(Option<i64>, Vec<Row>)> {
        let c = self.connect()?;
        let cols = columns(fields::ALERT);
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let mut stmt = c.prepare(&format!(
            "SELECT rowid, {} FROM alerts WHERE rowid > ?1 ORDER BY rowid LIMIT {limit}",
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
