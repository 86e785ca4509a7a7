//! ClickHouse over its HTTP interface: finished flow buckets and new alerts, batched as
//! `INSERT ... FORMAT JSONEachRow`. The schema (`clickhouse.sql`, also in the README) keeps to
//! what ClickHouse 18.16 accepts: MergeTree family, DateTime, FixedString, UInt, String.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::bail;
use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    record::fields::Kind,
    sinks::{Backoff, RetryPolicy, webhook::redacted},
    status::ExportStatus,
    store::{self, ExportReader, export::Row},
};

/// The CREATE statements for database `egress`.
pub const SCHEMA: &str = include_str!("clickhouse.sql");

/// Rows sent per INSERT.
const CHUNK: usize = 5_000;
/// A bucket is sent once it ended this long ago (the store writer's batching delay, with room).
const SETTLE: Duration = Duration::from_secs(3);

const FLOWS_CURSOR: &str = "clickhouse.flows";
const ALERTS_CURSOR: &str = "clickhouse.alerts";
const REPORTS_CURSOR: &str = "clickhouse.reports";

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct ClickHouseOptions {
    /// ClickHouse's HTTP interface, like "http://clickhouse.internal:8123".
    pub url: reqwest::Url,
    pub database: String,
    pub user: String,
    pub password_file: Option<std::path::PathBuf>,
    /// How often finished buckets are sent.
    pub interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The store's bucket length (a bucket is sent once it is over).
    pub bucket: Duration,
    /// The agent's state directory, where the store is.
    pub state_dir: std::path::PathBuf,
}

pub struct ClickHouse {
    client: reqwest::Client,
    url: reqwest::Url,
    database: String,
    user: String,
    password: Option<String>,
    interval: Duration,
    bucket: Duration,
    state_dir: std::path::PathBuf,
}

impl ClickHouse {
    /// Prepares the client; reads the password file (the error names it).
    pub fn new(c: &ClickHouseOptions) -> anyhow::Result<ClickHouse> {
        let password = match &c.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "export.clickhouse.password_file: {}: cannot read it: {e}",
                            p.display()
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        if !c.database.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') || c.database.is_empty() {
            bail!(
                "export.clickhouse.database: {:?} is not a plain database name (letters, digits, _)",
                c.database
            );
        }
        crate::install_crypto();
        // Redirects are not followed: a 3xx is an error, like any answer that is not 2xx.
        let client = reqwest::Client::builder()
            .timeout(c.timeout)
            .tls_backend_rustls()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ClickHouse {
            client,
            url: c.url.clone(),
            database: c.database.clone(),
            user: c.user.clone(),
            password,
            interval: c.interval,
            bucket: c.bucket,
            state_dir: c.state_dir.clone(),
        })
    }

    /// Runs one statement; the body of the answer, or an error with ClickHouse's message.
    pub async fn query(&self, sql: &str, body: Option<String>) -> anyhow::Result<String> {
        let mut url = self.url.clone();
        let mut req = match body {
            Some(b) => {
                url.query_pairs_mut().append_pair("query", sql);
                self.client.post(url).body(b)
            }
            None => self.client.post(url).body(sql.to_owned()),
        };
        req = req.header("X-ClickHouse-User", &self.user);
        if let Some(p) = &self.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("ClickHouse at {}: {}", redacted(&self.url), e.without_url()))?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !code.is_success() {
            bail!("ClickHouse answered {code}: {}", text.lines().next().unwrap_or(""));
        }
        Ok(text)
    }

    async fn insert(&self, table: &str, rows: &[Value]) -> anyhow::Result<()> {
        let mut body = String::new();
        for r in rows {
            body.push_str(&r.to_string());
            body.push('\n');
        }
        self.query(&format!("INSERT INTO {}.{table} FORMAT JSONEachRow", self.database), Some(body))
            .await
            .map(drop)
    }
}

