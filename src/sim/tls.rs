//! Throw-away certificates for tests and `otpgate demo`: one CA ([`TestPki`]) that signs a
//! server certificate for `localhost`, `127.0.0.1` and `::1`, and issues client certificates
//! on demand (for mTLS tests). Everything lives in memory; [`TestPki::write_files`] puts the
//! PEM files on disk for code that wants paths (config `ca_file`, `server.tls`).
//!
//! All rustls configs use the ring provider explicitly, so they work whether or not a
//! process-wide default provider was installed.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why test certificates or TLS configs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused to generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// A PEM blob did not parse.
    #[error("bad PEM ({what}): {source}")]
    Pem {
        /// Which blob.
        what: &'static str,
        /// The parser's complaint.
        source: rustls_pki_types::pem::Error,
    },
}

/// The ring crypto provider, which is the one this crate builds rustls with.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A reqwest client builder for plain HTTP to a daemon on loopback: rustls with the ring
/// provider and no trust anchors (reqwest wants a TLS config even for http URLs) and no proxy
/// from the environment. Tests and benches add what they need and build it.
pub fn loopback_client() -> Result<reqwest::ClientBuilder, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy())
}

/// Paths written by [`TestPki::write_files`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiFiles {
    /// The CA certificate (PEM): give it to clients as a trust anchor.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// A test CA with a server certificate for loopback and a client-certificate issuer.
pub struct TestPki {
    ca_pem: String,
    // The CA doubles as the client-certificate issuer: client certificates carry the
    // clientAuth EKU and the server certificate serverAuth, so one cannot pose as the other.
    issuer: Issuer<'static, KeyPair>,
    server_cert_pem: String,
    server_key_pem: String,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of Debug output even though they are throw-away.
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// Generates a fresh CA and a server certificate for `localhost`, `127.0.0.1`, `::1`.
    pub fn new() -> Result<TestPki, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "otpgate test CA");
        dn.push(DnType::OrganizationName, "otpgate");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &issuer)?;

        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            issuer,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// The CA certificate in PEM form.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The server certificate in PEM form.
    pub fn server_cert_pem(&self) -> String {
        self.server_cert_pem.clone()
    }

    /// The server private key in PEM (PKCS#8) form.
    pub fn server_key_pem(&self) -> String {
        self.server_key_pem.clone()
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` (mode 0600) into `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<PkiFiles, std::io::Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, &self.ca_pem)?;
        std::fs::write(&files.cert, &self.server_cert_pem)?;
        // Create with 0600 from the start so the key is never briefly world-readable.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&files.key)?;
        f.write_all(self.server_key_pem.as_bytes())?;
        Ok(files)
    }

    /// A rustls server config presenting the server certificate (ALPN http/1.1, no client auth).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = vec![parse_cert(&self.server_cert_pem, "server certificate")?];
        let key =
            PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).map_err(|source| {
                TlsError::Pem {
                    what: "server key",
                    source,
                }
            })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Issues a client certificate with common name `cn`: `(cert PEM, key PEM)`.
    pub fn client_cert(&self, cn: &str) -> Result<(String, String), TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA as a root store.
    pub fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(parse_cert(&self.ca_pem, "CA certificate")?)?;
        Ok(roots)
    }

    /// A rustls client config (ring provider) that trusts only this CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        Ok(rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth())
    }
}

fn parse_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn files_are_written_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let pki = TestPki::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = pki.write_files(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&f.ca).unwrap(), pki.ca_pem());
        assert!(
            pki.server_cert_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{pki:?}").contains("PRIVATE KEY"));
    }

    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: rustls::ClientConfig,
        name: &'static str,
    ) -> Result<(), std::io::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"hi").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let sn = rustls_pki_types::ServerName::try_from(name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut tls = connector.connect(sn, tcp).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        let _ = srv.await;
        assert_eq!(buf, b"hi");
        Ok(())
    }

    #[tokio::test]
    async fn client_trusting_the_ca_accepts_the_server_for_all_names() {
        let pki = TestPki::new().unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            if name == "::1" && std::net::TcpListener::bind("[::1]:0").is_err() {
                continue;
            }
            handshake(
                pki.server_config().unwrap(),
                pki.client_config().unwrap(),
                name,
            )
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn a_client_of_another_ca_refuses_the_server() {
        let pki = TestPki::new().unwrap();
        let other = TestPki::new().unwrap();
        let r = handshake(
            pki.server_config().unwrap(),
            other.client_config().unwrap(),
            "localhost",
        )
        .await;
        assert!(r.is_err());
    }

    #[test]
    fn client_certs_are_issued_by_the_ca() {
        let pki = TestPki::new().unwrap();
        let (cert, key) = pki.client_cert("adfs01").unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(PrivateKeyDer::from_pem_slice(key.as_bytes()).is_ok());
        // A client verifier built on the CA accepts it: proof that the CA signed it.
        let roots = Arc::new(pki.root_store().unwrap());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, ring_provider())
                .build()
                .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        verifier.verify_client_cert(&der, &[], now).unwrap();
        let other = TestPki::new().unwrap();
        let (foreign, _) = other.client_cert("x").unwrap();
        let foreign = CertificateDer::from_pem_slice(foreign.as_bytes()).unwrap();
        assert!(verifier.verify_client_cert(&foreign, &[], now).is_err());
    }
}
