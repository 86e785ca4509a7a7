//! The company's own sites (datacenters, private links) by CIDR: the first source asked. An
//! internal address (private, loopback, ...) in no site is `internal`, and no later source
//! places it.

use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;
use prefix_trie::joint::map::JointPrefixMap;

use super::{Destination, Placed, Reload, Source, is_internal};

/// One site, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: Arc<str>,
    /// ISO 3166-1 alpha-2 country of the site.
    pub country: Arc<str>,
    pub cidrs: Vec<IpNet>,
}

pub struct Sites {
    table: JointPrefixMap<IpNet, (Arc<str>, Arc<str>)>,
}

impl Sites {
    pub fn new(sites: &[Site]) -> Sites {
        let mut table = JointPrefixMap::new();
        for s in sites {
            for cidr in &s.cidrs {
                table.insert(*cidr, (s.name.clone(), s.country.clone()));
            }
        }
        Sites { table }
    }
}

impl Source for Sites {
    fn kind(&self) -> &'static str {
        "sites"
    }

    fn describe(&self) -> Vec<String> {
        Vec::new() // configured inline, not read from a file
    }

    fn place(&self, ip: IpAddr, d: &mut Destination) -> Result<Placed, String> {
        Ok(if let Some((_, (name, country))) = self.table.get_lpm(&IpNet::from(ip)) {
            d.site = Some(name.clone());
            d.country = Some(country.clone());
            Placed::Continue
        } else if is_internal(ip) {
            d.internal = true;
            Placed::Done
        } else {
            Placed::Continue
        })
    }

    fn reload(&mut self) -> Reload {
        Reload::default()
    }

    fn networks(&self, out: &mut Vec<IpNet>) -> Result<(), String> {
        out.extend(self.table.iter().map(|(net, _)| net));
        Ok(())
    }
}
