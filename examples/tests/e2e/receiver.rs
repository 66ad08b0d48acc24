//! An OTLP/HTTP receiver for the tests: accepts `POST /v1/traces` on
//! kept-alive connections, decodes each body (gzip or not) with the
//! official protocol types (`opentelemetry-proto`) and keeps the spans, the
//! last request's headers and a count of connections. It can also misbehave
//! on demand (answer 500 or 429, or never answer), and be stopped and
//! restarted on the same port. Over TLS ([`Receiver::start_tls`], with
//! certificates from [`Pki`]) it also asks the client for a certificate.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::http1;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    #[default]
    Accept,
    Status(u16),
    /// A refusal with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    Hang,
}

/// One received span and the service that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attribute(key)? {
            Value::IntValue(v) => Some(*v),
            _ => None,
        }
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        match self.attribute(key)? {
            Value::StringValue(v) => Some(v),
            _ => None,
        }
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the receiver's threads share.
#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    behaviour: Mutex<Behaviour>,
    requests: AtomicU64,
    /// When each request arrived (its body read), in order.
    arrivals: Mutex<Vec<Instant>>,
    connections: AtomicU64,
    /// The last request's headers, names in lower case.
    headers: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
    /// Set for an https receiver.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The address it listens on, which `Host` must name.
    addr: Option<SocketAddr>,
    /// Why each refused request was refused (400, 404, 405, 415).
    rejections: Mutex<Vec<String>>,
    /// The resource attributes of the last request, as `key=value` for
    /// string values.
    resource: Mutex<Vec<(String, String)>>,
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts on `addr` (retrying briefly while a previous listener on the
    /// same port is released).
    pub fn start_on(addr: SocketAddr) -> Receiver {
        Receiver::start_with(addr, None)
    }

    /// An https receiver, with this TLS configuration.
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::start_with("127.0.0.1:0".parse().unwrap(), Some(tls))
    }

    fn start_with(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            tls,
            addr: Some(addr),
            ..Shared::default()
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            shared.connections.fetch_add(1, Ordering::Relaxed);
                            let shared = shared.clone();
                            std::thread::spawn(move || serve(stream, &shared));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Receiver {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// When each request so far arrived.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.shared.arrivals.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Why each request the receiver refused was refused: none, for a
    /// client that speaks HTTP/1.1 as RFC 9112 asks.
    pub fn rejections(&self) -> Vec<String> {
        self.shared.rejections.lock().unwrap().clone()
    }

    /// The string-valued resource attributes of the last accepted request.
    pub fn resource(&self) -> Vec<(String, String)> {
        self.shared.resource.lock().unwrap().clone()
    }

    /// The value of header `name` (lower case) on the last request.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let headers = self.shared.headers.lock().unwrap();
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Waits until the received spans satisfy `done`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() >= deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops listening and closes every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves one keep-alive connection, over TLS if the receiver has it.
fn serve(stream: TcpStream, shared: &Shared) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match &shared.tls {
        None => serve_on(stream, shared),
        Some(config) => {
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            serve_on(rustls::StreamOwned::new(connection, stream), shared);
        }
    }
}

/// Serves requests read from `stream` (whose socket has a short read
/// timeout, so that `stop` is seen). A request whose head breaks HTTP/1.1's grammar, or whose
/// target is not in origin form, gets 400 and closes the connection, as
/// the servers that route on the raw target do.
fn serve_on(stream: impl Read + Write, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    while !shared.stop.load(Ordering::Relaxed) {
        let head = match http1::read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(http1::HeadError::Timeout) => continue, // check `stop`, wait again
            Err(http1::HeadError::Closed) => return,
            Err(http1::HeadError::Invalid(reason)) => {
                shared.rejections.lock().unwrap().push(reason.clone());
                let writer = reader.get_mut();
                let _ = write!(
                    writer,
                    "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reason}",
                    reason.len()
                );
                let _ = writer.flush();
                return;
            }
        };
        if let Err((status, reason)) = head.route(shared.addr) {
            shared.rejections.lock().unwrap().push(reason.clone());
            let writer = reader.get_mut();
            let _ = write!(
                writer,
                "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reason}",
                reason.len()
            );
            let _ = writer.flush();
            return;
        }
        let mut body = match head.read_body(&mut reader) {
            Ok(body) => body,
            Err(http1::HeadError::Invalid(reason)) => {
                shared.rejections.lock().unwrap().push(reason);
                return;
            }
            Err(_) => return,
        };
        let headers = head.headers;
        let gzipped = headers
            .iter()
            .any(|(name, value)| name == "content-encoding" && value == "gzip");
        if gzipped {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(body.as_slice())
                .read_to_end(&mut plain)
                .expect("a gzip body that decompresses");
            body = plain;
        }
        *shared.headers.lock().unwrap() = headers;
        shared.arrivals.lock().unwrap().push(Instant::now());
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let answer = *shared.behaviour.lock().unwrap();
        let writer = reader.get_mut();
        match answer {
            Behaviour::Hang => {
                while !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Behaviour::Status(code) => {
                let _ = write!(
                    writer,
                    "HTTP/1.1 {code} Refused\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Behaviour::RetryAfter(code, seconds) => {
                let _ = write!(
                    writer,
                    "HTTP/1.1 {code} Later\r\nRetry-After: {seconds}\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Behaviour::Accept => {
                let request = ExportTraceServiceRequest::decode(body.as_slice())
                    .expect("a valid OTLP export request");
                let mut received = shared.spans.lock().unwrap();
                if let Some(resource) = request
                    .resource_spans
                    .first()
                    .and_then(|r| r.resource.as_ref())
                {
                    *shared.resource.lock().unwrap() = resource
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                }
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope_spans in resource_spans.scope_spans {
                        for span in scope_spans.spans {
                            received.push(ReceivedSpan {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                let _ = write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                );
            }
        }
        let _ = writer.flush();
    }
}

/// A certificate authority made for one test, and what it signs: the
/// receiver's certificate (for 127.0.0.1) and a client's, as PEM files.
pub struct Pki {
    dir: std::path::PathBuf,
    authority: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    server: (rcgen::Certificate, rcgen::KeyPair),
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("smolder-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("smolder test CA {name}"));
        let authority =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &authority)
            .unwrap();
        let pki = Pki {
            dir,
            authority,
            server: (server, key),
        };
        std::fs::write(pki.ca_file(), pki.authority.pem()).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["client.smolder.test".to_owned()])
            .unwrap()
            .signed_by(&client_key, &pki.authority)
            .unwrap();
        std::fs::write(pki.client_files().0, client.pem()).unwrap();
        std::fs::write(pki.client_files().1, client_key.serialize_pem()).unwrap();
        pki
    }

    /// The authority's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// The authority's certificate, and the receiver's certificate and key,
    /// as PEM.
    pub fn server_pem(&self) -> (String, String, String) {
        (
            self.authority.pem(),
            self.server.0.pem(),
            self.server.1.serialize_pem(),
        )
    }

    /// A client certificate and its key, signed by the authority.
    pub fn client_files(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }

    /// A receiver configuration presenting the server certificate and
    /// requiring a client certificate signed by the authority.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.authority.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = vec![CertificateDer::from(self.server.0.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.1.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An OTLP/gRPC receiver over TLS (tonic's server, the official service
/// definition), asking for a client certificate signed by the test's
/// authority; it keeps the spans it receives.
pub struct GrpcReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Collect(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collect
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

impl GrpcReceiver {
    pub fn start_tls(pki: &Pki) -> GrpcReceiver {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (authority, certificate, key) = pki.server_pem();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(certificate, key))
            .client_ca_root(Certificate::from_pem(authority));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Collect(spans.clone()));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                Server::builder()
                    .tls_config(tls)
                    .unwrap()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        GrpcReceiver {
            addr,
            spans,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
