//! E.164 phone numbers as WhatsApp addresses them: digits only, country code first, no `+`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number may contain only digits, spaces, '+', '-', '.', '(' and ')'")]
    InvalidCharacter,
    #[error("phone number must have between 8 and 15 digits including the country code")]
    BadLength,
    #[error("phone number has no known country calling code")]
    UnknownCountryCode,
    #[error("phone number has the wrong number of digits for country code +{0}")]
    BadNationalLength(&'static str),
}

/// A validated E.164 number, stored as its digits without the leading `+`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber {
    digits: String,
    country: &'static str,
}

impl PhoneNumber {
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// ISO 3166 alpha-2 code of the number's country (`US` for the whole +1 plan: the numbering
    /// plan does not tell the US from Canada without an area-code table).
    pub fn country(&self) -> &'static str {
        self.country
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.digits)
    }
}

/// Accepts the ways people write numbers (`+52 1 55 1234-5678`, `0052…`, `(55) …`) and returns
/// the canonical digits, or why the number cannot be a WhatsApp address.
///
/// Canonical means one person, one string: the equivalent spellings of one mobile number (see
/// [`identity`]) come out the same, so consent, opt-outs, suppressions, service windows and tier
/// counts recorded under one spelling hold for the others.
pub fn normalize(input: &str) -> Result<PhoneNumber, PhoneError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    let mut digits = String::with_capacity(trimmed.len());
    for (i, c) in trimmed.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => {}
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(PhoneError::InvalidCharacter),
        }
    }
    if let Some(rest) = digits.strip_prefix("00") {
        digits = rest.to_string();
    }
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(PhoneError::BadLength);
    }
    let (code, country) = country_of(&digits).ok_or(PhoneError::UnknownCountryCode)?;
    if let Some((min, max)) = national_length(code) {
        let national = digits.len() - code.len();
        if national < min || national > max {
            return Err(PhoneError::BadNationalLength(code));
        }
    }
    let digits = identity(code, digits);
    Ok(PhoneNumber { digits, country })
}

/// Every spelling that reaches the person a canonical number names (itself first): what to look
/// for in data stored as it came (webhook payloads, upload rows) when erasing them.
///
/// [`identity`] only ever adds one digit, so the other spellings are the canonical number with one
/// digit left out that normalise back to it: the rule is written once, there.
pub fn spellings(canonical: &str) -> Vec<String> {
    let mut all = vec![canonical.to_string()];
    for at in 1..canonical.len() {
        let shorter = format!("{}{}", &canonical[..at], &canonical[at + 1..]);
        if !all.contains(&shorter) && normalize(&shorter).is_ok_and(|n| n.digits() == canonical) {
            all.push(shorter);
        }
    }
    all
}

/// The one form of numbers that several spellings reach, as WhatsApp addresses them:
///
/// - Mexico: mobiles were dialled from abroad as +52 1 + ten digits until 2019; the "1" is gone
///   from dialling but many WhatsApp ids keep it. Both are one person: the form with the 1.
/// - Argentina: mobiles are +54 9 + ten digits from abroad, often written without the 9 (and
///   WhatsApp ids carry it): the form with the 9.
/// - Brazil: mobiles gained a ninth digit (a 9 before the eight-digit number, which starts with
///   6 to 9) in 2012 to 2016, and many WhatsApp ids predate it: the form with the ninth digit.
///   Eight-digit numbers starting with 2 to 5 are landlines and stay as they are.
///
/// The forms reach the same phone, so sending to this one is as good as to the other; Meta's
/// own id for the person comes back with each send and is kept with the message.
fn identity(code: &str, digits: String) -> String {
    let national = &digits[code.len()..];
    match (code, national.len()) {
        ("52", 10) => format!("521{national}"),
        ("54", 10) => format!("549{national}"),
        ("55", 10) if national.as_bytes()[2] >= b'6' => {
            format!("55{}9{}", &national[..2], &national[2..])
        }
        _ => digits,
    }
}

/// Longest-prefix match of the calling code (codes are 1 to 3 digits and prefix-free).
fn country_of(digits: &str) -> Option<(&'static str, &'static str)> {
    (1..=3).rev().find_map(|len| {
        let prefix = digits.get(..len)?;
        CALLING_CODES
            .iter()
            .find(|(code, _)| *code == prefix)
            .copied()
    })
}

/// National significant number lengths where pregon's users send most; elsewhere only the E.164
/// bounds apply.
fn national_length(code: &str) -> Option<(usize, usize)> {
    Some(match code {
        "1" => (10, 10),
        "52" => (10, 11), // Mexico; 11 with the legacy mobile "1"
        "54" => (10, 11), // Argentina; 11 with the mobile "9"
        "55" => (10, 11), // Brazil
        "56" => (9, 9),   // Chile
        "57" => (10, 10), // Colombia
        "51" => (8, 9),   // Peru
        "58" => (10, 10), // Venezuela
        "593" => (8, 9),  // Ecuador
        "598" => (8, 8),  // Uruguay
        "595" => (9, 9),  // Paraguay
        "591" => (8, 8),  // Bolivia
        "34" => (9, 9),   // Spain
        _ => return None,
    })
}

