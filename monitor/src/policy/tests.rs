use super::*;
use crate::{
    config::{Config, Origin},
    record::CloudProvider,
};

fn policy(toml: &str) -> Policy {
    let base = "[[sites]]\nname = \"dc-us-east\"\ncountry = \"US\"\ncidrs = [\"10.20.0.0/16\"]\n\
                [[sites]]\nname = \"dc-sg-backup\"\ncountry = \"SG\"\ncidrs = [\"10.60.0.0/16\"]\n";
    let config = Config::parse(&format!("{base}{toml}"), Origin::File("t.toml".into())).unwrap();
    config.policy()
}

fn class(approved: &str) -> Policy {
    policy(&format!(
        "[[classes]]\nname = \"us-user-data\"\nuids = [1]\napproved = {approved}\nseverity = \"critical\"\n"
    ))
}

fn country(c: &str) -> Destination {
    Destination { country: Some(c.into()), ..Default::default() }
}

fn cloud(provider: CloudProvider, region: &str, c: &str) -> Destination {
    Destination { cloud_provider: Some(provider), cloud_region: Some(region.into()), ..country(c) }
}

const IP: &str = "175.16.199.1";

/// The verdict for class 1, with its explanation.
struct Judged {
    kind: VerdictKind,
    reason: String,
}

fn verdict(p: &Policy, d: &Destination) -> Judged {
    let ip = IP.parse().unwrap();
    let v = p.evaluate(1, d);
    Judged { kind: v.kind, reason: p.class(1).unwrap().explain(&v, ip, d) }
}

