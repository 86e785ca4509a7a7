//! Alert delivery against real peers on loopback: rsyslog over UDP (RFC 5424) and TCP
//! (RFC 3164, octet counting), and an HTTP receiver that fails in every way a webhook can;
//! every alert arrives, signed, once per id, also across an outage and a SIGKILL.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use integration_tests::{
    Agent,
    http::{Receiver, Reply},
    records::{alert_of, u64_of},
    rsyslog::Rsyslog,
    world::{CN_V4, CN_V6, WAIT, World},
};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "s3cret-for-tests";

/// Raises one alert (a classified client to the CN host) and returns it as printed.
fn raise_alert(w: &World, agent: &Agent, to: &str, port: u16) -> Value {
    let server = w.serve(&format!("[::]:{port}"), 1);
    let (_, ports) = w.send("app", to, 200, 1);
    server.finish();
    w.ended(agent, ports[0], port);
    let alerts = agent.records(alert_of(&w.cg));
    alerts
        .into_iter()
        .find(|a| {
            a["destination"]["port"] == port
                && a["destination"]["ip"] == to.rsplit_once(':').unwrap().0.trim_matches(['[', ']'])
        })
        .unwrap_or_else(|| panic!("no alert for {to}"))
}

fn verify(secret: &str, timestamp: &str, body: &str, signature: &str) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    signature == format!("sha256={hex}")
}

#[test]
fn syslog_rfc5424_over_udp_and_rfc3164_over_tcp() {
    let rsyslog = Rsyslog::start();
    let w = World::new();
    let sinks = format!(
        r#"
[[sinks]]
type = "stdout"

[[sinks]]
type = "syslog"
address = "udp://127.0.0.1:{udp}"

[[sinks]]
type = "syslog"
address = "tcp://127.0.0.1:{tcp}"
format = "rfc3164"
facility = "local3"
min_severity = "high"

[[sinks]]
name = "only-low"
type = "syslog"
address = "tcp://127.0.0.1:{tcp}"
facility = "local7"
min_severity = "low"
classes = ["{class}"]
"#,
        udp = rsyslog.udp_port,
        tcp = rsyslog.tcp_port,
        class = w.class,
    );
    let agent = Agent::start(&w.config(&sinks));
    let alert = raise_alert(&w, &agent, &format!("{CN_V4}:443"), 443);
    let id = alert["id"].as_str().unwrap().to_owned();

    let got = rsyslog.wait_for(3, WAIT, |m| m.msg.contains(&id) || m.sd_param("id").as_deref() == Some(&id));
    assert_eq!(got.len(), 3, "{got:#?}");
    let by_facility =
        |f: &str| got.iter().find(|m| m.facility == f).unwrap_or_else(|| panic!("no {f} message: {got:#?}"));

    // RFC 5424 over UDP: facility auth (the default), critical -> crit, structured data.
    let m = by_facility("auth");
    assert_eq!(
        (m.severity.as_str(), m.hostname.as_str(), m.app_name.as_str()),
        ("crit", "h1", "egress-monitor")
    );
    assert_eq!(m.procid, agent.pid().to_string());
    assert_eq!(m.msgid, "residency-violation");
    assert!(m.structured_data.starts_with("[alert@32473 "), "{}", m.structured_data);
    let sd = |k: &str| m.sd_param(k).unwrap_or_else(|| panic!("no {k} in {}", m.structured_data));
    assert_eq!(sd("id"), id);
    assert_eq!(sd("class"), w.class);
    assert_eq!(sd("severity"), "critical");
    assert_eq!(sd("dst"), CN_V4);
    assert_eq!(sd("dport"), "443");
    assert_eq!(sd("country"), "CN");
    assert_eq!(sd("comm"), "em-traffic");
    assert_eq!(sd("pid"), alert["process"]["pid"].to_string());
    assert_eq!(sd("cgroup"), w.cg.child_rel("app"));
    assert_eq!(sd("bytes"), alert["bytes"].to_string());
    assert_eq!(m.msg, alert["reason"].as_str().unwrap());

    // RFC 3164 over TCP with octet counting: facility local3, fields as key=value.
    let m = by_facility("local3");
    assert_eq!((m.severity.as_str(), m.app_name.as_str()), ("crit", "egress-monitor"));
    assert!(m.msg.starts_with(alert["reason"].as_str().unwrap()), "{}", m.msg);
    for kv in [format!("id={id}"), format!("dst={CN_V4}"), "dport=443".into(), "country=CN".into()] {
        assert!(m.msg.contains(&kv), "{kv} in {}", m.msg);
    }
    // The class-filtered sink takes it too (its class, and critical >= low).
    assert_eq!(by_facility("local7").sd_param("id"), Some(id));
}

