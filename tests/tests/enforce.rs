//! Enforcement: a class in `mode = "enforce"` cannot send to unapproved places (connect and
//! sendto fail with EPERM, no packet leaves), while an observing class and unclassified
//! processes are untouched. Enforcement attaches only to cgroups this test creates.

use integration_tests::{
    Agent,
    capture::Capture,
    records::u64_of,
    traffic::{Placement, Traffic},
    unique,
    world::{CN_V4, CN_V6, SITE_SG, US_V4, WAIT, World},
};
use serde_json::Value;

/// Tries a connection (`tcp-try`) or a datagram (`udp-try`) from `cgroup` on host a.
fn attempt(w: &World, cgroup: &str, what: &str, to: &str) -> Value {
    let dir = w.cg.dir(cgroup);
    Traffic::start(&Placement { netns: &w.topo.a, cgroup: &dir, uid: None }, &[what, to]).finish()
}

fn refused(v: &Value) -> bool {
    v["ok"] == false && v["errno"] == libc::EPERM
}

#[test]
fn an_enforcing_class_cannot_send_to_unapproved_places() {
    let w = World::new();
    w.cg.create("watch");
    let watch = unique("watch");
    let agent = Agent::start(&w.config(&format!(
        "mode = \"enforce\"\n\n[[classes]]\nname = \"{watch}\"\ncgroups = [\"{}\"]\napproved = [\"US\"]\n",
        w.cg.child_rel("watch")
    )));
    let cn = Capture::start(&w.topo.b, &format!("host {CN_V4} or host {CN_V6}"));
    let server = w.serve("[::]:443", 4);

    // The enforcing class: refused before any packet leaves, over IPv4, IPv6 and v4-mapped.
    let mut first_pid = None;
    for (what, to) in [
        ("tcp-try", format!("{CN_V4}:443")),
        ("tcp-try", format!("[{CN_V6}]:443")),
        ("tcp-try", format!("[::ffff:{CN_V4}]:443")),
        ("udp-try", format!("{CN_V4}:53")),
        ("udp-try", format!("[{CN_V6}]:53")),
    ] {
        let r = attempt(&w, "app", what, &to);
        assert!(refused(&r), "{what} {to}: {r}");
        first_pid.get_or_insert(u64_of(&r["pid"]));
    }
    // ... while its approved places work.
    for to in [format!("{US_V4}:443"), format!("{SITE_SG}:443")] {
        let r = attempt(&w, "app", "tcp-try", &to);
        assert_eq!(r["ok"], true, "{to}: {r}");
    }
    // The observing class and an unclassified process reach CN as before.
    for cgroup in ["watch", "plain"] {
        let r = attempt(&w, cgroup, "tcp-try", &format!("{CN_V4}:443"));
        assert_eq!(r["ok"], true, "{cgroup}: {r}");
    }
    server.finish();
    let seen = cn.packets();
    let from_app: Vec<&String> = seen.iter().filter(|l| l.contains("udp") || l.contains(".53:")).collect();
    assert!(from_app.is_empty(), "no datagram of the enforcing class reached CN: {from_app:?}");
    // Two connections reached CN (watch and plain), each with its SYN: nothing else tried.
    let syns = seen.iter().filter(|l| l.contains(&format!("> {CN_V4}.443: Flags [S]"))).count();
    assert_eq!(syns, 2, "{seen:#?}");

    // Every refusal is a `blocked` alert naming the process; the observing class's is `observed`.
    let blocked = agent.wait_for("the blocked alert", WAIT, |v| {
        v["type"] == "alert"
            && v["action"] == "blocked"
            && v["destination"]["ip"] == CN_V4
            && v["destination"]["port"] == 443
    });
    assert_eq!(blocked["class"], w.class.as_str(), "{blocked}");
    assert_eq!(blocked["process"]["pid"], first_pid.unwrap(), "{blocked}");
    assert_eq!(blocked["process"]["comm"], "em-traffic", "{blocked}");
    assert_eq!(blocked["direction"], "outbound", "{blocked}");
    assert_eq!((u64_of(&blocked["bytes"]), u64_of(&blocked["packets"])), (0, 0), "nothing left: {blocked}");
    assert!(blocked["reason"].as_str().unwrap().contains("CN"), "{blocked}");
    let observed = agent.wait_for("the observing class's alert", WAIT, |v| {
        v["type"] == "alert" && v["class"] == watch.as_str()
    });
    assert_eq!(observed["action"], "observed", "{observed}");
    for port in [53, 443] {
        agent.wait_for("blocked alerts over IPv6 too", WAIT, |v| {
            v["action"] == "blocked" && v["destination"]["ip"] == CN_V6 && v["destination"]["port"] == port
        });
    }

    // Inbound: a viewer in CN cannot connect to the class's server (its SYN is dropped), a
    // viewer in the US can.
    let a = w.topo.a_v4.to_string();
    let app = w.cg.dir("app");
    let mut listener = Traffic::start(
        &Placement { netns: &w.topo.a, cgroup: &app, uid: None },
        &["tcp-serve", "0.0.0.0:8443", "0", "1"],
    );
    listener.next_report();
    let from = |ip: &str| {
        let server = w.cg.dir("server");
        Traffic::start(
            &Placement { netns: &w.topo.b, cgroup: &server, uid: None },
            &["tcp-try", &format!("{a}:8443"), "--from", ip],
        )
        .finish()
    };
    let cn_viewer = from(CN_V4);
    assert_eq!(
        (&cn_viewer["ok"], &cn_viewer["errno"]),
        (&false.into(), &libc::ETIMEDOUT.into()),
        "{cn_viewer}"
    );
    let us_viewer = from(US_V4);
    assert_eq!(us_viewer["ok"], true, "{us_viewer}");
    let listener_pid = listener.pid();
    listener.finish();
    let refused = agent.wait_for("the blocked viewer", WAIT, |v| {
        v["action"] == "blocked" && v["direction"] == "inbound" && v["destination"]["ip"] == CN_V4
    });
    assert_eq!(refused["process"]["pid"], listener_pid, "the listener's process: {refused}");
    assert!(u64_of(&refused["bytes"]) > 0 && u64_of(&refused["packets"]) >= 1, "the dropped SYNs: {refused}");

    // Blocks are counted per class.
    let status: Value = serde_json::from_str(&agent.cli(&["status", "-o", "json"])).unwrap();
    let class = status["classes"].as_array().unwrap().iter().find(|c| c["name"] == w.class.as_str()).unwrap();
    assert_eq!(class["mode"], "enforce", "{class}");
    // With tables in force, the kernel announces only classified flows they do not approve:
    // the observing class's connection to CN. The enforcing class's approved flows (US, the
    // site, the US viewer) and the unclassified one were found by sweeps.
    assert_eq!(status["events"]["new_flow"], 1, "{}", status["events"]);
    assert!(u64_of(&class["blocked"]) >= 6, "five refused sends and the viewer's SYNs: {class}");
    let metrics = integration_tests::api::Api::unix(&agent.dir().join("api.sock")).get("/metrics").text;
    assert!(metrics.contains(&format!("egress_monitor_blocked_total{{class=\"{}\"}}", w.class)), "{metrics}");
    drop(agent);
}

