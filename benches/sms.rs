//! Software overhead per SMS: messages per second through the whole SMS path (PDU encoder,
//! AT dialogue, owner task, pool) to a simulated modem that answers instantly, next to a raw
//! loop that writes the same CMGS exchange to the same kind of simulator on a pty and reads the
//! answers with no encoding, parsing or tasks. Both sides pay the same simulator and pty costs,
//! so the ratio is what our code adds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::channel::sms::pdu::{SubmitOptions, encode_submit};
use otpgate::channel::sms::pool::SmsPool;
use otpgate::channel::{Channel, Content, Delivery, Outcome};
use otpgate::clock::{Clock, SharedClock, SystemClock};
use otpgate::config::ModemConfig;
use otpgate::sim::modem::{Profile, SimModem};

const N: usize = 500;
const TO: &str = "+15551234567";
const TEXT: &str = "Your code is 123456. It expires in 10 minutes.";

/// Rounds per path; the median is reported, as a noisy 2-core box swings single runs.
const ROUNDS: usize = 7;

fn main() {
    let ours = match run_ours() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ours: {e}");
            std::process::exit(1);
        }
    };
    let raw = match run_raw() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raw: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "SMS path overhead, N = {N} single-part messages x {ROUNDS} rounds, simulator answers instantly"
    );
    println!("| path | median round | msgs/s (median) | msgs/s (best) | per message (median) |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, mut d: Vec<Duration>| {
        d.sort();
        let med = d[d.len() / 2];
        let best = d[0];
        println!(
            "| {name} | {:.3} s | {:.0} | {:.0} | {:.0} us |",
            med.as_secs_f64(),
            N as f64 / med.as_secs_f64(),
            N as f64 / best.as_secs_f64(),
            med.as_micros() as f64 / N as f64
        );
        med
    };
    let o = row("otpgate (encode + AT dialogue + owner task + pool)", ours);
    let r = row("raw pty loop (precomputed bytes, no parsing)", raw);
    println!(
        "ratio ours/raw throughput (medians): {:.2}",
        r.as_secs_f64() / o.as_secs_f64()
    );
}

fn config(sim: &SimModem) -> ModemConfig {
    ModemConfig {
        name: "modem0".into(),
        device: sim.path().to_path_buf(),
        baud: 115_200,
        pin: None,
        smsc: None,
        status_reports: false,
        command_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(10),
        probe_interval: Duration::from_secs(3600),
    }
}

fn run_ours() -> Result<Vec<Duration>, String> {
    let sim = SimModem::start(Profile::quectel()).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let clock: SharedClock = Arc::new(SystemClock);
        let pool = SmsPool::start(vec![config(&sim)], tx, clock);
        let t0 = Instant::now();
        while pool.health().parts[0].state != "ready" {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("modem never ready".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let d = Delivery {
            message_id: "bench".into(),
            to: TO.into(),
            content: Content::Text(TEXT.into()),
            locale: None,
            validity: Duration::from_secs(600),
            expires_at: SystemClock.now().plus(Duration::from_secs(600)),
            budget: Duration::from_secs(30),
            departure: otpgate::channel::Departure::none(),
        };
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            for _ in 0..N {
                match pool.send(&d).await {
                    Outcome::Accepted { .. } => {}
                    other => return Err(format!("send failed: {other:?}")),
                }
            }
            rounds.push(t0.elapsed());
        }
        pool.shutdown().await;
        if sim.received().len() != N * ROUNDS {
            return Err(format!("simulator got {}", sim.received().len()));
        }
        Ok(rounds)
    })
}

fn read_until(port: &mut std::fs::File, buf: &mut Vec<u8>, end: &[u8]) -> Result<(), String> {
    let mut tmp = [0u8; 512];
    loop {
        if let Some(i) = buf.windows(end.len()).position(|w| w == end) {
            buf.drain(..i + end.len());
            return Ok(());
        }
        let n = port.read(&mut tmp).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("eof".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn run_raw() -> Result<Vec<Duration>, String> {
    let sim = SimModem::start(Profile::quectel()).map_err(|e| e.to_string())?;
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(sim.path())
        .map_err(|e| e.to_string())?;
    let opts = SubmitOptions {
        now: SystemClock.now(),
        expires_at: SystemClock.now().plus(Duration::from_secs(600)),
        status_report: false,
        smsc: None,
        concat_ref: 0,
    };
    let parts = encode_submit(TO, TEXT, &opts).map_err(|e| e.to_string())?;
    let part = parts.first().ok_or("no part")?;
    let cmgs = format!("AT+CMGS={}\r", part.tpdu_len).into_bytes();
    let mut body = part.hex.clone().into_bytes();
    body.push(0x1a);
    let mut buf = Vec::new();
    for setup in ["ATE0\r", "AT+CMGF=0\r"] {
        port.write_all(setup.as_bytes())
            .map_err(|e| e.to_string())?;
        read_until(&mut port, &mut buf, b"OK\r\n")?;
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        for _ in 0..N {
            port.write_all(&cmgs).map_err(|e| e.to_string())?;
            read_until(&mut port, &mut buf, b"> ")?;
            port.write_all(&body).map_err(|e| e.to_string())?;
            read_until(&mut port, &mut buf, b"OK\r\n")?;
        }
        rounds.push(t0.elapsed());
    }
    if sim.received().len() != N * ROUNDS {
        return Err(format!("simulator got {}", sim.received().len()));
    }
    Ok(rounds)
}
