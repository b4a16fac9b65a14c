//! `POST /v1/messages` bodies (and its `?wait=` query) through the strict JSON decoder and
//! every check the accept pipeline runs before the store. Nothing may panic, and an error
//! never echoes the code or the text it was given (house rule: a code never reaches a log).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use otpgate::api::{decode, v1};
use otpgate::config::Config;
use serde_json::Value;

#[path = "../shared.rs"]
mod shared;

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(shared::minimal_config)
}

fuzz_target!(|data: &[u8]| {
    // A query may ride before the first NUL, the body after it.
    let (query, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (
            Some(String::from_utf8_lossy(&data[..i]).into_owned()),
            &data[i + 1..],
        ),
        None => (None, data),
    };
    let _ = decode::parse_json::<Value>(body);
    let Err(e) = v1::check_body(config(), body, query.as_deref()) else {
        return;
    };
    let shown = format!("{} {} {:?}", e.code, e.message, e.field);
    for secret in shared::secrets_in(body, &["code", "text"]) {
        assert!(!shown.contains(&secret), "an error echoes a code: {shown}");
    }
});
