//! Host impact: what the agent costs a real service under load.
//!
//! The service is the demo shop (`examples/src/bin/demo`, binary
//! `target/release/demo`), run with `--no-load` and driven by `wrk` over
//! loopback with the demo's own browsing mix (see [`WRK_SCRIPT`]). Five
//! variants of the demo differ only in their environment ([`VARIANTS`]):
//! the agent switched off with its kill switch (`SMOLDER_ENABLED=false`: the
//! agent installs nothing, and the tracing layer, still in the subscriber,
//! only mints span ids), at 99 Hz, at 99 Hz without span export, at 999 Hz,
//! and at 99 Hz while a client fetches a flame graph from the agent's
//! endpoint back to back.
//!
//! **Like for like.** Every variant sets `OTEL_EXPORTER_OTLP_ENDPOINT` to a
//! stand-in collector in the harness ([`crate::http::OtlpSink`]), so no
//! variant runs the demo's embedded trace viewer, which would otherwise
//! store every span the agent exports in the measured process itself.
//! Exporting spans is the agent's work and is counted; receiving them is a
//! collector's, elsewhere, and is not.
//!
//! **No starving.** On a machine with two or more CPUs, the demo runs on the
//! last one (`taskset -c <cpu>`), and `wrk` (one thread, [`CONNECTIONS`]
//! connections), the harness and the stand-in collector on the first.
//!
//! **Alternation.** All five demos start at once, each warms up, and all
//! are stopped (`SIGSTOP`), costing nothing. Then, round by round, each is
//! resumed in turn for one measured slice (a second of unmeasured load,
//! then [`ImpactOptions::seconds`] of `wrk --latency`) and stopped again;
//! the order rotates every round. So every variant sees the same drift of
//! this shared machine, and each round's ratio to its own "off" slice is a
//! paired estimate. The demo's CPU per request comes from `/proc/<pid>/stat`
//! (and the agent's own threads' share from `/proc/<pid>/task/*/stat`).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::child::{HarnessError, fail, median};
use crate::http::{self, OtlpSink};
use crate::sys::{self, Affinity};

/// `wrk` connections: enough to keep one CPU's worth of request handlers
/// busy, few enough that queueing does not dominate latency.
pub const CONNECTIONS: u32 = 4;
/// Unmeasured load after a demo starts (caches, SQLite pages, symbols).
const DEMO_WARMUP: Duration = Duration::from_secs(5);
/// Unmeasured load at the start of every slice, after resuming.
const SLICE_WARMUP: Duration = Duration::from_secs(1);
/// Pause after resuming a demo, before loading it.
const RESUME_SETTLE: Duration = Duration::from_millis(300);
/// The window of the flame graphs fetched in the rendering variant.
pub const RENDER_WINDOW: &str = "1m";
/// The name prefix of the agent's threads.
const AGENT_THREADS: &str = "smolder-";

/// The load: the demo's browsing mix (`load.rs`: order history, search,
/// order history, search, sales report), without its pauses, so that the
/// demo's CPU is always busy. Order histories are of business accounts
/// (every tenth customer, hundreds of orders each: the N+1 queries, one
/// span per order); searches cycle through the 40 brands (a full scan of
/// 200 000 products each); the report renders megabytes of JSON. Checkout
/// is left out: it waits 150 ms on a lock and a simulated payment call, so
/// it would measure waiting, not CPU.
pub const WRK_SCRIPT: &str = r#"-- smolder-benches impact: the demo's browsing mix, back to back
local brands = {"Acme", "Northwind", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay",
  "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent", "Wonka", "Gringotts", "Oscorp",
  "Aperture", "Monarch", "Dunder", "Pied%20Piper", "Massive", "Blue%20Sun", "Buy%20n%20Large",
  "Ollivander", "Zorg", "Nakatomi", "Prestige", "Sirius", "Virtucon", "Gekko", "Krusty",
  "Duff", "Bluth", "Sterling", "Pendant", "Rekall", "Weyland", "Yoyodyne", "Omni", "Spacely",
  "Cogswell"}
