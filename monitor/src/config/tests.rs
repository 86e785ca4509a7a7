use super::*;
use crate::policy::{Decision, Severity};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Origin::File("/etc/egress-monitor/test.toml".into()))
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be rejected")
}

#[test]
fn empty_config_gives_defaults_and_a_stdout_sink() {
    let c = parse("").unwrap();
    assert_eq!(c.agent.flush_interval(), Duration::from_secs(10));
    assert_eq!(c.agent.sweep_interval.0, Duration::from_secs(1));
    assert_eq!(c.agent.max_flows(), 65536);
    assert_eq!(c.agent.ring_buffer_size.0, 1 << 20);
    assert!(c.agent.cgroup_root.is_none());
    assert!(c.classes.is_empty());
    assert_eq!(c.effective_sinks(), vec![SinkConfig::Stdout {}]);
}

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../../examples/egress-monitor.toml");
    let c = Config::parse(text, Origin::File("examples/egress-monitor.toml".into())).unwrap();
    assert_eq!(c.class_names(), vec!["us-user-data".to_string()]);
    assert_eq!(c.classes[0].cgroups[0].get_ref().0, "/payments/userdata");
}

#[test]
fn full_config_parses() {
    let c = parse(
        r#"
[agent]
cgroup_root = "/sys/fs/cgroup"
host = "h1"
flush_interval = "30s"
idle_timeout = "2m"
close_grace = "500ms"
max_flows = 131072
ring_buffer_size = 4194304

[[classes]]
name = "us-user-data"
cgroups = ["/payments/userdata/", "//billing"]
uids = [1001, 1002]

[[classes]]
name = "eu.pii"
uids = [2001]

[[sinks]]
type = "stdout"
"#,
    )
    .unwrap();
    assert_eq!(c.agent.cgroup_root.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    assert_eq!(c.agent.host.as_deref(), Some("h1"));
    assert_eq!(c.agent.idle_timeout.0, Duration::from_secs(120));
    assert_eq!(c.agent.close_grace.0, Duration::from_millis(500));
    assert_eq!(c.class_names(), vec!["us-user-data".to_string(), "eu.pii".to_string()]);
    // Paths are normalised.
    let cgroups: Vec<&str> = c.classes[0].cgroups.iter().map(|p| p.get_ref().0.as_str()).collect();
    assert_eq!(cgroups, vec!["/payments/userdata", "/billing"]);
    assert_eq!(c.classes[0].uids.iter().map(|u| *u.get_ref()).collect::<Vec<_>>(), vec![1001, 1002]);
    assert_eq!(c.sinks, vec![SinkConfig::Stdout {}]);
}

#[test]
fn bad_duration_names_file_line_key_and_value() {
    let e = err("[agent]\nflush_interval = \"10 seconds please\"\n");
    assert_eq!(e.line, 2);
    assert_eq!(e.column, 18);
    assert_eq!(e.key, "agent.flush_interval");
    assert!(e.message.contains("\"10 seconds please\""), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("/etc/egress-monitor/test.toml:2:18: agent.flush_interval: invalid duration"),
        "{shown}"
    );
    assert!(shown.contains("flush_interval = \"10 seconds please\""), "the line is quoted: {shown}");
}

#[test]
fn zero_duration_is_rejected() {
    let e = err("[agent]\nsweep_interval = \"0s\"\n");
    assert_eq!(e.key, "agent.sweep_interval");
    assert!(e.message.contains("greater than zero"), "{e}");
}

#[test]
fn relative_cgroup_path_is_rejected_with_its_index() {
    let e = err("[[classes]]\nname = \"a\"\ncgroups = [\"/ok\", \"payments\"]\n");
    assert_eq!(e.line, 3);
    assert_eq!(e.key, "classes[0].cgroups[1]");
    assert!(e.message.contains("\"payments\"") && e.message.contains("starting with '/'"), "{e}");
}

#[test]
fn dotdot_in_cgroup_path_is_rejected() {
    let e = err("[[classes]]\nname = \"a\"\ncgroups = [\"/a/../b\"]\n");
    assert_eq!(e.key, "classes[0].cgroups[0]");
}

#[test]
fn unknown_key_is_rejected() {
    let e = err("[agent]\nflush_intervall = \"10s\"\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("unknown field `flush_intervall`"), "{e}");
    assert!(e.message.contains("flush_interval"), "the valid keys are listed: {e}");
}

#[test]
fn unknown_sink_type_is_rejected() {
    let e = err("[[sinks]]\ntype = \"carrier-pigeon\"\n");
    assert_eq!(e.key, "sinks[0].type");
    assert!(e.message.contains("carrier-pigeon"), "{e}");
}

#[test]
fn wrong_type_is_rejected() {
    let e = err("[[classes]]\nname = \"a\"\nuids = [\"root\"]\n");
    assert_eq!(e.key, "classes[0].uids[0]");
    assert_eq!(e.line, 3);
}

#[test]
fn syntax_error_has_a_line() {
    let e = err("[agent\nhost = 1\n");
    assert_eq!(e.line, 1);
    assert!(e.key.is_empty());
}

#[test]
fn duplicate_class_name_is_rejected() {
    let e = err("[[classes]]\nname = \"a\"\nuids = [1]\n\n[[classes]]\nname = \"a\"\nuids = [2]\n");
    assert_eq!(e.line, 6);
    assert_eq!(e.key, "classes[1].name");
    assert!(e.message.contains("already used by classes[0]"), "{e}");
}

#[test]
fn invalid_class_name_is_rejected() {
    let e = err("[[classes]]\nname = \"us user data\"\nuids = [1]\n");
    assert_eq!(e.key, "classes[0].name");
    assert!(e.message.contains("\"us user data\""), "{e}");
}

#[test]
fn class_without_selectors_is_rejected() {
    let e = err("[[classes]]\nname = \"empty\"\n");
    assert_eq!(e.key, "classes[0]");
    assert!(e.message.contains("selects nothing"), "{e}");
}

#[test]
fn cgroup_in_two_classes_is_rejected() {
    let e = err(
        "[[classes]]\nname = \"a\"\ncgroups = [\"/x\"]\n[[classes]]\nname = \"b\"\ncgroups = [\"/x/\"]\n",
    );
    assert_eq!(e.line, 6);
    assert_eq!(e.key, "classes[1].cgroups[0]");
    assert!(e.message.contains("already selected by class \"a\""), "{e}");
}

#[test]
fn uid_in_two_classes_is_rejected() {
    let e = err("[[classes]]\nname = \"a\"\nuids = [7]\n[[classes]]\nname = \"b\"\nuids = [8, 7]\n");
    assert_eq!(e.key, "classes[1].uids[1]");
    assert_eq!(e.line, 6);
}

#[test]
fn flush_shorter_than_sweep_is_rejected() {
    let e = err("[agent]\nsweep_interval = \"5s\"\nflush_interval = \"1s\"\n");
    assert_eq!(e.key, "agent.flush_interval");
    assert_eq!(e.line, 3);
}

#[test]
fn ring_buffer_size_must_be_a_power_of_two() {
    let e = err("[agent]\nring_buffer_size = 5000\n");
    assert_eq!(e.key, "agent.ring_buffer_size");
    assert!(e.message.contains("5000") && e.message.contains("power of two"), "{e}");
}

#[test]
fn max_flows_too_small_is_rejected() {
    let e = err("[agent]\nmax_flows = 10\n");
    assert_eq!(e.key, "agent.max_flows");
    assert_eq!(e.line, 2);
}

#[test]
fn unreadable_file_names_the_file() {
    let e = Config::from_file(Path::new("/nonexistent/egress.toml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/egress.toml: cannot read"), "{e}");
}

const SITE: &str =
    "[[sites]]\nname = \"dc-us-east\"\ncountry = \"US\"\ncidrs = [\"10.20.0.0/16\", \"2001:db8:20::/48\"]\n";

#[test]
fn residency_config_parses() {
    let c = parse(&format!(
        "[geoip]\ncountry_db = \"/usr/share/GeoIP/GeoLite2-Country.mmdb\"\ncloud_ranges = [\"/etc/egress-monitor/oci.json\"]\n\
         reload_interval = \"5m\"\n{SITE}\
         [[classes]]\nname = \"us-user-data\"\ncgroups = [\"/payments/userdata\"]\n\
         approved = [\"US\", \"US-VA\", \"oci:us-*\", \"dc-us-east\", \"AS31898\"]\n\
         unknown = \"allow\"\ninternal = \"violation\"\nseverity = \"critical\"\n\
         [alerts]\ncooldown = \"15m\"\n"
    ))
    .unwrap();
    assert_eq!(c.geoip.cloud_ranges.len(), 1);
    assert_eq!(c.geoip.reload_interval.0, Duration::from_secs(300));
    assert_eq!(c.sites[0].cidrs.len(), 2);
    let class = &c.classes[0];
    assert_eq!(class.approved.len(), 5);
    assert_eq!(
        (class.unknown, class.internal, class.severity),
        (Decision::Allow, Decision::Violation, Severity::Critical)
    );
    assert_eq!(c.alerts.cooldown.0, Duration::from_secs(900));
}

#[test]
fn residency_defaults() {
    let c = parse("[[classes]]\nname = \"a\"\nuids = [1]\n").unwrap();
    let class = &c.classes[0];
    assert_eq!(
        (class.unknown, class.internal, class.severity),
        (Decision::Violation, Decision::Allow, Severity::High)
    );
    assert_eq!(c.alerts.cooldown.0, Duration::from_secs(600));
    assert!(c.geoip.country_db.is_none());
}

#[test]
fn bad_approved_entries_are_named() {
    for (entry, expect) in [
        ("\"XX\"", "unknown country code \"XX\""),
        ("\"oci:us-**\"", "'**' is not allowed"),
        ("\"US*\"", "'*' is only allowed in cloud regions"),
        ("\"ibm:us-south\"", "unknown provider \"ibm\""),
    ] {
        let e = err(&format!("[[classes]]\nname = \"a\"\nuids = [1]\napproved = [\"US\", {entry}]\n"));
        assert_eq!((e.key.as_str(), e.line), ("classes[0].approved[1]", 4), "{e}");
        assert!(e.message.contains(expect), "{entry}: {e}");
    }
}

#[test]
fn unknown_site_name_in_approved_is_rejected() {
    let e = err(&format!("{SITE}[[classes]]\nname = \"a\"\nuids = [1]\napproved = [\"dc-us-west\"]\n"));
    assert_eq!(e.key, "classes[0].approved[0]");
    assert_eq!(e.line, 8);
    assert!(e.message.contains("\"dc-us-west\"") && e.message.contains("sites: dc-us-east"), "{e}");
}

#[test]
fn malformed_site_cidr_is_rejected() {
    let e = err("[[sites]]\nname = \"dc\"\ncountry = \"SG\"\ncidrs = [\"10.60.0.0/16\", \"10.60.0.0/33\"]\n");
    assert_eq!((e.key.as_str(), e.line), ("sites[0].cidrs[1]", 4));
    assert!(e.message.contains("invalid CIDR \"10.60.0.0/33\""), "{e}");
    let e = err("[[sites]]\nname = \"dc\"\ncountry = \"SG\"\ncidrs = [\"10.60.1.0/16\"]\n");
    assert!(e.message.contains("did you mean \"10.60.0.0/16\""), "{e}");
}

#[test]
fn site_country_and_name_are_checked() {
    let e = err("[[sites]]\nname = \"dc\"\ncountry = \"XX\"\ncidrs = [\"10.60.0.0/16\"]\n");
    assert_eq!(e.key, "sites[0].country");
    assert!(e.message.contains("unknown country code \"XX\""), "{e}");
    let e = err("[[sites]]\nname = \"SG\"\ncountry = \"SG\"\ncidrs = [\"10.60.0.0/16\"]\n");
    assert_eq!(e.key, "sites[0].name");
    assert!(e.message.contains("reads as a country code"), "{e}");
    let e = err("[[sites]]\nname = \"dc\"\ncountry = \"SG\"\ncidrs = []\n");
    assert_eq!(e.key, "sites[0].cidrs");
}

#[test]
fn bad_severity_and_decision_are_rejected() {
    let e = err("[[classes]]\nname = \"a\"\nuids = [1]\nseverity = \"urgent\"\n");
    assert_eq!(e.key, "classes[0].severity");
    assert!(e.message.contains("urgent") && e.message.contains("critical"), "{e}");
    let e = err("[[classes]]\nname = \"a\"\nuids = [1]\nunknown = \"deny\"\n");
    assert_eq!(e.key, "classes[0].unknown");
}

#[test]
fn alert_sinks_parse() {
    let c = parse(
        r#"
[[classes]]
name = "us-user-data"
uids = [1]

[[sinks]]
type = "syslog"
address = "tls://siem.example:6514"
format = "rfc3164"
facility = "local4"
min_severity = "high"
classes = ["us-user-data"]
retry_initial = "2s"
retry_max = "1m"

[[sinks]]
type = "webhook"
url = "https://hooks.example/egress"
format = "slack"
secret_file = "/etc/egress-monitor/webhook.secret"
headers = { "X-Team" = "secops" }
timeout = "3s"

[[sinks]]
type = "stdout"
"#,
    )
    .unwrap();
    let s: &SyslogOptions = c.sinks[0].options().unwrap_or_else(|| panic!("{:?}", c.sinks[0]));
    assert_eq!(s.address, SyslogAddress::Tls { host: "siem.example".into(), port: 6514 });
    assert_eq!((s.format, s.facility), (SyslogFormat::Rfc3164, Facility(20)));
    assert_eq!(
        c.sinks[0].retry(),
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            max_age: Duration::from_secs(86400)
        }
    );
    let f = c.sinks[0].alert_filter().unwrap();
    assert!(f.accepts("us-user-data", Severity::Critical) && f.accepts("us-user-data", Severity::High));
    assert!(!f.accepts("us-user-data", Severity::Medium), "below min_severity");
    assert!(!f.accepts("eu-pii", Severity::Critical), "another class");
    let wh: &WebhookOptions = c.sinks[1].options().unwrap_or_else(|| panic!("{:?}", c.sinks[1]));
    assert_eq!((wh.format, wh.timeout), (WebhookFormat::Slack, Duration::from_secs(3)));
    assert_eq!(wh.headers.get("X-Team").map(String::as_str), Some("secops"));
    assert_eq!(c.sinks[1].name(), "webhook:https://hooks.example", "no path: it may hold the secret");
    assert_eq!(
        c.sinks[1].retry(),
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_age: Duration::from_secs(86400)
        }
    );
    assert!(c.sinks[2].alert_filter().is_none());
}

