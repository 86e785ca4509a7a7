//! ClickHouse over its HTTP interface: finished flow buckets and new alerts, batched as
//! `INSERT ... FORMAT JSONEachRow`. The schema (`clickhouse.sql`, also in the README) keeps to
//! what ClickHouse 18.16 accepts: MergeTree family, DateTime, FixedString, UInt, String.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{status::ExportStatus, store};

/// The CREATE statements for database `egress`.
pub const SCHEMA: &str = include_str!("clickhouse.sql");

/// Rows sent per INSERT.
const CHUNK: usize = 5_000;
/// A bucket is sent once it ended this long ago (the store writer's batching delay, with room).
const SETTLE: Duration = Duration::from_secs(3);

const FLOWS_CURSOR: &str = "clickhouse.flows";
const ALERTS_CURSOR: &str = "clickhouse.alerts";

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
        let client = reqwest::Client::builder().timeout(c.timeout).tls_backend_rustls().build()?;
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
        let resp = req.send().await.with_context(|| format!("ClickHouse at {}", self.url))?;
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
    let path = ch.state_dir.join(store::FILE);
    let mut version_logged = false;
    let mut failures_in_a_row = 0u32;
    loop {
        if !version_logged {
            match ch.query("SELECT version()", None).await {
                Ok(v) => {
                    info!(url = %ch.url, version = %v.trim(), database = %ch.database, "exporting to ClickHouse");
                    version_logged = true;
                }
                Err(e) => {
                    warn!(error = %e, "ClickHouse is not reachable yet; flow summaries wait in the store")
                }
            }
        }
        let round = send_round(&ch, &path, bucket, &status).await;
        let wait = match round {
            Ok(()) => {
                failures_in_a_row = 0;
                status.lock().unwrap_or_else(|e| e.into_inner()).last_error = None;
                interval
            }
            Err(e) => {
                failures_in_a_row += 1;
                warn!(error = %format!("{e:#}"), "ClickHouse export failed; nothing is lost, it is sent again later");
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.failures += 1;
                s.last_error = Some(format!("{e:#}"));
                // Back off up to 16 intervals while it stays down.
                interval * 2u32.pow(failures_in_a_row.min(4))
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
    path: &Path,
    bucket: Duration,
    status: &Mutex<ExportStatus>,
) -> anyhow::Result<()> {
    let bucket_secs = bucket.as_secs().max(1) as i64;
    // Buckets that ended at least SETTLE ago are final.
    let now = chrono::Utc::now().timestamp() - SETTLE.as_secs() as i64;
    let done_before = now.div_euclid(bucket_secs) * bucket_secs;
    loop {
        let path2 = path.to_owned();
        let (next, rows) = tokio::task::spawn_blocking(move || flow_rows(&path2, done_before)).await??;
        let Some(b) = next else { break };
        for chunk in rows.chunks(CHUNK) {
            ch.insert("flows", chunk).await?;
        }
        let path2 = path.to_owned();
        tokio::task::spawn_blocking(move || set_cursor(&path2, FLOWS_CURSOR, b + bucket_secs)).await??;
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.rows_sent += rows.len() as u64;
        s.next_bucket = chrono::DateTime::from_timestamp(b + bucket_secs, 0).map(store::query::rfc3339);
    }
    loop {
        let path2 = path.to_owned();
        let (last, rows) = tokio::task::spawn_blocking(move || alert_rows(&path2)).await??;
        let Some(last) = last else { break };
        ch.insert("alerts", &rows).await?;
        let path2 = path.to_owned();
        tokio::task::spawn_blocking(move || set_cursor(&path2, ALERTS_CURSOR, last)).await??;
        status.lock().unwrap_or_else(|e| e.into_inner()).alerts_sent += rows.len() as u64;
    }
    Ok(())
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

fn cursor(c: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    c.query_row("SELECT position FROM export_cursors WHERE exporter = ?1", [name], |r| r.get(0)).optional()
}

fn set_cursor(path: &Path, name: &str, position: i64) -> rusqlite::Result<()> {
    connect(path)?.execute(
        "INSERT INTO export_cursors (exporter, position) VALUES (?1, ?2)
         ON CONFLICT (exporter) DO UPDATE SET position = excluded.position",
        params![name, position],
    )?;
    Ok(())
}

/// The rows of the oldest unsent finished bucket (and that bucket), if any.
fn flow_rows(path: &Path, done_before: i64) -> rusqlite::Result<(Option<i64>, Vec<Value>)> {
    let c = connect(path)?;
    let from = cursor(&c, FLOWS_CURSOR)?.unwrap_or(i64::MIN);
    let next: Option<i64> = c.query_row(
        "SELECT MIN(bucket) FROM flows WHERE bucket >= ?1 AND bucket < ?2",
        params![from, done_before],
        |r| r.get(0),
    )?;
    let Some(bucket) = next else { return Ok((None, Vec::new())) };
    let mut stmt = c.prepare(
        "SELECT flow_id, host, bucket, class, verdict, direction, protocol, src_ip, src_port, dst_ip, dst_port,
                country, subdivision, asn, as_org, cloud_provider, cloud_region, site, pid, comm, uid, cgroup,
                bytes, packets, first_seen, last_seen
         FROM flows WHERE bucket = ?1 ORDER BY flow_id",
    )?;
    let rows = stmt.query_map([bucket], |r| {
        let flow_id: String = r.get(0)?;
        let host: String = r.get(1)?;
        let mut m = Map::new();
        m.insert("id".into(), json!(row_id(&[&host, &flow_id, &bucket.to_string()])));
        m.insert("host".into(), json!(host));
        m.insert("bucket".into(), json!(bucket));
        for (i, name) in [(3, "class"), (4, "verdict"), (5, "direction"), (6, "protocol"), (7, "src_ip")] {
            m.insert(name.into(), json!(r.get::<_, Option<String>>(i)?.unwrap_or_default()));
        }
        m.insert("src_port".into(), json!(r.get::<_, Option<i64>>(8)?.unwrap_or(0)));
        m.insert("dst_ip".into(), json!(r.get::<_, String>(9)?));
        m.insert("dst_port".into(), json!(r.get::<_, Option<i64>>(10)?.unwrap_or(0)));
        for (i, name) in [(11, "country"), (12, "subdivision")] {
            m.insert(name.into(), json!(r.get::<_, Option<String>>(i)?.unwrap_or_default()));
        }
        m.insert("asn".into(), json!(r.get::<_, Option<i64>>(13)?.unwrap_or(0)));
        for (i, name) in [(14, "as_org"), (15, "cloud_provider"), (16, "cloud_region"), (17, "site")] {
            m.insert(name.into(), json!(r.get::<_, Option<String>>(i)?.unwrap_or_default()));
        }
        m.insert("pid".into(), json!(r.get::<_, Option<i64>>(18)?.unwrap_or(0)));
        m.insert("comm".into(), json!(r.get::<_, Option<String>>(19)?.unwrap_or_default()));
        m.insert("uid".into(), json!(r.get::<_, i64>(20)?));
        m.insert("cgroup".into(), json!(r.get::<_, Option<String>>(21)?.unwrap_or_default()));
        m.insert("bytes".into(), json!(r.get::<_, i64>(22)?));
        m.insert("packets".into(), json!(r.get::<_, i64>(23)?));
        m.insert("first_seen".into(), json!(unix(&r.get::<_, String>(24)?)));
        m.insert("last_seen".into(), json!(unix(&r.get::<_, String>(25)?)));
        Ok(Value::Object(m))
    })?;
    Ok((Some(bucket), rows.collect::<Result<_, _>>()?))
}

/// Alerts stored since the last send (at most a chunk), and the last one's rowid.
fn alert_rows(path: &Path) -> rusqlite::Result<(Option<i64>, Vec<Value>)> {
    let c = connect(path)?;
    let from = cursor(&c, ALERTS_CURSOR)?.unwrap_or(0);
    let mut stmt = c.prepare(&format!(
        "SELECT rowid, id, time_unix, host, class, severity, reason, direction, protocol, pid, comm, uid, cgroup,
                dst_ip, dst_port, country, subdivision, asn, as_org, cloud_provider, cloud_region, site, bytes,
                packets, flows, first_seen, last_seen
         FROM alerts WHERE rowid > ?1 ORDER BY rowid LIMIT {CHUNK}"
    ))?;
    let mut last = None;
    let rows = stmt
        .query_map([from], |r| {
            let s = |i: usize| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default);
            let n = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0));
            Ok((
                r.get::<_, i64>(0)?,
                json!({
                    "id": s(1)?, "time": n(2)?, "host": s(3)?, "class": s(4)?, "severity": s(5)?, "reason": s(6)?,
                    "direction": s(7)?, "protocol": s(8)?, "pid": n(9)?, "comm": s(10)?, "uid": n(11)?, "cgroup": s(12)?,
                    "dst_ip": s(13)?, "dst_port": n(14)?, "country": s(15)?, "subdivision": s(16)?, "asn": n(17)?,
                    "as_org": s(18)?, "cloud_provider": s(19)?, "cloud_region": s(20)?, "site": s(21)?,
                    "bytes": n(22)?, "packets": n(23)?, "flows": n(24)?,
                    "first_seen": unix(&s(25)?), "last_seen": unix(&s(26)?),
                }),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(rowid, v)| {
            last = Some(rowid);
            v
        })
        .collect();
    Ok((last, rows))
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
pub(crate) fn golden_rows(dir: &Path) -> String {
    let path = dir.join(store::FILE);
    let (_, flows) = flow_rows(&path, i64::MAX).unwrap();
    let (_, alerts) = alert_rows(&path).unwrap();
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
