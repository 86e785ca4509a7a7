//! Residency end to end: a classified client sends to hosts that fixture databases place on the
//! map (addresses that exist only in this test's namespaces), and the agent raises exactly the
//! alerts the policy calls for, with the right fields.

use std::time::Duration;

use integration_tests::{
    Agent, TestCgroup, Topology,
    records::{alert_of, ended, port, u64_of},
    traffic::{Placement, Traffic},
    unique,
};
use monitor::enrich::fixtures;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// Where the fixtures put the test's remote hosts.
const CN_V4: &str = "175.16.199.1";
const US_V4: &str = "216.160.83.56";
const OCI_FRANKFURT: &str = "130.61.1.1"; // country DE, cloud region oci:eu-frankfurt-1
const SITE_SG: &str = "10.60.1.1"; // site dc-sg-backup (SG)
const CN_V6: &str = "2001:db8:86::1";
const US_V6: &str = "2001:db8:1::1";

struct World {
    topo: Topology,
    cg: TestCgroup,
    agent: Agent,
    class: String,
    _files: tempfile::TempDir,
}

fn world() -> World {
    let topo = Topology::new();
    for a in [CN_V4, US_V4, OCI_FRANKFURT, SITE_SG, CN_V6, US_V6] {
        topo.add_remote_address(a);
    }
    let cg = TestCgroup::new();
    for c in ["app", "plain", "server"] {
        cg.create(c);
    }
    let files = tempfile::tempdir().unwrap();
    let country = fixtures::geoip2_country(&[
        ("175.16.199.0/24", Some("CN"), Some("CN")),
        ("216.160.83.0/24", Some("US"), Some("US")),
        ("130.61.0.0/16", Some("DE"), Some("DE")),
        ("2001:db8:86::/48", Some("CN"), Some("CN")),
        ("2001:db8:1::/48", Some("US"), Some("US")),
    ]);
    std::fs::write(files.path().join("country.mmdb"), country).unwrap();
    std::fs::write(
        files.path().join("oci.json"),
        fixtures::oci_ranges(&[
            ("eu-frankfurt-1", &["130.61.0.0/16"]),
            ("us-ashburn-1", &["129.213.0.0/16"]),
        ]),
    )
    .unwrap();
    let class = unique("class");
    let dir = files.path().display();
    let config = format!(
        r#"
[agent]
host = "h1"
flush_interval = "1s"
sweep_interval = "200ms"
close_grace = "300ms"

[geoip]
country_db = "{dir}/country.mmdb"
cloud_ranges = ["{dir}/oci.json"]

[[sites]]
name = "dc-sg-backup"
country = "SG"
cidrs = ["10.60.0.0/16"]

[[classes]]
name = "{class}"
cgroups = ["{app}"]
approved = ["US", "oci:eu-*", "dc-sg-backup"]
severity = "critical"
"#,
        app = cg.child_rel("app"),
    );
    let agent = Agent::start(&config);
    World { topo, cg, agent, class, _files: files }
}

impl World {
    fn serve(&self, listen: &str, connections: usize) -> Traffic {
        let mut s = Traffic::start(
            &Placement { netns: &self.topo.b, cgroup: &self.cg.dir("server"), uid: None },
            &["tcp-serve", listen, "0", &connections.to_string()],
        );
        s.next_report();
        s
    }

    /// Connects from cgroup `from` to `to` CONNECTIONS times; returns (pid, local ports).
    fn send(&self, from: &str, to: &str, bytes: usize, connections: usize) -> (u32, Vec<u16>) {
        let c = Traffic::start(
            &Placement { netns: &self.topo.a, cgroup: &self.cg.dir(from), uid: None },
            &["tcp-send", to, &bytes.to_string(), &connections.to_string()],
        );
        let pid = c.pid();
        let report = c.finish();
        (pid, report["locals"].as_array().unwrap().iter().map(port).collect())
    }

    fn ended(&self, sport: u16, dport: u16) -> Value {
        self.agent.wait_for("for the flow's end", WAIT, ended(&self.cg, "tcp", sport, dport))
    }
}