/// Sends finished buckets and new alerts every `interval` until `stop`.
pub async fn run(ch: ClickHouse, status: Arc<Mutex<ExportStatus>>, mut stop: watch::Receiver<bool>) {
    let (bucket, interval) = (ch.bucket, ch.interval);
    let store = ExportReader::new(&ch.state_dir);
    let mut version_logged = false;
    // While it stays down, wait longer each time, up to 16 intervals (the sinks' backoff).
    let mut backoff =
        Backoff::new(RetryPolicy { initial: interval * 2, max: interval * 16, max_age: Duration::MAX });
    loop {
        if !version_logged {
            match ch.query("SELECT version()", None).await {
                Ok(v) => {
                    info!(url = %redacted(&ch.url), version = %v.trim(), database = %ch.database, "exporting to ClickHouse");
                    version_logged = true;
                }
                Err(e) => {
                    warn!(error = %e, "ClickHouse is not reachable yet; flow summaries wait in the store")
                }
            }
        }
        let round = send_round(&ch, &store, bucket, &status).await;
        let wait = match round {
            Ok(()) => {
                backoff.reset();
                status.lock().unwrap_or_else(|e| e.into_inner()).last_error = None;
                interval
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "ClickHouse export failed; nothing is lost, it is sent again later");
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.failures += 1;
                s.last_error = Some(format!("{e:#}"));
                backoff.next_wait()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn send_round(
    ch: &ClickHouse,
    store: &ExportReader,
    bucket: Duration,
    status: &Mutex<ExportStatus>,
) -> anyhow::Result<()> {
    let bucket_secs = bucket.as_secs().max(1) as i64;
    // Buckets that ended at least SETTLE ago are final.
    let now = chrono::Utc::now().timestamp() - SETTLE.as_secs() as i64;
    let done_before = now.div_euclid(bucket_secs) * bucket_secs;
    // Buckets written into after they were sent go again, whole: the rows keep their ids, and
    // ReplacingMergeTree keeps the last version of each.
    let s2 = store.clone();
    for b in tokio::task::spawn_blocking(move || s2.late_buckets(FLOWS_CURSOR)).await?? {
        let s2 = store.clone();
        let rows = tokio::task::spawn_blocking(move || s2.bucket_rows(b)).await??;
        let rows = clickhouse_rows(b, &rows);
        for chunk in rows.chunks(CHUNK) {
            ch.insert("flows", chunk).await?;
        }
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || s2.sent_late_bucket(FLOWS_CURSOR, b)).await??;
        status.lock().unwrap_or_else(|e| e.into_inner()).rows_sent += rows.len() as u64;
    }
    loop {
        let s2 = store.clone();
        let (next, rows) = tokio::task::spawn_blocking(move || flow_rows(&s2, done_before)).await??;
        let Some(b) = next else { break };
        for chunk in rows.chunks(CHUNK) {
            ch.insert("flows", chunk).await?;
        }
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || s2.set_cursor(FLOWS_CURSOR, b + bucket_secs)).await??;
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.rows_sent += rows.len() as u64;
        s.next_bucket = chrono::DateTime::from_timestamp(b + bucket_secs, 0).map(store::query::rfc3339);
    }
    loop {
        let s2 = store.clone();
        let (last, rows) = tokio::task::spawn_blocking(move || alert_rows(&s2)).await??;
        let Some(last) = last else { break };
        ch.insert("alerts", &rows).await?;
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || s2.set_cursor(ALERTS_CURSOR, last)).await??;
        status.lock().unwrap_or_else(|e| e.into_inner()).alerts_sent += rows.len() as u64;
    }
    loop {
        let s2 = store.clone();
        let from = tokio::task::spawn_blocking(move || s2.cursor(REPORTS_CURSOR)).await??.unwrap_or(0);
        let s2 = store.clone();
        let reports = tokio::task::spawn_blocking(move || s2.reports_after(from, 100)).await??;
        let Some(&(last, _)) = reports.last() else { break };
        let rows: Vec<Value> = reports.iter().filter_map(|(_, text)| report_row(text)).collect();
        ch.insert("reports", &rows).await?;
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || s2.set_cursor(REPORTS_CURSOR, last)).await??;
    }
    Ok(())
}

