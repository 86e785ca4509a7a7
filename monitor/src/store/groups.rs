//! Flow summaries summed per time bucket and per group: one row for all the flows of a bucket
//! that agree on every column a question can filter or group by (class, verdict, direction,
//! place, process, destination). A grouped question (`/v1/flows?group_by=...`) reads these few
//! rows instead of every flow row, so it stays fast on a store of millions of flows while the
//! writer keeps writing.
//!
//! Flow counts: each flow's first row in a bucket records the bucket of the flow's previous
//! row (`prev_bucket`, NULL for none), and a flow counts once in a window, in the group of its
//! first row there (the one whose previous row lies before the window). For flows that keep
//! their class, verdict, place and process, that is exactly the number of distinct flows per
//! group; a flow that changes group (reclassified, judged anew after a reload) counts in the
//! group it had first, while its bytes go where they were sent: the counts of all groups still
//! add up to the number of distinct flows.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};

use rusqlite::{Connection, Transaction, params, types::Value as SqlValue};

use crate::record::fields;

/// The columns a group is made of, as the flow rows name them. Every filter and group key of
/// [`super::query::FlowQuery`] uses only these.
pub const COLUMNS: [&str; 15] = [
    "class",
    "verdict",
    "direction",
    "country",
    "cloud_provider",
    "cloud_region",
    "site",
    "internal",
    "comm",
    "pid",
    "cgroup",
    "dst_ip",
    "dst_port",
    "dst_bin",
    "domain",
];

/// Where each of [`COLUMNS`], then bytes, packets, first_seen and last_seen, sits in a flow
/// row's values (the stored columns of [`fields::FLOW`], in order).
static POSITIONS: LazyLock<Vec<usize>> = LazyLock::new(|| {
    let names: Vec<&str> =
        COLUMNS.iter().chain(&["bytes", "packets", "first_seen", "last_seen"]).copied().collect();
    fields::stored_positions(fields::FLOW, &names)
});

/// The table, created by migration 5.
pub const TABLE: &str = "flow_groups";

/// How a flow record's row in its bucket came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowRow {
    /// The flow's first row in this bucket; `prev` is the bucket of its previous row, if any.
    First { prev: Option<i64> },
    /// The row existed: the record adds bytes, not a flow.
    Existing,
}

/// The groups one batch of records adds to, summed in memory and written once per batch.
#[derive(Default)]
pub struct Groups {
    sums: HashMap<(i64, String), Sum>,
}

struct Sum {
    values: Vec<SqlValue>,
    prev: Option<i64>,
    bytes: i64,
    packets: i64,
    flows: i64,
    first_seen: String,
    last_seen: String,
}

impl Groups {
    /// Adds a flow row's values (every stored column, in order) written into `bucket`.
    pub fn add(&mut self, values: &[SqlValue], bucket: i64, row: FlowRow) {
        let n = COLUMNS.len();
        let at = |i: usize| &values[POSITIONS[i]];
        let (prev, flows) = match row {
            FlowRow::First { prev } => (prev, 1),
            FlowRow::Existing => (None, 0),
        };
        let mut key = String::with_capacity(96);
        for (i, column) in COLUMNS.iter().enumerate() {
            if *column != "dst_bin" {
                put(&mut key, at(i));
            }
        }
        put(&mut key, &prev.map_or(SqlValue::Null, SqlValue::Integer));
        let int = |v: &SqlValue| if let SqlValue::Integer(x) = v { *x } else { 0 };
        fn text(v: &SqlValue) -> &str {
            if let SqlValue::Text(t) = v { t } else { "" }
        }
        let (first_seen, last_seen) = (text(at(n + 2)), text(at(n + 3)));
        let sum = self.sums.entry((bucket, key)).or_insert_with(|| Sum {
            values: (0..n).map(|i| at(i).clone()).collect(),
            prev,
            bytes: 0,
            packets: 0,
            flows: 0,
            first_seen: first_seen.to_owned(),
            last_seen: last_seen.to_owned(),
        });
        sum.bytes += int(at(n));
        sum.packets += int(at(n + 1));
        sum.flows += flows;
        if first_seen < sum.first_seen.as_str() {
            sum.first_seen = first_seen.to_owned();
        }
        if last_seen > sum.last_seen.as_str() {
            sum.last_seen = last_seen.to_owned();
        }
    }

