//! Flow tagging end to end: the real agent and kernel programs, real traffic between network
//! namespaces, and exact facts in the records (bytes, packets, pid, comm, class, direction).

use std::time::Duration;

use integration_tests::{
    Agent, TestCgroup, Topology,
    records::{assert_tcp_bytes, ended, flow, port, u64_of},
    traffic::{Placement, Traffic},
    unique, unique_index,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

type Class<'a> = (&'a str, &'a [String], &'a [u32]);

/// Agent settings that make tests quick: flows end 300 ms after their socket closes.
fn config(classes: &[Class<'_>]) -> String {
    config_with("", classes)
}

/// As [`config`], with more `[agent]` settings.
fn config_with(agent: &str, classes: &[Class<'_>]) -> String {
    let mut c = format!(
        "[agent]\nflush_interval = \"1s\"\nsweep_interval = \"200ms\"\nclose_grace = \"300ms\"\nidle_timeout = \"30s\"\n\
         state_dir = \"{{agent_dir}}/state\"\n{agent}[api]\nsocket = \"{{agent_dir}}/api.sock\"\n"
    );
    for (name, cgroups, uids) in classes {
        c += &format!("\n[[classes]]\nname = {name:?}\ncgroups = {cgroups:?}\nuids = {uids:?}\n");
    }
    c
}

#[test]
fn tcp_ipv4_classified_and_unclassified_clients() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (classified, plain, server_cg) = (cg.create("classified"), cg.create("plain"), cg.create("server"));
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("classified")], &[])]));

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "10.99.0.2:8080", "100", "2"],
    );
    server.next_report();
    let server_pid = server.pid();
    let c1 = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &classified, uid: None },
        &["tcp-send", "10.99.0.2:8080", "1000"],
    );
    let c1_pid = c1.pid();
    let p1 = port(&c1.finish()["locals"][0]);
    let c2 = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &plain, uid: None },
        &["tcp-send", "10.99.0.2:8080", "700"],
    );
    let c2_pid = c2.pid();
    let p2 = port(&c2.finish()["locals"][0]);
    server.finish();

    let r1 = agent.wait_for("for the classified client", WAIT, ended(&cg, "tcp", p1, 8080));
    assert_eq!(r1["class"], class.as_str());
    assert_eq!(r1["direction"], "outbound");
    assert_eq!(r1["source"]["ip"], "10.99.0.1");
    assert_eq!(r1["destination"]["ip"], "10.99.0.2");
    assert_eq!(u64_of(&r1["process"]["pid"]), c1_pid as u64);
    assert_eq!(r1["process"]["comm"], "em-traffic");
    assert_eq!(r1["process"]["uid"], 0);
    assert_eq!(r1["process"]["cgroup"], cg.child_rel("classified"));
    assert_tcp_bytes(&r1, 1000, false);
    // SYN, ACK, data, FIN, and the ACKs of the reply: at least 5 packets.
    assert!((5..=7).contains(&u64_of(&r1["packets"])), "{r1}");

    let r2 = agent.wait_for("for the unclassified client", WAIT, ended(&cg, "tcp", p2, 8080));
    assert_eq!(r2["class"], Value::Null);
    assert_eq!(r2["direction"], "outbound");
    assert_eq!(u64_of(&r2["process"]["pid"]), c2_pid as u64);
    assert_eq!(r2["process"]["cgroup"], cg.child_rel("plain"));
    assert_tcp_bytes(&r2, 700, false);

    // The server's answers: accepted connections, attributed to the listening process.
    for p in [p1, p2] {
        let s = agent.wait_for("for the server side", WAIT, ended(&cg, "tcp", 8080, p));
        assert_eq!(s["direction"], "inbound");
        assert_eq!(s["class"], Value::Null);
        assert_eq!(u64_of(&s["process"]["pid"]), server_pid as u64);
        assert_eq!(s["process"]["cgroup"], cg.child_rel("server"));
        assert_tcp_bytes(&s, 100, false);
    }
    // A flow is reported as new first, then ended: exactly one of each for the client.
    let states: Vec<Value> =
        agent.records(flow(&cg, "tcp", p1, 8080)).iter().map(|r| r["state"].clone()).collect();
    assert_eq!(states.first(), Some(&Value::from("new")), "{states:?}");
    assert_eq!(states.iter().filter(|s| *s == "ended").count(), 1, "{states:?}");
}

