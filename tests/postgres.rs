//! The PostgreSQL backend against a real server (Debian's `postgresql`, started here in a
//! temporary directory on loopback): migrations raced by two nodes and the "newer than me"
//! guard, `sslmode` with real TLS, and the exactness the pair relies on (limits and
//! idempotency keys across two nodes' pools). Each test makes its own database on its own
//! server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/postgres.rs"]
mod postgres;

use std::time::Duration;

use otpgate::clock::Timestamp;
use otpgate::config::{PostgresConfig, Rate, split_postgres_url};
use otpgate::domain::{Content, E164, MessageId};
use otpgate::store::postgres::{PgStore, schema};
use otpgate::store::{InsertResult, LimitScope, NewMessage};
use postgres::Postgres;

fn cfg(url: &str, node: &str) -> PostgresConfig {
    let (url, sslmode) = split_postgres_url(url).unwrap();
    PostgresConfig {
        url,
        password: None,
        password_file: None,
        sslmode,
        ca_file: None,
        pool_size: 4,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(10),
        node: node.into(),
        lease: Duration::from_secs(30),
    }
}

fn msg(id: &str, to: &str, at: i64, key: Option<&str>) -> NewMessage {
    NewMessage {
        id: MessageId::new(id),
        client: "c".into(),
        recipient: E164::new(to).unwrap(),
        country: Some("IN".into()),
        content: Content::Code {
            code: "123456".into(),
            sms_text: "123456 is your code".into(),
        },
        locale: None,
        reference: None,
        idempotency_key: key.map(Into::into),
        created_at: Timestamp(at),
        expires_at: Timestamp(at + 300_000),
        only_channel: None,
    }
}

#[tokio::test]
async fn two_nodes_migrate_at_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::start(false);
    pg.create_db("m").await;
    let url = format!("{}?sslmode=disable", pg.url("m"));
    let (ca, cb) = (cfg(&url, "a"), cfg(&url, "b"));
    let (a, b) = tokio::join!(PgStore::open(&ca), PgStore::open(&cb));
    let (a, _b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.schema_version().await.unwrap(), schema::CURRENT_VERSION);
    // `otpgate migrate` on an up-to-date database changes nothing.
    let (from, to) = PgStore::migrate(&cfg(&url, "a")).await.unwrap();
    assert_eq!(
        (from, to),
        (schema::CURRENT_VERSION, schema::CURRENT_VERSION)
    );
    a.ping().await.unwrap();
    pg.client("m")
        .await
        .batch_execute("UPDATE otpgate_schema SET version = 99")
        .await
        .unwrap();
    let err = PgStore::open(&cfg(&url, "c")).await.unwrap_err();
    assert!(
        err.to_string().contains("schema version 99 is newer"),
        "{err}"
    );
}

