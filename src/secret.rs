//! Secrets (tokens, PINs, keys) live in files or systemd credentials, never inline in the
//! config, and never print: [`Secret`]'s Debug and Display are masked.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret string whose Debug/Display never reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a secret could not be loaded; never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was empty after trimming.
    #[error("secret file {0} is empty")]
    Empty(PathBuf),
}

/// Where a secret was found, for warnings and `check-config`.
#[derive(Debug, Clone)]
pub struct LoadedSecret {
    /// The value.
    pub secret: Secret,
    /// The file it came from.
    pub path: PathBuf,
    /// True when the file can be read by users other than its owner and group.
    pub world_readable: bool,
}

/// Reads a secret from `path`, trimming one trailing newline and surrounding white space.
pub fn read_secret_file(path: &Path) -> Result<LoadedSecret, SecretError> {
    let raw = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value = raw.trim();
    if value.is_empty() {
        return Err(SecretError::Empty(path.to_path_buf()));
    }
    let world_readable = world_readable(path);
    Ok(LoadedSecret {
        secret: Secret::new(value),
        path: path.to_path_buf(),
        world_readable,
    })
}

fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o004 != 0)
        .unwrap_or(false)
}

/// The path of systemd credential `name`, when the service runs with `LoadCredential=`.
pub fn credential_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let p = Path::new(&dir).join(name);
    p.exists().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_and_trimmed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap().secret.expose(), "abc");
        std::fs::write(&p, "  \n").unwrap();
        assert!(matches!(read_secret_file(&p), Err(SecretError::Empty(_))));
    }
}