local n = 0
request = function()
  local step = n % 5
  local pair = math.floor(n / 5) * 2 + math.floor(step / 2)
  n = n + 1
  local path
  if step == 0 or step == 2 then
    path = string.format("/orders/%d", ((pair * 37) % 100 + 1) * 10)
  elseif step == 1 or step == 3 then
    path = "/search?brand=" .. brands[(pair * 7) % 40 + 1]
  else
    path = "/report"
  end
  return wrk.format("GET", path)
end
"#;

/// One configuration of the demo.
pub struct Variant {
    pub label: &'static str,
    /// Environment on top of the common one.
    pub env: &'static [(&'static str, &'static str)],
    /// Demo arguments on top of the common ones.
    pub args: &'static [&'static str],
    /// The variant this one's ratios are to (its own index for a baseline).
    pub baseline: usize,
    /// Whether the agent runs (and has an endpoint to ask for stats).
    pub agent: bool,
    /// Whether a client fetches flame graphs back to back during the slice.
    pub render_loop: bool,
}

/// The variants. Two baselines: "off" (index 0), to which the agent's own
/// span export is compared, and "off, SDK" (index [`SDK_OFF`]), a service
/// that already exports its spans through the OpenTelemetry SDK, to which the
/// same service with the agent in that pipeline is compared.
pub const VARIANTS: [Variant; 7] = [
    Variant {
        label: "off (`SMOLDER_ENABLED=false`)",
        env: &[("SMOLDER_ENABLED", "false")],
        args: &[],
        baseline: 0,
        agent: false,
        render_loop: false,
    },
    Variant {
        label: "99 Hz",
        env: &[("SMOLDER_FREQUENCY_HZ", "99")],
        args: &[],
        baseline: 0,
        agent: true,
        render_loop: false,
    },
    Variant {
        label: "99 Hz, spans not exported (`OTEL_TRACES_EXPORTER=none`)",
        env: &[
            ("SMOLDER_FREQUENCY_HZ", "99"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
        args: &[],
        baseline: 0,
        agent: true,
        render_loop: false,
    },
    Variant {
        label: "999 Hz",
        env: &[("SMOLDER_FREQUENCY_HZ", "999")],
        args: &[],
        baseline: 0,
        agent: true,
        render_loop: false,
    },
    Variant {
        label: "99 Hz, flame graphs fetched back to back",
        env: &[("SMOLDER_FREQUENCY_HZ", "99")],
        args: &[],
        baseline: 0,
        agent: true,
        render_loop: true,
    },
    Variant {
        label: "off, spans exported by the OpenTelemetry SDK (`--otel-sdk`)",
        env: &[("SMOLDER_ENABLED", "false")],
        args: &["--otel-sdk"],
        baseline: SDK_OFF,
        agent: false,
        render_loop: false,
    },
    Variant {
        label: "99 Hz in the SDK pipeline (`--otel-sdk`, ProfilingSpanProcessor)",
        env: &[("SMOLDER_FREQUENCY_HZ", "99")],
        args: &["--otel-sdk"],
        baseline: SDK_OFF,
        agent: true,
        render_loop: false,
    },
];

/// The variant with the agent off and spans exported by the SDK.
pub const SDK_OFF: usize = 5;
/// The agent at 99 Hz exporting spans itself; compared with "off".
pub const HZ99: usize = 1;
/// The agent at 99 Hz with nothing exported; compared with "off".
pub const HZ99_NO_EXPORT: usize = 2;
/// The agent at 99 Hz in the SDK pipeline; compared with [`SDK_OFF`].
pub const HZ99_SDK: usize = 6;

/// The variants the 99 Hz targets are read from: the three 99 Hz ones and
/// their baselines.
pub const TARGET_VARIANTS: [usize; 5] = [0, HZ99, HZ99_NO_EXPORT, SDK_OFF, HZ99_SDK];

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

/// Section settings.
#[derive(Debug, Clone, Copy)]
pub struct ImpactOptions {
    pub rounds: usize,
    pub seconds: u64,
    /// Only the variants the 99 Hz targets compare ([`TARGET_VARIANTS`]):
    /// with fewer variants, a round is shorter, and more rounds fit the
    /// same time.
    pub targets_only: bool,
}

// === wrk ===

/// What one `wrk --latency` run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkReport {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx/3xx answers plus socket errors (connect, read, write,
    /// timeout).
    pub errors: u64,
}

/// A latency as wrk prints it (`850.00us`, `99.75ms`, `1.25s`, `2.00m`), in
/// milliseconds.
fn wrk_millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// Parses wrk's output (with `--latency`).
pub fn parse_wrk(output: &str) -> Option<WrkReport> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0u64;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => p50 = wrk_millis(value),
            ["99%", value] => p99 = wrk_millis(value),
            [n, "requests", "in", time, ..] => {
                requests = n.parse().ok();
                seconds = time.trim_end_matches(',').strip_suffix('s')?.parse().ok();
            }
            ["Requests/sec:", value] => rps = value.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    Some(WrkReport {
        requests: requests?,
        seconds: seconds?,
        requests_per_second: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
        errors,
    })
}

