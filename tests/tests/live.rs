//! Numbers as of the moment asked: answers hold active flows' running totals, windows choose
//! flows by their own times, and sockets opened before the agent get their process and
//! direction like any other.

use std::time::Duration;

use chrono::{DateTime, Utc};
use integration_tests::{
    Agent,
    records::{assert_tcp_bytes, port, u64_of},
    traffic::{Placement, Traffic},
    world::{CN_V4, World},
};
use serde_json::Value;

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap().into()
}

#[test]
fn answers_count_active_flows_up_to_the_moment_asked() {
    let w = World::new();
    // Flows are reported to the store when they start and when they end (a flush interval of an
    // hour): what an answer shows of an active flow comes from the read it asks for.
    let agent = Agent::start(&w.config("").replace("flush_interval = \"1s\"", "flush_interval = \"1h\""));
    let server = w.serve("0.0.0.0:443", 1);
    let mut client = Traffic::start(
        &Placement { netns: &w.topo.a, cgroup: &w.cg.dir("app"), uid: None },
        &["tcp-send", &format!("{CN_V4}:443"), "100000", "1", "--hold"],
    );
    let written = client.next_report();
    assert_eq!(written["event"], "written", "{written}");
    let sport = port(&written["local"]);
    let asked = Utc::now();
    let flows = |args: &[&str]| {
        let mut all = vec!["flows", "--dst", CN_V4, "--direction", "outbound"];
        all.extend(args);
        agent.cli(&all)
    };
    let answer: Value = serde_json::from_str(&flows(&["--since", "1h", "-o", "json"])).unwrap();
    assert_eq!(answer["live"], true, "{answer}");
    assert!(time(&answer["as_of"]) >= asked, "counted up to after the question: {answer}");
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{answer}");
    // Every byte the peer acknowledged, while the connection is still open.
    assert_tcp_bytes(&rows[0], 100_000, false);
    let live_packets = u64_of(&rows[0]["packets"]);
    // Grouped answers (and so top) count the same.
    let grouped: Value =
        serde_json::from_str(&flows(&["--since", "1h", "--group-by", "class", "-o", "json"])).unwrap();
    assert_eq!(grouped["rows"][0]["bytes"], rows[0]["bytes"], "{grouped}");
    let table = flows(&["--since", "1h"]);
    assert!(table.lines().last().unwrap().contains(" counted up to "), "{table}");

    client.release();
    client.finish();
    server.finish();
    // After the answer, the client sent its FIN and the ACK of the server's FIN, nothing else.
    let end = w.ended(&agent, sport, 443);
    assert_tcp_bytes(&end, 100_000, false);
    assert_eq!(u64_of(&end["packets"]), live_packets + 2, "{end}");

    // Windows choose flows by their own times, not by the store's minute buckets.
    let last_seen = time(&end["last_seen"]);
    while Utc::now() < last_seen + chrono::Duration::milliseconds(2500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let recent: Value = serde_json::from_str(&flows(&["--since", "2s", "-o", "json"])).unwrap();
    assert_eq!(recent["rows"].as_array().unwrap().len(), 0, "last seen more than 2 s ago: {recent}");
    let counted_from = time(&recent["counted_from"]);
    assert!(counted_from <= time(&recent["since"]) && counted_from.timestamp() % 60 == 0, "{recent}");
    let wider: Value = serde_json::from_str(&flows(&["--since", "30s", "-o", "json"])).unwrap();
    assert_eq!(wider["rows"].as_array().unwrap().len(), 1, "{wider}");
    let table = flows(&["--since", "30s"]);
    let footer = table.lines().last().unwrap();
    assert!(
        footer.contains(&format!(
            "sums from {} (whole store buckets)",
            wider["counted_from"].as_str().unwrap()
        )),
        "{table}"
    );
}
