//! The integration-test harness. Each test builds its own world (the `test-world` crate, which
//! the benchmarks use too) and tears it down on drop, also when the test fails: network
//! namespaces joined by a veth pair, a cgroup under the cgroup v2 root, the real agent binary,
//! and traffic processes placed in both.

pub mod agent;
pub mod api;
pub mod capture;
pub mod cgroups;
pub mod clickhouse;
pub mod http;
pub mod netns;
pub mod records;
pub mod rsyslog;
pub mod traffic;
pub mod world;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

pub use agent::Agent;
pub use cgroups::TestCgroup;
pub use netns::Topology;

pub use test_world::unique;

/// A small number unique within this test process (for addresses and uids).
pub fn unique_index() -> u32 {
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The integration tests load eBPF programs and create namespaces: they need root. Not being
/// root is a failure, never a skip.
pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the integration tests need root: run `cargo xtask test` as root"
    );
}

/// A binary built by cargo next to the test executable (target/<profile>/<name>).
pub fn built_binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/<test>");
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is not built: `cargo xtask test` builds it before the tests", bin.display());
    bin
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    test_world::run(cmd, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a free port").port()
}

/// An HTTP client for the harness. reqwest is built without a bundled crypto provider (as the
/// agent is): install ring's, once.
pub fn http_client() -> reqwest::blocking::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
}

/// Waits until `f` returns Some, checking every 100 ms; panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
