//! A Grafana Pyroscope push receiver for the tests: the Connect route
//! `POST /push.v1.PusherService/Push`, as strict as the protocol. A request
//! must have exactly that path and method, `Content-Type:
//! application/proto`, `Connect-Protocol-Version: 1`, a `Host` naming this
//! server, and a body that decodes as a `push.v1.PushRequest` whose every
//! raw profile is gzip; anything else is refused (404, 405, 415, 400) and
//! the reason kept. Accepted requests are kept whole, with their headers.
//! It can refuse on demand (a status, with `Retry-After` or not), and be
//! stopped and restarted on the same port.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

use crate::http1;

/// The messages of grafana/pyroscope `api/push/v1/push.proto` and
/// `api/types/v1/types.proto`, field for field, reproduced from the
/// upstream files for this receiver (independently of the agent's own
/// encoder, which writes only what it sends).
pub mod proto {
    /// `push.v1.PushRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        /// series is a set raw pprof profiles and accompanying labels
        #[prost(message, repeated, tag = "1")]
        pub series: Vec<RawProfileSeries>,
    }

    /// `push.v1.PushResponse`: empty.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushResponse {}

    /// `push.v1.RawProfileSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<RawSample>,
        #[prost(message, repeated, tag = "3")]
        pub annotations: Vec<ProfileAnnotation>,
    }

    /// `push.v1.RawSample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
        /// `string ID = 2`.
        #[prost(string, tag = "2")]
        pub id: String,
    }

    /// `types.v1.LabelPair`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `types.v1.ProfileAnnotation`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProfileAnnotation {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    #[default]
    Accept,
    /// A Connect error with this HTTP status.
    Status(u16),
    /// A refusal with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
}

/// One series of an accepted (or refused, but well-formed) request.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: Vec<(String, String)>,
    /// Each raw sample: its id and its profile, gunzipped pprof.
    pub profiles: Vec<(String, Vec<u8>)>,
}

/// One well-formed push request.
#[derive(Debug, Clone)]
pub struct Push {
    pub headers: Vec<(String, String)>,
    pub series: Vec<Series>,
    /// Whether it was accepted (answered 200).
    pub accepted: bool,
}

impl Push {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    pushes: Mutex<Vec<Push>>,
    behaviour: Mutex<Behaviour>,
    rejections: Mutex<Vec<String>>,
    stop: AtomicBool,
    addr: Option<SocketAddr>,
}

