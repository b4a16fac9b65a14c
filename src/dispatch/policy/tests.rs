//! Table tests of the policy on rules built in memory.

use super::*;

const BOTH: &[ChannelKind] = &[ChannelKind::WhatsApp, ChannelKind::Sms];
const BOTH_UP: &[(ChannelKind, bool)] = &[(ChannelKind::WhatsApp, true), (ChannelKind::Sms, true)];
const NONE: &[String] = &[];

fn rules() -> Rules<'static> {
    Rules {
        client: "adfs",
        order: BOTH,
        whatsapp_enabled: true,
        client_whatsapp: true,
        client_countries: None,
        whatsapp_countries: NONE,
        sms_countries: NONE,
        whatsapp_deadline: Duration::from_secs(8),
        no_whatsapp_memory: Duration::from_secs(3600),
        prenotify: true,
        receipts: false,
        delivery_deadline: Duration::from_secs(15),
        unconfirmed_sms_for: Duration::from_secs(86_400),
        escalate_after: None,
    }
}

fn attempt(channel: ChannelKind, end: AttemptEnd, receipt: Option<ReceiptKind>) -> Attempt {
    Attempt {
        id: 1,
        channel,
        purpose: AttemptPurpose::Code,
        started_at: Timestamp(0),
        ended_at: Some(Timestamp(1)),
        end: Some(end),
        provider_id: None,
        error_code: None,
        detail: None,
        receipt,
        receipt_at: None,
    }
}

fn facts() -> Facts<'static> {
    Facts {
        kind: MessageKind::Code,
        has_content: true,
        country: Some("IN"),
        expires_at: Timestamp(300_000),
        only_channel: None,
        verification: None,
    }
}

fn input<'a>(r: &'a RecipientInfo, a: &'a [Attempt], h: &'a [(ChannelKind, bool)]) -> Input<'a> {
    Input {
        message: facts(),
        recipient: r,
        attempts: a,
        health: h,
        now: Timestamp(0),
    }
}

fn channels(d: &Decision) -> Vec<ChannelKind> {
    match d {
        Decision::Send { steps, .. } => steps.iter().map(|s| s.channel).collect(),
        other => panic!("not a send: {other:?}"),
    }
}

fn prenotice(d: &Decision) -> bool {
    matches!(
        d,
        Decision::Send {
            prenotice: true,
            ..
        }
    )
}

#[test]
fn whatsapp_first_then_sms_with_prenotice_once() {
    let r = RecipientInfo::default();
    let d = decide(&rules(), &input(&r, &[], BOTH_UP));
    assert_eq!(channels(&d), vec![ChannelKind::WhatsApp, ChannelKind::Sms]);
    assert!(prenotice(&d));
    let Decision::Send { steps, .. } = &d else {
        unreachable!()
    };
    assert_eq!(steps[0].budget, Duration::from_secs(8));
    assert_eq!(steps[1].budget, Duration::from_secs(180));
    let told = RecipientInfo {
        prenotified_at: Some(Timestamp(1)),
        ..Default::default()
    };
    assert!(!prenotice(&decide(&rules(), &input(&told, &[], BOTH_UP))));
}

#[test]
fn every_switch_turns_whatsapp_off_and_says_why() {
    let r = RecipientInfo::default();
    let de = ["DE".to_string()];
    let cases: Vec<(Rules<'_>, MessageKind, &str)> = vec![
        (
            Rules {
                whatsapp_enabled: false,
                ..rules()
            },
            MessageKind::Code,
            "disabled globally",
        ),
        (
            Rules {
                client_whatsapp: false,
                ..rules()
            },
            MessageKind::Code,
            "disabled for client adfs",
        ),
        (
            Rules {
                whatsapp_countries: &de,
                ..rules()
            },
            MessageKind::Code,
            "not rolled out to IN",
        ),
        (rules(), MessageKind::Text, "free text"),
    ];
    for (rules, kind, why) in cases {
        let mut i = input(&r, &[], BOTH_UP);
        i.message.kind = kind;
        let d = decide(&rules, &i);
        assert_eq!(channels(&d), vec![ChannelKind::Sms], "{why}");
        assert!(!prenotice(&d), "{why}: no pre-notice without WhatsApp");
        let Decision::Send { skipped, .. } = d else {
            unreachable!()
        };
        assert!(
            skipped
                .iter()
                .any(|(ch, w)| *ch == ChannelKind::WhatsApp && w.contains(why)),
            "{why}: {skipped:?}"
        );
    }
    let quiet = Rules {
        prenotify: false,
        ..rules()
    };
    let d = decide(&quiet, &input(&r, &[], BOTH_UP));
    assert_eq!(channels(&d).len(), 2);
    assert!(!prenotice(&d), "prenotify = false");
}

