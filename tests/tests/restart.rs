//! Counting never stops: the kernel programs and maps stay pinned when the agent exits (even by
//! SIGKILL), the next agent reports what they counted meanwhile, once, and `egress-monitor
//! detach` leaves nothing behind.

use std::{process::Command, time::Duration};

use integration_tests::{
    Agent, TestCgroup, Topology,
    api::Api,
    eventually,
    records::{assert_tcp_bytes, ended, port, u64_of},
    traffic::{Placement, Traffic},
    unique,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn config(class: &str, cgroup: &str, agent: &str) -> String {
    format!(
        "[agent]\nflush_interval = \"1s\"\nsweep_interval = \"200ms\"\nclose_grace = \"300ms\"\nidle_timeout = \"30s\"\n\
         state_dir = \"{{agent_dir}}/state\"\n{agent}[api]\nsocket = \"{{agent_dir}}/api.sock\"\n\n\
         [[classes]]\nname = {class:?}\ncgroups = [{cgroup:?}]\n"
    )
}

/// Bytes and packets the store holds for the outbound flows of `cgroup` to `dport`.
fn stored(api: &Api, cgroup: &str, dport: u16) -> (u64, u64) {
    let body = api.ok(&format!("/v1/flows?since=1h&cgroup={cgroup}&direction=outbound&port={dport}"));
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(b, p), r| (b + u64_of(&r["bytes"]), p + u64_of(&r["packets"])))
}

fn bpftool_json(args: &[&str]) -> Option<Value> {
    let out = Command::new("bpftool").args(args).arg("--json").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).unwrap())
}

fn attached_ids(root: &std::path::Path) -> Vec<u32> {
    bpftool_json(&["cgroup", "show", root.to_str().unwrap()])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|p| u64_of(&p["id"]) as u32)
        .collect()
}

#[test]
fn programs_stay_pinned_across_stops_and_detach_leaves_nothing() {
    let cg_root = monitor::cgroup::detect_root().unwrap();
    let cg = TestCgroup::new();
    cg.create("app");
    let mut agent = Agent::start(&config(&unique("class"), &cg.child_rel("app"), ""));
    let ids = agent.program_ids();
    assert_eq!(ids.len(), 10, "programs attached:\n{}", agent.stderr());
    assert!(agent.stderr().contains("start=\"fresh\""), "{}", agent.stderr());
    // The maps the programs use, to check they are freed too.
    let mut maps: Vec<u64> = Vec::new();
    for id in &ids {
        let p = bpftool_json(&["prog", "show", "id", &id.to_string()]).expect("program loaded");
        maps.extend(p["map_ids"].as_array().unwrap().iter().map(u64_of));
    }
    maps.sort();
    maps.dedup();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let status = agent.stop_with(signal);
        assert!(status.success(), "agent exit status {status} after signal {signal}");
        // A stopped agent leaves no socket behind, and the CLI says so plainly.
        let socket = agent.dir().join("api.sock");
        assert!(!socket.exists(), "{} left behind", socket.display());
        let out = Command::new(integration_tests::built_binary("egress-monitor"))
            .args(["status", "--config"])
            .arg(&agent.config_path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(&format!("no agent is running at {}", socket.display())), "{said}");
        let attached = attached_ids(&cg_root);
        for id in &ids {
            assert!(attached.contains(id), "program {id} detached by signal {signal}: {attached:?}");
        }
        agent.restart(|c| c);
        assert!(agent.stderr().contains("start=\"adopted\""), "{}", agent.stderr());
        assert_eq!(agent.program_ids(), ids, "the same programs are adopted");
        let status = Api::unix(&agent.dir().join("api.sock")).ok("/v1/status");
        assert_eq!(status["kernel"]["start"], "adopted", "{status}");
        assert!(status["kernel"]["agent_away_seconds"].as_f64().is_some_and(|a| a > 0.0), "{status}");
    }
    // Detach refuses while the agent runs, then removes everything once it has stopped.
    let out = Command::new(integration_tests::built_binary("egress-monitor"))
        .args(["detach", "--config"])
        .arg(&agent.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "detach while the agent runs must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"), "{out:?}");
    agent.kill();
    let said = agent.detach();
    assert!(said.contains("removed 1 program set(s): 10 program link(s)"), "{said}");
    assert!(!agent.pin_dir.exists(), "{} still exists", agent.pin_dir.display());
    let attached = attached_ids(&cg_root);
    for id in &ids {
        assert!(!attached.contains(id), "program {id} still attached after detach");
    }
    // Programs and maps are freed once the last reference goes (maps after an RCU grace period).
    eventually("every program and map freed", WAIT, || {
        let progs = ids.iter().all(|id| bpftool_json(&["prog", "show", "id", &id.to_string()]).is_none());
        let maps = maps.iter().all(|id| bpftool_json(&["map", "show", "id", &id.to_string()]).is_none());
        (progs && maps).then_some(())
    });
}

