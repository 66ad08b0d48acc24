//! Transports: one encoded export request to the collector, over OTLP/HTTP
//! (hyper, HTTP/1.1, kept alive) or OTLP/gRPC (tonic), on the span thread's
//! own runtime, within the export timeout.
//!
//! Both take the request already encoded (`encode.rs`), so neither knows
//! the message types: the HTTP body is the protobuf as it is, and gRPC
//! sends it through a pass-through codec.
//!
//! A failure says whether OTLP allows the request to be sent again
//! ([`Retry`]): for HTTP the statuses 429, 502, 503 and 504, for gRPC the
//! codes the specification lists as retryable, and for both a collector
//! that could not be reached or did not answer in time. A delay the
//! collector asks for (`Retry-After`, gRPC's `RetryInfo`) is passed on.

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

    /// Sends one `ExportTraceServiceRequest` (borrowed, so that a refused
    /// one can be sent again without a copy being kept meanwhile).
    pub(crate) async fn export(
        &mut self,
        request: &Bytes,
        timeout: Duration,
    ) -> Result<(), ExportError> {
        let sending = async {
            match self {
                Transport::Http(http) => http.export(request).await,
                Transport::Grpc(grpc) => grpc.export(request.clone()).await,
            }
        };
        tokio::time::timeout(timeout, sending)
            .await
            .unwrap_or_else(|_| {
                Err(ExportError::retryable(format!(
                    "no answer from the OTLP endpoint within {timeout:?}"
                )))
            })
    }
}

/// Why an export failed, and whether it may be tried again.
#[derive(Debug)]
pub(crate) struct ExportError {
    /// What the collector did (or failed to do), in words for a log.
    pub(crate) message: String,
    pub(crate) retry: Retry,
}

/// What OTLP says to do with a request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The collector rejected the data: sending it again would not help.
    Never,
    /// Send it again after a backoff of the exporter's choosing.
    Backoff,
    /// Send it again no sooner than this, as the collector asked.
    After(Duration),
}

impl ExportError {
    fn fatal(message: String) -> ExportError {
        ExportError {
            message,
            retry: Retry::Never,
        }
    }

    fn retryable(message: String) -> ExportError {
        ExportError {
            message,
            retry: Retry::Backoff,
        }
    }
}

/// Longest delay a collector may ask for that is honoured as asked; a
/// longer one is cut to this, so that a misconfigured collector cannot park
/// the exporter for hours.
const MAX_ASKED_DELAY: Duration = Duration::from_secs(60);

// === impl HttpTransport ===

