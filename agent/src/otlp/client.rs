//! Transports: one encoded export request to the collector, over OTLP/HTTP
//! (hyper, HTTP/1.1, kept alive) or OTLP/gRPC (tonic), on the span thread's
//! own runtime, within the export timeout.
//!
//! Both take the request already encoded (`encode.rs`), so neither knows
//! the message types: the HTTP body is the protobuf as it is, and gRPC
//! sends it through a pass-through codec.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Request, Uri};
use hyper_util::rt::TokioIo;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Channel;

use crate::config::{OtlpProtocol, OtlpSettings};

/// Largest response body read (collectors answer with a few bytes).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The trace service's one method.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A way to the collector.
pub(crate) enum Transport {
    Http(HttpTransport),
    Grpc(GrpcTransport),
}

impl Transport {
    /// Checks the settings and prepares the connection (gRPC connects
    /// lazily, on the first export). Must run inside the span thread's
    /// runtime, which the gRPC channel's background task is spawned on.
    pub(crate) fn new(settings: &OtlpSettings) -> Result<Transport, String> {
        match settings.protocol {
            OtlpProtocol::HttpProtobuf => HttpTransport::new(settings).map(Transport::Http),
            OtlpProtocol::Grpc => GrpcTransport::new(settings).map(Transport::Grpc),
        }
    }

    /// Sends one `ExportTraceServiceRequest`; an error says what the
    /// collector did (or failed to do) in words for a log.
    pub(crate) async fn export(&mut self, request: Vec<u8>, timeout: Duration) -> Result<(), String> {
        let sending = async {
            match self {
                Transport::Http(http) => http.export(request).await,
                Transport::Grpc(grpc) => grpc.export(request).await,
            }
        };
        tokio::time::timeout(timeout, sending)
            .await
            .map_err(|_| format!("no answer from the OTLP endpoint within {timeout:?}"))?
    }
}

// === impl HttpTransport ===

/// OTLP/HTTP with protobuf bodies, over one kept-alive connection.
pub(crate) struct HttpTransport {
    uri: Uri,
    /// Host and port, to connect to.
    address: (String, u16),
    /// Every header the request carries: content type, host, the user's.
    headers: HeaderMap,
    gzip: bool,
    /// The connection of the last successful exchange, if the collector
    /// kept it open.
    kept: Option<Connection>,
}

/// An HTTP/1.1 connection: the request side, and the task driving the
/// socket, which is aborted (closing the socket) when this is dropped. A
/// collector that never answers therefore cannot leave a socket behind:
/// the timed-out export drops its connection.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpTransport {
    fn new(settings: &OtlpSettings) -> Result<HttpTransport, String> {
        let endpoint = &settings.endpoint;
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("the OTLP endpoint {endpoint:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "cannot export to {endpoint}: smolder's OTLP/HTTP exporter speaks plain http \
                 (use a local collector, or grpc)"
            ));
        }
        let authority = uri.authority().ok_or("the OTLP endpoint has no host")?;
        let address = (
            authority.host().trim_matches(['[', ']']).to_owned(),
            authority.port_u16().unwrap_or(80),
        );
        let mut headers = HeaderMap::new();
        let mut insert = |name: &str, value: &str| -> Result<(), String> {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("OTLP header name {name:?}: {e}"))?;
            let value = value
                .parse()
                .map_err(|e| format!("OTLP header {name} value: {e}"))?;
            headers.insert(name, value);
            Ok(())
        };
        insert("host", authority.as_str())?;
        insert("content-type", "application/x-protobuf")?;
        if settings.gzip {
            insert("content-encoding", "gzip")?;
        }
        for (name, value) in &settings.headers {
            insert(name, value)?;
        }
        Ok(HttpTransport {
            uri,
            address,
            headers,
            gzip: settings.gzip,
            kept: None,
        })
    }

    async fn export(&mut self, request: Vec<u8>) -> Result<(), String> {
        let body = Bytes::from(if self.gzip { gzip(&request)? } else { request });
        // A kept connection may have been closed by the collector while it
        // sat idle, which shows as an error before any answer: then the
        // request goes again, once, on a fresh connection.
        if let Some(mut connection) = self.kept.take()
            && connection.sender.ready().await.is_ok()
            && let Ok(status) = self.exchange(&mut connection, body.clone()).await
        {
            return self.settle(connection, status);
        }
        let mut connection = self.connect().await?;
        let status = self.exchange(&mut connection, body).await?;
        self.settle(connection, status)
    }

    async fn connect(&self) -> Result<Connection, String> {
        let (host, port) = (&self.address.0, self.address.1);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to the OTLP endpoint {}: {e}", self.uri))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    /// One request and its whole (bounded) answer, so the connection is
    /// ready for the next one.
    async fn exchange(&self, connection: &mut Connection, body: Bytes) -> Result<hyper::StatusCode, String> {
        let mut post = Request::post(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        *post.headers_mut() = self.headers.clone();
        let response = connection
            .sender
            .send_request(post)
            .await
            .map_err(|e| format!("the OTLP endpoint {} dropped the request: {e}", self.uri))?;
        let status = response.status();
        Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the OTLP endpoint's answer was cut short: {e}"))?;
        Ok(status)
    }

    /// Keeps the connection for next time and judges the answer.
    fn settle(&mut self, connection: Connection, status: hyper::StatusCode) -> Result<(), String> {
        self.kept = Some(connection);
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the OTLP endpoint {} answered {status}", self.uri))
        }
    }
}

/// Fast compression: spans are repetitive text and shrink several times at
/// the lowest level; higher levels cost the span thread more for little.
fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body).map_err(|e| e.to_string())?;
    encoder.finish().map_err(|e| e.to_string())
}

// === impl GrpcTransport ===

/// OTLP/gRPC: tonic's channel (one HTTP/2 connection, reconnected when it
/// drops) calling `TraceService/Export` with the request as encoded.
pub(crate) struct GrpcTransport {
    client: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
}

impl GrpcTransport {
    fn new(settings: &OtlpSettings) -> Result<GrpcTransport, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| format!("the OTLP endpoint {:?} is not a URL: {e}", settings.endpoint))?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout);
        let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
        if settings.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let mut metadata = MetadataMap::new();
        for (name, value) in &settings.headers {
            let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|e| format!("OTLP header name {name:?}: {e}"))?;
            let value = MetadataValue::try_from(value.as_str()).map_err(|e| format!("OTLP header {name} value: {e}"))?;
            metadata.insert(key, value);
        }
        Ok(GrpcTransport { client, metadata })
    }

    async fn export(&mut self, request: Vec<u8>) -> Result<(), String> {
        self.client
            .ready()
            .await
            .map_err(|e| format!("cannot reach the OTLP endpoint: {e}"))?;
        let mut call = tonic::Request::new(Bytes::from(request));
        *call.metadata_mut() = self.metadata.clone();
        self.client
            .unary::<_, (), _>(call, PathAndQuery::from_static(GRPC_EXPORT_PATH), Encoded)
            .await
            .map(drop)
            .map_err(|status| format!("the OTLP endpoint answered {:?}: {}", status.code(), status.message()))
    }
}

/// A codec for messages that are already protobuf: the request goes out as
/// it is, and the answer (an `ExportTraceServiceResponse`, whose partial
/// success details nobody here acts on) is read and let go.
#[derive(Debug, Clone, Copy, Default)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
