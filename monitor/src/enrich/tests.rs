use std::path::Path;

use super::{fixtures, *};
use crate::config::{Config, Origin};

/// Opens the enricher a configuration names, as the agent's start-up step does.
fn open(config: &Config) -> anyhow::Result<Enricher> {
    Enricher::open(&config.enrich_options()).map_err(|e| anyhow::anyhow!("{}: {e:#}", config.origin))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An enricher over `files` (name, contents) written to a temporary directory, with
/// `config` (TOML, where `{dir}` is that directory) added.
fn enricher(files: &[(&str, &[u8])], config: &str) -> (tempfile::TempDir, Enricher) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let text = config.replace("{dir}", dir.path().to_str().unwrap());
    let config = Config::parse(&text, Origin::File("test.toml".into())).unwrap();
    let e = open(&config).unwrap();
    (dir, e)
}

fn country_only(db: Vec<u8>) -> (tempfile::TempDir, Enricher) {
    enricher(&[("country.mmdb", &db)], "[geoip]\ncountry_db = \"{dir}/country.mmdb\"\n")
}

#[test]
fn geoip2_country_schema() {
    let (_d, mut e) = country_only(fixtures::geoip2_country(&[("175.16.199.0/24", Some("CN"), Some("CN"))]));
    assert_eq!(e.locate(ip("175.16.199.1")).country.as_deref(), Some("CN"));
    assert_eq!(e.locate(ip("81.2.69.1")).country, None, "not in the database");
}

#[test]
fn registered_country_is_used_only_when_country_is_absent() {
    let (_d, mut e) = country_only(fixtures::geoip2_country(&[
        ("81.2.69.0/24", None, Some("GB")),
        ("89.160.20.0/24", Some("SE"), Some("DE")),
    ]));
    assert_eq!(e.locate(ip("81.2.69.5")).country.as_deref(), Some("GB"));
    assert_eq!(e.locate(ip("89.160.20.5")).country.as_deref(), Some("SE"));
}

#[test]
fn dbip_country_schema() {
    let (_d, mut e) = country_only(fixtures::dbip_country(&[("2.16.0.0/13", "FR"), ("2a02:c7c::/32", "GB")]));
    assert_eq!(e.locate(ip("2.17.1.1")).country.as_deref(), Some("FR"));
    assert_eq!(e.locate(ip("2a02:c7c::1")).country.as_deref(), Some("GB"));
}

#[test]
fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
    let (_d, mut e) = country_only(fixtures::dbip_country(&[("175.16.199.0/24", "CN")]));
    assert_eq!(e.locate(ip("::ffff:175.16.199.9")).country.as_deref(), Some("CN"));
    assert!(e.locate(ip("::ffff:10.1.2.3")).internal, "mapped private addresses are internal");
}

#[test]
fn city_adds_the_subdivision_and_asn_the_network() {
    let country = fixtures::dbip_country(&[("216.160.83.0/24", "US")]);
    let city = fixtures::geoip2_city(&[("216.160.83.0/24", "US", "WA")]);
    let asn = fixtures::geoip2_asn(&[
        ("216.160.83.0/24", 209, "CenturyLink"),
        ("2600:1f18::/32", 16509, "AMAZON-02"),
    ]);
    let (_d, mut e) = enricher(
        &[("c.mmdb", &country), ("city.mmdb", &city), ("asn.mmdb", &asn)],
        "[geoip]\ncountry_db = \"{dir}/c.mmdb\"\ncity_db = \"{dir}/city.mmdb\"\nasn_db = \"{dir}/asn.mmdb\"\n",
    );
    let d = e.locate(ip("216.160.83.56"));
    assert_eq!(d.country.as_deref(), Some("US"));
    assert_eq!(d.subdivision.as_deref(), Some("US-WA"));
    assert_eq!(d.asn, Some(209));
    assert_eq!(d.as_org.as_deref(), Some("CenturyLink"));
    let d = e.locate(ip("2600:1f18::5"));
    assert_eq!((d.asn, d.country.clone()), (Some(16509), None));
    assert!(d.has_location(), "an ASN alone places a destination");
}