#[test]
fn bad_alert_sinks_are_named() {
    for (sink, key, expect) in [
        (
            "type = \"syslog\"\naddress = \"logs:514\"",
            "sinks[0].address",
            "invalid syslog address \"logs:514\"",
        ),
        (
            "type = \"syslog\"\naddress = \"udp://h\"\nurl = \"http://x\"",
            "sinks[0].url",
            "`url` is not a key of a syslog sink",
        ),
        (
            "type = \"syslog\"\naddress = \"udp://h\"\nformat = \"json\"",
            "sinks[0].format",
            "unknown format \"json\" for a syslog sink",
        ),
        (
            "type = \"syslog\"\naddress = \"udp://h\"\nfacility = \"mail2\"",
            "sinks[0].facility",
            "unknown syslog facility",
        ),
        ("type = \"syslog\"", "sinks[0].address", "a syslog sink needs `address`"),
        ("type = \"webhook\"\nurl = \"ftp://x\"", "sinks[0].url", "expected an http:// or https:// URL"),
        (
            "type = \"webhook\"\nurl = \"http://x\"\nretry_initial = \"10s\"\nretry_max = \"1s\"",
            "sinks[0].retry_max",
            "shorter than",
        ),
        ("type = \"stdout\"\naddress = \"udp://h\"", "sinks[0].address", "stdout sinks take no other keys"),
        (
            "type = \"webhook\"\nurl = \"http://x\"\nclasses = [\"nope\"]",
            "sinks[0].classes[0]",
            "no class is named \"nope\"",
        ),
    ] {
        let e = err(&format!("[[sinks]]\n{sink}\n"));
        assert_eq!(e.key, key, "{sink}: {e}");
        assert!(e.message.contains(expect), "{sink}: {e}");
        assert!(e.line > 0, "{sink}: the line is known: {e}");
    }
}

