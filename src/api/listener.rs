//! The HTTP/1.1 listener: hyper 1 on tokio, optional TLS through rustls (client certificates
//! required when a client CA is configured). Defences against slow or hostile clients: a cap
//! on concurrent connections (excess waits in the kernel backlog), a TLS handshake and header
//! timeout, an idle keep-alive timeout, a body timeout ([`super::BODY_TIMEOUT`], 408 and
//! close) and a per-request timeout in the router. With every slot taken, a few reserve
//! connections still answer the health probes (and tell anyone else to come back), so a
//! flood of slow clients does not make the orchestrator kill a working gateway.

use std::convert::Infallible;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{ServerConfig, TlsFiles};

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the certificate/key pair or CA.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |what: String| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let f = std::fs::File::open(path).map_err(|e| pem_err(e.to_string()))?;
    let certs: Vec<_> = CertificateDer::pem_reader_iter(&mut BufReader::new(f))
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(pem_err("contains no certificate".into()));
    }
    Ok(certs)
}

/// Builds the rustls acceptor from the configured files.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Pem {
        path: files.key.display().to_string(),
        what: format!("no usable private key ({e})"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// What the router needs to know about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Handles one request; implemented by the router.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response.
    fn handle(
        &self,
        req: http::Request<Incoming>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> + Send;
}

/// Settings the listener reads per connection; swapped as a whole on reload.
#[derive(Clone)]
pub struct ListenSettings {
    /// TLS acceptor, when TLS is on.
    pub tls: Option<TlsAcceptor>,
    /// Header (and TLS handshake) timeout.
    pub header_timeout: Duration,
    /// Keep-alive idle timeout.
    pub idle_timeout: Duration,
}

impl ListenSettings {
    /// From the server config (building the TLS acceptor).
    pub fn from_config(s: &ServerConfig) -> Result<Self, TlsError> {
        Ok(ListenSettings {
            tls: s.tls.as_ref().map(tls_acceptor).transpose()?,
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
        })
    }
}

/// Live connection counters, for tests and the status line.
#[derive(Default, Debug)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
}

/// Serves `listener` until `shutdown` turns true, then lets requests in flight finish
/// (up to `drain`) and returns.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: Arc<RwLock<ListenSettings>>,
    max_connections: usize,
    stats: Arc<ConnStats>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let reserve = Arc::new(Semaphore::new(HEALTH_RESERVE));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        // Take a slot before accepting: over the cap, connections wait in the kernel backlog
        // instead of costing us memory.
        // With every slot taken, a reserve slot: it serves the health probes only.
        let (permit, health_only) = tokio::select! {
            biased;
            p = slots.clone().acquire_owned() => match p { Ok(p) => (p, false), Err(_) => break },
            p = reserve.clone().acquire_owned() => match p { Ok(p) => (p, true), Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // A slot freed while this one waited in accept: a full connection after all.
        let (permit, health_only) = if health_only && let Ok(p) = slots.clone().try_acquire_owned()
        {
            (p, false)
        } else {
            (permit, health_only)
        };
        let _ = stream.set_nodelay(true);
        let cfg = match settings.read() {
            Ok(s) => s.clone(),
            Err(_) => break,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let (handler, stats, stop) = (handler.clone(), stats.clone(), shutdown.clone());
        conns.spawn(async move {
            let _permit = permit;
            connection(stream, remote, health_only, &cfg, handler, stop).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all_done).await.is_err() {
        tracing::warn!("some connections were still busy after the drain period");
        conns.abort_all();
    }
}

/// One accepted connection: its TLS handshake (bounded by the header timeout), then HTTP.
async fn connection<H: Handler>(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    health_only: bool,
    cfg: &ListenSettings,
    handler: Arc<H>,
    stop: watch::Receiver<bool>,
) {
    match &cfg.tls {
        Some(acceptor) => {
            match tokio::time::timeout(cfg.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let info = ConnInfo { remote, tls: true };
                    serve_conn(TokioIo::new(tls), handler, info, health_only, cfg, stop).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        }
        None => {
            let info = ConnInfo { remote, tls: false };
            serve_conn(TokioIo::new(stream), handler, info, health_only, cfg, stop).await;
        }
    }
}

/// Connections beyond `max_connections` that answer the health probes while every slot is
/// taken (by slow clients, say); one request each.
pub const HEALTH_RESERVE: usize = 8;

/// What a connection on a reserve slot may ask for.
fn is_health_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The answer to anything but a health probe on a reserve slot.
fn busy() -> super::Resp {
    let mut r = super::error_response(&super::error::ApiError {
        retry_after: Some(1),
        ..super::error::ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "every connection slot is taken; retry shortly",
        )
    });
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

async fn serve_conn<I, H>(
    io: I,
    handler: Arc<H>,
    info: ConnInfo,
    health_only: bool,
    cfg: &ListenSettings,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let activity = Arc::new(Activity::default());
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let handler = handler.clone();
        let act = act.clone();
        async move {
            if health_only && !is_health_probe(req.uri().path()) {
                return Ok::<_, Infallible>(busy());
            }
            act.busy.fetch_add(1, Ordering::SeqCst);
            let mut resp = handler.handle(req, info).await;
            if resp.status() == http::StatusCode::REQUEST_TIMEOUT {
                // The rest of a late body may still be on its way: never read it as a request.
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            act.busy.fetch_sub(1, Ordering::SeqCst);
            act.touch();
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(!health_only)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = cfg.idle_timeout;
    loop {
        let since = activity.idle_for();
        let wait = idle.saturating_sub(since).max(Duration::from_millis(10));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(remote = %info.remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed() => {
                // Finish the request in flight, then close instead of keeping the connection alive.
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.as_mut().await {
                    tracing::debug!(remote = %info.remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(wait) => {
                if activity.busy.load(Ordering::SeqCst) == 0 && activity.idle_for() >= idle {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

#[derive(Default)]
struct Activity {
    busy: AtomicUsize,
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Activity {
    fn touch(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(tokio::time::Instant::now());
        }
    }
    fn idle_for(&self) -> Duration {
        let mut l = match self.last.lock() {
            Ok(l) => l,
            Err(_) => return Duration::ZERO,
        };
        let now = tokio::time::Instant::now();
        let last = *l.get_or_insert(now);
        now.saturating_duration_since(last)
    }
}