#[test]
fn syslog_class_filter_keeps_alerts_of_other_classes_out() {
    let rsyslog = Rsyslog::start();
    let w = World::new();
    let sinks = format!(
        r#"
[[classes]]
name = "{class}-other"
uids = [64999]

[[sinks]]
type = "stdout"

[[sinks]]
name = "other-class"
type = "syslog"
address = "udp://127.0.0.1:{udp}"
facility = "local1"
classes = ["{class}-other"]

[[sinks]]
name = "all"
type = "syslog"
address = "udp://127.0.0.1:{udp}"
facility = "local2"
"#,
        udp = rsyslog.udp_port,
        class = w.class,
    );
    let agent = Agent::start(&w.config(&sinks));
    let id = raise_alert(&w, &agent, &format!("{CN_V4}:443"), 443)["id"].as_str().unwrap().to_owned();
    let got = rsyslog.wait_for(1, WAIT, |m| m.sd_param("id").as_deref() == Some(&id));
    assert_eq!(got.iter().map(|m| m.facility.as_str()).collect::<Vec<_>>(), ["local2"]);
    // Give the filtered-out sink the time it would have needed.
    std::thread::sleep(Duration::from_millis(500));
    assert!(rsyslog.messages().iter().all(|m| m.facility != "local1"), "{:#?}", rsyslog.messages());
}

