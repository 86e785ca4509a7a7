//! `cargo xtask fuzz`: runs each libFuzzer target (fuzz/, cargo-fuzz on the nightly) for a
//! while, starting from the seeds in fuzz/seeds/<target>, and reports the executions. A crash
//! fails the task and names its input, which then belongs in fuzz/regressions/<target>/ (the
//! unit tests replay every file there).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::setup::path_with_cargo_bin;

/// Every target, named as in fuzz/Cargo.toml and after its entry point in monitor::fuzzing.
pub const TARGETS: &[&str] =
    &["config", "cloud_ranges", "mmdb", "api_query", "kernel_event", "dns_answer", "report_verify"];

/// Runs every target (or `only`) for `seconds` each; returns (target, executions) pairs.
/// `quick_build`: a debug build (a few minutes less to compile, fewer executions per second),
/// for the short runs of `cargo xtask test`.
pub fn run(
    root: &Path,
    seconds: u64,
    only: Option<&str>,
    quick_build: bool,
) -> anyhow::Result<Vec<(String, u64)>> {
    let path = path_with_cargo_bin();
    let fuzz = || {
        let mut c = Command::new("cargo");
        // The instrumentation needs the nightly; Rust's own checks make a sanitizer unnecessary
        // for what these targets find (panics, aborts, runaway allocations).
        c.args(["+nightly", "fuzz"]).current_dir(root).env("PATH", &path);
        c
    };
    let profile: &[&str] = if quick_build { &["--dev"] } else { &[] };
    let mut results = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root.join("fuzz/seeds").join(target);
        let out = fuzz()
            .args(["run", "--sanitizer", "none"])
            .args(profile)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1", "-rss_limit_mb=2048"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let artifact = log
                .lines()
                .find_map(|l| l.split("Test unit written to ").nth(1))
                .unwrap_or("(see the log above)");
            eprintln!("{log}");
            bail!(
                "fuzz target {target} found a crash; its input is {artifact}: fix it, then keep the input in \
                 fuzz/regressions/{target}/ (the unit tests replay it)"
            );
        }
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .context("libFuzzer printed no execution count")?;
        eprintln!("xtask: fuzz {target}: {executions} executions in {seconds} s, no crash");
        results.push((target.to_string(), executions));
    }
    Ok(results)
}

/// Writes the executions per target into the README's table (between its markers).
pub fn write_readme(root: &Path, seconds: u64, results: &[(String, u64)]) -> anyhow::Result<()> {
    let path = root.join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (start, end) = ("<!-- fuzz-executions -->\n", "<!-- /fuzz-executions -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        bail!("README.md has no {start:?} ... {end:?} markers");
    };
    let mut table = format!("| target | executions in {seconds} s |\n|---|---|\n");
    for (target, n) in results {
        table += &format!("| {target} | {n} |\n");
    }
    let text = format!("{}{start}{table}{}", &text[..a], &text[b..]);
    std::fs::write(&path, text)?;
    eprintln!("xtask: README.md: fuzz executions written");
    Ok(())
}