#[test]
fn cloud_range_files_in_each_official_format() {
    let oci = fixtures::oci_ranges(&[
        ("us-ashburn-1", &["129.213.0.0/16"]),
        ("eu-frankfurt-1", &["130.61.0.0/16"]),
    ]);
    let aws = fixtures::aws_ranges(&[
        ("3.5.140.0/22", "ap-northeast-2"),
        ("2600:1f18::/33", "us-east-1"),
        ("3.5.0.0/16", "GLOBAL"),
    ]);
    let gcp =
        fixtures::gcp_ranges(&[("34.1.208.0/20", "africa-south1"), ("2600:1900:8000::/44", "us-central1")]);
    let azure = fixtures::azure_ranges(&[("eastus", &["20.42.0.0/16", "2603:1030:210::/47"])]);
    let files: [(&str, &[u8]); 4] = [
        ("oci.json", oci.as_bytes()),
        ("aws.json", aws.as_bytes()),
        ("gcp.json", gcp.as_bytes()),
        ("azure.json", azure.as_bytes()),
    ];
    let (_d, mut e) = enricher(
        &files,
        "[geoip]\ncloud_ranges = [\"{dir}/oci.json\", \"{dir}/aws.json\", \"{dir}/gcp.json\", \"{dir}/azure.json\"]\n",
    );
    let region = |e: &mut Enricher, a: &str| {
        let d = e.locate(ip(a));
        d.cloud_provider.map(|p| format!("{}:{}", p.name(), d.cloud_region.as_deref().unwrap()))
    };
    assert_eq!(region(&mut e, "129.213.1.1").as_deref(), Some("oci:us-ashburn-1"));
    assert_eq!(region(&mut e, "130.61.1.1").as_deref(), Some("oci:eu-frankfurt-1"));
    // Longest prefix wins: 3.5.140.0/22 inside 3.5.0.0/16.
    assert_eq!(region(&mut e, "3.5.141.1").as_deref(), Some("aws:ap-northeast-2"));
    assert_eq!(region(&mut e, "3.5.1.1").as_deref(), Some("aws:global"));
    assert_eq!(region(&mut e, "2600:1f18::1").as_deref(), Some("aws:us-east-1"));
    assert_eq!(region(&mut e, "34.1.210.1").as_deref(), Some("gcp:africa-south1"));
    assert_eq!(region(&mut e, "2600:1900:8000::1").as_deref(), Some("gcp:us-central1"));
    assert_eq!(region(&mut e, "20.42.1.1").as_deref(), Some("azure:eastus"));
    assert_eq!(region(&mut e, "2603:1030:210::1").as_deref(), Some("azure:eastus"));
    assert_eq!(region(&mut e, "13.107.1.1"), None, "global service tags name no region");
    assert_eq!(region(&mut e, "8.8.8.8"), None);
}

