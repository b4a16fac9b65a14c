//! Where the configuration comes from and how the layers stack: the main file, then
//! `conf.d/*.toml` beside it in name order, then `OTPGATE__` environment variables. Structural
//! errors (unknown keys, wrong types) are collected here, each located by origin and key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::raw;
use super::validate::validate;
use super::{Config, ConfigError, ConfigIssue};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The main file.
    pub main: PathBuf,
    /// Environment variables to consider (normally `std::env::vars()`), filtered by prefix.
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// The main file plus the process environment.
    pub fn from_process(main: &Path) -> Self {
        Sources {
            main: main.to_path_buf(),
            env: std::env::vars()
                .filter(|(k, _)| k.starts_with("OTPGATE__"))
                .collect(),
        }
    }
}

/// Loads, layers and validates. The main file must exist; `conf.d/*.toml` beside it is optional.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let (tree, mut issues) = layered_tree(sources)?;
    let files: Vec<PathBuf> = std::iter::once(sources.main.clone())
        .chain(drop_in_files(&sources.main))
        .collect();
    let raw = deserialize_all(tree.clone(), &files, &sources.env, &mut issues);
    let origins = Origins {
        tree: &tree,
        files: &files,
        env: &sources.env,
        main: &sources.main,
    };
    let validated = validate(&raw, &origins, &mut issues);
    if issues.is_empty() {
        Ok(validated)
    } else {
        Err(ConfigError(issues))
    }
}

pub(super) fn issue(
    origin: Option<&str>,
    path: impl Into<String>,
    message: impl Into<String>,
) -> ConfigIssue {
    ConfigIssue {
        origin: origin.map(str::to_owned),
        path: path.into(),
        message: message.into(),
    }
}

/// The files of `conf.d` beside `main`, in name order.
pub fn drop_in_files(main: &Path) -> Vec<PathBuf> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("conf.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn layered_tree(sources: &Sources) -> Result<(config::Value, Vec<ConfigIssue>), ConfigError> {
    use config::{Environment, File, FileFormat};
    let main = &sources.main;
    if !main.exists() {
        return Err(ConfigError(vec![issue(
            Some(&main.display().to_string()),
            "(file)",
            "does not exist; pass --config PATH or create it (the package ships a commented default)",
        )]));
    }
    let mut builder = config::Config::builder().add_source(
        File::from(main.as_path())
            .format(FileFormat::Toml)
            .required(true),
    );
    for f in drop_in_files(main) {
        builder = builder.add_source(File::from(f.as_path()).format(FileFormat::Toml));
    }
    let env: config::Map<String, String> = sources
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut envsrc = Environment::with_prefix("OTPGATE")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env));
    for key in [
        "server.listen",
        "policy.order",
        "policy.whatsapp_countries",
        "policy.sms_countries",
    ] {
        envsrc = envsrc.with_list_parse_key(key);
    }
    builder = builder.add_source(envsrc);
    match builder.build() {
        Ok(c) => Ok((c.cache, Vec::new())),
        // A file that is not TOML: name it in the origin, not inside the message.
        Err(config::ConfigError::FileParse {
            uri: Some(uri),
            cause,
        }) => Err(ConfigError(vec![issue(
            Some(&uri),
            "(syntax)",
            cause.to_string(),
        )])),
        Err(e) => Err(ConfigError(vec![issue(None, "(syntax)", e.to_string())])),
    }
}

/// Where each value of the layered tree came from, for the errors validation finds.
pub(super) struct Origins<'a> {
    tree: &'a config::Value,
    files: &'a [PathBuf],
    env: &'a BTreeMap<String, String>,
    main: &'a Path,
}

impl Origins<'_> {
    /// The main file.
    pub(super) fn main(&self) -> &Path {
        self.main
    }

    /// The file or environment variable that set `path` (`clients[0].allow_ips[1]`); for a key
    /// set nowhere (a missing or defaulted one), the file that holds its table, else the main
    /// file, where an admin would add it.
    pub(super) fn of(&self, path: &str) -> String {
        let segs = parse_path(path);
        origin_at(self.tree, &segs, self.files)
            .or_else(|| env_origin(&segs, self.env))
            .unwrap_or_else(|| self.main.display().to_string())
    }
}

/// The inverse of [`join_path`]: `a.b[2].c` into its segments.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            segs.push(Seg::Key(key.to_owned()));
        }
        for index in pieces {
            if let Some(Ok(i)) = index.strip_suffix(']').map(str::parse) {
                segs.push(Seg::Index(i));
            }
        }
    }
    segs
}