#[test]
fn violation_raises_exactly_one_alert_with_its_fields_and_approved_destinations_none() {
    let w = world();
    let server = w.serve("[::]:443", 6);
    // Classified: two connections to the CN host from one process (one alert), then one each
    // to the approved country, cloud region and site.
    let (cn_pid, cn_ports) = w.send("app", &format!("{CN_V4}:443"), 3000, 2);
    let (_, us_ports) = w.send("app", &format!("{US_V4}:443"), 100, 1);
    let (_, oci_ports) = w.send("app", &format!("{OCI_FRANKFURT}:443"), 100, 1);
    let (_, site_ports) = w.send("app", &format!("{SITE_SG}:443"), 100, 1);
    // Unclassified: the same CN destination raises nothing.
    let (_, plain_ports) = w.send("plain", &format!("{CN_V4}:443"), 100, 1);
    server.finish();

    let first = w.ended(cn_ports[0], 443);
    assert_eq!(first["verdict"], "violation");
    assert_eq!(first["destination"]["country"], "CN");
    let second = w.ended(cn_ports[1], 443);
    for (ports, country, region, site) in [
        (&us_ports, "US", Value::Null, Value::Null),
        (&oci_ports, "DE", Value::from("eu-frankfurt-1"), Value::Null),
        (&site_ports, "SG", Value::Null, Value::from("dc-sg-backup")),
    ] {
        let r = w.ended(ports[0], 443);
        assert_eq!(r["verdict"], "allowed", "{r}");
        assert_eq!(r["class"], w.class.as_str());
        assert_eq!(r["destination"]["country"], country);
        assert_eq!(r["destination"]["cloud_region"], region);
        assert_eq!(r["destination"]["site"], site);
    }
    let plain = w.ended(plain_ports[0], 443);
    assert_eq!((plain["verdict"].as_str(), plain["class"].is_null()), (Some("unclassified"), true));

    let alerts = w.agent.records(alert_of(&w.cg));
    assert_eq!(alerts.len(), 1, "exactly one alert: {alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["host"], "h1");
    assert_eq!(a["class"], w.class.as_str());
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["reason"], format!("destination country CN is not approved for class {}", w.class));
    assert_eq!((a["direction"].as_str(), a["protocol"].as_str()), (Some("outbound"), Some("tcp")));
    assert_eq!(u64_of(&a["process"]["pid"]), cn_pid as u64);
    assert_eq!(a["process"]["comm"], "em-traffic");
    assert_eq!(a["process"]["uid"], 0);
    assert_eq!(a["process"]["cgroup"], w.cg.child_rel("app"));
    let d = &a["destination"];
    assert_eq!((d["ip"].as_str(), u64_of(&d["port"])), (Some(CN_V4), 443));
    assert_eq!(d["country"], "CN");
    for absent in ["subdivision", "asn", "as_org", "cloud_provider", "cloud_region", "site"] {
        assert!(d[absent].is_null(), "{absent} in {a}");
    }
    assert_eq!(a["id"].as_str().map(str::len), Some(32));
    // The alert carries the bytes of the flow that raised it, as first reported.
    let new = w.agent.wait_for("for the first CN flow's first record", WAIT, |v| {
        integration_tests::records::flow(&w.cg, "tcp", cn_ports[0], 443)(v) && v["state"] == "new"
    });
    assert_eq!(a["bytes"], new["bytes"]);
    assert_eq!(a["packets"], new["packets"]);

    // The second connection folds into the alert's totals: an update with both flows' bytes.
    let total = u64_of(&first["bytes"]) + u64_of(&second["bytes"]);
    let id = a["id"].clone();
    let update = w.agent.wait_for("for the alert's totals", WAIT, |v| {
        v["type"] == "alert_update" && v["id"] == id && v["bytes"].as_u64() == Some(total)
    });
    assert_eq!(u64_of(&update["flows"]), 2);
}

#[test]
fn ipv6_violation_and_approved_destination() {
    let w = world();
    let server = w.serve("[::]:8443", 2);
    let (pid, cn) = w.send("app", &format!("[{CN_V6}]:8443"), 500, 1);
    let (_, us) = w.send("app", &format!("[{US_V6}]:8443"), 500, 1);
    server.finish();

    assert_eq!(w.ended(us[0], 8443)["verdict"], "allowed");
    let r = w.ended(cn[0], 8443);
    assert_eq!(r["verdict"], "violation");
    let alerts = w.agent.records(alert_of(&w.cg));
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["destination"]["ip"], CN_V6);
    assert_eq!(a["destination"]["country"], "CN");
    assert_eq!(u64_of(&a["process"]["pid"]), pid as u64);
    assert_eq!(a["reason"], format!("destination country CN is not approved for class {}", w.class));
}
