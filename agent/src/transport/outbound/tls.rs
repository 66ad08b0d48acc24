//! TLS for `https://` endpoints (OTLP collectors, Pyroscope): whom to
//! trust, and who we are.
//!
//! The trusted authorities are those in the configured CA file (for OTLP,
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`) when there is one, otherwise the
//! system's (read once with rustls-native-certs, which honours
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`). A client certificate and key are
//! presented when both are configured. Every file is PEM and read when the
//! sender starts, on its own thread: a missing or unreadable one stops
//! that sender with a message that names it (in the log and
//! `/debug/pprof/stats`), and profiling goes on.
//!
//! HTTP uses this configuration through tokio-rustls. gRPC goes through
//! tonic's own rustls support, handed the same files.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use crate::config::OtlpTls;

/// What an HTTP connection needs to open TLS to the collector.
pub(crate) struct HttpTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl HttpTls {
    /// A connector for `host` (the endpoint's host name or address).
    pub(crate) fn new(files: &OtlpTls, host: &str) -> Result<HttpTls, String> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
            format!(
                "the OTLP endpoint's host {host:?} cannot be checked against a certificate: {e}"
            )
        })?;
        let config = client_config(files)?;
        Ok(HttpTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake over an open connection.
    pub(crate) async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// rustls's client configuration for HTTP/1.1: the trusted roots, and the
/// client identity if any.
fn client_config(files: &OtlpTls) -> Result<ClientConfig, String> {
    // The provider is named rather than taken from a process default, which
    // another library in the host may have set differently (or ambiguously).
    let builder = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(trusted_roots(files)?);
    let mut config = match &files.client {
        Some((certificate_path, key_path)) => {
            let chain = certificates(&read(certificate_path)?, certificate_path)?;
            let key = private_key(&read(key_path)?, key_path)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "the OTLP client certificate {} and its key: {e}",
                    certificate_path.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The configured authorities, or the system's.
fn trusted_roots(files: &OtlpTls) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &files.certificate {
        Some(path) => {
            for certificate in certificates(&read(path)?, path)? {
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
                return Err(
                    "no trusted certificate authorities: the system has none installed \
                            (Debian: the ca-certificates package); name a CA file with \
                            OTEL_EXPORTER_OTLP_CERTIFICATE (OTLP) or SSL_CERT_FILE"
                        .to_owned(),
                );
            }
        }
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate in `pem` (the contents of `path`); at least one.
fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

/// The private key in `pem` (the contents of `path`).
fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// tonic's TLS settings for a gRPC endpoint, from the same files. Each is
/// parsed here too, so that a bad one is named now rather than by every
/// connection attempt.
pub(crate) fn grpc_config(files: &OtlpTls) -> Result<tonic::transport::ClientTlsConfig, String> {
    let mut config = tonic::transport::ClientTlsConfig::new();
    config = match &files.certificate {
        Some(path) => {
            let pem = read(path)?;
            certificates(&pem, path)?;
            config.ca_certificate(tonic::transport::Certificate::from_pem(pem))
        }
        None => config.with_native_roots(),
    };
    if let Some((certificate_path, key_path)) = &files.client {
        let (certificate, key) = (read(certificate_path)?, read(key_path)?);
        certificates(&certificate, certificate_path)?;
        private_key(&key, key_path)?;
        config = config.identity(tonic::transport::Identity::from_pem(certificate, key));
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
            let error = HttpTls::new(&files, "collector.example")
                .err()
                .expect("refused");
            assert!(error.contains(&path.display().to_string()), "{error}");
            let error = grpc_config(&files).expect_err("refused");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