/// Deserializes the tree into the raw layer, collecting every structural error: after each
/// failure the offending key is removed and deserialization tried again.
fn deserialize_all(
    mut tree: config::Value,
    files: &[PathBuf],
    env: &BTreeMap<String, String>,
    issues: &mut Vec<ConfigIssue>,
) -> raw::RawConfig {
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, raw::RawConfig>(tree.clone()) {
            Ok(raw) => return raw,
            Err(err) => {
                let segments = segments_of(err.path());
                let inner = err.into_inner().to_string();
                let message = match unknown_field_name(&inner) {
                    Some(_) => unknown_key_message(&inner),
                    None => strip_config_suffix(&inner),
                };
                let origin =
                    origin_at(&tree, &segments, files).or_else(|| env_origin(&segments, env));
                issues.push(issue(
                    origin.as_deref(),
                    join_path(&segments, None),
                    message,
                ));
                if !remove_at(&mut tree, &segments) {
                    return raw::RawConfig::default();
                }
            }
        }
    }
    raw::RawConfig::default()
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn segments_of(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } | Segment::Enum { variant: key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Unknown => None,
        })
        .collect()
}

fn join_path(segs: &[Seg], extra: Option<&str>) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if let Some(e) = extra {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(e);
    }
    if out.is_empty() { "(root)".into() } else { out }
}

fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn unknown_key_message(msg: &str) -> String {
    match msg.split_once(", expected ") {
        Some((_, expected)) => format!("unknown key (expected {})", strip_config_suffix(expected)),
        None => "unknown key".into(),
    }
}

/// The config crate appends " for key `x` in y"; our messages carry path and origin already.
fn strip_config_suffix(msg: &str) -> String {
    match msg.find(" for key `") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The environment variable that set `segs`, if one did.
fn env_origin(segs: &[Seg], env: &BTreeMap<String, String>) -> Option<String> {
    let mut name = String::from("OTPGATE");
    for s in segs {
        match s {
            Seg::Key(k) => {
                name.push_str("__");
                name.push_str(&k.to_ascii_uppercase());
            }
            Seg::Index(_) => break,
        }
    }
    env.keys()
        .find(|k| k.eq_ignore_ascii_case(&name))
        .map(|k| format!("environment {k}"))
}

fn child<'a>(v: &'a config::Value, seg: &Seg) -> Option<&'a config::Value> {
    match (&v.kind, seg) {
        (config::ValueKind::Table(t), Seg::Key(k)) => t.get(k),
        (config::ValueKind::Array(a), Seg::Index(i)) => a.get(*i),
        _ => None,
    }
}

fn origin_at(tree: &config::Value, segs: &[Seg], files: &[PathBuf]) -> Option<String> {
    let mut cur = tree;
    let mut origin = cur.origin().map(str::to_owned);
    for s in segs {
        match child(cur, s) {
            Some(c) => {
                cur = c;
                if let Some(o) = c.origin() {
                    origin = Some(o.to_owned());
                }
            }
            None => break,
        }
    }
    let origin = origin?;
    // The config crate reports file origins relative to the working directory, and the
    // environment as one source: name the file as configured, and leave env to env_origin.
    let canon = std::fs::canonicalize(&origin).ok()?;
    files
        .iter()
        .find(|f| std::fs::canonicalize(f).ok().as_ref() == Some(&canon))
        .map(|f| f.display().to_string())
}