/// Runs `wrk` against `url` for `duration` with the browsing script.
fn run_wrk(script: &Path, url: &str, duration: Duration) -> Result<WrkReport, HarnessError> {
    let output = Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| HarnessError(format!("cannot run wrk (apt-get install -y wrk): {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return fail(format!(
            "wrk failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse_wrk(&stdout).ok_or_else(|| HarnessError(format!("cannot read wrk's output:\n{stdout}")))
}

// === the demo ===

/// A running demo process. Dropping it kills it.
struct Demo {
    child: Child,
    pid: u32,
    shop: SocketAddr,
    agent: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

/// The address in a banner line such as `  the shop      http://127.0.0.1:8080/`.
fn banner_addr(line: &str, label: &str) -> Option<SocketAddr> {
    let rest = line.trim_start().strip_prefix(label)?.trim();
    let rest = rest.strip_prefix("http://")?;
    rest[..rest.find('/').unwrap_or(rest.len())].parse().ok()
}

impl Demo {
    fn start(
        exe: &Path,
        cpu: Option<usize>,
        variant: &Variant,
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
            .args(variant.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        command
            .env("SMOLDER_HTTP_ADDR", "127.0.0.1:0")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
            .envs(variant.env.iter().copied());
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
                    let mut text = stderr.lock().unwrap_or_else(|p| p.into_inner());
                    if text.len() < 64 * 1024 {
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
                    variant.label,
                    demo.stderr_text()
                ));
            }
        }
        if variant.agent != demo.agent.is_some() {
            return fail(format!(
                "the demo ({}) {} an agent endpoint",
                variant.label,
                if variant.agent {
                    "has no"
                } else {
                    "unexpectedly has"
                }
            ));
        }
        http::wait_until_ok(demo.shop, "/", Duration::from_secs(60))?;
        Ok(demo)
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trim()
            .to_owned()
    }

    fn url(&self) -> String {
        format!("http://{}", self.shop)
    }

    fn pause(&self) -> Result<(), HarnessError> {
        sys::send_signal(self.pid, libc::SIGSTOP).map_err(HarnessError::from)
    }

    fn resume(&self) -> Result<(), HarnessError> {
        sys::send_signal(self.pid, libc::SIGCONT).map_err(HarnessError::from)
    }

    /// Ctrl-C (the demo stops gracefully), then a kill after 20 s.
    fn stop(mut self) -> Result<(), HarnessError> {
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
fn demo_binary() -> Result<PathBuf, HarnessError> {
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

// === measurement ===

/// One measured slice.
#[derive(Debug, Clone, Copy)]
struct Slice {
    wrk: WrkReport,
    /// The demo's CPU over the slice, and its agent threads' part of it.
    cpu_s: f64,
    agent_threads_s: f64,
    /// Flame graphs fetched during the slice, and their total time.
    renders: u64,
    render_s: f64,
}

impl Slice {
    fn requests_per_second(&self) -> f64 {
        self.wrk.requests_per_second
    }

    fn p50_ms(&self) -> f64 {
        self.wrk.p50_ms
    }

    fn p99_ms(&self) -> f64 {
        self.wrk.p99_ms
    }

    /// The demo's CPU milliseconds per request answered.
    fn cpu_ms_per_request(&self) -> f64 {
        self.cpu_s * 1e3 / self.wrk.requests.max(1) as f64
    }
}

/// Fetches flame graphs back to back until stopped, on its own thread.
struct RenderLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(u64, Duration), HarnessError>>,
}

impl RenderLoop {
    fn start(agent: SocketAddr) -> RenderLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let target = format!("/debug/pprof/flamegraph?window={RENDER_WINDOW}");
                let (mut count, mut total) = (0, Duration::ZERO);
                // Relaxed: a stop flag; the result comes back through join.
                while !stop.load(Ordering::Relaxed) {
                    let response = http::get(agent, &target, Duration::from_secs(60))?;
                    if response.status != 200 {
                        return fail(format!("{target} answered {}", response.status));
                    }
                    count += 1;
                    total += response.elapsed;
                }
                Ok((count, total))
            })
        };
        RenderLoop { stop, thread }
    }

    fn finish(self) -> Result<(u64, Duration), HarnessError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| HarnessError("the flame-graph client panicked".into()))?
    }
}