/// The country database as the world writes it, with `cn` placed in `country`: replaced on
/// disk by rename, as geoipupdate does.
fn replace_country_db(w: &World, country: &str) {
    let db = monitor::enrich::fixtures::geoip2_country(&[
        ("175.16.199.0/24", Some(country), Some(country)),
        ("216.160.83.0/24", Some("US"), Some("US")),
        ("130.61.0.0/16", Some("DE"), Some("DE")),
        ("2001:db8:86::/48", Some("CN"), Some("CN")),
        ("2001:db8:1::/48", Some("US"), Some("US")),
    ]);
    let tmp = w.files.path().join("country.mmdb.new");
    std::fs::write(&tmp, db).unwrap();
    std::fs::rename(&tmp, w.files.path().join("country.mmdb")).unwrap();
}

#[test]
fn enforcement_follows_the_database_outlives_the_agent_and_detach_removes_it() {
    let w = World::new();
    let config = w.config("mode = \"enforce\"\n").replace("[geoip]\n", "[geoip]\nreload_interval = \"1s\"\n");
    let mut agent = Agent::start(&config);
    // Attempts that get through while the kernel's answer changes each take a connection.
    let _server = w.serve("0.0.0.0:443", 1000);
    let cn = format!("{CN_V4}:443");
    assert!(refused(&attempt(&w, "app", "tcp-try", &cn)));

    // The database now places the address in the US: the kernel's answer follows within a
    // reload interval (and a compile).
    replace_country_db(&w, "US");
    integration_tests::eventually("the kernel lets the address through", WAIT, || {
        (attempt(&w, "app", "tcp-try", &cn)["ok"] == true).then_some(())
    });
    replace_country_db(&w, "CN");
    integration_tests::eventually("the kernel refuses the address again", WAIT, || {
        refused(&attempt(&w, "app", "tcp-try", &cn)).then_some(())
    });

    // SIGKILL: no agent, the kernel goes on refusing.
    agent.kill();
    assert!(refused(&attempt(&w, "app", "tcp-try", &cn)), "enforcement outlives the agent");
    // `detach` removes it.
    agent.detach();
    let r = attempt(&w, "app", "tcp-try", &cn);
    assert_eq!(r["ok"], true, "after detach: {r}");
}

