//! Residency reports end to end: real traffic, then signed, chained reports whose totals equal
//! the API's sums; `verify` passes them, and names each tampering (a changed byte, a report
//! missing from the chain, an edited store row, another host's key); an agent stopped for a
//! while is a gap in the coverage; the HTML page opens in a real headless browser.

use std::{path::Path, process::Command, time::Duration};

use chrono::{SecondsFormat, Utc};
use integration_tests::{
    Agent,
    api::Api,
    built_binary, eventually,
    records::u64_of,
    world::{CN_V4, US_V4, WAIT, World},
};
use serde_json::Value;
use sha2::Digest;

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One-second store buckets: a report sums whole buckets that were over (and final, 3 s
/// later) when it was made, so the tests wait a few seconds after their traffic.
const BUCKETS: &str = "[store]\nbucket = \"1s\"\n";

/// The next whole second, once it has come: a period from there starts with a store bucket
/// the agent saw whole (the bucket holding an earlier `since` began before the agent did, and
/// a report says so, as a gap in its coverage).
fn next_second() -> String {
    let t = Utc::now();
    let next = chrono::DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap();
    std::thread::sleep((next - t).to_std().unwrap());
    next.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn settle() {
    std::thread::sleep(Duration::from_secs(4));
}

/// `egress-monitor verify ARGS`: (success, stdout).
fn verify(args: &[&Path], key: &Path, store: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(built_binary("egress-monitor"));
    c.arg("verify").args(args).arg("--key").arg(key);
    if let Some(s) = store {
        c.arg("--store").arg(s);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Sends a CN (violation) and a US (allowed) flow from the classified app and waits until the
/// store has both.
fn traffic(w: &World, agent: &Agent) -> (u16, u16) {
    let server = w.serve("[::]:443", 2);
    let (_, cn) = w.send("app", &format!("{CN_V4}:443"), 3000, 1);
    let (_, us) = w.send("app", &format!("{US_V4}:443"), 1000, 1);
    server.finish();
    w.ended(agent, cn[0], 443);
    w.ended(agent, us[0], 443);
    let api = Api::unix(&agent.dir().join("api.sock"));
    eventually("both flows in the store", WAIT, || {
        let v = api.ok(&format!("/v1/flows?since=1h&class={}", w.class));
        (v["rows"].as_array().is_some_and(|r| r.len() == 2)).then_some(())
    });
    (cn[0], us[0])
}

#[test]
fn a_signed_report_of_real_traffic_verifies_and_every_tampering_is_named() {
    let w = World::new();
    let agent = Agent::start(&w.config(BUCKETS));
    let since = next_second();
    traffic(&w, &agent);
    settle();
    let until = now();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("host.pub");
    std::fs::write(&key, agent.cli(&["key"])).unwrap();

    let report = |name: &str| {
        let text = agent.cli(&["report", "--since", &since, "--until", &until]);
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        (path, serde_json::from_str::<Value>(&text).unwrap())
    };
    let (p1, r1) = report("1.json");
    let (p2, _) = report("2.json");
    let (p3, r3) = report("3.json");
    assert_eq!((r1["seq"].as_u64(), r3["seq"].as_u64()), (Some(1), Some(3)));
    assert!(r1["previous"].is_null());
    // The databases in force, the cloud range file with the version its provider published.
    let sources = r1["configurations"][0]["sources"].as_array().unwrap();
    assert!(
        sources.iter().any(|s| s["description"].as_str().unwrap().contains("Oracle")
            && s["description"].as_str().unwrap().contains("published 2026-11-01")),
        "{sources:?}"
    );

    // The class's totals are the API's sums over the same buckets (the API's grouped sums take
    // the bucket holding `until` whole).
    let api = Api::unix(&agent.dir().join("api.sock"));
    let last = chrono::DateTime::parse_from_rfc3339(r1["counted_until"].as_str().unwrap()).unwrap()
        - chrono::Duration::seconds(1);
    let sums = api.ok(&format!(
        "/v1/flows?since={}&until={}&group_by=class&class={}",
        r1["counted_from"].as_str().unwrap(),
        last.to_rfc3339_opts(SecondsFormat::Secs, true),
        w.class
    ));
    let row = &sums["rows"][0];
    let class = r1["classes"].as_array().unwrap().iter().find(|c| c["class"] == w.class.as_str()).unwrap();
    assert_eq!(u64_of(&class["bytes"]), u64_of(&row["bytes"]), "{class}\n{sums}");
    assert_eq!(u64_of(&class["packets"]), u64_of(&row["packets"]));
    assert_eq!(u64_of(&class["flows"]), 2);
    // Where it went: CN all in violation, US allowed; the alert by its id.
    let place = |code: &str| {
        class["destinations"].as_array().unwrap().iter().find(|d| d["name"] == code).cloned().unwrap()
    };
    assert_eq!(place("CN")["violation_bytes"], place("CN")["bytes"]);
    assert_eq!(u64_of(&place("US")["violation_bytes"]), 0);
    assert_eq!(class["violations"]["bytes"], place("CN")["bytes"]);
    let alerts = api.ok(&format!("/v1/alerts?since=1h&class={}", w.class));
    let listed: Vec<&str> =
        class["violations"]["alerts"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(listed, [alerts["alerts"][0]["id"].as_str().unwrap()], "{class}\n{alerts}");
    assert_eq!(r1["coverage"]["agent_not_running_ms"], 0, "{}", r1["coverage"]);

    let store = w.state_dir().join("store.sqlite");
    let (ok, out) = verify(&[&p1, &p2, &p3], &key, Some(&store));
    assert!(ok, "{out}");
    assert!(out.contains("ok: 3 report(s)"), "{out}");

    // One byte changed: the signature no longer matches.
    let text = std::fs::read_to_string(&p2).unwrap();
    let needle = format!("\"bytes\": {}", class["bytes"]);
    assert!(text.contains(&needle), "{text}");
    let changed = dir.path().join("2-changed.json");
    std::fs::write(
        &changed,
        text.replacen(&needle, &format!("\"bytes\": {}", u64_of(&class["bytes"]) + 1), 1),
    )
    .unwrap();
    let (ok, out) = verify(&[&p1, &changed, &p3], &key, None);
    assert!(!ok && out.contains("2-changed.json (report 2): the signature does not match"), "{out}");
    // A report missing from the chain.
    let (ok, out) = verify(&[&p3, &p1], &key, None);
    assert!(!ok && out.contains("report 2 is missing between report 1"), "{out}");
    // A store row edited after the report.
    let copy = dir.path().join("store-copy.sqlite");
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    let edited = rusqlite::Connection::open(&copy).unwrap();
    let n = edited
        .execute(
            &format!(
                "UPDATE flows SET bytes = bytes + 1 WHERE (bucket, flow_id) = \
                 (SELECT bucket, flow_id FROM flows WHERE class = '{}' AND country = 'CN' ORDER BY bucket LIMIT 1)",
                w.class
            ),
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(edited);
    let (ok, out) = verify(&[&p1], &key, Some(&copy));
    assert!(!ok && out.contains("no longer match the report"), "{out}");
    // Another host's key.
    let other = World::new();
    let other_agent = Agent::start(&other.config(""));
    let other_key = dir.path().join("other.pub");
    std::fs::write(&other_key, other_agent.cli(&["key"])).unwrap();
    let (ok, out) = verify(&[&p1], &other_key, None);
    assert!(!ok && out.contains("signed by another key"), "{out}");
}

#[test]
fn a_report_names_each_configuration_the_agent_counted_under() {
    let w = World::new();
    let mut agent = Agent::start(&w.config(BUCKETS));
    let since = now();
    let sha256 = |text: &str| {
        let d = sha2::Sha256::digest(text.as_bytes());
        format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let first = std::fs::read_to_string(&agent.config_path).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let line = agent
        .reload(|c| format!("{c}\n[[classes]]\nname = \"payroll\"\nuids = [4242]\napproved = [\"US\"]\n"));
    assert!(line.contains("the configuration was reloaded"), "{line}");
    let second = std::fs::read_to_string(&agent.config_path).unwrap();
    settle();
    let r: Value = serde_json::from_str(&agent.cli(&["report", "--since", &since])).unwrap();
    let named: Vec<(&str, &str)> = r["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["cause"].as_str().unwrap(), c["digest"].as_str().unwrap()))
        .collect();
    assert_eq!(named, [("start", sha256(&first).as_str()), ("reload", sha256(&second).as_str())], "{r}");
    assert_eq!(r["configurations"][1]["classes"].as_array().unwrap().last().unwrap(), "payroll");
    // The class added by the reload is in the report, with nothing sent.
    let payroll = r["classes"].as_array().unwrap().iter().find(|c| c["class"] == "payroll").cloned();
    assert_eq!(payroll.map(|c| u64_of(&c["bytes"])), Some(0), "{r}");
    let text = agent.cli(&["report", "--since", &since, "-o", "text"]);
    assert!(text.contains(&format!("configuration {} in force from", sha256(&second))), "{text}");

    // Made with another configuration file (as an auditor's copy might be), the report still
    // names the ones the agent counted under.
    let other = w.state_dir().join("other.toml");
    std::fs::write(&other, format!("{second}\n# edited after the fact\n")).unwrap();
    let out = Command::new(built_binary("egress-monitor"))
        .args(["report", "--since", &since, "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["configurations"], r["configurations"]);
}

#[test]
fn an_agent_stopped_for_a_while_is_a_gap_in_the_coverage() {
    let w = World::new();
    let mut agent = Agent::start(&w.config(BUCKETS));
    let since = next_second();
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.stop().success());
    std::thread::sleep(Duration::from_secs(4));
    agent.restart(|c| c);
    std::thread::sleep(Duration::from_secs(3));
    // Every figure is of the final buckets.
    settle();
    let r: Value = serde_json::from_str(&agent.cli(&["report", "--since", &since])).unwrap();
    let c = &r["coverage"];
    let gaps = c["agent_not_running"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{c}");
    let ms = u64_of(&gaps[0]["ms"]);
    // Stopped cleanly for 4 s (plus the restart's own start-up): at least that, not much more.
    assert!((4000..9000).contains(&ms), "{c}");
    // The programs stayed pinned and counting: the next agent adopted them.
    assert_eq!(gaps[0]["kernel_counting"], true, "{c}");
    assert_eq!(u64_of(&c["blind_ms"]), 0);
    assert_eq!(u64_of(&c["runs"]), 2);
    let text = agent.cli(&["report", "--since", &since, "-o", "text"]);
    assert!(text.contains("the kernel programs went on counting"), "{text}");
}

#[test]
fn the_html_report_opens_in_a_headless_browser_with_its_map_and_class_table() {
    let w = World::new();
    let agent = Agent::start(&w.config(BUCKETS));
    let since = now();
    traffic(&w, &agent);
    settle();
    let html = agent.cli(&["report", "--since", &since, "-o", "html"]);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/reports");
    std::fs::create_dir_all(&artifacts).unwrap();
    let page = artifacts.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let chromium = |args: &[&str]| {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
            .args(args)
            .arg(&url)
            .output()
            .expect("run chromium (installed by cargo xtask setup)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The page as the browser built it: the class table and the map, CN in violation red.
    let dom = chromium(&["--dump-dom"]);
    assert!(
        dom.contains(r#"<table id="classes">"#) && dom.contains(&format!("<td>{}</td>", w.class)),
        "{dom}"
    );
    assert!(dom.matches("<path data-country=").count() >= 170, "the map's countries");
    assert!(dom.contains(r##"data-country="CN""##) && dom.contains(r##"fill="#c62828""##));
    let shot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1200,1600"]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "a screenshot of a page with a map: {} bytes", png.len());
}

#[test]
fn the_agent_writes_a_chained_report_every_interval() {
    let w = World::new();
    let agent = Agent::start(&w.config(&format!("{BUCKETS}[reports]\ninterval = \"2s\"\n")));
    let dir = w.state_dir().join("reports");
    let files = eventually("two periodic reports", WAIT, || {
        let mut f: Vec<_> = std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).collect();
        f.sort();
        (f.len() >= 2).then_some(f)
    });
    assert!(
        files[0].ends_with("report-000001.json") && files[1].ends_with("report-000002.json"),
        "{files:?}"
    );
    let read = |p: &Path| serde_json::from_str::<Value>(&std::fs::read_to_string(p).unwrap()).unwrap();
    let (first, second) = (read(&files[0]), read(&files[1]));
    // Each period starts where what the previous one summed ended.
    assert_eq!(second["since"], first["counted_until"]);
    // A report made by hand (of another period, one class) joins the chain and the directory,
    // and does not move the agent's periods.
    let manual: Value =
        serde_json::from_str(&agent.cli(&["report", "--since", "1h", "--class", &w.class])).unwrap();
    let seq = manual["seq"].as_u64().unwrap();
    let manual_file = dir.join(format!("report-{seq:06}.json"));
    assert_eq!(read(&manual_file), manual);
    let next = eventually("the periodic report after it", WAIT, || {
        let p = dir.join(format!("report-{:06}.json", seq + 1));
        p.exists().then(|| read(&p))
    });
    let previous_periodic = read(&dir.join(format!("report-{:06}.json", seq - 1)));
    assert_eq!(next["since"], previous_periodic["counted_until"], "{next}");
    let key = w.state_dir().join("host.pub");
    std::fs::write(&key, agent.cli(&["key"])).unwrap();
    let mut all: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    all.sort();
    let all: Vec<&Path> = all.iter().map(|p| p.as_path()).take(seq as usize + 1).collect();
    let (ok, out) = verify(&all, &key, Some(&w.state_dir().join("store.sqlite")));
    assert!(ok, "{out}");
}
