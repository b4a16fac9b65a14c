//! The native API end to end: a real hyper server on loopback, a real SQLite file, the real
//! dispatcher; only the channels are scripted here (the channel suites test the real ones).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::time::Duration;

use common::{KEY, gateway, gateway_with_clock, wait_for};
use otpgate::channel::Outcome;
use serde_json::json;

#[tokio::test]
async fn accept_then_status_shows_channel_and_attempts() {
    let g = gateway("").await;
    let (s, v) = g
        .post(json!({"to": "0091 98765 43210", "code": "482913", "reference": "login-1"}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["to"], "+919876543210");
    assert_eq!(v["reference"], "login-1");
    let id = v["id"].as_str().unwrap().to_string();
    let m = g.wait_until(&id, |m| m["status"] == "sent").await;
    assert_eq!(m["channel"], "whatsapp");
    let attempts: Vec<&serde_json::Value> = m["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["purpose"] == "code")
        .collect();
    assert_eq!(attempts.len(), 1, "{m}");
    assert_eq!(attempts[0]["outcome"], "accepted");
    assert_eq!(attempts[0]["provider_id"], "whatsapp-1");
    assert!(
        !m.to_string().contains("482913"),
        "the status never shows the code: {m}"
    );
    let d = &g.wa.sent()[0];
    assert_eq!(d.to, "+919876543210");
    assert!(
        matches!(&d.content, otpgate::channel::Content::Code { code, sms_text } if code == "482913" && sms_text.contains("482913") && sms_text.contains("ACME"))
    );
    // The pre-notice went by SMS before the first WhatsApp code, once.
    let m = g
        .wait_until(&id, |m| {
            m["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["purpose"] == "prenotice" && a["outcome"] == "accepted")
        })
        .await;
    assert!(
        m["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["purpose"] == "prenotice")
    );
    let (_, v2) = g
        .post(json!({"to": "+919876543210", "code": "111222"}))
        .await;
    g.wait_until(v2["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    let notices = g
        .sms
        .sent()
        .iter()
        .filter(|d| matches!(d.content, otpgate::channel::Content::Text(_)))
        .count();
    assert_eq!(notices, 1, "pre-notice exactly once");
    g.stop().await;
}

#[tokio::test]
async fn wait_returns_the_first_outcome() {
    let g = gateway("").await;
    let r = g
        .http
        .post(format!("{}/v1/messages?wait=5s", g.base))
        .bearer_auth(KEY)
        .json(&json!({"to": "+919876543210", "code": "1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "sent");
    assert_eq!(v["channel"], "whatsapp");
    g.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_first_message_and_never_sends_twice() {
    let g = gateway("[policy]\nprenotify = false\n").await;
    let body = json!({"to": "+919876543210", "code": "5555", "idempotency_key": "req-1"});
    let (s1, v1) = g.post(body.clone()).await;
    let (s2, v2) = g.post(body).await;
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(v1["id"], v2["id"]);
    let (s3, v3) = g
        .post(json!({"to": "+919876543211", "code": "5555", "idempotency_key": "req-1"}))
        .await;
    assert_eq!(s3, 409);
    assert_eq!(v3["error"]["code"], "idempotency_key_conflict");
    g.wait_until(v1["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(g.wa.sent().len(), 1);
    g.stop().await;
}

#[tokio::test]
async fn every_bad_input_gets_a_specific_error_and_changes_nothing() {
    let g = gateway("[server]\nmax_body_bytes = 1024\n").await;
    let url = format!("{}/v1/messages", g.base);
    let raw = |body: &'static str, ct: &'static str| {
        g.http
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, u16, &str, Option<&str>)> = vec![
        (
            raw("{\"to\": ", "application/json").await.unwrap(),
            400,
            "invalid_json",
            None,
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":987123}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_field",
            Some("code"),
        ),
        (
            raw("{\"code\":\"1234\"}", "application/json")
                .await
                .unwrap(),
            400,
            "missing_field",
            Some("to"),
        ),
        (
            raw("{\"to\":\"+919876543210\"}", "application/json")
                .await
                .unwrap(),
            400,
            "missing_field",
            Some("code"),
        ),
        (
            raw("{\"to\":\"12\",\"code\":\"1234\"}", "application/json")
                .await
                .unwrap(),
            400,
            "invalid_phone_number",
            Some("to"),
        ),
        (
            raw(
                "{\"to\":\"98765abcde\",\"code\":\"1234\"}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_phone_number",
            Some("to"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234\",\"colour\":1}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "unknown_field",
            Some("colour"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234\",\"text\":\"x 1234\"}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_field",
            Some("code"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"12 34\"}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_code",
            Some("code"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234567890123456\"}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_code",
            Some("code"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234\",\"ttl_seconds\":5}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_ttl",
            Some("ttl_seconds"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234\",\"ttl_seconds\":-5}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_field",
            Some("ttl_seconds"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234\",\"locale\":\"en us\"}",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_field",
            Some("locale"),
        ),
        (
            raw(
                "{\"to\":\"+919876543210\",\"code\":\"1234\"} x",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_json",
            None,
        ),
        (
            raw("to=1", "application/x-www-form-urlencoded")
                .await
                .unwrap(),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            g.http
                .post(&url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(vec![b' '; 4096])
                .send()
                .await
                .unwrap(),
            413,
            "body_too_large",
            None,
        ),
        (
            g.http.put(&url).bearer_auth(KEY).send().await.unwrap(),
            405,
            "method_not_allowed",
            None,
        ),
        (
            g.http
                .get(format!("{}/v2/nothing", g.base))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
            None,
        ),
    ];
    for (i, (resp, status, code, field)) in cases.into_iter().enumerate() {
        assert_eq!(resp.status().as_u16(), status, "case {i}");
        let text = resp.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], code, "case {i}: {v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "case {i}: {v}");
        }
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        assert!(!text.contains("987123"), "an error echoed the code: {text}");
    }
    let running = g.running.as_ref().unwrap();
    assert_eq!(
        running.store.queue_depth().await.unwrap(),
        0,
        "bad input stored nothing"
    );
    assert!(g.wa.sent().is_empty() && g.sms.sent().is_empty());
    g.stop().await;
}

#[tokio::test]
async fn authentication_styles_and_refusals() {
    use base64::Engine;
    let g = gateway("allow_ips = [\"127.0.0.0/8\"]\n[[clients]]\nname = \"far\"\nkey_sha256 = \"3e7b3dfcdb3e5cd4b1e84f6b0be8b2ad8b43a2d0a47cba2ecbc6e5ad6e6f1c4a\"\nallow_ips = [\"10.0.0.0/8\"]\n").await;
    let url = format!("{}/v1/messages", g.base);
    let body = json!({"to": "+919876543210", "code": "1234"});
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("idp:{KEY}"));
    for (hname, hval, want) in [
        ("authorization", format!("Bearer {KEY}"), 202),
        ("x-api-key", KEY.to_string(), 202),
        ("authorization", format!("Basic {basic}"), 202),
        ("authorization", "Bearer wrong".to_string(), 401),
        ("x-api-key", String::new(), 401),
    ] {
        let r = g
            .http
            .post(&url)
            .header(hname, hval)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{hname}");
        if want == 401 {
            assert!(r.headers().get("www-authenticate").is_some());
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["message"], "missing or invalid credentials");
        }
    }
    let r = g.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Another client cannot read this client's message.
    let (_, v) = g.post(body.clone()).await;
    let id = v["id"].as_str().unwrap();
    let r = g
        .http
        .get(format!("{}/v1/messages/{id}", g.base))
        .bearer_auth("other-client-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = g
        .http
        .get(format!("{}/v1/messages/msg_doesnotexist", g.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    g.stop().await;
}

#[tokio::test]
async fn allow_list_refuses_a_valid_key_from_elsewhere() {
    let g = gateway("allow_ips = [\"10.0.0.0/8\"]\n").await;
    let (s, v) = g.post(json!({"to": "+919876543210", "code": "1234"})).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden");
    g.stop().await;
}

#[tokio::test]
async fn not_on_whatsapp_falls_back_and_is_remembered() {
    let g = gateway("[policy]\nprenotify = false\n").await;
    g.wa.push(Outcome::FallBack {
        code: Some("131026".into()),
        reason: "not on WhatsApp".into(),
        not_on_channel: true,
    });
    let (_, v) = g.post(json!({"to": "+919876543210", "code": "4321"})).await;
    let m = g
        .wait_until(v["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    assert_eq!(m["channel"], "sms");
    let outcomes: Vec<(&str, &str)> = m["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["channel"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![("whatsapp", "fallback"), ("sms", "accepted")]
    );
    assert_eq!(m["attempts"][0]["error_code"], "131026");
    // Next time: straight to SMS, and the history says why.
    let (_, v) = g.post(json!({"to": "+919876543210", "code": "9876"})).await;
    let m = g
        .wait_until(v["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    assert_eq!(m["channel"], "sms");
    assert_eq!(m["attempts"][0]["outcome"], "skipped");
    assert!(
        m["attempts"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not on whatsapp")
    );
    assert_eq!(g.wa.sent().len(), 1);
    g.stop().await;
}

#[tokio::test]
async fn whatsapp_outage_falls_back_and_channel_down_everywhere_waits() {
    let g = gateway("[policy]\nprenotify = false\n").await;
    g.wa.set_default(Outcome::Retry {
        after: Duration::from_secs(1),
        code: Some("131000".into()),
        reason: "5xx".into(),
    });
    let (_, v) = g.post(json!({"to": "+919876543210", "code": "1111"})).await;
    let m = g
        .wait_until(v["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    assert_eq!(m["channel"], "sms");
    // Both down: the message waits, then goes as soon as SMS is back.
    g.wa.usable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    g.sms
        .usable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, v) = g.post(json!({"to": "+919876543212", "code": "2222"})).await;
    let id = v["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.get(&id).await.1["status"], "queued");
    g.sms
        .usable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let m = g.wait_until(&id, |m| m["status"] == "sent").await;
    assert_eq!(m["channel"], "sms");
    g.stop().await;
}

#[tokio::test]
async fn expired_messages_are_never_attempted() {
    let clock = common::manual_clock();
    let g = gateway_with_clock("[policy]\nprenotify = false\n", clock.clone()).await;
    g.wa.usable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    g.sms
        .usable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, v) = g
        .post(json!({"to": "+919876543210", "code": "3333", "ttl_seconds": 30}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    // Once tried and put back with a reason, the expiry must still say it expired.
    g.wait_until(&id, |m| m["reason"].is_string()).await;
    clock.advance(Duration::from_secs(31));
    g.sms
        .usable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    g.wa.usable.store(true, std::sync::atomic::Ordering::SeqCst);
    g.running.as_ref().unwrap().dispatcher.wake();
    let m = g.wait_until(&id, |m| m["status"] == "expired").await;
    let reason = m["reason"].as_str().unwrap();
    assert!(reason.starts_with("expired"), "{reason}");
    assert!(
        reason.contains("down"),
        "keeps what was last tried: {reason}"
    );
    assert!(
        g.wa.sent().is_empty() && g.sms.sent().is_empty(),
        "nothing delivered after expiry"
    );
    g.stop().await;
}

#[tokio::test]
async fn per_recipient_limit_answers_429_with_retry_after() {
    let g = gateway("[limits]\nper_recipient = \"2/15m\"\n").await;
    for _ in 0..2 {
        assert_eq!(
            g.post(json!({"to": "+919876543210", "code": "1234"}))
                .await
                .0,
            202
        );
    }
    let r = g
        .http
        .post(format!("{}/v1/messages", g.base))
        .bearer_auth(KEY)
        .json(&json!({"to": "+919876543210", "code": "1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra > 800 && ra <= 900, "{ra}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(
        g.post(json!({"to": "+919876543299", "code": "1234"}))
            .await
            .0,
        202,
        "other numbers unaffected"
    );
    g.stop().await;
}

#[tokio::test]
async fn country_rules_refuse_at_the_front_door() {
    let g = gateway("[policy]\nsms_countries = [\"IN\"]\nwhatsapp_countries = [\"IN\"]\n").await;
    let (s, v) = g
        .post(json!({"to": "+4915123456789", "code": "1234"}))
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "country_not_allowed");
    assert_eq!(v["error"]["field"], "to");
    g.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let g = gateway("").await;
    let r = g
        .http
        .get(format!("{}/healthz", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = g
        .http
        .get(format!("{}/readyz", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["store"], "ok");
    g.wa.usable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    g.sms
        .usable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let r = g
        .http
        .get(format!("{}/readyz", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    g.wa.usable.store(true, std::sync::atomic::Ordering::SeqCst);
    let (_, v) = g
        .post(json!({"to": "+919876543210", "code": "777888"}))
        .await;
    g.wait_until(v["id"].as_str().unwrap(), |m| m["status"] == "sent")
        .await;
    let (_, text) = common::fetch(g.http.get(format!("{}/metrics", g.base))).await;
    assert!(text.contains("otpgate_messages_accepted_total 1"), "{text}");
    assert!(
        text.contains("otpgate_messages_sent_total{channel=\"whatsapp\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("777888") && !text.contains("9876543210"),
        "no codes or numbers in metrics"
    );
    g.stop().await;
}

#[tokio::test]
async fn slow_clients_cannot_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = gateway(
        "[server]\nheader_timeout = \"300ms\"\nidle_timeout = \"300ms\"\nmax_connections = 4\n",
    )
    .await;
    let addr = g.running.as_ref().unwrap().addrs[0];
    // A half-sent request head is cut off.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
        .await
        .expect("connection closed by the server");
    assert!(n.is_ok());
    // Idle keep-alive connections are closed too, freeing their slots for others.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        g.http.get(format!("{}/healthz", g.base)).send(),
    )
    .await;
    assert_eq!(
        r.expect("served after idle connections were dropped")
            .unwrap()
            .status(),
        200
    );
    drop(idle);
    g.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_write_is_retried_with_backoff_not_hammered() {
    let g = gateway("").await;
    // Claims (UPDATEs) fail as on a full disk, while inserts and reads still work.
    let db = rusqlite::Connection::open(g.dir.path().join("otpgate.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_claims BEFORE UPDATE ON messages
         BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
    )
    .unwrap();
    let (s, v) = g
        .post(json!({"to": "+919876543210", "code": "482913"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let running = g.running.as_ref().unwrap();
    let loops = || running.liveness()[0].1;
    let before = loops();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spun = loops() - before;
    // Without the backoff the due message makes the loop retry every millisecond.
    assert!(spun <= 30, "the dispatcher looped {spun} times in 1.5 s");
    assert_eq!(g.get(&id).await.1["status"], "queued");
    db.execute_batch("DROP TRIGGER no_claims").unwrap();
    let m = g.wait_until(&id, |m| m["status"] == "sent").await;
    assert_eq!(m["channel"], "whatsapp");
    g.stop().await;
}

/// After the head it was sent, a byte of the body every 200 ms, never finishing; returns
/// what the server answered before it closed the connection.
async fn dribble(mut s: tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded: well past the body timeout, well short of the request timeout (30 s).
    for _ in 0..100 {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(b"{").await.is_err() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_bodies_are_cut_off_and_health_answers_while_they_hold_every_slot() {
    let g = gateway("[server]\nmax_connections = 4\n").await;
    let addr = g.running.as_ref().unwrap().addrs[0];
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    );
    let mut slow = Vec::new();
    for _ in 0..4 {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(tokio::spawn(dribble(s)));
    }

    // Every slot is taken once the server has read the four heads; the reserve answers
    // the health probe, and nothing else.
    // Each probe on a connection of its own, closed after it (a pooled one would keep a
    // slot); a request that stores nothing if a normal slot serves it.
    let fresh = || common::http_client();
    wait_for("the slow clients to hold every slot", async || {
        let r = fresh()
            .post(format!("{}/v1/messages", g.base))
            .bearer_auth(KEY);
        let r = r.header("connection", "close").json(&json!({}));
        let (s, v) = common::fetch_json(r).await;
        if s == 503 && v["error"]["code"] == "busy" {
            Ok(())
        } else {
            Err(format!("{s} {v}"))
        }
    })
    .await;
    let (s, body) = common::fetch(fresh().get(format!("{}/healthz", g.base))).await;
    assert_eq!(s, 200, "{body}");
    // Each slow client is told why and cut off, long before the request timeout.
    for t in slow {
        let answer = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    // The slots are free again.
    let (s, v) = g.post(json!({"to": "+919876543210", "code": "1234"})).await;
    assert_eq!(s, 202, "{v}");
    g.stop().await;
}
