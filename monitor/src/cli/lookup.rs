//! `egress-monitor lookup`: where is this address, and may each class send there? Answered
//! from the configured databases, cloud range files, sites and classes, without the daemon.

use std::{net::IpAddr, process::ExitCode, sync::Arc};

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::{
    cli::prepare::Places,
    config::Config,
    record::{Destination, VerdictKind},
};

#[derive(Serialize)]
struct Answer<'a> {
    address: IpAddr,
    destination: &'a Destination,
    classes: Vec<ClassAnswer<'a>>,
}

#[derive(Serialize)]
struct ClassAnswer<'a> {
    class: &'a str,
    verdict: VerdictKind,
    reason: String,
}

pub(super) fn lookup(config: &Config, addresses: &[IpAddr], json: bool) -> anyhow::Result<ExitCode> {
    let Places { mut enricher, policy } = super::prepare::places(config)?;
    let placed: Vec<(IpAddr, Arc<Destination>)> =
        addresses.iter().map(|ip| (*ip, enricher.locate(*ip))).collect();
    let answers: Vec<Answer<'_>> = placed
        .iter()
        .map(|(ip, d)| Answer {
            address: *ip,
            destination: d,
            classes: policy
                .classes()
                .iter()
                .map(|c| {
                    let v = c.evaluate(d);
                    ClassAnswer { class: &c.name, verdict: v.kind, reason: c.explain(&v, *ip, d) }
                })
                .collect(),
        })
        .collect();
    if json {
        for a in &answers {
            println!("{}", serde_json::to_string(a)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    let mut places = table(&["ADDRESS", "COUNTRY", "SUBDIVISION", "NETWORK", "CLOUD", "SITE"]);
    for a in &answers {
        let d = a.destination;
        let country =
            if d.internal { Some("internal".into()) } else { d.country.as_deref().map(str::to_owned) };
        let network = d.asn.map(|n| match &d.as_org {
            Some(org) => format!("AS{n} {org}"),
            None => format!("AS{n}"),
        });
        let cloud = d.cloud_provider.zip(d.cloud_region.as_ref()).map(|(p, r)| format!("{}:{r}", p.name()));
        places.add_row(vec![
            a.address.to_string(),
            dash(country),
            dash(d.subdivision.as_deref().map(str::to_owned)),
            dash(network),
            dash(cloud),
            dash(d.site.as_deref().map(str::to_owned)),
        ]);
    }
    println!("{places}");
    if policy.classes().is_empty() {
        println!("\nNo classes are configured: nothing to judge.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut verdicts = table(&["ADDRESS", "CLASS", "VERDICT", "REASON"]);
    for a in &answers {
        for c in &a.classes {
            let verdict = match c.verdict {
                VerdictKind::Allowed => "allowed",
                VerdictKind::Violation => "VIOLATION",
                VerdictKind::Unclassified => "-",
            };
            verdicts.add_row(vec![
                a.address.to_string(),
                c.class.to_owned(),
                verdict.into(),
                c.reason.clone(),
            ]);
        }
    }
    println!("\n{verdicts}");
    Ok(ExitCode::SUCCESS)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_header(header.to_vec());
    t
}