#[test]
fn unrecognised_or_broken_range_files_are_rejected_by_name() {
    let e = RangeFile::parse(r#"{"hello": "world"}"#).unwrap_err();
    assert!(e.contains("not a recognised cloud range file"), "{e}");
    let bad = fixtures::aws_ranges(&[("3.5.140.0/33", "us-east-1")]);
    let e = RangeFile::parse(&bad).unwrap_err();
    assert!(e.contains("prefixes[0]") && e.contains("3.5.140.0/33"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.json");
    std::fs::write(&path, "not json").unwrap();
    let text = format!("[geoip]\ncloud_ranges = [{:?}]\n", path.to_str().unwrap());
    let config = Config::parse(&text, Origin::File("t.toml".into())).unwrap();
    let e = open(&config).err().unwrap().to_string();
    assert!(
        e.starts_with("t.toml: geoip.cloud_ranges[0]: ") && e.contains("ranges.json: not valid JSON"),
        "{e}"
    );
}

#[test]
fn sites_come_first_and_private_addresses_outside_sites_are_internal() {
    let country = fixtures::dbip_country(&[("203.0.113.0/24", "JP")]);
    let (_d, mut e) = enricher(
        &[("c.mmdb", &country)],
        "[geoip]\ncountry_db = \"{dir}/c.mmdb\"\n\
         [[sites]]\nname = \"dc-sg-backup\"\ncountry = \"SG\"\ncidrs = [\"10.60.0.0/16\", \"203.0.113.128/25\"]\n",
    );
    let d = e.locate(ip("10.60.3.4"));
    assert_eq!(
        (d.site.as_deref(), d.country.as_deref(), d.internal),
        (Some("dc-sg-backup"), Some("SG"), false)
    );
    let d = e.locate(ip("203.0.113.200"));
    assert_eq!(
        (d.site.as_deref(), d.country.as_deref()),
        (Some("dc-sg-backup"), Some("SG")),
        "the site's country wins"
    );
    assert_eq!(e.locate(ip("203.0.113.5")).country.as_deref(), Some("JP"));
    for a in [
        "10.1.1.1",
        "192.168.1.1",
        "172.16.5.5",
        "127.0.0.1",
        "169.254.1.1",
        "100.64.0.1",
        "fd00::1",
        "fe80::1",
        "::1",
        "ff02::1",
    ] {
        let d = e.locate(ip(a));
        assert!(d.internal && !d.has_location(), "{a} is internal: {d:?}");
    }
    assert!(!e.locate(ip("2001:db8::1")).internal, "documentation ranges are not internal");
}

#[test]
fn cache_answers_repeated_lookups() {
    let (_d, mut e) = country_only(fixtures::dbip_country(&[("175.16.199.0/24", "CN")]));
    for _ in 0..3 {
        e.locate(ip("175.16.199.1"));
    }
    assert_eq!((e.counters.lookups, e.counters.cache_hits), (3, 2));
}

fn replace(path: &Path, bytes: &[u8]) {
    // As geoipupdate does: write a new file, rename it over the old one.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn replaced_database_is_reloaded_and_a_broken_one_keeps_the_old() {
    let (dir, mut e) = country_only(fixtures::dbip_country(&[("175.16.199.0/24", "CN")]));
    let path = dir.path().join("country.mmdb");
    assert_eq!(e.locate(ip("175.16.199.1")).country.as_deref(), Some("CN"));
    assert!(!e.reload_replaced(), "nothing changed yet");

    replace(&path, &fixtures::dbip_country(&[("175.16.199.0/24", "KR")]));
    assert!(e.reload_replaced());
    assert_eq!(e.locate(ip("175.16.199.1")).country.as_deref(), Some("KR"), "new data, cache cleared");
    assert_eq!(e.counters.reloads, 1);

    replace(&path, b"this is not a MaxMind DB file");
    assert!(!e.reload_replaced());
    assert_eq!(e.counters.reload_failures, 1);
    assert_eq!(e.locate(ip("175.16.199.1")).country.as_deref(), Some("KR"), "the old database stays");
    assert!(!e.reload_replaced(), "the broken file is reported once, not every interval");
    assert_eq!(e.counters.reload_failures, 1);
}

#[test]
fn replaced_range_file_is_reloaded() {
    let oci = fixtures::oci_ranges(&[("us-ashburn-1", &["129.213.0.0/16"])]);
    let (dir, mut e) =
        enricher(&[("oci.json", oci.as_bytes())], "[geoip]\ncloud_ranges = [\"{dir}/oci.json\"]\n");
    assert_eq!(e.locate(ip("129.213.1.1")).cloud_region.as_deref(), Some("us-ashburn-1"));
    replace(
        &dir.path().join("oci.json"),
        fixtures::oci_ranges(&[("us-phoenix-1", &["129.213.0.0/16"])]).as_bytes(),
    );
    assert!(e.reload_replaced());
    assert_eq!(e.locate(ip("129.213.1.1")).cloud_region.as_deref(), Some("us-phoenix-1"));
}

#[test]
fn corrupt_or_missing_database_at_start_names_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("GeoLite2-Country.mmdb");
    std::fs::write(&bad, b"garbage").unwrap();
    for (path, expect) in
        [(bad.clone(), "not a valid MaxMind DB file"), (dir.path().join("missing.mmdb"), "No such file")]
    {
        let text = format!("[geoip]\ncountry_db = {:?}\n", path.to_str().unwrap());
        let config = Config::parse(&text, Origin::File("t.toml".into())).unwrap();
        let e = open(&config).err().unwrap().to_string();
        assert!(e.starts_with(&format!("t.toml: geoip.country_db: {}", path.display())), "{e}");
        assert!(e.contains(expect), "{e}");
    }
}

#[test]
fn embedded_database_places_public_addresses() {
    let config = Config::parse("", Origin::Embedded).unwrap();
    let mut e = open(&config).unwrap();
    assert_eq!(e.locate(ip("175.16.199.1")).country.as_deref(), Some("CN"));
    assert_eq!(e.locate(ip("8.8.8.8")).country.as_deref(), Some("US"));
    assert!(e.sources()[0].1.starts_with("embedded DB-IP Lite"), "{:?}", e.sources());
}

/// A database whose last search-tree node points past the data section: lookups on most
/// paths still work, so only a walk of the whole tree finds it.
fn with_broken_search_tree(mut db: Vec<u8>) -> Vec<u8> {
    let meta = maxminddb::Reader::from_source(db.clone()).unwrap().metadata().clone();
    let node_bytes = meta.record_size as usize * 2 / 8;
    let last = (meta.node_count as usize - 1) * node_bytes;
    db[last..last + node_bytes].fill(0xff);
    db
}

#[test]
fn a_database_with_a_broken_search_tree_is_refused_at_start_and_at_reload() {
    let good =
        fixtures::geoip2_country(&[("175.16.199.0/24", Some("CN"), None), ("2.16.0.0/13", Some("FR"), None)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("country.mmdb");
    let text = format!("[geoip]\ncountry_db = {:?}\n", path.to_str().unwrap());
    let config = Config::parse(&text, Origin::File("t.toml".into())).unwrap();
    // With a description in its metadata (the reader's verification) and without (our walk).
    let mut described = mmdb_writer::Writer::builder("GeoIP2-Country").description(&[("en", "test")]).build();
    described
        .insert(
            "175.16.199.0/24".parse::<ipnet::IpNet>().unwrap(),
            &serde_json::json!({"country": {"iso_code": "CN"}}),
        )
        .unwrap();
    described
        .insert(
            "2.16.0.0/13".parse::<ipnet::IpNet>().unwrap(),
            &serde_json::json!({"country": {"iso_code": "FR"}}),
        )
        .unwrap();
    for db in [described.to_bytes().unwrap(), good.clone()] {
        std::fs::write(&path, &db).unwrap();
        assert!(open(&config).is_ok(), "the intact file loads");
        std::fs::write(&path, with_broken_search_tree(db)).unwrap();
        let e = open(&config).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!("t.toml: geoip.country_db: {}: damaged MaxMind DB file", path.display())),
            "{e}"
        );
    }

    // Running on a good file, a broken replacement keeps the good one in force.
    std::fs::write(&path, &good).unwrap();
    let mut e = open(&config).unwrap();
    let tmp = dir.path().join("new.mmdb");
    std::fs::write(&tmp, with_broken_search_tree(good)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(!e.reload_replaced());
    assert_eq!(e.counters.reload_failures, 1);
    assert_eq!(e.locate(ip("175.16.199.1")).country.as_deref(), Some("CN"));
}

#[test]
fn nat64_addresses_are_placed_where_their_ipv4_address_is() {
    let (_d, mut e) = country_only(fixtures::geoip2_country(&[("175.16.199.0/24", Some("CN"), None)]));
    assert_eq!(e.locate(ip("64:ff9b::af10:c701")).country.as_deref(), Some("CN"), "64:ff9b::175.16.199.1");
    assert!(e.locate(ip("64:ff9b::a00:1")).internal, "64:ff9b::10.0.0.1 is internal");
    assert_eq!(e.locate(ip("64:ff9c::af10:c701")).country, None, "another prefix is not NAT64");
}

#[test]
fn range_files_describe_their_published_version() {
    let cases = [
        (
            fixtures::oci_ranges(&[("us-ashburn-1", &["129.213.0.0/16"])]),
            "published 2026-11-01T00:00:00.000000",
        ),
        (fixtures::aws_ranges(&[("3.5.0.0/16", "us-east-1")]), "published 2026-11-01-00-00-00"),
        (fixtures::gcp_ranges(&[("34.80.0.0/15", "asia-east1")]), "published 2026-11-01T00:00:00.000000"),
        (fixtures::azure_ranges(&[("eastus", &["20.42.0.0/16"])]), "published change 342"),
    ];
    for (text, expected) in cases {
        let d = RangeFile::parse(&text).unwrap().describe();
        assert!(d.ends_with(&format!("networks, {expected})")), "{d}");
    }
}
