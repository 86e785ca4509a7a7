//! Test fixtures in the published formats: MaxMind DB files in the GeoIP2 and DB-IP schemas
//! (integer widths as the real databases use them), and cloud range files as each provider
//! publishes them. Used by unit tests and, through the `fixtures` feature, the integration tests.

use ipnet::IpNet;
use mmdb_writer::Writer;
use serde::Serialize;
use serde_json::json;

#[derive(Serialize)]
struct Iso<'a> {
    iso_code: &'a str,
}

#[derive(Serialize, Default)]
struct GeoIp2<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<Iso<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_country: Option<Iso<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subdivisions: Option<Vec<Iso<'a>>>,
}

#[derive(Serialize)]
struct DbIp<'a> {
    country_code: &'a str,
}

#[derive(Serialize)]
struct Asn<'a> {
    autonomous_system_number: u32,
    autonomous_system_organization: &'a str,
}

fn build<T: Serialize>(kind: &str, entries: &[(&str, T)]) -> Vec<u8> {
    let mut w = Writer::new(kind);
    for (cidr, record) in entries {
        let net: IpNet = cidr.parse().unwrap_or_else(|_| panic!("fixture CIDR {cidr:?}"));
        w.insert(net, record).expect("insert fixture record");
    }
    w.to_bytes().expect("write fixture database")
}

/// GeoIP2/GeoLite2 Country schema: `(cidr, country, registered_country)`; `None` leaves the
/// map out of the record.
pub fn geoip2_country(entries: &[(&str, Option<&str>, Option<&str>)]) -> Vec<u8> {
    let records: Vec<(&str, GeoIp2<'_>)> = entries
        .iter()
        .map(|(cidr, c, r)| {
            (
                *cidr,
                GeoIp2 {
                    country: c.map(|iso_code| Iso { iso_code }),
                    registered_country: r.map(|iso_code| Iso { iso_code }),
                    subdivisions: None,
                },
            )
        })
        .collect();
    build("GeoLite2-Country", &records)
}

/// DB-IP / ip-location-db country schema: `(cidr, country_code)`.
pub fn dbip_country(entries: &[(&str, &str)]) -> Vec<u8> {
    let records: Vec<(&str, DbIp<'_>)> =
        entries.iter().map(|(cidr, cc)| (*cidr, DbIp { country_code: cc })).collect();
    build("dbip-country", &records)
}

/// GeoIP2 City schema: `(cidr, country, subdivision iso_code)` ("US", "VA").
pub fn geoip2_city(entries: &[(&str, &str, &str)]) -> Vec<u8> {
    let records: Vec<(&str, GeoIp2<'_>)> = entries
        .iter()
        .map(|(cidr, c, s)| {
            (
                *cidr,
                GeoIp2 {
                    country: Some(Iso { iso_code: c }),
                    registered_country: None,
                    subdivisions: Some(vec![Iso { iso_code: s }]),
                },
            )
        })
        .collect();
    build("GeoLite2-City", &records)
}

/// GeoLite2 ASN schema: `(cidr, number, organisation)`.
pub fn geoip2_asn(entries: &[(&str, u32, &str)]) -> Vec<u8> {
    let records: Vec<(&str, Asn<'_>)> = entries
        .iter()
        .map(|(cidr, n, org)| {
            (*cidr, Asn { autonomous_system_number: *n, autonomous_system_organization: org })
        })
        .collect();
    build("GeoLite2-ASN", &records)
}

/// Oracle `public_ip_ranges.json`: `(region, cidrs)`.
pub fn oci_ranges(regions: &[(&str, &[&str])]) -> String {
    let regions: Vec<_> = regions
        .iter()
        .map(|(region, cidrs)| {
            let cidrs: Vec<_> = cidrs.iter().map(|c| json!({"cidr": c, "tags": ["OCI"]})).collect();
            json!({"region": region, "cidrs": cidrs})
        })
        .collect();
    json!({"last_updated_timestamp": "2026-11-01T00:00:00.000000", "regions": regions}).to_string()
}

/// AWS `ip-ranges.json`: `(cidr, region)`, IPv4 and IPv6 mixed.
pub fn aws_ranges(prefixes: &[(&str, &str)]) -> String {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (cidr, region) in prefixes {
        if cidr.contains(':') {
            v6.push(json!({"ipv6_prefix": cidr, "region": region, "service": "AMAZON", "network_border_group": region}));
        } else {
            v4.push(json!({"ip_prefix": cidr, "region": region, "service": "AMAZON", "network_border_group": region}));
        }
    }
    json!({"syncToken": "1764000000", "createDate": "2026-11-01-00-00-00", "prefixes": v4, "ipv6_prefixes": v6}).to_string()
}

/// Google Cloud `cloud.json`: `(cidr, scope)`.
pub fn gcp_ranges(prefixes: &[(&str, &str)]) -> String {
    let prefixes: Vec<_> = prefixes
        .iter()
        .map(|(cidr, scope)| {
            let key = if cidr.contains(':') { "ipv6Prefix" } else { "ipv4Prefix" };
            json!({key: cidr, "service": "Google Cloud", "scope": scope})
        })
        .collect();
    json!({"syncToken": "1764000000000", "creationTime": "2026-11-01T00:00:00.000000", "prefixes": prefixes})
        .to_string()
}

/// Azure Service Tags JSON: `(region, prefixes)`, one `AzureCloud.<region>` tag each, plus a
/// global tag without a region.
pub fn azure_ranges(regions: &[(&str, &[&str])]) -> String {
    let mut values: Vec<_> = regions
        .iter()
        .map(|(region, prefixes)| {
            json!({
                "name": format!("AzureCloud.{region}"),
                "id": format!("AzureCloud.{region}"),
                "properties": {
                    "changeNumber": 7, "region": region, "regionId": 1, "platform": "Azure",
                    "systemService": "", "addressPrefixes": prefixes, "networkFeatures": ["API", "NSG"]
                }
            })
        })
        .collect();
    values.push(json!({
        "name": "AzureFrontDoor.Frontend", "id": "AzureFrontDoor.Frontend",
        "properties": {"changeNumber": 3, "region": "", "regionId": 0, "platform": "Azure",
                       "systemService": "AzureFrontDoor", "addressPrefixes": ["13.107.0.0/16"]}
    }));
    json!({"changeNumber": 342, "cloud": "Public", "values": values}).to_string()
}
