//! Status webhooks as Meta sends them: after a message was answered with 200 and a wamid, its
//! fate plays out as signed POSTs to the gateway's webhook URL. A phone on WhatsApp gets
//! `sent`, `delivered` (sometimes skipped) and `read`, not always in that order; a number not
//! on WhatsApp gets a `failed` status with 131026 a moment later; an offline phone only ever
//! gets `sent`. A POST the gateway does not answer with 2xx is retried with a doubling back-off.
//!
//! The plan (which statuses, when) and the bodies are pure and seeded, so tests can pin them;
//! the delivery is one task per status on the simulator's runtime.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Shared, lock};
use crate::channel::whatsapp::webhook::sign;
use crate::secret::Secret;

/// Where the simulator posts status webhooks, and the app secret it signs them with.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    /// The gateway's webhook URL, e.g. `http://127.0.0.1:8025/webhooks/whatsapp`.
    pub url: String,
    /// The app secret (`X-Hub-Signature-256` is its HMAC-SHA256 of the raw body).
    pub app_secret: String,
}

/// When statuses go out after the 200, and how a refused POST is retried.
#[derive(Clone, Debug)]
pub struct ReceiptTiming {
    /// `sent`, after the answer.
    pub sent: Duration,
    /// `delivered`.
    pub delivered: Duration,
    /// `read`.
    pub read: Duration,
    /// `failed` (131026 for a number not on WhatsApp).
    pub failed: Duration,
    /// Up to this much is added to every delay, drawn from the seed.
    pub jitter: Duration,
    /// Percent of delivered messages whose `delivered` never comes (only `read`).
    pub skip_delivered_percent: u8,
    /// Percent of delivered messages whose statuses arrive out of order (`read` first).
    pub reorder_percent: u8,
    /// Seed of the draws above, so a test run is repeatable.
    pub seed: u64,
    /// The first retry of a POST answered with non-2xx (or not answered) waits this long;
    /// each further one twice as long.
    pub retry_first: Duration,
    /// The longest wait between two tries.
    pub retry_max: Duration,
    /// Tries per status, the first included (Meta keeps trying for days; a test cannot).
    pub max_attempts: u32,
}

impl Default for ReceiptTiming {
    fn default() -> Self {
        ReceiptTiming {
            sent: Duration::from_millis(100),
            delivered: Duration::from_millis(400),
            read: Duration::from_millis(1_500),
            failed: Duration::from_secs(1),
            jitter: Duration::from_millis(200),
            skip_delivered_percent: 10,
            reorder_percent: 10,
            seed: 0x5EED,
            retry_first: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
            max_attempts: 8,
        }
    }
}

impl ReceiptTiming {
    /// Fixed delays and no randomness: `sent` at 50 ms, `delivered` at 100 ms, `read` at
    /// 150 ms, `failed` at `failed`; quick retries. For tests that assert on order and counts.
    pub fn exact(failed: Duration) -> ReceiptTiming {
        ReceiptTiming {
            sent: Duration::from_millis(50),
            delivered: Duration::from_millis(100),
            read: Duration::from_millis(150),
            failed,
            jitter: Duration::ZERO,
            skip_delivered_percent: 0,
            reorder_percent: 0,
            seed: 1,
            retry_first: Duration::from_millis(50),
            retry_max: Duration::from_millis(400),
            max_attempts: 5,
        }
    }
}

/// What happens to an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The phone has WhatsApp and is online: sent, delivered, read.
    Delivered,
    /// Only `sent`, ever (the phone is off, or past the template's TTL without coming back).
    Offline,
    /// A `failed` status with this code (131026: not on WhatsApp).
    Failed(i64),
}

/// One status of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Meta handed it to WhatsApp.
    Sent,
    /// The phone has it.
    Delivered,
    /// The user opened it.
    Read,
    /// It will never arrive: the error code.
    Failed(i64),
}

impl Status {
    /// The `status` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Failed(_) => "failed",
        }
    }
}

/// A small seeded generator (splitmix64): the draws only need to be repeatable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Starts from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True in `percent` out of a hundred draws.
    fn chance(&mut self, percent: u8) -> bool {
        self.next_u64() % 100 < u64::from(percent)
    }

    /// A duration in `0..=max`.
    fn upto(&mut self, max: Duration) -> Duration {
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.next_u64() % (ms + 1))
    }
}

