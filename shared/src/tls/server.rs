//! TLS for the servers (OTLP receivers, the forward endpoint): a certificate and key from
//! PEM files, optionally a CA whose certificates clients must present (mutual TLS), a
//! minimum protocol version; and reloading when the files change, so certificates rotated
//! by cert-manager (a Secret update) take effect for new connections without a restart
//! and without dropping open ones.
//!
//! [`Listener`] is what the servers accept on: plain TCP, or TCP with a TLS handshake run
//! off the accept loop (bounded by a deadline, so a client that never finishes its
//! handshake holds only its socket).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::TlsError;
use crate::config::{ServerTlsConfig, TlsVersion};

/// Metric names.
pub mod names {
    /// Counter of TLS handshakes that failed or timed out, label `listener`.
    pub const HANDSHAKE_FAILURES: &str = "otel_tail_tls_handshake_failures_total";
    /// Counter of certificate reloads, label `outcome` (`ok` or `error`).
    pub const RELOADS: &str = "otel_tail_tls_reloads_total";
}

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A server's TLS configuration, rebuilt from its files when they change.
pub struct ServerTls {
    config: ServerTlsConfig,
    key: String,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Loaded>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    stamp: Vec<super::FileStamp>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("key", &self.key).finish()
    }
}

impl ServerTls {
    /// Loads `config` (under config key `key`, e.g. `receiver.tls`), offering the ALPN
    /// protocols `alpn` (`h2` for gRPC; `h2` and `http/1.1` for OTLP/HTTP).
    pub fn load(
        config: &ServerTlsConfig,
        key: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerTls>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let loaded = build(config, key, &alpn)?;
        Ok(Arc::new(ServerTls {
            config: config.clone(),
            key: key.to_owned(),
            alpn,
            current: RwLock::new(loaded),
        }))
    }

    /// The acceptor for a new connection, with the certificates loaded last.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.config.clone())
    }

    /// Reloads when a file changed since the last load: `Ok(true)` when reloaded. A file
    /// that cannot be read or parsed keeps the previous certificates (and is an error).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = stamp(&self.config);
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.stamp == stamp {
                return Ok(false);
            }
        }
        let loaded = build(&self.config, &self.key, &self.alpn)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(true)
    }

    /// Checks the files every [`RELOAD_CHECK_INTERVAL`] while `tls` is in use elsewhere.
    pub fn watch(tls: &Arc<ServerTls>) {
        let weak = Arc::downgrade(tls);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_CHECK_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                match tls.reload_if_changed() {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(key = %tls.key, "TLS certificates reloaded");
                        metrics::counter!(names::RELOADS, "outcome" => "ok").increment(1);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "TLS certificates not reloaded; keeping the previous ones");
                        metrics::counter!(names::RELOADS, "outcome" => "error").increment(1);
                    }
                }
            }
        });
    }
}

/// The files a server configuration reads, for [`super::file_stamps`].
fn stamp(config: &ServerTlsConfig) -> Vec<super::FileStamp> {
    super::file_stamps(&[
        config.cert_file.as_deref(),
        config.key_file.as_deref(),
        config.client_ca_file.as_deref(),
    ])
}

fn field_error(key: &str, field: &str, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        key: format!("{key}.{field}"),
        reason: reason.to_string(),
    }
}

fn required<'a>(path: &'a Option<PathBuf>, key: &str, field: &str) -> Result<&'a Path, TlsError> {
    path.as_deref()
        .ok_or_else(|| field_error(key, field, "is required when TLS is configured"))
}

