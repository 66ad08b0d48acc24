//! The HTTP endpoint, spoken to over a plain `TcpStream`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use smolder::Engine;

use crate::burn::Burner;
use crate::{PATIENCE, TEST_HZ, quiet_builder, serial, wait_until};

/// A response: status code, lower-cased header lines, body.
struct Response {
    status: u16,
    headers: Vec<String>,
    body: Vec<u8>,
}

/// Sends one `GET` with `Connection: close` and reads the whole response.
fn get(addr: SocketAddr, target: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the endpoint");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
    let body = raw[split + 4..].to_vec();
    if let Some(length) = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
    {
        assert_eq!(length.trim().parse::<usize>().ok(), Some(body.len()));
    }
    Response {
        status,
        headers,
        body,
    }
}

#[test]
fn endpoint_serves_stats_on_an_ephemeral_port() {
    let _serial = serial();
    let agent = quiet_builder()
        .http_addr("127.0.0.1:0".parse().unwrap())
        .start()
        .expect("start");
    let addr = agent.http_addr().expect("the endpoint listens");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let burner = Burner::start("http-burner");
    wait_until("samples to be collected", || {
        agent.stats().samples_collected >= 20
    });
    burner.finish();

    let response = get(addr, "/debug/pprof/stats");
    assert_eq!(response.status, 200);
    assert!(
        response
            .headers
            .iter()
            .any(|h| h.starts_with("content-type:") && h.contains("application/json")),
        "{:?}",
        response.headers
    );
    let stats: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    let local = agent.stats();
    assert_eq!(
        stats["engine"],
        local.engine.map_or("disabled", Engine::as_str)
    );
    assert_eq!(stats["unwinder"], "dwarf");
    assert_eq!(stats["frequency_hz"], TEST_HZ);
    let taken = stats["samples_taken"].as_u64().expect("samples_taken");
    assert!(
        (20..=local.samples).contains(&taken),
        "{taken} samples served, {} counted since",
        local.samples
    );
    assert!(stats["agent_memory_bytes"].as_u64() > Some(0));

    let missing = get(addr, "/debug/pprof/no-such-page");
    assert_eq!(missing.status, 404);
    drop(agent);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the endpoint stops listening with the agent"
    );
}
