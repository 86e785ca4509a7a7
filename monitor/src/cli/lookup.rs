//! `egress-monitor lookup`: where is this address, and may each class send there? Answered
//! from the configured databases, cloud range files, sites and classes, without the daemon.

use std::{net::IpAddr, process::ExitCode, sync::Arc};

use serde::Serialize;

use super::output::{Format, country, field, table, write_csv};
use crate::{
    cli::prepare::Places,
    config::{Config, Mode},
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
    /// What the kernel does with the class's traffic there: `block` (the class enforces and
    /// this is a violation) or `allow`.
    kernel: &'static str,
    reason: String,
}

pub(super) fn lookup(config: &Config, addresses: &[IpAddr], format: Format) -> anyhow::Result<ExitCode> {
    let Places { mut enricher, policy } = super::prepare::places(config)?;
    let modes = config.class_modes();
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
                .zip(&modes)
                .map(|(c, mode)| {
                    let v = c.evaluate(d);
                    let block = *mode == Mode::Enforce && v.kind == VerdictKind::Violation;
                    ClassAnswer {
                        class: &c.name,
                        verdict: v.kind,
                        kernel: if block { "block" } else { "allow" },
                        reason: c.explain(&v, *ip, d),
                    }
                })
                .collect(),
        })
        .collect();
    match format {
        Format::Json => {
            for a in &answers {
                println!("{}", serde_json::to_string(a)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Format::Csv => {
            write_csv(&CSV_HEADER, answers.iter().flat_map(csv_rows))?;
            return Ok(ExitCode::SUCCESS);
        }
        Format::Table => {}
    }
    let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    let mut places = table(&["ADDRESS", "COUNTRY", "SUBDIVISION", "NETWORK", "CLOUD", "SITE"]);
    for a in &answers {
        let d = a.destination;
        let country = Some(country(d.country.as_deref(), Some(d.internal)));
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
    let mut verdicts = table(&["ADDRESS", "CLASS", "VERDICT", "KERNEL", "REASON"]);
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
                c.kernel.into(),
                c.reason.clone(),
            ]);
        }
    }
    println!("\n{verdicts}");
    Ok(ExitCode::SUCCESS)
}

const CSV_HEADER: [&str; 13] = [
    "address",
    "country",
    "subdivision",
    "asn",
    "as_org",
    "cloud_provider",
    "cloud_region",
    "site",
    "internal",
    "class",
    "verdict",
    "kernel",
    "reason",
];

/// One row per class (one with empty class fields when none is configured).
fn csv_rows(a: &Answer<'_>) -> Vec<Vec<String>> {
    let d = a.destination;
    let place = vec![
        a.address.to_string(),
        field(&d.country),
        field(&d.subdivision),
        field(&d.asn),
        field(&d.as_org),
        field(&d.cloud_provider.map(|p| p.name())),
        field(&d.cloud_region),
        field(&d.site),
        d.internal.to_string(),
    ];
    if a.classes.is_empty() {
        return vec![place.into_iter().chain(std::iter::repeat_n(String::new(), 4)).collect()];
    }
    a.classes
        .iter()
        .map(|c| {
            let verdict =
                [c.class.to_owned(), c.verdict.name().to_owned(), c.kernel.to_owned(), c.reason.clone()];
            place.iter().cloned().chain(verdict).collect()
        })
        .collect()
}
