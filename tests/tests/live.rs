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
    // Agents of tests running at once see each other's traffic: only this test's cgroup.
    let app = format!("{}/app", w.cg.rel);
    let flows = |args: &[&str]| {
        let mut all = vec!["flows", "--dst", CN_V4, "--direction", "outbound", "--cgroup", &app];
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
    assert!(table.lines().next().unwrap().contains(" counted up to "), "{table}");
    // The class's view: the one socket and its one flow, tracked now.
    let status: Value = serde_json::from_str(&agent.cli(&["status", "-o", "json"])).unwrap();
    let class = &status["classes"][0];
    assert_eq!((&class["flows_tracked"], &class["sockets_tracked"]), (&1.into(), &1.into()), "{class}");

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
    let heading = table.lines().next().unwrap();
    assert!(
        heading.contains(&format!(
            "sums from {} (whole store buckets)",
            wider["counted_from"].as_str().unwrap()
        )),
        "{table}"
    );
}

#[test]
fn sockets_open_before_the_agent_get_their_process_and_direction() {
    let w = World::new();
    let a = w.topo.a_v4.to_string();
    let (app, server_cg) = (w.cg.dir("app"), w.cg.dir("server"));
    let place = |netns, cgroup| Placement { netns, cgroup, uid: None };
    // Before the agent: a classified listener with a connection it accepted, and a classified
    // client's connection out, both holding their connections open.
    let mut listener = Traffic::start(&place(&w.topo.a, &app), &["tcp-serve", "0.0.0.0:7000", "500", "2"]);
    listener.next_report();
    let listener_pid = listener.pid();
    let mut viewer = Traffic::start(
        &place(&w.topo.b, &server_cg),
        &["tcp-send", &format!("{a}:7000"), "1000", "1", "--hold"],
    );
    let viewer_port = port(&viewer.next_report()["local"]);
    let server = w.serve("0.0.0.0:443", 1);
    let mut client = Traffic::start(
        &place(&w.topo.a, &app),
        &["tcp-send", &format!("{CN_V4}:443"), "2000", "1", "--hold"],
    );
    let client_port = port(&client.next_report()["local"]);
    let client_pid = client.pid();

    let agent = Agent::start(&w.config(""));
    let status: Value = serde_json::from_str(&agent.cli(&["status", "-o", "json"])).unwrap();
    let at_start = &status["kernel"]["sockets_at_start"];
    assert!(u64_of(&at_start["listening"]) >= 1 && u64_of(&at_start["seeded"]) >= 3, "{at_start}");
    // (Sockets of other tests running at once may close during the scan: counted as failed.)
    let table = agent.cli(&["status"]);
    let line = table.lines().find(|l| l.contains("sockets at start")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains(&format!("{} found (", at_start["found"])), "{table}");

    // A connection accepted after the agent started, from the listener that was already there.
    viewer.release();
    viewer.finish();
    let later =
        Traffic::start(&place(&w.topo.b, &server_cg), &["tcp-send", &format!("{a}:7000"), "1000", "1"]);
    let later_port = port(&later.finish()["locals"][0]);
    client.release();
    client.finish();
    server.finish();
    listener.finish();

    let check = |rec: &Value, pid: u32, direction: &str| {
        assert_eq!(rec["class"], w.class.as_str(), "{rec}");
        assert_eq!(rec["direction"], direction, "{rec}");
        assert_eq!(rec["process"]["pid"], pid, "{rec}");
        assert_eq!(rec["process"]["comm"], "em-traffic", "{rec}");
    };
    // The listener's side of both connections: inbound, its process.
    check(&w.ended(&agent, 7000, viewer_port), listener_pid, "inbound");
    check(&w.ended(&agent, 7000, later_port), listener_pid, "inbound");
    // The client's connection out: outbound, its process.
    check(&w.ended(&agent, client_port, 443), client_pid, "outbound");
}