fn build(config: &ServerTlsConfig, key: &str, alpn: &[Vec<u8>]) -> Result<Loaded, TlsError> {
    // Stamp first: a change during the read is then seen again at the next check.
    let stamp = stamp(config);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| field_error(key, "min_version", e))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| field_error(key, "client_ca_file", e))?
            {
                let cert = cert.map_err(|e| field_error(key, "client_ca_file", e))?;
                roots
                    .add(cert)
                    .map_err(|e| field_error(key, "client_ca_file", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| field_error(key, "client_ca_file", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cert_file = required(&config.cert_file, key, "cert_file")?;
    let key_file = required(&config.key_file, key, "key_file")?;
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| field_error(key, "cert_file", e))?;
    if chain.is_empty() {
        return Err(field_error(key, "cert_file", "holds no certificate"));
    }
    let private =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| field_error(key, "key_file", e))?;
    let mut server = builder
        .with_single_cert(chain, private)
        .map_err(|e| field_error(key, "key_file", e))?;
    server.alpn_protocols = alpn.to_vec();
    Ok(Loaded {
        config: Arc::new(server),
        stamp,
    })
}

/// A connection a server accepted: plain TCP or TLS over TCP, with its share of the
/// server's request byte budget.
pub struct Conn {
    io: Io,
    budget: ConnectionBudget,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(stream) => stream,
            Io::Tls(stream) => stream.get_ref().0,
        }
    }

    /// The bytes requests on this connection may hold at once.
    pub fn budget(&self) -> ConnectionBudget {
        self.budget.clone()
    }
}

/// What requests on one connection may hold at once, in bytes; shared by the connection's
/// requests (HTTP/2 multiplexes many), so one client cannot take a server's whole budget.
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    capacity: usize,
}

impl ConnectionBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let capacity = bytes.min(tokio::sync::Semaphore::MAX_PERMITS);
        ConnectionBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
        }
    }

    /// The semaphore whose permits are the bytes.
    pub fn bytes(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.bytes
    }

    /// The whole budget, in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What tonic attaches to every request of a gRPC connection: its address and budget.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Addresses of the TCP connection.
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// The connection's byte budget.
    pub budget: ConnectionBudget,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            tcp: self.tcp().connect_info(),
            budget: self.budget.clone(),
        }
    }
}

/// A bound server socket, with TLS when configured.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
    handshake_timeout: Duration,
    name: &'static str,
    /// Bytes each connection's requests may hold at once.
    connection_bytes: usize,
}

impl Listener {
    /// Serves `tcp` as it is; `name` labels its metrics (`grpc`, `http`, `forward`, ...).
    pub fn plain(tcp: TcpListener, name: &'static str) -> Listener {
        Listener {
            tcp,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            name,
            connection_bytes: usize::MAX,
        }
    }

    /// Serves `tcp` over TLS with `tls`; a handshake must finish within `timeout`.
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>, timeout: Duration) -> Listener {
        self.tls = tls;
        self.handshake_timeout = timeout;
        self
    }

    /// Gives each accepted connection a budget of `bytes` for its requests (default:
    /// unbounded, leaving only the server's total budget).
    pub fn with_connection_budget(mut self, bytes: usize) -> Listener {
        self.connection_bytes = bytes;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepted connections, handshakes done (concurrently, off the accept loop). Ends
    /// when the stream is dropped. Failed handshakes are counted and logged, not yielded.
    pub fn incoming(self) -> ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = self.tcp.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            // Typically out of file descriptors: back off instead of spinning.
                            tracing::warn!(%error, listener = self.name, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "setting TCP_NODELAY failed");
                }
                let budget = ConnectionBudget::new(self.connection_bytes);
                let Some(tls) = &self.tls else {
                    let conn = Conn {
                        io: Io::Plain(stream),
                        budget,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let acceptor = tls.acceptor();
                let (tx, timeout, name) = (tx.clone(), self.handshake_timeout, self.name);
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = Io::Tls(Box::new(stream));
                            let _ = tx.send(Ok(Conn { io, budget })).await;
                        }
                        outcome => {
                            let error = match outcome {
                                Ok(Err(error)) => error.to_string(),
                                _ => format!("no handshake within {timeout:?}"),
                            };
                            tracing::debug!(%error, listener = name, "TLS handshake failed");
                            metrics::counter!(names::HANDSHAKE_FAILURES, "listener" => name)
                                .increment(1);
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
