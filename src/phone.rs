//! Phone numbers: whatever a caller sends ("+91 98765 43210", "0091 9876543210", "09876543210",
//! "98765-43210") becomes E.164 with libphonenumber's rules and a default country.

use phonenumber::PhoneNumber;
use phonenumber::country::Id;

/// A validated number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number {
    /// E.164 with a leading '+'.
    pub e164: String,
    /// ISO 3166 alpha-2 region of the number ("IN"), when libphonenumber knows it.
    pub country: Option<String>,
}

impl Number {
    /// The digits without '+', as WhatsApp's `to` wants them.
    pub fn digits(&self) -> &str {
        self.e164.trim_start_matches('+')
    }
}

/// Why a number was refused; safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing usable was given.
    #[error("is empty")]
    Empty,
    /// Characters other than digits, '+', spaces, dots, dashes, slashes and parentheses.
    #[error("contains characters that are not part of a phone number")]
    BadCharacters,
    /// libphonenumber could not parse it.
    #[error("is not a phone number")]
    Unparsable,
    /// Parsed, but not a valid number for its country.
    #[error(
        "is not a valid number for its country (check the country code and the number of digits)"
    )]
    Invalid,
}

/// Parses `input` into E.164, reading numbers without a country code as `default_country`'s.
pub fn parse(input: &str, default_country: Id) -> Result<Number, PhoneError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    if trimmed.len() > 32
        || !trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || " +-.()/".contains(c))
    {
        return Err(PhoneError::BadCharacters);
    }
    let parsed: PhoneNumber =
        phonenumber::parse(Some(default_country), trimmed).map_err(|_| PhoneError::Unparsable)?;
    let mut number = parsed;
    if !phonenumber::is_valid(&number) {
        // Callers such as ADSelfService Plus strip the '+': "919876543210" with default IN.
        let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
        match phonenumber::parse(None, format!("+{digits}")) {
            Ok(n) if phonenumber::is_valid(&n) && n.country().id().is_some() => number = n,
            _ => return Err(PhoneError::Invalid),
        }
    }
    Ok(Number {
        // E.164 is "+", the country code and the national significant number (Italian
        // leading zeros included, which NationalNumber's Display keeps). The crate's formatter
        // searches display patterns first even for E.164, at a third of the parse's cost.
        e164: format!("+{}{}", number.code().value(), number.national()),
        country: number.country().id().map(|id| id.as_ref().to_owned()),
    })
}

/// Loads libphonenumber's metadata and compiles its regexes now, so the first caller after
/// start-up does not wait for it (a few hundred milliseconds).
pub fn warm_up() {
    let _ = parse("+919876543210", Id::IN);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indian_forms_all_normalise() {
        for input in [
            "+91 98765 43210",
            "0091 9876543210",
            "09876543210",
            "98765-43210",
            "919876543210",
            "+91-98765-43210",
            "(+91) 98765.43210",
        ] {
            let n = parse(input, Id::IN).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(n.e164, "+919876543210", "{input}");
            assert_eq!(n.country.as_deref(), Some("IN"));
            assert_eq!(n.digits(), "919876543210");
        }
    }

    #[test]
    fn other_countries_keep_their_code() {
        let n = parse("+49 1512 3456789", Id::IN).unwrap();
        assert_eq!(n.e164, "+4915123456789");
        assert_eq!(n.country.as_deref(), Some("DE"));
        let n = parse("0812-3456-7890", Id::ID).unwrap();
        assert_eq!(n.e164, "+6281234567890");
    }

    #[test]
    fn e164_matches_the_crates_formatter_including_leading_zeros() {
        use phonenumber::Mode;
        for (input, region) in [
            ("+39 06 6982 1234", Id::IT),
            ("+44 20 7946 0958", Id::GB),
            ("+1 415 555 2671", Id::US),
            ("+62 812 3456 7890", Id::ID),
            ("+91 98765 43210", Id::IN),
        ] {
            let n = phonenumber::parse(Some(region), input).unwrap();
            let ours = parse(input, region).unwrap().e164;
            assert_eq!(ours, n.format().mode(Mode::E164).to_string(), "{input}");
        }
        assert_eq!(
            parse("+39 06 6982 1234", Id::IT).unwrap().e164,
            "+390669821234"
        );
    }

    #[test]
    fn bad_numbers_are_refused_specifically() {
        assert_eq!(parse("", Id::IN), Err(PhoneError::Empty));
        assert_eq!(parse("   ", Id::IN), Err(PhoneError::Empty));
        assert_eq!(parse("98765abc", Id::IN), Err(PhoneError::BadCharacters));
        assert_eq!(parse("12", Id::IN), Err(PhoneError::Invalid));
        assert!(parse("+91 12345", Id::IN).is_err());
        assert!(parse("+999 123456789", Id::IN).is_err());
        assert!(parse(&"9".repeat(40), Id::IN).is_err());
    }
}
