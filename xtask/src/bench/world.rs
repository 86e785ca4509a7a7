//! What the benchmarks run in, all created here and removed on drop (also on failure): two
//! network namespaces joined by a veth pair, a cgroup with a classified `client` and a `server`
//! child, processes placed in them, and the real agent (release build).

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

pub const A_ADDR: &str = "10.200.0.1";
pub const B_ADDR: &str = "10.200.0.2";

use test_world::{Placement, TestCgroup, Topology};
pub use test_world::{Proc, run};

pub struct World {
    // Dropped in this order: the processes (killed with their cgroup) before the namespaces.
    cg: TestCgroup,
    topo: Topology,
    /// The namespaces of host a (clients) and host b (servers).
    pub a: String,
    pub b: String,
    /// This benchmark's cgroup, relative to the root ("/em-bench-123x0").
    pub rel: String,
    pub bin_dir: PathBuf,
}

impl World {
    pub fn new(bin_dir: &Path) -> anyhow::Result<World> {
        // From here on, drop cleans up whatever was made.
        let topo = Topology::with_addresses([A_ADDR, B_ADDR], ["fd98::1", "fd98::2"])?;
        // Minutes of short connections leave tens of thousands in TIME_WAIT on the client:
        // let it reuse them and use the whole port range (both settings are per namespace).
        topo.a.sysctl(&["net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"])?;
        let cg = TestCgroup::new("em-bench-")?;
        for child in ["client", "server"] {
            cg.create(child)?;
        }
        Ok(World {
            a: topo.a.name.clone(),
            b: topo.b.name.clone(),
            rel: cg.rel.clone(),
            topo,
            cg,
            bin_dir: bin_dir.to_owned(),
        })
    }

    pub fn cgroup_dir(&self, child: &str) -> PathBuf {
        self.cg.dir(child)
    }

