//! Matching and reading the agent's JSON records in assertions.

use serde_json::Value;

use crate::TestCgroup;

/// Flow records of one test (by its cgroup), protocol, and ports.
pub fn flow<'a>(cg: &'a TestCgroup, proto: &'a str, sport: u16, dport: u16) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| {
        v["type"] == "flow"
            && v["protocol"] == proto
            && v["source"]["port"] == sport
            && v["destination"]["port"] == dport
            && v["process"]["cgroup"].as_str().is_some_and(|c| c.starts_with(&cg.rel))
    }
}

/// The final record of such a flow.
pub fn ended<'a>(cg: &'a TestCgroup, proto: &'a str, sport: u16, dport: u16) -> impl Fn(&Value) -> bool + 'a {
    let f = flow(cg, proto, sport, dport);
    move |v: &Value| f(v) && v["state"] == "ended"
}

/// Alerts raised for processes of one test.
pub fn alert_of<'a>(cg: &'a TestCgroup) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| {
        v["type"] == "alert" && v["process"]["cgroup"].as_str().is_some_and(|c| c.starts_with(&cg.rel))
    }
}

/// Port of an "ip:port" string.
pub fn port(endpoint: &Value) -> u16 {
    endpoint.as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

pub fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// TCP bytes at L3 as the kernel counts them: every packet carries IP + TCP headers with the
/// timestamp option (52 bytes on IPv4, 72 on IPv6), and the SYN (or SYN-ACK) 8 more option bytes.
pub fn assert_tcp_bytes(rec: &Value, payload: u64, ipv6: bool) {
    let packets = u64_of(&rec["packets"]);
    let header = if ipv6 { 72 } else { 52 };
    assert_eq!(u64_of(&rec["bytes"]), payload + header * packets + 8, "byte count of {rec}");
}