#[test]
fn history_and_memory_exclude_channels() {
    use AttemptEnd::*;
    use ChannelKind::*;
    let remembered = RecipientInfo {
        no_whatsapp_until: Some(Timestamp(10)),
        ..Default::default()
    };
    assert_eq!(
        channels(&decide(&rules(), &input(&remembered, &[], BOTH_UP))),
        vec![Sms]
    );
    let forgotten = RecipientInfo {
        no_whatsapp_until: Some(Timestamp(0)),
        prenotified_at: Some(Timestamp(0)),
        ..Default::default()
    };
    assert_eq!(
        channels(&decide(&rules(), &input(&forgotten, &[], BOTH_UP))).len(),
        2
    );
    let none = RecipientInfo::default();
    for (a, want) in [
        (attempt(WhatsApp, Interrupted, None), vec![Sms]),
        (attempt(WhatsApp, Unknown, None), vec![Sms]),
        (attempt(WhatsApp, FallBack, None), vec![Sms]),
        (
            attempt(WhatsApp, Accepted, Some(ReceiptKind::Failed)),
            vec![Sms],
        ),
        (attempt(WhatsApp, Retry, None), vec![WhatsApp, Sms]),
        (attempt(WhatsApp, ChannelDown, None), vec![WhatsApp, Sms]),
        (attempt(WhatsApp, Skipped, None), vec![WhatsApp, Sms]),
        (attempt(Sms, Interrupted, None), vec![WhatsApp]),
    ] {
        let d = decide(&rules(), &input(&none, std::slice::from_ref(&a), BOTH_UP));
        assert_eq!(channels(&d), want, "{a:?}");
    }
    // A pre-notice attempt says nothing about the code's channels.
    let mut notice = attempt(Sms, Interrupted, None);
    notice.purpose = AttemptPurpose::Prenotice;
    assert_eq!(
        channels(&decide(&rules(), &input(&none, &[notice], BOTH_UP))).len(),
        2
    );
    for receipt in [None, Some(ReceiptKind::Sent), Some(ReceiptKind::Delivered)] {
        let sent = [attempt(WhatsApp, Accepted, receipt)];
        assert_eq!(
            decide(&rules(), &input(&none, &sent, BOTH_UP)),
            Decision::AlreadySent(WhatsApp)
        );
    }
    let both = [
        attempt(WhatsApp, FallBack, None),
        attempt(Sms, Unknown, None),
    ];
    assert!(matches!(
        decide(&rules(), &input(&none, &both, BOTH_UP)),
        Decision::End(End::Fail(_))
    ));
}

#[test]
fn expiry_comes_first_and_wiped_content_fails_only_a_live_unsent_message() {
    let r = RecipientInfo::default();
    let mut i = input(&r, &[], BOTH_UP);
    i.message.has_content = false;
    i.now = Timestamp(300_000);
    assert_eq!(decide(&rules(), &i), Decision::End(End::Expire));
    i.now = Timestamp(0);
    assert!(matches!(decide(&rules(), &i), Decision::End(End::Fail(_))));
    let sent = [attempt(ChannelKind::Sms, AttemptEnd::Accepted, None)];
    i.attempts = &sent;
    assert_eq!(
        decide(&rules(), &i),
        Decision::AlreadySent(ChannelKind::Sms)
    );
}

