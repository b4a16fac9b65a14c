//! The directory RADIUS asks (Active Directory or any LDAP server), through `ldap3` on rustls:
//! find a user with the service account, check a password by binding as the user, read the
//! phone attribute. Two small pools keep connections open, one bound as the service account
//! for searches, one for users' binds; a connection that errs is dropped, not reused. A
//! refused bind's reason (locked, disabled, expired) comes from AD's diagnostic or OpenLDAP's
//! password policy control. Passwords go from the caller to the bind and nowhere else: they
//! are never logged, stored, or kept past the call.

use std::sync::Arc;
use std::time::Duration;

use ldap3::controls::RawControl;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::LdapConfig;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Why a directory call failed. Messages name the user, never a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// No directory is configured.
    #[error("no directory is configured (ldap.url)")]
    NotConfigured,
    /// The server could not be reached, or the connection broke.
    #[error("directory unreachable: {0}")]
    Unreachable(String),
    /// The service account's bind was refused.
    #[error(
        "the service account's bind was refused (result {0}); check ldap.bind_dn and its password"
    )]
    ServiceBind(u32),
    /// The search failed.
    #[error("search failed: {0}")]
    Search(String),
    /// No entry matches the user.
    #[error("no directory entry for user {0:?}")]
    NoSuchUser(String),
    /// More than one entry matches: refused rather than guessing.
    #[error("{1} directory entries match user {0:?}")]
    Ambiguous(String, usize),
    /// Wrong password (or an account the server refuses: disabled, locked, expired).
    #[error("the directory refused the password of {user:?}{}", reason.map(|r| format!(" ({r})")).unwrap_or_default())]
    BadCredentials {
        /// The user name.
        user: String,
        /// The server's reason, when it gives one: AD's diagnostic (account disabled,
        /// locked, ...) or OpenLDAP's password policy control (account locked, ...).
        reason: Option<&'static str>,
    },
    /// The TLS setup (ca_file) is unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A user found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// Its DN (the bind name).
    pub dn: String,
    /// The first non-empty phone attribute value, in the configured order.
    pub phone: Option<String>,
}

/// Escapes a value for an LDAP filter (RFC 4515 3: `*`, `(`, `)`, `\` and NUL as `\XX`).
pub fn escape_filter_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// The user filter with `{user}` replaced by the escaped name.
pub fn user_filter(template: &str, user: &str) -> String {
    template.replace("{user}", &escape_filter_value(user))
}

/// AD's reason for a refused bind, from the "data NNN" in its diagnostic text.
pub fn ad_reason(diagnostic: &str) -> Option<&'static str> {
    let code = diagnostic.split("data ").nth(1)?.get(..3)?;
    Some(match code {
        "525" => "no such user",
        "52e" => "wrong password",
        "530" => "logon not permitted at this time",
        "531" => "logon not permitted from this workstation",
        "532" => "password expired",
        "533" => "account disabled",
        "701" => "account expired",
        "773" => "password must be changed",
        "775" => "account locked",
        _ => return None,
    })
}

/// Whether a refused bind's reason is the account's state (locked, disabled, expired), which
/// a door may tell the user so they call the help desk instead of retrying; a wrong password
/// and an unknown user stay one answer that says neither.
pub fn is_account_state(reason: &str) -> bool {
    !matches!(reason, "wrong password" | "no such user" | "empty password")
}

/// The password policy request control (draft-behera-ldap-password-policy): OpenLDAP's
/// ppolicy overlay says why it refused a bind (locked, expired) only to a client that sends
/// it. Not critical, so a server without it (AD) ignores it.
const PPOLICY_OID: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

/// One BER element: its tag, its value and the bytes after it (definite lengths only, as
/// LDAP's BER allows).
fn ber_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (digits, rest) = b.split_at(n);
        let len = digits
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
        (len, rest)
    };
    if b.len() < len {
        return None;
    }
    let (value, rest) = b.split_at(len);
    Some((tag, value, rest))
}