#[tokio::test]
async fn sslmode_is_honoured_with_real_tls() {
    let pki = otpgate::sim::tls::TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_files(dir.path()).unwrap();
    let pg = Postgres::start_with(
        false,
        Some(postgres::ServerTls {
            cert: &files.cert,
            key: &files.key,
        }),
    );
    pg.create_db("t").await;
    let stranger = otpgate::sim::tls::TestPki::new().unwrap();
    let stranger_ca = dir.path().join("stranger.pem");
    std::fs::write(&stranger_ca, stranger.ca_pem()).unwrap();
    let try_open = |host: &str, mode: &str, ca: Option<&std::path::Path>| {
        let mut c = cfg(
            &format!("postgres://otpgate@{host}:{}/t?sslmode={mode}", pg.port),
            "a",
        );
        c.ca_file = ca.map(Into::into);
        async move { PgStore::open(&c).await.map(|_| ()) }
    };
    // The certificate names 127.0.0.1 but not 127.0.0.2.
    try_open("127.0.0.1", "verify-full", Some(&files.ca))
        .await
        .unwrap();
    let wrong_name = try_open("127.0.0.2", "verify-full", Some(&files.ca)).await;
    assert!(
        wrong_name.is_err(),
        "verify-full accepted a name not in the certificate"
    );
    try_open("127.0.0.2", "verify-ca", Some(&files.ca))
        .await
        .unwrap();
    let wrong_ca = try_open("127.0.0.1", "verify-ca", Some(&stranger_ca)).await;
    assert!(
        wrong_ca.is_err(),
        "verify-ca accepted a certificate from another CA"
    );
    // The webpki roots do not know the test CA.
    let public_roots = try_open("127.0.0.1", "verify-full", None).await;
    assert!(public_roots.is_err());
    // require and prefer encrypt without checking, as libpq does.
    try_open("127.0.0.2", "require", None).await.unwrap();
    try_open("127.0.0.1", "prefer", None).await.unwrap();
    let mut full = cfg(
        &format!(
            "postgres://otpgate@127.0.0.1:{}/t?sslmode=verify-full",
            pg.port
        ),
        "a",
    );
    full.ca_file = Some(files.ca.clone());
    let kept = PgStore::open(&full).await.unwrap();
    kept.ping().await.unwrap();
    let ssl: Option<bool> = pg
        .client("t")
        .await
        .query_one(
            "SELECT bool_or(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE application_name = 'otpgate/a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ssl, Some(true), "otpgate's connections were not encrypted");
}

#[tokio::test]
async fn limits_and_idempotency_keys_hold_across_two_nodes() {
    let pg = Postgres::start(false);
    pg.create_db("x").await;
    let url = format!("{}?sslmode=disable", pg.url("x"));
    let a = PgStore::open(&cfg(&url, "a")).await.unwrap();
    let b = PgStore::open(&cfg(&url, "b")).await.unwrap();
    let five = Rate {
        count: 5,
        window: Duration::from_secs(900),
    };
    let limits = vec![(LimitScope::Recipient, five)];
    // Twelve requests for one number at once, alternating between the nodes.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let limits = limits.clone();
        tasks.push(tokio::spawn(async move {
            node.insert(
                msg(&format!("r{i}"), "+919800000001", 1_000_000 + i, None),
                limits,
                vec![],
            )
            .await
            .unwrap()
            .unwrap()
        }));
    }
    let (mut created, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            InsertResult::Created(_) => created += 1,
            InsertResult::Limited { scope, retry_after } => {
                assert_eq!(scope, LimitScope::Recipient);
                assert!(retry_after > Duration::from_secs(800), "{retry_after:?}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((created, limited), (5, 7));
    // Another number is not affected.
    let other = b
        .insert(
            msg("o1", "+919800000002", 1_000_100, None),
            limits.clone(),
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(other, InsertResult::Created(_)));
    assert_eq!(a.queue_depth().await.unwrap(), 6);

    // One key, sent to both nodes at once: one message.
    let (x, y) = tokio::join!(
        a.insert(
            msg("k-a", "+919800000003", 1_000_200, Some("K1")),
            vec![],
            vec![]
        ),
        b.insert(
            msg("k-b", "+919800000003", 1_000_200, Some("K1")),
            vec![],
            vec![]
        )
    );
    let id = |r: &InsertResult| match r {
        InsertResult::Created(m) | InsertResult::Existing(m) => m.id.to_string(),
        other => panic!("{other:?}"),
    };
    let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
    assert_eq!(id(&x), id(&y));
    assert_eq!(
        [&x, &y]
            .iter()
            .filter(|r| matches!(r, InsertResult::Created(_)))
            .count(),
        1
    );
    let conflict = b
        .insert(
            msg("k-c", "+919800000004", 1_000_300, Some("K1")),
            vec![],
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(conflict, InsertResult::KeyConflict));
    // What one node accepted, the other reads.
    let (m, attempts) = b.get(&id(&x), "c").await.unwrap().unwrap();
    assert_eq!(&*m.recipient, "+919800000003");
    assert!(attempts.is_empty());
    assert!(a.get(&id(&x), "other").await.unwrap().is_none());
}

async fn pair(pg: &Postgres, db: &str) -> (PgStore, PgStore) {
    pg.create_db(db).await;
    let url = format!("{}?sslmode=disable", pg.url(db));
    let a = PgStore::open(&cfg(&url, "a")).await.unwrap();
    let b = PgStore::open(&cfg(&url, "b")).await.unwrap();
    (a, b)
}

#[tokio::test]
async fn nodes_share_the_queue_and_take_over_an_expired_lease_without_repeating_its_channel() {
    use otpgate::channel::{Outcome, ReceiptStatus};
    use otpgate::domain::{AttemptEnd, ChannelKind, MessageState};
    use otpgate::store::{AttemptRow, Move, Settlement};
    let pg = Postgres::start(false);
    let (a, b) = pair(&pg, "q").await;
    for i in 0..20 {
        let m = msg(
            &format!("q{i:02}"),
            &format!("+9198000001{i:02}"),
            1_000,
            None,
        );
        a.insert(m, vec![], vec![]).await.unwrap().unwrap();
    }
    // Both nodes claim at once: every message once, none twice.
    let (x, y) = tokio::join!(
        a.claim_due(Timestamp(2_000), 15, true),
        b.claim_due(Timestamp(2_000), 15, true)
    );
    let (x, y) = (x.unwrap().0, y.unwrap().0);
    assert_eq!(x.len() + y.len(), 20, "{} + {}", x.len(), y.len());
    let mut ids: Vec<String> = x.iter().chain(&y).map(|m| m.id.to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);

    // Node a departs a WhatsApp attempt for one of its messages, then dies (no heartbeat).
    let lost = &x[0];
    let att = a
        .depart_attempt(&lost.id, ChannelKind::WhatsApp, Timestamp(2_100))
        .await
        .unwrap()
        .unwrap();
    // b's heartbeat keeps b's leases; a's run out after 30 s.
    b.heartbeat(Timestamp(31_000), false).await.unwrap();
    let (taken, _) = b.claim_due(Timestamp(33_000), 100, false).await.unwrap();
    // a's messages came back to the queue; b (no modem) claims only WhatsApp steps, and the
    // one whose WhatsApp attempt was interrupted is now an SMS step: left for a modem.
    assert!(
        !taken.iter().any(|m| m.id == lost.id),
        "an SMS step went to a node without a modem"
    );
    assert_eq!(taken.len(), x.len() - 1);
    let atts = b.attempts(&lost.id).await.unwrap();
    assert_eq!(atts[0].end, Some(AttemptEnd::Interrupted));
    // Nobody owns it now: a late settle from the node that lost it moves nothing.
    a.finish(
        &lost.id,
        MessageState::Failed,
        None,
        None,
        false,
        Timestamp(33_000),
    )
    .await
    .unwrap();
    assert_eq!(
        b.state(&lost.id).await.unwrap().unwrap().0,
        MessageState::Queued
    );
    let (with_modem, _) = a.claim_due(Timestamp(33_000), 100, true).await.unwrap();
    assert!(with_modem.iter().any(|m| m.id == lost.id));

    // b sends one over WhatsApp; the receipt lands on a and applies to the shared row.
    let m = &taken[0];
    let t = b
        .depart_attempt(&m.id, ChannelKind::WhatsApp, Timestamp(34_000))
        .await
        .unwrap()
        .unwrap();
    let accepted = Outcome::Accepted {
        provider_id: "wamid.X1".into(),
    };
    let watch = Move::Watch {
        channel: ChannelKind::WhatsApp,
        until: Timestamp(60_000),
    };
    let s = Settlement {
        attempt: Some((AttemptRow::Departed(t), accepted)),
        no_whatsapp_until: None,
        learned: Default::default(),
        movement: watch,
    };
    b.settle(m, s, Timestamp(34_100)).await.unwrap();
    let eff = a
        .apply_receipt(
            ChannelKind::WhatsApp,
            "wamid.X1".into(),
            ReceiptStatus::Delivered,
            Timestamp(35_000),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(eff.newly_delivered);
    let (done, _) = b.get(&m.id, "c").await.unwrap().unwrap();
    assert_eq!(done.state, MessageState::Delivered);
    assert!(done.content.is_none(), "the code was not wiped");
    // A's stale attempt still gets its end recorded: the log stays truthful.
    let ok = Outcome::Accepted {
        provider_id: "wamid.LATE".into(),
    };
    a.finish_attempt(att, &ok, Timestamp(36_000)).await.unwrap();
    let atts = a.attempts(&lost.id).await.unwrap();
    assert_eq!(atts[0].provider_id.as_deref(), Some("wamid.LATE"));
    assert_eq!(
        a.nodes().await.unwrap().len(),
        1,
        "only b has sent a heartbeat"
    );
}

#[tokio::test]
async fn a_verification_made_on_one_node_is_checked_on_the_other_and_the_prenotice_goes_once() {
    use otpgate::store::{CheckOutcome, NewVerification};
    let pg = Postgres::start(false);
    let (a, b) = pair(&pg, "v").await;
    let hash = [7u8; 32];
    let v = NewVerification {
        id: "VE1".into(),
        code_hash: hash,
        length: 6,
        channel: None,
        message: msg("vm1", "+919800000501", 1_000, None),
    };
    assert!(matches!(
        a.create_verification(v, vec![], vec![])
            .await
            .unwrap()
            .unwrap(),
        InsertResult::Created(_)
    ));
    // Five wrong codes spread over both nodes at once: exactly max_attempts counted.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            node.check_verification("VE1", "c", [i as u8; 32], 5, Timestamp(2_000))
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let denied = outcomes
        .iter()
        .filter(|o| matches!(o, CheckOutcome::Denied { .. }))
        .count();
    assert_eq!(denied, 4, "{outcomes:?}");
    assert_eq!(
        b.verification("VE1", "c").await.unwrap().unwrap().attempts,
        5
    );
    let v2 = NewVerification {
        id: "VE2".into(),
        code_hash: hash,
        length: 6,
        channel: None,
        message: msg("vm2", "+919800000502", 1_000, None),
    };
    a.create_verification(v2, vec![], vec![])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.check_verification("VE2", "c", hash, 5, Timestamp(2_000))
            .await
            .unwrap(),
        CheckOutcome::Approved
    );
    assert_eq!(
        a.check_verification("VE2", "c", hash, 5, Timestamp(2_001))
            .await
            .unwrap(),
        CheckOutcome::NotPending("approved".into())
    );
    // The pre-notice: both nodes try to send it at once, one departs.
    let (x, y) = tokio::join!(
        a.start_prenotice("vm2", "+919800000502", Timestamp(3_000)),
        b.start_prenotice("vm2", "+919800000502", Timestamp(3_000))
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()]
            .iter()
            .filter(|r| r.is_some())
            .count(),
        1
    );
    assert!(
        b.recipient("+919800000502")
            .await
            .unwrap()
            .prenotified_at
            .is_some()
    );
}

/// `[store]` for a node of the pair, as a drop-in beside the test's main file.
/// The verify key both nodes of a pair share (the same bytes in each node's own file).
fn pair_key(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("verify.key");
    std::fs::write(&p, "pair-verify-key-0123456789abcdef0123456789").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn join_pair(cfg: &otpgate::sim::config::TestConfig, url: &str, node: &str) {
    let dir = cfg.path().parent().unwrap().join("conf.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-pair.toml"),
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nnode = \"{node}\"\nlease = \"5s\"\n[verify]\nkey_file = \"{}\"\n",
            pair_key(&dir).display()
        ),
    )
    .unwrap();
}

/// Two real daemons on one database: node a with a pty modem, node b without. Messages
/// go round-robin to both (2,000, as the issue asks; about 50 s on the debug build); b's
/// WhatsApp hangs and b is killed with -9 mid-attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_queue_and_one_survives_the_other_s_kill_9() {
    use common::{CLIENT, KEY, Launch, wait_for};
    use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
    use otpgate::sim::config::TestConfig;
    use otpgate::sim::modem::{Profile, SimModem};
    use serde_json::json;

    let pg = Postgres::start(false);
    pg.create_db("pair").await;
    let url = format!("{}?sslmode=disable", pg.url("pair"));
    let quiet = || SimOptions {
        builtin_rules: false,
        ..Default::default()
    };
    let sim_a = CloudApiSim::start(quiet()).await.unwrap();
    let sim_b = CloudApiSim::start(quiet()).await.unwrap();
    sim_b.handle().set_default(Some(Script::Hang));
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &std::path::Path, sim: &CloudApiSim| {
        TestConfig::new(dir)
            .free_port()
            .unwrap()
            .whatsapp_sim(sim)
            .policy("prenotify = false\nwhatsapp_deadline = \"30s\"")
            .limits("per_recipient = \"3/15m\"")
            .client(CLIENT, KEY)
    };
    let cfg_a = node(dir_a.path(), &sim_a).modem("modem0", modem.path());
    // b's sends hang past the run: what it has in flight when it dies is still open (with
    // the default 4 s timeout, a slow run let b's attempts time out and its WhatsApp circuit
    // open before the kill, and b died with nothing in flight).
    let cfg_b = node(dir_b.path(), &sim_b).whatsapp_lines("timeout = \"120s\"");
    for (cfg, name) in [(&cfg_a, "a"), (&cfg_b, "b")] {
        cfg.write().unwrap();
        join_pair(cfg, &url, name);
    }
    let a = Launch::new(&cfg_a).ready().await;
    let mut b = Launch::new(&cfg_b).ready().await;
    let http = common::http_client();
    let post = |base: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let req = http.post(format!("{base}/v1/messages")).bearer_auth(KEY);
            common::fetch_json(req.json(&body)).await
        }
    };

    // per_recipient holds across the nodes: three accepted between them, the fourth refused
    // by either.
    let to = "+919812300001";
    for (i, base) in [a.base(), b.base(), a.base()].into_iter().enumerate() {
        let (s, v) = post(base, json!({"to": to, "code": format!("Lm{i:04}Qz")})).await;
        assert_eq!(s, 202, "{v}");
    }
    for base in [a.base(), b.base()] {
        let (s, v) = post(base, json!({"to": to, "code": "Lm9999Qz"})).await;
        assert_eq!(s, 429, "{v}");
    }
    // One idempotency key on both nodes: one message.
    let keyed = |base: String| {
        let http = http.clone();
        async move {
            let req = http.post(format!("{base}/v1/messages")).bearer_auth(KEY);
            let body =
                json!({"to": "+919812300002", "code": "Kp0001Rt", "idempotency_key": "pair-key-1"});
            common::fetch_json(req.json(&body)).await
        }
    };
    let ((s1, v1), (s2, v2)) = tokio::join!(keyed(a.base()), keyed(b.base()));
    assert!(s1 / 100 == 2 && s2 / 100 == 2, "{s1} {v1} {s2} {v2}");
    assert_eq!(v1["id"], v2["id"], "one key made two messages");

    // The run: 2,000 codes round-robin, 256 requests at a time: all 2,000 at once come near
    // each node's 1,024 connections (`server.max_connections`), and a loaded machine went past
    // it (the busy answer, the connection closed: a reset at the caller).
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let base = if i % 2 == 0 { a.base() } else { b.base() };
        let code = format!("Pg{i:05}Xw");
        let body = json!({"to": format!("+9198766{i:05}"), "code": code});
        let post = post(base, body);
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let (s, v) = post.await;
            (s, v["id"].as_str().map(str::to_owned), code)
        }));
    }
    let mut ids = Vec::new();
    let mut codes = Vec::new();
    for t in tasks {
        let (s, id, code) = t.await.unwrap();
        assert_eq!(s, 202);
        ids.push(id.unwrap());
        codes.push(code);
    }
    wait_for("a WhatsApp attempt on node b", async || {
        !sim_b.requests().is_empty()
    })
    .await;
    b.kill_9();
    // Everything accepted by either node ends sent or delivered, through node a.
    let base = a.base();
    for id in &ids {
        wait_for(format!("{id} to be sent"), async || {
            let url = format!("{base}/v1/messages/{id}");
            let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
            if v["status"] == "sent" || v["status"] == "delivered" {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
    }
    // No code went twice over WhatsApp, counting both nodes' simulators: the attempts b left
    // open were marked interrupted and never repeated there.
    let mut per_recipient = std::collections::HashMap::<String, usize>::new();
    for r in sim_a.requests().into_iter().chain(sim_b.requests()) {
        if let Some(to) = r
            .json
            .as_ref()
            .and_then(|j| j["to"].as_str().map(str::to_owned))
        {
            *per_recipient.entry(to).or_default() += 1;
        }
    }
    // (The run's numbers carry one code each; the limit test sent three to one number.)
    let twice: Vec<_> = per_recipient
        .iter()
        .filter(|(to, n)| to.starts_with("9198766") && **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "codes went twice over WhatsApp: {twice:?}"
    );
    // The interrupted ones went by SMS, and only node a (the one with a modem) sent SMS.
    let db = pg.client("pair").await;
    type SmsRow = (Option<String>, Option<String>, Option<String>, i64);
    let sms_by: Vec<SmsRow> = db
        .query(
            "SELECT node, outcome, detail, count(*) FROM attempts WHERE channel = 'sms'
             GROUP BY node, outcome, detail",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let interrupted: i64 = db
        .query_one(
            "SELECT count(*) FROM attempts WHERE channel = 'whatsapp' AND outcome = 'interrupted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(interrupted > 0, "node b had nothing in flight when it died");
    // Node b may record an SMS step only as handed back to the queue (nothing left it).
    assert!(
        sms_by
            .iter()
            .all(|(n, outcome, _, _)| n.as_deref() == Some("a")
                || matches!(outcome.as_deref(), Some("skipped" | "retry"))),
        "SMS from a node without a modem: {sms_by:?}"
    );
    let sms = modem.received();
    assert!(
        i64::try_from(sms.len()).unwrap() >= interrupted,
        "{} SMS for {interrupted} interrupted WhatsApp attempts",
        sms.len()
    );
    for c in &codes {
        assert!(
            sms.iter().filter(|m| m.text.contains(c.as_str())).count() <= 1,
            "a code went twice by SMS"
        );
    }
    // /readyz shows this node and its peer's last heartbeat.
    let (_, ready) = common::fetch_json(http.get(format!("{base}/readyz"))).await;
    assert_eq!(ready["cluster"]["node"], "a", "{ready}");
    let peers: Vec<&str> = ready["cluster"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node"].as_str())
        .collect();
    assert_eq!(peers, ["a", "b"]);
    // Codes never reached either log.
    let log = format!("{}{}", a.log(), b.log());
    for c in &codes {
        let hit = log.lines().find(|l| l.contains(c.as_str()));
        assert!(hit.is_none(), "a code appeared in a log: {hit:?}");
    }
}

/// A code that falls back on the node without a modem is handed to the node with one: the
/// plan keeps SMS after WhatsApp, node b's SMS step goes back to the queue at once, and only
/// node a (which has a ready modem) claims it. Before, node b recorded SMS as skipped and the
/// code failed although the pair had a modem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_on_the_node_without_a_modem_goes_out_through_the_other() {
    use common::{CLIENT, KEY, Launch, wait_for};
    use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
    use otpgate::sim::config::TestConfig;
    use otpgate::sim::modem::{Profile, SimModem};
    use serde_json::json;

    let pg = Postgres::start(false);
    pg.create_db("handoff").await;
    let url = format!("{}?sslmode=disable", pg.url("handoff"));
    let quiet = || SimOptions {
        builtin_rules: false,
        ..Default::default()
    };
    let sim_a = CloudApiSim::start(quiet()).await.unwrap();
    let sim_b = CloudApiSim::start(quiet()).await.unwrap();
    // Node b's WhatsApp says at once that the number is not on WhatsApp.
    sim_b.handle().set_default(Some(Script::Error {
        status: 400,
        code: 131026,
    }));
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &std::path::Path, sim: &CloudApiSim| {
        TestConfig::new(dir)
            .free_port()
            .unwrap()
            .whatsapp_sim(sim)
            .policy("prenotify = false")
            .client(CLIENT, KEY)
    };
    let cfg_a = node(dir_a.path(), &sim_a).modem("modem0", modem.path());
    let cfg_b = node(dir_b.path(), &sim_b);
    for (cfg, name) in [(&cfg_a, "a"), (&cfg_b, "b")] {
        cfg.write().unwrap();
        join_pair(cfg, &url, name);
    }
    // Node a starts once b has made the WhatsApp attempt: with both up, a could claim the
    // code first and send it over its own WhatsApp, and the hand-off would go untested.
    let b = Launch::new(&cfg_b).ready().await;
    let http = common::http_client();
    let req = http
        .post(format!("{}/v1/messages", b.base()))
        .bearer_auth(KEY);
    let (s, v) =
        common::fetch_json(req.json(&json!({"to": "+919812300077", "code": "Hd4821Qx"}))).await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for("node b's WhatsApp attempt", async || {
        (!sim_b.requests().is_empty()).then_some(())
    })
    .await;
    let a = Launch::new(&cfg_a).ready().await;
    let base = a.base();
    wait_for("the code sent by SMS", async || {
        let url = format!("{base}/v1/messages/{id}");
        let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
        if v["status"] == "sent" && v["channel"] == "sms" {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    assert_eq!(sim_b.requests().len(), 1, "node b tried WhatsApp once");
    assert!(
        sim_a.requests().is_empty(),
        "node a did not try WhatsApp again"
    );
    let sms = modem.received();
    assert_eq!(
        sms.iter().filter(|m| m.text.contains("Hd4821Qx")).count(),
        1,
        "one SMS with the code, from node a's modem"
    );
    let db = pg.client("handoff").await;
    let rows: Vec<(Option<String>, Option<String>)> = db
        .query(
            "SELECT node, outcome FROM attempts WHERE channel = 'sms' ORDER BY started_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows.last().map(|r| r.0.as_deref()),
        Some(Some("a")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .all(|(n, o)| n.as_deref() == Some("a") || o.as_deref() == Some("retry")),
        "{rows:?}"
    );

    // A verification made on node b (its code leaves through node a's modem) is checked on
    // node a: one shared record, and once approved it cannot be approved again on b. Either
    // node may claim it, so both WhatsApps now say "not on WhatsApp": it goes by SMS.
    sim_a.handle().set_default(Some(Script::Error {
        status: 400,
        code: 131026,
    }));
    let to = "+919812300078";
    let req = http
        .post(format!("{}/v1/verifications", b.base()))
        .bearer_auth(KEY);
    let (s, v) = common::fetch_json(req.json(&json!({"to": to}))).await;
    assert_eq!(s / 100, 2, "{v}");
    let vid = v["id"].as_str().unwrap().to_owned();
    let code = wait_for("the verification's SMS", async || {
        let texts: Vec<String> = modem.received().into_iter().map(|m| m.text).collect();
        texts
            .iter()
            .filter(|t| !t.contains("Hd4821Qx"))
            .find_map(|t| {
                t.split(|c: char| !c.is_ascii_digit())
                    .find(|w| w.len() >= 4)
                    .map(str::to_owned)
            })
            .ok_or(texts.join(" | "))
    })
    .await;
    let check = |base: String, code: String| {
        let req = http
            .post(format!("{base}/v1/verifications/{vid}/check"))
            .bearer_auth(KEY);
        common::fetch_json(req.json(&json!({ "code": code })))
    };
    let (s, v) = check(a.base(), code.clone()).await;
    assert_eq!((s, &v["status"]), (200, &json!("approved")), "{v}");
    let (_, v) = check(b.base(), code).await;
    assert_ne!(v["status"], "pending", "the approval is shared: {v}");
}

/// The velocity limits hold across two real daemons: a number block, an end user and an
/// address each fill up with requests split between the nodes, and the request over the limit
/// gets the same 429 (code, field, Retry-After) from the *other* node. Each node counting in
/// its own memory let the pair through twice the limit. The keys are on the rows (NULL where
/// the caller named no user or address), so they go when housekeeping purges the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velocity_limits_hold_across_two_daemons() {
    use common::{CLIENT, KEY, Launch};
    use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
    use otpgate::sim::config::TestConfig;
    use serde_json::{Value, json};

    let pg = Postgres::start(false);
    pg.create_db("velocity").await;
    let url = format!("{}?sslmode=disable", pg.url("velocity"));
    let sim = CloudApiSim::start(SimOptions::default()).await.unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &std::path::Path| {
        TestConfig::new(dir)
            .free_port()
            .unwrap()
            .whatsapp_sim(&sim)
            .policy("prenotify = false")
            .limits(
                "per_prefix = \"2/1h\"\nprefix_digits = 3\nper_user = \"2/1h\"\nper_ip = \"2/1h\"",
            )
            .client(CLIENT, KEY)
    };
    let (cfg_a, cfg_b) = (node(dir_a.path()), node(dir_b.path()));
    for (cfg, name) in [(&cfg_a, "a"), (&cfg_b, "b")] {
        cfg.write().unwrap();
        join_pair(cfg, &url, name);
    }
    let a = Launch::new(&cfg_a).ready().await;
    let b = Launch::new(&cfg_b).ready().await;
    let http = common::http_client();
    let post = |base: String, path: &'static str, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, v)
        }
    };
    // (what, the two accepted bodies, the one over the limit, its code and field). Each case
    // uses its own numbers, user and address, so only its own limit can refuse it.
    let cases = [
        (
            "per_prefix",
            [
                json!({"to": "+919812345001", "code": "Vp0001Qz"}),
                json!({"to": "+919812345002", "code": "Vp0002Qz"}),
            ],
            json!({"to": "+919812345003", "code": "Vp0003Qz"}),
            "prefix_limited",
            "to",
        ),
        (
            "per_user",
            [
                json!({"to": "+919822200001", "code": "Vu0001Qz", "user": "alice"}),
                json!({"to": "+919833300001", "code": "Vu0002Qz", "user": "alice"}),
            ],
            json!({"to": "+919844400001", "code": "Vu0003Qz", "user": "alice"}),
            "user_limited",
            "user",
        ),
        (
            "per_ip",
            [
                json!({"to": "+919855500001", "code": "Vi0001Qz", "ip": "192.0.2.7"}),
                json!({"to": "+919866600001", "code": "Vi0002Qz", "ip": "192.0.2.7"}),
            ],
            json!({"to": "+919877700001", "code": "Vi0003Qz", "ip": "192.0.2.7"}),
            "ip_limited",
            "ip",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, [first, second], over, code, field) in cases {
        // One accepted by each node, then the next refused by both.
        for (base, body) in [(a.base(), first), (b.base(), second)] {
            let (s, _, v) = post(base, "/v1/messages", body).await;
            assert_eq!(s, 202, "{what}: {v}");
        }
        for (name, base) in [("a", a.base()), ("b", b.base())] {
            let (s, retry, v) = post(base, "/v1/messages", over.clone()).await;
            let e = &v["error"];
            let got = (s, e["code"].as_str(), e["field"].as_str());
            if got != (429, Some(code), Some(field)) || retry.is_none_or(|r| r <= 3000) {
                wrong.push(format!("{what} on node {name}: {s} {retry:?} {v}"));
            }
        }
    }
    // A verification for the same end user, on the node that took neither of its messages
    // last, is counted with them: the Verify door shares the limit too.
    let (s, _, v) = post(
        b.base(),
        "/v1/verifications",
        json!({"to": "+919888800001", "user": "alice"}),
    )
    .await;
    if (s, v["error"]["code"].as_str()) != (429, Some("user_limited")) {
        wrong.push(format!("per_user on a verification: {s} {v}"));
    }
    assert!(
        wrong.is_empty(),
        "the pair let through more than its limit:\n{}",
        wrong.join("\n")
    );
    // What the count needs is on the rows, NULL where the caller named nothing.
    let db = pg.client("velocity").await;
    type KeyRow = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<KeyRow> = db
        .query(
            "SELECT recipient, prefix_key, end_user, end_ip FROM messages ORDER BY recipient",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    let row = |to: &str| rows.iter().find(|r| r.0 == to).unwrap().clone();
    assert_eq!(
        row("+919812345001"),
        (
            "+919812345001".into(),
            Some("+919812345".into()),
            None,
            None
        )
    );
    assert_eq!(row("+919822200001").2.as_deref(), Some("alice"));
    assert_eq!(row("+919822200001").3, None);
    assert_eq!(row("+919855500001").3.as_deref(), Some("192.0.2.7"));
    assert_eq!(row("+919855500001").2, None);
}

/// PostgreSQL restarts under a running pair (a fast shutdown, as a failover or `pg_ctl
/// restart -m fast` does) while codes are being accepted: requests during the outage get a
/// clear 503 (not a hang), `/readyz` says the store is unreachable, and once the server is
/// back both daemons, never restarted, accept again (their pools reconnect) and every code
/// accepted before, during or after reaches a final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarts_under_a_running_pair() {
    use common::{CLIENT, KEY, Launch, wait_for};
    use otpgate::sim::cloud_api::{CloudApiSim, Script, SimOptions};
    use otpgate::sim::config::TestConfig;
    use otpgate::sim::modem::{Profile, SimModem};
    use serde_json::json;

    let mut pg = Postgres::start(false);
    pg.create_db("restart").await;
    let url = format!("{}?sslmode=disable", pg.url("restart"));
    let sim = CloudApiSim::start(SimOptions {
        builtin_rules: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &std::path::Path| {
        TestConfig::new(dir)
            .free_port()
            .unwrap()
            .whatsapp_sim(&sim)
            .policy("prenotify = false")
            .client(CLIENT, KEY)
    };
    // Node a has a modem: a code whose WhatsApp attempt the outage interrupted is never
    // sent over WhatsApp again, and leaves by SMS.
    let modem = SimModem::start(Profile::quectel()).unwrap();
    let cfg_a = node(dir_a.path()).modem("modem0", modem.path());
    let cfg_b = node(dir_b.path());
    for (cfg, name) in [(&cfg_a, "a"), (&cfg_b, "b")] {
        cfg.write().unwrap();
        join_pair(cfg, &url, name);
    }
    let a = Launch::new(&cfg_a).ready().await;
    let b = Launch::new(&cfg_b).ready().await;
    // A caller that gives up after a minute: an answer later than that is a hang.
    let http = otpgate::sim::tls::loopback_client()
        .unwrap()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let post = |base: String, i: usize| {
        let http = http.clone();
        async move {
            let body = json!({"to": format!("+91981110{i:04}"), "code": format!("Rs{i:04}Qz")});
            let r = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .expect("an answer, not a hang or a dropped connection");
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (status, v)
        }
    };
    let mut accepted = Vec::new();
    let mut i = 0;
    let mut send = async |base: String, accepted: &mut Vec<String>| {
        i += 1;
        let (s, v) = post(base, i).await;
        if s == 202 {
            accepted.push(v["id"].as_str().unwrap().to_owned());
        }
        (s, v)
    };
    for _ in 0..10 {
        for base in [a.base(), b.base()] {
            let (s, v) = send(base, &mut accepted).await;
            assert_eq!(s, 202, "{v}");
        }
    }

    wait_for("the first codes sent", async || {
        let n = sim.requests().len();
        if n >= 20 { Ok(()) } else { Err(n) }
    })
    .await;
    // Two codes in flight when the server goes: WhatsApp answers after it has stopped, so
    // neither send can be recorded, and their dispatcher tasks end with the store down.
    let slow = Script::Delay(Duration::from_secs(2), Box::new(Script::Success));
    sim.handle().set_default(Some(slow));
    for base in [a.base(), b.base()] {
        let (s, v) = send(base, &mut accepted).await;
        assert_eq!(s, 202, "{v}");
    }
    wait_for("two codes in flight", async || {
        let n = sim.requests().len();
        if n >= 22 { Ok(()) } else { Err(n) }
    })
    .await;
    sim.handle().set_default(None);
    pg.stop();
    for base in [a.base(), b.base()] {
        let (s, v) = send(base.clone(), &mut accepted).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (503, &serde_json::json!("unavailable")),
            "during the outage: {v}"
        );
        let (s, ready) = common::fetch_json(http.get(format!("{base}/readyz"))).await;
        assert_eq!(s, 503, "{ready}");
        assert_eq!(ready["store"], "error", "{ready}");
    }
    // Long enough for the dispatchers and heartbeats to fail a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume();

    // Without restarting the daemons: both accept again.
    for base in [a.base(), b.base()] {
        let (s, v) = wait_for("a 202 after the restart", async || {
            let (s, v) = send(base.clone(), &mut accepted).await;
            if s == 202 {
                Ok((s, v))
            } else {
                Err(format!("{s} {v}"))
            }
        })
        .await;
        assert_eq!(s, 202, "{v}");
        let (s, ready) = common::fetch_json(http.get(format!("{base}/readyz"))).await;
        assert_eq!(s, 200, "{ready}");
    }
    for _ in 0..5 {
        for base in [a.base(), b.base()] {
            let (s, v) = send(base, &mut accepted).await;
            assert_eq!(s, 202, "{v}");
        }
    }
    // Every accepted code ends, whichever node and whenever it was accepted.
    let base = a.base();
    for id in &accepted {
        wait_for(format!("{id} to end"), async || {
            let url = format!("{base}/v1/messages/{id}");
            let (_, v) = common::fetch_json(http.get(url).bearer_auth(KEY)).await;
            if ["sent", "delivered", "failed", "expired"]
                .contains(&v["status"].as_str().unwrap_or(""))
            {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
    }
    // The two sends the outage cut off were taken back as interrupted (their node no longer
    // renewed their leases once its tasks ended), never repeated over WhatsApp, and left by
    // SMS through node a's modem.
    let db = pg.client("restart").await;
    let interrupted: i64 = db
        .query_one(
            "SELECT count(*) FROM attempts WHERE channel = 'whatsapp' AND outcome = 'interrupted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(interrupted, 2);
    let mut per_number = std::collections::HashMap::<String, usize>::new();
    for r in sim.requests() {
        if let Some(to) = r
            .json
            .as_ref()
            .and_then(|j| j["to"].as_str().map(str::to_owned))
        {
            *per_number.entry(to).or_default() += 1;
        }
    }
    assert!(
        per_number.values().all(|n| *n == 1),
        "a code went twice over WhatsApp: {per_number:?}"
    );
    assert_eq!(modem.received().len(), 2, "the interrupted codes by SMS");
    for base in [a.base(), b.base()] {
        let (s, _) = common::fetch(http.get(format!("{base}/healthz"))).await;
        assert_eq!(s, 200, "the daemon at {base} is still up");
    }
    // Neither daemon logged a code.
    let log = format!("{}{}", a.log(), b.log());
    assert!(!log.contains("Rs0001Qz"), "a code appeared in a log");
}
