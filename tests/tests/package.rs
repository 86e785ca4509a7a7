//! The Debian package `cargo xtask package` builds (and `cargo xtask test` builds before the
//! tests): installed with dpkg on this machine, checked the way an operations team would (the
//! unit, its hardening score, the manual pages, completions, the installed configuration), the
//! installed agent run, then removed and purged: nothing left attached, nothing left behind.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use integration_tests::require_root;

const UNIT: &str = "/usr/lib/systemd/system/egress-monitor.service";
const CONFFILE: &str = "/etc/egress-monitor/egress-monitor.toml";
const BIN: &str = "/usr/bin/egress-monitor";
const PIN_DIR: &str = "/sys/fs/bpf/egress-monitor";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The one .deb in target/debian.
fn deb() -> PathBuf {
    let dir = workspace().join("target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: `cargo xtask package` writes the package there", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one package in {}: {debs:?}", dir.display());
    debs[0].clone()
}

fn cmd(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = cmd(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package (and detaches what its agent left) even when the test fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if Path::new(BIN).exists() {
            let _ = cmd(BIN, &["detach"]);
        }
        let _ = cmd("dpkg", &["--purge", "egress-monitor"]);
    }
}

#[test]
fn the_package_installs_runs_and_is_removed_cleanly() {
    require_root();
    let deb = deb();
    let _ = cmd("dpkg", &["--purge", "egress-monitor"]);
    let installed = Installed;
    ok("dpkg", &["-i", deb.to_str().unwrap()]);

    // What it installs.
    for f in [
        BIN,
        CONFFILE,
        UNIT,
        "/usr/share/man/man8/egress-monitor.8.gz",
        "/usr/share/man/man8/egress-monitor-run.8.gz",
        "/usr/share/man/man8/egress-monitor-detach.8.gz",
        "/usr/share/bash-completion/completions/egress-monitor",
        "/usr/share/zsh/vendor-completions/_egress-monitor",
        "/usr/share/fish/vendor_completions.d/egress-monitor.fish",
        "/usr/share/doc/egress-monitor/NOTICE",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    assert!(ok("dpkg-query", &["-W", "-f", "${Conffiles}", "egress-monitor"]).contains(CONFFILE));
    assert!(ok("getent", &["group", "egress-monitor"]).starts_with("egress-monitor:"));
    let notice = std::fs::read_to_string("/usr/share/doc/egress-monitor/NOTICE").unwrap();
    assert!(notice.contains("DB-IP") && notice.contains("CC BY 4.0"), "{notice}");

    // The unit: systemd's own checks.
    let verify = cmd("systemd-analyze", &["verify", UNIT]);
    let verify_err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !verify_err.contains("egress-monitor.service:"),
        "systemd-analyze verify: {}\n{verify_err}",
        verify.status
    );
    let exposure = exposure(&ok("systemd-analyze", &["security", "--offline=true", UNIT]));
    assert!(exposure <= 3.0, "exposure {exposure} (at most 3.0)");
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level of **{exposure:.1}**")),
        "the README does not state the unit's exposure level, {exposure:.1}"
    );
    // The unit grants exactly the capabilities the README lists.
    let privileges = readme.lines().find(|l| l.starts_with("- Privileges:")).expect("README: - Privileges:");
    let listed: Vec<&str> = privileges.split('`').filter(|w| w.starts_with("CAP_")).collect();
    let mut granted: Vec<String> = unit_capabilities().iter().map(|c| format!("CAP_{c}")).collect();
    granted.sort();
    let mut listed_sorted: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    listed_sorted.sort();
    assert_eq!(granted, listed_sorted, "the unit's CapabilityBoundingSet and the README's privileges differ");

    // The manual pages render, and say what they are about.
    let page = man("/usr/share/man/man8/egress-monitor.8.gz");
    assert!(
        page.contains("EGRESS-MONITOR(8)") && page.contains("SYNOPSIS") && page.contains("check-config"),
        "{page}"
    );
    let run = man("/usr/share/man/man8/egress-monitor-run.8.gz");
    assert!(run.contains("egress-monitor run") && run.contains("--config"), "{run}");

    // Completions: bash knows the command and its subcommands.
    let bash = ok(
        "bash",
        &["-c", "source /usr/share/bash-completion/completions/egress-monitor && complete -p egress-monitor"],
    );
    assert!(bash.contains("egress-monitor"), "{bash}");

    // The installed configuration is valid and sets nothing: the embedded defaults.
    ok(BIN, &["check-config", "--config", CONFFILE]);
    let conf = std::fs::read_to_string(CONFFILE).unwrap();
    assert!(conf.contains("# [[classes]]"), "{conf}");

    // The installed agent runs as the unit starts it, and leaves its programs pinned when it stops.
    let ids = run_installed_agent();
    assert!(!ids.is_empty());
    assert!(has_program_set(), "no program set pinned under {PIN_DIR} after the agent stopped");

    // Removal detaches the programs and removes the files; the configuration and state stay.
    ok("dpkg", &["-r", "egress-monitor"]);
    assert!(!has_program_set(), "a program set is still pinned under {PIN_DIR} after dpkg -r");
    for id in &ids {
        let out = cmd("bpftool", &["prog", "show", "id", &id.to_string()]);
        assert!(!out.status.success(), "program {id} still loaded after dpkg -r");
    }
    for f in [BIN, UNIT, "/usr/share/man/man8/egress-monitor.8.gz"] {
        assert!(!Path::new(f).exists(), "{f} left after dpkg -r");
    }
    assert!(Path::new(CONFFILE).exists(), "dpkg -r removed the conffile (only a purge should)");
    assert!(Path::new("/var/lib/egress-monitor").exists(), "dpkg -r removed the state directory");

    // Purge removes them too.
    ok("dpkg", &["--purge", "egress-monitor"]);
    assert!(!Path::new(CONFFILE).exists() && !Path::new("/var/lib/egress-monitor").exists());
    drop(installed);
}