#[test]
fn country_approved_and_not() {
    let p = class(r#"["US"]"#);
    assert_eq!(verdict(&p, &country("US")).kind, VerdictKind::Allowed);
    let v = verdict(&p, &country("CN"));
    assert_eq!(v.kind, VerdictKind::Violation);
    assert_eq!(v.reason, "destination country CN is not approved for class us-user-data");
    assert_eq!(p.class(1).unwrap().severity, Severity::Critical);
}

#[test]
fn subdivision_entry_matches_only_that_subdivision() {
    let p = class(r#"["US-VA"]"#);
    let va = Destination { subdivision: Some("US-VA".into()), ..country("US") };
    let wa = Destination { subdivision: Some("US-WA".into()), ..country("US") };
    assert_eq!(verdict(&p, &va).kind, VerdictKind::Allowed);
    assert_eq!(verdict(&p, &wa).kind, VerdictKind::Violation);
    assert_eq!(verdict(&p, &country("US")).kind, VerdictKind::Violation, "no city data: not proven in US-VA");
}

#[test]
fn cloud_region_wildcards() {
    let p = class(r#"["oci:us-*", "aws:us-east-1", "azure:*"]"#);
    assert_eq!(verdict(&p, &cloud(CloudProvider::Oci, "us-ashburn-1", "US")).kind, VerdictKind::Allowed);
    assert_eq!(verdict(&p, &cloud(CloudProvider::Aws, "us-east-1", "US")).kind, VerdictKind::Allowed);
    assert_eq!(verdict(&p, &cloud(CloudProvider::Azure, "westeurope", "NL")).kind, VerdictKind::Allowed);
    let v = verdict(&p, &cloud(CloudProvider::Oci, "eu-frankfurt-1", "DE"));
    assert_eq!(v.kind, VerdictKind::Violation);
    assert_eq!(
        v.reason,
        "destination cloud region oci:eu-frankfurt-1 (DE) is not approved for class us-user-data"
    );
    assert_eq!(verdict(&p, &cloud(CloudProvider::Aws, "us-east-2", "US")).kind, VerdictKind::Violation);
    assert_eq!(
        verdict(&p, &cloud(CloudProvider::Gcp, "us-east1", "US")).kind,
        VerdictKind::Violation,
        "provider must match"
    );
}

#[test]
fn site_and_asn_entries() {
    let p = class(r#"["dc-us-east", "AS31898"]"#);
    let site = |name: &str, c: &str| Destination { site: Some(name.into()), ..country(c) };
    assert_eq!(verdict(&p, &site("dc-us-east", "US")).kind, VerdictKind::Allowed);
    let v = verdict(&p, &site("dc-sg-backup", "SG"));
    assert_eq!(v.reason, "destination site dc-sg-backup (SG) is not approved for class us-user-data");
    let oracle = Destination { asn: Some(31898), as_org: Some("ORACLE-BMC-31898".into()), ..country("DE") };
    assert_eq!(verdict(&p, &oracle).kind, VerdictKind::Allowed);
    let other = Destination { asn: Some(4134), as_org: Some("Chinanet".into()), ..Default::default() };
    assert_eq!(
        verdict(&p, &other).reason,
        "destination network AS4134 (Chinanet) is not approved for class us-user-data"
    );
}

#[test]
fn unknown_and_internal_follow_the_class_settings() {
    let strict = policy("[[classes]]\nname = \"a\"\nuids = [1]\napproved = [\"US\"]\n");
    let internal = Destination { internal: true, ..Default::default() };
    let unknown = Destination::default();
    // Defaults: unknown = violation, internal = allow.
    assert_eq!(verdict(&strict, &internal).kind, VerdictKind::Allowed);
    let v = verdict(&strict, &unknown);
    assert_eq!(v.kind, VerdictKind::Violation);
    assert!(v.reason.contains("no geolocation data for destination 175.16.199.1"), "{}", v.reason);

    let flipped = policy(
        "[[classes]]\nname = \"a\"\nuids = [1]\napproved = [\"US\"]\nunknown = \"allow\"\ninternal = \"violation\"\n",
    );
    assert_eq!(verdict(&flipped, &unknown).kind, VerdictKind::Allowed);
    let v = verdict(&flipped, &internal);
    assert_eq!(v.kind, VerdictKind::Violation);
    assert!(v.reason.contains("internal address outside every configured site"), "{}", v.reason);
}

#[test]
fn unclassified_flows_are_not_judged() {
    let p = class(r#"["US"]"#);
    assert_eq!(p.evaluate(0, &country("CN")).kind, VerdictKind::Unclassified);
    assert_eq!(p.evaluate(7, &country("CN")).kind, VerdictKind::Unclassified);
}

#[test]
fn empty_approved_list_approves_nothing_public() {
    let p = policy("[[classes]]\nname = \"a\"\nuids = [1]\n");
    assert_eq!(verdict(&p, &country("US")).kind, VerdictKind::Violation);
    assert_eq!(verdict(&p, &Destination { internal: true, ..Default::default() }).kind, VerdictKind::Allowed);
}

#[test]
fn entries_parse_to_their_kind() {
    let kinds: Vec<&str> = ["US", "US-VA", "GB-ENG", "oci:us-*", "AS31898", "dc-us-east"]
        .iter()
        .map(|e| ApprovedEntry::parse(e).unwrap().kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "a country code",
            "a subdivision code",
            "a subdivision code",
            "a cloud region",
            "an ASN",
            "a site name"
        ]
    );
    for (bad, expect) in [
        ("XX", "unknown country code \"XX\""),
        ("US*", "'*' is only allowed in cloud regions"),
        ("*", "'*' is only allowed in cloud regions"),
        ("oci:**", "'**' is not allowed"),
        ("oci:", "no region after ':'"),
        ("ibm:us-south", "unknown provider \"ibm\""),
        ("aws:US-EAST-1", "'U' is not allowed"),
        ("XX-CA", "unknown country code \"XX\""),
        ("US-VIRGINIA", "invalid subdivision"),
        ("AS0", "invalid ASN"),
        ("AS99999999999", "invalid ASN"),
    ] {
        let e = ApprovedEntry::parse(bad).unwrap_err();
        assert!(e.contains(expect), "{bad}: {e}");
    }
}
