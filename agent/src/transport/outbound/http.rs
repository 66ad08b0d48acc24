//! Request bodies posted with hyper over one HTTP/1.1 connection, kept
//! alive between requests and opened again when the server has closed it.
//! Used for OTLP/HTTP (spans, profiles) and Pyroscope's Connect API alike:
//! what differs is the URL, the headers and the names in messages
//! ([`Destination`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Request, Uri};
use hyper_util::rt::TokioIo;

use super::retry::{self, ExportError};
use super::without_tls;
use crate::config::OtlpTls;

/// Largest response body read (collectors answer with a few bytes).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Where requests go and how they are made, resolved by the destination's
/// own settings.
pub(crate) struct Destination<'a> {
    /// The whole URL requests are posted to.
    pub(crate) url: &'a str,
    /// What the server is called in messages, e.g. `OTLP endpoint`.
    pub(crate) noun: &'static str,
    /// Every header the requests carry but `host` (content type, the
    /// user's, credentials), names lower case.
    pub(crate) headers: Vec<(String, String)>,
    /// Gzip each body and say so (`Content-Encoding: gzip`).
    pub(crate) gzip: bool,
    /// Certificates for an `https://` URL (a build without `tls` refuses
    /// such URLs, and reads none).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls: &'a OtlpTls,
}

/// A POST client for one URL, over one kept-alive connection.
pub(crate) struct HttpTransport {
    /// The endpoint as configured, for messages.
    uri: Uri,
    /// What the server is called in messages.
    noun: &'static str,
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
    pub(crate) fn new(destination: &Destination<'_>) -> Result<HttpTransport, String> {
        let endpoint = destination.url;
        let noun = destination.noun;
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("the {noun} {endpoint:?} is not a URL: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "the {noun} {endpoint:?} is neither http:// nor https://"
                ));
            }
        };
        if secure && !cfg!(feature = "tls") {
            return Err(without_tls(endpoint));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the {noun} has no host"))?;
        let target = origin_form(&uri);
        let address = (
            authority.host().trim_matches(['[', ']']).to_owned(),
            authority
                .port_u16()
                .unwrap_or(if secure { 443 } else { 80 }),
        );
        #[cfg(feature = "tls")]
        let tls = match secure {
            true => Some(super::tls::HttpTls::new(destination.tls, &address.0)?),
            false => None,
        };
        let mut headers = HeaderMap::new();
        let mut insert = |name: &str, value: &str| -> Result<(), String> {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("{noun} header name {name:?}: {e}"))?;
            let value = value
                .parse()
                .map_err(|e| format!("{noun} header {name} value: {e}"))?;
            headers.insert(name, value);
            Ok(())
        };
        insert("host", authority.as_str())?;
        if destination.gzip {
            insert("content-encoding", "gzip")?;
        }
        for (name, value) in &destination.headers {
            insert(name, value)?;
        }
        Ok(HttpTransport {
            target,
            uri,
            noun,
            address,
            headers,
            gzip: destination.gzip,
            kept: None,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// Posts one body and reads the whole answer: `Ok` for a 2xx status,
    /// otherwise what the status means for a retry.
    pub(crate) async fn export(&mut self, request: &Bytes) -> Result<(), ExportError> {
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
                    "cannot connect to the {} {}: {e}",
                    self.noun, self.uri
                ))
            })?;
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = tls.connect(stream).await.map_err(|e| {
                let message = format!("TLS with the {} {} failed: {e}", self.noun, self.uri);
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
            .map_err(|e| format!("the {} {} dropped the request: {e}", self.noun, self.uri))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| retry::retry_after(value.to_str().ok()?));
        Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the {}'s answer was cut short: {e}", self.noun))?;
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
        Err(ExportError {
            message: format!("the {} {} answered {status}", self.noun, self.uri),
            retry: retry::http_status(status, answer.retry_after),
        })
    }
}

/// An HTTP answer, read to its end.
struct Answer {
    status: hyper::StatusCode,
    retry_after: Option<Duration>,
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

/// Fast compression: spans are repetitive text and shrink several times at
/// the lowest level; higher levels cost the span thread more for little.
pub(crate) fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).map_err(|e| e.to_string())?;
    encoder.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