#[test]
fn two_sinks_with_the_same_name_are_rejected() {
    let e = err(
        "[[sinks]]\ntype = \"syslog\"\naddress = \"udp://h\"\n[[sinks]]\ntype = \"syslog\"\naddress = \"udp://h:514\"\n",
    );
    assert_eq!((e.key.as_str(), e.line), ("sinks[1]", 5));
    assert!(e.message.contains("\"syslog:udp://h:514\" is the same as sinks[0]"), "{e}");
}

#[test]
fn a_class_selected_by_uid_alone_cannot_enforce() {
    let e = err("[[classes]]\nname = \"a\"\nuids = [1000]\nmode = \"enforce\"\n");
    assert_eq!((e.line, e.key.as_str()), (4, "classes[0].mode"), "{e}");
    assert!(e.message.contains("selected by uid alone and cannot enforce"), "{e}");
    let e = err("[[classes]]\nname = \"a\"\ncgroups = [\"/a\", \"/\"]\nmode = \"enforce\"\n");
    assert_eq!((e.line, e.key.as_str()), (3, "classes[0].cgroups[1]"), "{e}");
    assert!(e.message.contains("never attaches there"), "{e}");
    let e = err("[[classes]]\nname = \"a\"\ncgroups = [\"/a\"]\nmode = \"block\"\n");
    assert_eq!(e.key, "classes[0].mode", "{e}");
    let ok = Config::parse(
        "[[classes]]\nname = \"a\"\ncgroups = [\"/a\"]\nmode = \"enforce\"\n",
        Origin::Embedded,
    );
    assert_eq!(ok.unwrap().class_modes(), [crate::config::Mode::Enforce]);
}
