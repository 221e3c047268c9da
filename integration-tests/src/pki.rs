//! Certificates for TLS tests, made on the spot with rcgen: a private CA, a server
//! certificate for `127.0.0.1` and `sampler.test`, a client certificate, all as PEM files
//! in one temporary directory; and a TLS/HTTP client that trusts that CA, for sending
//! exactly the requests a test chooses (or none: to watch a handshake fail).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::HarnessError;

/// Name in the server certificate besides `127.0.0.1`.
pub const SERVER_NAME: &str = "sampler.test";

/// PEM files `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key` in a
/// temporary directory (removed on drop).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A fresh CA and certificates signed by it.
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        pki.issue(pki.dir.path());
        pki
    }

    /// Path of one of the files (`ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces every file with ones from a new CA, the way a Secret update does: written
    /// aside, then renamed over the old ones.
    pub fn rotate(&self) {
        let staging = self.dir.path().join("next");
        std::fs::create_dir_all(&staging).expect("staging dir");
        self.issue(&staging);
        for name in [
            "ca.pem",
            "server.pem",
            "server.key",
            "client.pem",
            "client.key",
        ] {
            std::fs::rename(staging.join(name), self.path(name)).expect("rename");
        }
    }

    fn issue(&self, dir: &Path) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subject names: OpenSSL takes a leaf named like its issuer for
        // self-signed (rcgen names every certificate alike by default).
        ca.distinguished_name = common_name("otel-tail test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let leaf = |names: Vec<String>, ip: bool, stem: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names.clone()).expect("params");
            params.distinguished_name = common_name(&names[0]);
            if ip {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            }
            let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("leaf");
            std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
        };
        leaf(vec![SERVER_NAME.into()], true, "server");
        leaf(vec!["client.test".into()], false, "client");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    }

    /// A TLS client configuration trusting this CA now (files read at call time),
    /// presenting the client certificate when `client_cert`.
    pub fn client_config(&self, client_cert: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca.pem") {
            roots.add(cert.expect("certificate")).expect("root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = if client_cert {
            let chain = CertificateDer::pem_file_iter(self.path("client.pem"))
                .expect("client.pem")
                .collect::<Result<Vec<_>, _>>()
                .expect("certificates");
            let key = PrivateKeyDer::from_pem_file(self.path("client.key")).expect("client.key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// One HTTP/1.1 connection over TLS, kept open across requests.
pub struct TlsConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl TlsConnection {
    /// Connects to `addr` and completes the TLS handshake verifying [`SERVER_NAME`].
    pub async fn open(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsConnection, HarnessError> {
        let err = |message: String| HarnessError::Http {
            url: format!("https://{addr}"),
            message,
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| err(e.to_string()))?;
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| err(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| err(format!("TLS handshake: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::spawn(connection);
        Ok(TlsConnection { sender, addr })
    }

    /// `POST path` with a protobuf body and the given extra headers; the status and body.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), HarnessError> {
        let err = |message: String| HarnessError::Http {
            url: format!("https://{}{path}", self.addr),
            message,
        };
        let mut request = Request::post(path)
            .header("host", SERVER_NAME)
            .header("content-type", "application/x-protobuf");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err(e.to_string()))?;
        let exchange = async {
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| err(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(crate::http_client::REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| err("timed out".into()))?
    }
}
