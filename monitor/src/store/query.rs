//! Questions the store answers: flow summaries filtered and grouped, and alerts. Parameters
//! arrive as text (an HTTP query string); a bad one is reported by name with what was expected.

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use ipnet::IpNet;
use rusqlite::{Connection, types::Value as SqlValue};
use serde::Serialize;
use serde_json::{Map, Value};

use super::groups;

mod alerts;
use crate::record::fields::ip16 as ip_bin;
pub use alerts::AlertQuery;

/// A parameter that could not be used: the API answers 400 with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamError {
    pub parameter: String,
    pub value: String,
    pub expected: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}={:?}: expected {}", self.parameter, self.value, self.expected)
    }
}

fn bad(parameter: &str, value: &str, expected: &str) -> ParamError {
    ParamError { parameter: parameter.into(), value: value.into(), expected: expected.into() }
}

/// What flows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKey {
    Class,
    Country,
    CloudRegion,
    Site,
    Destination,
    Process,
    Domain,
}

impl GroupKey {
    const ALL: [(&'static str, GroupKey); 7] = [
        ("class", GroupKey::Class),
        ("country", GroupKey::Country),
        ("cloud_region", GroupKey::CloudRegion),
        ("site", GroupKey::Site),
        ("destination", GroupKey::Destination),
        ("process", GroupKey::Process),
        ("domain", GroupKey::Domain),
    ];

    /// The name questions and answers give this key.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("", |(n, _)| n)
    }

    /// The key a name stands for.
    pub fn from_name(name: &str) -> Option<GroupKey> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The columns a group shows, in order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            GroupKey::Class => &["class"],
            // Internal and unknown destinations both have no country: `internal` tells them apart.
            GroupKey::Country => &["country", "internal"],
            GroupKey::CloudRegion => &["cloud_provider", "cloud_region"],
            GroupKey::Site => &["site"],
            GroupKey::Destination => &["dst_ip", "dst_port"],
            GroupKey::Process => &["comm", "pid", "cgroup"],
            GroupKey::Domain => &["domain"],
        }
    }
}

/// The columns of a flows answer grouped by `group_by` (one row per flow when empty), in
/// order: the group's columns, then the sums.
pub fn answer_columns(group_by: &[GroupKey]) -> Vec<&'static str> {
    let keys: Vec<&str> = if group_by.is_empty() {
        FLOW_COLUMNS.to_vec()
    } else {
        group_by.iter().flat_map(|g| g.columns().iter().copied()).collect()
    };
    keys.into_iter().chain(SUM_COLUMNS).collect()
}

const SUM_COLUMNS: [&str; 5] = ["bytes", "packets", "flows", "first_seen", "last_seen"];

/// Columns of a flow without grouping (one row per flow).
const FLOW_COLUMNS: &[&str] = &[
    "class",
    "verdict",
    "direction",
    "protocol",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "domain",
    "cname_chain",
    "country",
    "subdivision",
    "asn",
    "as_org",
    "cloud_provider",
    "cloud_region",
    "site",
    "internal",
    "pid",
    "comm",
    "uid",
    "cgroup",
];

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// Parameters common to both questions.
struct Common {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
}

/// `GET /v1/flows`.
#[derive(Debug, Clone)]
pub struct FlowQuery {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub group_by: Vec<GroupKey>,
    pub limit: usize,
    /// SQL conditions and their values.
    filters: Vec<(String, Vec<SqlValue>)>,
}

/// A time: RFC 3339, or a duration meaning that long before now ("1h", "24h", "7d").
pub fn parse_time(parameter: &str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ParamError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    match humantime::parse_duration(value) {
        Ok(d) => chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| bad(parameter, value, "a shorter duration")),
        Err(_) => Err(bad(
            parameter,
            value,
            "an RFC 3339 time (2026-11-25T10:00:00Z) or a duration before now (30m, 24h, 7d)",
        )),
    }
}

fn list(value: &str) -> Vec<SqlValue> {
    value
        .split(',')
        .map(|s| SqlValue::Text(s.trim().to_owned()))
        .filter(|v| v != &SqlValue::Text(String::new()))
        .collect()
}

