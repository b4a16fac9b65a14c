//! What several fuzz targets share: a valid configuration and the codes hidden in a body.
#![allow(dead_code)] // Each target uses a part.

use otpgate::config::Config;
use otpgate::config::load::{Sources, load};
use serde_json::Value;

/// The smallest valid configuration, loaded once through the real loader.
pub fn minimal_config() -> Config {
    let dir = tempfile::tempdir().expect("temp dir");
    let main = dir.path().join("otpgate.toml");
    std::fs::write(&main, "[otp]\ndefault_country = \"IN\"\n").expect("write config");
    let sources = Sources {
        main,
        env: Default::default(),
    };
    load(&sources).expect("the minimal config loads")
}

/// Runs of 6 or more digits in the JSON string values of `fields` that appear nowhere else in
/// the body (not in a key, not in another field), so an error showing one must have echoed a
/// code or a text.
pub fn secrets_in(body: &[u8], fields: &[&str]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut hidden = Vec::new();
    let mut others = String::new();
    collect(&v, fields, false, &mut hidden, &mut others);
    hidden
        .iter()
        .flat_map(|s| digit_runs(s))
        .filter(|r| !others.contains(r.as_str()))
        .collect()
}

fn collect(
    v: &Value,
    fields: &[&str],
    secret: bool,
    hidden: &mut Vec<String>,
    others: &mut String,
) {
    match v {
        Value::String(s) if secret => hidden.push(s.clone()),
        Value::Object(m) => {
            for (k, x) in m {
                others.push_str(k);
                others.push('\n');
                collect(x, fields, fields.contains(&k.as_str()), hidden, others);
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect(x, fields, secret, hidden, others)),
        other => {
            others.push_str(&other.to_string());
            others.push('\n');
        }
    }
}

fn digit_runs(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|r| r.len() >= 6)
        .map(str::to_owned)
        .collect()
}