fn measure_slice(
    demo: &Demo,
    variant: &Variant,
    script: &Path,
    seconds: u64,
    ticks_per_second: f64,
) -> Result<Slice, HarnessError> {
    demo.resume()?;
    std::thread::sleep(RESUME_SETTLE);
    run_wrk(script, &demo.url(), SLICE_WARMUP)?;
    let renders = match (variant.render_loop, demo.agent) {
        (true, Some(agent)) => Some(RenderLoop::start(agent)),
        _ => None,
    };
    let (cpu_before, agent_before) = sys::process_cpu_ticks(demo.pid, AGENT_THREADS)?;
    let wrk = run_wrk(script, &demo.url(), Duration::from_secs(seconds));
    let (cpu_after, agent_after) = sys::process_cpu_ticks(demo.pid, AGENT_THREADS)?;
    let rendered = renders.map(RenderLoop::finish).transpose();
    demo.pause()?;
    let wrk = wrk?;
    let (renders, render_time) = rendered?.unwrap_or_default();
    Ok(Slice {
        wrk,
        cpu_s: (cpu_after - cpu_before) as f64 / ticks_per_second,
        agent_threads_s: agent_after.saturating_sub(agent_before) as f64 / ticks_per_second,
        renders,
        render_s: render_time.as_secs_f64(),
    })
}

/// A number from the agent's `/debug/pprof/stats` JSON, by key (the keys
/// the harness reads are unique in it); `None` for `null` or absent.
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let quoted = format!("\"{key}\"");
    let at = json.find(&quoted)? + quoted.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Restores the harness thread's CPU set when the section ends.
struct PinGuard(Option<Affinity>);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            let _ = original.apply_to_current_thread();
        }
    }
}

/// Everything measured.
pub struct ImpactResults {
    options: ImpactOptions,
    /// Per variant, its slices in round order.
    slices: Vec<Vec<Slice>>,
    /// Per variant, the agent's stats JSON at the end (if it runs).
    stats: Vec<Option<String>>,
    pinning: Option<(usize, usize)>,
    sink: (u64, u64),
}