fn in_list(column: &str, values: Vec<SqlValue>) -> (String, Vec<SqlValue>) {
    let marks = vec!["?"; values.len()].join(", ");
    (format!("{column} IN ({marks})"), values)
}

fn parse_common(params: &[(String, String)], now: DateTime<Utc>) -> Result<Common, ParamError> {
    let get = |k: &str| params.iter().rev().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
    let since = get("since")
        .map(|v| parse_time("since", v, now))
        .transpose()?
        .unwrap_or(now - chrono::Duration::hours(1));
    let until = get("until").map(|v| parse_time("until", v, now)).transpose()?.unwrap_or(now);
    if until < since {
        return Err(bad("until", get("until").unwrap_or(""), "a time after since"));
    }
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit", v, &format!("a number from 1 to {MAX_LIMIT}")))?,
    };
    Ok(Common { since, until, limit })
}

fn unknown(params: &[(String, String)], known: &[&str]) -> Result<(), ParamError> {
    match params.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, v)) => Err(bad(k, v, &format!("a known parameter: {}", known.join(", ")))),
        None => Ok(()),
    }
}

const VERDICTS: [&str; 3] = ["allowed", "violation", "unclassified"];

impl FlowQuery {
    pub const PARAMETERS: [&'static str; 16] = [
        "since",
        "until",
        "class",
        "verdict",
        "country",
        "cloud_region",
        "site",
        "comm",
        "pid",
        "cgroup",
        "dst",
        "port",
        "group_by",
        "limit",
        "direction",
        "domain",
    ];

