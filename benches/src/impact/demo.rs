//! The demo shop as a child process: finding (and building) its binary,
//! starting one variant of it, pausing and resuming it, and stopping it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use super::variants::Variant;
use crate::child::{HarnessError, fail};
use crate::http;
use crate::sys;

/// Variables the harness's own environment must not pass on to the demo.
const CLEARED_ENV: [&str; 9] = [
    "SMOLDER_ENABLED",
    "SMOLDER_FREQUENCY_HZ",
    "SMOLDER_HTTP_ADDR",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
];

/// The most of the demo's stderr kept for error messages.
const STDERR_KEPT: usize = 64 * 1024;

/// A running demo process. Dropping it kills it.
pub(super) struct Demo {
    child: Child,
    pub(super) pid: u32,
    shop: SocketAddr,
    /// The agent's HTTP endpoint, when the agent runs.
    pub(super) agent: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

/// Locks the demo's collected stderr, even if the thread that collects it
/// panicked while holding the lock: the text is only ever appended to, so
/// whatever it holds is still worth showing in an error message.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address in a banner line such as `  the shop      http://127.0.0.1:8080/`.
fn banner_addr(line: &str, label: &str) -> Option<SocketAddr> {
    let rest = line.trim_start().strip_prefix(label)?.trim();
    let rest = rest.strip_prefix("http://")?;
    rest[..rest.find('/').unwrap_or(rest.len())].parse().ok()
}

impl Demo {
    /// Starts `variant` of the demo (on `cpu`, if given), sending its spans
    /// to `otlp_endpoint`, and waits until the shop answers.
    pub(super) fn start(
        exe: &Path,
        cpu: Option<usize>,
        variant: Variant,
        otlp_endpoint: &str,
    ) -> Result<Demo, HarnessError> {
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args(["--no-load", "--addr", "127.0.0.1:0", "--duration", "1h"])
            .args(variant.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        command
            .env("SMOLDER_HTTP_ADDR", "127.0.0.1:0")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
            .envs(variant.env().iter().copied());
        let mut child = command
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start {}: {e}", exe.display())))?;
        let pid = child.id();
        // Drain both pipes for the demo's whole life, so it never blocks on
        // a full pipe; the banner's addresses come back over a channel.
        let (addresses, found) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            let (mut shop, mut agent) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                agent = agent.or_else(|| banner_addr(&line, "flame graph"));
                // The banner lists the agent's endpoint before the shop.
                if shop.is_none() {
                    shop = banner_addr(&line, "the shop");
                    if shop.is_some() {
                        let _ = addresses.send((shop, agent));
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = Arc::clone(&stderr);
            let mut pipe = child.stderr.take().expect("piped");
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                    let mut text = lock(&stderr);
                    if text.len() < STDERR_KEPT {
                        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                    }
                }
            });
        }
        let mut demo = Demo {
            child,
            pid,
            shop: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent: None,
            stderr,
        };
        match found.recv_timeout(Duration::from_secs(120)) {
            Ok((Some(shop), agent)) => {
                demo.shop = shop;
                demo.agent = agent;
            }
            _ => {
                let status = demo.child.try_wait();
                let _ = demo.child.kill();
                let _ = demo.child.wait();
                return fail(format!(
                    "the demo ({}) printed no shop address (status {status:?}): {}",
                    variant.label(),
                    demo.stderr_text()
                ));
            }
        }
        if variant.runs_agent() != demo.agent.is_some() {
            return fail(format!(
                "the demo ({}) {} an agent endpoint",
                variant.label(),
                if variant.runs_agent() {
                    "has no"
                } else {
                    "unexpectedly has"
                }
            ));
        }
        http::wait_until_ok(demo.shop, "/", Duration::from_secs(60))?;
        Ok(demo)
    }

    /// What the demo has written to stderr so far (about its first
    /// [`STDERR_KEPT`] bytes).
    pub(super) fn stderr_text(&self) -> String {
        lock(&self.stderr).trim().to_owned()
    }

    /// The shop's base URL.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.shop)
    }

    /// Stops the demo (`SIGSTOP`): while paused it costs nothing.
    pub(super) fn pause(&self) -> Result<(), HarnessError> {
        sys::send_signal(self.pid, libc::SIGSTOP).map_err(HarnessError::from)
    }

    pub(super) fn resume(&self) -> Result<(), HarnessError> {
        sys::send_signal(self.pid, libc::SIGCONT).map_err(HarnessError::from)
    }

    /// Ctrl-C (the demo stops gracefully), then a kill after 20 s.
    pub(super) fn stop(mut self) -> Result<(), HarnessError> {
        let _ = self.resume();
        sys::send_signal(self.pid, libc::SIGINT)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        fail(format!(
            "the demo (pid {}) did not stop on SIGINT",
            self.pid
        ))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.resume();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Finds (and, under `cargo run`, first builds) the demo binary: it sits
/// next to this harness in `target/release`.
pub(crate) fn demo_binary() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| HarnessError("the harness has no directory".into()))?;
    if let (Ok(cargo), Ok(manifest_dir)) =
        (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR"))
    {
        if !dir.ends_with("release") {
            return fail("run the impact section from a release build (cargo run --release ...)");
        }
        eprintln!("  impact: cargo build --release -p smolder-examples --bin demo");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "smolder-examples",
                "--bin",
                "demo",
            ])
            .current_dir(manifest_dir)
            .status()?;
        if !status.success() {
            return fail(format!("building the demo failed ({status})"));
        }
    }
    let demo = dir.join("demo");
    if !demo.exists() {
        return fail(format!(
            "{} not found: cargo build --release -p smolder-examples --bin demo",
            demo.display()
        ));
    }
    Ok(demo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_addresses_are_read() {
        assert_eq!(
            banner_addr("  the shop      http://127.0.0.1:41234/", "the shop"),
            Some(SocketAddr::from(([127, 0, 0, 1], 41234)))
        );
        assert_eq!(
            banner_addr(
                "  flame graph   http://127.0.0.1:6060/debug/pprof/flamegraph?window=1m",
                "flame graph"
            ),
            Some(SocketAddr::from(([127, 0, 0, 1], 6060)))
        );
        assert_eq!(
            banner_addr("  flame graph   off (SMOLDER_HTTP_ADDR=off)", "flame graph"),
            None
        );
    }
}