/// A residency report as ClickHouse keeps it: its figures summed over its classes, for fleet
/// statements, and the signed JSON whole (what `verify` checks).
fn report_row(text: &str) -> Option<Value> {
    let r: crate::reports::Report = serde_json::from_str(text).ok()?;
    let digest = crate::reports::digest(&serde_json::from_str(text).ok()?);
    let time = |t: &str| chrono::DateTime::parse_from_rfc3339(t).map_or(0, |t| t.timestamp());
    Some(json!({
        "id": digest.trim_start_matches("sha256:").chars().take(32).collect::<String>(),
        "host": r.host,
        "seq": r.seq,
        "since": time(&r.since),
        "until": time(&r.until),
        "generated": time(&r.generated),
        "class_filter": r.class_filter.unwrap_or_default(),
        "bytes": r.classes.iter().map(|c| c.bytes).sum::<u64>(),
        "violation_bytes": r.classes.iter().map(|c| c.violations.bytes).sum::<u64>(),
        "agent_not_running_ms": r.coverage.agent_not_running_ms,
        "blind_ms": r.coverage.blind_ms,
        "digest": digest,
        "previous": r.previous.unwrap_or_default(),
        "report": text,
    }))
}

/// The rows of the oldest unsent finished bucket (and that bucket), if any.
fn flow_rows(store: &ExportReader, done_before: i64) -> rusqlite::Result<(Option<i64>, Vec<Value>)> {
    let from = store.cursor(FLOWS_CURSOR)?.unwrap_or(i64::MIN);
    let Some((bucket, rows)) = store.flow_bucket(from, done_before)? else { return Ok((None, Vec::new())) };
    Ok((Some(bucket), clickhouse_rows(bucket, &rows)))
}

/// A bucket's rows as ClickHouse takes them.
fn clickhouse_rows(bucket: i64, rows: &[Row]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let text = |c: &str| match r.get(c) {
                Some(SqlValue::Text(t)) => t.clone(),
                _ => String::new(),
            };
            let mut m = Map::new();
            m.insert("id".into(), json!(row_id(&[&text("host"), &text("flow_id"), &bucket.to_string()])));
            m.extend(exported(r));
            Value::Object(m)
        })
        .collect()
}

/// Alerts stored since the last send (at most a chunk), and the last one's position.
fn alert_rows(store: &ExportReader) -> rusqlite::Result<(Option<i64>, Vec<Value>)> {
    let from = store.cursor(ALERTS_CURSOR)?.unwrap_or(0);
    let (last, rows) = store.alerts_after(from, CHUNK)?;
    Ok((last, rows.iter().map(|r| Value::Object(exported(r).collect())).collect()))
}

/// The exported columns of a stored row as ClickHouse takes them: its schema has no NULL, so
/// a missing text is "" and a missing number 0; times are Unix seconds.
fn exported(r: &Row) -> impl Iterator<Item = (String, Value)> + '_ {
    r.0.iter().filter(|c| c.exported).map(|c| {
        let v = match (c.kind, &c.value) {
            (Kind::Time, SqlValue::Text(t)) => json!(unix(t)),
            (Kind::Time, _) => json!(0),
            (Kind::Int | Kind::Bool, SqlValue::Integer(n)) => json!(n),
            (Kind::Int | Kind::Bool, _) => json!(0),
            (_, SqlValue::Text(t)) => json!(t),
            (_, SqlValue::Integer(n)) => json!(n.to_string()),
            _ => json!(""),
        };
        (c.name.to_owned(), v)
    })
}

/// A row's id in ClickHouse: the same row sent twice has the same id, so ReplacingMergeTree
/// (or a `SELECT ... FINAL`) keeps one.
fn row_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds of an RFC 3339 time (0 if unreadable).
fn unix(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp()).unwrap_or(0)
}

/// Every flow and alert row the exporter would send from the store in `dir`, one JSON line each.
#[cfg(test)]
pub(crate) fn golden_rows(dir: &std::path::Path) -> String {
    let store = ExportReader::new(dir);
    let (_, flows) = flow_rows(&store, i64::MAX).unwrap();
    let (_, alerts) = alert_rows(&store).unwrap();
    flows.iter().chain(&alerts).map(|v| format!("{v}\n")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_shows_the_schema_the_agent_writes() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(super::SCHEMA.trim()),
            "README.md must contain monitor/src/export/clickhouse.sql verbatim"
        );
    }
}
