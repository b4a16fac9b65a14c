//! `[store]`: the embedded SQLite file or the PostgreSQL a pair shares.

use super::*;

/// `[store]`
pub(super) fn store(v: &mut V<'_>, s: &raw::RawStore, warnings: &mut Vec<String>) -> StoreConfig {
    let backend = match s.backend.as_deref() {
        None | Some("sqlite") => {
            for (key, set) in [
                ("store.url", s.url.is_some()),
                ("store.password_file", s.password_file.is_some()),
                ("store.ca_file", s.ca_file.is_some()),
                ("store.pool_size", s.pool_size.is_some()),
                ("store.node", s.node.is_some()),
                ("store.lease", s.lease.is_some()),
            ] {
                if set {
                    v.err(key, "applies only with store.backend = \"postgres\"");
                }
            }
            StoreBackend::Sqlite
        }
        Some("postgres") => StoreBackend::Postgres(Box::new(postgres(v, s, warnings))),
        Some(other) => {
            v.err(
                "store.backend",
                format!("\"{other}\" is not a backend (expected \"sqlite\" or \"postgres\")"),
            );
            StoreBackend::Sqlite
        }
    };
    StoreConfig {
        path: PathBuf::from(
            s.path
                .clone()
                .unwrap_or_else(|| "/var/lib/otpgate/otpgate.db".into()),
        ),
        retention: v.dur(
            "store.retention",
            &s.retention,
            Duration::from_secs(30 * 86_400),
        ),
        backend,
    }
}

/// `[store]` with `backend = "postgres"`.
pub(super) fn postgres(
    v: &mut V<'_>,
    s: &raw::RawStore,
    warnings: &mut Vec<String>,
) -> PostgresConfig {
    let (url, sslmode) = match s.url.as_deref() {
        None => {
            v.err(
                "store.url",
                "is required with store.backend = \"postgres\" (postgres://user@host/db?sslmode=verify-full)",
            );
            (String::new(), SslMode::Prefer)
        }
        Some(u) => match split_postgres_url(u) {
            Ok(parts) => parts,
            Err(why) => {
                v.err("store.url", why);
                (String::new(), SslMode::Prefer)
            }
        },
    };
    let password = v.secret(
        "store.password_file",
        &s.password_file,
        "postgres-password",
        warnings,
    );
    let ca_file = v.existing_file("store.ca_file", &s.ca_file);
    if ca_file.is_some() && sslmode == SslMode::Disable {
        v.err("store.ca_file", "is unused with sslmode=disable");
    }
    let lease = v.dur("store.lease", &s.lease, Duration::from_secs(30));
    if !(Duration::from_secs(5)..=Duration::from_secs(600)).contains(&lease) {
        v.err("store.lease", "must be between 5s and 10m");
    }
    let connect_timeout = v.dur(
        "store.connect_timeout",
        &s.connect_timeout,
        Duration::from_secs(5),
    );
    if connect_timeout.is_zero() {
        v.err("store.connect_timeout", "must be longer than 0s");
    }
    let statement_timeout = v.dur(
        "store.statement_timeout",
        &s.statement_timeout,
        Duration::from_secs(10),
    );
    if statement_timeout.is_zero() {
        v.err("store.statement_timeout", "must be longer than 0s");
    }
    let node = match &s.node {
        Some(n) => n.trim().to_owned(),
        None => crate::store::postgres::hostname(),
    };
    if node.is_empty() || node.len() > 63 || node.chars().any(|c| c.is_control()) {
        v.err(
            "store.node",
            "must be 1 to 63 printable characters (this box's name among the nodes)",
        );
    }
    PostgresConfig {
        url,
        password: password.as_ref().map(|p| p.0.clone()),
        password_file: password.map(|p| p.1),
        sslmode,
        ca_file,
        pool_size: v.bounded("store.pool_size", s.pool_size, 8, 1, 64),
        connect_timeout,
        statement_timeout,
        node,
        lease,
    }
}

/// Takes `sslmode` out of a `postgres://` URL (the driver knows only three of libpq's five
/// words) and checks the rest. Errors never quote the URL: it may hold a password.
pub fn split_postgres_url(url: &str) -> Result<(String, SslMode), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(
            "must be a postgres:// URL (postgres://user@host:5432/db?sslmode=verify-full)".into(),
        );
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| "the part after ? is not a query string".to_string())?;
    let mut sslmode = SslMode::Prefer;
    let mut kept = Vec::new();
    for (k, val) in pairs {
        match k.as_str() {
            "sslmode" => {
                sslmode = SslMode::parse(&val).ok_or_else(|| {
                    format!(
                        "sslmode \"{val}\" is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?
            }
            "password" => return Err(PASSWORD_IN_URL.into()),
            _ => kept.push((k, val)),
        }
    }
    let rest = serde_urlencoded::to_string(&kept).map_err(|e| e.to_string())?;
    let clean = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{rest}")
    };
    let parsed: tokio_postgres::Config = clean
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("is not a PostgreSQL URL: {e}"))?;
    if parsed.get_password().is_some() {
        return Err(PASSWORD_IN_URL.into());
    }
    if parsed.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    Ok((clean, sslmode))
}

pub(super) const PASSWORD_IN_URL: &str = "must not contain a password (it would show wherever the URL does): \
     put it in store.password_file or the systemd credential postgres-password";
