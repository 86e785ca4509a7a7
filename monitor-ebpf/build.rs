//! Rebuild the kernel programs when bpf-linker changes (as the aya template does).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
