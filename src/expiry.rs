//! When the certificates the daemon loads stop being valid, as
//! `otpgate_certificate_expiry_timestamp_seconds{certificate=...}` (unix seconds of notAfter),
//! so an alert fires weeks before a handshake starts failing. Only what the daemon really
//! loads is exported: a certificate that is not configured has no series.
//!
//! | label | file | which certificate |
//! |---|---|---|
//! | `listener` | `server.tls_cert` | the leaf (the first certificate of the chain) |
//! | `client_ca` | `server.tls_client_ca` | the earliest-expiring CA of the bundle |
//! | `ldap_ca` | `ldap.ca_file` (RADIUS on) | the earliest-expiring CA of the bundle |
//! | `whatsapp_ca` | `whatsapp.ca_file` (WhatsApp on) | the earliest-expiring CA of the bundle |
//!
//! For a bundle of trust anchors the first one to expire is the one that breaks something:
//! whichever peer it signed stops being trusted then.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Config;
use crate::metrics::Metrics;

/// Every `certificate` label value, in the order the table above lists them.
pub const CERTIFICATES: [&str; 4] = ["listener", "client_ca", "ldap_ca", "whatsapp_ca"];

/// Why a certificate file's expiry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The file holds no PEM certificate, or one that is not X.509.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which certificate of a PEM file counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The first one: the leaf of a served chain.
    Leaf,
    /// The one that expires first: a bundle of trust anchors.
    Earliest,
}

/// notAfter, in unix seconds, of the certificate `pick` chooses among the PEM text's.
pub fn not_after(pem: &[u8], pick: Pick) -> Result<i64, String> {
    let mut times = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| format!("not a PEM certificate file ({e})"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("not an X.509 certificate ({e})"))?;
        times.push(cert.validity().not_after.timestamp());
        if pick == Pick::Leaf {
            break;
        }
    }
    times
        .into_iter()
        .min()
        .ok_or_else(|| "contains no certificate".to_string())
}

/// [`not_after`] of a file.
pub fn file_not_after(path: &Path, pick: Pick) -> Result<i64, ExpiryError> {
    let pem = std::fs::read(path).map_err(|e| ExpiryError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    not_after(&pem, pick).map_err(|reason| ExpiryError::Parse {
        path: path.display().to_string(),
        reason,
    })
}

/// The certificate files in force: the listener's from `now` (a reload reads them again),
/// the directory's and WhatsApp's from `boot` (they take effect only after a restart).
pub fn files(now: &Config, boot: &Config) -> Vec<(&'static str, PathBuf, Pick)> {
    let mut v = Vec::new();
    if let Some(tls) = &now.server.tls {
        v.push(("listener", tls.cert.clone(), Pick::Leaf));
        if let Some(ca) = &tls.client_ca {
            v.push(("client_ca", ca.clone(), Pick::Earliest));
        }
    }
    if boot.radius.enabled
        && boot.ldap.url.is_some()
        && let Some(ca) = &boot.ldap.ca_file
    {
        v.push(("ldap_ca", ca.clone(), Pick::Earliest));
    }
    if boot.whatsapp.enabled
        && let Some(ca) = &boot.whatsapp.ca_file
    {
        v.push(("whatsapp_ca", ca.clone(), Pick::Earliest));
    }
    v
}

/// Sets the gauge of every certificate in `files` and drops the series of those no longer
/// loaded. A file that cannot be read loses its series (a stale date would be a lie) and is
/// logged: the listener already refused it, so this only happens when it changed since.
pub fn record(metrics: &Metrics, files: &[(&'static str, PathBuf, Pick)]) {
    for label in CERTIFICATES {
        let found = files.iter().find(|(l, _, _)| *l == label);
        let at = match found {
            Some((_, path, pick)) => match file_not_after(path, *pick) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(certificate = label, error = %e, "cannot read the certificate's expiry");
                    None
                }
            },
            None => None,
        };
        metrics.set_certificate_expiry(label, at);
    }
}

#[cfg(all(test, feature = "simulators"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};

    fn cert(year: i32) -> String {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.not_after = date_time_ymd(year, 1, 1);
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    /// 00:00:00 UTC on 1 January of `year`, by hand (no date crate).
    fn jan1(year: i64) -> i64 {
        let days: i64 = (1970..year)
            .map(|y| {
                if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                    366
                } else {
                    365
                }
            })
            .sum();
        days * 86_400
    }

    #[test]
    fn the_leaf_of_a_chain_and_the_first_to_expire_of_a_bundle() {
        let pem = format!("{}{}", cert(2031), cert(2029));
        assert_eq!(not_after(pem.as_bytes(), Pick::Leaf), Ok(jan1(2031)));
        assert_eq!(not_after(pem.as_bytes(), Pick::Earliest), Ok(jan1(2029)));
    }

    #[test]
    fn a_file_without_a_certificate_says_so() {
        assert_eq!(
            not_after(b"", Pick::Leaf),
            Err("contains no certificate".to_string())
        );
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = not_after(garbage, Pick::Leaf).unwrap_err();
        assert!(e.starts_with("not an X.509 certificate"), "{e}");
        let e = file_not_after(Path::new("/nonexistent/cert.pem"), Pick::Leaf).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/cert.pem: "), "{e}");
    }
}
