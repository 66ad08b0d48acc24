//! The embedded trace viewer: the real Jaeger UI, in this process, for
//! when no OTLP endpoint is configured.
//!
//! [otlp-embedded] keeps recent traces in memory and serves the Jaeger UI
//! with the Jaeger query API (`/api/services`, `/api/traces?service=…&limit=…`,
//! `/api/traces/{id}`). It receives OTLP over gRPC; this module also accepts
//! OTLP/HTTP with protobuf bodies (`POST /v1/traces`, gzip or not), decoding
//! the request with prost and handing it to the same trace service, so both
//! of the agent's protocols work. Three listeners, on loopback:
//!
//! | what | default |
//! |---|---|
//! | Jaeger UI and query API | 127.0.0.1:16686 |
//! | OTLP/gRPC | 127.0.0.1:4317 |
//! | OTLP/HTTP | 127.0.0.1:4318 |
//!
//! [otlp-embedded]: https://crates.io/crates/otlp-embedded

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper::body::Bytes;
use otlp_embedded::proto::collector::trace::v1::ExportTraceServiceRequest;
use otlp_embedded::{Config, State, StateRef, TraceService, TraceServiceImpl, TraceServiceServer};
use prost::Message;
use tokio::net::TcpListener;

use crate::cli::Listen;

/// Traces kept, the least recently used going first: about two and a half
/// minutes under the built-in load, a few hundred MB.
const MAX_TRACES: u32 = 2_000;
/// No memory limit beyond the trace count: otlp-embedded 0.0.2's size
/// estimate runs far above the real size (gigabytes for a few dozen of the
/// demo's traces), so a byte limit would evict every trace.
const MAX_MEMORY_BYTES: usize = usize::MAX;
/// Largest OTLP/HTTP request accepted.
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// Where the running viewer listens.
pub struct Viewer {
    pub ui: SocketAddr,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
}

/// Binds the three listeners and serves them on the current runtime.
pub async fn start(ui: Listen, otlp_grpc: Listen, otlp_http: Listen) -> Result<Viewer, String> {
    let state = State::new(Config {
        max_length: MAX_TRACES,
        max_memory_usage: MAX_MEMORY_BYTES,
    });
    let ui_listener = ui.bind("the Jaeger UI").await?;
    let grpc_listener = otlp_grpc.bind("OTLP/gRPC").await?;
    let http_listener = otlp_http.bind("OTLP/HTTP").await?;
    let viewer = Viewer {
        ui: local_addr(&ui_listener)?,
        otlp_grpc: local_addr(&grpc_listener)?,
        otlp_http: local_addr(&http_listener)?,
    };

    let ui_app = otlp_embedded::ui_app(state.clone(), "/");
    tokio::spawn(serve("the Jaeger UI", ui_listener, ui_app));
    tokio::spawn(serve(
        "OTLP/HTTP",
        http_listener,
        otlp_http_app(state.clone()),
    ));
    let grpc = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(TraceServiceImpl::new(state)))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener));
    tokio::spawn(async move {
        if let Err(error) = grpc.await {
            tracing::error!("the embedded OTLP/gRPC receiver stopped: {error}");
        }
    });
    Ok(viewer)
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, String> {
    listener.local_addr().map_err(|e| e.to_string())
}

async fn serve(what: &'static str, listener: TcpListener, app: Router) {
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!("the embedded {what} server stopped: {error}");
    }
}

/// `POST /v1/traces`, OTLP/HTTP with a protobuf body.
fn otlp_http_app(state: StateRef) -> Router {
    let service = Arc::new(TraceServiceImpl::new(state));
    Router::new()
        .route("/v1/traces", post(export_http))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(service)
}

async fn export_http(
    Extract(service): Extract<Arc<TraceServiceImpl>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match decode_export_request(&headers, &body) {
        Ok(request) => request,
        Err((status, reason)) => return (status, reason).into_response(),
    };
    match service.export(tonic::Request::new(request)).await {
        Ok(answer) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            answer.into_inner().encode_to_vec(),
        )
            .into_response(),
        Err(status) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            status.message().to_owned(),
        )
            .into_response(),
    }
}

/// Decodes an OTLP/HTTP protobuf body, gunzipping it if needed.
fn decode_export_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ExportTraceServiceRequest, (StatusCode, String)> {
    let content_type = header_str(headers, header::CONTENT_TYPE);
    if !content_type.starts_with("application/x-protobuf") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected application/x-protobuf, got {content_type:?} (OTLP/JSON is not supported)"
            ),
        ));
    }
    let gunzipped;
    let bytes = match header_str(headers, header::CONTENT_ENCODING) {
        "" | "identity" => body,
        "gzip" => {
            let mut buffer = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_REQUEST_BYTES as u64 * 8)
                .read_to_end(&mut buffer)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
            gunzipped = buffer;
            &gunzipped
        }
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding {other:?}"),
            ));
        }
    };
    ExportTraceServiceRequest::decode(bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad OTLP protobuf: {e}")))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}