#[test]
fn a_reload_changes_the_policy_in_the_kernel_and_refuses_what_needs_a_restart() {
    let w = World::new();
    let mut agent = Agent::start(&w.config("mode = \"enforce\"\n"));
    let _server = w.serve("0.0.0.0:443", 10);
    let cn = format!("{CN_V4}:443");
    assert!(refused(&attempt(&w, "app", "tcp-try", &cn)));

    // A change the reload cannot apply is refused as a whole, naming the key: the policy
    // change in the same file is not applied either.
    let line = agent.reload(|c| {
        c.replace("approved = [\"US\", ", "approved = [\"US\", \"CN\", ")
            .replace("host = \"h1\"", "host = \"h2\"")
    });
    assert!(
        line.contains("not reloaded") && line.contains("agent") && line.contains("need a restart"),
        "{line}"
    );
    assert!(refused(&attempt(&w, "app", "tcp-try", &cn)), "nothing applied");
    // A file that does not load is refused with its file, line and key.
    let line = agent.reload(|c| {
        c.replace("host = \"h2\"", "host = \"h1\"").replace("mode = \"enforce\"", "mode = \"block\"")
    });
    assert!(
        line.contains("not reloaded") && line.contains("egress-monitor.toml") && line.contains("mode"),
        "{line}"
    );
    assert!(refused(&attempt(&w, "app", "tcp-try", &cn)), "nothing applied");

    // The class now approves CN: the kernel lets it through, and flows there are no violation.
    let line = agent.reload(|c| c.replace("mode = \"block\"", "mode = \"enforce\""));
    assert!(line.contains("reloaded"), "{line}");
    let r = attempt(&w, "app", "tcp-try", &cn);
    assert_eq!(r["ok"], true, "CN approved now: {r}");
    let flow = agent.wait_for("the approved flow to CN", WAIT, |v| {
        v["type"] == "flow" && v["destination"]["ip"] == CN_V4 && v["process"]["pid"] == r["pid"]
    });
    assert_eq!(flow["verdict"], "allowed", "{flow}");

    // Back to observe: CN unapproved again, but nothing refuses; the flow is a violation.
    let line = agent.reload(|c| c.replace("\"CN\", ", "").replace("mode = \"enforce\"\n", ""));
    assert!(line.contains("reloaded"), "{line}");
    let r = attempt(&w, "app", "tcp-try", &cn);
    assert_eq!(r["ok"], true, "observing only: {r}");
    let flow = agent.wait_for("the violation to CN", WAIT, |v| {
        v["type"] == "flow" && v["destination"]["ip"] == CN_V4 && v["process"]["pid"] == r["pid"]
    });
    assert_eq!(flow["verdict"], "violation", "{flow}");
    // Enforcement is detached from the class's cgroup (status follows at the next sweep).
    integration_tests::eventually("enforcement detached", WAIT, || {
        let status: Value = serde_json::from_str(&agent.cli(&["status", "-o", "json"])).unwrap();
        (status["kernel"]["enforcing_cgroups"].as_array().map(Vec::len) == Some(0)).then_some(())
    });
}
