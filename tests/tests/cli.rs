//! The command line without the daemon: `lookup` answers from the configured sources, and
//! `check-config` refuses bad configurations with the file, line, key and value.

use std::process::{Command, Output};

use integration_tests::built_binary;
use monitor::enrich::fixtures;
use serde_json::Value;

fn egress_monitor(args: &[&str]) -> Output {
    Command::new(built_binary("egress-monitor")).args(args).output().expect("run egress-monitor")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config over fixture files in a temporary directory.
fn config_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("country.mmdb"),
        fixtures::geoip2_country(&[
            ("175.16.199.0/24", Some("CN"), None),
            ("216.160.83.0/24", Some("US"), None),
        ]),
    )
    .unwrap();
    std::fs::write(p.join("city.mmdb"), fixtures::geoip2_city(&[("216.160.83.0/24", "US", "WA")])).unwrap();
    std::fs::write(p.join("asn.mmdb"), fixtures::geoip2_asn(&[("216.160.83.0/24", 209, "CenturyLink")]))
        .unwrap();
    std::fs::write(p.join("aws.json"), fixtures::aws_ranges(&[("2001:db8:aa::/48", "us-east-1")])).unwrap();
    let d = p.display();
    let config = format!(
        r#"
[geoip]
country_db = "{d}/country.mmdb"
city_db = "{d}/city.mmdb"
asn_db = "{d}/asn.mmdb"
cloud_ranges = ["{d}/aws.json"]

[[sites]]
name = "dc-us-east"
country = "US"
cidrs = ["10.20.0.0/16"]

[[classes]]
name = "us-user-data"
uids = [1001]
cgroups = ["/payments"]
approved = ["US-WA", "aws:us-*", "dc-us-east"]
mode = "enforce"

[[classes]]
name = "telemetry"
uids = [1002]
approved = ["CN"]
"#
    );
    let path = p.join("egress-monitor.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn lookup_json_places_each_address_and_judges_each_class() {
    let (_dir, config) = config_dir();
    let out = egress_monitor(&[
        "lookup",
        "175.16.199.1",
        "216.160.83.56",
        "2001:db8:aa::7",
        "10.20.0.9",
        "--config",
        &config,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 4);
    let verdicts = |a: &Value| -> Vec<String> {
        a["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{}={}", c["class"].as_str().unwrap(), c["verdict"].as_str().unwrap()))
            .collect()
    };

    let cn = &answers[0];
    assert_eq!(
        (cn["address"].as_str(), cn["destination"]["country"].as_str()),
        (Some("175.16.199.1"), Some("CN"))
    );
    assert_eq!(verdicts(cn), ["us-user-data=violation", "telemetry=allowed"]);
    // What the kernel does there: the enforcing class is refused; an observing one never is.
    assert_eq!(
        (&cn["classes"][0]["kernel"], &cn["classes"][1]["kernel"]),
        (&"block".into(), &"allow".into())
    );
    assert_eq!(answers[1]["classes"][1]["kernel"], "allow", "telemetry observes its violation");
    assert_eq!(cn["classes"][0]["reason"], "destination country CN is not approved for class us-user-data");

    let us = &answers[1]["destination"];
    assert_eq!((us["country"].as_str(), us["subdivision"].as_str()), (Some("US"), Some("US-WA")));
    assert_eq!((us["asn"].as_u64(), us["as_org"].as_str()), (Some(209), Some("CenturyLink")));
    assert_eq!(verdicts(&answers[1]), ["us-user-data=allowed", "telemetry=violation"]);

    let aws = &answers[2]["destination"];
    assert_eq!(
        (aws["cloud_provider"].as_str(), aws["cloud_region"].as_str()),
        (Some("aws"), Some("us-east-1"))
    );
    assert_eq!(verdicts(&answers[2])[0], "us-user-data=allowed");
    // No country for this address, but its cloud region places it.
    assert_eq!(
        answers[2]["classes"][1]["reason"],
        "destination cloud region aws:us-east-1 is not approved for class telemetry"
    );

    let site = &answers[3]["destination"];
    assert_eq!(
        (site["site"].as_str(), site["country"].as_str(), site["internal"].as_bool()),
        (Some("dc-us-east"), Some("US"), Some(false))
    );
}