/// ITU-T E.164 country calling codes (assigned geographic codes).
const CALLING_CODES: &[(&str, &str)] = &[
    ("1", "US"),
    ("7", "RU"),
    ("20", "EG"),
    ("27", "ZA"),
    ("30", "GR"),
    ("31", "NL"),
    ("32", "BE"),
    ("33", "FR"),
    ("34", "ES"),
    ("36", "HU"),
    ("39", "IT"),
    ("40", "RO"),
    ("41", "CH"),
    ("43", "AT"),
    ("44", "GB"),
    ("45", "DK"),
    ("46", "SE"),
    ("47", "NO"),
    ("48", "PL"),
    ("49", "DE"),
    ("51", "PE"),
    ("52", "MX"),
    ("53", "CU"),
    ("54", "AR"),
    ("55", "BR"),
    ("56", "CL"),
    ("57", "CO"),
    ("58", "VE"),
    ("60", "MY"),
    ("61", "AU"),
    ("62", "ID"),
    ("63", "PH"),
    ("64", "NZ"),
    ("65", "SG"),
    ("66", "TH"),
    ("81", "JP"),
    ("82", "KR"),
    ("84", "VN"),
    ("86", "CN"),
    ("90", "TR"),
    ("91", "IN"),
    ("92", "PK"),
    ("93", "AF"),
    ("94", "LK"),
    ("95", "MM"),
    ("98", "IR"),
    ("211", "SS"),
    ("212", "MA"),
    ("213", "DZ"),
    ("216", "TN"),
    ("218", "LY"),
    ("220", "GM"),
    ("221", "SN"),
    ("222", "MR"),
    ("223", "ML"),
    ("224", "GN"),
    ("225", "CI"),
    ("226", "BF"),
    ("227", "NE"),
    ("228", "TG"),
    ("229", "BJ"),
    ("230", "MU"),
    ("231", "LR"),
    ("232", "SL"),
    ("233", "GH"),
    ("234", "NG"),
    ("235", "TD"),
    ("236", "CF"),
    ("237", "CM"),
    ("238", "CV"),
    ("239", "ST"),
    ("240", "GQ"),
    ("241", "GA"),
    ("242", "CG"),
    ("243", "CD"),
    ("244", "AO"),
    ("245", "GW"),
    ("246", "IO"),
    ("248", "SC"),
    ("249", "SD"),
    ("250", "RW"),
    ("251", "ET"),
    ("252", "SO"),
    ("253", "DJ"),
    ("254", "KE"),
    ("255", "TZ"),
    ("256", "UG"),
    ("257", "BI"),
    ("258", "MZ"),
    ("260", "ZM"),
    ("261", "MG"),
    ("262", "RE"),
    ("263", "ZW"),
    ("264", "NA"),
    ("265", "MW"),
    ("266", "LS"),
    ("267", "BW"),
    ("268", "SZ"),
    ("269", "KM"),
    ("290", "SH"),
    ("291", "ER"),
    ("297", "AW"),
    ("298", "FO"),
    ("299", "GL"),
    ("350", "GI"),
    ("351", "PT"),
    ("352", "LU"),
    ("353", "IE"),
    ("354", "IS"),
    ("355", "AL"),
    ("356", "MT"),
    ("357", "CY"),
    ("358", "FI"),
    ("359", "BG"),
    ("370", "LT"),
    ("371", "LV"),
    ("372", "EE"),
    ("373", "MD"),
    ("374", "AM"),
    ("375", "BY"),
    ("376", "AD"),
    ("377", "MC"),
    ("378", "SM"),
    ("380", "UA"),
    ("381", "RS"),
    ("382", "ME"),
    ("383", "XK"),
    ("385", "HR"),
    ("386", "SI"),
    ("387", "BA"),
    ("389", "MK"),
    ("420", "CZ"),
    ("421", "SK"),
    ("423", "LI"),
    ("500", "FK"),
    ("501", "BZ"),
    ("502", "GT"),
    ("503", "SV"),
    ("504", "HN"),
    ("505", "NI"),
    ("506", "CR"),
    ("507", "PA"),
    ("508", "PM"),
    ("509", "HT"),
    ("590", "GP"),
    ("591", "BO"),
    ("592", "GY"),
    ("593", "EC"),
    ("594", "GF"),
    ("595", "PY"),
    ("596", "MQ"),
    ("597", "SR"),
    ("598", "UY"),
    ("599", "CW"),
    ("670", "TL"),
    ("672", "NF"),
    ("673", "BN"),
    ("674", "NR"),
    ("675", "PG"),
    ("676", "TO"),
    ("677", "SB"),
    ("678", "VU"),
    ("679", "FJ"),
    ("680", "PW"),
    ("681", "WF"),
    ("682", "CK"),
    ("683", "NU"),
    ("685", "WS"),
    ("686", "KI"),
    ("687", "NC"),
    ("688", "TV"),
    ("689", "PF"),
    ("690", "TK"),
    ("691", "FM"),
    ("692", "MH"),
    ("850", "KP"),
    ("852", "HK"),
    ("853", "MO"),
    ("855", "KH"),
    ("856", "LA"),
    ("880", "BD"),
    ("886", "TW"),
    ("960", "MV"),
    ("961", "LB"),
    ("962", "JO"),
    ("963", "SY"),
    ("964", "IQ"),
    ("965", "KW"),
    ("966", "SA"),
    ("967", "YE"),
    ("968", "OM"),
    ("970", "PS"),
    ("971", "AE"),
    ("972", "IL"),
    ("973", "BH"),
    ("974", "QA"),
    ("975", "BT"),
    ("976", "MN"),
    ("977", "NP"),
    ("992", "TJ"),
    ("993", "TM"),
    ("994", "AZ"),
    ("995", "GE"),
    ("996", "KG"),
    ("998", "UZ"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_latin_american_spellings() {
        let n = normalize("+52 1 55 1234-5678").unwrap();
        assert_eq!(n.digits(), "5215512345678");
        assert_eq!(n.country(), "MX");
        assert_eq!(
            normalize("0057 (300) 123 4567").unwrap().digits(),
            "573001234567"
        );
        assert_eq!(normalize("5511987654321").unwrap().country(), "BR");
        assert_eq!(normalize("+54 9 11 2345 6789").unwrap().country(), "AR");
        assert_eq!(normalize("+1 415 555 0100").unwrap().country(), "US");
    }

    #[test]
    fn equivalent_spellings_of_one_mobile_are_one_number() {
        for (spellings, canonical) in [
            (
                &["+52 1 55 1234 5678", "+52 55 1234 5678", "525512345678"][..],
                "5215512345678",
            ),
            (
                &["+54 9 11 2345 6789", "+54 11 2345 6789", "541123456789"][..],
                "5491123456789",
            ),
            (
                &["+55 11 98765 4321", "+55 11 8765 4321", "551187654321"][..],
                "5511987654321",
            ),
            // Brazil's old mobile ranges started 6 to 9; 2 to 5 are landlines, left alone.
            (&["+55 11 3456 7890"][..], "551134567890"),
            (&["+55 21 6123 4567"][..], "5521961234567"),
            // Elsewhere nothing is added or taken away.
            (&["+57 300 123 4567"][..], "573001234567"),
            (&["+1 415 555 0100"][..], "14155550100"),
        ] {
            for spelling in spellings {
                assert_eq!(
                    normalize(spelling).unwrap().digits(),
                    canonical,
                    "{spelling}"
                );
            }
        }
    }

    #[test]
    fn every_spelling_of_a_person_is_known() {
        for (canonical, others) in [
            ("5215512345678", &["525512345678"][..]),
            ("5491123456789", &["541123456789"][..]),
            ("5511987654321", &["551187654321"][..]),
            // A Brazilian number whose ninth digit is followed by 2 to 5 has no other spelling.
            ("5511934567890", &[][..]),
            ("551134567890", &[][..]),
            ("573001234567", &[][..]),
        ] {
            let all = spellings(canonical);
            assert_eq!(all[0], canonical);
            assert_eq!(&all[1..], others, "{canonical}");
            for s in &all {
                assert_eq!(normalize(s).unwrap().digits(), canonical, "{s}");
            }
        }
    }

    #[test]
    fn canonical_numbers_stay_canonical() {
        for raw in [
            "5215512345678",
            "5491123456789",
            "5511987654321",
            "551134567890",
            "14155550100",
        ] {
            let once = normalize(raw).unwrap();
            assert_eq!(normalize(once.digits()).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn longest_calling_code_wins() {
        assert_eq!(normalize("+593 99 123 4567").unwrap().country(), "EC");
        assert_eq!(normalize("+502 5512 3456").unwrap().country(), "GT");
        assert_eq!(normalize("+351 912 345 678").unwrap().country(), "PT");
    }

    #[test]
    fn rejects_what_cannot_be_an_address() {
        assert_eq!(normalize(""), Err(PhoneError::Empty));
        assert_eq!(normalize("+52 55 abc"), Err(PhoneError::InvalidCharacter));
        assert_eq!(
            normalize("52+5512345678"),
            Err(PhoneError::InvalidCharacter)
        );
        assert_eq!(normalize("12345"), Err(PhoneError::BadLength));
        assert_eq!(normalize("1234567890123456"), Err(PhoneError::BadLength));
        assert_eq!(normalize("0155123456789"), Err(PhoneError::BadLength));
        assert_eq!(
            normalize("+1 415 555 01"),
            Err(PhoneError::BadNationalLength("1"))
        );
        assert_eq!(
            normalize("+57 300 123 45"),
            Err(PhoneError::BadNationalLength("57"))
        );
        assert_eq!(
            normalize("+999 1234 5678"),
            Err(PhoneError::UnknownCountryCode)
        );
    }
}
