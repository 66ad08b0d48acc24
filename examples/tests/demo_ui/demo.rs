//! Running the `demo` binary on free ports and reading the URLs it prints.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How long the demo may take to seed its database and print its banner.
const STARTUP: Duration = Duration::from_secs(120);

/// A running demo; killed on drop.
pub struct Demo {
    child: Child,
    output: Receiver<String>,
    /// What it printed so far, for failure messages.
    printed: Vec<String>,
    /// The banner's entries: "Jaeger UI", "flame graph", "the shop", ...
    banner: HashMap<String, String>,
}

impl Demo {
    /// Starts the demo with every listener on a free loopback port, extra
    /// `args`, only the given `SMOLDER_*`/`OTEL_*` environment, and a safety
    /// time limit, and waits for its banner.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
        command.args([
            "--addr",
            "127.0.0.1:0",
            "--ui-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--duration",
            "10m",
        ]);
        command.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("SMOLDER_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command.env("SMOLDER_HTTP_ADDR", "127.0.0.1:0");
        command.envs(env.iter().copied());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the demo binary");
        let (sender, output) = mpsc::channel();
        forward_lines(
            child.stdout.take().expect("piped stdout"),
            "",
            sender.clone(),
        );
        forward_lines(
            child.stderr.take().expect("piped stderr"),
            "stderr: ",
            sender,
        );
        let mut demo = Demo {
            child,
            output,
            printed: Vec::new(),
            banner: HashMap::new(),
        };
        demo.read_banner();
        demo
    }

    /// Reads lines until the one after the banner ("Load: ..." or "No
    /// load ...").
    fn read_banner(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.output.recv_timeout(left) else {
                panic!(
                    "the demo printed no complete banner within {STARTUP:?}:\n{}",
                    self.printed.join("\n")
                );
            };
            self.printed.push(line.clone());
            if line.starts_with("Load:") || line.starts_with("No load") {
                return;
            }
            if let Some((label, value)) = banner_entry(&line) {
                self.banner.insert(label, value);
            }
        }
    }

    /// The banner entry with this label; fails the test if there is none.
    pub fn banner(&self, label: &str) -> &str {
        self.banner.get(label).unwrap_or_else(|| {
            panic!(
                "the demo's banner has no {label:?} line:\n{}",
                self.printed.join("\n")
            )
        })
    }

    pub fn has_banner(&self, label: &str) -> bool {
        self.banner.contains_key(label)
    }

    /// The embedded Jaeger UI's base URL, `http://127.0.0.1:PORT`.
    pub fn jaeger_ui(&self) -> String {
        let url = self.banner("Jaeger UI");
        url.split("/search").next().unwrap_or(url).to_owned()
    }

    /// Everything the demo printed so far (for failure messages).
    pub fn printed(&mut self) -> String {
        while let Ok(line) = self.output.try_recv() {
            self.printed.push(line);
        }
        self.printed.join("\n")
    }
}

impl Drop for Demo {
    /// Stops the demo as Ctrl-C would, so it removes its database file;
    /// kills it if it has not exited after 15 s.
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions. `pid` is our
        // child, not yet waited for, so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A banner line is indented: `  label   value`, label and value separated
/// by at least two spaces.
fn banner_entry(line: &str) -> Option<(String, String)> {
    let line = line.strip_prefix("  ")?;
    let (label, value) = line.split_once("  ")?;
    Some((label.trim().to_owned(), value.trim().to_owned()))
}

/// Sends each line read from `stream` to `sender`, on a thread of its own,
/// so the demo never blocks on a full pipe.
fn forward_lines(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    sender: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(format!("{prefix}{line}")).is_err() {
                break;
            }
        }
    });
}

#[test]
fn banner_entries() {
    assert_eq!(
        banner_entry("  Jaeger UI     http://127.0.0.1:1/search?service=x"),
        Some((
            "Jaeger UI".into(),
            "http://127.0.0.1:1/search?service=x".into()
        ))
    );
    assert_eq!(banner_entry("Load: 2 browsing"), None);
}
