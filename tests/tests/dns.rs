//! Names on flows: DNS answers received by the test's processes (from a stub resolver on
//! loopback, from a resolver on another host, over UDP and TCP, IPv4 and IPv6) name the flows
//! and alerts to the addresses they gave, per cgroup, for the answer's TTL plus the grace.

use integration_tests::{
    Agent,
    api::Api,
    records::{alert_of, u64_of},
    world::{US_V4, WAIT, World},
};
use serde_json::json;

/// A stub resolver on host a's loopback, as systemd-resolved listens on 127.0.0.53.
const STUB: &str = "127.0.0.53:53";

/// Every agent sees every DNS answer on the host, and tests run side by side: each test
/// resolves names to an address of its own (in the fixture's CN ranges), so that no test's
/// flow is named host-wide by another's answer.
fn own_address(w: &World, ip: &str) -> String {
    w.topo.add_remote_address(ip);
    ip.to_owned()
}

#[test]
fn a_flow_and_its_alert_carry_the_name_resolved_and_its_cname_chain() {
    let w = World::new();
    let cn = own_address(&w, "175.16.199.11");
    let agent = Agent::start(&w.config(""));
    let _dns = w.dns_server(
        false,
        STUB,
        60,
        &[
            "api.bytegraph-cn.example=edge.bytegraph-cn.example",
            "edge.bytegraph-cn.example=pop7.cdn.example",
            &format!("pop7.cdn.example={cn}"),
        ],
    );
    let server = w.serve("[::]:443", 2);
    let (addresses, ports) =
        w.resolve("app", STUB, "api.bytegraph-cn.example", &["--connect", "443", "1000"]);
    assert_eq!(addresses, [cn.as_str()]);
    // Never resolved: no name.
    let (_, plain) = w.send("app", &format!("{US_V4}:443"), 100, 1);
    server.finish();

    let r = w.ended(&agent, ports[0], 443);
    assert_eq!(r["destination"]["domain"], "api.bytegraph-cn.example", "{r}");
    assert_eq!(r["destination"]["cname_chain"], json!(["edge.bytegraph-cn.example", "pop7.cdn.example"]));
    assert_eq!(r["destination"]["country"], "CN");
    let unnamed = w.ended(&agent, plain[0], 443);
    assert!(unnamed["destination"]["domain"].is_null(), "{unnamed}");
    assert_eq!(unnamed["destination"]["cname_chain"], json!([]));

    let alert = agent.wait_for("the alert", WAIT, alert_of(&w.cg));
    assert_eq!(alert["destination"]["domain"], "api.bytegraph-cn.example");
    assert_eq!(alert["destination"]["cname_chain"], r["destination"]["cname_chain"]);

    // The store answers by name: a suffix, grouped, and a name that matches nothing (this
    // test's class: the agent also counts the flows of tests running beside it).
    let api = Api::unix(&agent.dir().join("api.sock"));
    let q = format!("/v1/flows?since=1h&domain=*.bytegraph-cn.example&class={}", w.class);
    let rows = integration_tests::eventually("the named flow in the store", WAIT, || {
        let v = api.ok(&q);
        (v["rows"].as_array().is_some_and(|r| !r.is_empty())).then_some(v)
    });
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["domain"], "api.bytegraph-cn.example");
    assert_eq!(rows[0]["cname_chain"], r["destination"]["cname_chain"]);
    assert_eq!(u64_of(&rows[0]["bytes"]), u64_of(&r["bytes"]));
    let grouped = api.ok(&format!("/v1/flows?since=1h&group_by=domain&class={}", w.class));
    let named: Vec<_> = grouped["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["domain"] == "api.bytegraph-cn.example")
        .collect();
    assert_eq!(named.len(), 1, "{grouped}");
    assert_eq!(u64_of(&named[0]["bytes"]), u64_of(&r["bytes"]));
    assert_eq!(api.ok("/v1/flows?since=1h&domain=*.example.org")["rows"], json!([]));
    // And so does the CLI.
    let out =
        agent.cli(&["flows", "--since", "1h", "--class", &w.class, "--domain", "api.bytegraph-cn.example"]);
    assert!(out.contains("api.bytegraph-cn.example"), "{out}");
    let status = api.ok("/v1/status");
    assert!(u64_of(&status["dns"]["answers"]) >= 1, "{status}");
}