fn remove_at(tree: &mut config::Value, segs: &[Seg]) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = tree;
    for s in parents {
        let next = match (&mut cur.kind, s) {
            (config::ValueKind::Table(t), Seg::Key(k)) => t.get_mut(k),
            (config::ValueKind::Array(a), Seg::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (&mut cur.kind, last) {
        (config::ValueKind::Table(t), Seg::Key(k)) => t.remove(k).is_some(),
        (config::ValueKind::Array(a), Seg::Index(i)) if *i < a.len() => {
            // Keep indices of later entries stable in messages: blank it rather than shift.
            a[*i] = config::Value::new(None, config::ValueKind::Table(Default::default()));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{MINIMAL, load_with, write};
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_error_is_reported_with_its_path_and_origin() {
        let body = r#"
[server]
listen = ["127.0.0.1:88a", "[::1]:8025"]
bogus = 1
[otp]
default_country = "XX"
default_ttl = "soon"
[[clients]]
name = "adfs"
key_sha256 = "abc"
allow_ips = ["10.0.0.0/33"]
"#;
        let (_d, r) = load_with(body, &[("OTPGATE__LIMITS__PER_RECIPIENT", "lots")]);
        let e = r.unwrap_err();
        let text = e.to_string();
        let paths: Vec<&str> = e.0.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "server.bogus",
            "server.listen[0]",
            "otp.default_country",
            "otp.default_ttl",
            "clients[0].key_sha256",
            "clients[0].allow_ips[0]",
            "limits.per_recipient",
        ] {
            assert!(paths.contains(&want), "missing {want} in {text}");
        }
        assert!(
            text.contains("\"127.0.0.1:88a\" is not a socket address"),
            "{text}"
        );
        let bogus = e.0.iter().find(|i| i.path == "server.bogus").unwrap();
        assert!(
            bogus
                .origin
                .as_deref()
                .unwrap_or("")
                .ends_with("otpgate.toml"),
            "{bogus:?}"
        );
        assert!(bogus.message.starts_with("unknown key"), "{bogus:?}");
    }

    #[test]
    fn layering_drop_ins_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "otpgate.toml",
            "[otp]\ndefault_country = \"IN\"\ndefault_ttl = \"2m\"\n",
        );
        write(
            dir.path(),
            "conf.d/10-a.toml",
            "[otp]\ndefault_ttl = \"3m\"\n",
        );
        write(
            dir.path(),
            "conf.d/20-b.toml",
            "[otp]\ndefault_ttl = \"4m\"\n[store]\npath = \"/tmp/x.db\"\n",
        );
        write(dir.path(), "conf.d/ignored.txt", "garbage");
        let env = [
            ("OTPGATE__STORE__PATH".to_string(), "/tmp/y.db".to_string()),
            (
                "OTPGATE__SERVER__LISTEN".to_string(),
                "127.0.0.1:1,127.0.0.1:2".to_string(),
            ),
        ];
        let c = load(&Sources {
            main,
            env: env.into_iter().collect(),
        })
        .unwrap();
        assert_eq!(c.otp.default_ttl, Duration::from_secs(240));
        assert_eq!(c.store.path, PathBuf::from("/tmp/y.db"));
        assert_eq!(c.server.listen.len(), 2);
    }

    #[test]
    fn unknown_env_key_names_the_variable() {
        let (_d, r) = load_with(MINIMAL, &[("OTPGATE__SERVER__LISTN", "x")]);
        let e = r.unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "server.listn");
        assert!(
            e.0[0]
                .message
                .starts_with("unknown key (expected one of `listen`"),
            "{:?}",
            e.0[0]
        );
        assert!(
            e.0[0]
                .origin
                .as_deref()
                .unwrap_or("")
                .contains("OTPGATE__SERVER__LISTN"),
            "{:?}",
            e.0[0]
        );
    }

    #[test]
    fn shipped_default_config_is_valid() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/otpgate.toml");
        let c = load(&Sources {
            main: shipped,
            env: BTreeMap::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.server.listen.is_empty());
    }

    fn origin_of<'a>(e: &'a ConfigError, path: &str) -> &'a str {
        let i = e.0.iter().find(|i| i.path == path);
        let i = i.unwrap_or_else(|| panic!("no issue at {path}: {e}"));
        i.origin.as_deref().unwrap_or("")
    }

    #[test]
    fn a_bad_value_in_a_drop_in_names_the_drop_in() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "otpgate.toml", MINIMAL);
        write(
            dir.path(),
            "conf.d/10-x.toml",
            "[otp]\ndefault_ttl = \"soon\"\n[limits]\nglobal = \"lots\"\n[whatsapp]\nmax_rate = \"fast\"\n",
        );
        let e = load(&Sources {
            main,
            env: BTreeMap::new(),
        })
        .unwrap_err();
        for path in ["otp.default_ttl", "limits.global", "whatsapp.max_rate"] {
            assert!(
                origin_of(&e, path).ends_with("conf.d/10-x.toml"),
                "{path}: {e}"
            );
        }
        assert!(
            e.to_string()
                .contains("10-x.toml: otp.default_ttl: \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn a_missing_key_names_the_file_that_should_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "otpgate.toml",
            "[store]\npath = \"/tmp/x.db\"\n",
        );
        write(
            dir.path(),
            "conf.d/20-clients.toml",
            "[[clients]]\nname = \"adfs\"\n",
        );
        let e = load(&Sources {
            main: main.clone(),
            env: BTreeMap::new(),
        })
        .unwrap_err();
        assert_eq!(
            origin_of(&e, "otp.default_country"),
            main.display().to_string()
        );
        assert!(
            origin_of(&e, "clients[0].key_sha256").ends_with("conf.d/20-clients.toml"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let (_d, r) = load_with(
            "[otp]\ndefault_country = \"IN\"\n[limits]\nper_recipient = \"5/15m\"\n",
            &[
                ("OTPGATE__LIMITS__PER_RECIPIENT", "lots"),
                ("OTPGATE__SERVER__LISTEN", "127.0.0.1:1,nowhere"),
                ("OTPGATE__OTP__DEFAULT_TTL", "soon"),
            ],
        );
        let e = r.unwrap_err();
        assert_eq!(
            origin_of(&e, "limits.per_recipient"),
            "environment OTPGATE__LIMITS__PER_RECIPIENT"
        );
        assert_eq!(
            origin_of(&e, "server.listen[1]"),
            "environment OTPGATE__SERVER__LISTEN"
        );
        assert_eq!(
            origin_of(&e, "otp.default_ttl"),
            "environment OTPGATE__OTP__DEFAULT_TTL"
        );
    }

    #[test]
    fn key_paths_parse_back_into_segments() {
        for p in [
            "server.listen[0]",
            "clients[2].allow_ips[1]",
            "otp.sms_text_locales.en-GB",
        ] {
            assert_eq!(join_path(&parse_path(p), None), p);
        }
    }

    #[test]
    fn a_syntax_error_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "otpgate.toml", MINIMAL);
        write(dir.path(), "conf.d/30-broken.toml", "[otp\norg = 1\n");
        let e = load(&Sources {
            main,
            env: BTreeMap::new(),
        })
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(
            origin_of(&e, "(syntax)").ends_with("conf.d/30-broken.toml"),
            "{e}"
        );
    }
}
