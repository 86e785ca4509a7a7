//! Residency end to end: a classified client sends to hosts that fixture databases place on the
//! map (addresses that exist only in this test's namespaces), and the agent raises exactly the
//! alerts the policy calls for, with the right fields.

use integration_tests::{
    Agent,
    records::{alert_of, flow, u64_of},
    world::{CN_V4, CN_V6, OCI_FRANKFURT, SITE_SG, US_V4, US_V6, WAIT, World},
};
use serde_json::Value;

#[test]
fn violation_raises_exactly_one_alert_with_its_fields_and_approved_destinations_none() {
    let w = World::new();
    let agent = Agent::start(&w.config(""));
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

    let first = w.ended(&agent, cn_ports[0], 443);
    assert_eq!(first["verdict"], "violation");
    assert_eq!(first["destination"]["country"], "CN");
    let second = w.ended(&agent, cn_ports[1], 443);
    for (ports, country, region, site) in [
        (&us_ports, "US", Value::Null, Value::Null),
        (&oci_ports, "DE", Value::from("eu-frankfurt-1"), Value::Null),
        (&site_ports, "SG", Value::Null, Value::from("dc-sg-backup")),
    ] {
        let r = w.ended(&agent, ports[0], 443);
        assert_eq!(r["verdict"], "allowed", "{r}");
        assert_eq!(r["class"], w.class.as_str());
        assert_eq!(r["destination"]["country"], country);
        assert_eq!(r["destination"]["cloud_region"], region);
        assert_eq!(r["destination"]["site"], site);
    }
    let plain = w.ended(&agent, plain_ports[0], 443);
    assert_eq!((plain["verdict"].as_str(), plain["class"].is_null()), (Some("unclassified"), true));

    let alerts = agent.records(alert_of(&w.cg));
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
    let new = agent.wait_for("for the first CN flow's first record", WAIT, |v| {
        flow(&w.cg, "tcp", cn_ports[0], 443)(v) && v["state"] == "new"
    });
    assert_eq!(a["bytes"], new["bytes"]);
    assert_eq!(a["packets"], new["packets"]);

    // The second connection folds into the alert's totals: an update with both flows' bytes.
    let total = u64_of(&first["bytes"]) + u64_of(&second["bytes"]);
    let id = a["id"].clone();
    let update = agent.wait_for("for the alert's totals", WAIT, |v| {
        v["type"] == "alert_update" && v["id"] == id && v["bytes"].as_u64() == Some(total)
    });
    assert_eq!(u64_of(&update["flows"]), 2);
}

#[test]
fn ipv6_violation_and_approved_destination() {
    let w = World::new();
    let agent = Agent::start(&w.config(""));
    let server = w.serve("[::]:8443", 2);
    let (pid, cn) = w.send("app", &format!("[{CN_V6}]:8443"), 500, 1);
    let (_, us) = w.send("app", &format!("[{US_V6}]:8443"), 500, 1);
    server.finish();

    assert_eq!(w.ended(&agent, us[0], 8443)["verdict"], "allowed");
    let r = w.ended(&agent, cn[0], 8443);
    assert_eq!(r["verdict"], "violation");
    let alerts = agent.records(alert_of(&w.cg));
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["destination"]["ip"], CN_V6);
    assert_eq!(a["destination"]["country"], "CN");
    assert_eq!(u64_of(&a["process"]["pid"]), pid as u64);
    assert_eq!(a["reason"], format!("destination country CN is not approved for class {}", w.class));
}

#[test]
fn a_store_that_cannot_be_opened_degrades_and_alerts_still_go_out() {
    let w = World::new();
    // A store file that is not a database (as a disk error would leave it).
    std::fs::create_dir_all(w.state_dir()).unwrap();
    std::fs::write(w.state_dir().join("store.sqlite"), vec![0x5a; 8192]).unwrap();
    let agent = Agent::start(&w.config(""));
    let server = w.serve("[::]:443", 1);
    let (_, ports) = w.send("app", &format!("{CN_V4}:443"), 500, 1);
    server.finish();
    let r = w.ended(&agent, ports[0], 443);
    assert_eq!(r["verdict"], "violation");
    let alert = agent.wait_for("the alert", WAIT, alert_of(&w.cg));
    assert_eq!(alert["destination"]["ip"], CN_V4);
    let api = integration_tests::api::Api::unix(&agent.dir().join("api.sock"));
    let status = integration_tests::eventually("the status counts the records the store lost", WAIT, || {
        let s = api.ok("/v1/status");
        (s["losses"]["store_dropped"].as_u64() > Some(0)).then_some(s)
    });
    let error = status["databases"]["store_error"].as_str().unwrap_or_default();
    assert!(error.contains("store.sqlite"), "the status names the failing store: {status}");
}