/// The reason in a password policy response control's value (a SEQUENCE of an optional
/// `[0]` warning and an optional `[1]` error ENUMERATED), when it names one.
pub fn ppolicy_reason(value: &[u8]) -> Option<&'static str> {
    let (0x30, mut fields, _) = ber_element(value)? else {
        return None;
    };
    while !fields.is_empty() {
        let (tag, v, rest) = ber_element(fields)?;
        if tag == 0x81 {
            return match v {
                [0] => Some("password expired"),
                [1] => Some("account locked"),
                [2] => Some("password must be changed"),
                _ => None,
            };
        }
        fields = rest;
    }
    None
}

/// Why a user bind was refused: the password policy control if the server sent one, else
/// AD's "data NNN" in the diagnostic text.
fn bind_reason(r: &ldap3::LdapResult) -> Option<&'static str> {
    r.ctrls
        .iter()
        .filter(|c| c.1.ctype == PPOLICY_OID)
        .find_map(|c| c.1.val.as_deref().and_then(ppolicy_reason))
        .or_else(|| ad_reason(&r.text))
}

/// Picks the phone number: the first attribute in `order` with a non-blank value.
pub fn pick_phone(
    attrs: &std::collections::HashMap<String, Vec<String>>,
    order: &[String],
) -> Option<String> {
    order.iter().find_map(|name| {
        // Attribute names are case-insensitive; servers answer in their own spelling.
        attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.iter().find(|s| !s.trim().is_empty()))
            .map(|s| s.trim().to_owned())
    })
}

/// What the directory looks like per request (the settings a reload may change).
#[derive(Debug, Clone)]
pub struct Search<'a> {
    /// Base DN.
    pub base_dn: &'a str,
    /// Filter template with `{user}`.
    pub user_filter: &'a str,
    /// Phone attributes in order.
    pub phone_attributes: &'a [String],
}

/// One directory operation, on whichever connection [`Directory::with_conn`] hands it (an
/// enum rather than a closure: a pooled connection found dead means running it twice).
enum Op<'a> {
    /// Find a user and read its phone attribute.
    Find(&'a Search<'a>, &'a str),
    /// Bind as a user: their DN and password.
    Bind(&'a str, &'a str),
    /// Bind as the service account again: a round trip that proves the connection alive.
    Probe,
}

/// What an [`Op`] gave back.
enum Done {
    Found(UserEntry),
    Bound,
}

/// Open connections of one kind, and how many may be in use at once.
struct Pool {
    idle: tokio::sync::Mutex<Vec<ldap3::Ldap>>,
    slots: tokio::sync::Semaphore,
}

impl Pool {
    fn new(size: usize) -> Pool {
        Pool {
            idle: tokio::sync::Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(size),
        }
    }
}