    /// Adds the batch's sums to the stored groups, and forgets them.
    pub fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<u64> {
        let mut stmt = tx.prepare_cached(&UPSERT)?;
        let n = self.sums.len() as u64;
        for ((bucket, key), s) in self.sums.drain() {
            let mut values = vec![SqlValue::Integer(bucket), SqlValue::Text(key), s.prev.into()];
            values.extend(s.values);
            values.extend([
                SqlValue::Integer(s.bytes),
                SqlValue::Integer(s.packets),
                SqlValue::Integer(s.flows),
                SqlValue::Text(s.first_seen),
                SqlValue::Text(s.last_seen),
            ]);
            stmt.execute(rusqlite::params_from_iter(values))?;
        }
        Ok(n)
    }
}

/// Adds one value to the text naming a group within its bucket: every column's value, each
/// tagged with its type (and a text with its length, so no two groups share a name), then the
/// previous bucket. The address's binary form is left out: its text form names it. Migration 5
/// builds the same.
fn put(key: &mut String, v: &SqlValue) {
    use std::fmt::Write;
    let _ = match v {
        SqlValue::Integer(n) => write!(key, "i{n}"),
        SqlValue::Text(t) => write!(key, "t{}:{t}", t.chars().count()),
        SqlValue::Null | SqlValue::Real(_) | SqlValue::Blob(_) => write!(key, "n"),
    };
}

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    let columns = COLUMNS.join(", ");
    let marks: Vec<String> = (1..=COLUMNS.len() + 8).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {TABLE} (bucket, gkey, prev_bucket, {columns}, bytes, packets, flows, first_seen, last_seen)
         VALUES ({})
         ON CONFLICT (bucket, gkey) DO UPDATE SET
             bytes = bytes + excluded.bytes, packets = packets + excluded.packets, flows = flows + excluded.flows,
             first_seen = MIN(first_seen, excluded.first_seen), last_seen = MAX(last_seen, excluded.last_seen)",
        marks.join(", ")
    )
});

/// The newest bucket from `from` down to `down_to` (both included) in which the flow has a
/// row. Searched back from the bucket before a record's when its flow has no row in that bucket
/// (almost always found at once; an idle connection may go back further), and forward of it
/// after the wall clock stepped back.
pub fn newest_row(
    tx: &Transaction<'_>,
    flow_id: &str,
    from: i64,
    down_to: i64,
    bucket_secs: i64,
) -> rusqlite::Result<Option<i64>> {
    let mut has_row = tx.prepare_cached("SELECT 1 FROM flows WHERE bucket = ?1 AND flow_id = ?2")?;
    let mut b = from;
    while b >= down_to {
        if has_row.exists(params![b, flow_id])? {
            return Ok(Some(b));
        }
        b -= bucket_secs;
    }
    Ok(None)
}

/// The number of flows of a grouped answer over buckets from `first_bucket` on (see the
/// module's comment).
pub fn flows_expression(first_bucket: i64) -> String {
    format!("SUM(CASE WHEN prev_bucket IS NULL OR prev_bucket < {first_bucket} THEN flows ELSE 0 END)")
}

/// Bytes sent per class (None: unclassified) and verdict, in the buckets from the one holding
/// `since` on, from the group sums.
pub fn bytes_by_class_and_verdict(
    conn: &Connection,
    since: DateTime<Utc>,
    bucket: Duration,
) -> rusqlite::Result<Vec<(Option<String>, String, u64)>> {
    let bucket = bucket.as_secs().max(1) as i64;
    let first = since.timestamp().div_euclid(bucket) * bucket;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT class, verdict, SUM(bytes) FROM {} WHERE bucket >= ?1 GROUP BY class, verdict",
        TABLE
    ))?;
    let rows = stmt.query_map([first], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
    rows.collect()
}

#[cfg(test)]
mod tests;
