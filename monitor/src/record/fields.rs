//! The field tables: one row per field of a record, saying how that field appears in every
//! encoding besides the record's own JSON: its store column (ClickHouse rows and API answers
//! are read from the store, so they follow it) and its syslog parameter. The store writer, the
//! ClickHouse exporter, the store's alert query and the syslog sink all walk these tables
//! rather than naming fields themselves; a test fails when a record gains a field its table
//! does not list.

use std::{borrow::Cow, net::IpAddr};

use super::{Alert, FlowRecord, Timestamp};

/// One field's value, as the encodings need it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Text(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Time(Timestamp),
    /// An address as 16 bytes (IPv4 mapped into IPv6), so CIDR filters are byte ranges.
    Address([u8; 16]),
}

impl Value<'_> {
    /// The value as syslog parameters and chat text show it ("" for null).
    pub fn text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Text(t) => t.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Time(t) => t.rfc3339(),
            Value::Address(a) => a.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

fn text<'a>(s: impl Into<Cow<'a, str>>) -> Value<'a> {
    Value::Text(s.into())
}

fn opt_text(s: Option<&str>) -> Value<'_> {
    s.map_or(Value::Null, |s| Value::Text(s.into()))
}

fn opt_int(n: Option<impl Into<i64>>) -> Value<'static> {
    n.map_or(Value::Null, |n| Value::Int(n.into()))
}

/// A list of names as the store, ClickHouse and syslog keep it: comma-separated (names escape
/// a comma in a label), null when empty.
fn names(list: &[std::sync::Arc<str>]) -> Value<'static> {
    if list.is_empty() {
        return Value::Null;
    }
    Value::Text(list.iter().map(|n| &**n).collect::<Vec<_>>().join(",").into())
}

fn ip(ip: IpAddr) -> Value<'static> {
    Value::Text(ip.to_string().into())
}

/// An address as 16 bytes (IPv4 mapped into IPv6).
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// How the store keeps a column, and what ClickHouse (whose schema has no NULL) gets for it:
/// text ("" for null), an integer (0 for null), or a time (Unix seconds). A list is stored as
/// comma-separated text, and API answers show it as an array again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    List,
    Int,
    Bool,
    Time,
    Address,
}

/// One field of a record `R` and its place in each encoding.
pub struct Field<R> {
    /// Where the value sits in the record's JSON ("process.pid"), and in API answers.
    pub path: &'static str,
    /// False for a value the record does not carry as a field (a column derived from it).
    pub in_record: bool,
    /// Column in the store; None: not stored.
    pub column: Option<&'static str>,
    /// Sent to ClickHouse (read back from the store column, under the same name).
    pub clickhouse: bool,
    /// Part of API answers read back from the store.
    pub api: bool,
    pub kind: Kind,
    /// Parameter name in syslog structured data and RFC 3164 pairs; None: not sent.
    pub syslog: Option<&'static str>,
    pub value: for<'r> fn(&'r R) -> Value<'r>,
}

