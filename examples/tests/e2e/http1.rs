//! HTTP/1.1 request heads read as strictly as RFC 9112 allows, for the OTLP
//! receiver: what a server that routes on the raw request target sees.
//!
//! Python's `http.server`, Node's `http` (`req.url`) and the frameworks on
//! it, and some ingress proxies take the request target as it is written on
//! the wire. A client that writes the absolute form
//! (`POST http://host:4318/v1/traces HTTP/1.1`), which RFC 9112 §3.2.2
//! reserves for requests to a proxy, reaches none of their routes. (The
//! same section asks servers to accept that form anyway; Go's servers do,
//! which is why Jaeger and the Collector never showed the fault.) This
//! reader refuses it, and everything else the grammar forbids:
//!
//! - the request line is `method SP request-target SP HTTP-version CRLF`
//!   with single spaces (§3), the method a token, the version `HTTP/1.1`;
//! - the target is in origin form, `absolute-path [ "?" query ]` (§3.2.1),
//!   of the characters RFC 3986 allows there;
//! - lines end in CRLF; a bare LF is refused (§2.2 lets a server accept
//!   it, a strict one does not);
//! - a field line is `field-name ":" OWS field-value OWS`, with no space
//!   before the colon (§5.1) and no line folding (§5.2);
//! - there is exactly one `Host` (§3.2), naming the receiver;
//! - the body's length is given once, by `Content-Length` or by chunked
//!   `Transfer-Encoding`, never both (§6.3).

use std::io::{BufRead, ErrorKind, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest head read, as servers bound it.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long the rest of a request may take once its first byte arrived.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Why no request head was read.
#[derive(Debug)]
pub enum HeadError {
    /// Nothing arrived within the socket's read timeout.
    Timeout,
    /// The connection closed or failed mid-request.
    Closed,
    /// The head breaks the grammar: answer 400 with this reason.
    Invalid(String),
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
}

/// A request head that passed every check.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// Field lines, names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
}

impl Head {
    /// The header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Checks the request is an OTLP/HTTP trace export addressed to this
    /// receiver (`addr`): the status and reason to answer if not.
    pub fn route(&self, addr: Option<SocketAddr>) -> Result<(), (&'static str, String)> {
        if let Some(addr) = addr {
            let host = self.header("host").unwrap_or_default();
            if host != addr.to_string() {
                return Err((
                    "400 Bad Request",
                    format!("Host {host:?} does not name this server ({addr})"),
                ));
            }
        }
        if self.target.split('?').next() != Some("/v1/traces") {
            return Err(("404 Not Found", format!("no route for {:?}", self.target)));
        }
        if self.method != "POST" {
            return Err((
                "405 Method Not Allowed",
                format!("{} on /v1/traces", self.method),
            ));
        }
        match self.header("content-type") {
            Some("application/x-protobuf") => Ok(()),
            other => Err((
                "415 Unsupported Media Type",
                format!("content type {other:?}"),
            )),
        }
    }

    /// Reads the body this head announces.
    pub fn read_body(&self, reader: &mut impl BufRead) -> Result<Vec<u8>, HeadError> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        match self.framing {
            Framing::Length(length) => {
                let mut body = vec![0; length];
                read_exact(reader, &mut body, deadline)?;
                Ok(body)
            }
            Framing::Chunked => read_chunked(reader, deadline),
        }
    }
}

/// Reads one request head. `Ok(None)`: the client closed the connection
/// between requests.
pub fn read_head(reader: &mut impl BufRead) -> Result<Option<Head>, HeadError> {
    let mut head = Vec::new();
    // The first byte may take any time (a kept-alive connection between
    // requests); the rest of the head must follow promptly.
    match reader.fill_buf() {
        Ok([]) => return Ok(None),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(HeadError::Timeout);
        }
        Err(_) => return Err(HeadError::Closed),
    }
    let deadline = Instant::now() + REQUEST_DEADLINE;
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD_BYTES {
            return Err(invalid("a head longer than 64 KiB"));
        }
        let mut byte = [0];
        read_exact(reader, &mut byte, deadline)?;
        head.push(byte[0]);
        if byte[0] == b'\n' && !head.ends_with(b"\r\n") {
            return Err(invalid("a line ends in a bare LF"));
        }
    }
    parse_head(&head[..head.len() - 4]).map(Some)
}

/// Parses the head's lines (the final empty line removed).
pub fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("a head that is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!(
            "request line {request_line:?} is not `method SP target SP version`"
        )));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(invalid(format!("method {method:?} is not a token")));
    }
    if version != "HTTP/1.1" {
        return Err(invalid(format!("version {version:?}")));
    }
    if !is_origin_form(target) {
        return Err(invalid(format!(
            "request target {target:?} is not in origin form (RFC 9112 §3.2.1)"
        )));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(invalid("obsolete line folding (RFC 9112 §5.2)"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!("field line {line:?} has no colon")));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(invalid(format!(
                "field name {name:?} is not a token (no space before the colon, RFC 9112 §5.1)"
            )));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(invalid(format!("field {name} has a control character")));
        }
        headers.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    let count = |name: &str| headers.iter().filter(|(n, _)| n == name).count();
    if count("host") != 1 {
        return Err(invalid(format!(
            "{} Host fields, where RFC 9112 §3.2 asks for one",
            count("host")
        )));
    }
    let framing = framing(&headers)?;
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        framing,
    })
}

