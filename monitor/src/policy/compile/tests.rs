use std::net::IpAddr;

use super::*;
use crate::{
    config::{Config, Origin},
    enrich::fixtures,
};

#[test]
fn cidrs_cover_a_range_exactly_with_the_fewest_blocks() {
    assert_eq!(cidrs(0, u32::MAX as u128, 32), vec![(0, 0)]);
    assert_eq!(cidrs(0, u128::MAX, 128), vec![(0, 0)]);
    // 10.0.0.1 - 10.0.0.6: /32, /31, /31, /32.
    let lo = u32::from(Ipv4Addr::new(10, 0, 0, 1)) as u128;
    let got: Vec<u8> = cidrs(lo, lo + 5, 32).iter().map(|c| c.1).collect();
    assert_eq!(got, vec![32, 31, 31, 32]);
    assert_eq!(cidrs(5, 5, 32), vec![(5, 32)]);
    assert_eq!(cidrs(u128::MAX, u128::MAX, 128), vec![(u128::MAX, 128)]);
}

/// Addresses spread over a space (xorshift), deterministic.
fn spread(n: usize, seed: u64) -> impl Iterator<Item = u128> {
    let mut x = seed;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x as u128) << 64) | (x.rotate_left(29) as u128)
    })
}

/// A world with every kind of source: sites, an OCI range file, a country database with gaps,
/// and three classes.
fn world(dir: &std::path::Path) -> (Enricher, Policy) {
    std::fs::write(
        dir.join("country.mmdb"),
        fixtures::geoip2_country(&[
            ("175.16.199.0/24", Some("CN"), None),
            ("216.160.83.0/24", Some("US"), None),
            ("130.61.0.0/16", Some("DE"), None),
            ("81.2.69.128/26", Some("GB"), None),
            ("2001:db8:86::/48", Some("CN"), None),
            ("2001:db8:1::/48", Some("US"), None),
        ]),
    )
    .unwrap();
    std::fs::write(dir.join("oci.json"), fixtures::oci_ranges(&[("eu-frankfurt-1", &["130.61.1.0/24"])]))
        .unwrap();
    let text = format!(
        "[geoip]\ncountry_db = \"{d}/country.mmdb\"\ncloud_ranges = [\"{d}/oci.json\"]\n\
         [[sites]]\nname = \"dc-sg\"\ncountry = \"SG\"\ncidrs = [\"10.60.0.0/16\", \"203.0.113.0/25\"]\n\
         [[classes]]\nname = \"us\"\nuids = [1]\napproved = [\"US\", \"dc-sg\"]\n\
         [[classes]]\nname = \"eu\"\nuids = [2]\napproved = [\"oci:eu-*\", \"GB\"]\nunknown = \"allow\"\n\
         [[classes]]\nname = \"strict\"\nuids = [3]\ninternal = \"violation\"\n",
        d = dir.display()
    );
    let config = Config::parse(&text, Origin::Embedded).unwrap();
    (Enricher::open(&config.enrich_options()).unwrap(), config.policy())
}

#[test]
fn the_compiled_table_answers_as_the_agent_does_at_every_boundary_and_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut enricher, policy) = world(dir.path());
    let compiled = compile(&mut enricher, &policy).unwrap();
    let table = compiled.table();
    let networks = enricher.networks().unwrap();
    let mut check = |ip: IpAddr| {
        let want = mask_of(&mut enricher, &policy, ip);
        assert_eq!(table.lookup(ip), Some(want), "{ip}");
    };
    // Every network boundary of the fixtures, and the addresses on either side.
    let mut boundaries = 0;
    for n in networks {
        let (first, last): (u128, u128) = match n {
            IpNet::V4(n) => (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        };
        let v4 = matches!(n, IpNet::V4(_));
        for a in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
            let ip = if v4 { IpAddr::V4(Ipv4Addr::from(a as u32)) } else { IpAddr::V6(Ipv6Addr::from(a)) };
            check(ip);
            boundaries += 1;
        }
    }
    assert!(boundaries > 50, "{boundaries}");
    // And 100,000 addresses anywhere, both families, mapped and NAT64 ones included.
    for (i, a) in spread(100_000, 0x9e37_79b9_7f4a_7c15).enumerate() {
        let ip = match i % 4 {
            0 | 1 => IpAddr::V4(Ipv4Addr::from(a as u32)),
            2 => IpAddr::V6(Ipv6Addr::from(a)),
            _ => IpAddr::V6(Ipv4Addr::from(a as u32).to_ipv6_mapped()),
        };
        check(ip);
    }
    // The masks mean what the policy says.
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(table.lookup(ip("216.160.83.1")), Some(0b001), "US: class us only");
    assert_eq!(table.lookup(ip("130.61.1.7")), Some(0b010), "OCI Frankfurt: class eu");
    assert_eq!(table.lookup(ip("10.60.3.4")), Some(0b001), "the site: only the class that approves it");
    assert_eq!(table.lookup(ip("10.1.2.3")), Some(0b011), "internal: allowed but for strict");
    assert_eq!(table.lookup(ip("::ffff:216.160.83.1")), Some(0b001), "v4-mapped judged as IPv4");
    assert_eq!(table.lookup(ip("64:ff9b::d8a0:5301")), Some(0b001), "NAT64 judged as IPv4");
}

