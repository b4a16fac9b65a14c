//! What a message says, apart from how it travels: the SMS text of a code, finding the code in
//! a caller's text, how long a code may be, and which per-locale entry a caller's locale picks.
//! The front doors and the channels both ask here, so a rule cannot drift between them.

use std::collections::BTreeMap;
use std::time::Duration;

/// The longest code: what WhatsApp's authentication template can carry. The front doors
/// refuse longer codes, extraction from a text does not pick them, the WhatsApp channel
/// hands them to SMS.
pub const MAX_CODE_LEN: usize = 15;

/// Renders the SMS text for a code: `{code}`, `{minutes}` (whole minutes left, at least 1), `{org}`.
/// One pass, so a value is never read as a placeholder (an `{org}` named "{code}" stays so).
pub fn render_sms(template: &str, code: &str, lifetime: Duration, org: &str) -> String {
    let minutes = lifetime.as_secs().div_ceil(60).max(1).to_string();
    let mut out = String::with_capacity(template.len() + code.len() + org.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (value, len) = [("{code}", code), ("{minutes}", &minutes), ("{org}", org)]
            .into_iter()
            .find(|(name, _)| rest.starts_with(name))
            .map_or(("{", 1), |(name, value)| (value, name.len()));
        out.push_str(value);
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

/// Why no code could be taken from a caller's text (the text then goes by SMS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// Two different candidates: we cannot know which one is the code.
    #[error("ambiguous: the text holds more than one candidate code")]
    Ambiguous,
    /// The only candidate is longer than a template can carry.
    #[error("the candidate code is longer than {MAX_CODE_LEN} characters")]
    TooLong,
    /// Nothing in the text matches the pattern.
    #[error("no code found in the text")]
    NotFound,
}

/// Finds the code in a caller's text with `pattern` (one capture group). Only a unique match
/// counts: two different candidates mean we cannot know which is the code.
pub fn extract_code(pattern: &regex::Regex, text: &str) -> Result<String, ExtractError> {
    let mut found: Option<String> = None;
    for caps in pattern.captures_iter(text) {
        let Some(m) = caps.get(1) else { continue };
        let code: String = m
            .as_str()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .collect();
        if code.is_empty() {
            continue;
        }
        match &found {
            Some(f) if *f != code => return Err(ExtractError::Ambiguous),
            _ => found = Some(code),
        }
    }
    match found {
        Some(c) if c.chars().count() <= MAX_CODE_LEN => Ok(c),
        Some(_) => Err(ExtractError::TooLong),
        None => Err(ExtractError::NotFound),
    }
}

/// The entry of a per-locale table for a caller's locale: `locale` as given, then its
/// lower-case form, then its primary subtag ("en-GB" -> "en"). `None` means the default.
///
/// WhatsApp's template languages and the SMS texts both use this, so a caller's "en-GB" picks
/// the same language on both channels.
pub fn for_locale<'m, V>(table: &'m BTreeMap<String, V>, locale: &str) -> Option<&'m V> {
    if let Some(v) = table.get(locale) {
        return Some(v);
    }
    // Locales are short (the API takes at most 16 bytes): lower-case them on the stack, as
    // this runs for every accepted code that names a locale.
    let mut buf = [0u8; 32];
    let owned;
    let lower = if !locale.bytes().any(|b| b.is_ascii_uppercase()) {
        locale
    } else if let Some(b) = buf.get_mut(..locale.len()) {
        b.copy_from_slice(locale.as_bytes());
        b.make_ascii_lowercase();
        // Changing the case of ASCII bytes keeps UTF-8 valid, so this never falls back.
        std::str::from_utf8(b).unwrap_or(locale)
    } else {
        owned = locale.to_ascii_lowercase();
        owned.as_str()
    };
    let primary = lower.split(['-', '_']).next().unwrap_or("");
    [lower, primary].into_iter().find_map(|k| table.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sms_text_and_code_extraction() {
        assert_eq!(
            render_sms(
                "{code} for {org}, {minutes} min",
                "4711",
                Duration::from_secs(61),
                "ACME"
            ),
            "4711 for ACME, 2 min"
        );
        // Unknown and unclosed braces stay; a placeholder may come twice; a value is never
        // read as a placeholder; multi-byte text around them survives.
        assert_eq!(
            render_sms(
                "{{code}} {x} {code} é{org}{ {minutes",
                "12",
                Duration::ZERO,
                "{code}"
            ),
            "{12} {x} 12 é{code}{ {minutes"
        );
        assert_eq!(
            render_sms("{minutes}", "1", Duration::from_secs(600), ""),
            "10"
        );
        let re = regex::Regex::new(crate::config::DEFAULT_CODE_PATTERN).unwrap();
        assert_eq!(extract_code(&re, "Your OTP is 123456").unwrap(), "123456");
        assert_eq!(extract_code(&re, "123456 is your code").unwrap(), "123456");
        assert_eq!(extract_code(&re, "Code: 123 456.").unwrap(), "123456");
        assert_eq!(
            extract_code(&re, "Code 123456, again: 123456").unwrap(),
            "123456"
        );
        assert_eq!(
            extract_code(&re, "Code 123456 or 654321"),
            Err(ExtractError::Ambiguous)
        );
        assert_eq!(
            extract_code(&re, "no digits here"),
            Err(ExtractError::NotFound)
        );
        assert_eq!(extract_code(&re, "12"), Err(ExtractError::NotFound));
    }

    #[test]
    fn a_candidate_longer_than_a_template_carries_is_not_a_code() {
        let re = regex::Regex::new(r"code (\w+)").unwrap();
        let at_limit = "a".repeat(MAX_CODE_LEN);
        let over = "a".repeat(MAX_CODE_LEN + 1);
        assert_eq!(
            extract_code(&re, &format!("code {at_limit}")).unwrap(),
            at_limit
        );
        assert_eq!(
            extract_code(&re, &format!("code {over}")),
            Err(ExtractError::TooLong)
        );
    }

    #[test]
    fn locale_falls_back_to_lower_case_then_primary_subtag() {
        let table: BTreeMap<String, &str> = [("hi", "hi"), ("en", "en_GB"), ("pt_br", "pt_BR")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for (locale, want) in [
            ("hi", Some("hi")),
            ("HI", Some("hi")),
            ("en-GB", Some("en_GB")),
            ("EN_us", Some("en_GB")),
            ("pt_BR", Some("pt_BR")),
            ("pt-PT", None),
            ("id", None),
            ("", None),
        ] {
            assert_eq!(for_locale(&table, locale).copied(), want, "{locale}");
        }
        // Longer than the stack buffer: still lower-cased.
        let long = format!("HI-{}", "X".repeat(40));
        assert_eq!(for_locale(&table, &long).copied(), Some("hi"));
    }
}