#[test]
fn tcp_ipv6_accepted_flow_of_a_classified_server_is_inbound() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (server_cg, client_cg) = (cg.create("api"), cg.create("client"));
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("api")], &[])]));

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "[fd99::2]:9443", "5000", "1"],
    );
    server.next_report();
    let client = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &client_cg, uid: None },
        &["tcp-send", "[fd99::2]:9443", "300"],
    );
    let cport = port(&client.finish()["locals"][0]);
    let server_pid = server.pid();
    server.finish();

    let s = agent.wait_for("for the server's answer", WAIT, ended(&cg, "tcp", 9443, cport));
    assert_eq!(s["class"], class.as_str());
    assert_eq!(s["direction"], "inbound");
    assert_eq!(s["source"]["ip"], "fd99::2");
    assert_eq!(s["destination"]["ip"], "fd99::1");
    assert_eq!(u64_of(&s["process"]["pid"]), server_pid as u64);
    assert_eq!(s["process"]["comm"], "em-traffic");
    assert_tcp_bytes(&s, 5000, true);

    let c = agent.wait_for("for the client", WAIT, ended(&cg, "tcp", cport, 9443));
    assert_eq!(c["class"], Value::Null);
    assert_eq!(c["direction"], "outbound");
    assert_tcp_bytes(&c, 300, true);
}

#[test]
fn udp_sendto_and_connected_send_classified_by_uid() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let app = cg.create("app");
    let uid = 61000 + unique_index();
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[], &[uid])]));

    // Unconnected sendto over IPv4: 5 datagrams of 200 bytes, 28 bytes of headers each.
    let sendto = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: Some(uid) },
        &["udp-send", "10.99.0.2:5353", "200", "5"],
    );
    let sendto_pid = sendto.pid();
    let p1 = port(&sendto.finish()["local"]);
    // Connected send over IPv6: 3 datagrams of 100 bytes, 48 bytes of headers each.
    let connected = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: Some(uid) },
        &["udp-send", "[fd99::2]:5354", "100", "3", "--connect"],
    );
    let connected_pid = connected.pid();
    let p2 = port(&connected.finish()["local"]);

    let r = agent.wait_for("for the sendto flow", WAIT, ended(&cg, "udp", p1, 5353));
    assert_eq!(r["class"], class.as_str());
    assert_eq!(r["direction"], "outbound");
    assert_eq!(r["destination"]["ip"], "10.99.0.2");
    assert_eq!(u64_of(&r["packets"]), 5);
    assert_eq!(u64_of(&r["bytes"]), 5 * 228);
    assert_eq!(u64_of(&r["process"]["pid"]), sendto_pid as u64);
    assert_eq!(u64_of(&r["process"]["uid"]), uid as u64);
    assert_eq!(r["process"]["comm"], "em-traffic");

    let r = agent.wait_for("for the connected flow", WAIT, ended(&cg, "udp", p2, 5354));
    assert_eq!(r["class"], class.as_str());
    assert_eq!(r["destination"]["ip"], "fd99::2");
    assert_eq!(u64_of(&r["packets"]), 3);
    assert_eq!(u64_of(&r["bytes"]), 3 * 148);
    assert_eq!(u64_of(&r["process"]["pid"]), connected_pid as u64);
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_ports() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let app = cg.create("app");
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("app")], &[])]));
    // Each datagram: 40 (IPv6) + 8 (destination options) + 8 (UDP) + 100 bytes.
    let t = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["udp-send", "[fd99::2]:5355", "100", "3", "--dstopts"],
    );
    let p = port(&t.finish()["local"]);
    let r = agent.wait_for("for the flow with extension headers", WAIT, ended(&cg, "udp", p, 5355));
    assert_eq!(r["class"], class.as_str());
    assert_eq!(r["protocol"], "udp", "the transport protocol, not the extension header's");
    assert_eq!(u64_of(&r["destination"]["port"]), 5355);
    assert_eq!(u64_of(&r["packets"]), 3);
    assert_eq!(u64_of(&r["bytes"]), 3 * (40 + 8 + 8 + 100));
}

#[test]
fn a_uid_inside_a_user_namespace_is_not_the_host_uid() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let app = cg.create("app");
    let uid = 62000 + unique_index();
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[], &[uid])]));
    // Root on the host, `uid` inside a user namespace of its own.
    let (map_user, map_group) = (format!("--map-user={uid}"), format!("--map-group={uid}"));
    let t = Traffic::start_wrapped(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["unshare", "--user", &map_user, &map_group],
        &["udp-send", "10.99.0.2:5353", "200", "2"],
    );
    let pid = t.pid();
    let p = port(&t.finish()["local"]);
    let r = agent.wait_for("for the flow", WAIT, ended(&cg, "udp", p, 5353));
    assert_eq!(
        r["class"],
        serde_json::Value::Null,
        "uid {uid} only inside its namespace: not the class's uid"
    );
    assert_eq!(u64_of(&r["process"]["uid"]), 0, "the uid as the host sees it");
    assert_eq!(u64_of(&r["process"]["pid"]), pid as u64);
    assert_eq!(u64_of(&r["bytes"]), 2 * 228);
}