#[test]
fn ipv6_over_tcp_from_another_host_and_a_malformed_answer_counted_and_ignored() {
    let w = World::new();
    let cn6 = own_address(&w, "2001:db8:86::12");
    let agent = Agent::start(&w.config(""));
    // A resolver on host b, asked over TCP (its answers come in two segments).
    let resolver = format!("{}:53", w.topo.b_v4);
    let _dns = w.dns_server(
        true,
        &resolver,
        60,
        &[
            "v6.bytegraph-cn.example=edge6.bytegraph-cn.example",
            &format!("edge6.bytegraph-cn.example={cn6}"),
            "bad.example=!malformed",
        ],
    );
    let server = w.serve("[::]:8443", 1);
    // The malformed answer first: counted, and the agent goes on.
    let (bad, _) = w.resolve("app", &resolver, "bad.example", &[]);
    assert!(bad.is_empty(), "{bad:?}");
    let (addresses, ports) = w.resolve(
        "app",
        &resolver,
        "v6.bytegraph-cn.example",
        &["--aaaa", "--tcp", "--connect", "8443", "700"],
    );
    assert_eq!(addresses, [cn6.as_str()]);
    server.finish();
    let r = w.ended(&agent, ports[0], 8443);
    assert_eq!(r["destination"]["ip"], cn6);
    assert_eq!(r["destination"]["domain"], "v6.bytegraph-cn.example", "{r}");
    assert_eq!(r["destination"]["cname_chain"], json!(["edge6.bytegraph-cn.example"]));
    let alert = agent.wait_for("the alert", WAIT, alert_of(&w.cg));
    assert_eq!(alert["destination"]["domain"], "v6.bytegraph-cn.example");

    let api = Api::unix(&agent.dir().join("api.sock"));
    // This test's is the only malformed answer on the host (the agent sees every test's DNS).
    let status = integration_tests::eventually("the malformed answer counted", WAIT, || {
        let s = api.ok("/v1/status");
        (u64_of(&s["dns"]["malformed"]) == 1).then_some(s)
    });
    let dns = &status["dns"];
    // The malformed message's bytes: its question (bad.example) and the broken answer.
    let question = 12 + "bad.example".len() + 2 + 4;
    assert_eq!(u64_of(&dns["malformed_bytes"]), (question + 16) as u64, "{dns}");
    assert!(u64_of(&dns["answers"]) >= 1, "{dns}");
    assert_eq!((u64_of(&dns["tcp_dropped"]), u64_of(&dns["truncated"])), (0, 0), "{dns}");
    assert_eq!(u64_of(&status["losses"]["dns_answers_lost"]), 0);
    let metrics = api.get("/metrics").text;
    assert!(metrics.contains("egress_monitor_losses_total{kind=\"dns_malformed\"} 1"), "{metrics}");
}

#[test]
fn each_cgroup_gets_its_own_name_and_the_host_s_only_when_it_resolved_nothing() {
    let w = World::new();
    w.cg.create("other");
    let cn = own_address(&w, "175.16.199.13");
    let agent = Agent::start(&w.config(""));
    let _dns = w.dns_server(
        false,
        STUB,
        60,
        &[&format!("api.bytegraph-cn.example={cn}"), &format!("mirror.example.net={cn}")],
    );
    let server = w.serve("[::]:443", 3);
    // The classified app resolves one name, then an unclassified process another name for the
    // same address; a third cgroup resolves nothing.
    w.resolve("app", STUB, "api.bytegraph-cn.example", &[]);
    w.resolve("plain", STUB, "mirror.example.net", &[]);
    let (_, app) = w.send("app", &format!("{cn}:443"), 100, 1);
    let (_, plain) = w.send("plain", &format!("{cn}:443"), 100, 1);
    let (_, other) = w.send("other", &format!("{cn}:443"), 100, 1);
    server.finish();
    assert_eq!(w.ended(&agent, app[0], 443)["destination"]["domain"], "api.bytegraph-cn.example");
    assert_eq!(w.ended(&agent, plain[0], 443)["destination"]["domain"], "mirror.example.net");
    // Named host-wide by the latest answer for the address.
    assert_eq!(w.ended(&agent, other[0], 443)["destination"]["domain"], "mirror.example.net");
    let alert = agent.wait_for("the alert", WAIT, alert_of(&w.cg));
    assert_eq!(alert["destination"]["domain"], "api.bytegraph-cn.example");
}

#[test]
fn a_name_expires_after_its_ttl_and_the_grace() {
    let w = World::new();
    let cn = own_address(&w, "175.16.199.14");
    let agent = Agent::start(&w.config("[dns]\ngrace = \"1s\"\n"));
    let _dns = w.dns_server(false, STUB, 1, &[&format!("api.bytegraph-cn.example={cn}")]);
    let server = w.serve("[::]:443", 2);
    w.resolve("app", STUB, "api.bytegraph-cn.example", &[]);
    // TTL 1 s + grace 1 s: gone after 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (_, late) = w.send("app", &format!("{cn}:443"), 100, 1);
    let (_, ports) = w.resolve("app", STUB, "api.bytegraph-cn.example", &["--connect", "443", "100"]);
    server.finish();
    let r = w.ended(&agent, late[0], 443);
    assert!(r["destination"]["domain"].is_null(), "{r}");
    assert_eq!(w.ended(&agent, ports[0], 443)["destination"]["domain"], "api.bytegraph-cn.example");
}
