//! A minimal HTTP/1.1 client over `std::net::TcpStream`, enough for the
//! Jaeger query API, the agent's flame graph route and chromedriver's
//! WebDriver API, all on loopback. One request per connection
//! (`Connection: close`); bodies with `Content-Length`, chunked, or read to
//! the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest wait for one answer (creating a browser session is the slowest).
const TIMEOUT: Duration = Duration::from_secs(90);

/// An answer: its status, headers (names lowercased) and body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

pub fn get(url: &str) -> Result<Response, String> {
    request("GET", url, None)
}

/// Sends one request to an `http://host:port/path` URL.
pub fn request(
    method: &str,
    url: &str,
    json: Option<&serde_json::Value>,
) -> Result<Response, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let body = json.map(|value| value.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(host).map_err(|e| format!("connect to {host}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("send {method} {url}: {e}"))?;
    let raw =
        read_answer(&mut stream).map_err(|e| format!("read the answer to {method} {url}: {e}"))?;
    parse(&raw).map_err(|e| format!("{method} {url}: {e}"))
}

/// Reads one answer: up to its `Content-Length`, to the end of its last
/// chunk, or to the end of the stream (servers need not close the
/// connection when asked to, and chromedriver does not).
fn read_answer(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buffer = [0; 64 * 1024];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buffer[..read]);
        if is_complete(&raw) {
            return Ok(raw);
        }
    }
}

/// Whether `raw` holds a whole answer whose end can be told without EOF.
fn is_complete(raw: &[u8]) -> bool {
    let Ok(response) = parse(raw) else {
        return false;
    };
    if let Some(length) = response.header("content-length") {
        return length
            .parse()
            .is_ok_and(|length: usize| response.body.len() >= length);
    }
    response.header("transfer-encoding").is_some()
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the answer")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let payload = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(payload)?
    } else {
        payload.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = payload
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&payload[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        payload = &payload[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if payload.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&payload[..size]);
        payload = &payload[size + 2..];
    }
}

#[test]
fn parses_chunked_answers() {
    let raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let response = parse(raw).unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "abcde"));
}
