//! What rebuilding the `limits.per_prefix` counts costs a start (issue 17): the daemon reads
//! back every outbox row inside the window and counts its number block.
//!
//! `cargo bench --bench abuse -- N` (default 100 000): an outbox of N messages accepted over
//! the last hour (every one inside the window of an hour), then, in this process, the
//! baseline (one plain scan of the same rows: `SELECT count(*), sum(length(recipient))`) and
//! the rebuild, best of five each; printed as milliseconds, nanoseconds per row and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use std::time::{Duration, Instant};

use otpgate::abuse::Abuse;
use otpgate::sim::config::TestConfig;
use otpgate::store::Store;

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..5).map(|_| f()).min().unwrap()
}

fn main() {
    let n: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new(dir.path())
        .limits("per_prefix = \"1000/1h\"\nprefix_digits = 3")
        .client("bench", "bench-key-0123456789abcdef0123456789abcdef");
    let main = cfg.write().unwrap();
    let cfg = otpgate::config::load(&otpgate::config::Sources {
        main,
        env: Default::default(),
    })
    .unwrap();
    let path = dir.path().join("bench.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(&path).unwrap();
    let now = 1_800_000_000_000i64;
    {
        // The rows as the accept path leaves them, written in one transaction (the writer's
        // group commit is not what this measures).
        let mut c = rusqlite::Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO messages (id, client, recipient, country, kind, body, created_at,
                        expires_at, state, next_attempt_at)
                     VALUES (?1, 'bench', ?2, 'IN', 'code', NULL, ?3, ?4, 'sent', ?4)",
                )
                .unwrap();
            for i in 0..n {
                let at = now - 3_599_000 + (i * 3_599_000) / n;
                // Spread over 10 000 blocks of 1 000 numbers, as a busy box's mix.
                let to = format!("+9198{:08}", (i * 7_919) % 10_000_000);
                ins.execute(rusqlite::params![
                    format!("msg_{i:032}"),
                    to,
                    at,
                    at + 300_000
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let scan = best(|| {
        let t = Instant::now();
        let rows: i64 = rt
            .block_on(store.read(|c| {
                Ok(c.query_row(
                    "SELECT count(*), sum(length(recipient)) FROM messages",
                    [],
                    |r| r.get(0),
                )?)
            }))
            .unwrap();
        assert_eq!(rows, n);
        t.elapsed()
    });
    let rebuild = best(|| {
        let abuse = Abuse::default();
        let t = Instant::now();
        let seeded = rt.block_on(abuse.rebuild(&store, &cfg, now)).unwrap();
        let took = t.elapsed();
        assert_eq!(seeded, usize::try_from(n).unwrap());
        took
    });
    let per_row = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!("rows {n}");
    println!(
        "baseline scan {:.1} ms ({:.0} ns/row)",
        scan.as_secs_f64() * 1e3,
        per_row(scan)
    );
    println!(
        "per_prefix rebuild {:.1} ms ({:.0} ns/row), {:.1}x the scan",
        rebuild.as_secs_f64() * 1e3,
        per_row(rebuild),
        rebuild.as_secs_f64() / scan.as_secs_f64()
    );
}