#[test]
fn health_budgets_and_the_callers_restriction() {
    let r = RecipientInfo::default();
    let wa_down = [(ChannelKind::WhatsApp, false), (ChannelKind::Sms, true)];
    let d = decide(&rules(), &input(&r, &[], &wa_down));
    assert_eq!(channels(&d), vec![ChannelKind::Sms]);
    assert!(!prenotice(&d), "no pre-notice when WhatsApp is not tried");
    let all_down = [(ChannelKind::WhatsApp, false), (ChannelKind::Sms, false)];
    assert!(matches!(
        decide(&rules(), &input(&r, &[], &all_down)),
        Decision::Wait {
            retry_at: Timestamp(5000),
            ..
        }
    ));
    let mut late = input(&r, &[], &all_down);
    late.now = Timestamp(298_000);
    assert!(
        matches!(
            decide(&rules(), &late),
            Decision::Wait {
                retry_at: Timestamp(300_000),
                ..
            }
        ),
        "never waits past the lifetime"
    );
    let mut i = input(&r, &[], BOTH_UP);
    i.now = Timestamp(296_000);
    let Decision::Send { steps, .. } = decide(&rules(), &i) else {
        unreachable!()
    };
    assert_eq!(
        steps[0].budget,
        Duration::from_secs(4),
        "no more than the life left"
    );
    assert_eq!(steps[1].budget, Duration::from_secs(4));
    let mut only = input(&r, &[], BOTH_UP);
    only.message.only_channel = Some(ChannelKind::Sms);
    assert_eq!(channels(&decide(&rules(), &only)), vec![ChannelKind::Sms]);
    let sms_only = [(ChannelKind::Sms, true)];
    assert_eq!(
        channels(&decide(&rules(), &input(&r, &[], &sms_only))),
        vec![ChannelKind::Sms]
    );
}

#[test]
fn admission_refuses_what_no_channel_may_carry() {
    let india = ["IN".to_string()];
    let wa = ["IN".to_string(), "ID".to_string()];
    let r = Rules {
        sms_countries: &india,
        whatsapp_countries: &wa,
        ..rules()
    };
    let ok = |r: &Rules<'_>, c, k| admit_by(r, Some(c), k, BOTH, None);
    assert!(ok(&r, "IN", MessageKind::Code).is_ok());
    assert!(
        ok(&r, "ID", MessageKind::Code).is_ok(),
        "WhatsApp may carry it"
    );
    assert_eq!(
        ok(&r, "ID", MessageKind::Text).unwrap_err().code,
        "country_not_allowed"
    );
    assert_eq!(
        ok(&r, "DE", MessageKind::Code).unwrap_err().code,
        "country_not_allowed"
    );
    let id_only = ["ID".to_string()];
    let narrow = Rules {
        client_countries: Some(&id_only),
        ..r
    };
    let e = ok(&narrow, "IN", MessageKind::Code).unwrap_err();
    assert!(
        e.message.contains("client adfs may not send to IN"),
        "{e:?}"
    );
    let e = admit_by(
        &r,
        Some("ID"),
        MessageKind::Code,
        BOTH,
        Some(ChannelKind::Sms),
    )
    .unwrap_err();
    assert!(e.message.contains("sms may not carry it"), "{e:?}");
}

/// One outcome of each class, with codes and reasons that must not matter to the verdict.
fn outcomes() -> Vec<(&'static str, Outcome)> {
    vec![
        (
            "accepted",
            Outcome::Accepted {
                provider_id: "p".into(),
            },
        ),
        (
            "not_on",
            Outcome::FallBack {
                code: Some("131026".into()),
                reason: "r".into(),
                not_on_channel: true,
            },
        ),
        (
            "fallback",
            Outcome::FallBack {
                code: None,
                reason: "r".into(),
                not_on_channel: false,
            },
        ),
        (
            "retry",
            Outcome::Retry {
                after: Duration::from_secs(30),
                code: None,
                reason: "r".into(),
            },
        ),
        (
            "down",
            Outcome::ChannelDown {
                code: None,
                reason: "r".into(),
            },
        ),
        (
            "failed",
            Outcome::Failed {
                code: None,
                reason: "bad number".into(),
            },
        ),
        (
            "unknown",
            Outcome::Unknown {
                reason: "timeout".into(),
            },
        ),
    ]
}

