//! Builds the kernel programs (monitor-ebpf) with the nightly toolchain and bpf-linker, so the
//! agent can embed the object with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let pkg = aya_build::Package {
        name: "monitor-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}
