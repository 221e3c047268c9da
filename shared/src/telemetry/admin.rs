//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (it should be sent traffic: receivers up and, in a cluster, the
//! ring known — whatever the process last told [`Health`]).

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use super::Health;
use crate::receiver::http::serve_connections;
use crate::tls::server::Listener;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = hyper::service::service_fn(move |request| {
        let response = route(&request, &metrics, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    serve_connections(Listener::plain(listener, "admin"), service, shutdown).await
}

fn route(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            // Upkeep drains histogram buckets; this recorder runs no background task for it.
            metrics.run_upkeep();
            let mut response = text(StatusCode::OK, metrics.render());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ if health.is_ready() => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// GETs `path`; returns status, content type and body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, Option<String>, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(crate::telemetry::names::SPANS_RECEIVED).increment(42);
        });
        let health = Health::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handle, health.clone(), async {
            let _ = stopped.await;
        }));

        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(body.contains("otel_tail_spans_received_total 42"), "{body}");

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.trim()), (StatusCode::OK, "ok"));

        let (status, _, _) = get(addr, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready(true);
        let (status, _, _) = get(addr, "/readyz").await;
        assert_eq!(status, StatusCode::OK);

        let (status, _, _) = get(addr, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
