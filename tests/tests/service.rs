//! The agent as a systemd service, without systemd running here: what it tells the service
//! manager over `NOTIFY_SOCKET` (readiness only once the programs are attached, the watchdog,
//! reloads, the stop) and how it logs when its stderr is the journal.

use std::{
    os::unix::net::UnixDatagram,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{Agent, built_binary, require_root, unique};

/// The agent started as systemd starts a `Type=notify` unit with `WatchdogSec=`, its stderr a
/// file standing for the journal (`JOURNAL_STREAM` names it).
struct Service {
    child: Child,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    pin_dir: std::path::PathBuf,
    notify: UnixDatagram,
}

impl Service {
    fn start() -> Service {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/em-test-{}", unique("service")));
        let config = dir.path().join("egress-monitor.toml");
        let d = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{d}/state\"\npin_dir = {:?}\n[api]\nsocket = \"{d}/api.sock\"\n\
                 [[classes]]\nname = \"service-test\"\nuids = [4242]\napproved = [\"US\"]\n",
                pin_dir.to_str().unwrap()
            ),
        )
        .unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let journal = std::fs::File::create(dir.path().join("journal")).unwrap();
        let meta = std::fs::metadata(dir.path().join("journal")).unwrap();
        use std::os::unix::fs::MetadataExt;
        // systemd names the process the watchdog is for: the shell's pid is the agent's after exec.
        let child = Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
            .arg(built_binary("egress-monitor"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "10000000")
            .env_remove("WATCHDOG_PID")
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(journal)
            .spawn()
            .unwrap();
        Service { child, dir, config, pin_dir, notify }
    }

    /// The next notification within `timeout`; panics with the log when none comes.
    fn next(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("no notification within {timeout:?}; the agent's log:\n{}", self.log());
    }

    /// The next notification that contains `what`; the ones before it are returned too.
    fn until(&self, what: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let m = self.next(deadline.saturating_duration_since(Instant::now()));
            let done = m.lines().any(|l| l == what);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("journal")).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Links pinned under the agent's set (the programs attached to the cgroup root).
    fn pinned_links(&self) -> Vec<String> {
        let mut out = Vec::new();
        for set in std::fs::read_dir(&self.pin_dir).into_iter().flatten().flatten() {
            for link in std::fs::read_dir(set.path().join("links")).into_iter().flatten().flatten() {
                out.push(link.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(built_binary("egress-monitor"))
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[test]
fn readiness_comes_after_attach_then_the_watchdog_reloads_and_the_stop_are_told() {
    let service = Service::start();
    // The first notification is readiness, and by then the programs are attached and pinned.
    let first = service.next(Duration::from_secs(60));
    assert!(first.lines().any(|l| l == "READY=1"), "first notification: {first:?}");
    let links = service.pinned_links();
    assert!(
        links.iter().any(|l| l == "flow_egress") && links.iter().any(|l| l == "sock_release"),
        "READY=1 came before the programs were attached: pinned links {links:?}"
    );
    assert!(service.log().contains("agent running"), "{}", service.log());
    assert!(first.contains("STATUS=counting; 1 classes"), "{first:?}");

    // The watchdog is fed at every sweep (1 s).
    service.until("WATCHDOG=1", Duration::from_secs(5));

    // A reload is announced, and its end too (here applied: the class selects another uid).
    let text = std::fs::read_to_string(&service.config).unwrap();
    std::fs::write(&service.config, text.replace("uids = [4242]", "uids = [4243]")).unwrap();
    service.signal(libc::SIGHUP);
    let reload = service.until("READY=1", Duration::from_secs(20));
    assert!(
        reload.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")),
        "no RELOADING=1 before READY=1: {reload:?}"
    );

    service.signal(libc::SIGTERM);
    service.until("STOPPING=1", Duration::from_secs(20));

    // Under the journal: each line starts with its priority and has no timestamp of its own.
    let log = service.log();
    assert!(log.lines().any(|l| l.starts_with("<6>agent running")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("<6>SIGHUP: the configuration was reloaded")), "{log}");
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with('<') && line.as_bytes().get(2) == Some(&b'>'),
            "no priority prefix: {line:?}"
        );
        assert!(!line[3..].starts_with(&chrono_year()), "a timestamp in a journal line: {line:?}");
    }
}

/// This year, as a timestamp would show it ("2026-").
fn chrono_year() -> String {
    let out = Command::new("date").arg("+%Y-").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn json_logs_are_one_object_per_line() {
    // The configuration key (no --log-format): every line the agent logs is one JSON object.
    let mut agent = Agent::start(
        "[agent]\nlog_format = \"json\"\nstate_dir = \"{agent_dir}/state\"\n[api]\nsocket = \"{agent_dir}/api.sock\"\n",
    );
    agent.stop();
    let stderr = agent.stderr();
    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object: {line:?}: {e}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m.starts_with("agent running")), "{stderr}");
    assert!(messages.iter().any(|m| m == "SIGTERM: stopping"), "{stderr}");
}
