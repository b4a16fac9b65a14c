//! The `otpgate` command line. Everything it does lives in the library; this file only parses
//! arguments, sets up logging and turns errors into exit codes with context.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use otpgate::clock::{SharedClock, SystemClock};
use otpgate::config::{self, Sources};

// glibc's malloc was a tenth of an accept's instructions (its arenas also grow and shrink
// with mprotect under load); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "otpgate",
    version,
    about = "On-premises OTP delivery gateway: WhatsApp first, SMS through a local modem as the safety net"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (what the systemd unit starts).
    Run {
        /// Main configuration file; conf.d/*.toml beside it is read too.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Run the whole gateway against built-in simulators of WhatsApp and a modem: try it with
    /// no account and no hardware. Prints ready-to-paste curl lines and what the simulated
    /// phones receive; Ctrl-C stops it and removes its temporary files.
    #[cfg(feature = "simulators")]
    Demo {
        /// Where the demo's API listens.
        #[arg(long, default_value = "127.0.0.1:8025")]
        listen: std::net::SocketAddr,
    },
    /// Validate the configuration and print a summary; exit 1 with every error otherwise.
    CheckConfig {
        /// Main configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Bring the store's schema up to date and exit (SQLite file or PostgreSQL, as
    /// `store.backend` says), for admins who run schema changes by hand; the daemon also
    /// migrates at start. Refuses a database newer than this binary.
    Migrate {
        /// Main configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Work with the WhatsApp Cloud API account.
    Whatsapp {
        #[command(subcommand)]
        command: WhatsappCommand,
    },
    /// Manage client keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Send a code through a running otpgate's HTTP API.
    Send {
        /// Recipient number, e.g. "+91 98765 43210".
        #[arg(long)]
        to: String,
        /// The one-time code.
        #[arg(long, conflicts_with = "text")]
        code: Option<String>,
        /// A whole message text instead of a code.
        #[arg(long)]
        text: Option<String>,
        /// Base URL of the API.
        #[arg(long, default_value = "http://127.0.0.1:8025")]
        url: String,
        /// Client key (or set OTPGATE_KEY).
        #[arg(long, env = "OTPGATE_KEY", hide_env_values = true)]
        key: String,
        /// Wait up to this long for the first outcome, e.g. "5s".
        #[arg(long)]
        wait: Option<String>,
        /// Extra CA certificate (PEM) to trust for https URLs.
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
    /// Work with modems.
    Modem {
        #[command(subcommand)]
        command: ModemCommand,
    },
    /// Reload the running daemon's configuration and print the verdict (`systemctl reload`
    /// runs this); exits 1 when the new configuration is rejected.
    Reload {
        /// The daemon's pid (the unit passes $MAINPID); default: the one in the status file.
        #[arg(long)]
        pid: Option<i32>,
        /// The daemon's reload status file [default: /run/otpgate/reload.status].
        #[arg(long, env = otpgate::daemon::RELOAD_STATUS_ENV)]
        status_file: Option<PathBuf>,
        /// Seconds to wait for the verdict.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// One screen for the admin: channels, circuit, modems, queue, the last hour, fallbacks,
    /// limits hit and paused SMS ranges, read from the running daemon.
    Status {
        /// Main configuration file (for the listen address and the store).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Base URL of the daemon [default: the first listen address].
        #[arg(long)]
        url: Option<String>,
        /// Extra CA certificate (PEM) to trust for https URLs.
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
    /// The conversion breaker (SMS paused to a number range whose codes are not used).
    Breaker {
        #[command(subcommand)]
        command: BreakerCommand,
    },
    /// Print shell completions (used by the packages).
    #[command(hide = true)]
    Completions {
        /// Which shell.
        shell: Shell,
    },
    /// Write the man pages into a directory (used by the packages).
    #[command(hide = true)]
    Manpages {
        /// Output directory.
        dir: PathBuf,
    },
}

/// Shells `otpgate completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum ModemCommand {
    /// Talk to a modem and print what it is and how it is doing.
    Probe {
        /// Serial device, e.g. /dev/serial/by-id/usb-Quectel_EC25-if02-port0.
        device: PathBuf,
        /// Baud rate.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// How long the modem gets to answer each step, e.g. "5s".
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
}

#[derive(Subcommand)]
enum WhatsappCommand {
    /// Read the authentication template back from Meta and check it for every configured
    /// language (approved, AUTHENTICATION, copy-code button, TTL within otp.max_ttl, expiry
    /// line consistent with the code lifetime); exit 1 with one line per mismatch.
    Check {
        /// Main configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BreakerCommand {
    /// Resume SMS to a paused range now ("+9198765", or a country such as "IN").
    Lift {
        /// The range or country, as `otpgate status` shows it.
        key: String,
        /// Main configuration file (the request goes next to its store).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a fresh random client key once, and the line to paste into the config.
    New {
        /// The client's name, for the printed config snippet.
        #[arg(long, default_value = "my-idp")]
        name: String,
    },
}

/// Crates that dump raw protocol bytes at debug/trace: capped at info whatever the filter
/// says, so a verbose log can never carry a request body, a token or a code. tokio-postgres
/// logs every statement's parameters (a message's code among them) at debug.
const QUIET_DEPENDENCIES: &str = "hyper=info,hyper_util=info,h2=info,reqwest=info,rustls=info,tokio_rustls=info,\
     tokio_postgres=info,postgres_protocol=info,deadpool=info,deadpool_postgres=info,tokio_postgres_rustls=info";

fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let wanted = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| filter.to_owned());
    let filter = EnvFilter::try_new(format!("{wanted},{QUIET_DEPENDENCIES}"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd the journal stamps each line; a second timestamp is noise.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match (json, under_journal) {
        (true, _) => b.json().try_init(),
        (false, true) => b.without_time().try_init(),
        (false, false) => b.try_init(),
    };
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otpgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc reserves its arena in 1 GiB
/// and asked for huge pages on it (MADV_HUGEPAGE; its `no_thp` feature now stops that), so
/// every 2 MiB the heap touched became a whole 2 MiB page: 30 of an idle daemon's 46 MB
/// (issue 18). This covers kernels in THP "always" mode too. Small pages cost the accept path
/// nothing measurable here. Best effort: a kernel without the call leaves things as they were.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        // The blocking pool runs store reads, which pool 8 connections: beyond that a burst
        // opened a connection and a thread (with its own allocator heaps) per read, 40 threads
        // after 10,000 messages. Reads wait their turn instead, and idle threads go sooner.
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { config } => Ok(check_config(&config)),
        Command::Migrate { config } => migrate(&config),
        Command::Key {
            command: KeyCommand::New { name },
        } => Ok(new_key(&name)),
        Command::Run { config } => run(&config),
        Command::Whatsapp {
            command: WhatsappCommand::Check { config },
        } => whatsapp_check(&config),
        Command::Modem {
            command:
                ModemCommand::Probe {
                    device,
                    baud,
                    timeout,
                },
        } => modem_probe(&device, baud, &timeout),
        #[cfg(feature = "simulators")]
        Command::Demo { listen } => {
            init_logging("warn,otpgate=info", false);
            runtime()?
                .block_on(otpgate::demo::run(listen))
                .context("demo")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload {
            pid,
            status_file,
            timeout,
        } => reload(pid, status_file, timeout),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "otpgate", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            to,
            code,
            text,
            url,
            key,
            wait,
            cacert,
        } => runtime()?.block_on(send(to, code, text, url, key, wait, cacert)),
        Command::Status {
            config,
            url,
            cacert,
        } => runtime()?.block_on(status(&config, url, cacert)),
        Command::Breaker {
            command: BreakerCommand::Lift { key, config },
        } => breaker_lift(&config, &key),
    }
}

/// `otpgate status`: the daemon's /readyz and /metrics and the outbox's last hour.
async fn status(
    config: &std::path::Path,
    url: Option<String>,
    cacert: Option<PathBuf>,
) -> Result<ExitCode> {
    let cfg = config::load(&Sources::from_process(config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let addr = cfg.server.listen.first().context("no listen address")?;
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            let scheme = if cfg.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", std::net::SocketAddr::new(ip, addr.port()))
        }
    };
    let client = http_client(cacert.as_deref())?;
    let readyz: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {base}/readyz (is the daemon running?)"))?
        .json()
        .await
        .context("reading /readyz")?;
    let metrics = client
        .get(format!("{base}/metrics"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {base}/metrics"))?
        .text()
        .await
        .context("reading /metrics")?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0);
    let hour = otpgate::status::last_hour(&cfg.store.path, now).map_err(|e| e.to_string());
    print!(
        "{}",
        otpgate::status::render(&readyz, &metrics, hour.as_ref().map_err(String::as_str))
    );
    Ok(ExitCode::SUCCESS)
}

/// `otpgate breaker lift`: leaves the key where the daemon's breaker reads it (next to the
/// store), then waits for the daemon to take it.
fn breaker_lift(config: &std::path::Path, key: &str) -> Result<ExitCode> {
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
        bail!("give a range such as +9198765 or a country such as IN");
    }
    let cfg = config::load(&Sources::from_process(config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = otpgate::abuse::breaker::lift_file(&cfg.store.path);
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{key}").with_context(|| format!("writing {}", path.display()))?;
    }
    // The daemon takes it at its next accept or scrape, within seconds.
    for _ in 0..50 {
        if !path.exists() {
            println!("lifted: SMS to {key} resumes");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!(
        "asked the daemon to lift {key} ({}); it takes it at its next request or /metrics scrape",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// An HTTP client trusting the web's roots and `cacert`.
fn http_client(cacert: Option<&std::path::Path>) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = cacert {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        for c in
            CertificateDer::pem_file_iter(p).with_context(|| format!("reading {}", p.display()))?
        {
            roots
                .add(c.with_context(|| format!("parsing {}", p.display()))?)
                .context("adding the CA")?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .context("building the HTTP client")
}

/// `otpgate check-config`: the summary, or every problem with its origin.
fn check_config(config: &std::path::Path) -> ExitCode {
    match config::load(&Sources::from_process(config)) {
        Ok(c) => {
            print!("{}", c.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `otpgate migrate`: the schema brought up to date, under PostgreSQL's migration lock so a
/// node starting meanwhile waits.
fn migrate(config: &std::path::Path) -> Result<ExitCode> {
    let cfg = config::load(&Sources::from_process(config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (what, (from, to)) = match &cfg.store.backend {
        config::StoreBackend::Sqlite => (
            format!("sqlite {}", cfg.store.path.display()),
            otpgate::store::migrate_file(&cfg.store.path)
                .with_context(|| format!("migrating {}", cfg.store.path.display()))?,
        ),
        config::StoreBackend::Postgres(pg) => (
            format!("postgres {}", pg.url),
            runtime()?
                .block_on(otpgate::store::postgres::PgStore::migrate(pg))
                .with_context(|| format!("migrating {}", pg.url))?,
        ),
    };
    if from == to {
        println!("{what}: schema version {to}, up to date");
    } else {
        println!("{what}: schema version {from} -> {to}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `otpgate key new`: a client key, shown once, and the config lines with its hash.
fn new_key(name: &str) -> ExitCode {
    let (key, hash) = otpgate::api::auth::new_key();
    println!("key (give it to the client; it is shown only once):\n  {key}\n");
    println!("add to /etc/otpgate/otpgate.toml (or a conf.d file):\n");
    println!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\n# allow_ips = [\"10.0.0.0/8\"]"
    );
    ExitCode::SUCCESS
}

/// `otpgate run`: the daemon until SIGTERM.
fn run(config: &std::path::Path) -> Result<ExitCode> {
    let sources = Sources::from_process(config);
    let cfg = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(&cfg.log.level, cfg.log.format == "json");
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    runtime()?.block_on(async move {
        let clock: SharedClock = Arc::new(SystemClock);
        let set = otpgate::daemon::build_channels(&cfg, &clock)
            .await
            .context("building channels")?;
        if let Some(wa) = &set.whatsapp {
            wa.start_template_check(&cfg);
        }
        let running = otpgate::daemon::start(cfg, clock, set)
            .await
            .context("starting")?;
        otpgate::daemon::run_until_signalled(sources, running)
            .await
            .context("running")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `otpgate whatsapp check`: the template's fitness per configured language.
fn whatsapp_check(config: &std::path::Path) -> Result<ExitCode> {
    let cfg = match config::load(&Sources::from_process(config)) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    runtime()?.block_on(async move {
        match otpgate::channel::whatsapp::templates::check_config(&cfg).await {
            Ok(report) => {
                print!("{}", report.render());
                let problems = report.problems();
                if problems.is_empty() {
                    return Ok(ExitCode::SUCCESS);
                }
                eprintln!(
                    "otpgate: {} mismatch(es) in template \"{}\"",
                    problems.len(),
                    report.template
                );
                Ok(ExitCode::FAILURE)
            }
            Err(e) => {
                eprintln!("otpgate: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// `otpgate modem probe`: what the modem on `device` says about itself.
fn modem_probe(device: &std::path::Path, baud: u32, timeout: &str) -> Result<ExitCode> {
    let timeout = config::parse_duration(timeout).map_err(anyhow::Error::msg)?;
    runtime()?.block_on(async move {
        match otpgate::channel::sms::modem::probe(device, baud, timeout).await {
            Ok(report) => {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // Every ModemError names the device already.
                eprintln!("otpgate: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// `otpgate reload`: SIGHUP to the daemon, then its verdict from the status file.
fn reload(
    pid: Option<i32>,
    status_file: Option<std::path::PathBuf>,
    timeout: u64,
) -> Result<ExitCode> {
    let path = status_file.unwrap_or_else(otpgate::daemon::reload_status_path);
    let s = otpgate::daemon::request_reload(pid, &path, std::time::Duration::from_secs(timeout))?;
    let headline = match s.result.as_str() {
        "applied" => "reloaded: configuration applied",
        "restart" => "reloaded: applied, but some changes take effect only after a restart",
        "rejected" => "rejected: the previous configuration stays in force",
        _ => "reload result unknown",
    };
    println!("{headline}");
    for d in &s.details {
        println!("  {d}");
    }
    Ok(if s.result == "rejected" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn send(
    to: String,
    code: Option<String>,
    text: Option<String>,
    url: String,
    key: String,
    wait: Option<String>,
    cacert: Option<PathBuf>,
) -> Result<ExitCode> {
    let mut body = serde_json::json!({ "to": to });
    match (code, text) {
        (Some(c), _) => body["code"] = c.into(),
        (None, Some(t)) => body["text"] = t.into(),
        (None, None) => bail!("give --code or --text"),
    }
    let client = http_client(cacert.as_deref())?;
    let mut endpoint = format!("{}/v1/messages", url.trim_end_matches('/'));
    if let Some(w) = wait {
        endpoint.push_str(&format!("?wait={w}"));
    }
    let resp = client
        .post(&endpoint)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("{} {}", status.as_u16(), text);
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
