//! Flow summaries a security team can query: the API and the CLI against a running agent with
//! real traffic (every filter and group_by, bad input, the token on TCP, queries while flows
//! are written), and the ClickHouse round trip through an outage.

use std::{collections::HashMap, process::Command, time::Duration};

use integration_tests::{
    Agent,
    api::Api,
    built_binary,
    clickhouse::{self, ClickHouse},
    eventually,
    records::{alert_of, u64_of},
    world::{CN_V4, OCI_FRANKFURT, SITE_SG, US_V4, WAIT, World},
};
use serde_json::Value;

/// Sums of `bytes` per value of `key` in a flows answer.
fn by(body: &Value, key: &str) -> HashMap<String, u64> {
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[key].as_str().unwrap_or("-").to_owned(), u64_of(&r["bytes"])))
        .collect()
}

fn total(body: &Value) -> u64 {
    body["rows"].as_array().unwrap().iter().map(|r| u64_of(&r["bytes"])).sum()
}

struct Traffic {
    /// Bytes of each flow as the agent's final record says, by what it was.
    cn: Vec<u64>,
    cn_pid: u32,
    us: u64,
    oci: u64,
    site: u64,
    plain_cn: u64,
}

/// Classified: two connections to CN, one each to US (port 8443), the OCI region and the site;
/// unclassified: one to CN. Returns the bytes of each flow from the agent's records.
fn traffic(w: &World, agent: &Agent) -> Traffic {
    let s443 = w.serve("[::]:443", 5);
    let s8443 = w.serve("[::]:8443", 1);
    let (cn_pid, cn) = w.send("app", &format!("{CN_V4}:443"), 3000, 2);
    let (_, us) = w.send("app", &format!("{US_V4}:8443"), 100, 1);
    let (_, oci) = w.send("app", &format!("{OCI_FRANKFURT}:443"), 200, 1);
    let (_, site) = w.send("app", &format!("{SITE_SG}:443"), 300, 1);
    let (_, plain) = w.send("plain", &format!("{CN_V4}:443"), 400, 1);
    s443.finish();
    s8443.finish();
    let bytes = |port: u16, dport: u16| u64_of(&w.ended(agent, port, dport)["bytes"]);
    Traffic {
        cn: cn.iter().map(|p| bytes(*p, 443)).collect(),
        cn_pid,
        us: bytes(us[0], 8443),
        oci: bytes(oci[0], 443),
        site: bytes(site[0], 443),
        plain_cn: bytes(plain[0], 443),
    }
}

