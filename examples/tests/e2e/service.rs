//! A running `workload serve` process and a raw HTTP/1.1 client for it.
//!
//! The client writes requests byte for byte, so tests can send exactly the
//! malformed, oversized or slow requests a hostile client would.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A fixture process serving the HTTP endpoint.
pub struct Service {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
}

/// What `workload serve` printed before it started serving, when it could
/// not start.
pub fn start_error(env: &[(&str, &str)]) -> Option<String> {
    Service::try_start(env, &[]).err()
}

impl Service {
    /// Starts `workload serve` with the endpoint on a free loopback port
    /// (unless `env` says otherwise) and waits for its address.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Service {
        Service::try_start(env, args)
            .unwrap_or_else(|e| panic!("workload serve did not start: {e}"))
    }

    fn try_start(env: &[(&str, &str)], args: &[&str]) -> Result<Service, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_workload"));
        command.arg("serve").args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("SMOLDER_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command.env("SMOLDER_HTTP_ADDR", "127.0.0.1:0");
        command.envs(env.iter().copied());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if let Some(error) = line.trim().strip_prefix("start_error=") {
            let _ = child.wait();
            return Err(error.to_owned());
        }
        let addr = line
            .trim()
            .strip_prefix("http_addr=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        Ok(Service {
            child,
            stdin,
            stdout,
            addr,
        })
    }

    /// Closes the fixture's stdin (its signal to stop), waits for it, and
    /// returns what it printed; the process must exit cleanly.
    pub fn stop(mut self) -> HashMap<String, String> {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let status = self.child.wait().expect("wait for workload serve");
        assert!(
            status.success(),
            "workload serve exited with {status}:\n{rest}"
        );
        rest.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn get(&self, target: &str) -> Response {
        self.get_with(target, &[])
    }

    pub fn get_with(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.send(request.as_bytes())
    }

    /// Sends raw bytes on a new connection and reads the response.
    pub fn send(&self, raw: &[u8]) -> Response {
        let mut stream = self.connect();
        let _ = stream.write_all(raw);
        Response::read(&mut stream)
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to the endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        stream
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stats JSON.
    pub fn stats(&self) -> serde_json::Value {
        let response = self.get("/debug/pprof/stats");
        assert_eq!(response.status, 200, "{}", response.text());
        serde_json::from_slice(&response.body).expect("stats is JSON")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Reads one response (the server closes after it: `Connection: close`).
    pub fn read(stream: &mut TcpStream) -> Response {
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Response {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}
