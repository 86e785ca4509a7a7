//! A world for residency tests: two namespaces, remote hosts that fixture databases place on
//! the map (addresses that exist only in this test's namespaces), a test cgroup with a
//! classified `app`, an unclassified `plain` and a `server` child, and the agent configuration
//! that ties them together.

use std::path::PathBuf;

use monitor::enrich::fixtures;
use serde_json::Value;

use crate::{
    Agent, TestCgroup, Topology,
    records::{ended, port},
    traffic::{Placement, Traffic},
    unique,
};

pub const CN_V4: &str = "175.16.199.1";
pub const US_V4: &str = "216.160.83.56";
/// Country DE, cloud region oci:eu-frankfurt-1.
pub const OCI_FRANKFURT: &str = "130.61.1.1";
/// Site dc-sg-backup (SG).
pub const SITE_SG: &str = "10.60.1.1";
pub const CN_V6: &str = "2001:db8:86::1";
pub const US_V6: &str = "2001:db8:1::1";

pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

pub struct World {
    pub topo: Topology,
    pub cg: TestCgroup,
    /// The classified cgroup's class name (unique to the test).
    pub class: String,
    pub files: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
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
        World { topo, cg, class: unique("class"), files }
    }

    /// A directory for the agent's state (the outbox), kept across agent restarts.
    pub fn state_dir(&self) -> PathBuf {
        self.files.path().join("state")
    }

    /// The agent configuration, with `extra` TOML appended (sinks, more settings).
    pub fn config(&self, extra: &str) -> String {
        let dir = self.files.path().display();
        format!(
            r#"
[agent]
host = "h1"
flush_interval = "1s"
sweep_interval = "200ms"
close_grace = "300ms"
state_dir = "{state}"

[api]
socket = "{{agent_dir}}/api.sock"

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
{extra}"#,
            state = self.state_dir().display(),
            class = self.class,
            app = self.cg.child_rel("app"),
        )
    }

    /// A TCP server in the `server` cgroup of host b, accepting `connections` connections.
    pub fn serve(&self, listen: &str, connections: usize) -> Traffic {
        let mut s = Traffic::start(
            &Placement { netns: &self.topo.b, cgroup: &self.cg.dir("server"), uid: None },
            &["tcp-serve", listen, "0", &connections.to_string()],
        );
        s.next_report();
        s
    }

    /// Connects from cgroup `from` on host a to `to`, `connections` times, sending `bytes`
    /// each time; returns the client's pid and local ports.
    pub fn send(&self, from: &str, to: &str, bytes: usize, connections: usize) -> (u32, Vec<u16>) {
        let c = Traffic::start(
            &Placement { netns: &self.topo.a, cgroup: &self.cg.dir(from), uid: None },
            &["tcp-send", to, &bytes.to_string(), &connections.to_string()],
        );
        let pid = c.pid();
        let report = c.finish();
        (pid, report["locals"].as_array().unwrap().iter().map(port).collect())
    }

    /// A DNS server (em-traffic's) in the `server` cgroup of host a (`on_b` false: a local stub
    /// resolver) or host b, answering with `records` (NAME=IP, NAME=NAME, NAME=!malformed)
    /// and `ttl`.
    pub fn dns_server(&self, on_b: bool, listen: &str, ttl: u32, records: &[&str]) -> Traffic {
        let netns = if on_b { &self.topo.b } else { &self.topo.a };
        let mut args = vec!["dns-serve", listen];
        let ttl = ttl.to_string();
        args.push(&ttl);
        args.extend(records);
        let mut s = Traffic::start(&Placement { netns, cgroup: &self.cg.dir("server"), uid: None }, &args);
        s.next_report();
        s
    }

    /// Resolves `name` at `server` from cgroup `from` on host a (`options`: --aaaa, --tcp,
    /// --connect PORT BYTES); returns the addresses of the answer and the local ports of the
    /// connection that followed.
    pub fn resolve(&self, from: &str, server: &str, name: &str, options: &[&str]) -> (Vec<String>, Vec<u16>) {
        let mut args = vec!["resolve", server, name];
        args.extend(options);
        let mut c =
            Traffic::start(&Placement { netns: &self.topo.a, cgroup: &self.cg.dir(from), uid: None }, &args);
        // With --connect, the connection's report follows the resolution's.
        let (resolved, sent) = match options.contains(&"--connect") {
            true => (c.next_report(), c.finish()),
            false => (c.finish(), Value::Null),
        };
        let addresses = resolved["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let ports = sent["locals"].as_array().map_or_else(Vec::new, |l| l.iter().map(port).collect());
        (addresses, ports)
    }

    /// The final record of a TCP flow of this world.
    pub fn ended(&self, agent: &Agent, sport: u16, dport: u16) -> Value {
        agent.wait_for("for the flow's end", WAIT, ended(&self.cg, "tcp", sport, dport))
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
