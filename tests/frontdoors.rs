//! The compatibility front doors and the Verify API, each driven the way its peer drives it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use base64::Engine;
use common::{CLIENT, KEY, gateway};
use otpgate::channel::Content;
use serde_json::json;

/// privacyIDEA's HttpSMSProvider: success = 2xx and RETURN_SUCCESS as a substring of the body.
fn privacyidea_ok(status: u16, body: &str, return_success: &str) -> bool {
    (200..=202).contains(&status) && body.contains(return_success)
}

/// LinOTP's HttpSMSProvider: the status is not checked; RETURN_SUCCESS is a prefix match.
fn linotp_ok(body: &str, return_success: &str) -> bool {
    body.starts_with(return_success)
}

/// `POST /v1/verifications/{id}/check` with `code`.
async fn check(
    g: &common::Gateway,
    id: &str,
    code: impl serde::Serialize,
) -> (u16, serde_json::Value) {
    let path = format!("/v1/verifications/{id}/check");
    g.post_path(&path, json!({ "code": code })).await
}

const PW_HASH_LINE: &str =
    "password_sha256 = \"b5a2c96250612366ea272ffac6d9744aaf4b45aacd96aa7cfcb931ee3b558259\"\n"; // sha256("dummy")

#[tokio::test]
async fn kannel_get_post_and_exact_replies() {
    let g = gateway(&format!("{PW_HASH_LINE}[policy]\nprenotify = false\n")).await;
    let base = format!("{}/cgi-bin/sendsms", g.base);
    // GET with username/password; "+" written as %2B, as Kannel users must.
    let r = g
        .http
        .get(format!(
            "{base}?username={CLIENT}&password=dummy&to=%2B919876543210&text=Your+code+is+482913"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-otpgate-id"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "0: Accepted for delivery");
    let m = g.wait_until(&id, |m| m["status"] == "sent").await;
    assert_eq!(
        m["channel"], "whatsapp",
        "the code was found in the text and rode WhatsApp"
    );
    assert!(
        matches!(&g.wa.sent()[0].content, Content::Code { code, sms_text } if code == "482913" && sms_text == "Your code is 482913")
    );
    // user/pass aliases, two receivers, and the key instead of a password.
    let r = g
        .http
        .get(format!(
            "{base}?user={CLIENT}&pass={KEY}&to=9876543210+9876543211&text=Code+111222"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["x-otpgate-id"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    // POST form.
    let form = g.http.post(&base).form(&[
        ("username", CLIENT),
        ("password", "dummy"),
        ("to", "+919876543212"),
        ("text", "OTP 5555"),
    ]);
    let (s, text) = common::fetch(form).await;
    assert_eq!((s, text.as_str()), (202, "0: Accepted for delivery"));
    // POST text/plain with X-Kannel-* headers.
    let r = g
        .http
        .post(&base)
        .header("content-type", "text/plain")
        .header("X-Kannel-Username", CLIENT)
        .header("X-Kannel-Password", "dummy")
        .header("X-Kannel-To", "+919876543213")
        .body("Your OTP: 777666")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The refusals, byte for byte.
    for (url, status, text) in [
        (
            format!("{base}?username={CLIENT}&password=wrong&to=%2B919876543210&text=x"),
            403,
            "Authorization failed for sendsms",
        ),
        (
            format!("{base}?username={CLIENT}&password=dummy&text=x"),
            400,
            "Missing receiver number, rejected",
        ),
    ] {
        let (s, body) = common::fetch(g.http.get(url)).await;
        assert_eq!((s, body.as_str()), (status, text));
    }
    g.stop().await;
}

#[tokio::test]
async fn kannel_not_routable_and_bad_numbers_store_nothing() {
    let g = gateway(&format!(
        "{PW_HASH_LINE}[policy]\nsms_countries = [\"IN\"]\nwhatsapp_countries = [\"IN\"]\n"
    ))
    .await;
    let base = format!("{}/cgi-bin/sendsms", g.base);
    let url = format!("{base}?username={CLIENT}&password=dummy&to=%2B4915123456789&text=Code+1234");
    let (s, text) = common::fetch(g.http.get(url)).await;
    assert_eq!((s, text.as_str()), (403, "Not routable. Do not try again."));
    let r = g
        .http
        .get(format!(
            "{base}?username={CLIENT}&password=dummy&to=9876543210+12&text=Code+1234"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("Invalid receiver number, rejected")
    );
    assert_eq!(
        g.running
            .as_ref()
            .unwrap()
            .store
            .queue_depth()
            .await
            .unwrap(),
        0,
        "the good number of a bad pair was not stored either"
    );
    g.stop().await;
}

#[tokio::test]
async fn generic_endpoint_takes_every_alias_and_auth_style() {
    let g = gateway("[policy]\nprenotify = false\n").await;
    let url = format!("{}/v1/sms", g.base);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{KEY}"));
    // Each number alias and text alias, over GET, form and JSON, with each auth style.
    let numbers = [
        "phone",
        "to",
        "To",
        "mobile",
        "mobileNumber",
        "msisdn",
        "receiver",
    ];
    let texts = ["sms", "text", "message", "Body", "msg"];
    for (i, (n, t)) in numbers.iter().zip(texts.iter().cycle()).enumerate() {
        let number = format!("+9198765432{:02}", i);
        let text = format!("Your code is 4{i}1234");
        let req = match i % 3 {
            0 => g
                .http
                .get(&url)
                .query(&[(*n, number.as_str()), (*t, text.as_str())]),
            1 => g
                .http
                .post(&url)
                .form(&[(*n, number.as_str()), (*t, text.as_str())]),
            _ => g.http.post(&url).json(&json!({ *n: number, *t: text })),
        };
        let req = match i % 4 {
            0 => req.bearer_auth(KEY),
            1 => req.header("X-API-Key", KEY),
            2 => req.header("Authorization", format!("Basic {basic}")),
            _ => req.header("access-token", KEY),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{n}/{t}: {body}");
        assert!(
            privacyidea_ok(status, &body, "OK") || privacyidea_ok(status, &body, "queued"),
            "{body}"
        );
        assert!(
            linotp_ok(&body, "OK") || linotp_ok(&body, "{\"status\":\"queued\""),
            "{body}"
        );
    }
    // SMSEagle-style JSON array of numbers with a key in the body (Keycloak plugins' style).
    let r = g.http.post(&url).json(&json!({"to": ["+919876543290", "+919876543291"], "text": "Your OTP: 246810", "api_key": KEY})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    assert_eq!(v["ids"].as_array().unwrap().len(), 2);
    // Authentik: Body is the token, Message the text; the code rides WhatsApp.
    let r = g.http.post(&url).basic_auth(CLIENT, Some(KEY)).json(&json!({"From": "x", "To": "+919876543299", "Body": "123789", "Message": "Use this code to authenticate in authentik: 123789"})).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let m = g
        .wait_until(v["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    assert_eq!(m["channel"], "whatsapp");
    g.stop().await;
}

#[tokio::test]
async fn generic_failures_never_look_like_success() {
    let g = gateway("").await;
    let url = format!("{}/v1/sms", g.base);
    let get = |query: &[(&str, &str)]| g.http.get(&url).query(query);
    let cases = [
        get(&[("phone", "+919876543210"), ("text", "Code 1234")]),
        get(&[("text", "Code 1234")]).bearer_auth(KEY),
        get(&[("phone", "+919876543210")]).bearer_auth(KEY),
        get(&[("phone", "not-a-number"), ("text", "Code 1234")]).bearer_auth(KEY),
        g.http
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body("{oops"),
    ];
    for req in cases {
        let (status, body) = common::fetch(req).await;
        assert!(status >= 400, "{status} {body}");
        assert!(
            !privacyidea_ok(status, &body, "OK")
                && !body.contains("queued")
                && !linotp_ok(&body, "OK"),
            "{body}"
        );
    }
    assert_eq!(
        g.running
            .as_ref()
            .unwrap()
            .store
            .queue_depth()
            .await
            .unwrap(),
        0
    );
    g.stop().await;
}

#[tokio::test]
async fn code_extraction_decides_the_channel() {
    let g = gateway("[policy]\nprenotify = false\n").await;
    for (text, channel, code) in [
        ("Your code is 123456", "whatsapp", Some("123456")),
        ("Code: 123 456", "whatsapp", Some("123456")),
        ("Welcome aboard, no code here", "sms", None),
        ("Code 111111 or 222222", "sms", None),
    ] {
        let (s, v) = g.post(json!({"to": "+919876543210", "text": text})).await;
        assert_eq!(s, 202, "{text}: {v}");
        let m = g
            .wait_until(v["id"].as_str().unwrap(), |m| m["status"] == "sent")
            .await;
        assert_eq!(m["channel"], channel, "{text}");
        if let Some(code) = code {
            assert!(
                matches!(&g.wa.sent().last().unwrap().content, Content::Code { code: c, .. } if c == code)
            );
        } else {
            assert!(
                matches!(&g.sms.sent().last().unwrap().content, Content::Text(t) if t == text),
                "the caller's text as is"
            );
        }
    }
    g.stop().await;
}

#[tokio::test]
async fn verify_approve_deny_reuse_and_lock() {
    let g = gateway("[policy]\nprenotify = false\n[verify]\nmax_attempts = 3\n").await;
    let (s, v) = g
        .post_path(
            "/v1/verifications",
            json!({"to": "+919876543210", "length": 8}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "pending");
    let id = v["id"].as_str().unwrap().to_string();
    g.wait_until(v["message_id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    let Content::Code { code, .. } = g.wa.sent().last().unwrap().content.clone() else {
        panic!()
    };
    assert_eq!(code.len(), 8);
    assert!(code.chars().all(|c| c.is_ascii_digit()));
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    let (_, r) = check(&g, &id, wrong).await;
    assert_eq!(
        (r["status"].as_str(), r["attempts_left"].as_u64()),
        (Some("denied"), Some(2))
    );
    let (_, r) = check(&g, &id, &code).await;
    assert_eq!(r["status"], "approved");
    let (_, r) = check(&g, &id, &code).await;
    assert_eq!(r["status"], "denied", "single use");
    assert_eq!(r["reason"], "already_used");
    // GET shows neither the code nor its hash.
    let resp = g
        .http
        .get(format!("{}/v1/verifications/{id}", g.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        resp.contains("\"approved\"") && !resp.contains(&code) && !resp.contains("hash"),
        "{resp}"
    );
    // Lock after max attempts; the right code no longer helps.
    let (_, v) = g
        .post_path("/v1/verifications", json!({"to": "+919876543211"}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    g.wait_until(v["message_id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    let Content::Code { code, .. } = g.wa.sent().last().unwrap().content.clone() else {
        panic!()
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        check(&g, &id, wrong).await;
    }
    let (_, r) = check(&g, &id, wrong).await;
    assert_eq!(r["status"], "max_attempts");
    let (_, r) = check(&g, &id, &code).await;
    assert_eq!(r["status"], "max_attempts");
    g.stop().await;
}

#[tokio::test]
async fn verify_new_one_cancels_the_old_and_expiry_and_resend() {
    let clock = common::manual_clock();
    let g = common::gateway_with_clock(
        "[policy]\nprenotify = false\n[verify]\nmax_sends = 2\n",
        clock.clone(),
    )
    .await;
    let (_, a) = g
        .post_path(
            "/v1/verifications",
            json!({"to": "+919876543210", "channel": "sms"}),
        )
        .await;
    g.wait_until(a["message_id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    assert_eq!(g.sms.codes().len(), 1, "channel sms honoured");
    assert!(g.wa.sent().is_empty());
    let Content::Code { code: old_code, .. } = g.sms.sent()[0].content.clone() else {
        panic!()
    };
    let (_, b) = g
        .post_path("/v1/verifications", json!({"to": "+919876543210"}))
        .await;
    let aid = a["id"].as_str().unwrap();
    let (_, r) = check(&g, aid, &old_code).await;
    assert_eq!(
        (r["status"].as_str(), r["reason"].as_str()),
        (Some("denied"), Some("canceled"))
    );
    // Resend: a new code; the old one stops working; the limit holds.
    let bid = b["id"].as_str().unwrap().to_string();
    g.wait_until(b["message_id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    let (s, _) = g
        .post_path(&format!("/v1/verifications/{bid}/resend"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, r) = g
        .post_path(&format!("/v1/verifications/{bid}/resend"), json!({}))
        .await;
    assert_eq!((s, r["error"]["code"].as_str()), (429, Some("max_sends")));
    // Expiry.
    clock.advance(std::time::Duration::from_secs(301));
    let (_, r) = check(&g, &bid, "123456").await;
    assert_eq!(r["status"], "expired");
    // Bad input.
    for (body, field) in [
        (json!({"to": "+919876543210", "length": 3}), "length"),
        (json!({"to": "+919876543210", "channel": "fax"}), "channel"),
        (json!({"to": "+919876543210", "locale": "en us"}), "locale"),
        (json!({"to": "x"}), "to"),
    ] {
        let (s, v) = g.post_path("/v1/verifications", body).await;
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some(field)), "{v}");
    }
    g.stop().await;
}

#[test]
fn verify_codes_are_uniform_and_hashes_keyed() {
    use otpgate::api::verify::{code_hash, new_code};
    use otpgate::secret::Secret;
    let mut counts = [0u32; 10];
    for _ in 0..2000 {
        for c in new_code(10).bytes() {
            counts[usize::from(c - b'0')] += 1;
        }
    }
    // 20,000 digits: each expected 2,000; a biased or constant generator fails by far.
    for (d, n) in counts.iter().enumerate() {
        assert!((1700..2300).contains(n), "digit {d}: {n}");
    }
    let k1 = Secret::new("k".repeat(32));
    let k2 = Secret::new("j".repeat(32));
    assert_ne!(
        code_hash(&k1, "ver_1", "123456"),
        code_hash(&k2, "ver_1", "123456")
    );
    assert_ne!(
        code_hash(&k1, "ver_1", "123456"),
        code_hash(&k1, "ver_2", "123456")
    );
    assert_eq!(
        code_hash(&k1, "ver_1", "123456"),
        code_hash(&k1, "ver_1", "123456")
    );
}

/// Rows stored for `number` (E.164), in any state.
async fn stored_for(g: &common::Gateway, number: &str) -> i64 {
    let n = number.to_owned();
    let store = &g.running.as_ref().unwrap().store;
    store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT count(*) FROM messages WHERE recipient = ?1",
                [n],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_multi_recipient_request_stores_all_or_nothing_at_each_door() {
    let g = gateway(&format!(
        "{PW_HASH_LINE}[policy]\nprenotify = false\n[limits]\nper_recipient = \"1/15m\"\n"
    ))
    .await;
    let (a, b) = ("+919876543210", "+919876543211");
    // B reaches its limit on its own.
    let (s, v) = g.post(json!({"to": b, "code": "1234"})).await;
    assert_eq!(s, 202, "{v}");
    let kannel = format!("{}/cgi-bin/sendsms", g.base);
    let (s, text) = common::fetch(g.http.get(format!(
        "{kannel}?username={CLIENT}&password=dummy&to=%2B919876543210+%2B919876543211&text=Code+5678"
    )))
    .await;
    assert_eq!(
        (s, text.as_str()),
        (503, "Temporal failure, try again later.")
    );
    assert_eq!(
        stored_for(&g, a).await,
        0,
        "Kannel: A was stored while B was refused"
    );
    // The generic door, JSON list: refused naming B and the limit, A not stored.
    let url = format!("{}/v1/sms", g.base);
    let req = g
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("accept", "application/json")
        .json(&json!({"to": [a, b], "text": "Code 5678"}));
    let (s, v) = common::fetch_json(req).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["field"], "to", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(b) && msg.contains("per_recipient"), "{msg}");
    assert!(!msg.contains("5678"), "a refusal echoed the code: {msg}");
    assert_eq!(
        stored_for(&g, a).await,
        0,
        "generic: A was stored while B was refused"
    );
    assert_eq!(stored_for(&g, b).await, 1);
    assert!(
        g.wa.sent()
            .iter()
            .chain(g.sms.sent().iter())
            .all(|d| d.to != a),
        "A was sent"
    );
    g.stop().await;
}

#[tokio::test]
async fn a_limit_counts_the_earlier_numbers_of_the_same_request() {
    let g = gateway("[policy]\nprenotify = false\n[limits]\nper_client = \"2/15m\"\n").await;
    let url = format!("{}/v1/sms", g.base);
    let three = ["+919876543220", "+919876543221", "+919876543222"];
    let req = g
        .http
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({"to": three, "text": "Code 5678"}));
    let (s, body) = common::fetch(req).await;
    assert_eq!(s, 429, "{body}");
    assert!(
        body.contains(three[2]) && body.contains("per_client"),
        "{body}"
    );
    for n in three {
        assert_eq!(stored_for(&g, n).await, 0, "{n}");
    }
    // The refused batch left the limit's count as it was: two still fit.
    let req = g
        .http
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({"to": &three[..2], "text": "Code 5678"}));
    let (s, body) = common::fetch(req).await;
    assert_eq!(s, 200, "{body}");
    g.stop().await;
}

#[tokio::test]
async fn the_same_number_twice_is_one_message() {
    let g = gateway(&format!("{PW_HASH_LINE}[policy]\nprenotify = false\n")).await;
    let kannel = format!("{}/cgi-bin/sendsms", g.base);
    // The same number, written two ways.
    let r = g
        .http
        .get(format!(
            "{kannel}?username={CLIENT}&password=dummy&to=%2B919876543230+9876543230&text=Code+5678"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ids = r.headers()["x-otpgate-id"].to_str().unwrap().to_owned();
    assert_eq!(ids.split(' ').count(), 1, "{ids}");
    assert_eq!(stored_for(&g, "+919876543230").await, 1);
    let url = format!("{}/v1/sms", g.base);
    let req = g.http.post(&url).bearer_auth(KEY).json(
        &json!({"to": ["+919876543231", "+91 98765 43231", "+919876543232"], "text": "Code 5678"}),
    );
    let (s, v) = common::fetch_json(req).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ids"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(stored_for(&g, "+919876543231").await, 1);
    g.stop().await;
}

#[tokio::test]
async fn kannel_refuses_a_bad_validity_and_too_many_receivers() {
    let g = gateway(&format!("{PW_HASH_LINE}[policy]\nprenotify = false\n")).await;
    let kannel = format!("{}/cgi-bin/sendsms", g.base);
    let get = |q: &str| {
        g.http.get(format!(
            "{kannel}?username={CLIENT}&password=dummy&text=Code+5678&{q}"
        ))
    };
    for validity in ["soon", "-5", "1.5", "0"] {
        let (s, text) = common::fetch(get(&format!("to=9876543240&validity={validity}"))).await;
        assert_eq!(s, 400, "{validity}: {text}");
        assert!(
            text.starts_with("Invalid validity, rejected (validity "),
            "{text}"
        );
    }
    let eleven: Vec<String> = (0..11).map(|i| format!("98765432{:02}", 50 + i)).collect();
    let (s, text) = common::fetch(get(&format!("to={}", eleven.join("+")))).await;
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("to: at most 10"), "{text}");
    let ten = eleven[..10].join("+");
    let (s, text) = common::fetch(get(&format!("to={ten}&validity=5"))).await;
    assert_eq!(s, 202, "{text}");
    let depth = g
        .running
        .as_ref()
        .unwrap()
        .store
        .queue_depth()
        .await
        .unwrap();
    assert!(depth <= 10, "{depth}");
    assert_eq!(stored_for(&g, "+919876543240").await, 0);
    g.stop().await;
}

#[tokio::test]
async fn doubled_plus_signs_and_nested_number_lists_are_refused() {
    let g = gateway(&format!("{PW_HASH_LINE}[policy]\nprenotify = false\n")).await;
    let url = format!("{}/v1/sms", g.base);
    for body in [
        json!({"to": [["+919876543260"]], "text": "Code 5678"}),
        json!({"to": [{"n": "+919876543260"}], "text": "Code 5678"}),
        json!({"to": ["+919876543260", ["+919876543261"]], "text": "Code 5678"}),
    ] {
        let req = g
            .http
            .post(&url)
            .bearer_auth(KEY)
            .header("accept", "application/json")
            .json(&body);
        let (s, v) = common::fetch_json(req).await;
        assert_eq!(
            (s, &v["error"]["field"]),
            (400, &json!("to")),
            "{body}: {v}"
        );
    }
    let req = g
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("accept", "application/json")
        .json(&json!({"to": "++919876543260", "text": "Code 5678"}));
    let (s, v) = common::fetch_json(req).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (400, &json!("invalid_phone_number")),
        "{v}"
    );
    let (s, v) = g
        .post(json!({"to": "++919876543260", "code": "5678"}))
        .await;
    assert_eq!((s, &v["error"]["field"]), (400, &json!("to")), "{v}");
    let kannel = format!(
        "{}/cgi-bin/sendsms?username={CLIENT}&password=dummy&text=Code+5678&to=%2B%2B919876543260",
        g.base
    );
    let (s, text) = common::fetch(g.http.get(kannel)).await;
    assert_eq!(s, 400, "{text}");
    assert!(
        text.starts_with("Invalid receiver number, rejected"),
        "{text}"
    );
    assert_eq!(stored_for(&g, "+919876543260").await, 0);
    assert_eq!(stored_for(&g, "+919876543261").await, 0);
    g.stop().await;
}