#[test]
fn api_answers_every_filter_and_group_by_with_real_traffic() {
    let w = World::new();
    let agent = Agent::start(&w.config(""));
    let api = Api::unix(&agent.dir().join("api.sock"));
    let t = traffic(&w, &agent);
    let cn: u64 = t.cn.iter().sum();
    let classified = cn + t.us + t.oci + t.site;
    let cg = w.cg.rel.clone();
    // The clients' flows (the test's servers answer from the same test cgroup, inbound).
    let q = |extra: &str| api.ok(&format!("/v1/flows?since=1h&cgroup={cg}&direction=outbound&{extra}"));

    // The store writes in batches: wait until everything is there.
    eventually("every flow in the store", WAIT, || (total(&q("")) == classified + t.plain_cn).then_some(()));

    let countries = by(&q("group_by=country"), "country");
    assert_eq!(
        countries,
        HashMap::from([
            ("CN".into(), cn + t.plain_cn),
            ("US".into(), t.us),
            ("DE".into(), t.oci),
            ("SG".into(), t.site)
        ])
    );
    let classes = by(&q("group_by=class"), "class");
    assert_eq!(classes, HashMap::from([(w.class.clone(), classified), ("-".into(), t.plain_cn)]));
    assert_eq!(total(&q("verdict=violation")), cn);
    assert_eq!(total(&q("verdict=unclassified")), t.plain_cn);
    assert_eq!(total(&q(&format!("class={}", w.class))), classified);
    assert_eq!(total(&q("country=CN")), cn + t.plain_cn);
    assert_eq!(total(&q("cloud_region=oci:eu-*")), t.oci);
    assert_eq!(by(&q("group_by=cloud_region"), "cloud_region")["eu-frankfurt-1"], t.oci);
    assert_eq!(total(&q("site=dc-sg-backup")), t.site);
    assert_eq!(by(&q("group_by=site"), "site")["dc-sg-backup"], t.site);
    assert_eq!(total(&q("comm=em-traffic")), classified + t.plain_cn);
    assert_eq!(total(&api.ok(&format!("/v1/flows?since=1h&cgroup={cg}/plain"))), t.plain_cn);
    assert_eq!(total(&q(&format!("pid={}", t.cn_pid))), cn);
    assert_eq!(total(&q("dst=175.16.199.0/24")), cn + t.plain_cn);
    assert_eq!(total(&q(&format!("dst={US_V4}"))), t.us);
    assert_eq!(total(&q("port=8443")), t.us);
    let by_dest = q("group_by=destination,process");
    let cn_row = by_dest["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst_ip"] == CN_V4 && r["pid"] == t.cn_pid)
        .unwrap();
    assert_eq!(
        (u64_of(&cn_row["bytes"]), u64_of(&cn_row["flows"]), cn_row["comm"].as_str()),
        (cn, 2, Some("em-traffic"))
    );
    assert_eq!(q("group_by=country&limit=1")["rows"].as_array().unwrap().len(), 1);
    let flows = q("");
    assert_eq!(flows["rows"].as_array().unwrap().len(), 6, "one row per flow without group_by");
    assert_eq!(total(&q("since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z")), 0);

    // Alerts: the one CN violation, as it was printed.
    let printed = agent.records(alert_of(&w.cg));
    let alerts = api.ok(&format!("/v1/alerts?since=1h&class={}", w.class));
    let alerts = alerts["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["id"], printed[0]["id"]);
    assert_eq!(alerts[0]["destination"]["country"], "CN");
    // Field for field the alert as printed, but for the totals later updates changed (and
    // `flows`, the number of flows they cover, which only the stored alert has).
    let mut stored = alerts[0].clone();
    for total in ["bytes", "packets", "last_seen"] {
        stored[total] = printed[0][total].clone();
    }
    stored.as_object_mut().unwrap().remove("flows");
    assert_eq!(stored, printed[0], "the stored alert has the printed alert's shape");
    assert_eq!(
        api.ok(&format!("/v1/alerts?class={}&severity=low", w.class))["alerts"].as_array().unwrap().len(),
        0
    );

    // Bad input: 400 naming the parameter.
    for (query, parameter) in [
        ("/v1/flows?since=yesterday", "since"),
        ("/v1/flows?group_by=planet", "group_by"),
        ("/v1/flows?limit=0", "limit"),
        ("/v1/flows?dst=999.1.1.1", "dst"),
        ("/v1/flows?verdict=maybe", "verdict"),
        ("/v1/flows?colour=red", "colour"),
        ("/v1/alerts?severity=urgent", "severity"),
        ("/v1/flows?country=CHN", "country"),
        ("/v1/flows?country=XX", "country"),
        ("/v1/flows?class=nosuch", "class"),
        ("/v1/alerts?class=nosuch", "class"),
    ] {
        let a = api.get(query);
        assert_eq!(a.status, 400, "{query}: {}", a.text);
        assert_eq!(
            (a.body["error"].as_str(), a.body["parameter"].as_str()),
            (Some("invalid parameter"), Some(parameter)),
            "{query}"
        );
        assert!(a.body["expected"].as_str().is_some_and(|e| !e.is_empty()), "{query}: {}", a.text);
    }
    assert_eq!(api.get("/v1/nothing").status, 404);
    // What was meant, when it can be told; country codes in any case.
    assert!(api.get("/v1/flows?country=CHN").body["expected"].as_str().unwrap().contains("did you mean CN?"));
    let expected = api.get("/v1/flows?class=nosuch").body["expected"].as_str().unwrap().to_owned();
    assert!(expected.contains(&w.class), "the configured classes are listed: {expected}");
    assert_eq!(total(&q("country=cn")), cn + t.plain_cn);

    // Status and metrics.
    let s = api.ok("/v1/status");
    assert_eq!(s["programs"].as_array().unwrap().len(), 10);
    assert_eq!(s["host"], "h1");
    assert!(u64_of(&s["databases"]["store_bytes"]) > 0);
    // With no class enforcing, the kernel announces every classified flow (the five of the
    // class); the sweep finds the unclassified ones.
    assert_eq!(u64_of(&s["events"]["new_flow"]), 5, "{}", s["events"]);
    assert!(u64_of(&s["events"]["found_by_sweep"]) >= 1, "{}", s["events"]);
    assert!(u64_of(&s["alerts"]["raised"]) >= 1);
    assert_eq!(s["losses"]["ringbuf_drops"], 0);
    let metrics = api.get("/metrics").text;
    let line = format!("egress_monitor_flow_bytes_total{{class=\"{}\",verdict=\"violation\"}} {cn}", w.class);
    assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    let alerts_line = format!("egress_monitor_alerts_total{{class=\"{}\",severity=\"critical\"}} 1", w.class);
    assert!(metrics.lines().any(|l| l == alerts_line), "{alerts_line}");
    assert!(metrics.contains("egress_monitor_losses_total{kind=\"ringbuf_drops\"} 0"), "{metrics}");
    assert!(metrics.contains("egress_monitor_geolocation_cache_hits_total"));

    // The CLI, over the socket named by the agent's configuration.
    let cli = |args: &[&str]| cli(&agent, args);
    let app = format!("{cg}/app");
    let json: Value = serde_json::from_str(&cli(&[
        "flows",
        "--since",
        "1h",
        "--cgroup",
        &app,
        "--group-by",
        "country",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(by(&json, "country")["CN"], cn);
    let table = cli(&["flows", "--since", "1h", "--cgroup", &app, "--group-by", "country"]);
    let header: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(header, ["COUNTRY", "BYTES", "PACKETS", "FLOWS", "LAST", "SEEN"]);
    let cn_line = table.lines().find(|l| l.trim_start().starts_with("CN ")).unwrap();
    assert!(cn_line.contains(&bytesize(cn)), "human bytes in {cn_line:?}");
    let csv = cli(&["flows", "--since", "1h", "--cgroup", &app, "--group-by", "class,country", "-o", "csv"]);
    assert_eq!(csv.lines().next(), Some("class,country,internal,bytes,packets,flows,first_seen,last_seen"));
    assert_eq!(csv.lines().count(), 5, "a header and CN, US, DE, SG: {csv}");
    let alerts: Value =
        serde_json::from_str(&cli(&["alerts", "--since", "1h", "--class", &w.class, "-o", "json"])).unwrap();
    // The API's answer as it is (but for totals an alert update may change in between).
    let without_totals = |mut v: Value| {
        for a in v.as_array_mut().unwrap() {
            for total in ["bytes", "packets", "flows", "last_seen"] {
                a.as_object_mut().unwrap().remove(total);
            }
        }
        v
    };
    assert_eq!(
        without_totals(alerts["alerts"].clone()),
        without_totals(api.ok(&format!("/v1/alerts?since=1h&class={}", w.class))["alerts"].clone())
    );
    assert_eq!(alerts["alerts"][0]["process"]["tid"], printed[0]["process"]["tid"]);
    let status = cli(&["status"]);
    assert!(status.contains("programs") && status.contains("10 attached"), "{status}");
    let top = cli(&["top", "-n", "1", "--since", "1h", "--group-by", "country", "--cgroup", &app]);
    assert!(top.starts_with("egress-monitor top - ") && top.contains("CN"), "{top}");
}

fn cli(agent: &Agent, args: &[&str]) -> String {
    agent.cli(args)
}

fn bytesize(n: u64) -> String {
    // The CLI prints IEC units with one decimal: 5.9 KiB.
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[i]) }
}

#[test]
fn tcp_api_requires_the_token() {
    let w = World::new();
    let port = integration_tests::free_port();
    let token_file = w.files.path().join("api.token");
    let token = "0123456789abcdef-test-token";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let agent = Agent::start(&w.config("").replace(
        "[api]\n",
        &format!("[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n", token_file.display()),
    ));
    let api = Api::tcp(&format!("127.0.0.1:{port}"));
    for (given, code) in [(None, 401), (Some("wrong-token-wrong-token"), 401), (Some(token), 200)] {
        let a = api.get_with("/v1/status", given);
        assert_eq!(a.status, code, "{given:?}: {}", a.text);
        if code == 401 {
            assert_eq!(a.body["error"], "unauthorized");
        }
    }
    assert_eq!(api.get_with("/metrics", None).status, 401, "metrics too");
    let cli = |extra: &[&str]| {
        Command::new(built_binary("egress-monitor"))
            .args(["status", "-o", "json", "--api", &format!("http://127.0.0.1:{port}")])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = cli(&["--token-file", token_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["host"], "h1");
    let out = cli(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    // The unix socket needs no token.
    assert_eq!(Api::unix(&agent.dir().join("api.sock")).get("/v1/status").status, 200);
}

#[test]
fn queries_while_flows_are_written() {
    const CONNECTIONS: usize = 60;
    let w = World::new();
    let agent = Agent::start(&w.config(""));
    let socket = agent.dir().join("api.sock");
    let cg = w.cg.rel.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (socket, cg, stop) = (socket.clone(), cg.clone(), stop.clone());
            std::thread::spawn(move || {
                let api = Api::unix(&socket);
                let mut answered = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = match i % 3 {
                        0 => format!("/v1/flows?since=1h&cgroup={cg}&group_by=destination,process"),
                        1 => "/v1/alerts?since=1h".into(),
                        _ => "/v1/status".into(),
                    };
                    let a = api.get(&path);
                    assert_eq!(a.status, 200, "{path}: {}", a.text);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let server = w.serve("[::]:443", CONNECTIONS);
    let (_, ports) = w.send("app", &format!("{US_V4}:443"), 500, CONNECTIONS);
    server.finish();
    let expected: u64 = ports.iter().map(|p| u64_of(&w.ended(&agent, *p, 443)["bytes"])).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0, "every reader got answers");
    }
    let api = Api::unix(&socket);
    eventually("every flow stored", WAIT, || {
        let b = api.ok(&format!("/v1/flows?since=1h&cgroup={cg}/app&group_by=country"));
        (total(&b) == expected && u64_of(&b["rows"][0]["flows"]) == CONNECTIONS as u64).then_some(())
    });
}

#[test]
fn clickhouse_round_trip_through_an_outage() {
    let mut ch = ClickHouse::start();
    let w = World::new();
    let password = w.files.path().join("ch.password");
    std::fs::write(&password, format!("{}\n", clickhouse::WRITER_PASSWORD)).unwrap();
    let agent = Agent::start(&w.config(&format!(
        "[store]\nbucket = \"1s\"\n\n[export.clickhouse]\nurl = \"{}\"\ndatabase = \"egress\"\nuser = \"{}\"\npassword_file = \"{}\"\ninterval = \"500ms\"\n",
        ch.url(),
        clickhouse::WRITER,
        password.display()
    )));
    let api = Api::unix(&agent.dir().join("api.sock"));
    let cg = w.cg.rel.clone();
    let sum_in_ch = |ch: &ClickHouse| -> u64 {
        ch.query(&format!("SELECT sum(bytes) FROM egress.flows FINAL WHERE cgroup = '{cg}/app'"))
            .trim()
            .parse()
            .unwrap_or(0)
    };

    // Before the outage: a violation and an allowed flow.
    let server = w.serve("[::]:443", 2);
    let (_, cn) = w.send("app", &format!("{CN_V4}:443"), 1500, 1);
    let (_, us) = w.send("app", &format!("{US_V4}:443"), 700, 1);
    server.finish();
    let before =
        u64_of(&w.ended(&agent, cn[0], 443)["bytes"]) + u64_of(&w.ended(&agent, us[0], 443)["bytes"]);
    eventually("the first flows in ClickHouse", Duration::from_secs(30), || {
        (sum_in_ch(&ch) == before).then_some(())
    });
    let alert_id = agent.records(alert_of(&w.cg))[0]["id"].as_str().unwrap().to_owned();
    eventually("the alert in ClickHouse", Duration::from_secs(30), || {
        (ch.query(&format!("SELECT count() FROM egress.alerts FINAL WHERE id = '{alert_id}'")).trim() == "1")
            .then_some(())
    });

    // Outage: ClickHouse is killed; traffic goes on; the agent keeps the summaries.
    ch.stop();
    let server = w.serve("[::]:443", 3);
    let (_, more) = w.send("app", &format!("{US_V4}:443"), 900, 3);
    server.finish();
    let during: u64 = more.iter().map(|p| u64_of(&w.ended(&agent, *p, 443)["bytes"])).sum();
    eventually("the agent to notice the outage", Duration::from_secs(30), || {
        let s = api.ok("/v1/status");
        (u64_of(&s["export"][0]["failures"]) > 0).then_some(())
    });

    // ClickHouse comes back on the same data: everything arrives, each row once.
    ch.resume();
    eventually("every flow in ClickHouse after the outage", Duration::from_secs(60), || {
        (sum_in_ch(&ch) == before + during).then_some(())
    });
    let rows: u64 = ch
        .query(&format!("SELECT count() FROM egress.flows FINAL WHERE cgroup = '{cg}/app'"))
        .trim()
        .parse()
        .unwrap();
    let stored = api.ok(&format!(
        "/v1/flows?since=1h&cgroup={cg}/app&group_by=destination,process,class,country,site,cloud_region"
    ));
    assert!(rows >= 5, "at least a row per flow: {rows}");
    assert_eq!(total(&stored), before + during, "the store and ClickHouse agree");
    let row: Value = serde_json::from_str(
        ch.query(&format!("SELECT class, verdict, country, dst_ip, comm FROM egress.flows WHERE cgroup LIKE '{cg}/%' AND dst_ip = '{CN_V4}' LIMIT 1 FORMAT JSONEachRow"))
            .trim(),
    )
    .unwrap();
    assert_eq!(
        (row["class"].as_str(), row["verdict"].as_str(), row["country"].as_str()),
        (Some(w.class.as_str()), Some("violation"), Some("CN"))
    );
    assert_eq!(row["comm"], "em-traffic");

    // A residency report goes to ClickHouse too, whole and with its figures.
    let report: Value =
        serde_json::from_str(&agent.cli(&["report", "--since", "1h", "--class", &w.class])).unwrap();
    let seq = report["seq"].as_u64().unwrap();
    let exported: Value = eventually("the report in ClickHouse", Duration::from_secs(30), || {
        let text = ch.query(&format!(
            "SELECT seq, bytes, violation_bytes, report FROM egress.reports FINAL WHERE host = 'h1' AND seq = {seq} FORMAT JSONEachRow"
        ));
        serde_json::from_str(text.trim()).ok()
    });
    // ClickHouse quotes 64-bit integers in JSON.
    let n = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
    assert_eq!(n(&exported["bytes"]), report["classes"][0]["bytes"].as_u64());
    assert_eq!(n(&exported["violation_bytes"]), report["classes"][0]["violations"]["bytes"].as_u64());
    let whole: Value = serde_json::from_str(exported["report"].as_str().unwrap()).unwrap();
    assert_eq!(whole, report, "the signed report, unchanged");
}

/// One output contract: every query command takes `-o table|json|csv`; CSV leaves null fields
/// empty; tables say `internal` and `unknown` rather than `-`, and show each flow's direction;
/// `--group-by country` keeps internal, unknown and each country apart.
#[test]
fn query_commands_share_one_output_contract() {
    let w = World::new();
    // Public, but in no database: unknown.
    const UNKNOWN: &str = "198.51.100.7";
    w.topo.add_remote_address(UNKNOWN);
    // A second class whose cgroup does not exist: status says so.
    let agent = Agent::start(&w.config(
        "\n[[classes]]\nname = \"ghost\"\ncgroups = [\"/no-such-cgroup-em/x\"]\nuids = [4242]\napproved = [\"US\"]\n",
    ));
    let s = w.serve("[::]:443", 3);
    let (_, cn) = w.send("app", &format!("{CN_V4}:443"), 1000, 1);
    // Host b's own address is private: internal.
    let internal_addr = w.topo.b_v4.to_string();
    let (_, internal) = w.send("app", &format!("{internal_addr}:443"), 2000, 1);
    let (_, unknown) = w.send("app", &format!("{UNKNOWN}:443"), 3000, 1);
    s.finish();
    let bytes = |port: u16| u64_of(&w.ended(&agent, port, 443)["bytes"]);
    let (cn, internal, unknown) = (bytes(cn[0]), bytes(internal[0]), bytes(unknown[0]));
    let app = format!("{}/app", w.cg.rel);
    let cli = |args: &[&str]| cli(&agent, args);
    let flows = |extra: &[&str]| {
        let mut args = vec!["flows", "--since", "1h", "--cgroup", &app];
        args.extend(extra);
        cli(&args)
    };
    // The store writes in batches: wait until the three flows' final bytes are there.
    eventually("the three flows in the store", WAIT, || {
        let answer: Value = serde_json::from_str(&flows(&["-o", "json"])).unwrap();
        (answer["rows"].as_array().unwrap().len() == 3 && total(&answer) == cn + internal + unknown)
            .then_some(())
    });

    // Grouped by country: CN, internal and unknown apart, in every format.
    let csv = flows(&["--group-by", "country", "-o", "csv"]);
    let mut lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.remove(0), "country,internal,bytes,packets,flows,first_seen,last_seen");
    let sums: HashMap<(String, String), u64> = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].to_owned(), f[1].to_owned()), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(
        sums,
        HashMap::from([
            (("CN".into(), "false".into()), cn),
            (("".into(), "true".into()), internal),
            (("".into(), "false".into()), unknown),
        ]),
        "null is an empty field: {csv}"
    );
    let table = flows(&["--group-by", "country"]);
    for (place, n) in [("CN", cn), ("internal", internal), ("unknown", unknown)] {
        let line = table.lines().find(|l| l.split_whitespace().next() == Some(place));
        assert!(line.is_some_and(|l| l.contains(&bytesize(n))), "{place} with {n} bytes in:\n{table}");
    }
    let json: Value = serde_json::from_str(&flows(&["--group-by", "country", "-o", "json"])).unwrap();
    // Every answer says up to when it counts.
    let as_of = chrono::DateTime::parse_from_rfc3339(json["as_of"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(as_of);
    assert!(age >= chrono::Duration::zero() && age < chrono::Duration::seconds(30), "{json}");
    assert_eq!(json["live"], true, "{json}");
    let first = table.lines().next().unwrap();
    assert!(first.starts_with("3 rows, ") && first.contains(" counted up to "), "{table}");
    let rows = json["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["country"].is_null() && r["internal"] == true && u64_of(&r["bytes"]) == internal)
    );
    assert!(
        rows.iter()
            .any(|r| r["country"].is_null() && r["internal"] == false && u64_of(&r["bytes"]) == unknown)
    );

    // One row per flow: the direction, and where it went in words.
    let table = flows(&["--direction", "outbound"]);
    let header: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&header[..4], ["CLASS", "VERDICT", "DIRECTION", "PROTO"], "{table}");
    let row = |dst: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!("{dst}:443")))
            .unwrap_or_else(|| panic!("{dst} in {table}"))
    };
    assert!(row(&internal_addr).contains(" internal "), "{table}");
    assert!(row(UNKNOWN).contains(" unknown "), "{table}");
    assert!(row(CN_V4).contains(" outbound "), "{table}");
    assert_eq!(flows(&["--direction", "inbound", "-o", "csv"]).lines().count(), 1, "only the header");
    let per_flow = flows(&["-o", "csv"]);
    let header: Vec<&str> = per_flow.lines().next().unwrap().split(',').collect();
    let country = header.iter().position(|c| *c == "country").unwrap();
    let to_internal = per_flow.lines().find(|l| l.contains(&internal_addr)).unwrap();
    assert_eq!(to_internal.split(',').nth(country), Some(""), "null country is empty: {per_flow}");

    // Alerts: an unplaced destination is unknown there too.
    let alerts = cli(&["alerts", "--since", "1h", "--class", &w.class]);
    let line =
        alerts.lines().find(|l| l.contains(&format!("{UNKNOWN}:443"))).unwrap_or_else(|| panic!("{alerts}"));
    assert!(line.contains(" unknown "), "{alerts}");

    // top: the same filters and formats.
    let top: Value = serde_json::from_str(&cli(&[
        "top",
        "-n",
        "1",
        "--since",
        "1h",
        "--cgroup",
        &app,
        "--country",
        "cn",
        "-o",
        "json",
    ]))
    .unwrap();
    let rows = top["rows"].as_array().unwrap();
    assert_eq!((rows.len(), u64_of(&rows[0]["bytes"])), (1, cn), "{top}");
    let top =
        cli(&["top", "-n", "1", "--since", "1h", "--cgroup", &app, "--group-by", "country", "-o", "csv"]);
    assert_eq!(top.lines().next(), Some("country,internal,bytes,packets,flows,first_seen,last_seen"));

    // status, per class: what selects it, whether its cgroups exist, what it sent last hour.
    let api = Api::unix(&agent.dir().join("api.sock"));
    let status = api.ok("/v1/status");
    let classes = status["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2, "{status}");
    let (mine, ghost) = (&classes[0], &classes[1]);
    assert_eq!(mine["name"], w.class.as_str());
    assert_eq!(mine["cgroups"][0]["path"], app.as_str());
    assert!(mine["cgroups"][0]["cgroup_id"].as_u64().is_some_and(|id| id > 0), "{mine}");
    let last_hour = |v: &str| u64_of(&mine["last_hour"][v]);
    assert_eq!(last_hour("allowed") + last_hour("violation"), cn + internal + unknown, "{mine}");
    let violations =
        api.ok(&format!("/v1/flows?since=1h&class={}&verdict=violation&group_by=class", w.class));
    assert_eq!(last_hour("violation"), total(&violations));
    assert!(last_hour("violation") >= cn);
    assert_eq!((ghost["name"].as_str(), &ghost["cgroups"][0]["cgroup_id"]), (Some("ghost"), &Value::Null));
    assert_eq!(ghost["uids"], serde_json::json!([4242]));
    let sources = status["databases"]["sources"].as_array().unwrap();
    let country = sources.iter().find(|s| s["kind"] == "country").unwrap();
    let country_db = w.files.path().join("country.mmdb");
    assert!(
        country["description"].as_str().unwrap().starts_with(&format!("{} (", country_db.display())),
        "{sources:?}"
    );
    let table = cli(&["status"]);
    assert!(
        table.lines().any(|l| l.contains("places: country") && l.contains("search-tree nodes")),
        "{table}"
    );
    let ghost_line = table.lines().find(|l| l.contains("class ghost")).unwrap_or_else(|| panic!("{table}"));
    assert!(
        ghost_line.contains("/no-such-cgroup-em/x (NOT FOUND") && ghost_line.contains("uid 4242"),
        "{table}"
    );

    // status and lookup: -o csv and -o json too.
    let status = cli(&["status", "-o", "csv"]);
    assert_eq!(status.lines().next(), Some("field,value"));
    assert!(status.lines().any(|l| l == "host,h1"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("programs.0.hook,")), "{status}");
    let lookup = cli(&["lookup", &internal_addr, UNKNOWN, CN_V4, "-o", "csv"]);
    let mut lines = lookup.lines();
    assert_eq!(
        lines.next(),
        Some(
            "address,country,subdivision,asn,as_org,cloud_provider,cloud_region,site,internal,class,verdict,kernel,reason"
        )
    );
    let mine = format!(",{},", w.class);
    let lines: Vec<&str> = lines.filter(|l| l.contains(&mine)).collect();
    assert!(lines[0].starts_with(&format!("{internal_addr},,,,,,,,true,{},", w.class)), "{lookup}");
    assert!(lines[1].starts_with(&format!("{UNKNOWN},,,,,,,,false,{},", w.class)), "{lookup}");
    assert!(lines[2].starts_with(&format!("{CN_V4},CN,")) && lines[2].contains(",violation,"), "{lookup}");
    let json: Value = serde_json::from_str(cli(&["lookup", CN_V4, "-o", "json"]).trim()).unwrap();
    assert_eq!(json["destination"]["country"], "CN");
    assert_eq!(cli(&["lookup", CN_V4, "--json"]), cli(&["lookup", CN_V4, "-o", "json"]));
    let table = cli(&["lookup", UNKNOWN]);
    assert!(table.lines().nth(1).is_some_and(|l| l.contains("unknown")), "{table}");
}