fn framing(headers: &[(String, String)]) -> Result<Framing, HeadError> {
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let chunked = headers.iter().any(|(n, _)| n == "transfer-encoding");
    match (lengths.as_slice(), chunked) {
        ([], false) => Ok(Framing::Length(0)),
        ([], true) => {
            let codings: Vec<&str> = headers
                .iter()
                .filter(|(n, _)| n == "transfer-encoding")
                .map(|(_, v)| v.as_str())
                .collect();
            if codings != ["chunked"] {
                return Err(invalid(format!("transfer codings {codings:?}")));
            }
            Ok(Framing::Chunked)
        }
        ([length], false) if !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit()) => {
            length
                .parse()
                .map(Framing::Length)
                .map_err(|_| invalid("Content-Length out of range"))
        }
        (_, true) => Err(invalid("both Content-Length and Transfer-Encoding")),
        _ => Err(invalid(format!("Content-Length {lengths:?}"))),
    }
}

/// `absolute-path [ "?" query ]`: segments of pchar after each `/`, and a
/// query of pchar, `/` and `?` (RFC 3986 §3.3–3.4), percent escapes well
/// formed.
fn is_origin_form(target: &str) -> bool {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let pchar = |s: &str, extra: &[u8]| {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
            let sub_delim = b"!$&'()*+,;=".contains(&b);
            if !(unreserved || sub_delim || b == b':' || b == b'@' || extra.contains(&b)) {
                return false;
            }
            i += 1;
        }
        true
    };
    path.starts_with('/') && pchar(path, b"/") && query.is_none_or(|q| pchar(q, b"/?"))
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn invalid(reason: impl Into<String>) -> HeadError {
    HeadError::Invalid(reason.into())
}

/// `read_exact` that waits through the socket's short read timeouts until
/// `deadline`.
fn read_exact(
    reader: &mut impl Read,
    mut out: &mut [u8],
    deadline: Instant,
) -> Result<(), HeadError> {
    while !out.is_empty() {
        match reader.read(out) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => out = &mut out[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(HeadError::Closed);
                }
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
    Ok(())
}

/// A chunked body (RFC 9112 §7.1), chunk extensions and trailers read and
/// let go.
fn read_chunked(reader: &mut impl BufRead, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut body = Vec::new();
    loop {
        let line = read_crlf_line(reader, deadline)?;
        let size = line.split(';').next().unwrap_or_default();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| invalid(format!("chunk size {size:?}")))?;
        if size == 0 {
            while !read_crlf_line(reader, deadline)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        read_exact(reader, &mut body[start..], deadline)?;
        let mut crlf = [0; 2];
        read_exact(reader, &mut crlf, deadline)?;
        if &crlf != b"\r\n" {
            return Err(invalid("a chunk not followed by CRLF"));
        }
    }
}

fn read_crlf_line(reader: &mut impl Read, deadline: Instant) -> Result<String, HeadError> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > 4096 {
            return Err(invalid("a chunk line longer than 4 KiB"));
        }
        let mut byte = [0];
        read_exact(reader, &mut byte, deadline)?;
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| invalid("a chunk line that is not UTF-8"))
}

#[test]
fn only_origin_form_heads_pass() {
    let parse = |head: &str| parse_head(head.as_bytes());
    let ok = "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:4318\r\nContent-Length: 3";
    let head = parse(ok).expect("origin form");
    assert_eq!(head.target, "/v1/traces");
    assert_eq!(head.framing, Framing::Length(3));
    for (bad, why) in [
        (
            "POST http://127.0.0.1:4318/v1/traces HTTP/1.1\r\nHost: 127.0.0.1:4318",
            "origin form",
        ),
        ("POST * HTTP/1.1\r\nHost: a", "origin form"),
        ("POST /v1/traces#x HTTP/1.1\r\nHost: a", "origin form"),
        ("POST /v1/%zz HTTP/1.1\r\nHost: a", "origin form"),
        ("POST  /v1/traces HTTP/1.1\r\nHost: a", "request line"),
        ("POST /v1/traces HTTP/1.0\r\nHost: a", "version"),
        ("POST /v1/traces HTTP/1.1", "Host"),
        ("POST /v1/traces HTTP/1.1\r\nHost: a\r\nHost: b", "Host"),
        ("POST /v1/traces HTTP/1.1\r\nHost : a", "field name"),
        ("POST /v1/traces HTTP/1.1\r\nHost: a\r\n folded", "folding"),
        (
            "POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
            "both",
        ),
        (
            "POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2",
            "Content-Length",
        ),
        (
            "POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Length: -1",
            "Content-Length",
        ),
    ] {
        match parse(bad) {
            Err(HeadError::Invalid(reason)) => assert!(reason.contains(why), "{bad:?}: {reason}"),
            other => panic!("{bad:?} passed: {other:?}"),
        }
    }
    // Bare LF line ends, seen while reading.
    let mut bare = std::io::Cursor::new(b"POST /v1/traces HTTP/1.1\nHost: a\n\n".to_vec());
    assert!(matches!(read_head(&mut bare), Err(HeadError::Invalid(r)) if r.contains("bare LF")));
    // A chunked body.
    let mut chunked =
        std::io::Cursor::new(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n".to_vec());
    let head = parse("POST /v1/traces HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked").unwrap();
    assert_eq!(head.read_body(&mut chunked).unwrap(), b"abcde");
}
