//! Hosts in their own network namespaces, joined by a veth pair, with addresses the caller
//! chooses. Deleted on drop.

use std::{fs::File, net::IpAddr};

use crate::{run, unique};

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> anyhow::Result<Netns> {
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace file, for setns().
    pub fn file(&self) -> std::io::Result<File> {
        File::open(format!("/run/netns/{}", self.name))
    }

    /// Sets sysctls inside the namespace ("net.ipv4.tcp_tw_reuse=1").
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", &self.name, "sysctl", "-q", "-w"];
        args.extend(settings);
        run("ip", &args).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Host `a` and host `b`, each with one address per family on the veth between them.
pub struct Topology {
    pub a: Netns,
    pub b: Netns,
    pub a_v4: IpAddr,
    pub b_v4: IpAddr,
    pub a_v6: IpAddr,
    pub b_v6: IpAddr,
}

impl Topology {
    /// A pair with the given addresses (/24 for IPv4, /64 for IPv6). Each namespace has its
    /// own routing, so callers may reuse addresses without seeing each other.
    pub fn with_addresses(v4: [&str; 2], v6: [&str; 2]) -> anyhow::Result<Topology> {
        let a = Netns::create(unique("em") + "a")?;
        let b = Netns::create(unique("em") + "b")?;
        // Created directly inside the namespaces, so interface names never collide.
        run(
            "ip",
            &[
                "link", "add", "veth0", "netns", &a.name, "type", "veth", "peer", "name", "veth0", "netns",
                &b.name,
            ],
        )?;
        for (ns, a4, a6) in [(&a, v4[0], v6[0]), (&b, v4[1], v6[1])] {
            run("ip", &["-n", &ns.name, "addr", "add", &format!("{a4}/24"), "dev", "veth0"])?;
            run("ip", &["-n", &ns.name, "addr", "add", &format!("{a6}/64"), "dev", "veth0", "nodad"])?;
            run("ip", &["-n", &ns.name, "link", "set", "veth0", "up"])?;
        }
        Ok(Topology {
            a,
            b,
            a_v4: v4[0].parse()?,
            b_v4: v4[1].parse()?,
            a_v6: v6[0].parse()?,
            b_v6: v6[1].parse()?,
        })
    }

    /// Gives host `b` one more address (/32 or /128) and routes everything from `a` over the
    /// veth, so `a` reaches it: a stand-in for a host anywhere on the map. The address exists
    /// only inside these namespaces.
    pub fn add_remote_address(&self, ip: &str) -> anyhow::Result<()> {
        let v6 = ip.contains(':');
        let prefix = if v6 { "128" } else { "32" };
        let addr = format!("{ip}/{prefix}");
        let mut args = vec!["-n", &self.b.name, "addr", "add", addr.as_str(), "dev", "veth0"];
        if v6 {
            args.push("nodad");
        }
        run("ip", &args)?;
        let family = if v6 { "-6" } else { "-4" };
        run("ip", &["-n", &self.a.name, family, "route", "replace", "default", "dev", "veth0"]).map(drop)
    }
}
