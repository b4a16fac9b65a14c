//! End-to-end tests of the SMS channel: the real pool, owner tasks and serial-port code talking
//! to the modem simulator over real pseudo-terminals. Timeouts are hang guards only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly
#![cfg(feature = "simulators")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{GUARD, wait_for};

use otpgate::channel::sms::modem::{ModemError, probe};
use otpgate::channel::sms::pdu::Validity;
use otpgate::channel::sms::pool::SmsPool;
use otpgate::channel::{Channel, Content, Delivery, Outcome, Receipt, ReceiptStatus};
use otpgate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use otpgate::config::ModemConfig;
use otpgate::secret::Secret;
use otpgate::sim::modem::{Hang, Profile, SimModem};
use tokio::sync::mpsc;

const TO: &str = "+15551234567";

fn cfg(name: &str, path: &Path) -> ModemConfig {
    ModemConfig {
        name: name.into(),
        device: path.to_path_buf(),
        baud: 115_200,
        pin: None,
        smsc: None,
        status_reports: false,
        command_timeout: Duration::from_millis(1500),
        send_timeout: Duration::from_secs(3),
        probe_interval: Duration::from_millis(300),
    }
}

fn delivery(text: &str) -> Delivery {
    Delivery {
        message_id: "msg-1".into(),
        to: TO.into(),
        content: Content::Code {
            code: "123456".into(),
            sms_text: text.into(),
        },
        locale: None,
        validity: Duration::from_secs(600),
        expires_at: SystemClock.now().plus(Duration::from_secs(600)),
        budget: Duration::from_secs(20),
        departure: otpgate::channel::Departure::none(),
    }
}

fn start(cfgs: Vec<ModemConfig>) -> (SmsPool, mpsc::Receiver<Receipt>) {
    let (tx, rx) = mpsc::channel(16);
    let clock: SharedClock = Arc::new(SystemClock);
    (SmsPool::start(cfgs, tx, clock), rx)
}

/// Starts the pool and waits until every modem is ready.
async fn start_ready(cfgs: Vec<ModemConfig>) -> (SmsPool, mpsc::Receiver<Receipt>) {
    let n = cfgs.len();
    let (pool, rx) = start(cfgs);
    for i in 0..n {
        wait_state(&pool, i, "ready").await;
    }
    (pool, rx)
}

fn state(pool: &SmsPool, i: usize) -> String {
    pool.health().parts[i].state.clone()
}

/// Waits until modem `i` is in `want`.
async fn wait_state(pool: &SmsPool, i: usize, want: &str) {
    wait_for(format!("modem {i} to reach {want}"), async || {
        if state(pool, i) == want {
            Ok(())
        } else {
            Err(format!("{:?}", pool.health()))
        }
    })
    .await
}

/// Sends the usual one-part code message.
async fn send_code(pool: &SmsPool) -> Outcome {
    pool.send(&delivery("Your code is 123456")).await
}

fn accepted(o: &Outcome) -> String {
    match o {
        Outcome::Accepted { provider_id } => provider_id.clone(),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn cmgs_count(sim: &SimModem) -> usize {
    sim.commands()
        .iter()
        .filter(|c| c.starts_with("AT+CMGS="))
        .count()
}

#[tokio::test]
async fn single_part_arrives_with_number_text_validity_and_srr() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.status_reports = true;
    let (pool, _rx) = start_ready(vec![c]).await;
    let h = pool.health();
    assert!(h.usable);
    assert_eq!(h.summary, "modem0 ready -71 dBm");
    assert_eq!(h.parts[0].detail, "Sim Operator");

    let mut d = delivery("Your code is 123456");
    // 14 min 59 s cannot be expressed; the network must drop it no later than we do, with a
    // minute to spare for the hand-over: 10 min.
    d.expires_at = SystemClock.now().plus(Duration::from_secs(14 * 60 + 59));
    let id = accepted(&pool.send(&d).await);
    assert_eq!(id, "modem0/0");
    let got = sim.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].to, TO);
    assert_eq!(got[0].text, "Your code is 123456");
    assert_eq!(got[0].validity, Some(Duration::from_secs(600)));
    assert!(got[0].status_report);
    assert_eq!(got[0].parts, 1);
    assert_eq!(got[0].smsc, None);
    assert!(!got[0].ucs2);

    let id2 = accepted(&pool.send(&delivery("Your code is 654321")).await);
    assert_eq!(id2, "modem0/1", "mr increments");
    pool.shutdown().await;
}