/// "Overall exposure level for egress-monitor.service: 2.6 OK"
fn exposure(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    let after = line.rsplit_once(": ").map(|(_, r)| r).unwrap_or_default();
    after.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

fn man(path: &str) -> String {
    let out = Command::new("man").args(["-P", "cat", "-l", path]).env("MANWIDTH", "100").output().unwrap();
    assert!(out.status.success(), "man -l {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts /usr/bin/egress-monitor on the installed configuration, waits until it runs, stops it
/// (SIGTERM); the ids of the programs it attached.
fn run_installed_agent() -> Vec<u32> {
    let log = tempfile::NamedTempFile::new().unwrap();
    // With only the unit's capabilities (and no new privileges), as systemd would start it.
    let caps: Vec<String> = unit_capabilities().iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    // And in the group the unit runs it in (Group=egress-monitor): the API socket's group.
    let gid = group_id();
    let mut child = Command::new("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .args(["--inh-caps=-all", "--no-new-privs", &format!("--regid={gid}"), "--clear-groups"])
        .args([BIN, "run", "--config", CONFFILE])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read().contains("agent running") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the installed agent exited ({status}):\n{}", read());
        }
        assert!(Instant::now() < deadline, "the installed agent did not start:\n{}", read());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A member of the group who is not root (nobody, here) may use the API socket.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let socket = std::fs::metadata("/run/egress-monitor/api.sock").unwrap();
    assert_eq!((socket.gid(), socket.permissions().mode() & 0o777), (gid, 0o660), "the API socket");
    let status = Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", BIN, "status", "-o", "json"])
        .args(["--config", CONFFILE])
        .output()
        .unwrap();
    assert!(
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("\"programs\""),
        "status as nobody in group egress-monitor: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "the installed agent exited with {status}:\n{}", read());
    integration_tests::agent::program_ids(&read())
}

/// `CapabilityBoundingSet=` of the unit, without the `CAP_` prefixes.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let line =
        unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet=");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_owned()).collect()
}

/// The gid of the group the package creates.
fn group_id() -> u32 {
    let line = ok("getent", &["group", "egress-monitor"]);
    line.split(':').nth(2).and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("getent group: {line}"))
}

fn has_program_set() -> bool {
    std::fs::read_dir(PIN_DIR)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("set-")))
        .unwrap_or(false)
}