#[test]
fn the_embedded_database_compiles_into_a_table_that_agrees_with_the_agent() {
    let text = "[[classes]]\nname = \"us\"\nuids = [1]\napproved = [\"US\"]\n\
                [[classes]]\nname = \"eu\"\nuids = [2]\napproved = [\"DE\", \"FR\", \"NL\"]\n\
                [[classes]]\nname = \"apac\"\nuids = [3]\napproved = [\"SG\", \"JP\"]\nunknown = \"allow\"\n";
    let config = Config::parse(text, Origin::Embedded).unwrap();
    let (mut enricher, policy) = (Enricher::open(&config.enrich_options()).unwrap(), config.policy());
    let compiled = compile(&mut enricher, &policy).unwrap();
    let table = compiled.table();
    for (i, a) in spread(100_000, 7).enumerate() {
        let ip =
            if i % 2 == 0 { IpAddr::V4(Ipv4Addr::from(a as u32)) } else { IpAddr::V6(Ipv6Addr::from(a)) };
        assert_eq!(table.lookup(ip), Some(mask_of(&mut enricher, &policy, ip)), "{ip}");
    }
}

/// The kernel's own verdict tables: a program set loaded (not attached) under a pin directory
/// of its own, removed on drop.
struct KernelTables {
    probe: Option<crate::probe::Probe>,
    dir: std::path::PathBuf,
}

impl KernelTables {
    fn open() -> KernelTables {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/em-unit-{}-{n}", std::process::id()));
        let probe = crate::probe::Probe::open(&crate::probe::ProbeOptions {
            max_flows: 1024,
            ring_buffer_size: 1 << 16,
            dns_ring_buffer_size: 1 << 16,
            kernel_log: false,
            pin_dir: dir.clone(),
            cgroup_root: crate::cgroup::detect_root().unwrap(),
        })
        .unwrap();
        KernelTables { probe: Some(probe), dir }
    }

    fn install(&mut self, c: &Compiled) -> crate::probe::Installed {
        let v = &mut self.probe.as_mut().unwrap().verdicts;
        v.install(
            c.v4.iter().map(|(n, m)| (n.addr(), n.prefix_len(), *m)),
            c.v6.iter().map(|(n, m)| (n.addr(), n.prefix_len(), *m)),
            u64::MAX,
        )
        .unwrap()
    }

    /// The mask the kernel finds for `ip`, turned into the address the programs look up.
    fn lookup(&self, ip: IpAddr) -> Option<u64> {
        let as_kernel = crate::enrich::embedded_ipv4(ip.to_canonical());
        self.probe.as_ref().unwrap().verdicts.lookup(as_kernel).unwrap()
    }
}

impl Drop for KernelTables {
    fn drop(&mut self) {
        drop(self.probe.take());
        let _ = crate::probe::pins::remove_all(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn the_kernel_tables_answer_as_the_agent_does_at_every_fixture_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut enricher, policy) = world(dir.path());
    let compiled = compile(&mut enricher, &policy).unwrap();
    let mut kernel = KernelTables::open();
    kernel.install(&compiled);
    let networks = enricher.networks().unwrap();
    let mut checked = 0;
    for n in &networks {
        for ip in [n.network(), n.broadcast()] {
            let below = match ip {
                IpAddr::V4(a) => u32::from(a).checked_sub(1).map(|x| IpAddr::V4(x.into())),
                IpAddr::V6(a) => u128::from(a).checked_sub(1).map(|x| IpAddr::V6(x.into())),
            };
            for ip in [Some(ip), below].into_iter().flatten() {
                assert_eq!(kernel.lookup(ip), Some(mask_of(&mut enricher, &policy, ip)), "{ip} ({n})");
                checked += 1;
            }
        }
    }
    for (i, a) in spread(100_000, 5).enumerate() {
        let ip =
            if i % 2 == 0 { IpAddr::V4(Ipv4Addr::from(a as u32)) } else { IpAddr::V6(Ipv6Addr::from(a)) };
        assert_eq!(kernel.lookup(ip), Some(mask_of(&mut enricher, &policy, ip)), "{ip}");
    }
    assert!(checked > 20, "{checked} boundaries");
}

#[test]
fn the_kernel_tables_of_the_embedded_database_answer_as_the_agent_does() {
    let text = "[[classes]]\nname = \"us\"\nuids = [1]\napproved = [\"US\"]\n\
                [[classes]]\nname = \"eu\"\nuids = [2]\napproved = [\"DE\", \"FR\", \"NL\"]\nunknown = \"allow\"\n\
                [[classes]]\nname = \"strict\"\nuids = [3]\ninternal = \"violation\"\n";
    let config = Config::parse(text, Origin::Embedded).unwrap();
    let (mut enricher, policy) = (Enricher::open(&config.enrich_options()).unwrap(), config.policy());
    let started = std::time::Instant::now();
    let compiled = compile(&mut enricher, &policy).unwrap();
    let compile_time = started.elapsed();
    let mut kernel = KernelTables::open();
    let before = crate::probe::VerdictTables::kernel_memory();
    let installed = kernel.install(&compiled);
    eprintln!(
        "embedded DB-IP, three classes: compiled {} intervals in {compile_time:?} into {} IPv4 + {} IPv6 networks, written in {:?}; kernel memory {} KiB",
        compiled.intervals,
        installed.v4_entries,
        installed.v6_entries,
        installed.took,
        (crate::probe::VerdictTables::kernel_memory() - before) / 1024
    );
    for (i, a) in spread(100_000, 11).enumerate() {
        let ip = match i % 3 {
            0 | 1 => IpAddr::V4(Ipv4Addr::from(a as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(a)),
        };
        assert_eq!(kernel.lookup(ip), Some(mask_of(&mut enricher, &policy, ip)), "{ip}");
    }
}