#[test]
fn udp_server_answering_a_client_is_inbound() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (server_cg, client_cg) = (cg.create("dns"), cg.create("client"));
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("dns")], &[])]));

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["udp-serve", "10.99.0.2:5300", "400", "2"],
    );
    server.next_report();
    let client = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &client_cg, uid: None },
        &["udp-send", "10.99.0.2:5300", "20", "2"],
    );
    let cport = port(&client.finish()["local"]);
    let server_pid = server.pid();
    server.finish();

    let r = agent.wait_for("for the server's answers", WAIT, ended(&cg, "udp", 5300, cport));
    assert_eq!(r["class"], class.as_str());
    assert_eq!(r["direction"], "inbound");
    assert_eq!(u64_of(&r["packets"]), 2);
    assert_eq!(u64_of(&r["bytes"]), 2 * 428);
    assert_eq!(u64_of(&r["process"]["pid"]), server_pid as u64);
}

#[test]
fn forked_child_in_a_classified_cgroup_is_attributed_to_itself() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (app, server_cg) = (cg.create("app"), cg.create("server"));
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("app")], &[])]));

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "10.99.0.2:8000", "0", "1"],
    );
    server.next_report();
    // The parent forks; the child connects and sends, then reports; the parent reports last.
    let mut parent = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["tcp-send", "10.99.0.2:8000", "64", "1", "--fork"],
    );
    let parent_pid = parent.pid();
    let child_report = parent.next_report();
    let child_pid = u64_of(&child_report["pid"]);
    let cport = port(&child_report["locals"][0]);
    let parent_report = parent.finish();
    assert_eq!(u64_of(&parent_report["child"]), child_pid);
    assert_ne!(child_pid, parent_pid as u64);
    server.finish();

    let r = agent.wait_for("for the child's flow", WAIT, ended(&cg, "tcp", cport, 8000));
    assert_eq!(u64_of(&r["process"]["pid"]), child_pid);
    assert_eq!(r["class"], class.as_str());
    assert_eq!(r["process"]["cgroup"], cg.child_rel("app"));
    assert_tcp_bytes(&r, 64, false);
}

#[test]
fn cgroup_created_after_the_agent_started_is_classified() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let server_cg = cg.create("server");
    let class = unique("class");
    // "late" does not exist when the agent starts.
    let mut agent = Agent::start(&config(&[(&class, &[cg.child_rel("late")], &[])]));
    agent.wait_stderr("does not exist (yet)", WAIT);

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "10.99.0.2:8001", "0", "1"],
    );
    server.next_report();
    // Created now, with a descendant; the client runs in the descendant right away.
    let app = cg.create("late/app");
    let client = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["tcp-send", "10.99.0.2:8001", "2000"],
    );
    let cport = port(&client.finish()["locals"][0]);
    server.finish();

    let r = agent.wait_for("for the client in the late cgroup", WAIT, ended(&cg, "tcp", cport, 8001));
    assert_eq!(r["class"], class.as_str());
    assert_eq!(r["process"]["cgroup"], cg.child_rel("late/app"));
    assert_tcp_bytes(&r, 2000, false);
}

#[test]
fn short_lived_connections_are_each_reported_exactly() {
    const N: usize = 25;
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (app, server_cg) = (cg.create("app"), cg.create("server"));
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("app")], &[])]));

    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "10.99.0.2:8002", "10", &N.to_string()],
    );
    server.next_report();
    let client = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["tcp-send", "10.99.0.2:8002", "150", &N.to_string()],
    );
    let client_pid = client.pid();
    let report = client.finish();
    server.finish();
    let ports: Vec<u16> = report["locals"].as_array().unwrap().iter().map(port).collect();
    assert_eq!(ports.len(), N);

    for p in ports {
        let r = agent.wait_for("for a short connection", WAIT, ended(&cg, "tcp", p, 8002));
        assert_eq!(r["class"], class.as_str());
        assert_eq!(u64_of(&r["process"]["pid"]), client_pid as u64);
        assert_tcp_bytes(&r, 150, false);
        assert_eq!(agent.records(ended(&cg, "tcp", p, 8002)).len(), 1, "one end per connection");
    }
}

