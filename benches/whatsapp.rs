//! Overhead of the WhatsApp path: `WhatsAppChannel::send` against the Cloud API simulator,
//! versus a bare request loop (same reqwest/rustls client config, same simulator, same JSON,
//! none of the channel's logic), sequentially and at 16 concurrent senders. Prints a table.
//!
//! Run: `cargo bench --bench whatsapp` (optional env: BENCH_N = sends per row, default 2000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::channel::whatsapp::WhatsAppChannel;
use otpgate::channel::{Channel, Content, Delivery, Outcome};
use otpgate::config::WhatsAppConfig;
use otpgate::secret::Secret;
use otpgate::sim::cloud_api::{CloudApiSim, SimOptions};
use otpgate::sim::tls::TestPki;

const TOKEN: &str = "bench-token";
const PHONE: &str = "106540352242922";
const CONCURRENCY: usize = 16;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The same client the channel builds: ring rustls, webpki roots + the test CA, h2/http1 ALPN.
fn bare_client(pki: &TestPki) -> Res<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots.add_parsable_certificates(
        rustls_pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem().as_bytes())
            .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()?,
    );
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .retry(reqwest::retry::never())
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

fn body(code: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "919876543210",
        "type": "template", "template": {"name": "otp_auth", "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": code}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": code}]}]}
    }))
    .unwrap_or_default()
}

async fn bare_once(c: &reqwest::Client, url: &str) -> bool {
    let r = c
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(5))
        .body(body("123456"))
        .send()
        .await;
    match r {
        Ok(r) => {
            let ok = r.status().is_success();
            ok && r.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

async fn channel_once(ch: &WhatsAppChannel) -> bool {
    let d = Delivery {
        message_id: "bench".into(),
        to: "+919876543210".into(),
        content: Content::Code {
            code: "123456".into(),
            sms_text: String::new(),
        },
        locale: None,
        validity: Duration::from_secs(300),
        // WhatsApp does not read it.
        expires_at: otpgate::clock::Timestamp(i64::MAX),
        budget: Duration::from_secs(5),
        departure: otpgate::channel::Departure::none(),
    };
    matches!(ch.send(&d).await, Outcome::Accepted { .. })
}

struct Row {
    rate: f64,
    p50: Duration,
    p99: Duration,
    failures: usize,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `n` operations over `conc` workers; `op` returns success.
async fn run<F, Fut>(n: usize, conc: usize, op: F) -> Row
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let per = n / conc;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut fails = 0;
            for _ in 0..per {
                let s = Instant::now();
                if !op().await {
                    fails += 1;
                }
                lat.push(s.elapsed());
            }
            (lat, fails)
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut failures = 0;
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            failures += f;
        }
    }
    let elapsed = t0.elapsed();
    all.sort();
    Row {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&all, 0.50),
        p99: pct(&all, 0.99),
        failures,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Res<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let pki = TestPki::new()?;
        let sim = CloudApiSim::start(SimOptions {
            phone_number_id: PHONE.into(),
            token: TOKEN.into(),
            templates: vec![("otp_auth".into(), 1)],
            pki: Some(&pki),
            builtin_rules: false,
            ..SimOptions::default()
        })
        .await?;
        let dir = tempfile::tempdir()?;
        let files = pki.write_files(dir.path())?;
        let cfg = WhatsAppConfig {
            enabled: true,
            api_base: sim.base_url(),
            phone_number_id: PHONE.into(),
            token: Some(Secret::new(TOKEN)),
            token_path: None,
            template: "otp_auth".into(),
            languages: Default::default(),
            default_language: "en_US".into(),
            timeout: Duration::from_secs(5),
            proxy: None,
            ca_file: Some(files.ca),
            max_rate: 0, // no cap: measure the code, not the limiter
            circuit_cooldown: Duration::from_secs(60),
            app_secret: None,
            verify_token: None,
            business_account_id: None,
            app_id: None,
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let ch = Arc::new(WhatsAppChannel::new(&cfg, tx)?);
        let bare = bare_client(&pki)?;
        let url = Arc::new(format!("{}/{PHONE}/messages", sim.base_url()));

        let bare_op = {
            let (c, u) = (bare.clone(), url.clone());
            move || {
                let (c, u) = (c.clone(), u.clone());
                async move { bare_once(&c, &u).await }
            }
        };
        let ch_op = {
            let ch = ch.clone();
            move || {
                let ch = ch.clone();
                async move { channel_once(&ch).await }
            }
        };
        // Warm up both (connections, TLS sessions, allocator).
        run(200, CONCURRENCY, bare_op.clone()).await;
        run(200, CONCURRENCY, ch_op.clone()).await;

        println!("WhatsApp path overhead, {n} sends per row, loopback TLS simulator");
        println!(
            "{:<14} {:<8} {:>10} {:>9} {:>9} {:>6}",
            "mode", "path", "sends/s", "p50 ms", "p99 ms", "fail"
        );
        for (mode, conc) in [("sequential", 1usize), ("concurrent 16", CONCURRENCY)] {
            // Interleave bare/channel twice and keep the better run of each, to damp noise.
            let mut best_bare: Option<Row> = None;
            let mut best_ch: Option<Row> = None;
            for _ in 0..2 {
                let b = run(n, conc, bare_op.clone()).await;
                if best_bare.as_ref().is_none_or(|x| b.rate > x.rate) {
                    best_bare = Some(b);
                }
                let c = run(n, conc, ch_op.clone()).await;
                if best_ch.as_ref().is_none_or(|x| c.rate > x.rate) {
                    best_ch = Some(c);
                }
            }
            let (Some(b), Some(c)) = (best_bare, best_ch) else {
                continue;
            };
            for (path, r) in [("bare", &b), ("channel", &c)] {
                println!(
                    "{:<14} {:<8} {:>10.0} {:>9.3} {:>9.3} {:>6}",
                    mode,
                    path,
                    r.rate,
                    ms(r.p50),
                    ms(r.p99),
                    r.failures
                );
            }
            println!(
                "{:<14} {:<8} {:>10.3} {:>9.3} {:>9.3}   (channel / bare)",
                mode,
                "ratio",
                c.rate / b.rate,
                ms(c.p50) / ms(b.p50),
                ms(c.p99) / ms(b.p99)
            );
        }
        println!(
            "simulator connections accepted: {}",
            sim.handle().connections()
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