/// Runs the section.
pub fn run(options: ImpactOptions) -> Result<ImpactResults, HarnessError> {
    let demo_exe = demo_binary()?;
    let original = Affinity::of_current_thread()?;
    let cpus = original.cpus();
    let pinning = match (cpus.first(), cpus.last()) {
        (Some(&client), Some(&demo)) if client != demo => Some((client, demo)),
        _ => None,
    };
    let _restore = PinGuard(pinning.map(|_| original));
    if let Some((client, _)) = pinning {
        // Threads and processes started from here on (wrk, the stand-in
        // collector, the flame-graph client) inherit it.
        Affinity::only(client).apply_to_current_thread()?;
    }
    let sink = OtlpSink::start()?;
    let script_path =
        std::env::temp_dir().join(format!("smolder-benches-browse-{}.lua", std::process::id()));
    std::fs::write(&script_path, WRK_SCRIPT)?;
    let result = run_with(options, &demo_exe, pinning, &sink, &script_path);
    let _ = std::fs::remove_file(&script_path);
    let (slices, stats) = result?;
    Ok(ImpactResults {
        options,
        slices,
        stats,
        pinning,
        sink: sink.received(),
    })
}

type Measured = (Vec<Vec<Slice>>, Vec<Option<String>>);

fn run_with(
    options: ImpactOptions,
    demo_exe: &Path,
    pinning: Option<(usize, usize)>,
    sink: &OtlpSink,
    script: &Path,
) -> Result<Measured, HarnessError> {
    let ticks = sys::clock_ticks_per_second() as f64;
    let active: Vec<usize> = if options.targets_only {
        TARGET_VARIANTS.to_vec()
    } else {
        (0..VARIANTS.len()).collect()
    };
    let mut demos = Vec::new();
    for &i in &active {
        let variant = &VARIANTS[i];
        eprintln!("  impact: starting the demo, {}", variant.label);
        let demo = Demo::start(demo_exe, pinning.map(|p| p.1), variant, &sink.endpoint())?;
        run_wrk(script, &demo.url(), DEMO_WARMUP)?;
        demo.pause()?;
        demos.push((i, demo));
    }
    let mut slices = vec![Vec::new(); VARIANTS.len()];
    for round in 0..options.rounds {
        for k in 0..demos.len() {
            let (i, demo) = &demos[(round + k) % demos.len()];
            let i = *i;
            eprintln!(
                "  impact round {}/{}: {}",
                round + 1,
                options.rounds,
                VARIANTS[i].label
            );
            let slice = measure_slice(demo, &VARIANTS[i], script, options.seconds, ticks)?;
            let errors = slice.wrk.errors;
            if errors * 100 > slice.wrk.requests.max(1) {
                return fail(format!(
                    "{} of {} requests failed ({}); stderr: {}",
                    errors,
                    slice.wrk.requests,
                    VARIANTS[i].label,
                    demo.stderr_text()
                ));
            }
            slices[i].push(slice);
        }
    }
    let mut stats = vec![None; VARIANTS.len()];
    for (i, demo) in &demos {
        demo.resume()?;
        if let Some(agent) = demo.agent {
            stats[*i] =
                Some(http::get(agent, "/debug/pprof/stats", Duration::from_secs(10))?.text());
        }
    }
    for (_, demo) in demos {
        demo.stop()?;
    }
    Ok((slices, stats))
}

// === report ===

/// One 99 Hz variant's figures against its baseline.
#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    /// Throughput over the baseline: ratio of medians, and median of the
    /// per-round ratios.
    pub throughput: (f64, f64),
    /// p99 latency over the baseline, the same two ways.
    pub p99: (f64, f64),
    /// Demo CPU per request over the baseline (ratio of medians).
    pub cpu_per_request: f64,
}

/// The 99 Hz figures the summary sets against the targets.
#[derive(Debug, Clone, Copy)]
pub struct ImpactSummary {
    /// The agent exporting spans itself, against "off".
    pub exporting: Ratios,
    /// The agent exporting spans itself, against the SDK exporting the same
    /// spans without the agent: what the agent costs a service that exports
    /// its traces either way.
    pub exporting_like_for_like: Ratios,
    /// The agent with nothing exported, against "off".
    pub profiling_only: Ratios,
    /// The agent in the SDK pipeline, against the SDK pipeline alone.
    pub sdk: Ratios,
}

fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

