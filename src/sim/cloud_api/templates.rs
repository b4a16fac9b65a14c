//! The simulator's message templates: what `GET /<version>/<waba_id>/message_templates`
//! answers (Meta's shape for an authentication template read back), and which languages a
//! send may use.

use serde_json::{Value, json};

/// One language of an authentication template, as the simulator's account holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTemplate {
    /// The template name.
    pub name: String,
    /// Its language code (`en_US`, `hi`).
    pub language: String,
    /// `APPROVED`, `PENDING`, `REJECTED`, `PAUSED`, `DISABLED`.
    pub status: String,
    /// `AUTHENTICATION`, `UTILITY`, `MARKETING`.
    pub category: String,
    /// The OTP button's type (`COPY_CODE`, `ONE_TAP`); `None`: no OTP button.
    pub otp_type: Option<String>,
    /// `message_send_ttl_seconds`; `None`: not set (Meta then keeps trying for 10 minutes).
    pub ttl_seconds: Option<u32>,
    /// The footer's `code_expiration_minutes`; `None`: no expiry line.
    pub code_expiration_minutes: Option<u32>,
}

impl SimTemplate {
    /// An approved copy-code authentication template: TTL 5 minutes, "expires in 5 minutes".
    pub fn good(name: &str, language: &str) -> SimTemplate {
        SimTemplate {
            name: name.into(),
            language: language.into(),
            status: "APPROVED".into(),
            category: "AUTHENTICATION".into(),
            otp_type: Some("COPY_CODE".into()),
            ttl_seconds: Some(300),
            code_expiration_minutes: Some(5),
        }
    }

    /// Meta's JSON for this language. The OTP button reads back as a URL button whose URL
    /// names the OTP type, as Meta stores it.
    pub fn to_json(&self, id: usize) -> Value {
        let mut body = json!({
            "type": "BODY",
            "text": "*{{1}}* is your verification code. For your security, do not share this code.",
            "add_security_recommendation": true,
            "example": {"body_text": [["123456"]]}
        });
        if self.category != "AUTHENTICATION" {
            body = json!({"type": "BODY", "text": "Your code is {{1}}"});
        }
        let mut components = vec![body];
        if let Some(m) = self.code_expiration_minutes {
            components.push(json!({
                "type": "FOOTER",
                "text": format!("This code expires in {m} minutes."),
                "code_expiration_minutes": m
            }));
        }
        if let Some(otp) = &self.otp_type {
            components.push(json!({"type": "BUTTONS", "buttons": [{
                "type": "URL",
                "text": "Copy code",
                "url": format!("https://www.whatsapp.com/otp/code/?otp_type={otp}&code=otp{{{{1}}}}"),
                "example": [format!("https://www.whatsapp.com/otp/code/?otp_type={otp}&code=otp123456")]
            }]}));
        }
        let mut v = json!({
            "name": self.name,
            "components": components,
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "id": format!("{}", 1_000_000_000_000_000u64 + id as u64),
        });
        if let Some(ttl) = self.ttl_seconds {
            v["message_send_ttl_seconds"] = json!(ttl);
        }
        v
    }
}

/// The answer to a `message_templates` read filtered by `name` (Meta matches names that
/// contain it; the caller picks the exact one).
pub fn listing(catalog: &[SimTemplate], name: Option<&str>) -> String {
    let data: Vec<Value> = catalog
        .iter()
        .enumerate()
        .filter(|(_, t)| name.is_none_or(|n| t.name.contains(n)))
        .map(|(i, t)| t.to_json(i))
        .collect();
    json!({
        "data": data,
        "paging": {"cursors": {"before": "QVFIUk", "after": "QVFIUl"}}
    })
    .to_string()
}

/// Whether a send of `name` in `language` is refused with 132001: the catalog knows the
/// template but not in that language, or not approved there. A template the catalog does
/// not list at all takes any language (the tests that do not care about languages).
pub fn missing_translation(catalog: &[SimTemplate], name: &str, language: &str) -> bool {
    let mut known = catalog.iter().filter(|t| t.name == name).peekable();
    if known.peek().is_none() {
        return false;
    }
    !known.any(|t| t.language == language && t.status == "APPROVED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_filters_by_name_and_keeps_metas_fields() {
        let mut no_ttl = SimTemplate::good("otp_auth", "hi");
        no_ttl.ttl_seconds = None;
        let cat = vec![
            SimTemplate::good("otp_auth", "en_US"),
            no_ttl,
            SimTemplate::good("other", "en_US"),
        ];
        let v: Value = serde_json::from_str(&listing(&cat, Some("otp_auth"))).unwrap();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["message_send_ttl_seconds"], 300);
        assert!(data[1].get("message_send_ttl_seconds").is_none());
        assert_eq!(data[0]["components"][1]["code_expiration_minutes"], 5);
        let url = data[0]["components"][2]["buttons"][0]["url"]
            .as_str()
            .unwrap();
        assert!(url.contains("otp_type=COPY_CODE") && url.ends_with("code=otp{{1}}"));
    }

    #[test]
    fn translations() {
        let mut pending = SimTemplate::good("otp", "hi");
        pending.status = "PENDING".into();
        let cat = vec![SimTemplate::good("otp", "en_US"), pending];
        assert!(!missing_translation(&cat, "otp", "en_US"));
        assert!(missing_translation(&cat, "otp", "hi"));
        assert!(missing_translation(&cat, "otp", "id"));
        assert!(!missing_translation(&cat, "unlisted", "id"));
    }
}