/// OTLP/HTTP with protobuf bodies, over one kept-alive connection.
pub(crate) struct HttpTransport {
    /// The endpoint as configured, for messages.
    uri: Uri,
    /// The request target sent on the wire: the endpoint's path and query
    /// only (origin form, RFC 9112 §3.2.1), since the request goes to the
    /// collector itself, not through a proxy; the authority is in `Host`.
    target: Uri,
    /// Host and port, to connect to.
    address: (String, u16),
    /// Every header the request carries: content type, host, the user's.
    headers: HeaderMap,
    gzip: bool,
    /// The connection of the last successful exchange, if the collector
    /// kept it open.
    kept: Option<Connection>,
    /// For an `https://` endpoint.
    #[cfg(feature = "tls")]
    tls: Option<super::tls::HttpTls>,
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
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "the OTLP endpoint {endpoint:?} is neither http:// nor https://"
                ));
            }
        };
        if secure && !cfg!(feature = "tls") {
            return Err(without_tls(endpoint));
        }
        let authority = uri.authority().ok_or("the OTLP endpoint has no host")?;
        let target = origin_form(&uri);
        let address = (
            authority.host().trim_matches(['[', ']']).to_owned(),
            authority
                .port_u16()
                .unwrap_or(if secure { 443 } else { 80 }),
        );
        #[cfg(feature = "tls")]
        let tls = match secure {
            true => Some(super::tls::HttpTls::new(&settings.tls, &address.0)?),
            false => None,
        };
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
            target,
            uri,
            address,
            headers,
            gzip: settings.gzip,
            kept: None,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    async fn export(&mut self, request: &Bytes) -> Result<(), ExportError> {
        let body = if self.gzip {
            Bytes::from(gzip(request).map_err(ExportError::fatal)?)
        } else {
            request.clone()
        };
        // A kept connection may have been closed by the collector while it
        // sat idle, which shows as an error before any answer: then the
        // request goes again, once, on a fresh connection.
        if let Some(mut connection) = self.kept.take()
            && connection.sender.ready().await.is_ok()
            && let Ok(answer) = self.exchange(&mut connection, body.clone()).await
        {
            return self.settle(connection, answer);
        }
        let mut connection = self.connect().await?;
        let answer = self
            .exchange(&mut connection, body)
            .await
            .map_err(ExportError::retryable)?;
        self.settle(connection, answer)
    }

    async fn connect(&self) -> Result<Connection, ExportError> {
        let (host, port) = (&self.address.0, self.address.1);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| {
                ExportError::retryable(format!(
                    "cannot connect to the OTLP endpoint {}: {e}",
                    self.uri
                ))
            })?;
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = tls.connect(stream).await.map_err(|e| {
                let message = format!("TLS with the OTLP endpoint {} failed: {e}", self.uri);
                // What TLS itself rejected (a certificate not trusted, no
                // protocol in common) comes as invalid data and would be
                // rejected again: not retried. A connection that broke
                // during the handshake may be a collector restarting.
                match e.kind() {
                    std::io::ErrorKind::InvalidData => ExportError::fatal(message),
                    _ => ExportError::retryable(message),
                }
            })?;
            return handshake(stream).await.map_err(ExportError::retryable);
        }
        handshake(stream).await.map_err(ExportError::retryable)
    }

    /// One request and its whole (bounded) answer, so the connection is
    /// ready for the next one: the status, and a `Retry-After` delay.
    async fn exchange(&self, connection: &mut Connection, body: Bytes) -> Result<Answer, String> {
        let mut post = Request::post(self.target.clone())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        *post.headers_mut() = self.headers.clone();
        let response = connection
            .sender
            .send_request(post)
            .await
            .map_err(|e| format!("the OTLP endpoint {} dropped the request: {e}", self.uri))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| retry_after(value.to_str().ok()?));
        Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the OTLP endpoint's answer was cut short: {e}"))?;
        Ok(Answer {
            status,
            retry_after,
        })
    }

    /// Keeps the connection for next time and judges the answer.
    fn settle(&mut self, connection: Connection, answer: Answer) -> Result<(), ExportError> {
        self.kept = Some(connection);
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        // OTLP/HTTP: these four mean "later", everything else "never".
        let retry = match status.as_u16() {
            429 | 502 | 503 | 504 => answer.retry_after.map_or(Retry::Backoff, Retry::After),
            _ => Retry::Never,
        };
        Err(ExportError {
            message: format!("the OTLP endpoint {} answered {status}", self.uri),
            retry,
        })
    }
}

/// The origin-form request target of `uri`: its path and query, `/` if it
/// has no path. hyper's connection-level client writes a request's URI as
/// it is given, so a full URL would go out in absolute form, which HTTP/1.1
/// reserves for proxies and which servers that route on the raw target
/// (Python's `http.server`, Node's `req.url`, some ingress proxies) answer
/// with 404.
fn origin_form(uri: &Uri) -> Uri {
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path_and_query)
}

/// HTTP/1.1 over an open connection (plain or TLS), its driver spawned.
async fn handshake<T>(stream: T) -> Result<Connection, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

/// Why an `https://` endpoint is refused by a build without TLS.
fn without_tls(endpoint: &str) -> String {
    format!(
        "cannot export to {endpoint}: smolder was built without its `tls` feature; \
         enable it, or send to a collector over plain http"
    )
}

/// An HTTP answer, read to its end.
struct Answer {
    status: hyper::StatusCode,
    retry_after: Option<Duration>,
}

/// A `Retry-After` header's delay. Only the delay-seconds form is read: an
/// HTTP date would need this clock to agree with the collector's, and the
/// exporter's own backoff is the better guess then.
fn retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_ASKED_DELAY))
}

