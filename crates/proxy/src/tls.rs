//! TLS through rustls: the data-plane listener's certificate (re-read when its files
//! change, the old one kept if the new one is bad) and upstream client configs verified
//! against the system roots or an upstream's `ca_file`.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate, key or CA bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The key does not fit the certificate, or the provider refused it.
    #[error("certificate {cert} with key {key}: {source}")]
    Key {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
        /// rustls's error.
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn pem_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Installs ring as rustls's process-wide crypto provider (call once at start; a second
/// call is harmless). Two enabled providers would otherwise panic at the first handshake.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Loads a certificate chain and its private key, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key_der, &provider).map_err(|source| TlsError::Key {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            source,
        })?;
    Ok(certified)
}

/// The listener's certificate, swappable while connections are served: a handshake reads
/// the current one; established connections keep theirs.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' contents as last read (valid or not), so unchanged files are neither
    /// parsed again nor, when bad, refused again at every check.
    last_seen: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl ReloadingCert {
    /// Loads the certificate and key once; fails if they are unusable.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Result<ReloadingCert, TlsError> {
        let key = load_certified_key(&cert_file, &key_file)?;
        Ok(ReloadingCert {
            cert_file,
            key_file,
            current: ArcSwap::from_pointee(key),
            last_seen: std::sync::Mutex::new(None),
        })
    }

    /// Re-reads the files; a bad pair is refused and the current one keeps serving.
    /// Returns whether a new certificate is now served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let seen = (
            std::fs::read(&self.cert_file).unwrap_or_default(),
            std::fs::read(&self.key_file).unwrap_or_default(),
        );
        if let Ok(mut last) = self.last_seen.lock() {
            if last.as_ref() == Some(&seen) {
                return Ok(false);
            }
            *last = Some(seen);
        }
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        let changed = key.cert != self.current.load().cert;
        if changed {
            self.current.store(Arc::new(key));
        }
        Ok(changed)
    }

    /// The files it reads.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert_file, &self.key_file)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The data-plane TLS config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config for one upstream: the system roots plus its `ca_file`, if any.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| pem_error(path, e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
