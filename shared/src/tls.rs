//! TLS client configuration for the exporters (rustls with the `ring` provider; no
//! OpenSSL): the system's root certificates by default, or a configured CA file; an optional
//! client certificate; an optional server name to verify instead of the endpoint's host;
//! and, for tests only, no verification at all. Servers' TLS is in [`server`].

pub mod server;

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;

/// Why TLS could not be configured; names the config key.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct TlsError {
    /// The config key at fault.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn error(key: &str, field: &str, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        key: format!("{key}.{field}"),
        reason: reason.to_string(),
    }
}

/// The rustls client configuration for `tls` (under config key `key`, e.g.
/// `exporter.otlp.tls`). ALPN is left to the connector (`h2` for gRPC).
pub fn client_config(tls: &TlsConfig, key: &str) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(key, "min_version", e))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(tls, key)?)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(private)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| error(key, "cert_file", e))?;
            let private =
                PrivateKeyDer::from_pem_file(private).map_err(|e| error(key, "key_file", e))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| error(key, "cert_file", e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A client configuration rebuilt when its files change (checked at most every
/// [`server::RELOAD_CHECK_INTERVAL`] when asked for): the cluster's calls to peers, whose
/// client certificates cert-manager rotates. Each rebuild moves [`ClientTls::current`]'s
/// generation on, so callers can drop connections made with the old one.
pub struct ClientTls {
    tls: TlsConfig,
    key: String,
    current: std::sync::RwLock<ClientLoaded>,
}

struct ClientLoaded {
    config: Arc<ClientConfig>,
    stamp: Vec<FileStamp>,
    checked: std::time::Instant,
    generation: u64,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("key", &self.key).finish()
    }
}

impl ClientTls {
    /// Loads `tls` (under config key `key`); the connector sets ALPN.
    pub fn load(tls: &TlsConfig, key: &str) -> Result<Arc<ClientTls>, TlsError> {
        Ok(Arc::new(ClientTls {
            current: std::sync::RwLock::new(ClientTls::build(tls, key, 0)?),
            tls: tls.clone(),
            key: key.to_owned(),
        }))
    }

    fn build(tls: &TlsConfig, key: &str, generation: u64) -> Result<ClientLoaded, TlsError> {
        let stamp = client_stamp(tls);
        Ok(ClientLoaded {
            config: Arc::new(client_config(tls, key)?),
            stamp,
            checked: std::time::Instant::now(),
            generation,
        })
    }

    /// The configuration to connect with and its generation. Re-reads the files when the
    /// last check is older than the reload interval and they changed; a file that cannot
    /// be read keeps the previous configuration.
    pub fn current(&self) -> (Arc<ClientConfig>, u64) {
        {
            let loaded = self.current.read().unwrap_or_else(|e| e.into_inner());
            if loaded.checked.elapsed() < server::RELOAD_CHECK_INTERVAL {
                return (loaded.config.clone(), loaded.generation);
            }
        }
        let mut loaded = self.current.write().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= server::RELOAD_CHECK_INTERVAL {
            loaded.checked = std::time::Instant::now();
            if client_stamp(&self.tls) != loaded.stamp {
                match ClientTls::build(&self.tls, &self.key, loaded.generation + 1) {
                    Ok(next) => {
                        tracing::info!(key = %self.key, "TLS client certificates reloaded");
                        metrics::counter!(server::names::RELOADS, "outcome" => "ok").increment(1);
                        *loaded = next;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "TLS client certificates not reloaded; keeping the previous ones");
                        metrics::counter!(server::names::RELOADS, "outcome" => "error")
                            .increment(1);
                    }
                }
            }
        }
        (loaded.config.clone(), loaded.generation)
    }

    /// The name peers' certificates are verified against, when not the dialled host.
    pub fn server_name(&self) -> Option<ServerName<'static>> {
        self.tls
            .server_name
            .as_deref()
            .and_then(|name| ServerName::try_from(name.to_owned()).ok())
    }
}

/// The files a client configuration reads.
fn client_stamp(tls: &TlsConfig) -> Vec<FileStamp> {
    file_stamps(&[
        tls.ca_file.as_deref(),
        tls.cert_file.as_deref(),
        tls.key_file.as_deref(),
    ])
}

/// A file's modification time and length, `None` when it cannot be read: what a reload
/// compares (a Secret update swaps the files through a symlink, which changes both).
pub(crate) type FileStamp = Option<(std::time::SystemTime, u64)>;

/// The stamps of `paths` (unset ones included, as `None`).
pub(crate) fn file_stamps(paths: &[Option<&std::path::Path>]) -> Vec<FileStamp> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata((*path)?).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// The trusted roots: `ca_file`'s certificates, else the system's.
fn roots(tls: &TlsConfig, key: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| error(key, "ca_file", e))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(error(key, "ca_file", "holds no usable certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(error(
                    key,
                    "ca_file",
                    "no system root certificates found; install ca-certificates or set ca_file",
                ));
            }
        }
    }
    Ok(roots)
}

/// The server name to verify: `server_name` when set, else `host`.
pub fn server_name(tls: &TlsConfig, host: &str) -> Option<ServerName<'static>> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .ok()
}

/// `insecure_skip_verify`: accepts any certificate, still checking handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