#[test]
fn lookup_table_for_people() {
    let (_dir, config) = config_dir();
    let out = egress_monitor(&["lookup", "175.16.199.1", "192.168.1.1", "--config", &config]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let row = |prefix: &str| {
        shown
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} row:\n{shown}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("ADDRESS")[..6], ["ADDRESS", "COUNTRY", "SUBDIVISION", "NETWORK", "CLOUD", "SITE"]);
    assert_eq!(row("175.16.199.1")[..2], ["175.16.199.1", "CN"]);
    assert_eq!(row("192.168.1.1")[..2], ["192.168.1.1", "internal"]);
    assert!(
        shown.contains(
            "us-user-data  VIOLATION  block   destination country CN is not approved for class us-user-data"
        ),
        "{shown}"
    );
}

#[test]
fn lookup_without_config_uses_the_embedded_database() {
    let out = egress_monitor(&["lookup", "8.8.8.8", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["destination"]["country"], "US");
    assert_eq!(v["classes"], Value::Array(vec![]));
}

#[test]
fn lookup_rejects_a_bad_address_and_a_corrupt_database() {
    let out = egress_monitor(&["lookup", "999.1.1.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid value '999.1.1.1'"), "{}", text(&out.stderr));

    let (dir, config) = config_dir();
    std::fs::write(dir.path().join("city.mmdb"), b"not a database").unwrap();
    let out = egress_monitor(&["lookup", "8.8.8.8", "--config", &config]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("geoip.city_db: ") && err.contains("city.mmdb: not a valid MaxMind DB file"),
        "{err}"
    );
}

#[test]
fn check_config_names_file_line_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[classes]]\nname = \"us-user-data\"\nuids = [1001]\napproved = [\"US\", \"oci:us-**\"]\n",
    )
    .unwrap();
    let out = egress_monitor(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("error: {}:4:", path.display())), "{err}");
    assert!(err.contains("classes[0].approved[1]: invalid wildcard in \"oci:us-**\""), "{err}");
    assert!(err.contains("approved = [\"US\", \"oci:us-**\"]"), "the line is quoted: {err}");

    let (_d, good) = config_dir();
    let out = egress_monitor(&["check-config", "--config", &good]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (2 classes"), "{}", text(&out.stdout));

    // A file that is not there: the line that names it.
    let missing = dir.path().join("GeoLite2-Country.mmdb");
    std::fs::write(
        &path,
        format!("[agent]\nhost = \"h\"\n\n[geoip]\ncountry_db = {:?}\n", missing.to_str().unwrap()),
    )
    .unwrap();
    let out = egress_monitor(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("error: {}:5:", path.display())), "{err}");
    assert!(err.contains(&format!("geoip.country_db: no such file: {}", missing.display())), "{err}");

    // A class cgroup that does not exist: allowed (it may appear later), with a warning that
    // names its line.
    std::fs::write(&path, "[[classes]]\nname = \"payments\"\ncgroups = [\"/no-such-cgroup-here/paymnts\"]\n")
        .unwrap();
    let out = egress_monitor(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("warning: {}:3: classes[0].cgroups[0]: no cgroup at ", path.display()))
            && stdout.contains("/no-such-cgroup-here/paymnts (yet)"),
        "{stdout}"
    );
}

#[test]
fn check_config_refuses_bad_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sinks.toml");
    let check = |config: &str| {
        std::fs::write(&path, config).unwrap();
        let out = egress_monitor(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{config}");
        text(&out.stderr)
    };
    let err = check("[[sinks]]\ntype = \"syslog\"\naddress = \"syslog.internal:514\"\n");
    assert!(err.contains(":3:11: sinks[0].address: invalid syslog address \"syslog.internal:514\""), "{err}");
    let secret = dir.path().join("missing.secret");
    let err = check(&format!(
        "[[sinks]]\ntype = \"webhook\"\nurl = \"https://hooks.example/egress\"\nsecret_file = {:?}\n",
        secret.to_str().unwrap()
    ));
    assert!(err.contains(&format!("sinks[0].secret_file: {}: cannot read it", secret.display())), "{err}");
    std::fs::write(&secret, "\n").unwrap();
    let err = check(&format!(
        "[[sinks]]\ntype = \"webhook\"\nurl = \"https://hooks.example/egress\"\nsecret_file = {:?}\n",
        secret.to_str().unwrap()
    ));
    assert!(err.contains("the file is empty"), "{err}");
}
