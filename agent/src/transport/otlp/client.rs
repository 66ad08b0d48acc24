//! Transports: one encoded export request to the collector, over OTLP/HTTP
//! (hyper, HTTP/1.1, kept alive) or OTLP/gRPC (tonic), on the span thread's
//! own runtime, within the export timeout.
//!
//! Both take the request already encoded (`encode.rs`), so neither knows
//! the message types: the HTTP body is the protobuf as it is (`http.rs`),
//! and gRPC sends it through a pass-through codec (`grpc.rs`).
//!
//! A failure says whether OTLP allows the request to be sent again
//! ([`Retry`]): for HTTP the statuses 429, 502, 503 and 504, for gRPC the
//! codes the specification lists as retryable, and for both a collector
//! that could not be reached or did not answer in time. A delay the
//! collector asks for (`Retry-After`, gRPC's `RetryInfo`) is passed on.
//! `transport::outbound::retry` reads the statuses, codes and delays; the
//! HTTP client itself is `transport::outbound::http`, shared with the
//! profile push.

use std::time::Duration;

use bytes::Bytes;

use super::grpc::GrpcTransport;
use crate::config::{OtlpProtocol, OtlpSettings};
use crate::transport::outbound::http::{Destination, HttpTransport};
pub(crate) use crate::transport::outbound::retry::{ExportError, Retry};

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
        Transport::for_service(settings, super::grpc::TRACE_EXPORT_PATH)
    }

    /// As [`Transport::new`], for the OTLP service whose gRPC `Export`
    /// method is at `grpc_path` (the HTTP URL is the settings' endpoint).
    pub(crate) fn for_service(
        settings: &OtlpSettings,
        grpc_path: &'static str,
    ) -> Result<Transport, String> {
        match settings.protocol {
            OtlpProtocol::HttpProtobuf => HttpTransport::new(&Destination {
                url: &settings.endpoint,
                noun: "OTLP endpoint",
                headers: std::iter::once(("content-type", "application/x-protobuf"))
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .chain(settings.headers.iter().cloned())
                    .collect(),
                gzip: settings.gzip,
                tls: &settings.tls,
            })
            .map(Transport::Http),
            OtlpProtocol::Grpc => GrpcTransport::new(settings, grpc_path).map(Transport::Grpc),
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

#[cfg(test)]
mod tests {
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
}
