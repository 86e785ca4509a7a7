//! A configuration reload (SIGHUP) while traffic flows: a new class list classifies new sockets
//! at once, a new site places their destination, and a transfer in progress loses no byte.

use std::process::Command;

use integration_tests::{
    Agent, built_binary,
    records::{assert_tcp_bytes, port, u64_of},
    traffic::{Placement, Traffic},
    unique,
    world::{CN_V4, US_V4, World},
};

#[test]
fn a_reload_classifies_new_sockets_and_a_transfer_in_progress_loses_no_byte() {
    const BIG: u64 = 6_000_000;
    let w = World::new();
    let mut agent = Agent::start(&w.config(""));
    // One server for the long transfer, one for the short connections (each serves in turn).
    let long_server = w.serve("0.0.0.0:443", 1);
    let short_server = w.serve("0.0.0.0:8443", 4);
    // From the classified `app` cgroup, across both reloads: 6 MB in 64 KiB writes 100 ms apart
    // (about 9 s).
    let mut big = Traffic::start(
        &Placement { netns: &w.topo.a, cgroup: &w.cg.dir("app"), uid: None },
        &["tcp-send", &format!("{US_V4}:443"), &BIG.to_string(), "1", "--pace", "100"],
    );
    let big_port = port(&big.next_report()["local"]);

    // Before the reload, `plain` belongs to no class.
    let (_, ports) = w.send("plain", &format!("{CN_V4}:8443"), 1000, 1);
    let before = w.ended(&agent, ports[0], 8443);
    assert_eq!(before["verdict"], "unclassified", "{before}");

    // A second class for `plain`, approved only at a new site that holds CN_V4; and a new class
    // is added after the existing one (a class keeps its id while the agent runs).
    let second = unique("class");
    let plain = w.cg.child_rel("plain");
    let line = agent.reload(|c| {
        format!(
            "{c}\n[[classes]]\nname = \"{second}\"\ncgroups = [\"{plain}\"]\napproved = [\"dc-test\"]\n\n\
             [[sites]]\nname = \"dc-test\"\ncountry = \"CN\"\ncidrs = [\"175.16.199.0/24\"]\n"
        )
    });
    assert!(line.contains("the configuration was reloaded"), "{line}");
    let (pid, ports) = w.send("plain", &format!("{CN_V4}:8443"), 1000, 1);
    let after = w.ended(&agent, ports[0], 8443);
    assert_eq!(after["class"], second.as_str(), "{after}");
    assert_eq!(u64_of(&after["process"]["pid"]), pid as u64);
    assert_eq!(after["destination"]["site"], "dc-test", "{after}");
    assert_eq!(after["verdict"], "allowed", "{after}");
    assert_tcp_bytes(&after, 1000, false);
    // The API takes the new class as a filter.
    let flows = agent.cli(&["flows", "--class", &second, "-o", "json"]);
    assert!(flows.contains(&ports[0].to_string()), "{flows}");

    let in_force = std::fs::read_to_string(&agent.config_path).unwrap();
    // A file that removes a class is refused whole: the site it also changes stays as it was.
    let line = agent.reload(|c| {
        let first_class = c.find("[[classes]]").unwrap();
        let second_class = c[first_class + 1..].find("[[classes]]").unwrap() + first_class + 1;
        format!("{}{}", &c[..first_class], &c[second_class..]).replace("dc-test", "dc-other")
    });
    assert!(line.contains("not reloaded") && line.contains("not removed, renamed or reordered"), "{line}");
    let (_, ports) = w.send("plain", &format!("{CN_V4}:8443"), 1000, 1);
    let again = w.ended(&agent, ports[0], 8443);
    assert_eq!(
        (&again["class"], &again["destination"]["site"]),
        (&second.as_str().into(), &"dc-test".into())
    );

    // New sinks: alerts now also go to syslog (a unix socket this test reads); records still go
    // to stdout, which the harness reads.
    let syslog_path = w.files.path().join("syslog.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&syslog_path).unwrap();
    syslog.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let line = agent.reload(|_| {
        format!(
            "{in_force}\n[[sinks]]\ntype = \"stdout\"\n\n[[sinks]]\ntype = \"syslog\"\naddress = \"unix://{}\"\n",
            syslog_path.display()
        )
    });
    assert!(line.contains("the configuration was reloaded"), "{line}");
    // A violation of the first class (CN is not approved for it) raises an alert to both.
    let (app_pid, _) = w.send("app", &format!("{CN_V4}:8443"), 100, 1);
    let mut buf = [0u8; 8192];
    let n = syslog.recv(&mut buf).expect("an alert on the syslog sink added by the reload");
    let message = String::from_utf8_lossy(&buf[..n]);
    assert!(message.contains(&w.class) && message.contains(CN_V4), "{message}");
    let alert = agent.wait_for("the alert on stdout", integration_tests::world::WAIT, |v| {
        v["type"] == "alert" && v["destination"]["ip"] == CN_V4 && v["process"]["pid"] == app_pid
    });
    assert_eq!(alert["class"], w.class.as_str(), "{alert}");

    // A file with an error is refused with the message check-config prints for it.
    let line =
        agent.reload(|c| format!("{c}\n[[classes]]\nname = \"third\"\nuids = [7]\nmode = \"block\"\n"));
    let check = Command::new(built_binary("egress-monitor"))
        .args(["check-config", "--config"])
        .arg(&agent.config_path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    let message = stderr.lines().next().unwrap().trim_start_matches("error: ");
    assert!(
        line.contains("not reloaded") && line.contains(message),
        "{line}
check-config: {message}"
    );

    // The transfer went on through the reloads: every byte, in one flow, under its class.
    assert!(big.running(), "the transfer ended before the reloads: pace it slower");
    big.finish();
    long_server.finish();
    short_server.finish();
    let r = w.ended(&agent, big_port, 443);
    assert_eq!(r["class"], w.class.as_str(), "{r}");
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_tcp_bytes(&r, BIG, false);
}