#[test]
fn ring_buffer_losses_are_counted_and_every_flow_is_still_reported() {
    const PORTS: usize = 600;
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let app = cg.create("app");
    let class = unique("class");
    // The smallest ring buffer: room for a few dozen events. The kernel announces only flows
    // that break their class's policy: here, every flow (internal places are not allowed).
    let agent = Agent::start(
        &(config_with("ring_buffer_size = 4096\n", &[(&class, &[cg.child_rel("app")], &[])])
            + "internal = \"violation\"\n"),
    );
    // Stall the agent (as a busy host would) while a burst of new flows arrives.
    // SAFETY: signalling the agent we started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let burst = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["udp-send", "10.99.0.2:20000", "10", "1", "--ports", &PORTS.to_string()],
    );
    let sport = port(&burst.finish()["local"]);
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };

    let loss = agent.wait_for("reporting ring-buffer drops", WAIT, |v| {
        v["type"] == "loss" && v["ringbuf_drops"].as_u64().is_some_and(|d| d > 0)
    });
    // At most ~28 events of 144 bytes fit in 4096 bytes; the rest of the burst was dropped.
    assert!(u64_of(&loss["ringbuf_drops"]) >= (PORTS - 30) as u64, "{loss}");
    for i in 0..PORTS {
        let dport = 20000 + i as u16;
        let r = agent.wait_for("for every flow of the burst", WAIT, flow(&cg, "udp", sport, dport));
        assert_eq!(r["class"], class.as_str());
        assert_eq!(u64_of(&r["bytes"]), 38);
    }
}

#[test]
fn a_full_flow_map_counts_the_rest_as_overflow_with_every_byte() {
    const PORTS: u64 = 60;
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let app = cg.create("app");
    let class = unique("class");
    // 16 slots for the whole host: most of the burst finds the map full.
    let agent = Agent::start(&config_with("max_flows = 16\n", &[(&class, &[cg.child_rel("app")], &[])]));
    let burst = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["udp-send", "10.99.0.2:21000", "10", "1", "--ports", &PORTS.to_string()],
    );
    burst.finish();
    // Every datagram is 38 bytes at layer 3 (20 IP + 8 UDP + 10); each is in a flow record of
    // the class or in the class's overflow, never in both, never in neither.
    let deadline = std::time::Instant::now() + WAIT;
    let (flows, overflow, by_cgroup) = loop {
        let flows: u64 = agent
            .records(|v| v["type"] == "flow" && v["state"] == "ended" && v["class"] == class.as_str())
            .iter()
            .map(|r| u64_of(&r["bytes"]))
            .sum();
        let loss = agent.records(|v| v["type"] == "loss").last().cloned();
        let of_class = |list: &Value| {
            list.as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["class"] == class.as_str())
                .map(|o| u64_of(&o["bytes"]))
                .sum::<u64>()
        };
        let overflow = loss.as_ref().map_or(0, |l| of_class(&l["overflow_by_class"]));
        let by_cgroup = loss.as_ref().map_or(0, |l| of_class(&l["overflow_by_cgroup"]));
        if flows + overflow == PORTS * 38 || std::time::Instant::now() > deadline {
            break (flows, overflow, by_cgroup);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        flows + overflow,
        PORTS * 38,
        "flow records {flows} B + overflow {overflow} B:\n{}",
        agent.stderr()
    );
    assert!(overflow >= 38 * (PORTS - 16), "most of the burst overflowed: {overflow} B");
    assert_eq!(by_cgroup, overflow, "the cgroup's overflow is the class's");
    let loss = agent.records(|v| v["type"] == "loss").last().cloned().unwrap();
    let cgroups = loss["overflow_by_cgroup"].as_array().unwrap();
    assert!(cgroups.iter().any(|o| o["cgroup"] == cg.child_rel("app").as_str()), "{loss}");
    // Status and metrics say so too.
    let api = integration_tests::api::Api::unix(&agent.dir().join("api.sock"));
    let status = api.ok("/v1/status");
    assert!(u64_of(&status["losses"]["overflow_bytes"]) >= overflow, "{status}");
}

#[test]
fn a_connection_from_a_named_thread_carries_the_process_name() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let (app, server_cg) = (cg.create("app"), cg.create("server"));
    let class = unique("class");
    let agent = Agent::start(&config(&[(&class, &[cg.child_rel("app")], &[])]));
    let mut server = Traffic::start(
        &Placement { netns: &topo.b, cgroup: &server_cg, uid: None },
        &["tcp-serve", "10.99.0.2:8004", "10", "1"],
    );
    server.next_report();
    let mut client = Traffic::start(
        &Placement { netns: &topo.a, cgroup: &app, uid: None },
        &["tcp-send", "10.99.0.2:8004", "300", "1", "--thread", "worker-7"],
    );
    let pid = client.pid();
    let tid = u64_of(&client.next_report()["tid"]);
    assert_ne!(tid, pid as u64, "the sender is not the main thread");
    let p = port(&client.finish()["locals"][0]);
    server.finish();
    let r = agent.wait_for("the thread's connection", WAIT, ended(&cg, "tcp", p, 8004));
    assert_eq!(u64_of(&r["process"]["pid"]), pid as u64);
    assert_eq!(u64_of(&r["process"]["tid"]), tid);
    // The process's name (its thread-group leader's), not the thread's "worker-7".
    assert_eq!(r["process"]["comm"], "em-traffic", "{r}");
}
