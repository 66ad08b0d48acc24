//! The HTTP client OTLP/HTTP export uses: one hyper HTTP/1.1 connection per
//! request, on the span thread's own runtime, with a hard timeout.
//!
//! Our own rather than one of opentelemetry-otlp's client features, because
//! cargo unifies those features with the host's own dependency on the crate:
//! enabling one here could change which client the host's exporters choose
//! (and a tokio-only client panics on a host thread without a runtime).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

/// Largest response body read (collectors answer with a few bytes).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Plain-HTTP client for the exporter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportClient {
    pub(crate) timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        tokio::time::timeout(self.timeout, send(request))
            .await
            .map_err(|_| format!("no answer from the OTLP endpoint within {:?}", self.timeout))?
    }
}

async fn send(mut request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "cannot export to {uri}: smolder's OTLP/HTTP exporter speaks plain http (use a local collector, or grpc)"
        )
        .into());
    }
    let host = uri.host().ok_or("the OTLP endpoint has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    if let Some(authority) = uri.authority() {
        request.headers_mut().insert(hyper::header::HOST, authority.as_str().parse()?);
    }
    let response = sender.send_request(request.map(Full::new)).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