impl ImpactResults {
    fn column(&self, variant: usize, f: impl Fn(&Slice) -> f64) -> Vec<f64> {
        self.slices[variant].iter().map(f).collect()
    }

    /// Median over rounds of variant / its baseline, round by round.
    fn paired(&self, variant: usize, f: impl Fn(&Slice) -> f64) -> f64 {
        self.paired_to(variant, VARIANTS[variant].baseline, f)
    }

    /// Median over rounds of variant / `base`, round by round.
    fn paired_to(&self, variant: usize, base: usize, f: impl Fn(&Slice) -> f64) -> f64 {
        let ratios: Vec<f64> = self.slices[variant]
            .iter()
            .zip(&self.slices[base])
            .map(|(v, off)| f(v) / f(off))
            .collect();
        median(&ratios)
    }

    /// Prints the tables; returns the 99 Hz figures.
    pub fn print(&self) -> Result<ImpactSummary, HarnessError> {
        let o = self.options;
        println!(
            "\n## Host impact: the demo shop under wrk, {} rounds x {} s per variant, variants \
             alternating; medians over rounds",
            o.rounds, o.seconds
        );
        match self.pinning {
            Some((client, demo)) => println!(
                "demo pinned to CPU {demo} (taskset); wrk (1 thread, {CONNECTIONS} connections, \
                 the browsing mix), the harness and the stand-in OTLP collector on CPU {client}"
            ),
            None => println!("one CPU: nothing pinned; wrk and the demo share it"),
        }
        println!(
            "\n| variant | req/s (range) | x base | x base, paired by round | p50 ms | x base \
             | p99 ms | x base | x base, paired | demo CPU ms / request | x base | agent \
             threads, % of demo CPU | flame graphs / s (ms each) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let (rps, p50, p99, cpu_per_request) = (
            Slice::requests_per_second,
            Slice::p50_ms,
            Slice::p99_ms,
            Slice::cpu_ms_per_request,
        );
        for (i, variant) in VARIANTS.iter().enumerate() {
            if self.slices[i].is_empty() {
                continue; // not run (`--targets-only`)
            }
            let base = variant.baseline;
            let off_rps = median(&self.column(base, rps));
            let off_p50 = median(&self.column(base, p50));
            let off_p99 = median(&self.column(base, p99));
            let off_cpu = median(&self.column(base, cpu_per_request));
            let m_rps = median(&self.column(i, rps));
            let (lo, hi) = range(&self.column(i, rps));
            let m_p50 = median(&self.column(i, p50));
            let m_p99 = median(&self.column(i, p99));
            let m_cpu = median(&self.column(i, cpu_per_request));
            let agent_share = median(&self.column(i, |s| 100.0 * s.agent_threads_s / s.cpu_s));
            let renders = if variant.render_loop {
                let per_second = median(&self.column(i, |s| s.renders as f64 / s.wrk.seconds));
                let each = median(&self.column(i, |s| 1e3 * s.render_s / s.renders.max(1) as f64));
                format!("{per_second:.1} ({each:.0})")
            } else {
                "-".to_owned()
            };
            println!(
                "| {} | {m_rps:.1} ({lo:.1}-{hi:.1}) | {:.3} | {:.3} | {m_p50:.1} | {:.3} | \
                 {m_p99:.1} | {:.3} | {:.3} | {m_cpu:.2} | {:.3} | {agent_share:.1} | {renders} |",
                variant.label,
                m_rps / off_rps,
                self.paired(i, rps),
                m_p50 / off_p50,
                m_p99 / off_p99,
                self.paired(i, p99),
                m_cpu / off_cpu,
            );
        }
        println!(
            "\n`x base`: ratio to the variant's baseline, \"off\" for the first five and \
             \"off, spans exported by the OpenTelemetry SDK\" for the last two (the baselines \
             show 1.000). `x base, paired`: the median over rounds of each round's ratio to that \
             round's baseline slice. `demo CPU ms / request`: the demo's user + system CPU over the slice \
             (/proc/<pid>/stat) per request answered. `agent threads`: the part of it used by \
             the agent's own threads (smolder-*); the signal handler runs on the host's threads \
             and is not in it."
        );

        println!("\n### The agent's own account at the end (warm-up included)");
        println!(
            "| variant | samples (signals) | handler p50 / p99 | agent threads CPU s | \
             process CPU s | overhead (own estimate) | spans exported | spans dropped, queue \
             full | export failed | handed to the SDK's processor | spans looked up \
             (sampled) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (variant, stats) in VARIANTS.iter().zip(&self.stats) {
            let Some(json) = stats else { continue };
            let n = |key: &str| {
                json_number(json, key).map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
            };
            let s = |key: &str| {
                json_number(json, key).map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
            };
            println!(
                "| {} | {} | {} / {} ns | {} | {} | {} % | {} | {} | {} | {} | {} |",
                variant.label,
                n("samples_taken"),
                n("p50"),
                n("p99"),
                s("agent_threads_cpu_seconds"),
                s("process_cpu_seconds"),
                json_number(json, "overhead_percent")
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                n("exported"),
                n("dropped_queue_full"),
                n("export_failed"),
                n("forwarded"),
                n("sampled"),
            );
        }
        println!(
            "\nThe stand-in collector received {} export requests, {:.1} MB in all.",
            self.sink.0,
            self.sink.1 as f64 / 1e6
        );
        Ok(ImpactSummary {
            exporting: self.ratios(HZ99),
            exporting_like_for_like: self.ratios_to(HZ99, SDK_OFF),
            profiling_only: self.ratios(HZ99_NO_EXPORT),
            sdk: self.ratios(HZ99_SDK),
        })
    }

