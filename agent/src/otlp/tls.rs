//! TLS for `https://` OTLP endpoints: whom to trust, and who we are.
//!
//! The trusted authorities are those in `OTEL_EXPORTER_OTLP_CERTIFICATE`
//! when it names a file, otherwise the system's (read once with
//! rustls-native-certs, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`).
//! A client certificate and key are presented when both are configured.
//! Every file is PEM and read when the exporter starts, on the span
//! thread: a missing or unreadable one stops export with a message that
//! names it (in the log and `/debug/pprof/stats`), and profiling goes on.
//!
//! HTTP uses this configuration through tokio-rustls. gRPC goes through
//! tonic's own rustls support, handed the same files.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
use tokio_rustls::TlsConnector;

use crate::config::OtlpTls;

/// What an HTTP connection needs to open TLS to the collector.
pub(super) struct HttpTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl HttpTls {
    /// A connector for `host` (the endpoint's host name or address).
    pub(super) fn new(files: &OtlpTls, host: &str) -> Result<HttpTls, String> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("the OTLP endpoint's host {host:?} cannot be checked against a certificate: {e}"))?;
        let config = client_config(files, b"http/1.1")?;
        Ok(HttpTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake over an open connection.
    pub(super) async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector.connect(self.server_name.clone(), stream).await
    }
}

/// rustls's client configuration: the trusted roots, the client identity if
/// any, and the one application protocol offered.
fn client_config(files: &OtlpTls, protocol: &[u8]) -> Result<ClientConfig, String> {
    // The provider is named rather than taken from a process default, which
    // another library in the host may have set differently (or ambiguously).
    let builder = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(trusted_roots(files)?);
    let mut config = match &files.client {
        Some((certificate, key)) => {
            let (chain, key) = client_identity(certificate, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the OTLP client certificate {} and its key: {e}", certificate.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![protocol.to_vec()];
    Ok(config)
}

/// The configured authorities, or the system's.
fn trusted_roots(files: &OtlpTls) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &files.certificate {
        Some(path) => {
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("the OTLP CA certificate file {}: {e}", path.display()))?;
            }
        }
        None => {
            // Unreadable entries are skipped, as a TLS client of the
            // system's store would; none at all is an error worth naming.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no trusted certificate authorities: the system has none installed \
                            (Debian: the ca-certificates package); name a CA file with \
                            OTEL_EXPORTER_OTLP_CERTIFICATE"
                    .to_owned());
            }
        }
    }
    Ok(roots)
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

fn client_identity(
    certificate: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certificates(certificate)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    Ok((chain, key))
}

/// tonic's TLS settings for a gRPC endpoint, from the same files.
pub(super) fn grpc_config(files: &OtlpTls) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut config = tonic::transport::ClientTlsConfig::new();
    config = match &files.certificate {
        Some(path) => {
            // Checked here, so that a bad file is named now rather than by
            // every connection attempt.
            certificates(path)?;
            config.ca_certificate(tonic::transport::Certificate::from_pem(read(path)?))
        }
        None => config.with_native_roots(),
    };
    if let Some((certificate, key)) = &files.client {
        client_identity(certificate, key)?;
        config = config.identity(tonic::transport::Identity::from_pem(read(certificate)?, read(key)?));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("smolder-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        for path in [&empty, &missing] {
            let files = OtlpTls {
                certificate: Some(path.clone()),
                client: None,
            };
            let error = HttpTls::new(&files, "collector.example").err().expect("refused");
            assert!(error.contains(&path.display().to_string()), "{error}");
            let error = grpc_config(&files).expect_err("refused");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