/// A running receiver.
pub struct PyroscopeReceiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PyroscopeReceiver {
    pub fn start() -> PyroscopeReceiver {
        PyroscopeReceiver::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts on `addr`, retrying briefly while a previous listener on the
    /// same port is released.
    pub fn start_on(addr: SocketAddr) -> PyroscopeReceiver {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            addr: Some(addr),
            ..Shared::default()
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let shared = shared.clone();
                            std::thread::spawn(move || serve(stream, &shared));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        PyroscopeReceiver {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Every well-formed request so far, accepted or not.
    pub fn pushes(&self) -> Vec<Push> {
        self.shared.pushes.lock().unwrap().clone()
    }

    /// The accepted ones.
    pub fn accepted(&self) -> Vec<Push> {
        self.pushes().into_iter().filter(|p| p.accepted).collect()
    }

    pub fn rejections(&self) -> Vec<String> {
        self.shared.rejections.lock().unwrap().clone()
    }

    /// Waits up to `patience` for `done` to hold of the accepted requests.
    pub fn wait_for(&self, patience: Duration, done: impl Fn(&[Push]) -> bool) -> Vec<Push> {
        let deadline = Instant::now() + patience;
        loop {
            let accepted = self.accepted();
            if done(&accepted) || Instant::now() > deadline {
                return accepted;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops listening and closes every connection; returns every
    /// well-formed request it received.
    pub fn stop(mut self) -> Vec<Push> {
        self.shutdown();
        self.pushes()
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Connections see `stop` within their read timeout.
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for PyroscopeReceiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    while !shared.stop.load(Ordering::Relaxed) {
        let head = match http1::read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(http1::HeadError::Timeout) => continue,
            Err(http1::HeadError::Closed) => return,
            Err(http1::HeadError::Invalid(reason)) => {
                refuse(reader.get_mut(), shared, "400 Bad Request", reason);
                return;
            }
        };
        let body = match head.read_body(&mut reader) {
            Ok(body) => body,
            Err(http1::HeadError::Invalid(reason)) => {
                refuse(reader.get_mut(), shared, "400 Bad Request", reason);
                return;
            }
            Err(_) => return,
        };
        let push = match check(&head, &body, shared.addr) {
            Ok(push) => push,
            Err((status, reason)) => {
                refuse(reader.get_mut(), shared, status, reason);
                return;
            }
        };
        let answer = *shared.behaviour.lock().unwrap();
        let writer = reader.get_mut();
        let accepted = answer == Behaviour::Accept;
        shared
            .pushes
            .lock()
            .unwrap()
            .push(Push { accepted, ..push });
        match answer {
            Behaviour::Accept => {
                let body = proto::PushResponse {}.encode_to_vec();
                let _ = write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = writer.write_all(&body);
            }
            Behaviour::Status(code) => connect_error(writer, code, None),
            Behaviour::RetryAfter(code, seconds) => connect_error(writer, code, Some(seconds)),
        }
        let _ = writer.flush();
    }
}

/// A Connect unary error: JSON `{"code", "message"}` with the HTTP status
/// the Connect specification maps the code to.
fn connect_error(writer: &mut TcpStream, status: u16, retry_after: Option<u64>) {
    let code = match status {
        429 => "resource_exhausted",
        503 => "unavailable",
        400 => "invalid_argument",
        401 => "unauthenticated",
        _ => "internal",
    };
    let body = format!("{{\"code\":\"{code}\",\"message\":\"refused by the test\"}}");
    let retry = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
    let _ = write!(
        writer,
        "HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

fn refuse(writer: &mut TcpStream, shared: &Shared, status: &str, reason: String) {
    shared.rejections.lock().unwrap().push(reason.clone());
    let _ = write!(
        writer,
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reason}",
        reason.len()
    );
    let _ = writer.flush();
}

/// Everything the Connect protocol and Pyroscope require of a push.
fn check(
    head: &http1::Head,
    body: &[u8],
    addr: Option<SocketAddr>,
) -> Result<Push, (&'static str, String)> {
    if let Some(addr) = addr {
        let host = head.header("host").unwrap_or_default();
        if host != addr.to_string() {
            return Err(("400 Bad Request", format!("Host {host:?} is not {addr}")));
        }
    }
    if head.target != "/push.v1.PusherService/Push" {
        return Err(("404 Not Found", format!("no route for {:?}", head.target)));
    }
    if head.method != "POST" {
        return Err((
            "405 Method Not Allowed",
            format!("{} on the push route", head.method),
        ));
    }
    match head.header("content-type") {
        Some("application/proto") => {}
        other => {
            return Err((
                "415 Unsupported Media Type",
                format!("content type {other:?}, not application/proto"),
            ));
        }
    }
    if head.header("connect-protocol-version") != Some("1") {
        return Err((
            "400 Bad Request",
            "missing Connect-Protocol-Version: 1".to_owned(),
        ));
    }
    if head.header("content-encoding").is_some() {
        return Err((
            "415 Unsupported Media Type",
            "the envelope is not compressed by this client".to_owned(),
        ));
    }
    let request = proto::PushRequest::decode(body)
        .map_err(|e| ("400 Bad Request", format!("not a PushRequest: {e}")))?;
    if request.series.is_empty() {
        return Err(("400 Bad Request", "a push without series".to_owned()));
    }
    let mut series = Vec::new();
    for raw in request.series {
        let mut profiles = Vec::new();
        for sample in raw.samples {
            let mut pprof = Vec::new();
            flate2::read::GzDecoder::new(sample.raw_profile.as_slice())
                .read_to_end(&mut pprof)
                .map_err(|e| ("400 Bad Request", format!("a raw profile is not gzip: {e}")))?;
            profiles.push((sample.id, pprof));
        }
        series.push(Series {
            labels: raw.labels.into_iter().map(|l| (l.name, l.value)).collect(),
            profiles,
        });
    }
    Ok(Push {
        headers: head.headers.clone(),
        series,
        accepted: false,
    })
}
