//! The exporters over TLS against real rustls servers with certificates made here: a
//! private CA trusted through `ca_file`, a server name other than the address dialled,
//! `insecure_skip_verify`, a client certificate for mutual TLS, and the refusals when a
//! certificate does not verify.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ::http::HeaderMap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::*;

/// PEM files of a CA, a server certificate (for 127.0.0.1 and `collector.test`) and a
/// client certificate, all in one temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, ip: bool, stem: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            if ip {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            }
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        };
        leaf(vec!["collector.test".into()], true, "server");
        leaf(vec!["sampler.test".into()], false, "client");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// What the TLS server saw: request paths and `x-api-key` values.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, String)>>);

/// A TLS server answering OTLP/HTTP and OTLP/gRPC exports with success; with
/// `client_ca`, it requires a client certificate signed by it.
async fn start_tls_server(pki: &Pki, client_ca: Option<&Path>) -> (SocketAddr, Arc<Seen>) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = recorded.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(request, &seen).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn answer(
    request: ::http::Request<Incoming>,
    seen: &Seen,
) -> ::http::Response<BoxBody<Bytes, Infallible>> {
    let grpc = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let path = request.uri().path().to_owned();
    let _ = request.into_body().collect().await;
    seen.0.lock().unwrap().push((path, key));
    let (content_type, body) = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        // An empty response message: uncompressed, length 0.
        let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        ("application/grpc", body)
    } else {
        ("application/x-protobuf", Full::new(Bytes::new()).boxed())
    };
    ::http::Response::builder()
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

/// An OTLP/HTTP exporter config whose `x-api-key` comes from a file (`headers_from_files`).
fn https_config(endpoint: String, tls: TlsConfig) -> OtlpHttpExporterConfig {
    let key = std::env::temp_dir().join(format!("otel-tail-api-key-{}", std::process::id()));
    std::fs::write(&key, "secret\n").unwrap();
    OtlpHttpExporterConfig {
        endpoint,
        headers: BTreeMap::new(),
        headers_from_files: BTreeMap::from([("X-Api-Key".to_owned(), key)]),
        compression: Compression::None,
        timeout: Duration::from_secs(5),
        tls,
    }
}

#[tokio::test]
async fn otlphttp_reaches_an_https_endpoint_verified_against_the_configured_ca() {
    let pki = Pki::new();
    let (addr, seen) = start_tls_server(&pki, None).await;
    let trusted = TlsConfig {
        ca_file: Some(pki.path("ca.pem")),
        ..TlsConfig::default()
    };
    let exporter =
        HttpExporter::new(&https_config(format!("https://{addr}"), trusted.clone())).unwrap();
    exporter
        .export(&ExportRequest::Traces(traces(2)))
        .await
        .expect("delivered over TLS");
    assert_eq!(
        seen.0.lock().unwrap().as_slice(),
        &[("/v1/traces".to_owned(), "secret".to_owned())]
    );

    // The system's roots do not know the private CA: refused, retryable, nothing sent.
    let system = HttpExporter::new(&https_config(
        format!("https://{addr}"),
        TlsConfig::default(),
    ));
    if let Ok(system) = system {
        let refused = system.export(&ExportRequest::Traces(traces(1))).await;
        assert!(
            matches!(refused, Err(ExportError::Retryable { .. })),
            "{refused:?}"
        );
    }
    // The certificate names collector.test, not localhost: refused unless told.
    let wrong_name = HttpExporter::new(&https_config(
        format!("https://localhost:{}", addr.port()),
        trusted.clone(),
    ))
    .unwrap();
    assert!(
        wrong_name
            .export(&ExportRequest::Traces(traces(1)))
            .await
            .is_err()
    );
    let named = HttpExporter::new(&https_config(
        format!("https://localhost:{}", addr.port()),
        TlsConfig {
            server_name: Some("collector.test".into()),
            ..trusted
        },
    ))
    .unwrap();
    named
        .export(&ExportRequest::Traces(traces(1)))
        .await
        .expect("verified as collector.test");
    let unverified = HttpExporter::new(&https_config(
        format!("https://localhost:{}", addr.port()),
        TlsConfig {
            insecure_skip_verify: true,
            ..TlsConfig::default()
        },
    ))
    .unwrap();
    unverified
        .export(&ExportRequest::Traces(traces(1)))
        .await
        .expect("insecure_skip_verify accepts any certificate");
    assert_eq!(
        seen.0.lock().unwrap().len(),
        3,
        "refused attempts sent nothing"
    );
}

#[tokio::test]
async fn otlp_grpc_reaches_an_https_endpoint_with_a_client_certificate() {
    let pki = Pki::new();
    let (addr, seen) = start_tls_server(&pki, Some(&pki.path("ca.pem"))).await;
    let mut config = grpc_config(format!("https://{addr}"), Compression::None);
    config.tls = TlsConfig {
        ca_file: Some(pki.path("ca.pem")),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        ..TlsConfig::default()
    };
    let exporter = GrpcExporter::new(&config).unwrap();
    exporter
        .export(&ExportRequest::Traces(traces(2)))
        .await
        .expect("delivered over mutual TLS");
    assert_eq!(
        seen.0.lock().unwrap().as_slice(),
        &[(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export".to_owned(),
            "secret".to_owned()
        )]
    );
    // Without the client certificate the server refuses the handshake.
    config.tls.cert_file = None;
    config.tls.key_file = None;
    let anonymous = GrpcExporter::new(&config).unwrap();
    let refused = anonymous.export(&ExportRequest::Traces(traces(1))).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(seen.0.lock().unwrap().len(), 1);
}