    pub fn parse(params: &[(String, String)], now: DateTime<Utc>) -> Result<FlowQuery, ParamError> {
        unknown(params, &Self::PARAMETERS)?;
        let Common { since, until, limit } = parse_common(params, now)?;
        let mut filters = Vec::new();
        let mut group_by = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "class" => filters.push(in_list("class", list(v))),
                "country" => {
                    // Case-insensitive, and checked: a code no database uses would match nothing.
                    let mut codes = Vec::new();
                    for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                        let code = crate::enrich::countries::parse(c).map_err(|e| bad("country", c, &e))?;
                        codes.push(SqlValue::Text(code));
                    }
                    filters.push(in_list("country", codes));
                }
                "site" => filters.push(in_list("site", list(v))),
                "domain" => filters.push(domains(v)?),
                "comm" => filters.push(in_list("comm", list(v))),
                "verdict" => {
                    let values = list(v);
                    if values.is_empty()
                        || values
                            .iter()
                            .any(|x| !matches!(x, SqlValue::Text(t) if VERDICTS.contains(&t.as_str())))
                    {
                        return Err(bad(
                            "verdict",
                            v,
                            "allowed, violation or unclassified (comma-separated)",
                        ));
                    }
                    filters.push(in_list("verdict", values));
                }
                "direction" => {
                    if !matches!(v.as_str(), "inbound" | "outbound" | "unknown") {
                        return Err(bad("direction", v, "inbound, outbound or unknown"));
                    }
                    filters.push(("direction = ?".into(), vec![SqlValue::Text(v.clone())]));
                }
                "cloud_region" => {
                    let (provider, region) = match v.split_once(':') {
                        Some((p, r)) => (Some(p), r),
                        None => (None, v.as_str()),
                    };
                    if region.is_empty() {
                        return Err(bad(
                            "cloud_region",
                            v,
                            "a region, or provider:region, like aws:us-east-1 or oci:us-*",
                        ));
                    }
                    let pattern = region.replace('*', "%");
                    let mut cond = "cloud_region LIKE ?".to_owned();
                    let mut values = vec![SqlValue::Text(pattern)];
                    if let Some(p) = provider {
                        cond += " AND cloud_provider = ?";
                        values.push(SqlValue::Text(p.to_owned()));
                    }
                    filters.push((cond, values));
                }
                "cgroup" => {
                    // The cgroup and everything below it.
                    let path = v.trim_end_matches('/');
                    if !path.starts_with('/') {
                        return Err(bad(
                            "cgroup",
                            v,
                            "a cgroup path from the cgroup v2 root, like /payments/userdata",
                        ));
                    }
                    // Exact and case-sensitive (LIKE is neither: it ignores ASCII case and treats
                    // % and _ as wildcards).
                    let below = format!("{path}/");
                    filters.push((
                        "(cgroup = ? OR substr(cgroup, 1, length(?)) = ?)".into(),
                        vec![
                            SqlValue::Text(path.to_owned()),
                            SqlValue::Text(below.clone()),
                            SqlValue::Text(below),
                        ],
                    ));
                }
                "pid" => {
                    let pid: u32 = v.parse().map_err(|_| bad("pid", v, "a process id (a number)"))?;
                    filters.push(("pid = ?".into(), vec![SqlValue::Integer(pid as i64)]));
                }
                "port" => {
                    let port: u16 = v.parse().map_err(|_| bad("port", v, "a destination port (0-65535)"))?;
                    filters.push(("dst_port = ?".into(), vec![SqlValue::Integer(port as i64)]));
                }
                "dst" => {
                    let net = v.parse::<IpNet>().or_else(|_| v.parse::<IpAddr>().map(IpNet::from)).map_err(
                        |_| bad("dst", v, "an address or CIDR, like 175.16.199.1 or 10.60.0.0/16"),
                    )?;
                    let (lo, hi) = (ip_bin(net.network()), ip_bin(net.broadcast()));
                    filters.push((
                        "dst_bin BETWEEN ? AND ?".into(),
                        vec![SqlValue::Blob(lo.to_vec()), SqlValue::Blob(hi.to_vec())],
                    ));
                }
                "group_by" => {
                    for part in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let key = GroupKey::ALL.iter().find(|(n, _)| *n == part).map(|(_, k)| *k).ok_or_else(|| {
                            bad("group_by", v, "one or more of class, country, cloud_region, site, destination, process, domain (comma-separated)")
                        })?;
                        if !group_by.contains(&key) {
                            group_by.push(key);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(FlowQuery { since, until, group_by, limit, filters })
    }

    /// What the answer depends on besides the store: two questions with the same identity have
    /// the same answer from the same store (times count only to the bucket they fall in).
    pub fn identity(&self, bucket: Duration) -> String {
        let bucket = bucket.as_secs().max(1) as i64;
        // Single flows are chosen by their own times, to the millisecond.
        let of = |t: DateTime<Utc>| match self.group_by.is_empty() {
            true => t.timestamp_millis(),
            false => t.timestamp().div_euclid(bucket),
        };
        format!(
            "{}..={} {:?} {} {:?}",
            of(self.since),
            of(self.until),
            self.group_by,
            self.limit,
            self.filters
        )
    }

    /// Start of the first store bucket the sums count: the bucket holding `since`.
    pub fn counted_from(&self, bucket: Duration) -> DateTime<Utc> {
        let bucket = bucket.as_secs().max(1) as i64;
        DateTime::from_timestamp(self.since.timestamp().div_euclid(bucket) * bucket, 0).unwrap_or(self.since)
    }

    /// Sums of bytes and packets (and flow counts) per group, largest first. Without
    /// `group_by`, one row per flow: the flows seen in the window (by their own first and last
    /// seen times). Sums take whole store buckets, from the one holding `since`.
    pub fn run(&self, conn: &Connection, bucket: Duration) -> rusqlite::Result<Vec<Map<String, Value>>> {
        let first_bucket = self.counted_from(bucket).timestamp();
        // A bucket overlaps [since, until) when it starts before until and ends after since.
        let mut conds = vec!["bucket >= ?".to_owned(), "bucket < ?".to_owned()];
        let mut values = vec![SqlValue::Integer(first_bucket), SqlValue::Integer(self.until.timestamp() + 1)];
        if self.group_by.is_empty() {
            // A flow's row in a bucket holds its bytes up to its last_seen there: a row last
            // seen before `since` holds none of the window's. (Group rows cannot be cut like
            // this: a flow's count is taken from its first row in the window.)
            let ms = |t: DateTime<Utc>| SqlValue::Text(t.to_rfc3339_opts(SecondsFormat::Millis, true));
            conds.extend(["last_seen >= ?".to_owned(), "first_seen <= ?".to_owned()]);
            values.extend([ms(self.since), ms(self.until)]);
        }
        for (c, v) in &self.filters {
            conds.push(format!("({c})"));
            values.extend(v.iter().cloned());
        }
        // Grouped: from the per-group sums, a few rows per bucket; one row per flow: from the
        // flow rows. Both filter on the same columns.
        let (columns, table, flows) = if self.group_by.is_empty() {
            (FLOW_COLUMNS.to_vec(), "flows", "COUNT(DISTINCT flow_id)".to_owned())
        } else {
            let cols: Vec<&str> = self.group_by.iter().flat_map(|g| g.columns().iter().copied()).collect();
            (cols, groups::TABLE, groups::flows_expression(first_bucket))
        };
        let group = if self.group_by.is_empty() { "flow_id".to_owned() } else { columns.join(", ") };
        let sql = format!(
            "SELECT {}, SUM(bytes), SUM(packets), {flows}, MIN(first_seen), MAX(last_seen)
             FROM {table} WHERE {} GROUP BY {group} ORDER BY SUM(bytes) DESC, {group} LIMIT {}",
            columns.join(", "),
            conds.join(" AND "),
            self.limit
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| {
            let mut m = Map::new();
            for (i, c) in columns.iter().enumerate() {
                let v = match (*c, r.get::<_, SqlValue>(i)?) {
                    ("internal", SqlValue::Integer(n)) => Value::Bool(n != 0),
                    ("cname_chain", v) => names_to_json(v),
                    (_, v) => sql_to_json(v),
                };
                m.insert((*c).into(), v);
            }
            let n = columns.len();
            m.insert("bytes".into(), Value::from(r.get::<_, i64>(n)?));
            m.insert("packets".into(), Value::from(r.get::<_, i64>(n + 1)?));
            m.insert("flows".into(), Value::from(r.get::<_, i64>(n + 2)?));
            m.insert("first_seen".into(), Value::from(r.get::<_, String>(n + 3)?));
            m.insert("last_seen".into(), Value::from(r.get::<_, String>(n + 4)?));
            Ok(m)
        })?;
        rows.collect()
    }
}

/// `domain=`: names, comma-separated; `*.example.com` stands for every name below
/// example.com. Names are compared in lower case, as records keep them.
fn domains(value: &str) -> Result<(String, Vec<SqlValue>), ParamError> {
    let expected = "names, or *.suffix for every name below one (api.example.com, *.example.com)";
    let mut conds = Vec::new();
    let mut values = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name = part.to_ascii_lowercase();
        let (suffix, exact) = match name.strip_prefix("*.") {
            Some(rest) => (Some(rest), None),
            None => (None, Some(name.as_str())),
        };
        let text = suffix.or(exact).unwrap_or_default();
        if text.is_empty() || text.contains('*') || text.starts_with('.') || text.ends_with('.') {
            return Err(bad("domain", value, expected));
        }
        match suffix {
            Some(s) => {
                let below = format!(".{s}");
                conds.push("substr(domain, -length(?)) = ?".to_owned());
                values.extend([SqlValue::Text(below.clone()), SqlValue::Text(below)]);
            }
            None => {
                conds.push("domain = ?".to_owned());
                values.push(SqlValue::Text(name.clone()));
            }
        }
    }
    if conds.is_empty() {
        return Err(bad("domain", value, expected));
    }
    Ok((conds.join(" OR "), values))
}

/// A stored list of names (comma-separated, null for none) as an array.
pub fn names_to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Text(t) if !t.is_empty() => Value::Array(t.split(',').map(Value::from).collect()),
        _ => Value::Array(Vec::new()),
    }
}

fn sql_to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::from(i),
        SqlValue::Real(f) => Value::from(f),
        SqlValue::Text(t) => Value::from(t),
        SqlValue::Blob(_) => Value::Null,
    }
}

/// RFC 3339 with seconds, for responses.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests;
