//! Residency reports an auditor can verify: for a period, per class, where its bytes went
//! (country, cloud region, site, internal, unknown), its violations and blocked attempts, and
//! what the agent could not see (coverage: when it or its programs did not run, kernel losses,
//! store drops, lookup errors). Each report carries a digest of the store rows it sums and the
//! digest of the report before it, and is signed with the host key; `verify` checks all of it
//! without trusting the host.

mod build;
pub mod key;
mod map;
pub mod render;
pub mod schedule;
pub mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use build::ms_time;
pub use build::{ReportOptions, SETTLE_SECS, build, first_kept_bucket, rows_digest};

/// The report's format version (2: `configurations` in force over the period, in place of
/// the report maker's `config_digest` and `sources`).
pub const FORMAT: u32 = 2;
pub const KIND: &str = "residency_report";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: u32,
    /// This host's reports are numbered 1, 2, ... in the order they were made.
    pub seq: u64,
    pub host: String,
    pub agent_version: String,
    pub generated: String,
    /// The period asked for. The store keeps sums per bucket: the report sums the whole
    /// buckets from the one holding `since` (`counted_from`) up to `counted_until`, the end of
    /// the last bucket that was over (and final) within the period when the report was made.
    pub since: String,
    pub until: String,
    pub counted_from: String,
    pub counted_until: String,
    /// Only this class (None: every class, and the unclassified flows).
    pub class_filter: Option<String>,
    /// Every configuration the agent counted under over the summed buckets, in order (see
    /// [`InForce`]).
    pub configurations: Vec<InForce>,
    pub classes: Vec<ClassReport>,
    /// Flows of no class (absent with a class filter).
    pub unclassified: Option<Totals>,
    pub coverage: Coverage,
    /// The store rows summed: how many, and SHA-256 over them (see [`rows_digest`]).
    pub rows: Rows,
    /// Digest of the previous report of this host (None for the first).
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signature: Option<Signature>,
}

/// A configuration in force during the period, as the agent recorded it when it put it in
/// force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InForce {
    /// When it was put in force (the first one's may be before the period).
    pub from: String,
    /// `start`, `reload` (SIGHUP), `sources` (a replaced database or range file reopened), or
    /// `report` when the store holds none for the period (no agent recorded one): then it is
    /// the configuration the report was made with.
    pub cause: String,
    /// SHA-256 of the configuration file's text.
    pub digest: String,
    pub classes: Vec<String>,
    /// The sources of places (databases with their build dates, range files with the version
    /// their provider published).
    pub sources: Vec<Source>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub kind: String,
    pub description: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassReport {
    pub class: String,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    /// Where its bytes went: one entry per place, largest first.
    pub destinations: Vec<Place>,
    pub violations: Violations,
    /// Alerts raised for attempts the kernel refused (action `blocked`; repeated attempts of
    /// one workload to one destination are one alert, whose `flows` count them).
    pub blocked_alerts: u64,
}

/// One place a class's bytes went: `country` (name: ISO code), `cloud_region`
/// (provider:region), `site`, `internal` or `unknown` (name null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub kind: String,
    pub name: Option<String>,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    /// Of those bytes, the ones the policy judged violations.
    pub violation_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violations {
    pub flows: u64,
    pub bytes: u64,
    /// The alerts raised in the period, by id.
    pub alerts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Intervals of the period when no agent ran: the programs, pinned, went on counting when
    /// `kernel_counting` (the next agent carried their counts over), counted nothing when
    /// false (nothing was attached), and null when no agent has started since to tell.
    pub agent_not_running: Vec<Gap>,
    pub agent_not_running_ms: u64,
    /// Of that, the time nothing counted at all.
    pub blind_ms: u64,
    /// Agent runs overlapping the period.
    pub runs: u64,
    /// The kernel's losses in the period (differences of the loss records' totals).
    pub kernel_losses: KernelLosses,
    /// Records the store could not keep, and geolocation lookups that failed, in the period
    /// (as the agent's heartbeat, every 2 s, recorded them).
    pub store_dropped: u64,
    pub geolocation_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from: String,
    pub until: String,
    pub ms: u64,
    pub kernel_counting: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLosses {
    pub ringbuf_drops: u64,
    pub flow_insert_failed: u64,
    pub overflow_packets: u64,
    pub overflow_bytes: u64,
    pub dns_answers_lost: u64,
    pub dns_answers_lost_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rows {
    pub count: u64,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The host's public key (`egress-monitor key`).
    pub key: String,
    /// Ed25519 over the report without its signature (see [`signed_bytes`]), base64.
    pub value: String,
}

/// The bytes a signature covers: the report as JSON, without `signature`, its fields in their
/// written order. Verifiers take them from the report's own text, so a field added later is
/// covered too.
pub fn signed_bytes(report: &serde_json::Value) -> Vec<u8> {
    let mut v = report.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signature");
    }
    serde_json::to_vec(&v).expect("a JSON value serializes")
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    sha256_text(&Sha256::digest(bytes))
}

/// A SHA-256 digest as reports write it: `sha256:<hex>`.
pub fn sha256_text(digest: &[u8]) -> String {
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A report's digest, which the next report names as `previous`: over its signed bytes.
pub fn digest(report: &serde_json::Value) -> String {
    sha256(&signed_bytes(report))
}

/// Builds the report of `o`'s period from the store (in a read snapshot: the agent's writer
/// is not held up, however long the period), then numbers it after the last report the store
/// holds, chains it to that one, signs it and records it in one write transaction (two reports
/// made at once cannot take the same number). `scheduled`: one of the agent's periodic
/// reports, whose periods follow each other.
pub fn make(
    conn: &mut rusqlite::Connection,
    o: &ReportOptions,
    key: &key::HostKey,
    scheduled: bool,
) -> anyhow::Result<Report> {
    let snapshot = conn.transaction()?;
    let mut report = build(&snapshot, o)?;
    snapshot.finish()?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let last: Option<(i64, String)> = tx
        .query_row("SELECT seq, digest FROM reports ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    report.seq = last.as_ref().map_or(1, |(seq, _)| *seq as u64 + 1);
    report.previous = last.map(|(_, d)| d);
    report.sign(key);
    let value = report.to_value();
    tx.execute(
        "INSERT INTO reports (seq, since, until, digest, report, scheduled) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            report.seq as i64,
            report.since,
            report.counted_until,
            digest(&value),
            value.to_string(),
            scheduled
        ],
    )?;
    tx.commit()?;
    Ok(report)
}

impl Report {
    /// Signs the report with the host key.
    pub fn sign(&mut self, key: &key::HostKey) {
        self.signature = None;
        let value = serde_json::to_value(&*self).expect("a report serializes");
        self.signature = Some(Signature { key: key.public(), value: key.sign(&signed_bytes(&value)) });
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a report serializes")
    }
}
