//! Reports the agent writes by itself (`[reports] interval`): at the end of each period, one
//! report from the end of the previous periodic report (or a period back, for the first) to
//! now, into `state_dir/reports/report-<seq>.json`, where reports made by hand go too.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;

use super::{Report, ReportOptions, first_kept_bucket, key::HostKey, make};
use crate::store::configs::Configuration;

pub struct Schedule {
    pub interval: Duration,
    pub state_dir: PathBuf,
    pub host: String,
    /// Named in a report only when the store holds no configuration the agent recorded.
    pub own: Configuration,
    pub bucket_secs: i64,
}

/// Writes a report every `interval` until the agent stops.
pub fn spawn(s: Schedule, key: Arc<HostKey>) -> tokio::task::JoinHandle<()> {
    let s = Arc::new(s);
    tokio::spawn(async move {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + s.interval, s.interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            let (s, key) = (s.clone(), key.clone());
            match tokio::task::spawn_blocking(move || write_one(&s, &key)).await {
                Ok(Ok(path)) => tracing::info!(path = %path.display(), "wrote a residency report"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "making the periodic residency report failed")
                }
                Err(e) => tracing::warn!(error = %e, "the periodic residency report panicked"),
            }
        }
    })
}

fn write_one(s: &Schedule, key: &HostKey) -> anyhow::Result<PathBuf> {
    let mut conn = crate::store::open_for_writing(&s.state_dir)?;
    let now = chrono::Utc::now();
    // From the end of what the last periodic report summed, so that they tile time (a report
    // made by hand, of any period or class, does not move them).
    let last: Option<String> = conn
        .query_row("SELECT until FROM reports WHERE scheduled = 1 ORDER BY seq DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .ok();
    let since = last
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| now - chrono::Duration::from_std(s.interval).unwrap_or_default());
    // After an agent was away longer than the store's retention, from the first bucket kept:
    // the report of a period whose rows are gone would be refused, every time.
    let since = match crate::store::pruned_before(&conn)? {
        Some((cutoff, _)) if since.timestamp() < cutoff => {
            chrono::DateTime::from_timestamp(first_kept_bucket(cutoff, s.bucket_secs), 0).unwrap_or(since)
        }
        _ => since,
    };
    let o = ReportOptions {
        host: s.host.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        own: s.own.clone(),
        since,
        until: now,
        class: None,
        bucket_secs: s.bucket_secs,
        now,
    };
    let report = make(&mut conn, &o, key, true)?;
    keep(&s.state_dir, &report)
}

/// Writes a report made (by the schedule or by hand) into `state_dir/reports/`, as
/// `report-<seq>.json`: the directory holds the whole chain, for `verify reports/*.json`.
pub fn keep(state_dir: &Path, report: &Report) -> anyhow::Result<PathBuf> {
    let dir = state_dir.join("reports");
    let path = dir.join(format!("report-{:06}.json", report.seq));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, serde_json::to_string_pretty(&report.to_value())? + "\n"))
        .with_context(|| {
            format!(
                "writing {}: report {} is recorded in the store (its reports table) but not in the directory",
                path.display(),
                report.seq
            )
        })?;
    Ok(path)
}
