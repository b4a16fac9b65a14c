//! The compatibility doors' parameter reading: Kannel's query and form (`form_params`), the
//! generic `/v1/sms` door's query, form and JSON fields (`url_pairs`, `value_strings`), then
//! the number and text checks they feed. Nothing may panic, and a refused text is never echoed.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use otpgate::api::{compat, decode, submit};
use otpgate::config::Config;
use otpgate::phone;

#[path = "../shared.rs"]
mod shared;

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(shared::minimal_config)
}

fuzz_target!(|data: &[u8]| {
    // The query before the first NUL, the body after it.
    let (query, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    // Kannel: query, then a form body on top.
    let mut params = compat::form_params(query);
    params.extend(compat::form_params(body));
    kannel(&params);

    // Generic: query and form pairs, or a JSON object's fields as strings.
    let mut fields: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in decode::url_pairs(&String::from_utf8_lossy(query)) {
        fields.entry(k).or_default().push(v);
    }
    for (k, v) in decode::url_pairs(&String::from_utf8_lossy(body)) {
        fields.entry(k).or_default().push(v);
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        for (k, v) in map {
            // A refused shape (a nested list in a number field) is an answer, not a crash.
            let values = compat::value_strings(&k, &v).unwrap_or_default();
            fields.entry(k).or_default().extend(values);
        }
    }
    let one = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| fields.get(*n).and_then(|v| v.first()))
    };
    if let Some(numbers) = compat::NUMBER_FIELDS.iter().find_map(|n| fields.get(*n)) {
        for n in numbers.iter().take(10) {
            let _ = phone::parse(n, config().otp.default_country);
        }
    }
    if let Some(text) = one(compat::TEXT_FIELDS) {
        text_checks(text);
    }
});

/// What `kannel` reads from its parameters before the store.
fn kannel(params: &HashMap<String, String>) {
    let cfg = config();
    if let Some(to) = params.get("to") {
        for r in to.split_whitespace().take(10) {
            let _ = phone::parse(r, cfg.otp.default_country);
        }
    }
    if let Some(v) = params.get("validity") {
        let ttl = v.trim().parse::<u64>().ok().map(|m| m.saturating_mul(60));
        let _ = submit::ttl_of(cfg, ttl);
    }
    if let Some(text) = params.get("text") {
        text_checks(text);
    }
}

/// The text check and code extraction; a refusal never shows a code from the text.
fn text_checks(text: &str) {
    let cfg = config();
    if let Err(e) =
        submit::build_content(cfg, None, Some(text.to_owned()), None, cfg.otp.default_ttl)
    {
        let shown = format!("{} {} {:?}", e.code, e.message, e.field);
        for run in text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|r| r.len() >= 6)
        {
            assert!(!shown.contains(run), "an error echoes the text: {shown}");
        }
    }
}
