//! ISO 3166-1 alpha-2 country codes (the 249 assigned codes, plus XK for Kosovo, which
//! MaxMind and DB-IP databases use), for validating configuration. Sorted, for binary search.

const CODES: [&str; 250] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA",
    "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV",
    "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU",
    "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES",
    "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM",
    "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE",
    "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM",
    "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY",
    "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT",
    "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU",
    "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA",
    "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM",
    "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL",
    "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE",
    "VG", "VI", "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Whether `code` is an assigned country code (upper case).
pub fn is_known(code: &str) -> bool {
    CODES.binary_search(&code).is_ok()
}

/// Common ways people write a country that are not its alpha-2 code: alpha-3 codes and English
/// names, with the code they stand for (for "did you mean").
const ALIASES: &[(&str, &str)] = &[
    ("USA", "US"),
    ("UNITED STATES", "US"),
    ("AMERICA", "US"),
    ("CHN", "CN"),
    ("CHINA", "CN"),
    ("GBR", "GB"),
    ("UK", "GB"),
    ("UNITED KINGDOM", "GB"),
    ("BRITAIN", "GB"),
    ("DEU", "DE"),
    ("GERMANY", "DE"),
    ("FRA", "FR"),
    ("FRANCE", "FR"),
    ("JPN", "JP"),
    ("JAPAN", "JP"),
    ("RUS", "RU"),
    ("RUSSIA", "RU"),
    ("IND", "IN"),
    ("INDIA", "IN"),
    ("BRA", "BR"),
    ("BRAZIL", "BR"),
    ("CAN", "CA"),
    ("CANADA", "CA"),
    ("AUS", "AU"),
    ("AUSTRALIA", "AU"),
    ("SGP", "SG"),
    ("SINGAPORE", "SG"),
    ("KOR", "KR"),
    ("KOREA", "KR"),
    ("SOUTH KOREA", "KR"),
    ("NLD", "NL"),
    ("NETHERLANDS", "NL"),
    ("IRL", "IE"),
    ("IRELAND", "IE"),
    ("CHE", "CH"),
    ("SWITZERLAND", "CH"),
    ("SWE", "SE"),
    ("SWEDEN", "SE"),
    ("ITA", "IT"),
    ("ITALY", "IT"),
    ("ESP", "ES"),
    ("SPAIN", "ES"),
    ("MEX", "MX"),
    ("MEXICO", "MX"),
    ("HKG", "HK"),
    ("HONG KONG", "HK"),
    ("TWN", "TW"),
    ("TAIWAN", "TW"),
    ("ISR", "IL"),
    ("ISRAEL", "IL"),
    ("ARE", "AE"),
    ("UAE", "AE"),
    ("ZAF", "ZA"),
    ("SOUTH AFRICA", "ZA"),
    ("POL", "PL"),
    ("POLAND", "PL"),
    ("UKR", "UA"),
    ("UKRAINE", "UA"),
    ("TUR", "TR"),
    ("TURKEY", "TR"),
];

/// The alpha-2 code that `text` (any case) most likely means, when it is not one: an alpha-3
/// code or an English name ("USA", "china").
pub fn suggest(text: &str) -> Option<&'static str> {
    let upper = text.trim().to_ascii_uppercase();
    ALIASES.iter().find(|(alias, _)| *alias == upper).map(|(_, code)| *code)
}

/// `text` as an alpha-2 code (any case accepted), or an error that names what was expected and,
/// when it can tell, what was meant.
pub fn parse(text: &str) -> Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    if is_known(&upper) {
        return Ok(upper);
    }
    Err(match suggest(text) {
        Some(code) => format!("an ISO 3166-1 alpha-2 country code (did you mean {code}?)"),
        None => "an ISO 3166-1 alpha-2 country code like US, CN or DE".into(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorted_and_known() {
        assert!(super::CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(super::is_known("US") && super::is_known("SG") && super::is_known("XK"));
        assert!(!super::is_known("XX") && !super::is_known("us") && !super::is_known("USA"));
    }

    #[test]
    fn codes_in_any_case_and_suggestions_for_what_people_write() {
        assert_eq!(super::parse("cn"), Ok("CN".into()));
        assert_eq!(super::parse(" Us "), Ok("US".into()));
        assert!(super::parse("CHN").unwrap_err().contains("did you mean CN?"));
        assert!(super::parse("united kingdom").unwrap_err().contains("did you mean GB?"));
        assert!(super::parse("XX").unwrap_err().contains("like US"));
        assert!(super::ALIASES.iter().all(|(_, code)| super::is_known(code)));
    }
}
