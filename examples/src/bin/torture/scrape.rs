//! The HTTP endpoint, scraped without pause.
//!
//! One worker fetches the routes below in turn from whichever agent runs,
//! over plain HTTP/1.1 on a fresh TCP connection each time (std only), and
//! checks the status and the shape of the body. A request that fails while
//! an agent is being replaced is counted as *interrupted*; any other
//! failure fails the run. Every third capture asks for `hz=999`, which
//! makes the collector re-create every thread's timer at another rate and
//! back again, under thread churn.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::{Harness, WORKER_STACK, spawn_worker};

/// What a route's body must look like.
#[derive(Clone, Copy)]
pub enum Body {
    StatsJson,
    Svg,
    Folded,
    GzippedPprof,
}

pub const ROUTES: [(&str, Body); 5] = [
    ("/debug/pprof/stats", Body::StatsJson),
    ("/debug/pprof/flamegraph?window=10s", Body::Svg),
    ("/debug/pprof/folded?window=5s", Body::Folded),
    ("/debug/pprof/profile?seconds=1", Body::GzippedPprof),
    ("/debug/pprof/profile?seconds=1&hz=999", Body::GzippedPprof),
];

/// The order routes are fetched in (indices into [`ROUTES`]).
const SCHEDULE: [usize; 12] = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 4];

#[derive(Default)]
pub struct RouteCounters {
    /// 200 with a well-formed body.
    pub ok: AtomicU64,
    /// Failed while the agent was being replaced.
    pub interrupted: AtomicU64,
    /// Failed otherwise (each also a run failure).
    pub failed: AtomicU64,
    /// Time taken by the successful requests, summed, and the longest.
    pub ok_ms_total: AtomicU64,
    pub ok_ms_max: AtomicU64,
}

#[derive(Default)]
pub struct Counters {
    pub routes: [RouteCounters; ROUTES.len()],
    /// Steps that found no agent running.
    pub no_agent: AtomicU64,
    next: AtomicUsize,
}

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let activity = harness.activity("http-scrape");
    vec![spawn_worker(
        harness,
        &activity,
        "http-scrape",
        WORKER_STACK,
        step,
    )]
}

fn step(harness: &Harness) {
    let _span = tracing::info_span!("http_scrape").entered();
    let counters = &harness.scrape;
    let before = harness.agent.epoch();
    let (Some(addr), true) = (before.http, before.running) else {
        counters.no_agent.fetch_add(1, Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        return;
    };
    let generation = before.generation;
    let index = SCHEDULE[counters.next.fetch_add(1, Relaxed) % SCHEDULE.len()];
    let (path, expected) = ROUTES[index];
    let started = std::time::Instant::now();
    let fetched = get(addr, path).and_then(|(status, body)| match status {
        200 => check_body(expected, &body),
        _ => Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body).lines().next().unwrap_or("")
        )),
    });
    let replaced = harness.agent.epoch() != before;
    let route = &counters.routes[index];
    match fetched {
        Ok(()) => {
            let ms = started.elapsed().as_millis() as u64;
            route.ok_ms_total.fetch_add(ms, Relaxed);
            route.ok_ms_max.fetch_max(ms, Relaxed);
            route.ok.fetch_add(1, Relaxed)
        }
        Err(_) if replaced => route.interrupted.fetch_add(1, Relaxed),
        Err(problem) => {
            harness.fail(format!("GET {path} from agent #{generation}: {problem}"));
            route.failed.fetch_add(1, Relaxed)
        }
    };
}

/// A GET on a new connection: (status, body).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(9)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(2))))
        .map_err(|e| format!("socket options: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading the response: {e}"))?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next()))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk header")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn check_body(expected: Body, body: &[u8]) -> Result<(), String> {
    let text = || String::from_utf8_lossy(body);
    let well_formed = match expected {
        Body::StatsJson => text().contains("\"samples_taken\""),
        Body::Svg => text().contains("<svg"),
        Body::Folded => text().lines().all(|line| {
            line.rsplit_once(' ')
                .is_some_and(|(_, count)| count.parse::<u64>().is_ok())
        }),
        Body::GzippedPprof => body.starts_with(&[0x1f, 0x8b]),
    };
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "malformed body ({} bytes): {:?}",
            body.len(),
            text().chars().take(80).collect::<String>()
        ))
    }
}
