//! `cargo xtask setup`: installs, only where missing, everything the build and the tests need.
//! Each step says what it checked and what it did.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::sh;

/// Debian packages, and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links the kernel programs with LLVM 22 (the nightly's LLVM)"),
    ("libpolly-22-dev", "bpf-linker's LLVM 22 link dependency"),
    ("libzstd-dev", "bpf-linker's LLVM 22 link dependency"),
    ("zlib1g-dev", "bpf-linker's LLVM 22 link dependency"),
    ("bpftool", "tests check that the agent leaves no program attached"),
    ("iproute2", "tests build network namespaces joined by veth pairs"),
    ("rsyslog", "tests deliver alerts to a real rsyslogd (started on loopback by the tests)"),
    (
        "clickhouse-server",
        "tests export flow summaries to a real ClickHouse (started on loopback by the tests)",
    ),
    ("iperf3", "benchmarks measure TCP throughput with it"),
    ("tcpdump", "benchmarks compare the monitor with a packet capture"),
    ("pmacct", "benchmarks compare the monitor with pmacctd, flow accounting from a packet capture"),
    ("xz-utils", "benchmarks give the agent the country database as a file"),
    ("binutils", "the Debian package's libc6 dependency is read from the binary with objdump"),
    ("systemd", "tests check the service unit with systemd-analyze (verify, security)"),
    ("man-db", "tests render the manual pages with man -l"),
    ("chromium", "tests open the HTML residency report in a real headless browser"),
];

const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_MAJOR: &str = "22";

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// PATH with cargo's bin directory, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_else(|_| "/root".into())));
    let bin = format!("{cargo_home}/bin");
    if path.split(':').any(|p| p == bin) { path } else { format!("{bin}:{path}") }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("xtask: apt packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    for (p, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("xtask: apt package {p} is missing ({why})");
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    spinner("apt-get update", || quiet(&mut apt(&["update"])))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    spinner(&format!("apt-get install {}", missing.join(" ")), || quiet(&mut install))
}

fn nightly() -> anyhow::Result<()> {
    let out = Command::new("rustc").args(["+nightly", "--version", "--verbose"]).output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => bail!(
            "no nightly Rust toolchain: the kernel programs build with the installed nightly \
             (LLVM {LLVM_MAJOR}). Newer nightlies use LLVM 23, which Debian lacks for bpf-linker."
        ),
    };
    let llvm = text.lines().find_map(|l| l.strip_prefix("LLVM version: ")).unwrap_or("?");
    if !llvm.starts_with(&format!("{LLVM_MAJOR}.")) {
        bail!("the nightly toolchain uses LLVM {llvm}; bpf-linker here is built against LLVM {LLVM_MAJOR}");
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&components.stdout).lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: nightly (LLVM {llvm}) with rust-src: present");
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let path = path_with_cargo_bin();
    let version = Command::new("bpf-linker").arg("--version").env("PATH", &path).output();
    if let Ok(o) = &version
        && String::from_utf8_lossy(&o.stdout).contains(&format!("bpf-linker {BPF_LINKER_VERSION}."))
    {
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    let llvm = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(["install", "bpf-linker", "--locked", "--version", &format!("^{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
        .env("PATH", format!("{llvm}/bin:{path}"))
        .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &llvm);
    spinner(
        &format!("cargo install bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR}; a few minutes)"),
        || quiet(&mut c),
    )
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let path = path_with_cargo_bin();
    let version = Command::new("cargo").args(["fuzz", "--version"]).env("PATH", &path).output();
    if version.is_ok_and(|o| o.status.success()) {
        eprintln!("xtask: cargo-fuzz: present");
        return Ok(());
    }
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(["install", "cargo-fuzz", "--locked"]).env("PATH", &path);
    spinner("cargo install cargo-fuzz (the fuzz targets; a minute or two)", || quiet(&mut c))
}

/// Runs a command with its output captured; shows the output only when it fails.
fn quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(())
}

/// Shows a spinner with the elapsed time while a long step runs.
fn spinner(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("xtask: {spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    let r = f();
    bar.finish_and_clear();
    match &r {
        Ok(()) => eprintln!("xtask: done: {what}"),
        Err(_) => eprintln!("xtask: failed: {what}"),
    }
    r
}