/// The connection to the directory: settings fixed at start, two pools of open connections.
/// Searches run on connections bound as the service account and users' binds on others, so
/// neither kind is ever re-bound: a sign-in costs the directory one search and one bind, as
/// FreeRADIUS's does, instead of a third operation to restore the service identity.
pub struct Directory {
    url: String,
    settings: LdapConnSettings,
    bind: Option<(String, Secret)>,
    timeout: Duration,
    searches: Pool,
    binds: Pool,
    pool_size: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn tls_config(cfg: &LdapConfig) -> Result<Arc<rustls::ClientConfig>, DirectoryError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let bad = |e: String| DirectoryError::Tls(format!("ldap.ca_file {}: {e}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DirectoryError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(tls))
}

impl Directory {
    /// Prepares the directory from `[ldap]`; connects lazily.
    pub fn new(cfg: &LdapConfig, metrics: Arc<Metrics>) -> Result<Directory, DirectoryError> {
        let url = cfg.url.clone().ok_or(DirectoryError::NotConfigured)?;
        let starttls = url.starts_with("ldap://") && cfg.starttls;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(cfg.timeout)
            .set_starttls(starttls)
            .set_config(tls_config(cfg)?);
        let pool_size = usize::try_from(cfg.pool_size).unwrap_or(4).max(1);
        Ok(Directory {
            url,
            settings,
            bind: cfg.bind_dn.clone().zip(cfg.bind_password.clone()),
            timeout: cfg.timeout,
            searches: Pool::new(pool_size),
            binds: Pool::new(pool_size),
            pool_size,
            metrics,
        })
    }

    async fn connect(&self) -> Result<ldap3::Ldap, DirectoryError> {
        let (conn, ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.url)
            .await
            .map_err(|e| DirectoryError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "ldap connection ended");
            }
        });
        Ok(ldap)
    }

    /// A new connection, bound as the service account for the search pool.
    async fn fresh(&self, searches: bool) -> Result<ldap3::Ldap, DirectoryError> {
        let r = async {
            let mut l = self.connect().await?;
            if searches {
                self.service_bind(&mut l).await?;
            }
            Ok(l)
        }
        .await;
        r.inspect_err(|e| self.observe(Err(e)))
    }

    /// Binds `ldap` as the service account (or anonymously).
    async fn service_bind(&self, ldap: &mut ldap3::Ldap) -> Result<(), DirectoryError> {
        let (dn, pw) = match &self.bind {
            Some((dn, pw)) => (dn.as_str(), pw.expose()),
            None => ("", ""),
        };
        let r = ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, pw)
            .await
            .map_err(|e| DirectoryError::Unreachable(e.to_string()))?;
        if r.rc != 0 {
            return Err(DirectoryError::ServiceBind(r.rc));
        }
        Ok(())
    }

    /// Runs `op` on a connection from the search pool (bound as the service account) or the
    /// bind pool. A connection goes back to its pool only when `op` succeeded or failed for
    /// the user's reasons.
    async fn with_conn(&self, searches: bool, op: Op<'_>) -> Result<Done, DirectoryError> {
        let pool = if searches {
            &self.searches
        } else {
            &self.binds
        };
        let _slot = pool
            .slots
            .acquire()
            .await
            .map_err(|_| DirectoryError::Unreachable("shutting down".into()))?;
        let pooled = pool.idle.lock().await.pop();
        let (ldap, r) = match pooled {
            Some(mut l) => match self.run(&mut l, &op).await {
                // The server may have closed it while idle (restart, idle timeout): one
                // fresh try, so that costs no sign-in.
                Err(DirectoryError::Unreachable(_)) => {
                    let mut l = self.fresh(searches).await?;
                    let r = self.run(&mut l, &op).await;
                    (l, r)
                }
                r => (l, r),
            },
            None => {
                let mut l = self.fresh(searches).await?;
                let r = self.run(&mut l, &op).await;
                (l, r)
            }
        };
        let keep = match &r {
            Ok(_) => true,
            Err(e) => !matches!(
                e,
                DirectoryError::Unreachable(_) | DirectoryError::ServiceBind(_)
            ),
        };
        self.observe(r.as_ref().map(|_| ()));
        if keep {
            let mut idle = pool.idle.lock().await;
            if idle.len() < self.pool_size {
                idle.push(ldap);
            }
        }
        r
    }

    async fn run(&self, ldap: &mut ldap3::Ldap, op: &Op<'_>) -> Result<Done, DirectoryError> {
        match *op {
            Op::Find(s, user) => find_on(ldap, self.timeout, s, user).await.map(Done::Found),
            Op::Bind(dn, password) => {
                let ppolicy = RawControl {
                    ctype: PPOLICY_OID.to_owned(),
                    crit: false,
                    val: None,
                };
                let r = ldap
                    .with_timeout(self.timeout)
                    .with_controls(ppolicy)
                    .simple_bind(dn, password)
                    .await
                    .map_err(|e| DirectoryError::Unreachable(e.to_string()))?;
                match r.rc {
                    0 => Ok(Done::Bound),
                    _ => Err(DirectoryError::BadCredentials {
                        user: String::new(),
                        reason: bind_reason(&r),
                    }),
                }
            }
            Op::Probe => self.service_bind(ldap).await.map(|()| Done::Bound),
        }
    }

    /// Records reachability for /readyz, STATUS and the `ldap_up` gauge.
    fn observe(&self, r: Result<(), &DirectoryError>) {
        match r {
            Ok(()) => self.metrics.set_ldap_status(None),
            Err(e @ (DirectoryError::Unreachable(_) | DirectoryError::ServiceBind(_))) => {
                self.metrics.set_ldap_status(Some(e.to_string()))
            }
            // The directory answered: a user's problem is not the directory's.
            Err(_) => self.metrics.set_ldap_status(None),
        }
    }

    /// Finds `user` with the service account and reads its phone attribute.
    pub async fn find(&self, s: &Search<'_>, user: &str) -> Result<UserEntry, DirectoryError> {
        match self.with_conn(true, Op::Find(s, user)).await? {
            Done::Found(e) => Ok(e),
            Done::Bound => Err(DirectoryError::NoSuchUser(user.to_owned())),
        }
    }

    /// Finds `user` and checks `password` by binding as it. An empty password is refused
    /// without a bind: LDAP treats it as an anonymous bind, which succeeds.
    pub async fn authenticate(
        &self,
        s: &Search<'_>,
        user: &str,
        password: &[u8],
    ) -> Result<UserEntry, DirectoryError> {
        let refused = |reason| DirectoryError::BadCredentials {
            user: user.to_owned(),
            reason,
        };
        let Ok(password) = std::str::from_utf8(password) else {
            return Err(refused(None));
        };
        if password.is_empty() {
            return Err(refused(Some("empty password")));
        }
        let entry = self.find(s, user).await?;
        match self.with_conn(false, Op::Bind(&entry.dn, password)).await {
            Ok(_) => Ok(entry),
            // The bind knows the reason, the caller the user's name.
            Err(DirectoryError::BadCredentials { reason, .. }) => Err(refused(reason)),
            Err(e) => Err(e),
        }
    }

    /// Checks that the directory answers and the service account binds (for a probe): a
    /// round trip even on a pooled connection, which may have died while idle.
    pub async fn probe(&self) -> Result<(), DirectoryError> {
        self.with_conn(true, Op::Probe).await.map(|_| ())
    }
}