    /// Starts `program args` in namespace `ns` and cgroup child `cgroup`.
    pub fn spawn(
        &self,
        ns: &str,
        cgroup: &str,
        program: &str,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> anyhow::Result<Proc> {
        let netns = [&self.topo.a, &self.topo.b]
            .into_iter()
            .find(|n| n.name == ns)
            .with_context(|| format!("no namespace {ns} in the benchmark world"))?;
        let dir = self.cgroup_dir(cgroup);
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = test_world::spawn(&mut cmd, &Placement { netns, cgroup: &dir, uid: None })?;
        Ok(Proc { child })
    }

    /// Runs `em-traffic args` in (ns, cgroup) to completion; its last JSON line.
    pub fn traffic(&self, ns: &str, cgroup: &str, args: &[&str]) -> anyhow::Result<Value> {
        self.traffic_on(None, ns, cgroup, args)
    }

    /// As [`World::traffic`], pinned to one CPU when `cpu` is given.
    pub fn traffic_on(
        &self,
        cpu: Option<usize>,
        ns: &str,
        cgroup: &str,
        args: &[&str],
    ) -> anyhow::Result<Value> {
        let bin = self.bin_dir.join("em-traffic");
        let (program, all) = pinned(cpu, bin.to_str().unwrap(), args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut p = self.spawn(ns, cgroup, &program, &all, Stdio::piped(), Stdio::inherit())?;
        let mut out = String::new();
        p.child.stdout.take().unwrap().read_to_string(&mut out)?;
        let status = p.child.wait()?;
        if !status.success() {
            bail!("em-traffic {args:?} failed: {status}");
        }
        serde_json::from_str(out.lines().last().unwrap_or("null")).context("em-traffic's report")
    }

    /// Starts a long-running em-traffic (a server, or a sender that holds its sockets open)
    /// and returns it with the first line it reports.
    pub fn traffic_held(&self, ns: &str, cgroup: &str, args: &[&str]) -> anyhow::Result<(Proc, Value)> {
        self.traffic_held_on(None, ns, cgroup, args)
    }

    pub fn traffic_held_on(
        &self,
        cpu: Option<usize>,
        ns: &str,
        cgroup: &str,
        args: &[&str],
    ) -> anyhow::Result<(Proc, Value)> {
        let bin = self.bin_dir.join("em-traffic");
        let (program, all) = pinned(cpu, bin.to_str().unwrap(), args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut p = self.spawn(ns, cgroup, &program, &all, Stdio::piped(), Stdio::inherit())?;
        let mut byte = [0u8; 1];
        let mut line = Vec::new();
        let out = p.child.stdout.as_mut().unwrap();
        while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let v =
            serde_json::from_slice(&line).with_context(|| format!("em-traffic {args:?} reported nothing"))?;
        Ok((p, v))
    }

    /// Starts a long-running em-traffic server and waits for its "ready".
    pub fn traffic_server(&self, ns: &str, cgroup: &str, args: &[&str]) -> anyhow::Result<Proc> {
        self.traffic_server_on(None, ns, cgroup, args)
    }

    pub fn traffic_server_on(
        &self,
        cpu: Option<usize>,
        ns: &str,
        cgroup: &str,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        let (p, v) = self.traffic_held_on(cpu, ns, cgroup, args)?;
        if v["event"] != "ready" {
            bail!("em-traffic {args:?} did not get ready: {v}");
        }
        Ok(p)
    }
}

/// The command line that runs `program args`, through `taskset` when pinned to a CPU.
fn pinned(cpu: Option<usize>, program: &str, args: &[&str]) -> (String, Vec<String>) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match cpu {
        None => (program.to_owned(), args),
        Some(c) => {
            ("taskset".into(), [vec!["-c".to_owned(), c.to_string(), program.to_owned()], args].concat())
        }
    }
}

/// The agent (release build) with a configuration for benchmarking: the bench cgroup's
/// `client` is classified; records go to /dev/null; the API on a socket of its own.
pub struct Agent {
    proc: Proc,
    pub dir: tempfile::TempDir,
    client: reqwest::blocking::Client,
    bin: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Agent {
    /// An agent on the bench's settings; `agent` replaces some of its `[agent]` settings
    /// (key, TOML value).
    pub fn start(
        world: &World,
        agent_bin: &Path,
        country_db: &Path,
        agent: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        Self::start_with_classes(world, agent_bin, country_db, agent, "")
    }

    /// As [`Agent::start`], with `classes` (TOML) appended to the bench class's table: more
    /// settings of it (`mode = "enforce"`), then more classes.
    pub fn start_with_classes(
        world: &World,
        agent_bin: &Path,
        country_db: &Path,
        agent: &[(&str, &str)],
        classes: &str,
    ) -> anyhow::Result<Agent> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        let state_dir = format!("\"{d}/state\"");
        let pin_dir = format!("\"/sys/fs/bpf/em-bench-{}\"", std::process::id());
        let mut settings = vec![
            ("host", "\"bench\""),
            ("state_dir", state_dir.as_str()),
            ("pin_dir", pin_dir.as_str()),
            ("sweep_interval", "\"1s\""),
            ("flush_interval", "\"10s\""),
            ("idle_timeout", "\"300s\""),
            ("close_grace", "\"300ms\""),
            ("max_flows", "524288"),
        ];
        for (key, value) in agent {
            match settings.iter_mut().find(|(k, _)| k == key) {
                Some(s) => s.1 = value,
                None => settings.push((key, value)),
            }
        }
        let agent_section: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let config = format!(
            r#"[agent]
{agent_section}
[api]
socket = "{d}/api.sock"

[geoip]
country_db = "{db}"

[[classes]]
name = "bench-data"
cgroups = ["{rel}/client"]
approved = ["US"]
{classes}"#,
            db = country_db.display(),
            rel = world.rel,
        );
        std::fs::write(dir.path().join("egress-monitor.toml"), config)?;
        let log = File::create(dir.path().join("agent.log"))?;
        let config = dir.path().join("egress-monitor.toml");
        let child = Command::new(agent_bin)
            .args(["run", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .unix_socket(dir.path().join("api.sock"))
            .timeout(Duration::from_secs(30))
            .build()?;
        let agent = Agent { proc: Proc { child }, dir, client, bin: agent_bin.to_owned(), config };
        // Running: its API answers and it has put its verdict tables in force (measurements
        // start from the agent's steady state, not its start-up).
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get("/v1/status").is_err() || !agent.log().contains("agent running") {
            if Instant::now() > deadline {
                bail!("the agent did not start: {}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The body of a successful GET, unparsed (the load clients only time it).
    pub fn fetch(&self, path: &str) -> anyhow::Result<String> {
        let resp = self.client.get(format!("http://agent{path}")).send()?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp.text()?)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.client.get(format!("http://agent{path}")).send()?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(serde_json::from_str(&resp.text()?)?)
    }

    pub fn stop(mut self) {
        self.proc.stop();
    }
}

/// The agent's programs stay pinned when it stops: remove them.
impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = Command::new(&self.bin).args(["detach", "--config"]).arg(&self.config).output();
    }
}

/// CPU time (user + system, in seconds) and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc/pid/stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        cpu_seconds: (ticks(11) + ticks(12)) / hz,
        rss_kib: kib("VmRSS:"),
        rss_anon_kib: kib("RssAnon:"),
        rss_file_kib: kib("RssFile:"),
    })
}
