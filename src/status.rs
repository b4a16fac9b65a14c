//! `otpgate status`: one screen for the admin at the console, from what the running daemon
//! already publishes (`/readyz` for channels, circuit, modems, queue and paused SMS ranges,
//! `/metrics` for counts since it started) and the outbox's last hour, read-only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One sample of the Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name as exposed (`otpgate_fallbacks_total`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments and malformed lines skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let rest = rest.strip_suffix('}')?;
            let labels = rest
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            (name, labels)
        }
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Messages created in the last hour, by final state and channel, read from the outbox.
pub fn last_hour(
    db: &Path,
    now_ms: i64,
) -> Result<BTreeMap<(String, String), u64>, rusqlite::Error> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // Rowids follow creation: walk back from the newest and stop past the hour.
    let mut stmt =
        c.prepare("SELECT state, channel, created_at FROM messages ORDER BY rowid DESC")?;
    let mut rows = stmt.query([])?;
    let mut out = BTreeMap::new();
    let since = now_ms.saturating_sub(3_600_000);
    while let Some(row) = rows.next()? {
        let at: i64 = row.get(2)?;
        if at <= since.saturating_sub(60_000) {
            break;
        }
        if at > since {
            let state: String = row.get(0)?;
            let channel: Option<String> = row.get(1)?;
            *out.entry((state, channel.unwrap_or_else(|| "-".into())))
                .or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// The sum of a family's samples with `label` = each value, in label order.
fn by_label(all: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in all.iter().filter(|s| s.name == name) {
        if let Some(v) = s.labels.get(label) {
            *out.entry(v.clone()).or_insert(0.0) += s.value;
        }
    }
    out
}

fn one(all: &[Sample], name: &str) -> Option<f64> {
    all.iter().find(|s| s.name == name).map(|s| s.value)
}

fn counts(m: &BTreeMap<String, f64>) -> String {
    let nonzero: Vec<String> = m
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if nonzero.is_empty() {
        "none".into()
    } else {
        nonzero.join(", ")
    }
}

/// The screen: `readyz` is the daemon's `/readyz` body, `metrics` its `/metrics` text,
/// `hour` the outbox's last hour when it could be read.
pub fn render(
    readyz: &serde_json::Value,
    metrics: &str,
    hour: Result<&BTreeMap<(String, String), u64>, &str>,
) -> String {
    let all = samples(metrics);
    let mut out = String::new();
    health(&mut out, readyz, &all);
    last_hour_lines(&mut out, hour);
    counts_lines(&mut out, readyz, &all);
    out
}

/// Readiness, store and queue, channels and modems, the circuit.
fn health(out: &mut String, readyz: &serde_json::Value, all: &[Sample]) {
    let _ = writeln!(
        out,
        "otpgate       {}{}",
        readyz["status"].as_str().unwrap_or("unknown"),
        match readyz["problems"].as_array() {
            Some(p) if !p.is_empty() => format!(
                " ({})",
                p.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "store         {}; queue {}",
        readyz["store"].as_str().unwrap_or("?"),
        readyz["queue_depth"]
            .as_u64()
            .map_or("?".to_string(), |d| d.to_string())
    );
    if let Some(c) = readyz["cluster"].as_object() {
        let _ = writeln!(
            out,
            "node          {} ({})",
            c.get("node").and_then(|n| n.as_str()).unwrap_or("?"),
            c.get("backend").and_then(|n| n.as_str()).unwrap_or("?")
        );
        for p in c
            .get("peers")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                out,
                "  peer        {}: {}, last heartbeat {}",
                p["node"].as_str().unwrap_or("?"),
                p["role"].as_str().unwrap_or("?"),
                p["last_seen"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(channels) = readyz["channels"].as_object() {
        for (name, h) in channels {
            let usable = h["usable"].as_bool().unwrap_or(false);
            let _ = writeln!(
                out,
                "channel       {name}: {} ({})",
                if usable { "up" } else { "DOWN" },
                h["summary"].as_str().unwrap_or("")
            );
            for p in h["parts"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  modem       {}: {}{} {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?"),
                    p["signal_dbm"]
                        .as_i64()
                        .map_or(String::new(), |d| format!(", signal {d} dBm")),
                    p["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    let circuit = one(all, "otpgate_whatsapp_circuit_open").unwrap_or(0.0);
    let _ = writeln!(
        out,
        "whatsapp      circuit {}",
        if circuit > 0.0 { "OPEN" } else { "closed" }
    );
}

/// What the outbox carried in the last hour.
fn last_hour_lines(out: &mut String, hour: Result<&BTreeMap<(String, String), u64>, &str>) {
    match hour {
        Ok(h) => {
            let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
            let mut states: BTreeMap<String, u64> = BTreeMap::new();
            for ((state, channel), n) in h {
                *states.entry(state.clone()).or_insert(0) += n;
                if state == "delivered" || state == "sent" {
                    *delivered.entry(channel.clone()).or_insert(0) += n;
                }
            }
            let list = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let _ = writeln!(out, "last hour     carried by {}", list(&delivered));
            let _ = writeln!(out, "              states: {}", list(&states));
        }
        Err(why) => {
            let _ = writeln!(out, "last hour     (outbox not readable: {why})");
        }
    }
}

/// Counts since the daemon started, limits hit and paused ranges.
fn counts_lines(out: &mut String, readyz: &serde_json::Value, all: &[Sample]) {
    let delivered = by_label(all, "otpgate_messages_delivered_total", "channel");
    let sent = by_label(all, "otpgate_messages_sent_total", "channel");
    let _ = writeln!(
        out,
        "since start   sent {}; delivered {}",
        counts(&sent),
        counts(&delivered)
    );
    let fallbacks = by_label(all, "otpgate_fallbacks_total", "reason");
    let _ = writeln!(out, "fallbacks     {}", counts(&fallbacks));
    let rejected = by_label(all, "otpgate_requests_rejected_total", "reason");
    let limits: BTreeMap<String, f64> = rejected
        .into_iter()
        .filter(|(k, _)| {
            k.ends_with("_limited")
                || matches!(
                    k.as_str(),
                    "number_type_not_allowed" | "country_not_allowed" | "sms_paused"
                )
        })
        .collect();
    let _ = writeln!(out, "limits hit    {}", counts(&limits));
    let paused: Vec<String> = readyz["sms_paused"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_owned))
        .collect();
    let _ = writeln!(
        out,
        "sms paused    {}",
        if paused.is_empty() {
            "none".to_string()
        } else {
            format!("{} (lift: otpgate breaker lift KEY)", paused.join(", "))
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_names_what_an_admin_checks() {
        let metrics = "# HELP x\n\
            otpgate_whatsapp_circuit_open 1\n\
            otpgate_messages_delivered_total{channel=\"sms\"} 3\n\
            otpgate_messages_delivered_total{channel=\"whatsapp\"} 0\n\
            otpgate_fallbacks_total{reason=\"not_on_whatsapp\"} 2\n\
            otpgate_requests_rejected_total{reason=\"prefix_limited\"} 4\n\
            otpgate_requests_rejected_total{reason=\"invalid_json\"} 9\n";
        let readyz = serde_json::json!({
            "status": "ready", "store": "ok", "queue_depth": 7, "problems": [],
            "channels": {"sms": {"usable": true, "summary": "1 of 1 modems ready",
                "parts": [{"name": "modem0", "state": "ready", "signal_dbm": -71, "detail": "Airtel"}]}},
            "sms_paused": [{"key": "+9198765", "codes": 60, "approved": 1, "since": 0, "until": 1}],
        });
        let mut hour = BTreeMap::new();
        hour.insert(("delivered".to_string(), "sms".to_string()), 5);
        let s = render(&readyz, metrics, Ok(&hour));
        for want in [
            "otpgate       ready",
            "queue 7",
            "channel       sms: up (1 of 1 modems ready)",
            "modem       modem0: ready, signal -71 dBm Airtel",
            "circuit OPEN",
            "carried by sms 5",
            "delivered sms 3",
            "fallbacks     not_on_whatsapp 2",
            "limits hit    prefix_limited 4",
            "sms paused    +9198765",
        ] {
            assert!(s.contains(want), "{want}:\n{s}");
        }
        assert!(!s.contains("invalid_json"), "{s}");
    }

    #[test]
    fn samples_read_labels_and_values() {
        let s = samples("a_total{x=\"1\",y=\"b c\"} 2.5\nb 3\n# c\nbad\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["y"], "b c");
        assert_eq!(s[1].value, 3.0);
    }
}