async fn find_on(
    ldap: &mut ldap3::Ldap,
    timeout: Duration,
    s: &Search<'_>,
    user: &str,
) -> Result<UserEntry, DirectoryError> {
    let filter = user_filter(s.user_filter, user);
    let (entries, _) = ldap
        .with_timeout(timeout)
        .search(s.base_dn, Scope::Subtree, &filter, s.phone_attributes)
        .await
        .map_err(|e| DirectoryError::Unreachable(e.to_string()))?
        .success()
        .map_err(|e| DirectoryError::Search(e.to_string()))?;
    match entries.len() {
        0 => Err(DirectoryError::NoSuchUser(user.to_owned())),
        1 => {
            let e = entries
                .into_iter()
                .next()
                .map(SearchEntry::construct)
                .ok_or_else(|| DirectoryError::NoSuchUser(user.to_owned()))?;
            Ok(UserEntry {
                phone: pick_phone(&e.attrs, s.phone_attributes),
                dn: e.dn,
            })
        }
        n => Err(DirectoryError::Ambiguous(user.to_owned(), n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn filter_values_are_escaped_per_rfc4515() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("a*)(uid=*"), "a\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("back\\slash\0"), "back\\5cslash\\00");
        assert_eq!(escape_filter_value("Jörg"), "Jörg");
        assert_eq!(
            user_filter("(&(objectClass=user)(sAMAccountName={user}))", "x)(|(a=*"),
            "(&(objectClass=user)(sAMAccountName=x\\29\\28|\\28a=\\2a))"
        );
        assert_eq!(
            user_filter("(|(uid={user})(mail={user}))", "b"),
            "(|(uid=b)(mail=b))"
        );
    }

    #[test]
    fn ad_bind_diagnostics_name_the_reason() {
        let t = "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data 533, v3839";
        assert_eq!(ad_reason(t), Some("account disabled"));
        assert_eq!(ad_reason(&t.replace("533", "775")), Some("account locked"));
        assert_eq!(ad_reason(&t.replace("533", "52e")), Some("wrong password"));
        assert_eq!(ad_reason(&t.replace("533", "999")), None);
        assert_eq!(ad_reason("invalid credentials"), None);
        assert_eq!(ad_reason("data 5"), None);
    }

    #[test]
    fn only_an_accounts_state_is_for_the_user() {
        let t = "AcceptSecurityContext error, data ";
        for code in ["533", "775", "532", "701", "773", "530", "531"] {
            let r = ad_reason(&format!("{t}{code}, v3839")).unwrap();
            assert!(is_account_state(r), "{r}");
        }
        for code in ["525", "52e"] {
            let r = ad_reason(&format!("{t}{code}, v3839")).unwrap();
            assert!(!is_account_state(r), "{r}");
        }
        assert!(!is_account_state("empty password"));
        assert!(is_account_state(
            ppolicy_reason(&[0x30, 0x03, 0x81, 0x01, 0x01]).unwrap()
        ));
    }

    #[test]
    fn password_policy_controls_name_the_reason() {
        // OpenLDAP's answer for a locked account: SEQUENCE { [1] accountLocked }.
        assert_eq!(
            ppolicy_reason(&[0x30, 0x03, 0x81, 0x01, 0x01]),
            Some("account locked")
        );
        assert_eq!(
            ppolicy_reason(&[0x30, 0x03, 0x81, 0x01, 0x00]),
            Some("password expired")
        );
        // A warning first (grace logins left: [0] { [1] 2 }), then the error.
        assert_eq!(
            ppolicy_reason(&[0x30, 0x08, 0xa0, 0x03, 0x81, 0x01, 0x02, 0x81, 0x01, 0x02]),
            Some("password must be changed")
        );
        // The long length form.
        assert_eq!(
            ppolicy_reason(&[0x30, 0x81, 0x03, 0x81, 0x01, 0x01]),
            Some("account locked")
        );
        // A warning alone, an empty sequence, an error the gateway does not name.
        assert_eq!(
            ppolicy_reason(&[0x30, 0x05, 0xa0, 0x03, 0x80, 0x01, 0x10]),
            None
        );
        assert_eq!(ppolicy_reason(&[0x30, 0x00]), None);
        assert_eq!(ppolicy_reason(&[0x30, 0x03, 0x81, 0x01, 0x05]), None);
        // Truncated, overlong or not a sequence: nothing, and no panic.
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x81, 0x01],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x81],
            &[0x30, 0x80, 0x81, 0x01, 0x01],
            &[0x04, 0x03, 0x81, 0x01, 0x01],
        ] {
            assert_eq!(ppolicy_reason(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_phone_is_the_first_configured_attribute_with_a_value() {
        let order = vec!["mobile".to_string(), "telephoneNumber".to_string()];
        let mut a: HashMap<String, Vec<String>> = HashMap::new();
        assert_eq!(pick_phone(&a, &order), None);
        a.insert("telephonenumber".into(), vec!["+49 30 1234".into()]);
        assert_eq!(pick_phone(&a, &order).as_deref(), Some("+49 30 1234"));
        a.insert(
            "mobile".into(),
            vec!["  ".into(), " +91 98765 43210 ".into()],
        );
        assert_eq!(pick_phone(&a, &order).as_deref(), Some("+91 98765 43210"));
    }
}