/// The statuses a message gets and when (after the 200), in the order they go out.
pub fn plan(fate: Fate, t: &ReceiptTiming, rng: &mut Rng) -> Vec<(Duration, Status)> {
    let mut out = match fate {
        Fate::Failed(code) => vec![(t.failed, Status::Failed(code))],
        Fate::Offline => vec![(t.sent, Status::Sent)],
        Fate::Delivered => {
            let mut v = vec![(t.sent, Status::Sent)];
            if !rng.chance(t.skip_delivered_percent) {
                v.push((t.delivered, Status::Delivered));
            }
            v.push((t.read, Status::Read));
            if rng.chance(t.reorder_percent) {
                // Meta does not promise order: the last status overtakes the one before.
                let n = v.len();
                let (a, b) = (v[n - 2].0, v[n - 1].0);
                v[n - 2].0 = b;
                v[n - 1].0 = a;
            }
            v
        }
    };
    for (d, _) in &mut out {
        *d += rng.upto(t.jitter);
    }
    out.sort_by_key(|(d, _)| *d);
    out
}

/// Who sent the message, as the `metadata` and `entry.id` of a webhook carry it.
#[derive(Clone, Debug)]
pub struct Account {
    /// The WhatsApp Business Account id.
    pub waba_id: String,
    /// The business phone number id.
    pub phone_number_id: String,
    /// The business number as displayed.
    pub display_phone_number: String,
}

/// Meta's error object in a `failed` status (v16.0+ shape: code, title, message, details).
fn status_error(code: i64) -> Value {
    let (title, details) = match code {
        131026 => ("Message undeliverable", "Message Undeliverable."),
        131049 => (
            "This message was not delivered to maintain healthy ecosystem engagement.",
            "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
        ),
        131047 => (
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        ),
        _ => ("Message failed to send", "Message failed to send."),
    };
    json!({
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
    })
}

/// The body of one status webhook, as Meta posts it.
pub fn status_body(
    acct: &Account,
    wamid: &str,
    recipient: &str,
    status: Status,
    unix_seconds: u64,
) -> String {
    let mut st = json!({
        "id": wamid,
        "status": status.as_str(),
        "timestamp": unix_seconds.to_string(),
        "recipient_id": recipient,
    });
    match status {
        Status::Failed(code) => st["errors"] = json!([status_error(code)]),
        Status::Sent | Status::Delivered => {
            st["conversation"] = json!({
                "id": format!("CONV{}", &wamid[wamid.len().saturating_sub(12)..]),
                "expiration_timestamp": (unix_seconds + 86_400).to_string(),
                "origin": {"type": "authentication"}
            });
            st["pricing"] = json!({
                "billable": true, "pricing_model": "PMP",
                "category": "authentication", "type": "regular"
            });
        }
        Status::Read => {}
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": acct.waba_id,
            "changes": [{
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {
                        "display_phone_number": acct.display_phone_number,
                        "phone_number_id": acct.phone_number_id
                    },
                    "statuses": [st]
                },
                "field": "messages"
            }]
        }]
    })
    .to_string()
}

/// One POST of a status webhook, as the simulator saw its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookPost {
    /// The message's wamid.
    pub wamid: String,
    /// The recipient (digits).
    pub recipient: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// The error code of a `failed` status.
    pub error_code: Option<i64>,
    /// 1 for the first try.
    pub attempt: u32,
    /// The gateway's HTTP status; `None` when no answer came (refused, reset, timeout).
    pub answer: Option<u16>,
    /// When this try's POST started, for latency benchmarks.
    pub sent_at: Instant,
}

