//! What a crash may lose (issue 18): the real channels announce a delivery's departure exactly
//! once, immediately before their irreversible write (the PDU after the modem's `> ` prompt,
//! the HTTP request after the rate cap), never for a delivery that stays in the box, and send
//! nothing when the departure is refused. The dispatcher opens the attempt's row at that
//! moment; the real-binary kill -9 drills are in tests/binary.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CLIENT, GUARD, KEY, TestConfig, wait_for};
use otpgate::channel::sms::pool::SmsPool;
use otpgate::channel::whatsapp::WhatsAppChannel;
use otpgate::channel::{
    BoxFuture, Channel, Content, Delivery, Depart, DepartError, Departure, Outcome,
};
use otpgate::clock::{Clock, SharedClock, SystemClock};
use otpgate::config::ModemConfig;
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::modem::{Profile, SimModem};

/// A departure hook that counts its calls, notes what the provider had already seen at each,
/// and allows or refuses them.
struct Gate {
    allow: bool,
    calls: AtomicUsize,
    seen_at_call: Mutex<Vec<usize>>,
    seen: Box<dyn Fn() -> usize + Send + Sync>,
}

impl Gate {
    fn new(allow: bool, seen: impl Fn() -> usize + Send + Sync + 'static) -> Arc<Gate> {
        Arc::new(Gate {
            allow,
            calls: AtomicUsize::new(0),
            seen_at_call: Mutex::new(Vec::new()),
            seen: Box::new(seen),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Depart for Gate {
    fn depart(&self) -> BoxFuture<'_, Result<(), DepartError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen_at_call.lock().unwrap().push((self.seen)());
            if self.allow {
                Ok(())
            } else {
                Err(DepartError("store down".into()))
            }
        })
    }
}

fn delivery(to: &str, text: &str, gate: &Arc<Gate>, budget: Duration) -> Delivery {
    Delivery {
        message_id: "msg-1".into(),
        to: to.into(),
        content: Content::Code {
            code: "482913".into(),
            sms_text: text.into(),
        },
        locale: None,
        validity: Duration::from_secs(600),
        expires_at: SystemClock.now().plus(Duration::from_secs(600)),
        budget,
        departure: Departure::new(gate.clone()),
    }
}

async fn send(ch: &dyn Channel, d: &Delivery) -> Outcome {
    tokio::time::timeout(GUARD, ch.send(d))
        .await
        .expect("send hung")
}

#[tokio::test]
async fn sms_departs_once_at_the_prompt_and_sends_nothing_when_refused() {
    let modem = Arc::new(SimModem::start(Profile::quectel()).unwrap());
    let cfg = ModemConfig {
        name: "modem0".into(),
        device: modem.path().to_path_buf(),
        baud: 115_200,
        pin: None,
        smsc: None,
        status_reports: false,
        command_timeout: Duration::from_millis(1500),
        send_timeout: Duration::from_secs(3),
        probe_interval: Duration::from_millis(300),
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let clock: SharedClock = Arc::new(SystemClock);
    let pool = SmsPool::start(vec![cfg], tx, clock);
    wait_for("the modem to be ready", async || {
        pool.health().parts[0].state == "ready"
    })
    .await;
    let parts = {
        let m = modem.clone();
        move || m.received_parts().len()
    };
    let budget = Duration::from_secs(20);

    // Refused (the store is down): the prompt is closed unsent and the verdict is transient.
    let refuse = Gate::new(false, parts.clone());
    let o = send(
        &pool,
        &delivery("+15551234567", "482913 is your code", &refuse, budget),
    )
    .await;
    assert!(matches!(o, Outcome::Retry { .. }), "{o:?}");
    assert!(refuse.calls() >= 1);
    assert!(modem.received_parts().is_empty(), "nothing left the box");

    // Allowed: one departure for a three-part message, before its first PDU; the modem is
    // back in step after the closed prompts.
    let long = format!("482913 {}", "is your code for the ACME portal. ".repeat(12));
    let allow = Gate::new(true, parts);
    let o = send(&pool, &delivery("+15551234567", &long, &allow, budget)).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(allow.calls(), 1, "departed exactly once");
    assert_eq!(
        *allow.seen_at_call.lock().unwrap(),
        [0],
        "before the first PDU"
    );
    assert!(modem.received_parts().len() >= 3, "a multi-part message");
    assert_eq!(modem.received().len(), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn whatsapp_departs_after_the_rate_cap_and_never_for_a_request_it_holds_back() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Arc::new(
        CloudApiSim::start(SimOptions {
            builtin_rules: false,
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let main = TestConfig::new(dir.path())
        .whatsapp_sim(&sim)
        .whatsapp_lines("max_rate = 1")
        .client(CLIENT, KEY)
        .write()
        .unwrap();
    let cfg = common::load(&main).whatsapp;
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let ch = WhatsAppChannel::new(&cfg, tx).unwrap();
    let requests = {
        let s = sim.clone();
        move || s.requests().len()
    };
    let to = "+919876543210";

    // Refused: no request reaches the API, and the verdict is transient.
    let refuse = Gate::new(false, requests.clone());
    let o = send(&ch, &delivery(to, "", &refuse, Duration::from_secs(5))).await;
    assert!(matches!(o, Outcome::Retry { .. }), "{o:?}");
    assert_eq!((refuse.calls(), sim.requests().len()), (1, 0));

    // The cap took its token for the refused one: this one waits for the next, then departs
    // once, before its request.
    let first = Gate::new(true, requests.clone());
    let o = send(&ch, &delivery(to, "", &first, Duration::from_secs(5))).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(*first.seen_at_call.lock().unwrap(), [0]);
    assert_eq!(sim.requests().len(), 1);

    // Held back by the cap with no time to wait: it never departs.
    let held = Gate::new(true, requests);
    let o = send(&ch, &delivery(to, "", &held, Duration::from_millis(300))).await;
    assert!(matches!(o, Outcome::Retry { .. }), "{o:?}");
    assert_eq!((held.calls(), sim.requests().len()), (0, 1));
}