/// Fast compression: spans are repetitive text and shrink several times at
/// the lowest level; higher levels cost the span thread more for little.
fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
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
        let secure = settings.endpoint.starts_with("https:");
        // Said now, once, rather than by every export failing the same way.
        if secure && !cfg!(feature = "tls") {
            return Err(without_tls(&settings.endpoint));
        }
        #[allow(unused_mut)] // without `tls`
        let mut endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| {
                format!(
                    "the OTLP endpoint {:?} is not a URL: {e}",
                    settings.endpoint
                )
            })?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout);
        #[cfg(feature = "tls")]
        if secure {
            endpoint = endpoint
                .tls_config(super::tls::grpc_config(&settings.tls)?)
                .map_err(|e| format!("TLS set-up for {}: {e}", settings.endpoint))?;
        }
        let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
        if settings.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let mut metadata = MetadataMap::new();
        for (name, value) in &settings.headers {
            let key = MetadataKey::from_bytes(name.as_bytes())
                .map_err(|e| format!("OTLP header name {name:?}: {e}"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|e| format!("OTLP header {name} value: {e}"))?;
            metadata.insert(key, value);
        }
        Ok(GrpcTransport { client, metadata })
    }

    async fn export(&mut self, request: Bytes) -> Result<(), ExportError> {
        self.client
            .ready()
            .await
            .map_err(|e| ExportError::retryable(format!("cannot reach the OTLP endpoint: {e}")))?;
        let mut call = tonic::Request::new(request);
        *call.metadata_mut() = self.metadata.clone();
        self.client
            .unary::<_, (), _>(call, PathAndQuery::from_static(GRPC_EXPORT_PATH), Encoded)
            .await
            .map(drop)
            .map_err(|status| ExportError {
                message: format!(
                    "the OTLP endpoint answered {:?}: {}",
                    status.code(),
                    status.message()
                ),
                retry: grpc_retry(&status),
            })
    }
}

/// OTLP/gRPC's retryable codes. `RESOURCE_EXHAUSTED` is retryable only
/// when the collector says when (a `RetryInfo` in the status details):
/// otherwise the request itself may be what is too large.
fn grpc_retry(status: &tonic::Status) -> Retry {
    use tonic::Code;
    let asked = retry_info(status.details());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => asked.map_or(Retry::Backoff, Retry::After),
        Code::ResourceExhausted => asked.map_or(Retry::Never, Retry::After),
        _ => Retry::Never,
    }
}

/// The delay of a `google.rpc.RetryInfo` among the details of a gRPC
/// status (`grpc-status-details-bin`: an encoded `google.rpc.Status`).
fn retry_info(details: &[u8]) -> Option<Duration> {
    use prost::Message as _;
    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
    let status = rpc::Status::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|any| any.type_url == RETRY_INFO)?;
    let delay = rpc::RetryInfo::decode(info.value.as_slice())
        .ok()?
        .retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos)
        .ok()
        .filter(|&n| n < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos).min(MAX_ASKED_DELAY))
}

/// The few `google.rpc` and well-known messages a gRPC status's details
/// hold, with only the fields read here.
mod rpc {
    #[derive(prost::Message)]
    pub(super) struct Status {
        #[prost(message, repeated, tag = "3")]
        pub(super) details: Vec<Any>,
    }