/// The wait before try `attempt + 1` after try `attempt` failed.
pub fn backoff(t: &ReceiptTiming, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    t.retry_first.saturating_mul(factor).min(t.retry_max)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Schedules the statuses of one accepted message (nothing when no target is set).
pub(super) fn schedule(s: &Arc<Shared>, wamid: &str, to: &str, fate: Fate) {
    let (timing, plan) = {
        let timing = lock(&s.timing).clone();
        let mut rng = lock(&s.rng);
        let plan = plan(fate, &timing, &mut rng);
        (timing, plan)
    };
    let t0 = Instant::now();
    for (after, status) in plan {
        let s = Arc::clone(s);
        let (wamid, to, timing) = (wamid.to_string(), to.to_string(), timing.clone());
        let mut stop = s.stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = deliver(&s, &timing, t0 + after, &wamid, &to, status) => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Posts one status at `due`, retrying while the gateway refuses it.
async fn deliver(
    s: &Shared,
    t: &ReceiptTiming,
    due: Instant,
    wamid: &str,
    to: &str,
    status: Status,
) {
    tokio::time::sleep_until(due.into()).await;
    // The target is read when the status is due, so a test or the demo may set it late.
    let Some(target) = lock(&s.webhook).clone() else {
        return;
    };
    let body = status_body(&s.account, wamid, to, status, unix_now());
    let signature = sign(body.as_bytes(), &Secret::new(target.app_secret.as_str()));
    for attempt in 1..=t.max_attempts.max(1) {
        let sent_at = Instant::now();
        let answer = s
            .poster
            .post(&target.url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &signature)
            .timeout(Duration::from_secs(5))
            .body(body.clone())
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        lock(&s.posts).push(WebhookPost {
            wamid: wamid.to_string(),
            recipient: to.to_string(),
            status: status.as_str().to_string(),
            error_code: match status {
                Status::Failed(c) => Some(c),
                _ => None,
            },
            attempt,
            answer,
            sent_at,
        });
        if answer.is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        tokio::time::sleep(backoff(t, attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_by_fate() {
        let t = ReceiptTiming::exact(Duration::from_millis(700));
        let mut rng = Rng::new(1);
        let st = |p: Vec<(Duration, Status)>| p.into_iter().map(|(_, s)| s).collect::<Vec<_>>();
        assert_eq!(
            st(plan(Fate::Delivered, &t, &mut rng)),
            [Status::Sent, Status::Delivered, Status::Read]
        );
        assert_eq!(st(plan(Fate::Offline, &t, &mut rng)), [Status::Sent]);
        assert_eq!(
            plan(Fate::Failed(131026), &t, &mut rng),
            [(Duration::from_millis(700), Status::Failed(131026))]
        );
    }

    #[test]
    fn skipped_and_reordered_statuses_follow_the_seed() {
        let t = ReceiptTiming {
            skip_delivered_percent: 50,
            reorder_percent: 50,
            ..ReceiptTiming::exact(Duration::ZERO)
        };
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| plan(Fate::Delivered, &t, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same plans");
        assert_ne!(a, run(8));
        let skipped = a.iter().filter(|p| p.len() == 2).count();
        let read_first = a
            .iter()
            .filter(|p| p.first().map(|x| x.1) != Some(Status::Sent))
            .count()
            + a.iter()
                .filter(|p| p.len() == 3 && p[1].1 == Status::Read)
                .count();
        assert!((50..150).contains(&skipped), "{skipped}");
        assert!((50..150).contains(&read_first), "{read_first}");
        // Every plan still ends up with the phone having it (`read` is never skipped).
        assert!(a.iter().all(|p| p.iter().any(|x| x.1 == Status::Read)));
    }

    #[test]
    fn failed_body_has_metas_shape() {
        let acct = Account {
            waba_id: "102290129340398".into(),
            phone_number_id: "106540352242922".into(),
            display_phone_number: "15550783881".into(),
        };
        let body = status_body(
            &acct,
            "wamid.SIM1",
            "919876500042",
            Status::Failed(131026),
            1_700_000_000,
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["object"], "whatsapp_business_account");
        let change = &v["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        let st = &change["value"]["statuses"][0];
        assert_eq!(st["id"], "wamid.SIM1");
        assert_eq!(st["status"], "failed");
        assert_eq!(st["timestamp"], "1700000000");
        assert_eq!(st["recipient_id"], "919876500042");
        let e = &st["errors"][0];
        assert_eq!(e["code"], 131026);
        assert_eq!(e["title"], "Message undeliverable");
        assert_eq!(e["error_data"]["details"], "Message Undeliverable.");
        assert_eq!(
            change["value"]["metadata"]["phone_number_id"],
            "106540352242922"
        );
        let sent: Value =
            serde_json::from_str(&status_body(&acct, "wamid.SIM2", "1", Status::Sent, 5)).unwrap();
        let st = &sent["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(st["pricing"]["category"], "authentication");
        assert!(st.get("errors").is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t = ReceiptTiming::exact(Duration::ZERO);
        let ms = |a| backoff(&t, a).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5)],
            [50, 100, 200, 400, 400]
        );
    }
}
