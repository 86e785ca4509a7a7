//! `cargo xtask package`: the Debian package, built with Debian's own dpkg-deb from the release
//! binary (kernel programs embedded), the service unit and maintainer scripts in `packaging/`,
//! and what the binary generates from its command-line definitions (manual pages, completions).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::sh;

/// Where the .deb is written.
pub const OUT_DIR: &str = "target/debian";
/// The configuration the package installs (a conffile: an administrator's edits survive upgrades).
const CONFFILE: &str = "/etc/egress-monitor/egress-monitor.toml";

/// Builds `target/debian/egress-monitor_<version>_amd64.deb` from `target/release`; returns its path.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let bin = root.join("target/release/egress-monitor");
    let version = version(&bin)?;
    let out = root.join(OUT_DIR);
    let stage = out.join("root");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let copy = |from: &Path, to: &str, mode: u32| install(from, &stage.join(to), mode);
    copy(&bin, "usr/bin/egress-monitor", 0o755)?;
    copy(
        &root.join("packaging/egress-monitor.service"),
        "usr/lib/systemd/system/egress-monitor.service",
        0o644,
    )?;
    write(&stage.join(&CONFFILE[1..]), &default_config(&root.join("examples/egress-monitor.toml"))?, 0o644)?;
    let doc = "usr/share/doc/egress-monitor";
    copy(&root.join("NOTICE"), &format!("{doc}/NOTICE"), 0o644)?;
    copy(&root.join("NOTICE"), &format!("{doc}/copyright"), 0o644)?;
    copy(&root.join("README.md"), &format!("{doc}/README.md"), 0o644)?;
    copy(&root.join("examples/egress-monitor.toml"), &format!("{doc}/examples/egress-monitor.toml"), 0o644)?;
    manpages(&bin, &stage.join("usr/share/man/man8"))?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/egress-monitor"),
        ("zsh", "usr/share/zsh/vendor-completions/_egress-monitor"),
        ("fish", "usr/share/fish/vendor_completions.d/egress-monitor.fish"),
    ] {
        let script = output(Command::new(&bin).args(["completions", shell]))?;
        write(&stage.join(path), &script, 0o644)?;
    }
    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(&root.join("packaging/debian").join(script), &format!("DEBIAN/{script}"), 0o755)?;
    }
    write(&debian.join("conffiles"), &format!("{CONFFILE}\n"), 0o644)?;
    let control = control(&version, &glibc_needed(&bin)?, installed_kib(&stage)?);
    write(&debian.join("control"), &control, 0o644)?;
    let deb = out.join(format!("egress-monitor_{version}_amd64.deb"));
    sh(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    eprintln!("xtask: wrote {}", deb.display());
    Ok(deb)
}

/// The package's version: the binary's own (`egress-monitor 0.1.0`).
fn version(bin: &Path) -> anyhow::Result<String> {
    let out = output(Command::new(bin).arg("--version"))?;
    match out.trim().strip_prefix("egress-monitor ") {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => bail!("{} --version printed {out:?}, not \"egress-monitor <version>\"", bin.display()),
    }
}

/// The installed configuration: the example with every setting commented out, so the agent
/// starts on the built-in defaults (the embedded country database, no class yet) and the
/// administrator uncomments what they need; each key keeps its explanation.
pub fn default_config(example: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(example).with_context(|| format!("reading {}", example.display()))?;
    let mut out = String::from(
        "# egress-monitor configuration (/etc/egress-monitor/egress-monitor.toml).\n\
         # Every setting below is commented out: the agent runs on the built-in defaults, with the\n\
         # embedded country database and no data class. Uncomment and edit what you need, check it\n\
         # with `egress-monitor check-config`, then `systemctl reload egress-monitor` (or restart;\n\
         # see egress-monitor-run(8) for what a reload applies).\n\
         # The same file, uncommented: /usr/share/doc/egress-monitor/examples/egress-monitor.toml\n#\n",
    );
    for line in text.lines().skip_while(|l| l.starts_with('#') || l.is_empty()) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str("# ");
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

fn manpages(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    sh(Command::new(bin).arg("manpages").arg(dir))?;
    // Debian compresses manual pages; man reads them as they are.
    let pages: Vec<PathBuf> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    sh(Command::new("gzip").arg("-9n").args(&pages))
}

/// The newest glibc symbol version the binary needs (`objdump -T`), for `Depends: libc6 (>= ...)`.
fn glibc_needed(bin: &Path) -> anyhow::Result<String> {
    let table = output(Command::new("objdump").arg("-T").arg(bin))?;
    let mut best: Option<Vec<u32>> = None;
    for word in table.split_whitespace() {
        let Some(v) = word.strip_prefix("(GLIBC_").or_else(|| word.strip_prefix("GLIBC_")) else { continue };
        let v = v.trim_end_matches(')');
        let Ok(parts) = v.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>() else { continue };
        if best.as_ref().is_none_or(|b| parts > *b) {
            best = Some(parts);
        }
    }
    let best =
        best.with_context(|| format!("objdump -T {} lists no GLIBC_ symbol version", bin.display()))?;
    Ok(best.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
}

fn installed_kib(stage: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut dirs = vec![stage.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                if e.file_name() != "DEBIAN" {
                    dirs.push(e.path());
                }
            } else {
                total += e.metadata()?.len().div_ceil(1024);
            }
        }
    }
    Ok(total)
}

fn control(version: &str, glibc: &str, kib: u64) -> String {
    format!(
        "Package: egress-monitor\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: egress-monitor developers <egress-monitor@localhost>\n\
         Section: net\n\
         Priority: optional\n\
         Installed-Size: {kib}\n\
         Depends: libc6 (>= {glibc}), libgcc-s1, passwd\n\
         Description: proves with the kernel where classified data goes\n \
         egress-monitor counts every outbound flow in the kernel (eBPF on the cgroup v2\n \
         hierarchy), tags it with the data class of the workload that sent it, attributes it\n \
         to its process, places its destination (country, cloud region, company site) and\n \
         raises an alert when a class's data leaves its approved regions; classes in enforce\n \
         mode are refused by the kernel instead.\n"
    )
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &bytes, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed something that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_configuration_sets_nothing() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/egress-monitor.toml");
        let text = default_config(&example).unwrap();
        let table: toml::Table = text.parse().unwrap();
        assert!(table.is_empty(), "left uncommented: {table:?}");
        // Every key of the example is still there to uncomment.
        assert!(text.contains("# [[classes]]") && text.contains("# sweep_interval = \"1s\""), "{text}");
    }
}