#[tokio::test]
async fn concatenated_gsm7_and_ucs2_are_reassembled() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.smsc = Some("+4917000000".into());
    let (pool, _rx) = start_ready(vec![c]).await;

    let long: String = "Your code is 123456. ".chars().cycle().take(200).collect();
    accepted(&pool.send(&delivery(&long)).await);
    let parts = sim.received_parts();
    assert_eq!(parts.len(), 2, "200 GSM chars = 153 + 47");
    assert_eq!(parts[0].smsc.as_deref(), Some("+4917000000"));
    let msgs = sim.received();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text, long);
    assert_eq!(msgs[0].parts, 2);

    let uni: String = "Код 123456 🔐 ".chars().cycle().take(100).collect();
    let units = uni.encode_utf16().count();
    let id = accepted(&pool.send(&delivery(&uni)).await);
    let msgs = sim.received();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1].text, uni);
    assert!(msgs[1].ucs2);
    assert_eq!(msgs[1].parts, units.div_ceil(67));
    assert_eq!(
        id,
        format!("modem0/{}", msgs[1].mr),
        "id carries the last part's mr"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn transient_cms_error_moves_the_message_to_another_modem() {
    let bad = SimModem::start(Profile::quectel()).unwrap();
    let good = SimModem::start(Profile::huawei()).unwrap();
    bad.fail_next_sends(1000, 41);
    let (pool, _rx) =
        start_ready(vec![cfg("modem0", bad.path()), cfg("modem1", good.path())]).await;
    // Round robin starts on each modem once in two sends: both must end on modem1.
    for _ in 0..2 {
        let id = accepted(&send_code(&pool).await);
        assert!(id.starts_with("modem1/"), "{id}");
    }
    assert_eq!(good.received().len(), 2);
    assert!(bad.received().is_empty());
    assert!(cmgs_count(&bad) >= 1, "the failing modem was tried");
    assert_eq!(
        state(&pool, 0),
        "ready",
        "a transient error is not the modem's fault"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn transient_cms_error_on_the_only_modem_is_tried_again_then_retried_later() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    // CMS 41 "temporary failure": the second try on the same modem goes through.
    sim.fail_next_sends(1, 41);
    accepted(&send_code(&pool).await);
    assert_eq!(cmgs_count(&sim), 2);
    assert_eq!(sim.received().len(), 1);
    // A lasting transient error: two tries, then the dispatcher is asked to retry later.
    sim.fail_next_sends(5, 331);
    match send_code(&pool).await {
        Outcome::Retry { code, .. } => assert_eq!(code.as_deref(), Some("CMS 331")),
        other => panic!("{other:?}"),
    }
    assert_eq!(cmgs_count(&sim), 4);
    pool.shutdown().await;
}

#[tokio::test]
async fn cms_1_fails_permanently_and_is_not_moved() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    let b = SimModem::start(Profile::quectel()).unwrap();
    a.fail_number(TO, 1);
    b.fail_number(TO, 1);
    let (pool, _rx) = start_ready(vec![cfg("modem0", a.path()), cfg("modem1", b.path())]).await;
    match send_code(&pool).await {
        Outcome::Failed { code, reason } => {
            assert_eq!(code.as_deref(), Some("CMS 1"));
            assert!(reason.contains("unassigned"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cmgs_count(&a) + cmgs_count(&b), 1, "never tried twice");
    pool.shutdown().await;
}

#[tokio::test]
async fn modem_side_cms_error_takes_the_modem_out_and_uses_another() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    let b = SimModem::start(Profile::quectel()).unwrap();
    a.fail_next_sends(1, 330);
    b.fail_next_sends(1, 330);
    let mut ca = cfg("modem0", a.path());
    let mut cb = cfg("modem1", b.path());
    // Long enough that the sick modem stays out while the message moves on.
    ca.probe_interval = Duration::from_secs(5);
    cb.probe_interval = Duration::from_secs(5);
    let (pool, _rx) = start_ready(vec![ca, cb]).await;
    match send_code(&pool).await {
        Outcome::Retry { code, .. } => assert_eq!(code.as_deref(), Some("CMS 330")),
        other => panic!("{other:?}"),
    }
    assert_eq!(state(&pool, 0), "error");
    assert_eq!(state(&pool, 1), "error");
    match send_code(&pool).await {
        Outcome::ChannelDown { reason, .. } => {
            assert!(reason.contains("modem0 error"), "{reason}");
            assert!(reason.contains("SMSC"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The next health look re-initialises and the modems come back.
    wait_state(&pool, 0, "ready").await;
    accepted(&send_code(&pool).await);
    pool.shutdown().await;
}

async fn urcs_everywhere(profile: Profile, urc: &str) {
    let sim = SimModem::start(profile).unwrap();
    for _ in 0..20 {
        sim.urc_in_next_answer(urc);
    }
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    sim.urc_in_next_answer("+CREG: 1");
    sim.urc_in_next_answer(urc);
    sim.inject_urc(urc);
    let id = accepted(&send_code(&pool).await);
    assert!(id.starts_with("modem0/"));
    sim.inject_urc("+CREG: 1");
    sim.urc_in_next_answer(urc);
    accepted(&send_code(&pool).await);
    assert_eq!(sim.received().len(), 2);
    assert_eq!(state(&pool, 0), "ready");
    pool.shutdown().await;
}

#[tokio::test]
async fn urcs_in_the_middle_of_answers_quectel() {
    urcs_everywhere(Profile::quectel(), "+QIND: \"csq\",21,99").await;
}

#[tokio::test]
async fn urcs_in_the_middle_of_answers_huawei() {
    let sim_cmds = {
        // Huawei also chatters ^RSSI/^MODE on its own until AT^CURC=0, and lacks AT+CEREG?.
        urcs_everywhere(Profile::huawei(), "^RSSI:18").await;
        let sim = SimModem::start(Profile::huawei()).unwrap();
        let (pool, _rx) = start(vec![cfg("modem0", sim.path())]);
        wait_state(&pool, 0, "ready").await;
        pool.shutdown().await;
        sim.commands()
    };
    assert!(sim_cmds.iter().any(|c| c == "AT^CURC=0"));
}

#[tokio::test]
async fn echo_back_after_a_reboot_is_tolerated_and_the_modem_is_set_up_again() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    // Echo silently back on: the echoed command and PDU must not confuse the dialogue.
    sim.set_echo(true);
    accepted(&send_code(&pool).await);
    // A real reboot: "RDY", echo on, text mode. The owner sets PDU mode again by itself.
    let before = sim.commands().iter().filter(|c| *c == "AT+CMGF=0").count();
    sim.reboot();
    wait_for("re-init after RDY", async || {
        sim.commands().iter().filter(|c| *c == "AT+CMGF=0").count() > before
    })
    .await;
    wait_state(&pool, 0, "ready").await;
    accepted(&send_code(&pool).await);
    assert_eq!(sim.received().len(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_slow_modem_is_waited_for() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    sim.set_delay(Duration::from_millis(150));
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    accepted(&send_code(&pool).await);
    assert_eq!(sim.received().len(), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn hung_modem_is_reset_and_sends_again() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    sim.set_hang(Hang::UntilReset);
    // No prompt: nothing went out, so this is a retry, not an unknown.
    match send_code(&pool).await {
        Outcome::Retry { .. } | Outcome::ChannelDown { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(sim.received().is_empty());
    wait_for("ATZ sent", async || {
        sim.commands().iter().any(|c| c == "ATZ")
    })
    .await;
    wait_state(&pool, 0, "ready").await;
    accepted(&send_code(&pool).await);
    assert_eq!(sim.received().len(), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn idle_hang_is_noticed_by_the_health_probe() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    sim.set_hang(Hang::Forever);
    wait_state(&pool, 0, "no_answer").await;
    match send_code(&pool).await {
        Outcome::ChannelDown { reason, .. } => assert!(reason.contains("modem0 no_answer")),
        other => panic!("{other:?}"),
    }
    sim.set_hang(Hang::No);
    wait_state(&pool, 0, "ready").await;
    pool.shutdown().await;
}

#[tokio::test]
async fn unplug_and_replug_returns_to_ready_by_itself() {
    let mut sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    sim.vanish();
    wait_state(&pool, 0, "unplugged").await;
    assert!(!pool.health().usable);
    match send_code(&pool).await {
        Outcome::ChannelDown { reason, .. } => assert!(reason.contains("unplugged"), "{reason}"),
        other => panic!("{other:?}"),
    }
    sim.reappear().unwrap();
    wait_state(&pool, 0, "ready").await;
    accepted(&send_code(&pool).await);
    assert_eq!(sim.received().len(), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn pin_from_config_is_entered_once() {
    let sim = SimModem::start(Profile::quectel().with_pin("1234")).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.pin = Some(Secret::new("1234"));
    let (pool, _rx) = start_ready(vec![c]).await;
    assert_eq!(sim.pin_attempts(), 1);
    accepted(&send_code(&pool).await);
    pool.shutdown().await;
}

#[tokio::test]
async fn missing_pin_is_reported() {
    let sim = SimModem::start(Profile::quectel().with_pin("1234")).unwrap();
    let (pool, _rx) = start(vec![cfg("modem0", sim.path())]);
    wait_state(&pool, 0, "pin_needed").await;
    assert_eq!(sim.pin_attempts(), 0);
    pool.shutdown().await;
}

#[tokio::test]
async fn missing_sim_is_reported_and_noticed_when_inserted() {
    let sim = SimModem::start(Profile::quectel().without_sim()).unwrap();
    let (pool, _rx) = start(vec![cfg("modem0", sim.path())]);
    wait_state(&pool, 0, "no_sim").await;
    sim.set_sim_present(true);
    wait_state(&pool, 0, "ready").await;
    pool.shutdown().await;
}

#[tokio::test]
async fn wrong_pin_is_never_retried() {
    let sim = SimModem::start(Profile::quectel().with_pin("1234")).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.pin = Some(Secret::new("0000"));
    c.probe_interval = Duration::from_millis(100);
    let (pool, _rx) = start(vec![c]);
    wait_state(&pool, 0, "pin_rejected").await;
    // Let the owner look at the SIM again several times: it must not try the PIN again.
    let queried = || sim.commands().iter().filter(|c| *c == "AT+CPIN?").count();
    wait_for("several SIM checks", async || queried() >= 4).await;
    assert_eq!(sim.pin_attempts(), 1);
    assert_eq!(state(&pool, 0), "pin_rejected");
    pool.shutdown().await;
}

#[tokio::test]
async fn status_reports_become_receipts_matched_to_the_provider_id() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.status_reports = true;
    let (pool, mut rx) = start_ready(vec![c]).await;
    let id = accepted(&send_code(&pool).await);
    let r = tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.provider_id, id);
    assert_eq!(r.status, ReceiptStatus::Delivered);

    sim.set_report_status(0x46);
    let id = accepted(&send_code(&pool).await);
    let r = tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.provider_id, id);
    assert_eq!(
        r.status,
        ReceiptStatus::Failed {
            code: Some("ST 0x46".into())
        }
    );

    sim.set_report_status(0x20);
    let id = accepted(&send_code(&pool).await);
    let r = tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.provider_id, r.status), (id, ReceiptStatus::Pending));

    // A two-part message is delivered when both parts are.
    sim.set_report_status(0x00);
    let long: String = "x".repeat(200);
    let id = accepted(&pool.send(&delivery(&long)).await);
    let r = tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.provider_id, r.status), (id, ReceiptStatus::Delivered));
    assert_eq!(sim.reports_sent(), 5);
    assert_eq!(sim.acks(), 0, "phase 2 modems must not get AT+CNMA");
    pool.shutdown().await;
}

#[tokio::test]
async fn phase2plus_status_reports_are_acknowledged() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    sim.set_phase2plus(true);
    let mut c = cfg("modem0", sim.path());
    c.status_reports = true;
    let (pool, mut rx) = start_ready(vec![c]).await;
    let id = accepted(&send_code(&pool).await);
    let r = tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.provider_id, r.status), (id, ReceiptStatus::Delivered));
    wait_for("AT+CNMA", async || sim.acks() == 1).await;
    pool.shutdown().await;
}

#[tokio::test]
async fn timeout_after_ctrl_z_is_unknown_and_not_resent() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    let b = SimModem::start(Profile::quectel()).unwrap();
    a.swallow_next_sends(1);
    b.swallow_next_sends(1);
    let (pool, _rx) = start_ready(vec![cfg("modem0", a.path()), cfg("modem1", b.path())]).await;
    match send_code(&pool).await {
        Outcome::Unknown { reason } => assert!(reason.contains("handed over"), "{reason}"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.received().len() + b.received().len(),
        1,
        "it went out once and was not sent again"
    );
    assert_eq!(cmgs_count(&a) + cmgs_count(&b), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn garbage_long_lines_and_urc_floods_do_not_wedge_the_owner() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    let p0 = pool.progress()[0].1;
    sim.inject_raw(&[0u8, 0xff, 0x1a, 0x1b, b'>', b' ']);
    sim.inject_raw(&vec![b'A'; 10_000]);
    sim.inject_raw(b"\r\n");
    sim.inject_raw(&b"+QIND: \"csq\",21,99\r\n".repeat(2000));
    accepted(&send_code(&pool).await);
    assert_eq!(state(&pool, 0), "ready");
    assert!(pool.progress()[0].1 > p0, "the heartbeat moves");
    pool.shutdown().await;
}

#[tokio::test]
async fn lost_registration_takes_the_modem_out_until_it_returns() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    sim.set_registration(3);
    wait_state(&pool, 0, "not_registered").await;
    match send_code(&pool).await {
        Outcome::ChannelDown { reason, .. } => {
            assert!(reason.contains("modem0 not_registered"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    sim.set_registration(5);
    wait_state(&pool, 0, "ready").await;
    accepted(&send_code(&pool).await);
    pool.shutdown().await;
}

#[tokio::test]
async fn no_smsc_anywhere_is_a_clear_state() {
    let sim = SimModem::start(Profile::quectel().with_smsc("")).unwrap();
    let (pool, _rx) = start(vec![cfg("modem0", sim.path())]);
    wait_state(&pool, 0, "error").await;
    assert!(pool.health().parts[0].detail.contains("SMSC"));
    pool.shutdown().await;
}

#[tokio::test]
async fn probe_reports_the_modem_and_explains_failures() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let report = probe(sim.path(), 115_200, Duration::from_secs(2))
        .await
        .unwrap();
    let text = report.to_string();
    for want in [
        "Quectel EC25",
        "EC25EFAR06A06M4G",
        "867698040000001",
        "READY",
        "registered, home network",
        "Sim Operator",
        "-71 dBm (4/4 bars)",
        "+10000000000",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert!(text.lines().count() <= 10);

    let missing = probe(Path::new("/dev/serial/by-id/nothing-here"), 115_200, GUARD).await;
    match missing {
        Err(e @ ModemError::NotFound(_)) => assert!(e.to_string().contains("/dev/serial/by-id")),
        other => panic!("{other:?}"),
    }

    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    match probe(sim.path(), 115_200, Duration::from_secs(2)).await {
        Err(e @ ModemError::Busy(_)) => assert!(e.to_string().contains("ID_MM_DEVICE_IGNORE")),
        other => panic!("{other:?}"),
    }
    pool.shutdown().await;

    sim.set_hang(Hang::Forever);
    match probe(sim.path(), 115_200, Duration::from_millis(300)).await {
        Err(e @ ModemError::NoAnswer(..)) => assert!(e.to_string().contains("no answer")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_text_never_reaches_a_log_line() {
    // Global, so the owner tasks and the simulator thread are captured too.
    let buf = common::capture_logs();

    let code = "918273";
    let text = format!("Your code is {code}");
    let sim = SimModem::start(Profile::huawei()).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.status_reports = true;
    c.pin = None;
    let (pool, mut rx) = start_ready(vec![c]).await;
    let mut d = delivery(&text);
    d.content = Content::Code {
        code: code.into(),
        sms_text: text.clone(),
    };
    accepted(&pool.send(&d).await);
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap()
        .unwrap();
    sim.fail_next_sends(1, 1);
    assert!(matches!(pool.send(&d).await, Outcome::Failed { .. }));
    sim.swallow_next_sends(1);
    assert!(matches!(pool.send(&d).await, Outcome::Unknown { .. }));
    pool.shutdown().await;

    // The packed 7-bit form of the text, as it appears in the PDU hex.
    let septets = otpgate::channel::sms::gsm7::encode(&text).unwrap();
    let packed = hex::encode_upper(otpgate::channel::sms::gsm7::pack(&septets, 0));
    let logs = buf.text();
    assert!(logs.contains("SMS accepted"), "logs were captured:\n{logs}");
    assert!(logs.contains("outcome unknown"));
    assert!(!logs.contains(code), "the code leaked into the logs");
    assert!(!logs.contains(&text));
    assert!(!logs.to_uppercase().contains(&packed), "the PDU leaked");
}

#[tokio::test]
async fn heartbeat_moves_while_idle_and_while_unplugged() {
    let mut sim = SimModem::start(Profile::quectel()).unwrap();
    let mut c = cfg("modem0", sim.path());
    c.probe_interval = Duration::from_secs(3600);
    let (pool, _rx) = start_ready(vec![c]).await;
    let p0 = pool.progress()[0].1;
    wait_for("idle heartbeat", async || pool.progress()[0].1 > p0 + 1).await;
    sim.vanish();
    wait_state(&pool, 0, "unplugged").await;
    let p1 = pool.progress()[0].1;
    wait_for("unplugged heartbeat", async || {
        pool.progress()[0].1 > p1 + 1
    })
    .await;
    assert_eq!(pool.progress()[0].0, "modem0");
    pool.shutdown().await;
}

#[tokio::test]
async fn unplug_after_ctrl_z_is_unknown_and_the_modem_comes_back() {
    let mut sim = SimModem::start(Profile::quectel()).unwrap();
    sim.swallow_next_sends(1);
    let mut c = cfg("modem0", sim.path());
    c.send_timeout = Duration::from_secs(20);
    let (pool, _rx) = start(vec![c]);
    let pool = Arc::new(pool);
    wait_state(&pool, 0, "ready").await;
    let p = pool.clone();
    let send = tokio::spawn(async move { p.send(&delivery("Your code is 123456")).await });
    wait_for("the PDU reached the modem", async || {
        sim.received().len() == 1
    })
    .await;
    sim.vanish();
    match tokio::time::timeout(GUARD, send).await.unwrap().unwrap() {
        Outcome::Unknown { reason } => assert!(reason.contains("port lost"), "{reason}"),
        other => panic!("{other:?}"),
    }
    sim.reappear().unwrap();
    wait_state(&pool, 0, "ready").await;
    accepted(&send_code(&pool).await);
    assert_eq!(sim.received().len(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn concurrent_sends_share_two_modems_without_loss_or_duplicates() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    let b = SimModem::start(Profile::huawei()).unwrap();
    let (pool, _rx) = start(vec![cfg("modem0", a.path()), cfg("modem1", b.path())]);
    let pool = Arc::new(pool);
    wait_state(&pool, 0, "ready").await;
    wait_state(&pool, 1, "ready").await;
    let mut tasks = Vec::new();
    for k in 0..20 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut d = delivery(&format!("Your code is {k:06}"));
            d.message_id = format!("msg-{k}");
            p.send(&d).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let id = accepted(&tokio::time::timeout(GUARD, t).await.unwrap().unwrap());
        assert!(ids.insert(id.clone()), "duplicate provider id {id}");
    }
    let mut texts: Vec<String> = a
        .received()
        .into_iter()
        .chain(b.received())
        .map(|r| r.text)
        .collect();
    texts.sort();
    let want: Vec<String> = (0..20).map(|k| format!("Your code is {k:06}")).collect();
    assert_eq!(texts, want);
    assert!(
        !a.received().is_empty() && !b.received().is_empty(),
        "both modems used"
    );
    pool.shutdown().await;
}

/// Modems whose own timeouts are longer than the budgets below: only the pool's shares of the
/// budget can end a wait in time.
fn patient(name: &str, path: &Path) -> ModemConfig {
    let mut c = cfg(name, path);
    c.command_timeout = Duration::from_secs(10);
    c.send_timeout = Duration::from_secs(30);
    c
}

#[tokio::test]
async fn a_modem_that_never_takes_the_message_leaves_the_rest_of_the_budget_to_another() {
    let stuck = SimModem::start(Profile::quectel()).unwrap();
    let good = SimModem::start(Profile::huawei()).unwrap();
    let (pool, _rx) = start(vec![
        patient("modem0", stuck.path()),
        patient("modem1", good.path()),
    ]);
    wait_state(&pool, 0, "ready").await;
    wait_state(&pool, 1, "ready").await;
    // No '>' prompt: modem0 never takes the message. The pool's first pick is modem0.
    stuck.stall_next_sends(1);
    let mut d = delivery("Your code is 123456");
    d.budget = Duration::from_secs(4);
    let id = accepted(&pool.send(&d).await);
    assert!(id.starts_with("modem1/"), "{id}");
    assert_eq!(cmgs_count(&stuck), 1, "modem0 was asked first");
    assert!(stuck.received().is_empty());
    assert_eq!(good.received().len(), 1);
    // The stuck modem is set right again and takes the next message.
    wait_state(&pool, 0, "ready").await;
    let mut d = delivery("Your code is 654321");
    d.budget = Duration::from_secs(4);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(accepted(&pool.send(&d).await));
    }
    assert!(ids.iter().any(|id| id.starts_with("modem0/")), "{ids:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_modem_that_hangs_after_the_hand_over_is_unknown_within_the_budget() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    let b = SimModem::start(Profile::quectel()).unwrap();
    a.swallow_next_sends(1);
    let (pool, _rx) = start(vec![
        patient("modem0", a.path()),
        patient("modem1", b.path()),
    ]);
    wait_state(&pool, 0, "ready").await;
    wait_state(&pool, 1, "ready").await;
    let mut d = delivery("Your code is 123456");
    d.budget = Duration::from_secs(3);
    // modem0 (the first pick) takes the PDU and never answers; the budget ends before its
    // 30 s send timeout, so the pool's verdict is Unknown and the message is not resent.
    match pool.send(&d).await {
        Outcome::Unknown { reason } => assert!(reason.contains("modem0"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.received().len(), 1, "it went out on modem0");
    assert_eq!(cmgs_count(&b), 0, "never offered to modem1");
    assert!(b.received().is_empty());
    pool.shutdown().await;
}

#[tokio::test]
async fn start_up_logs_a_missing_device_at_warn_and_no_reboot() {
    let buf = common::LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    // This test's runtime is single-threaded: the owner tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    // The simulator has just powered on: its boot banner waits on the port.
    let sim = SimModem::start(Profile::quectel()).unwrap();
    let missing = Path::new("/dev/serial/by-id/usb-no-such-modem");
    let (pool, _rx) = start(vec![cfg("modem0", sim.path()), cfg("modem1", missing)]);
    wait_state(&pool, 0, "ready").await;
    wait_state(&pool, 1, "unplugged").await;
    pool.shutdown().await;
    let logs = buf.text();
    let line = |modem: &str, to: &str| {
        logs.lines()
            .find(|l| l.contains(&format!("modem={modem}")) && l.contains(&format!("to={to}")))
            .unwrap_or_else(|| panic!("no {modem} {to} line in:\n{logs}"))
            .to_string()
    };
    assert!(line("modem1", "unplugged").contains(" WARN "), "{logs}");
    assert!(line("modem1", "unplugged").contains("no such device"));
    assert!(line("modem0", "ready").contains(" INFO "));
    assert!(
        logs.contains("modem just started"),
        "the banner was seen:\n{logs}"
    );
    assert!(
        !logs.contains("rebooted"),
        "start-up is not a reboot:\n{logs}"
    );
}

#[tokio::test]
async fn a_late_answer_to_the_escape_line_does_not_shift_every_later_answer() {
    let sim = SimModem::start(Profile::quectel()).unwrap();
    // The ERROR for the bare CR after ESC comes only after the next command was written.
    sim.set_late_bare_line(Some(Duration::from_millis(100)));
    let report = probe(sim.path(), 115_200, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(report.manufacturer.as_deref(), Some("Quectel"));
    assert_eq!(report.imei.as_deref(), Some("867698040000001"));
    assert_eq!(report.sim, "READY");

    let (pool, _rx) = start(vec![cfg("modem0", sim.path())]);
    wait_state(&pool, 0, "ready").await;
    let h = pool.health();
    assert_eq!(
        h.parts[0].detail, "Sim Operator",
        "AT+COPS? read its own answer"
    );
    assert_eq!(
        h.parts[0].signal_dbm,
        Some(-71),
        "AT+CSQ read its own answer"
    );
    accepted(&pool.send(&delivery("Your code is 123456")).await);
    assert_eq!(sim.received().len(), 1);
    pool.shutdown().await;
}

/// Sends codes with lifetimes around every boundary of the validity period through `profile`
/// and checks the TP-VP the modem received: never past the code's expiry.
async fn validity_never_outlives_the_code(profile: Profile) {
    let sim = SimModem::start(profile).unwrap();
    let (pool, _rx) = start_ready(vec![cfg("modem0", sim.path())]).await;
    let secs = Duration::from_secs;
    let min = |m: u64| Duration::from_secs(m * 60);
    // (time left, long text?, the relative period expected; None: the expiry itself)
    let cases = [
        (secs(1), false, None),
        (secs(30), false, None),
        (secs(4 * 60 + 59), false, None),
        (min(5), false, None),
        // Relative 5 min would end after the expiry once the hand-over takes a minute.
        (secs(5 * 60 + 59), false, None),
        (secs(6 * 60 + 1), false, Some(min(5))),
        (min(12 * 60), false, Some(min(715))),
        (min(25 * 60), false, Some(min(24 * 60))),
        // Every part of a long code message carries the same expiry.
        (secs(90), true, None),
    ];
    for (left, long, relative) in cases {
        let before = sim.received_parts().len();
        let mut d = delivery("Your code is 123456");
        if long {
            d.content = Content::Text("Your code is 123456. ".repeat(20));
        }
        d.expires_at = SystemClock.now().plus(left);
        accepted(&pool.send(&d).await);
        let expect = match relative {
            Some(p) => Validity::Relative(p),
            None => Validity::Absolute(Timestamp(d.expires_at.0.div_euclid(1000) * 1000)),
        };
        let parts = sim.received_parts();
        let new = &parts[before..];
        assert_eq!(new.len(), if long { 3 } else { 1 }, "{left:?}");
        for p in new {
            assert_eq!(p.vp, Some(expect), "{left:?} left");
            let kept = p.validity.unwrap();
            assert!(kept <= left, "{left:?} left, the SMSC keeps it {kept:?}");
        }
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn validity_never_outlives_the_code_quectel() {
    validity_never_outlives_the_code(Profile::quectel()).await;
}

#[tokio::test]
async fn validity_never_outlives_the_code_huawei() {
    validity_never_outlives_the_code(Profile::huawei()).await;
}

/// Two modems whose send timeout (30 s) is far beyond the 1.5 s in which a PDU is due an answer.
fn slow_to_give_up(name: &str, path: &Path) -> ModemConfig {
    let mut c = cfg(name, path);
    c.send_timeout = Duration::from_secs(30);
    c
}

#[tokio::test]
async fn a_modem_that_hangs_after_taking_a_pdu_leaves_the_pool_at_once() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    let b = SimModem::start(Profile::huawei()).unwrap();
    a.swallow_next_sends(1);
    let (pool, _rx) = start_ready(vec![
        slow_to_give_up("modem0", a.path()),
        slow_to_give_up("modem1", b.path()),
    ])
    .await;
    let pool = Arc::new(pool);
    let mut d = delivery("Your code is 123456");
    d.budget = Duration::from_secs(8);
    // modem0 (the first pick) takes the PDU and never answers.
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.send(&d).await }
    });
    wait_for("modem0 to take the PDU", async || !a.received().is_empty()).await;
    wait_state(&pool, 0, "no_answer").await;
    assert!(
        !first.is_finished(),
        "the state changed long before the send gave up (8 s budget, 30 s send timeout)"
    );
    let h = pool.health();
    assert!(h.usable, "{h:?}");
    assert!(h.parts[0].detail.contains("no answer to a PDU"), "{h:?}");
    assert!(h.summary.contains("modem0 no_answer"), "{}", h.summary);
    // The next message goes to the other modem, without waiting behind the hung one.
    let id = accepted(&pool.send(&delivery("Your code is 654321")).await);
    assert!(id.starts_with("modem1/"), "{id}");
    assert_eq!(cmgs_count(&a), 1, "never offered to the hung modem");
    assert_eq!(b.received().len(), 1);
    // The hung send ends Unknown (never resent); the modem is reset and comes back.
    match first.await.unwrap() {
        Outcome::Unknown { reason } => assert!(reason.contains("modem0"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.received().len() + b.received().len(), 2);
    wait_state(&pool, 0, "ready").await;
    pool.shutdown().await;
}

#[tokio::test]
async fn a_late_answer_to_a_pdu_puts_the_modem_back_in_the_pool() {
    let a = SimModem::start(Profile::quectel()).unwrap();
    a.answer_next_send_late(Duration::from_millis(2500));
    let (pool, _rx) = start_ready(vec![slow_to_give_up("modem0", a.path())]).await;
    let pool = Arc::new(pool);
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.send(&delivery("Your code is 123456")).await }
    });
    wait_state(&pool, 0, "no_answer").await;
    assert!(!first.is_finished());
    // The late +CMGS is the message's answer, and the modem answers again: ready at once.
    let id = accepted(&first.await.unwrap());
    assert_eq!(id, "modem0/0");
    assert_eq!(state(&pool, 0), "ready");
    assert_eq!(pool.health().parts[0].detail, "Sim Operator");
    accepted(&pool.send(&delivery("Your code is 654321")).await);
    assert_eq!(a.received().len(), 2);
    pool.shutdown().await;
}
