//! TLS for the listeners: rustls (on the aws-lc-rs provider reqwest
//! already uses), HTTP/2 offered by ALPN, and a certificate that follows
//! its files.
//!
//! cert-manager, kubelet secret volumes and certbot all rotate a
//! certificate by replacing the files (a new inode behind a symlink, or a
//! rename); a server that read them once at start-up keeps serving the old
//! one until it expires. [`ReloadingCert`] is rustls' certificate resolver:
//! on a handshake, at most every [`CHECK_EVERY`], it compares the files'
//! (modification time, size, inode) with the ones it loaded and re-reads
//! them when they changed. Connections already established keep the
//! session they negotiated; new handshakes get the new certificate. A new
//! pair that does not load (half-written, key and certificate that do not
//! match) is logged once and the previous certificate keeps being served.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::either::Either;

/// How often, at most, a handshake looks at the files' metadata. A stat of
/// two files every few seconds costs nothing; a rotation is picked up
/// within this long after the first handshake that follows it.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A client that opened a connection has this long to finish the
/// handshake; a silent socket must not hold a descriptor for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection as the HTTP layer sees it: plain TCP, or TLS over TCP.
pub type Stream = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{cert} and {key}: {err}")]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        err: rustls::Error,
    },
}

/// Where the certificate chain and its private key are (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// What tells one version of a file from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// Reads and parses the pair: the chain and a key that matches its leaf.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|err| TlsError::Read {
            path: path.to_path_buf(),
            err,
        })
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(
            &files.cert,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_err(&files.key, format!("no usable PEM private key: {e}")))?;
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|err| TlsError::Rustls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        err,
    })?;
    Ok(Arc::new(ck))
}

struct State {
    current: Arc<CertifiedKey>,
    /// The stamps of the files the last load was tried on (successful or
    /// not), so a bad pair is reported once, not on every check.
    tried: (Option<Stamp>, Option<Stamp>),
    next_check: Instant,
}

/// The certificate resolver that re-reads its files when they change.
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair now: a server must not start with a certificate it
    /// cannot serve.
    pub fn new(files: TlsFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let tried = (stamp(&files.cert), stamp(&files.key));
        let current = load(&files, &provider)?;
        Ok(ReloadingCert {
            files,
            provider,
            state: Mutex::new(State {
                current,
                tried,
                next_check: Instant::now() + CHECK_EVERY,
            }),
        })
    }

    /// The certificate to serve now, after re-reading the files if they
    /// changed since the last look (and that look is [`CHECK_EVERY`] old).
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= st.next_check {
            st.next_check = now + CHECK_EVERY;
            let stamps = (stamp(&self.files.cert), stamp(&self.files.key));
            if stamps != st.tried {
                st.tried = stamps;
                match load(&self.files, &self.provider) {
                    Ok(ck) => {
                        tracing::info!(cert = %self.files.cert.display(), "tls: certificate reloaded");
                        st.current = ck;
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "tls: the changed certificate files do not load; still serving the previous certificate"
                    ),
                }
            }
        }
        Arc::clone(&st.current)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A listener's TLS side: the acceptor, with its reloading certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// TLS 1.2 and 1.3 with the provider's safe defaults; ALPN offers
    /// `h2` then `http/1.1` (hyper's auto builder then speaks whichever the
    /// client starts with).
    pub fn new(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let resolver = ReloadingCert::new(files.clone(), Arc::clone(&provider))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Rustls {
                cert: files.cert.clone(),
                key: files.key.clone(),
                err,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The handshake, bounded by [`HANDSHAKE_TIMEOUT`]. A failure is the
    /// client's problem (a plain-HTTP client, an untrusted CA): logged at
    /// debug, and the connection is closed.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let peer = tcp.peer_addr().ok();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "tls handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, "tls handshake timed out");
                None
            }
        }
    }
}

/// The stream a connection is served on: `tcp` as is without TLS, else
/// after a successful handshake (None: the handshake failed, drop it).
pub async fn wrap(tls: Option<&Tls>, tcp: TcpStream) -> Option<Stream> {
    match tls {
        None => Some(Either::Left(tcp)),
        Some(tls) => tls.accept(tcp).await.map(Either::Right),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let e = Tls::new(files.clone()).unwrap_err().to_string();
        assert!(e.contains("tls.crt: cannot read"), "{e}");
        std::fs::write(&files.cert, "not pem").unwrap();
        std::fs::write(&files.key, "not pem either").unwrap();
        let e = Tls::new(files.clone()).unwrap_err().to_string();
        assert!(e.contains("tls.crt: no CERTIFICATE"), "{e}");
    }
}
