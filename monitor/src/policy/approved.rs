//! One entry of a class's `approved` list: a country, a subdivision, a cloud region pattern, an
//! autonomous system or a site, parsed from the text the user wrote, and matched against a place.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

use crate::enrich::{CloudProvider, Destination, countries};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovedEntry {
    /// "US"
    Country(String),
    /// "US-VA"
    Subdivision(String),
    /// "oci:us-*": a provider and a region pattern where `*` matches any run of characters.
    CloudRegion { provider: CloudProvider, pattern: String },
    /// "AS31898"
    Asn(u32),
    /// A `[[sites]]` name ("dc-us-east"); whether it exists is checked with the whole config.
    Site(String),
}

impl ApprovedEntry {
    /// Parses an entry; the error says what was expected.
    pub fn parse(text: &str) -> Result<ApprovedEntry, String> {
        if let Some((provider, region)) = text.split_once(':') {
            let provider = CloudProvider::from_name(provider).ok_or_else(|| {
                format!(
                    "invalid cloud region {text:?}: unknown provider {provider:?}; expected one of {}",
                    CloudProvider::ALL.map(|p| p.name()).join(", ")
                )
            })?;
            if region.is_empty() {
                return Err(format!(
                    "invalid cloud region {text:?}: no region after ':' (use \"{}:*\" for every region)",
                    provider.name()
                ));
            }
            if region.contains("**") {
                return Err(format!(
                    "invalid wildcard in {text:?}: '**' is not allowed; one '*' matches any run of characters"
                ));
            }
            if let Some(c) = region
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*')))
            {
                return Err(format!(
                    "invalid cloud region {text:?}: {c:?} is not allowed; regions are lower-case letters, digits and '-', with '*' as a wildcard (like \"oci:us-*\")"
                ));
            }
            return Ok(ApprovedEntry::CloudRegion { provider, pattern: region.to_owned() });
        }
        if text.contains('*') {
            return Err(format!(
                "invalid wildcard in {text:?}: '*' is only allowed in cloud regions (like \"oci:us-*\" or \"aws:eu-*\")"
            ));
        }
        if let Some(digits) = text.strip_prefix("AS").or_else(|| text.strip_prefix("as"))
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
        {
            return match digits.parse::<u32>() {
                Ok(n) if n > 0 => Ok(ApprovedEntry::Asn(n)),
                _ => Err(format!(
                    "invalid ASN {text:?}: expected AS followed by a number from 1 to 4294967295"
                )),
            };
        }
        let bytes = text.as_bytes();
        let upper2 = bytes.len() >= 2 && bytes[..2].iter().all(u8::is_ascii_uppercase);
        if upper2 && bytes.len() == 2 {
            if !countries::is_known(text) {
                return Err(format!(
                    "unknown country code {text:?}: expected an ISO 3166-1 alpha-2 code like \"US\", \"DE\", \"SG\""
                ));
            }
            return Ok(ApprovedEntry::Country(text.to_owned()));
        }
        if upper2 && bytes.get(2) == Some(&b'-') {
            let sub = &text[3..];
            let valid = (1..=3).contains(&sub.len())
                && sub.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "invalid subdivision {text:?}: expected an ISO 3166-2 code, a country and 1 to 3 letters or digits, like \"US-VA\""
                ));
            }
            if !countries::is_known(&text[..2]) {
                return Err(format!("invalid subdivision {text:?}: unknown country code {:?}", &text[..2]));
            }
            return Ok(ApprovedEntry::Subdivision(text.to_owned()));
        }
        if text.is_empty() {
            return Err("empty entry: expected a country, subdivision, cloud region, site name or ASN".into());
        }
        Ok(ApprovedEntry::Site(text.to_owned()))
    }

    /// What kind of entry this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ApprovedEntry::Country(_) => "a country code",
            ApprovedEntry::Subdivision(_) => "a subdivision code",
            ApprovedEntry::CloudRegion { .. } => "a cloud region",
            ApprovedEntry::Asn(_) => "an ASN",
            ApprovedEntry::Site(_) => "a site name",
        }
    }

    /// Whether a destination is covered by this entry.
    pub fn matches(&self, d: &Destination) -> bool {
        match self {
            ApprovedEntry::Country(c) => d.country.as_deref() == Some(c.as_str()),
            ApprovedEntry::Subdivision(s) => d.subdivision.as_deref() == Some(s.as_str()),
            ApprovedEntry::CloudRegion { provider, pattern } => {
                d.cloud_provider == Some(*provider)
                    && d.cloud_region.as_ref().is_some_and(|r| glob(pattern.as_bytes(), r.as_bytes()))
            }
            ApprovedEntry::Asn(n) => d.asn == Some(*n),
            ApprovedEntry::Site(s) => d.site.as_deref() == Some(s.as_str()),
        }
    }
}

impl fmt::Display for ApprovedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovedEntry::Country(s) | ApprovedEntry::Subdivision(s) | ApprovedEntry::Site(s) => {
                f.write_str(s)
            }
            ApprovedEntry::CloudRegion { provider, pattern } => write!(f, "{}:{pattern}", provider.name()),
            ApprovedEntry::Asn(n) => write!(f, "AS{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for ApprovedEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ApprovedEntry::parse(&text).map_err(de::Error::custom)
    }
}

/// `*` matches any run of bytes (including none); everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"us-*", b"us-ashburn-1"));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"*-1", b"us-ashburn-1"));
        assert!(glob(b"us-*-1", b"us-ashburn-1"));
        assert!(!glob(b"us-*", b"eu-frankfurt-1"));
        assert!(!glob(b"us-east-1", b"us-east-12"));
    }
}