#[test]
fn webhook_retries_500_timeout_and_429_then_delivers_signed() {
    let receiver = Receiver::start(vec![
        Reply::Status(500),
        Reply::Hang(Duration::from_secs(3)),
        Reply::TooManyRequests(2),
        Reply::Status(200),
    ]);
    let w = World::new();
    let secret = w.files.path().join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let sinks = format!(
        r#"
[[sinks]]
type = "stdout"

[[sinks]]
type = "webhook"
url = "{url}"
secret_file = "{secret}"
headers = {{ "X-Team" = "secops" }}
timeout = "1s"
retry_initial = "100ms"
retry_max = "400ms"
"#,
        url = receiver.url(),
        secret = secret.display(),
    );
    let agent = Agent::start(&w.config(&sinks));
    let alert = raise_alert(&w, &agent, &format!("{CN_V4}:443"), 443);
    let id = alert["id"].as_str().unwrap();

    let reqs = receiver.wait_until("a delivery answered 200", Duration::from_secs(30), |r| {
        r.iter().any(|q| q.reply == "Status(200)")
    });
    assert_eq!(reqs.len(), 4, "500, timeout, 429, 200: {reqs:#?}");
    for q in &reqs {
        assert_eq!(q.id.as_deref(), Some(id));
        assert_eq!(q.content_type.as_deref(), Some("application/json"));
        let (ts, sig) = (q.timestamp.as_deref().unwrap(), q.signature.as_deref().unwrap());
        assert!(verify(SECRET, ts, &q.body, sig), "signature of {q:#?}");
        let ts: i64 = ts.parse().unwrap();
        assert!((chrono_now() - ts).abs() < 60, "a fresh timestamp");
        let body: Value = serde_json::from_str(&q.body).unwrap();
        assert_eq!(body, alert, "the body is the alert as printed");
    }
    // Retry-After: 2 was honoured; the timeout took the client's 1 s.
    let gap = reqs[3].at.duration_since(reqs[2].at);
    assert!(gap >= Duration::from_secs(2), "Retry-After honoured: {gap:?}");
    let waited = reqs[2].at.duration_since(reqs[1].at);
    assert!(waited >= Duration::from_secs(1), "the hung request timed out after 1 s: {waited:?}");
    // Delivered once: nothing more arrives.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.requests().len(), 4);
    assert!(agent.stderr().contains("alert delivered after retries"), "{}", agent.stderr());
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn webhook_4xx_is_a_permanent_failure_and_the_next_alert_still_goes() {
    let receiver = Receiver::start(vec![Reply::Status(400)]);
    let w = World::new();
    let sinks = format!(
        "[[sinks]]\ntype = \"stdout\"\n[[sinks]]\ntype = \"webhook\"\nurl = \"{}\"\nformat = \"slack\"\nretry_initial = \"100ms\"\n",
        receiver.url()
    );
    let agent = Agent::start(&w.config(&sinks));
    let first = raise_alert(&w, &agent, &format!("{CN_V4}:443"), 443);
    let second = raise_alert(&w, &agent, &format!("{CN_V4}:8443"), 8443);
    let reqs = receiver.wait_until("both alerts", WAIT, |r| r.len() >= 2);
    std::thread::sleep(Duration::from_millis(600));
    let reqs_after = receiver.requests();
    assert_eq!(reqs_after.len(), 2, "the refused alert is not retried: {reqs_after:#?}");
    assert_eq!(reqs[0].id.as_deref(), first["id"].as_str());
    assert_eq!(reqs[1].id.as_deref(), second["id"].as_str());
    // Slack format: a chat-ready text with the key fields.
    let body: Value = serde_json::from_str(&reqs[1].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("*critical* residency violation") && text.contains(&format!("{CN_V4}:8443 (CN)")),
        "{text}"
    );
    assert!(reqs[0].signature.is_none(), "no secret, no signature");
    assert!(agent.stderr().contains("the receiver refused the alert; not retrying it"), "{}", agent.stderr());
}

#[test]
fn alerts_survive_a_receiver_outage_and_an_agent_sigkill() {
    let w = World::new();
    let port = integration_tests::free_port();
    let sinks = format!(
        "[[sinks]]\ntype = \"stdout\"\n[[sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/egress\"\n\
         timeout = \"1s\"\nretry_initial = \"100ms\"\nretry_max = \"300ms\"\n"
    );
    let config = w.config(&sinks);
    // The receiver is down: every alert waits in the outbox.
    let mut agent = Agent::start(&config);
    let mut ids: Vec<String> = Vec::new();
    for (to, p) in
        [(format!("{CN_V4}:443"), 443), (format!("{CN_V4}:8443"), 8443), (format!("[{CN_V6}]:443"), 443)]
    {
        ids.push(raise_alert(&w, &agent, &to, p)["id"].as_str().unwrap().to_owned());
    }
    agent.wait_stderr("alert delivery failed; will retry", WAIT);
    let status = agent.stop_with(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed");

    // Receiver and agent come back; everything pending arrives.
    let receiver = Receiver::start_on(port, vec![]);
    let mut agent = Agent::start(&config);
    agent.wait_stderr("delivering alerts left pending by the previous run", WAIT);
    let reqs = receiver.wait_until("every alert id", WAIT, |r| {
        ids.iter().all(|id| r.iter().any(|q| q.id.as_ref() == Some(id)))
    });
    for id in &ids {
        let q = reqs.iter().find(|q| q.id.as_ref() == Some(id)).unwrap();
        let body: Value = serde_json::from_str(&q.body).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["class"], w.class.as_str());
        assert!([443, 8443].contains(&u64_of(&body["destination"]["port"])), "{body}");
    }
    // The outbox is drained: a clean stop reports no backlog.
    agent.stop();
    assert!(agent.stderr().contains("backlog=0"), "{}", agent.stderr());
}
