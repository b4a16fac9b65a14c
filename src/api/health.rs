//! `/healthz` (the process answers), `/readyz` (the store takes writes and at least one channel
//! can carry a message) and `/metrics` (Prometheus text).

use http::StatusCode;
use serde_json::json;

use super::{App, Resp, json_response, text_response};
use crate::channel::ChannelKind;

/// `GET /healthz`
pub fn healthz() -> Resp {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when ready, 503 with the reasons otherwise.
pub async fn readyz(app: &App) -> Resp {
    let store_ok = app.store.ping().await;
    let depth = app.store.queue_depth().await.ok();
    // A pair on PostgreSQL: this node and every node's last heartbeat (its own clock).
    let cluster = app.store.nodes().await.ok().flatten().map(|v| {
        json!({
            "node": v.node,
            "backend": app.store.backend_name(),
            "peers": v.peers.iter().map(|p| json!({
                "node": p.node,
                "role": p.role,
                "has_modem": p.has_modem,
                "last_seen": p.last_seen,
            })).collect::<Vec<_>>(),
        })
    });
    let health = app.dispatcher.health();
    let any_usable = health.iter().any(|(_, h)| h.usable);
    let channels: serde_json::Map<String, serde_json::Value> = health
        .iter()
        .map(|(k, h)| (k.as_str().to_owned(), json!(h)))
        .collect();
    let mut problems = Vec::new();
    if let Err(e) = &store_ok {
        problems.push(format!("store: {e}"));
    }
    if health.is_empty() {
        problems.push("no channel is configured".to_string());
    } else if !any_usable {
        problems.push("no channel can carry messages".to_string());
    }
    if let Some(p) = app.metrics.ldap_problem() {
        problems.push(format!("ldap: {p}"));
    }
    let ready = problems.is_empty();
    let cfg = app.live.get();
    // Not a readiness problem (codes still go out), but what "sent" means: without the
    // webhook a WhatsApp code nobody received is noticed only when the user asks again.
    let receipts = cfg.whatsapp_delivery_note().map(|note| {
        json!({
            "confirmed": cfg.receipts_configured(),
            "detail": note,
        })
    });
    let body = json!({
        "whatsapp_delivery": receipts,
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store_ok.is_ok() { "ok" } else { "error" },
        "queue_depth": depth,
        "cluster": cluster,
        "channels": channels,
        "problems": problems,
        // Issue 17: number blocks and countries the conversion breaker keeps off SMS.
        "sms_paused": crate::abuse::paused(app),
    });
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// `GET /metrics`: refreshes the gauges that are read on demand, then renders.
pub async fn metrics(app: &App) -> Resp {
    let m = &app.metrics;
    if let Ok(d) = app.store.queue_depth().await {
        m.queue_depth.set(i64::try_from(d).unwrap_or(i64::MAX));
    }
    for (kind, h) in app.dispatcher.health() {
        m.channel_up
            .get_or_create(&crate::metrics::channel(kind))
            .set(i64::from(h.usable));
        if kind == ChannelKind::WhatsApp {
            m.whatsapp_circuit_open.set(i64::from(!h.usable));
        }
        for p in &h.parts {
            let label = crate::metrics::ModemLabel {
                modem: p.name.clone(),
            };
            m.modem_ready
                .get_or_create(&label)
                .set(i64::from(p.state == "ready"));
            if let Some(dbm) = p.signal_dbm {
                m.modem_signal_dbm.get_or_create(&label).set(i64::from(dbm));
            }
        }
    }
    // Issue 17: the conversion breaker's state, refreshed by scrapes as well as by accepts.
    crate::abuse::observe(app, m);
    let mut r = text_response(StatusCode::OK, m.render());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}
