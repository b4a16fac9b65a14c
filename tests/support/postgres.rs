//! A real PostgreSQL server (Debian's `postgresql` package) in a temporary directory on a
//! loopback port, for `tests/postgres.rs` and `benches/postgres.rs`. PostgreSQL refuses to
//! run as root, and CI runs as root: then the server runs as `nobody`, in a directory
//! handed to it. Clients connect over TCP with `trust` as the role `otpgate`.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The role the tests connect as.
pub const ROLE: &str = "otpgate";
/// `nobody` on Debian.
const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// The newest installed server's binaries (`/usr/lib/postgresql/<major>/bin`), or a failure
/// that says what to install: a missing server must not pass silently.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             install the `postgresql` package (apt-get install postgresql) to run these tests"
        ),
    }
}

/// TLS for the server: its certificate chain and key (PEM).
pub struct ServerTls<'a> {
    /// Certificate (chain) file.
    pub cert: &'a Path,
    /// Private key file.
    pub key: &'a Path,
}

/// A running server; stopped (fast shutdown) when dropped.
pub struct Postgres {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    dir: tempfile::TempDir,
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(NOBODY).gid(NOGROUP);
    }
    cmd
}

fn hand_over(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOGROUP)).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// initdb and start on a free port; `durable` keeps fsync on (benchmarks), tests turn it
    /// off (they kill otpgate, never the server).
    pub fn start(durable: bool) -> Postgres {
        Postgres::start_with(durable, None)
    }

    /// [`Postgres::start`] with TLS on (`ssl = on`), also listening on 127.0.0.2.
    pub fn start_with(durable: bool, tls: Option<ServerTls<'_>>) -> Postgres {
        Postgres::start_conf(durable, tls, "")
    }

    /// [`Postgres::start`] with `pg_stat_statements` loaded (BEGIN and COMMIT counted too),
    /// for the benchmarks' statements per message.
    pub fn start_counting(durable: bool) -> Postgres {
        Postgres::start_conf(
            durable,
            None,
            "shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track_utility = on
",
        )
    }

    fn start_conf(durable: bool, tls: Option<ServerTls<'_>>, extra: &str) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        hand_over(dir.path());
        let data = dir.path().join("data");
        let out = as_server_user(&mut Command::new(bin.join("initdb")))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                ROLE,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nmax_connections = 100\nshared_buffers = 32MB\n",
        );
        if !durable {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        if let Some(t) = tls {
            for (src, name) in [(t.cert, "server.crt"), (t.key, "server.key")] {
                let to = data.join(name);
                std::fs::copy(src, &to).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                hand_over(&to);
            }
            conf = conf.replace("'127.0.0.1'", "'127.0.0.1,127.0.0.2'");
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        conf.push_str(extra);
        let auto = data.join("postgresql.auto.conf");
        std::fs::write(&auto, conf).unwrap();
        hand_over(&auto);
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        hand_over(&dir.path().join("server.log"));
        let child = as_server_user(&mut Command::new(bin.join("postgres")))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Postgres { child, port, dir };
        pg.wait_ready();
        pg
    }

    /// Stops the server (fast shutdown: sessions end, as in a failover or `pg_ctl restart
    /// -m fast`) and waits until it is gone; [`Postgres::resume`] starts it again on the
    /// same port and data.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
    }

    /// Starts the server [`Postgres::stop`] stopped, and waits until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        self.child = as_server_user(&mut Command::new(bin_dir().join("postgres")))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A URL for database `db` (sslmode left to the caller: append `?sslmode=...`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (each test its own, on one server).
    pub async fn create_db(&self, name: &str) {
        let (client, conn) = tokio_postgres::connect(
            &format!("{}?sslmode=disable", self.url("postgres")),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    }

    /// A plain connection to `db`, for what a test checks behind otpgate's back.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("{}?sslmode=disable", self.url(db)),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown, the backends end with the postmaster.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
    }
}