impl<R> Field<R> {
    const fn new(path: &'static str, kind: Kind, value: for<'r> fn(&'r R) -> Value<'r>) -> Self {
        Field {
            path,
            in_record: true,
            column: None,
            clickhouse: false,
            api: false,
            kind,
            syslog: None,
            value,
        }
    }

    /// Stored in `column`, exported to ClickHouse and shown in API answers.
    const fn stored(mut self, column: &'static str) -> Self {
        self.column = Some(column);
        self.clickhouse = true;
        self.api = true;
        self
    }

    const fn not_exported(mut self) -> Self {
        self.clickhouse = false;
        self
    }

    const fn not_in_api(mut self) -> Self {
        self.api = false;
        self
    }

    const fn derived(mut self) -> Self {
        self.in_record = false;
        self
    }

    const fn syslog(mut self, name: &'static str) -> Self {
        self.syslog = Some(name);
        self
    }
}

use Kind::*;

type A = Field<Alert>;
type F = Field<FlowRecord>;

/// The alert's fields, in store-column order (which is also ClickHouse's and the API's).
pub static ALERT: &[Field<Alert>] = &[
    A::new("type", Text, |a| text(a.kind)),
    A::new("id", Text, |a| text(&a.id)).stored("id").syslog("id"),
    A::new("time", Time, |a| Value::Time(a.time)).stored("time"),
    A::new("time_unix", Int, |a| Value::Int(a.time.0.timestamp()))
        .derived()
        .stored("time_unix")
        .not_exported()
        .not_in_api(),
    A::new("host", Text, |a| text(&*a.host)).stored("host"),
    A::new("class", Text, |a| text(&*a.class)).stored("class").syslog("class"),
    A::new("severity", Text, |a| text(a.severity.name())).stored("severity").syslog("severity"),
    A::new("action", Text, |a| text(a.action.name())).stored("action").syslog("action"),
    A::new("reason", Text, |a| text(&a.reason)).stored("reason"),
    A::new("direction", Text, |a| text(a.direction.name())).stored("direction").syslog("direction"),
    A::new("protocol", Text, |a| text(a.protocol.name())).stored("protocol").syslog("protocol"),
    A::new("process.pid", Int, |a| opt_int(a.process.pid)).stored("pid").syslog("pid"),
    A::new("process.tid", Int, |a| opt_int(a.process.tid)).stored("tid").not_exported(),
    A::new("process.comm", Text, |a| opt_text(a.process.comm.as_deref())).stored("comm").syslog("comm"),
    A::new("process.uid", Int, |a| Value::Int(a.process.uid.into())).stored("uid").syslog("uid"),
    A::new("process.cgroup", Text, |a| opt_text(a.process.cgroup.as_deref()))
        .stored("cgroup")
        .syslog("cgroup"),
    A::new("process.cgroup_id", Int, |a| Value::Int(a.process.cgroup_id as i64))
        .stored("cgroup_id")
        .not_exported(),
    A::new("destination.ip", Text, |a| ip(a.destination.ip)).stored("dst_ip").syslog("dst"),
    A::new("destination.port", Int, |a| opt_int(a.destination.port)).stored("dst_port").syslog("dport"),
    A::new("destination.domain", Text, |a| opt_text(a.destination.domain.as_deref()))
        .stored("domain")
        .syslog("domain"),
    A::new("destination.cname_chain", List, |a| names(&a.destination.cname_chain))
        .stored("cname_chain")
        .syslog("cname_chain"),
    A::new("destination.country", Text, |a| opt_text(a.destination.place.country.as_deref()))
        .stored("country")
        .syslog("country"),
    A::new("destination.subdivision", Text, |a| opt_text(a.destination.place.subdivision.as_deref()))
        .stored("subdivision")
        .syslog("subdivision"),
    A::new("destination.asn", Int, |a| opt_int(a.destination.place.asn)).stored("asn").syslog("asn"),
    A::new("destination.as_org", Text, |a| opt_text(a.destination.place.as_org.as_deref())).stored("as_org"),
    A::new("destination.cloud_provider", Text, |a| {
        opt_text(a.destination.place.cloud_provider.map(|p| p.name()))
    })
    .stored("cloud_provider"),
    A::new("destination.cloud_region", Text, |a| opt_text(a.destination.place.cloud_region.as_deref()))
        .stored("cloud_region"),
    // Syslog receivers get provider and region as one value ("oci:us-ashburn-1").
    A::new("destination.cloud", Text, |a| a.destination.place.cloud().map_or(Value::Null, text))
        .derived()
        .syslog("cloud_region"),
    A::new("destination.site", Text, |a| opt_text(a.destination.place.site.as_deref()))
        .stored("site")
        .syslog("site"),
    A::new("destination.internal", Bool, |a| Value::Bool(a.destination.place.internal))
        .stored("internal")
        .not_exported(),
    A::new("bytes", Int, |a| Value::Int(a.bytes as i64)).stored("bytes").syslog("bytes"),
    A::new("packets", Int, |a| Value::Int(a.packets as i64)).stored("packets").syslog("packets"),
    // Flows counted in the alert's totals: 1 when raised, then as alert updates say.
    A::new("flows", Int, |_| Value::Int(1)).derived().stored("flows"),
    A::new("first_seen", Time, |a| Value::Time(a.first_seen)).stored("first_seen"),
    A::new("last_seen", Time, |a| Value::Time(a.last_seen)).stored("last_seen"),
];

/// The flow record's fields, in ClickHouse column order. The store keeps one row per flow and
/// time bucket, adding each record's new bytes and packets to it.
pub static FLOW: &[Field<FlowRecord>] = &[
    F::new("type", Text, |r| text(r.kind)),
    F::new("time", Time, |r| Value::Time(r.time)),
    F::new("host", Text, |r| text(&*r.host)).stored("host"),
    F::new("flow_id", Text, |r| text(&r.flow_id)).stored("flow_id").not_exported(),
    // Start of the record's time bucket: the store fills it in (it knows the bucket size).
    F::new("bucket", Int, |_| Value::Null).derived().stored("bucket"),
    F::new("state", Text, |r| text(r.state.name())),
    F::new("class", Text, |r| opt_text(r.class.as_deref())).stored("class"),
    F::new("verdict", Text, |r| text(r.verdict.name())).stored("verdict"),
    F::new("direction", Text, |r| text(r.direction.name())).stored("direction"),
    F::new("protocol", Text, |r| text(r.protocol.name())).stored("protocol"),
    F::new("source.ip", Text, |r| ip(r.source.ip)).stored("src_ip"),
    F::new("source.port", Int, |r| opt_int(r.source.port)).stored("src_port"),
    F::new("destination.ip", Text, |r| ip(r.destination.ip)).stored("dst_ip"),
    F::new("destination.port", Int, |r| opt_int(r.destination.port)).stored("dst_port"),
    F::new("destination.domain", Text, |r| opt_text(r.destination.domain.as_deref())).stored("domain"),
    F::new("destination.cname_chain", List, |r| names(&r.destination.cname_chain)).stored("cname_chain"),
    F::new("dst_bin", Address, |r| Value::Address(ip16(r.destination.ip)))
        .derived()
        .stored("dst_bin")
        .not_exported()
        .not_in_api(),
    F::new("destination.country", Text, |r| opt_text(r.destination.place.country.as_deref()))
        .stored("country"),
    F::new("destination.subdivision", Text, |r| opt_text(r.destination.place.subdivision.as_deref()))
        .stored("subdivision"),
    F::new("destination.asn", Int, |r| opt_int(r.destination.place.asn)).stored("asn"),
    F::new("destination.as_org", Text, |r| opt_text(r.destination.place.as_org.as_deref())).stored("as_org"),
    F::new("destination.cloud_provider", Text, |r| {
        opt_text(r.destination.place.cloud_provider.map(|p| p.name()))
    })
    .stored("cloud_provider"),
    F::new("destination.cloud_region", Text, |r| opt_text(r.destination.place.cloud_region.as_deref()))
        .stored("cloud_region"),
    F::new("destination.site", Text, |r| opt_text(r.destination.place.site.as_deref())).stored("site"),
    F::new("destination.internal", Bool, |r| Value::Bool(r.destination.place.internal))
        .stored("internal")
        .not_exported(),
    F::new("process.pid", Int, |r| opt_int(r.process.pid)).stored("pid"),
    F::new("process.tid", Int, |r| opt_int(r.process.tid)),
    F::new("process.comm", Text, |r| opt_text(r.process.comm.as_deref())).stored("comm"),
    F::new("process.uid", Int, |r| Value::Int(r.process.uid.into())).stored("uid"),
    F::new("process.cgroup", Text, |r| opt_text(r.process.cgroup.as_deref())).stored("cgroup"),
    F::new("process.cgroup_id", Int, |r| Value::Int(r.process.cgroup_id as i64)),
    // The record's totals; the store sums each record's new bytes and packets instead.
    F::new("bytes", Int, |r| Value::Int(r.bytes as i64)),
    F::new("packets", Int, |r| Value::Int(r.packets as i64)),
    F::new("delta_bytes", Int, |r| Value::Int(r.delta_bytes as i64)).derived().stored("bytes"),
    F::new("delta_packets", Int, |r| Value::Int(r.delta_packets as i64)).derived().stored("packets"),
    F::new("first_seen", Time, |r| Value::Time(r.first_seen)).stored("first_seen"),
    F::new("last_seen", Time, |r| Value::Time(r.last_seen)).stored("last_seen"),
];

/// The stored fields of a table, in order.
pub fn stored<R>(table: &'static [Field<R>]) -> impl Iterator<Item = (&'static str, &'static Field<R>)> {
    table.iter().filter_map(|f| f.column.map(|c| (c, f)))
}

/// Where each of `names` sits among `table`'s stored columns, in [`stored`] order (a name the
/// table does not store is a programming error).
pub fn stored_positions<R>(table: &'static [Field<R>], names: &[&str]) -> Vec<usize> {
    let stored: Vec<&str> = stored(table).map(|(c, _)| c).collect();
    names
        .iter()
        .map(|n| stored.iter().position(|s| s == n).unwrap_or_else(|| panic!("no stored column {n}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Arc};

    use serde_json::Value as Json;

    use super::*;
    use crate::record::{CloudProvider, Destination, Severity};

    /// Every leaf path of a JSON document ("process.pid").
    fn leaves(v: &Json, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Json::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    leaves(v, &p, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }

    fn full_place() -> Destination {
        Destination {
            country: Some("US".into()),
            subdivision: Some("US-VA".into()),
            asn: Some(31898),
            as_org: Some("Oracle".into()),
            cloud_provider: Some(CloudProvider::Oci),
            cloud_region: Some("us-ashburn-1".into()),
            site: Some("dc-us-east".into()),
            internal: false,
        }
    }

    fn in_record<R>(table: &[Field<R>]) -> BTreeSet<String> {
        table.iter().filter(|f| f.in_record).map(|f| f.path.to_owned()).collect()
    }

    #[test]
    fn the_alert_table_lists_every_field_of_the_alert() {
        let r = FlowRecord::sample("192.0.2.1", 443, full_place());
        let a = Alert {
            kind: "alert",
            id: "x".into(),
            time: r.time,
            host: r.host.clone(),
            class: "c".into(),
            severity: Severity::High,
            action: Default::default(),
            reason: "r".into(),
            direction: r.direction,
            protocol: r.protocol,
            process: r.process.clone(),
            destination: r.destination.clone(),
            bytes: 1,
            packets: 1,
            first_seen: r.time,
            last_seen: r.time,
        };
        let mut json = BTreeSet::new();
        leaves(&serde_json::to_value(&a).unwrap(), "", &mut json);
        assert_eq!(in_record(ALERT), json, "record::fields::ALERT must list every field of Alert");
    }

    #[test]
    fn the_flow_table_lists_every_field_of_the_flow_record() {
        let r = FlowRecord::sample("192.0.2.1", 443, full_place());
        let mut json = BTreeSet::new();
        leaves(&serde_json::to_value(&r).unwrap(), "", &mut json);
        assert_eq!(in_record(FLOW), json, "record::fields::FLOW must list every field of FlowRecord");
    }

    #[test]
    fn values_come_from_the_right_fields() {
        let mut r = FlowRecord::sample("192.0.2.1", 443, full_place());
        r.destination.place = Arc::new(full_place());
        let json = serde_json::to_value(&r).unwrap();
        for f in FLOW.iter().filter(|f| f.in_record) {
            let mut v = &json;
            for part in f.path.split('.') {
                v = &v[part];
            }
            let expected = match v {
                Json::Null => String::new(),
                Json::String(s) => s.clone(),
                Json::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect::<Vec<_>>().join(","),
                other => other.to_string(),
            };
            assert_eq!((f.value)(&r).text(), expected, "{}", f.path);
        }
    }

    #[test]
    fn column_names_are_unique() {
        for columns in
            [stored(ALERT).map(|(c, _)| c).collect::<Vec<_>>(), stored(FLOW).map(|(c, _)| c).collect()]
        {
            let set: BTreeSet<_> = columns.iter().collect();
            assert_eq!(set.len(), columns.len(), "{columns:?}");
        }
    }
}
