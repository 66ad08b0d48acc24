//! OTLP/gRPC: tonic's channel calling the trace service's `Export` with
//! the request as encoded, through a pass-through codec.

use bytes::{Buf, BufMut, Bytes};
use hyper::http::uri::PathAndQuery;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Channel;

use super::client::ExportError;
use crate::config::OtlpSettings;
use crate::transport::outbound::{retry, without_tls};

/// The trace service's one method.
pub(crate) const TRACE_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// OTLP/gRPC: tonic's channel (one HTTP/2 connection, reconnected when it
/// drops) calling a service's `Export` (`TraceService/Export` for spans)
/// with the request as encoded.
pub(crate) struct GrpcTransport {
    client: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
    /// The `Export` method called.
    path: &'static str,
}

impl GrpcTransport {
    pub(super) fn new(
        settings: &OtlpSettings,
        path: &'static str,
    ) -> Result<GrpcTransport, String> {
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
                .tls_config(crate::transport::outbound::tls::grpc_config(&settings.tls)?)
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
        Ok(GrpcTransport {
            client,
            metadata,
            path,
        })
    }

    pub(super) async fn export(&mut self, request: Bytes) -> Result<(), ExportError> {
        self.client
            .ready()
            .await
            .map_err(|e| ExportError::retryable(format!("cannot reach the OTLP endpoint: {e}")))?;
        let mut call = tonic::Request::new(request);
        *call.metadata_mut() = self.metadata.clone();
        self.client
            .unary::<_, (), _>(call, PathAndQuery::from_static(self.path), Encoded)
            .await
            .map(drop)
            .map_err(|status| ExportError {
                message: format!(
                    "the OTLP endpoint answered {:?}: {}",
                    status.code(),
                    status.message()
                ),
                retry: retry::grpc_retry(&status),
            })
    }
}

// === impl Encoded ===

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
