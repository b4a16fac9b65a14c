//! The simulator against real clients and a real webhook receiver on loopback.
use super::*;

#[test]
fn builtin_rule_ranges() {
    assert!(offline_phone("919876543900"));
    assert!(!offline_phone("919876543899"));
    assert!(not_on_whatsapp("919876543000"));
    assert!(not_on_whatsapp("919876543099"));
    assert!(!not_on_whatsapp("919876543100"));
    assert!(!not_on_whatsapp("919876543210"));
    assert!(!not_on_whatsapp("12"));
}

fn shared() -> Shared {
    Shared::new(SimOptions {
        phone_number_id: "1".into(),
        token: "t".into(),
        templates: vec![("otp".into(), 1)],
        ..SimOptions::default()
    })
    .unwrap()
}

fn req(name: &str, body_params: usize, code: &str) -> Value {
    let p: Vec<Value> = (0..body_params)
        .map(|_| json!({"type": "text", "text": code}))
        .collect();
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "919876543210",
        "type": "template", "template": {"name": name, "language": {"code": "en_US"}, "components": [
            {"type": "body", "parameters": p},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": code}]}]}})
}

#[test]
fn validation_like_meta() {
    let s = shared();
    assert_eq!(
        validate(&s, &req("otp", 1, "123456")),
        Ok("919876543210".into())
    );
    assert_eq!(validate(&s, &req("nope", 1, "123456")), Err((404, 132001)));
    assert_eq!(validate(&s, &req("otp", 2, "123456")), Err((400, 132000)));
    assert_eq!(
        validate(&s, &req("otp", 1, "1234567890123456")),
        Err((400, 131009))
    );
    let mut v = req("otp", 1, "1");
    v["to"] = json!("+91");
    assert_eq!(validate(&s, &v), Err((400, 100)));
    let mut v = req("otp", 1, "1");
    v["messaging_product"] = json!("sms");
    assert_eq!(validate(&s, &v), Err((400, 100)));
}

#[tokio::test]
async fn an_outage_cuts_pooled_connections_and_records_no_delivery() {
    let pki = TestPki::new().unwrap();
    let sim = CloudApiSim::start(SimOptions {
        pki: Some(&pki),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(pki.client_config().unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("{}/106540352242922/messages", sim.base_url());
    let send = async |code: &str| {
        client
            .post(&url)
            .bearer_auth("sim-token")
            .json(&req("otp_auth", 1, code))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(send("111111").await.unwrap(), 200);
    // Refusing new connections alone would leave this pooled one working.
    sim.handle().outage(true);
    assert!(send("222222").await.is_err());
    sim.handle().outage(false);
    assert_eq!(send("333333").await.unwrap(), 200);
    let got: Vec<Vec<String>> = sim
        .handle()
        .delivered()
        .into_iter()
        .map(|d| d.params)
        .collect();
    assert_eq!(got, [["111111"], ["333333"]]);
}

#[test]
fn script_precedence() {
    let s = shared();
    s.scripts.lock().unwrap().default = Some(Script::html_502());
    s.scripts
        .lock()
        .unwrap()
        .per_recipient
        .insert("919876543210".into(), Script::Hang);
    s.scripts.lock().unwrap().queue.push_back(Script::Drop);
    assert_eq!(pick_script(&s, "919876543210"), Script::Drop);
    assert_eq!(pick_script(&s, "919876543210"), Script::Hang);
    assert_eq!(pick_script(&s, "919876543050"), Script::undeliverable());
    assert_eq!(pick_script(&s, "919876543950"), Script::Offline);
    assert_eq!(pick_script(&s, "919876543111"), Script::html_502());
}

#[test]
fn the_synchronous_option_answers_131026_at_once() {
    let s = Shared::new(SimOptions {
        sync_not_on_whatsapp: true,
        ..SimOptions::default()
    })
    .unwrap();
    assert_eq!(pick_script(&s, "919876543050"), Script::error(400, 131026));
}

#[test]
fn a_missing_translation_is_132001() {
    let s = shared();
    *s.catalog.lock().unwrap() = vec![SimTemplate::good("otp", "en_US")];
    assert_eq!(
        validate(&s, &req("otp", 1, "123456")),
        Ok("919876543210".into())
    );
    let mut v = req("otp", 1, "123456");
    v["template"]["language"]["code"] = json!("hi");
    assert_eq!(validate(&s, &v), Err((404, 132001)));
}

// ---- status webhooks against a real receiver ----

use crate::channel::whatsapp::webhook::{parse_events, verify_signature};
use crate::channel::{Receipt, ReceiptStatus};
use crate::secret::Secret;

const APP_SECRET: &str = "sim-app-secret";

/// What the receiver saw of one POST.
#[derive(Clone, Debug)]
struct Seen {
    answered: u16,
    receipts: Vec<Receipt>,
    body: Value,
}

/// A gateway's webhook endpoint on loopback (plain hyper): checks the signature with the
/// daemon's own verifier, answers 500 to the first `fail_first` signed POSTs, then 200.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receiver(fail_first: usize) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/whatsapp",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let failures = Arc::new(AtomicU64::new(fail_first as u64));
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (log, failures) = (Arc::clone(&log), Arc::clone(&failures));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, failures) = (Arc::clone(&log), Arc::clone(&failures));
                    async move {
                        let sig = req
                            .headers()
                            .get("x-hub-signature-256")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let secret = Secret::new(APP_SECRET);
                        let answered = if verify_signature(&body, sig.as_deref(), &secret).is_err()
                        {
                            401
                        } else if failures
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            500
                        } else {
                            200
                        };
                        let receipts = parse_events(&body, crate::clock::Timestamp(0))
                            .map(|e| e.receipts)
                            .unwrap_or_default();
                        log.lock().unwrap().push(Seen {
                            answered,
                            receipts,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        Ok::<_, std::io::Error>(respond(answered, "text/plain", String::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Receiver { url, seen, task }
}

impl Receiver {
    /// The receipts of the POSTs answered 200, in arrival order.
    fn accepted(&self) -> Vec<Receipt> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.answered == 200)
            .flat_map(|s| s.receipts.clone())
            .collect()
    }

    async fn wait_accepted(&self, n: usize) -> Vec<Receipt> {
        for _ in 0..200 {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "{n} webhooks accepted within 5 s: {:?}",
            self.seen.lock().unwrap()
        );
    }
}

/// A simulator posting to `rx` with fixed timing, and a send helper returning the wamid.
async fn sim_for(rx: &Receiver, pki: &TestPki) -> CloudApiSim {
    CloudApiSim::start(SimOptions {
        pki: Some(pki),
        webhook: Some(WebhookTarget {
            url: rx.url.clone(),
            app_secret: APP_SECRET.into(),
        }),
        receipts: ReceiptTiming::exact(Duration::from_millis(200)),
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

async fn send_to(sim: &CloudApiSim, pki: &TestPki, to: &str) -> String {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(pki.client_config().unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let mut body = req("otp_auth", 1, "482913");
    body["to"] = json!(to);
    let r = client
        .post(format!("{}/106540352242922/messages", sim.base_url()))
        .bearer_auth("sim-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "Meta answers 200 whatever the number"
    );
    let v: Value = r.json().await.unwrap();
    v["messages"][0]["id"].as_str().unwrap().to_string()
}

fn statuses(r: &[Receipt], wamid: &str) -> Vec<ReceiptStatus> {
    r.iter()
        .filter(|x| x.provider_id == wamid)
        .map(|x| x.status.clone())
        .collect()
}

#[tokio::test]
async fn not_on_whatsapp_is_200_then_a_signed_failed_webhook() {
    let (rx, pki) = (receiver(0).await, TestPki::new().unwrap());
    let sim = sim_for(&rx, &pki).await;
    let wamid = send_to(&sim, &pki, "919876500042").await;
    let got = rx.wait_accepted(1).await;
    assert_eq!(
        statuses(&got, &wamid),
        [ReceiptStatus::Failed {
            code: Some("131026".into())
        }]
    );
    let body = rx.seen.lock().unwrap()[0].body.clone();
    let st = &body["entry"][0]["changes"][0]["value"]["statuses"][0];
    assert_eq!(st["recipient_id"], "919876500042");
    assert_eq!(st["errors"][0]["title"], "Message undeliverable");
    assert!(sim.handle().delivered().is_empty(), "no handset shows it");
    // Nothing else follows a failure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_phone_on_whatsapp_gets_sent_delivered_read() {
    let (rx, pki) = (receiver(0).await, TestPki::new().unwrap());
    let sim = sim_for(&rx, &pki).await;
    let wamid = send_to(&sim, &pki, "919876543210").await;
    let got = rx.wait_accepted(3).await;
    assert_eq!(
        statuses(&got, &wamid),
        [
            ReceiptStatus::Sent,
            ReceiptStatus::Delivered,
            ReceiptStatus::Read
        ]
    );
    assert_eq!(sim.handle().delivered().len(), 1);
}

#[tokio::test]
async fn an_offline_phone_only_ever_gets_sent() {
    let (rx, pki) = (receiver(0).await, TestPki::new().unwrap());
    let sim = sim_for(&rx, &pki).await;
    let wamid = send_to(&sim, &pki, "919876543950").await;
    let got = rx.wait_accepted(1).await;
    assert_eq!(statuses(&got, &wamid), [ReceiptStatus::Sent]);
    // Well past the time `delivered`, `read` and `failed` would have come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.seen.lock().unwrap().len(), 1);
    assert!(sim.handle().delivered().is_empty());
}

#[tokio::test]
async fn a_refused_webhook_is_retried_until_taken() {
    let (rx, pki) = (receiver(2).await, TestPki::new().unwrap());
    let sim = sim_for(&rx, &pki).await;
    let wamid = send_to(&sim, &pki, "919876500042").await;
    let got = rx.wait_accepted(1).await;
    assert_eq!(statuses(&got, &wamid).len(), 1);
    let posts: Vec<(u32, Option<u16>)> = sim
        .handle()
        .webhook_posts()
        .into_iter()
        .map(|p| (p.attempt, p.answer))
        .collect();
    assert_eq!(posts, [(1, Some(500)), (2, Some(500)), (3, Some(200))]);
}

#[tokio::test]
async fn a_webhook_signed_with_another_secret_is_refused_and_given_up() {
    let (rx, pki) = (receiver(0).await, TestPki::new().unwrap());
    let sim = sim_for(&rx, &pki).await;
    sim.handle().set_webhook(Some(WebhookTarget {
        url: rx.url.clone(),
        app_secret: "not-the-app-secret".into(),
    }));
    send_to(&sim, &pki, "919876500042").await;
    for _ in 0..200 {
        if sim.handle().webhook_posts().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = sim.handle().webhook_posts();
    assert_eq!(
        posts.len(),
        5,
        "max_attempts tries, then no more: {posts:?}"
    );
    assert!(posts.iter().all(|p| p.answer == Some(401)));
    assert!(rx.accepted().is_empty());
}