/// Every command the README shows (but `run`, which is this agent) runs against a running
/// agent: the examples stay true to the flags. `--config /etc/...` and `--api URL
/// --token-file F` stand for this agent's configuration; `top` stops after one refresh.
#[test]
fn every_readme_example_runs_against_an_agent() {
    let w = World::new();
    // The README's examples name the class us-user-data.
    let agent = Agent::start(
        &w.config("\n[[classes]]\nname = \"us-user-data\"\nuids = [4243]\napproved = [\"US\"]\n"),
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut in_sh = false;
    let mut ran = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        let command = line.split(" #").next().unwrap().trim();
        let Some(rest) =
            command.strip_prefix("egress-monitor ").or_else(|| command.strip_prefix("sudo egress-monitor "))
        else {
            continue;
        };
        if !in_sh || rest.starts_with("run ") {
            continue;
        }
        let mut args: Vec<String> = Vec::new();
        let mut words = rest.split_whitespace();
        while let Some(word) = words.next() {
            match word {
                "--config" | "--api" | "--token-file" => {
                    words.next();
                }
                _ => args.push(word.to_owned()),
            }
        }
        if args[0] == "top" {
            args.extend(["-n".into(), "1".into()]);
        }
        args.extend(["--config".into(), agent.config_path.to_str().unwrap().to_owned()]);
        let out = Command::new(built_binary("egress-monitor")).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "README: {line}\nran: {args:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "README: {line}: printed nothing");
        ran.push(args[0].clone());
    }
    for command in ["check-config", "lookup", "flows", "alerts", "top", "status"] {
        assert!(ran.iter().any(|r| r == command), "the README shows no `{command}` example: {ran:?}");
    }
}
