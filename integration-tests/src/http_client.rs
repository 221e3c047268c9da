//! A minimal HTTP/1.1 client for the admin endpoint and for raw OTLP/HTTP requests
//! (the bad-input tests need to send exactly the bytes and headers they choose).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::HarnessError;

/// Upper bound on any single request, so a stuck server fails the test instead of
/// hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8, for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as a string, if present and printable.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Result<HttpResponse, HarnessError> {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// `POST url` with the given headers and body.
pub async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<HttpResponse, HarnessError> {
    send(Method::POST, url, headers, body.into()).await
}

async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<HttpResponse, HarnessError> {
    let err = |message: String| HarnessError::Http {
        url: url.to_string(),
        message,
    };
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| err(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| err(format!("{e:?}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| err(format!("no response within {REQUEST_TIMEOUT:?}")))?
}
