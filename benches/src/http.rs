//! The little HTTP the harness speaks itself, over real TCP on loopback: a
//! blocking HTTP/1.1 `GET` that times the whole exchange, and a stand-in
//! OTLP/HTTP receiver that accepts span exports and throws them away.
//!
//! Both are deliberately minimal (one request per connection,
//! `Connection: close`): they only ever talk to Smolder's endpoint, to
//! Smolder's OTLP exporter and to the demo, and a timing harness should add
//! as little of its own as it can.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::child::{HarnessError, fail};

/// An answer, with the time from `connect` to its last byte.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET target` from `addr` (e.g. `/debug/pprof/flamegraph?window=90s`),
/// reading the whole answer; `timeout` bounds every read and write.
pub fn get(addr: SocketAddr, target: &str, timeout: Duration) -> Result<Response, HarnessError> {
    let started = Instant::now();
    let exchange = || -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(raw)
    };
    let raw = exchange().map_err(|e| HarnessError(format!("GET http://{addr}{target}: {e}")))?;
    let elapsed = started.elapsed();
    let (status, body) = parse_response(&raw)
        .ok_or_else(|| HarnessError(format!("GET http://{addr}{target}: malformed answer")))?;
    Ok(Response {
        status,
        body,
        elapsed,
    })
}

/// Splits a whole HTTP/1.1 answer into status and body, undoing chunked
/// transfer coding if the server used it.
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// Polls `GET target` until it answers 200 or `patience` runs out.
pub fn wait_until_ok(
    addr: SocketAddr,
    target: &str,
    patience: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + patience;
    loop {
        match get(addr, target, Duration::from_secs(2)) {
            Ok(response) if response.status == 200 => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(response) => {
                return fail(format!(
                    "http://{addr}{target} answered {} after {patience:?}",
                    response.status
                ));
            }
            Err(error) => return Err(error),
        }
    }
}

/// A stand-in OTLP/HTTP collector on `127.0.0.1`: reads each export request
/// whole, answers `200` with an empty `ExportTraceServiceResponse` (an empty
/// protobuf message is zero bytes), and counts what it received. It runs in
/// the harness, not in the measured process, so receiving costs the
/// measured process nothing, as with a real collector elsewhere.
pub struct OtlpSink {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpSink {
    /// Binds a free port and serves until dropped.
    pub fn start() -> Result<OtlpSink, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, bytes, stop) = (requests.clone(), bytes.clone(), stop.clone());
            std::thread::Builder::new()
                .name("otlp-sink".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        // Relaxed: a stop flag; the wake-up connection that
                        // follows it is what the thread waits on.
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        // A thread per connection: exporters keep theirs
                        // open between requests, as with a real collector.
                        let (requests, bytes) = (requests.clone(), bytes.clone());
                        let _ = std::thread::Builder::new()
                            .name("otlp-sink-conn".into())
                            .spawn(move || {
                                let _ = serve_exports(stream, |received| {
                                    // Relaxed: counters, read after the run.
                                    requests.fetch_add(1, Ordering::Relaxed);
                                    bytes.fetch_add(received, Ordering::Relaxed);
                                });
                            });
                    }
                })?
        };
        Ok(OtlpSink {
            addr,
            requests,
            bytes,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens, as `OTEL_EXPORTER_OTLP_ENDPOINT` wants it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far, and their body bytes.
    pub fn received(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one kept-alive connection: reads each request (head, then a
/// `Content-Length` body), answers it, and reports its body's length. Ends
/// when the client closes, or after [`SINK_IDLE`] without a request, as a
/// collector's idle timeout would.
fn serve_exports(stream: TcpStream, mut received: impl FnMut(u64)) -> io::Result<()> {
    stream.set_read_timeout(Some(SINK_IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut length = 0u64;
        let mut first = true;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return if first {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            first = false;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        io::copy(&mut reader.by_ref().take(length), &mut io::sink())?;
        stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )?;
        received(length);
    }
}

/// How long the sink keeps an idle connection.
const SINK_IDLE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use std::net::Shutdown;

    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain), Some((200, b"hello".to_vec())));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((404, b"abcde".to_vec())));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn the_sink_answers_and_counts() {
        let sink = OtlpSink::start().unwrap();
        let mut stream = TcpStream::connect(sink.addr).unwrap();
        // Two requests on one connection, then the client closes.
        stream
            .write_all(b"POST /v1/traces HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /v1/traces HTTP/1.1\r\nContent-Length: 2\r\n\r\nde")
            .unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        // The sink counts after answering: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.received() != (2, 5) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sink.received(), (2, 5));
    }
}