    /// A variant's figures against its baseline.
    fn ratios(&self, variant: usize) -> Ratios {
        self.ratios_to(variant, VARIANTS[variant].baseline)
    }

    /// A variant's figures against `base`.
    fn ratios_to(&self, variant: usize, base: usize) -> Ratios {
        let of_medians =
            |f: fn(&Slice) -> f64| median(&self.column(variant, f)) / median(&self.column(base, f));
        Ratios {
            throughput: (
                of_medians(Slice::requests_per_second),
                self.paired_to(variant, base, Slice::requests_per_second),
            ),
            p99: (
                of_medians(Slice::p99_ms),
                self.paired_to(variant, base, Slice::p99_ms),
            ),
            cpu_per_request: of_medians(Slice::cpu_ms_per_request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "\
Running 10s test @ http://127.0.0.1:8080
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   103.19ms   80.12ms 412.00ms   71.00%
    Req/Sec    36.10     10.00    60.00     70.00%
  Latency Distribution
     50%   99.75ms
     75%  150.00ms
     90%  250.00ms
     99%    1.25s
  372 requests in 10.02s, 1.23GB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:     37.11
Transfer/sec:    125.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let report = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(
            report,
            WrkReport {
                requests: 372,
                seconds: 10.02,
                requests_per_second: 37.11,
                p50_ms: 99.75,
                p99_ms: 1250.0,
                errors: 6,
            }
        );
        assert_eq!(wrk_millis("850.00us"), Some(0.85));
        assert_eq!(wrk_millis("2.00m"), Some(120_000.0));
        assert_eq!(wrk_millis("12"), None);
        assert!(parse_wrk("Running 10s test").is_none());
    }

    #[test]
    fn banner_and_stats() {
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
        let json = r#"{"samples_taken": 1232, "handler_cost_ns": {"p50": null, "p99": 30720},
                       "overhead_percent": 1.5e0, "spans": {"exported": 6394}}"#;
        assert_eq!(json_number(json, "samples_taken"), Some(1232.0));
        assert_eq!(json_number(json, "p50"), None);
        assert_eq!(json_number(json, "p99"), Some(30720.0));
        assert_eq!(json_number(json, "overhead_percent"), Some(1.5));
        assert_eq!(json_number(json, "exported"), Some(6394.0));
        assert_eq!(json_number(json, "missing"), None);
    }
}