/// A verdict in a few words, so the table below reads as a table.
fn say(v: &Verdict) -> String {
    let end = match &v.end {
        None => "next".to_string(),
        Some(End::Sent {
            channel,
            watch_until,
        }) => match watch_until {
            Some(t) => format!("sent {channel} watch {}", t.0),
            None => format!("sent {channel}"),
        },
        Some(End::Requeue { at, .. }) => format!("requeue {}", at.0),
        Some(End::Expire) => "expire".into(),
        Some(End::Fail(_)) => "fail".into(),
    };
    let memo = if v.no_whatsapp_until.is_some() {
        " +memo"
    } else {
        ""
    };
    format!("{end}{memo} {}", v.fallback.unwrap_or("-"))
}

#[test]
fn every_outcome_on_every_step_has_one_meaning() {
    use ChannelKind::*;
    // (outcome, channel, another step follows) -> verdict. Now = 10 s, expiry = 300 s.
    let table: &[(&str, ChannelKind, bool, &str)] = &[
        // Without receipts or a verification nothing can follow an acceptance.
        ("accepted", WhatsApp, true, "sent whatsapp -"),
        ("accepted", WhatsApp, false, "sent whatsapp -"),
        ("accepted", Sms, false, "sent sms -"),
        ("not_on", WhatsApp, true, "next +memo not_on_whatsapp"),
        ("not_on", WhatsApp, false, "fail +memo -"),
        ("not_on", Sms, true, "next recipient_unreachable"),
        ("fallback", WhatsApp, true, "next recipient_unreachable"),
        ("fallback", Sms, false, "fail -"),
        ("retry", WhatsApp, true, "next retry_exhausted"),
        ("retry", Sms, false, "requeue 40000 -"),
        ("down", WhatsApp, true, "next channel_down"),
        ("down", Sms, false, "requeue 15000 -"),
        ("failed", WhatsApp, true, "fail -"),
        ("failed", Sms, false, "fail -"),
        ("unknown", WhatsApp, true, "next unknown_outcome"),
        ("unknown", Sms, false, "fail -"),
    ];
    let all = outcomes();
    for (name, ch, more, want) in table {
        let outcome = &all.iter().find(|(n, _)| n == name).unwrap().1;
        let a = Attempted {
            channel: *ch,
            more: *more,
            kind: MessageKind::Code,
            expires_at: Timestamp(300_000),
            earlier_retries: 0,
            prenotice: false,
            verification: None,
        };
        let v = after_attempt(&rules(), a, outcome, Timestamp(10_000));
        assert_eq!(say(&v), *want, "{name} on {ch}, more = {more}");
    }
    // Every outcome class appears in the table on a last and a non-last step.
    for (name, _) in &all {
        for more in [true, false] {
            assert!(
                table.iter().any(|(n, _, m, _)| n == name && *m == more),
                "{name} more={more} missing from the table"
            );
        }
    }
}

#[test]
fn the_lifetime_bounds_every_verdict() {
    let all = outcomes();
    let near = |more| Attempted {
        channel: ChannelKind::Sms,
        more,
        kind: MessageKind::Code,
        expires_at: Timestamp(300_000),
        earlier_retries: 0,
        prenotice: false,
        verification: None,
    };
    let verdict = |name: &str, more, now| {
        let o = &all.iter().find(|(n, _)| *n == name).unwrap().1;
        say(&after_attempt(&rules(), near(more), o, Timestamp(now)))
    };
    // A retry or a wait that would land past the expiry expires instead.
    assert_eq!(verdict("retry", false, 280_000), "expire -");
    assert_eq!(verdict("down", false, 296_000), "expire -");
    assert_eq!(verdict("down", false, 294_000), "requeue 299000 -");
    // Moving on with no life left expires rather than starting another channel.
    for name in ["fallback", "retry", "down", "unknown"] {
        assert_eq!(verdict(name, true, 300_000), "expire -", "{name}");
    }
    // Text is never kept for a later channel: only a code can fall back after acceptance.
    let text = Attempted {
        kind: MessageKind::Text,
        ..near(true)
    };
    let v = after_attempt(&rules(), text, &all[0].1, Timestamp(0));
    assert_eq!(say(&v), "sent sms -");
}