    #[derive(prost::Message)]
    pub(super) struct Any {
        #[prost(string, tag = "1")]
        pub(super) type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) value: Vec<u8>,
    }

    #[derive(prost::Message)]
    pub(super) struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub(super) retry_delay: Option<Duration>,
    }

    /// `google.protobuf.Duration`.
    #[derive(prost::Message)]
    pub(super) struct Duration {
        #[prost(int64, tag = "1")]
        pub(super) seconds: i64,
        #[prost(int32, tag = "2")]
        pub(super) nanos: i32,
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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn settings(endpoint: &str, protocol: OtlpProtocol) -> OtlpSettings {
        OtlpSettings {
            endpoint: endpoint.to_owned(),
            protocol,
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            gzip: false,
            tls: Default::default(),
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_endpoints_are_set_up_with_the_configured_authority() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _inside = runtime.enter();
        let authority_key = rcgen::KeyPair::generate().unwrap();
        let mut authority = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        authority.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let authority = authority.self_signed(&authority_key).unwrap();
        let file =
            std::env::temp_dir().join(format!("smolder-client-ca-{}.pem", std::process::id()));
        std::fs::write(&file, authority.pem()).unwrap();
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let mut https = settings("https://collector.example:4318/v1/traces", protocol);
            https.tls.certificate = Some(file.clone());
            assert!(Transport::new(&https).is_ok(), "{protocol:?}");
            // A file that is not there is named now, not at every export.
            https.tls.certificate = Some(file.with_extension("missing"));
            let error = Transport::new(&https).err().expect("refused");
            assert!(error.contains("missing"), "{protocol:?}: {error}");
            assert!(Transport::new(&settings("http://127.0.0.1:4318/v1/traces", protocol)).is_ok());
        }
        std::fs::remove_file(&file).unwrap();
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_endpoints_are_refused_without_the_tls_feature() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _inside = runtime.enter();
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let error = Transport::new(&settings(
                "https://collector.example:4318/v1/traces",
                protocol,
            ))
            .err()
            .expect("https is refused");
            assert!(error.contains("`tls` feature"), "{protocol:?}: {error}");
            assert!(Transport::new(&settings("http://127.0.0.1:4318/v1/traces", protocol)).is_ok());
        }
    }

    #[test]
    fn requests_go_out_in_origin_form() {
        let target = |endpoint: &str| origin_form(&endpoint.parse().unwrap()).to_string();
        assert_eq!(target("http://127.0.0.1:4318/v1/traces"), "/v1/traces");
        assert_eq!(
            target("https://collector.example/otlp/v1/traces?tenant=a"),
            "/otlp/v1/traces?tenant=a"
        );
        assert_eq!(target("http://[::1]:4318"), "/");
    }

    #[test]
    fn retry_after_reads_delay_seconds_only() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("86400"), Some(MAX_ASKED_DELAY));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after(""), None);
    }

    fn status_with_retry_info(code: tonic::Code, seconds: i64, nanos: i32) -> tonic::Status {
        let info = rpc::RetryInfo {
            retry_delay: Some(rpc::Duration { seconds, nanos }),
        };
        let details = rpc::Status {
            details: vec![
                rpc::Any {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![1, 2, 3],
                },
                rpc::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: info.encode_to_vec(),
                },
            ],
        };
        tonic::Status::with_details(code, "slow down", details.encode_to_vec().into())
    }

    #[test]
    fn grpc_codes_follow_the_otlp_specification() {
        use tonic::Code;
        let plain = |code| grpc_retry(&tonic::Status::new(code, "x"));
        assert_eq!(plain(Code::Unavailable), Retry::Backoff);
        assert_eq!(plain(Code::DeadlineExceeded), Retry::Backoff);
        assert_eq!(plain(Code::InvalidArgument), Retry::Never);
        assert_eq!(plain(Code::Unauthenticated), Retry::Never);
        assert_eq!(
            plain(Code::ResourceExhausted),
            Retry::Never,
            "no RetryInfo: not retryable"
        );
        let asked = grpc_retry(&status_with_retry_info(
            Code::ResourceExhausted,
            2,
            500_000_000,
        ));
        assert_eq!(asked, Retry::After(Duration::from_millis(2500)));
        let asked = grpc_retry(&status_with_retry_info(Code::Unavailable, 1, 0));
        assert_eq!(asked, Retry::After(Duration::from_secs(1)));
        let too_long = grpc_retry(&status_with_retry_info(Code::Unavailable, 1 << 40, 0));
        assert_eq!(too_long, Retry::After(MAX_ASKED_DELAY));
        // Nonsense details are ignored, not trusted.
        let negative = grpc_retry(&status_with_retry_info(Code::Unavailable, -5, 0));
        assert_eq!(negative, Retry::Backoff);
        let garbage = tonic::Status::with_details(Code::Unavailable, "x", vec![0xff, 0xff].into());
        assert_eq!(grpc_retry(&garbage), Retry::Backoff);
    }
}