/// The agent is killed in the middle of a paced 5 MB transfer and while short connections
/// come and go; a new agent (`edit` may change its map layout) reports the rest, once.
fn killed_mid_transfer(edit: fn(String) -> String, expect_start: &str) {
    const N: usize = 20;
    const BIG: u64 = 5_000_000;
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (app, server_cg) = (cg.create("app"), cg.create("server"));
    let class = unique("class");
    let app_rel = cg.child_rel("app");
    let mut agent = Agent::start(&config(&class, &app_rel, ""));

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "10.99.0.2:8003", "10", &(N + 1).to_string()],
    );
    server.next_report();
    // 5 MB in 64 KiB writes 25 ms apart: about 2 s.
    let mut big = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["tcp-send", "10.99.0.2:8003", &BIG.to_string(), "1", "--pace", "25"],
    );
    let big_pid = big.pid();
    let big_port = port(&big.next_report()["local"]);
    std::thread::sleep(Duration::from_millis(700));
    agent.kill();
    // While no agent runs: the rest of the transfer, and short connections that open and close.
    let short = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["tcp-send", "10.99.0.2:8003", "150", &N.to_string()],
    );
    let short_pid = short.pid();
    let short_ports: Vec<u16> = short.finish()["locals"].as_array().unwrap().iter().map(port).collect();
    big.finish();
    server.finish();
    let before = agent.restart(edit);
    assert!(agent.stderr().contains(&format!("start=\"{expect_start}\"")), "{}", agent.stderr());

    let r = agent.wait_for("the end of the transfer", WAIT, ended(&cg, "tcp", big_port, 8003));
    assert_eq!(r["class"], class.as_str());
    assert_eq!(u64_of(&r["process"]["pid"]), big_pid as u64);
    let (bytes, packets) = (u64_of(&r["bytes"]), u64_of(&r["packets"]));
    let expected = BIG + 52 * packets + 8;
    assert!(bytes.abs_diff(expected) * 1000 <= expected, "{bytes} bytes reported, {expected} sent: {r}");
    assert!(
        before.iter().any(|v| v["type"] == "flow" && v["source"]["port"] == big_port),
        "the first agent saw the transfer start"
    );
    for p in &short_ports {
        let r =
            agent.wait_for("a short connection made while no agent ran", WAIT, ended(&cg, "tcp", *p, 8003));
        assert_eq!(r["class"], class.as_str());
        assert_eq!(u64_of(&r["process"]["pid"]), short_pid as u64);
        assert_eq!(r["process"]["comm"], "em-traffic");
        assert_tcp_bytes(&r, 150, false);
        let starts =
            agent.records(|v| v["type"] == "flow" && v["source"]["port"] == *p && v["state"] == "new");
        assert_eq!(starts.len(), 1, "reported once: {starts:?}");
    }
    // The store got every byte once: what the first agent stored plus what the second added.
    let api = Api::unix(&agent.dir().join("api.sock"));
    let short_total: u64 =
        short_ports.iter().map(|p| u64_of(&agent.records(ended(&cg, "tcp", *p, 8003))[0]["bytes"])).sum();
    eventually("the store holds every byte once", WAIT, || {
        (stored(&api, &app_rel, 8003)
            == (bytes + short_total, packets + stored_short_packets(&agent, &cg, &short_ports)))
            .then_some(())
    });
}

fn stored_short_packets(agent: &Agent, cg: &TestCgroup, ports: &[u16]) -> u64 {
    ports.iter().map(|p| u64_of(&agent.records(ended(cg, "tcp", *p, 8003))[0]["packets"])).sum()
}

#[test]
fn sigkill_mid_transfer_then_restart_reports_every_byte_once() {
    killed_mid_transfer(|c| c, "adopted");
}

#[test]
fn an_agent_with_another_map_layout_carries_the_old_counters_over() {
    // Other map sizes make another program set: the new agent switches counting to its own
    // and drains the old one, as an upgrade whose maps changed does.
    killed_mid_transfer(|c| c.replacen("[agent]\n", "[agent]\nmax_flows = 4096\n", 1), "replaced");
}
