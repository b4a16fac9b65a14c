//! OpenLDAP's `slapd` on a loopback port, its config and database in a temporary directory:
//! the real directory for `tests/radius.rs` and `benches/radius.rs`. Starting returns at once;
//! the caller waits for [`Slapd::listening`] with its own bounded wait.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Where the people live.
pub const BASE: &str = "ou=people,dc=example,dc=org";
/// The root DN, also the service account.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
/// Its password.
pub const ADMIN_PW: &str = "admin-pw";

/// A Debian daemon's path: /usr/sbin is not on every PATH.
pub fn sbin(name: &str) -> std::path::PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() { p } else { name.into() }
}

/// A running slapd; killed when dropped.
pub struct Slapd {
    child: Child,
    urls: String,
    /// Its loopback port (ldap://, StartTLS offered when TLS is on).
    pub port: u16,
    /// Its ldaps:// port, when started with TLS.
    pub tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// How the directory is set up beyond its people.
#[derive(Default, Clone, Copy)]
pub struct Setup<'a> {
    /// The certificate chain and key (PEM): it then also listens for ldaps:// and offers
    /// StartTLS on ldap://.
    pub tls: Option<(&'a Path, &'a Path)>,
    /// The ppolicy overlay with lockout after this many failed binds (until an administrator
    /// clears it), as AD's lockout policy does. A person with `pwdAccountLockedTime:
    /// 000001010000Z` is locked from the start: OpenLDAP's way to disable an account.
    pub lockout_after: Option<u32>,
}

impl Slapd {
    /// Loads `people` (uid, password or "" for none, extra LDIF lines or "") and starts
    /// slapd on a free loopback port.
    pub fn spawn(people: &[(&str, &str, &str)]) -> Slapd {
        Slapd::spawn_with(people, Setup::default())
    }

    /// [`Slapd::spawn`] with TLS or a password policy.
    pub fn spawn_with(people: &[(&str, &str, &str)], setup: Setup) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let (module, overlay) = match setup.lockout_after {
            // slapd 2.5 and later carry the ppolicy schema in the module itself.
            Some(_) => (
                "moduleload ppolicy\n",
                "overlay ppolicy\n\
                 ppolicy_default \"cn=default,ou=policies,dc=example,dc=org\"\n\
                 ppolicy_use_lockout\n",
            ),
            None => ("", ""),
        };
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\n{module}\
             pidfile {d}/slapd.pid\n\
             # Nothing listens on /dev/log here: each syslog try would cost four system calls.\n\
             loglevel none\n\
             database mdb\nmaxsize 10485760\n\
             suffix \"dc=example,dc=org\"\n\
             rootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PW}\n\
             directory {d}/db\n\
             access to attrs=userPassword by anonymous auth by self write by * none\n\
             access to * by * read\n{overlay}",
            d = d.display()
        );
        let conf = match setup.tls {
            Some((cert, key)) => format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n{conf}",
                cert.display(),
                key.display()
            ),
            None => conf,
        };
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let mut ldif = String::from(
            "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n\n",
        );
        if let Some(n) = setup.lockout_after {
            ldif.push_str(&format!(
                "dn: ou=policies,dc=example,dc=org\nobjectClass: organizationalUnit\nou: policies\n\n\
                 dn: cn=default,ou=policies,dc=example,dc=org\nobjectClass: organizationalRole\n\
                 objectClass: pwdPolicy\ncn: default\npwdAttribute: userPassword\n\
                 pwdLockout: TRUE\npwdMaxFailure: {n}\npwdLockoutDuration: 0\n\n"
            ));
        }
        for (uid, pw, extra) in people {
            ldif.push_str(&format!(
                "dn: uid={uid},{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
            ));
            if !pw.is_empty() {
                ldif.push_str(&format!("userPassword: {pw}\n"));
            }
            if !extra.is_empty() {
                ldif.push_str(&format!("{extra}\n"));
            }
            ldif.push('\n');
        }
        std::fs::write(d.join("data.ldif"), ldif).unwrap();
        let st = Command::new(sbin("slapadd"))
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(d.join("data.ldif"))
            .output()
            .expect("slapadd (Debian package slapd; .ci/run installs it)");
        assert!(st.status.success(), "slapadd: {st:?}");
        let port = otpgate::sim::config::free_port().unwrap();
        let tls_port = setup
            .tls
            .map(|_| otpgate::sim::config::free_port().unwrap());
        let mut urls = format!("ldap://127.0.0.1:{port}/");
        if let Some(p) = tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let child = run(&urls, &d.join("slapd.conf"));
        Slapd {
            child,
            urls,
            port,
            tls_port,
            _dir: dir,
        }
    }

    /// Starts it again after [`Slapd::stop`], on the same ports with the same database.
    pub fn restart(&mut self) {
        self.stop();
        self.child = run(&self.urls, &self._dir.path().join("slapd.conf"));
    }

    /// Whether it accepts connections yet.
    pub fn listening(&self) -> std::io::Result<()> {
        for p in std::iter::once(self.port).chain(self.tls_port) {
            std::net::TcpStream::connect(("127.0.0.1", p))?;
        }
        Ok(())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// slapd in the foreground (so it dies with its owner) on `urls`. With SLAPD_STATS_LOG set,
/// one line per operation goes to that file (what a test or the bench asked of it).
fn run(urls: &str, conf: &Path) -> Child {
    let stats = std::env::var_os("SLAPD_STATS_LOG").map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    });
    Command::new(sbin("slapd"))
        .arg("-h")
        .arg(urls)
        .arg("-f")
        .arg(conf)
        .args(["-d", if stats.is_some() { "stats" } else { "0" }])
        .stdout(Stdio::null())
        .stderr(stats.map_or_else(Stdio::null, Stdio::from))
        .spawn()
        .expect("slapd (Debian package slapd; .ci/run installs it)")
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