#[test]
fn retries_of_one_message_wait_longer_each_time_up_to_a_ceiling() {
    let retry = Outcome::Retry {
        after: Duration::from_secs(5),
        code: None,
        reason: "5xx".into(),
    };
    let wait = |earlier_retries| {
        let a = Attempted {
            channel: ChannelKind::WhatsApp,
            more: false,
            kind: MessageKind::Code,
            expires_at: Timestamp(3_600_000),
            earlier_retries,
            prenotice: false,
            verification: None,
        };
        match after_attempt(&rules(), a, &retry, Timestamp(0)).end {
            Some(End::Requeue { at, .. }) => at.0 / 1000,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!([0, 1, 2, 3, 4, 40].map(wait), [5, 10, 20, 40, 60, 60]);
}

#[test]
fn receipts_fall_back_only_for_a_fresh_failure_of_a_live_sent_message() {
    use MessageState as S;
    use ReceiptKind as K;
    let r = |kind, changed, state, expires_at| AfterReceipt {
        channel: ChannelKind::WhatsApp,
        kind,
        not_on_channel: false,
        purpose: AttemptPurpose::Code,
        changed,
        state,
        carried_by: Some(ChannelKind::WhatsApp),
        expires_at: Timestamp(expires_at),
        notice_allowed: true,
    };
    let now = Timestamp(1_000);
    let v = after_receipt(&rules(), r(K::Failed, true, S::Sent, 2_000), now);
    assert_eq!(
        v.fall_back.as_deref(),
        Some("whatsapp reported the send as failed")
    );
    assert_eq!(v.no_whatsapp_until, None, "no 131026: nothing to remember");
    let nothing = [
        r(K::Failed, false, S::Sent, 2_000),     // a repeated receipt
        r(K::Failed, true, S::Sent, 1_000),      // the code is dead
        r(K::Failed, true, S::Delivered, 2_000), // already delivered
        r(K::Failed, true, S::Queued, 2_000),    // already falling back
        r(K::Failed, true, S::Failed, 2_000),
        // The SMS fallback went out: a late failure only updates the record.
        AfterReceipt {
            carried_by: Some(ChannelKind::Sms),
            ..r(K::Failed, true, S::Sent, 2_000)
        },
        // A receipt for the pre-notice says nothing about the code.
        AfterReceipt {
            purpose: AttemptPurpose::Prenotice,
            ..r(K::Failed, true, S::Sent, 2_000)
        },
        r(K::Sent, true, S::Sent, 2_000),
        r(K::Pending, true, S::Sent, 2_000),
    ];
    for x in nothing {
        assert_eq!(after_receipt(&rules(), x, now).fall_back, None, "{x:?}");
    }
    // A repeated receipt teaches nothing either.
    let again = r(K::Failed, false, S::Sent, 2_000);
    assert_eq!(
        after_receipt(&rules(), again, now),
        ReceiptVerdict::default()
    );
}

#[test]
fn a_failed_receipt_with_131026_is_remembered_like_a_synchronous_one() {
    let failed = AfterReceipt {
        channel: ChannelKind::WhatsApp,
        kind: ReceiptKind::Failed,
        not_on_channel: true,
        purpose: AttemptPurpose::Code,
        changed: true,
        state: MessageState::Sent,
        carried_by: Some(ChannelKind::WhatsApp),
        expires_at: Timestamp(300_000),
        notice_allowed: true,
    };
    let now = Timestamp(10_000);
    let v = after_receipt(&rules(), failed, now);
    // The same memory a synchronous 131026 leaves (see the after_attempt table).
    let sync = Outcome::FallBack {
        code: Some("131026".into()),
        reason: "not on whatsapp".into(),
        not_on_channel: true,
    };
    let a = Attempted {
        channel: ChannelKind::WhatsApp,
        more: true,
        kind: MessageKind::Code,
        expires_at: Timestamp(300_000),
        earlier_retries: 0,
        prenotice: true,
        verification: None,
    };
    let by_attempt = after_attempt(&rules(), a, &sync, now);
    assert_eq!(v.no_whatsapp_until, Some(Timestamp(3_610_000)));
    assert_eq!(v.no_whatsapp_until, by_attempt.no_whatsapp_until);
    assert!(v.fall_back.is_some());
    // Either way the number's first WhatsApp code failed: no pre-notice, ever.
    assert_eq!(v.learned.first_whatsapp, Some(FirstWhatsApp::Failed));
    assert_eq!(
        by_attempt.learned.first_whatsapp,
        Some(FirstWhatsApp::Failed)
    );
    assert!(!v.learned.prenotice_due && !by_attempt.learned.prenotice_due);
}

#[test]
fn a_confirmed_whatsapp_code_brings_the_prenotice_when_sms_may_carry_it() {
    let with = Rules {
        receipts: true,
        ..rules()
    };
    let receipt = |kind, notice_allowed| AfterReceipt {
        channel: ChannelKind::WhatsApp,
        kind,
        not_on_channel: false,
        purpose: AttemptPurpose::Code,
        changed: true,
        state: MessageState::Delivered,
        carried_by: Some(ChannelKind::WhatsApp),
        expires_at: Timestamp(300_000),
        notice_allowed,
    };
    let now = Timestamp(1_000);
    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
        let v = after_receipt(&with, receipt(kind, true), now);
        assert_eq!(v.learned.first_whatsapp, Some(FirstWhatsApp::Confirmed));
        assert!(v.learned.prenotice_due, "{kind:?}");
        assert_eq!(v.fall_back, None);
        let v = after_receipt(&with, receipt(kind, false), now);
        assert!(!v.learned.prenotice_due, "sms may not carry it");
    }
    let sent = after_receipt(&with, receipt(ReceiptKind::Sent, true), now);
    assert_eq!(sent, ReceiptVerdict::default(), "sent is not delivered");
    // With receipts the Cloud API's 200 confirms nothing; without them it is all there is.
    let accepted = Outcome::Accepted {
        provider_id: "wamid.1".into(),
    };
    let a = Attempted {
        channel: ChannelKind::WhatsApp,
        more: true,
        kind: MessageKind::Code,
        expires_at: Timestamp(300_000),
        earlier_retries: 0,
        prenotice: true,
        verification: None,
    };
    let v = after_attempt(&with, a, &accepted, now);
    assert_eq!(v.learned, Learned::default());
    let v = after_attempt(&rules(), a, &accepted, now);
    assert_eq!(
        v.learned,
        Learned {
            first_whatsapp: Some(FirstWhatsApp::Confirmed),
            prenotice_due: true,
            unconfirmed: Some((now, Timestamp(300_000))),
            sms_until: None,
        }
    );
    // A number whose first WhatsApp code failed is not planned a notice.
    let failed_first = RecipientInfo {
        first_whatsapp: Some(FirstWhatsApp::Failed),
        ..Default::default()
    };
    let d = decide(&rules(), &input(&failed_first, &[], BOTH_UP));
    assert_eq!(channels(&d), vec![ChannelKind::WhatsApp, ChannelKind::Sms]);
    assert!(!prenotice(&d));
}

#[test]
fn with_receipts_an_accepted_whatsapp_code_is_watched_until_its_delivery_deadline() {
    use ChannelKind::*;
    let with = Rules {
        receipts: true,
        ..rules()
    };
    let accepted = Outcome::Accepted {
        provider_id: "wamid.1".into(),
    };
    let a = |more, expires_at| Attempted {
        channel: WhatsApp,
        more,
        kind: MessageKind::Code,
        expires_at: Timestamp(expires_at),
        earlier_retries: 0,
        prenotice: false,
        verification: None,
    };
    let now = Timestamp(10_000);
    let say_at = |a| say(&after_attempt(&with, a, &accepted, now));
    assert_eq!(say_at(a(true, 300_000)), "sent whatsapp watch 25000 -");
    // Capped by the lifetime: the code is kept for a failure receipt until it dies.
    assert_eq!(say_at(a(true, 20_000)), "sent whatsapp watch 20000 -");
    // No SMS step to fall back to: nothing to watch for.
    assert_eq!(say_at(a(false, 300_000)), "sent whatsapp -");

    // The claim loop brings it back: before the deadline it is watched again, at it the
    // same code goes by SMS and WhatsApp is recorded as passed over, once.
    let none = RecipientInfo::default();
    let mut sent = attempt(WhatsApp, AttemptEnd::Accepted, Some(ReceiptKind::Sent));
    sent.ended_at = Some(Timestamp(10_000));
    let history = [sent.clone()];
    let mut i = input(&none, &history, BOTH_UP);
    i.now = Timestamp(20_000);
    assert_eq!(
        decide(&with, &i),
        Decision::Watch {
            channel: WhatsApp,
            until: Timestamp(25_000)
        }
    );
    i.now = Timestamp(25_000);
    let d = decide(&with, &i);
    assert_eq!(channels(&d), vec![Sms]);
    let Decision::Send {
        escalated: Some(e), ..
    } = &d
    else {
        panic!("{d:?}")
    };
    assert_eq!(e.reason, "no_receipt");
    assert!(e.detail.contains("15s"), "{}", e.detail);
    assert_eq!(e.learned.first_whatsapp, Some(FirstWhatsApp::Failed));
    // Delivered meanwhile (a receipt), or the SMS went out: nothing more.
    for later in [
        vec![attempt(
            WhatsApp,
            AttemptEnd::Accepted,
            Some(ReceiptKind::Read),
        )],
        vec![sent.clone(), attempt(Sms, AttemptEnd::Accepted, None)],
    ] {
        let mut j = input(&none, &later, BOTH_UP);
        j.now = Timestamp(25_000);
        assert!(
            matches!(decide(&with, &j), Decision::AlreadySent(_)),
            "{later:?}"
        );
    }
    // Past its lifetime the watched code is simply sent (not expired), and wiped.
    i.now = Timestamp(300_000);
    assert_eq!(decide(&with, &i), Decision::AlreadySent(WhatsApp));
    // No SMS may carry it: it stays sent on WhatsApp rather than failing.
    let sms_down_forever = [(WhatsApp, true)];
    let mut k = input(&none, &history, &sms_down_forever);
    k.now = Timestamp(25_000);
    assert_eq!(decide(&with, &k), Decision::AlreadySent(WhatsApp));
}

#[test]
fn an_unchecked_verification_escalates_to_sms_once() {
    use ChannelKind::*;
    let escalating = Rules {
        escalate_after: Some(Duration::from_secs(60)),
        ..rules()
    };
    let accepted = Outcome::Accepted {
        provider_id: "wamid.1".into(),
    };
    let a = |verification| Attempted {
        channel: WhatsApp,
        more: true,
        kind: MessageKind::Code,
        expires_at: Timestamp(300_000),
        earlier_retries: 0,
        prenotice: false,
        verification,
    };
    let now = Timestamp(10_000);
    let v = after_attempt(&escalating, a(Some(true)), &accepted, now);
    assert_eq!(say(&v), "sent whatsapp watch 70000 -");
    let v = after_attempt(&escalating, a(None), &accepted, now);
    assert_eq!(say(&v), "sent whatsapp -", "not a verification");

    let none = RecipientInfo::default();
    let mut sent = attempt(WhatsApp, AttemptEnd::Accepted, None);
    sent.ended_at = Some(now);
    let history = [sent.clone()];
    let mut i = input(&none, &history, BOTH_UP);
    i.message.verification = Some(true);
    i.now = Timestamp(70_000);
    let d = decide(&escalating, &i);
    assert_eq!(channels(&d), vec![Sms]);
    assert!(matches!(
        &d,
        Decision::Send { escalated: Some(e), .. } if e.reason == "unchecked_verification"
    ));
    // Checked (approved, canceled) meanwhile: nothing.
    i.message.verification = Some(false);
    assert_eq!(decide(&escalating, &i), Decision::AlreadySent(WhatsApp));
    // Once: after the SMS went, the latest acceptance is the SMS and nothing follows it.
    let both = [sent, attempt(Sms, AttemptEnd::Accepted, None)];
    let mut j = input(&none, &both, BOTH_UP);
    j.message.verification = Some(true);
    j.now = Timestamp(200_000);
    assert_eq!(decide(&escalating, &j), Decision::AlreadySent(Sms));
}

#[test]
fn without_receipts_a_repeated_request_for_an_unconfirmed_code_goes_by_sms() {
    use ChannelKind::*;
    let waiting = RecipientInfo {
        unconfirmed: Some((Timestamp(20_000), Timestamp(100_000))),
        ..Default::default()
    };
    let mut i = input(&waiting, &[], BOTH_UP);
    // Asked again at once (a double submit): WhatsApp still; after the deadline: SMS.
    i.now = Timestamp(34_999);
    assert_eq!(channels(&decide(&rules(), &i)), vec![WhatsApp, Sms]);
    i.now = Timestamp(50_000);
    let d = decide(&rules(), &i);
    assert_eq!(channels(&d), vec![Sms]);
    let Decision::Send {
        escalated: Some(e), ..
    } = &d
    else {
        panic!("{d:?}")
    };
    assert_eq!(e.reason, "asked_again");
    assert_eq!(e.learned.sms_until, Some(Timestamp(50_000 + 86_400_000)));
    // The earlier code died unconfirmed: nothing to escalate.
    i.now = Timestamp(100_000);
    assert_eq!(channels(&decide(&rules(), &i)), vec![WhatsApp, Sms]);
    // With receipts the delivery deadline does this job.
    let with = Rules {
        receipts: true,
        ..rules()
    };
    i.now = Timestamp(50_000);
    assert_eq!(channels(&decide(&with, &i)), vec![WhatsApp, Sms]);
    // Routed to SMS for a while, then back to WhatsApp.
    let routed = RecipientInfo {
        sms_until: Some(Timestamp(86_450_000)),
        ..Default::default()
    };
    let mut j = input(&routed, &[], BOTH_UP);
    j.message.expires_at = Timestamp(100_000_000);
    j.now = Timestamp(1_000_000);
    let d = decide(&rules(), &j);
    assert_eq!(channels(&d), vec![Sms]);
    assert!(
        matches!(&d, Decision::Send { escalated: None, skipped, .. } if skipped.iter().any(|(c, w)| *c == WhatsApp && w.contains("asked again")))
    );
    j.now = Timestamp(86_450_000);
    assert_eq!(channels(&decide(&rules(), &j)), vec![WhatsApp, Sms]);
    // SMS not allowed: WhatsApp keeps the code rather than nothing carrying it.
    let wa_only = [(WhatsApp, true)];
    let mut k = input(&waiting, &[], &wa_only);
    k.now = Timestamp(50_000);
    assert_eq!(channels(&decide(&rules(), &k)), vec![WhatsApp]);
}

/// A modem restarting while a code is planned must not cost the code its safety net: SMS stays
/// in the plan after WhatsApp, and if it is still down when reached the message waits for it.
#[test]
fn a_down_channel_after_a_usable_one_stays_in_the_plan() {
    let r = RecipientInfo::default();
    let sms_down = [(ChannelKind::WhatsApp, true), (ChannelKind::Sms, false)];
    let d = decide(&rules(), &input(&r, &[], &sms_down));
    assert_eq!(channels(&d), vec![ChannelKind::WhatsApp, ChannelKind::Sms]);
    // Reached and still down: back to the queue, not failed.
    let a = Attempted {
        channel: ChannelKind::Sms,
        more: false,
        kind: MessageKind::Code,
        expires_at: Timestamp(300_000),
        earlier_retries: 0,
        prenotice: false,
        verification: None,
    };
    let down = Outcome::ChannelDown {
        code: None,
        reason: "no modem ready".into(),
    };
    assert!(matches!(
        after_attempt(&rules(), a, &down, Timestamp(10_000)).end,
        Some(End::Requeue { .. })
    ));
    // On a pair, the node without a modem hands the step back at once.
    let elsewhere = Outcome::Retry {
        after: Duration::ZERO,
        code: None,
        reason: "no sms channel on this node".into(),
    };
    assert_eq!(
        after_attempt(&rules(), a, &elsewhere, Timestamp(10_000)).end,
        Some(End::Requeue {
            at: Timestamp(10_000),
            reason: "sms busy; retrying".into()
        })
    );
    // A down channel first is skipped in favour of a usable one behind it.
    let wa_down = [(ChannelKind::WhatsApp, false), (ChannelKind::Sms, true)];
    assert_eq!(
        channels(&decide(&rules(), &input(&r, &[], &wa_down))),
        vec![ChannelKind::Sms]
    );
}
