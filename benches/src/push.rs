//! Pushing profiles to Pyroscope: what it costs the demo, and what the
//! agent's memory does while the server is down.
//!
//! Three demos run side by side under their own load generator, each with
//! the agent at its defaults (99 Hz, span export to a stand-in collector,
//! [`OtlpSink`]): one pushing profiles every 10 s (the default) to a
//! stand-in Pyroscope (the same sink, which answers 200 to every POST),
//! one not pushing, and one pushing to a port where nothing listens (the
//! server down for the whole run). The figures come from each agent's own
//! `/debug/pprof/stats`, read after a warm-up and at the end: the push
//! thread's CPU (`push.cpu_seconds`, its thread clock) over the process's
//! (`process_cpu_seconds`), and the agent threads' share with and without
//! push. Every 10 s the harness also reads each demo's resident memory
//! (`VmRSS`) and the down demo's push queue.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{HarnessError, fail};
use crate::http::{self, OtlpSink};

/// What the push may cost, as a share of the demo's CPU.
pub const TARGET_PUSH_CPU_PERCENT: f64 = 0.2;

/// Unmeasured load after the demos start.
const WARMUP: Duration = Duration::from_secs(15);
/// How often memory is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The three demos.
const VARIANTS: [&str; 3] = ["push", "no push", "push, server down"];

struct Demo {
    child: Child,
    pid: u32,
    agent: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(exe: &std::path::Path, env: &[(&str, String)]) -> Result<Demo, HarnessError> {
    let mut command = Command::new(exe);
    command
        .args(["--addr", "127.0.0.1:0", "--duration", "1h"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("SMOLDER_") || key.starts_with("OTEL_") || key.starts_with("PYROSCOPE_")
        {
            command.env_remove(key);
        }
    }
    command.env("SMOLDER_HTTP_ADDR", "127.0.0.1:0");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .map_err(|e| HarnessError(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut agent = None;
    while agent.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim_start().strip_prefix("flame graph") {
            let rest = rest.trim().trim_start_matches("http://");
            agent = rest[..rest.find('/').unwrap_or(rest.len())].parse().ok();
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    match agent {
        Some(agent) => Ok(Demo { child, pid, agent }),
        None => fail("the demo printed no agent address"),
    }
}

/// The figures of one `/debug/pprof/stats` answer this section reads.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    process_cpu: f64,
    agent_cpu: f64,
    push_cpu: f64,
    pushed: f64,
    bytes_pushed: f64,
    dropped: f64,
    retries: f64,
    queue_bytes: f64,
    queue_max_bytes: f64,
    memory: f64,
}

/// The number after `"key": ` in `text`.
fn number(text: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\": ");
    text.find(&pattern)
        .map(|at| &text[at + pattern.len()..])
        .and_then(|rest| {
            let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
            rest[..end].trim().parse().ok()
        })
        .unwrap_or(0.0)
}

fn read(demo: &Demo) -> Result<Reading, HarnessError> {
    let stats = http::get(demo.agent, "/debug/pprof/stats", Duration::from_secs(10))?.text();
    let push = stats
        .find("\"push\": {")
        .map(|at| &stats[at..])
        .map(|rest| &rest[..rest.find('}').unwrap_or(rest.len())])
        .ok_or_else(|| HarnessError(format!("no push stats in {stats}")))?;
    Ok(Reading {
        process_cpu: number(&stats, "process_cpu_seconds"),
        agent_cpu: number(&stats, "agent_threads_cpu_seconds"),
        push_cpu: number(push, "cpu_seconds"),
        pushed: number(push, "pushed"),
        bytes_pushed: number(push, "bytes_pushed"),
        dropped: number(push, "dropped"),
        retries: number(push, "retries"),
        queue_bytes: number(push, "queue_bytes"),
        queue_max_bytes: number(push, "queue_max_bytes"),
        memory: number(&stats, "agent_memory_bytes"),
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|status| crate::sys::Rss::parse(&status).total_kib)
        .unwrap_or(0)
}

/// The agent's threads, by the prefix of their names (`comm`).
const AGENT_THREADS: [&str; 5] = [
    "smolder-collect",
    "smolder-symbols",
    "smolder-spans",
    "smolder-push",
    "smolder-http",
];

/// CPU clock ticks of each of the demo's agent threads, in
/// [`AGENT_THREADS`] order.
fn thread_ticks(pid: u32) -> [u64; 5] {
    AGENT_THREADS.map(|prefix| {
        crate::sys::process_cpu_ticks(pid, prefix).map_or(0, |(_, matching)| matching)
    })
}

/// Everything measured.
pub struct PushResults {
    seconds: u64,
    /// Per variant: agent threads' CPU ticks over the measured run.
    threads: Vec<[u64; 5]>,
    /// Per variant: the readings after the warm-up and at the end.
    readings: Vec<(Reading, Reading)>,
    /// Every 10 s: seconds since the start, RSS (KiB) per variant, and the
    /// down demo's reading.
    memory: Vec<(u64, [u64; 3], Reading)>,
}

/// Runs the section for `seconds` after the warm-up.
pub fn run(seconds: u64) -> Result<PushResults, HarnessError> {
    let exe = crate::impact::demo_binary()?;
    let sink = OtlpSink::start()?;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let common = |push: Option<String>| {
        let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())];
        if let Some(url) = push {
            env.push(("PYROSCOPE_SERVER_ADDRESS", url));
        }
        env
    };
    let demos = [
        start_demo(&exe, &common(Some(sink.endpoint())))?,
        start_demo(&exe, &common(None))?,
        start_demo(&exe, &common(Some(format!("http://{closed}"))))?,
    ];
    std::thread::sleep(WARMUP);
    let first: Vec<Reading> = demos.iter().map(read).collect::<Result<_, _>>()?;
    let first_ticks: Vec<[u64; 5]> = demos.iter().map(|d| thread_ticks(d.pid)).collect();
    let started = Instant::now();
    let mut memory = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(SAMPLE_EVERY.min(Duration::from_secs(seconds)));
        let rss = [0, 1, 2].map(|i| rss_kib(demos[i].pid));
        memory.push((started.elapsed().as_secs(), rss, read(&demos[2])?));
        eprintln!("  push: {}s of {seconds}s", started.elapsed().as_secs());
    }
    let last: Vec<Reading> = demos.iter().map(read).collect::<Result<_, _>>()?;
    let threads = demos
        .iter()
        .zip(&first_ticks)
        .map(|(d, a)| {
            let b = thread_ticks(d.pid);
            std::array::from_fn(|i| b[i].saturating_sub(a[i]))
        })
        .collect();
    Ok(PushResults {
        seconds,
        threads,
        readings: first.into_iter().zip(last).collect(),
        memory,
    })
}

impl PushResults {
    /// The push thread's CPU over the pushing demo's, in percent.
    pub fn push_cpu_percent(&self) -> f64 {
        let (a, b) = self.readings[0];
        100.0 * (b.push_cpu - a.push_cpu) / (b.process_cpu - a.process_cpu).max(1e-9)
    }

    /// Prints the tables; returns the push's CPU share for the summary.
    pub fn print(&self) -> f64 {
        println!("\n## Pushing profiles (Pyroscope, defaults: 10 s intervals)\n");
        println!(
            "Three demos side by side under their own load, {} s measured after a {} s warm-up.\n",
            self.seconds,
            WARMUP.as_secs()
        );
        println!(
            "| demo | process CPU (s) | agent threads, % of it | push thread, % of it | intervals pushed | bytes pushed | dropped | retries |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (name, (a, b)) in VARIANTS.iter().zip(&self.readings) {
            let process = (b.process_cpu - a.process_cpu).max(1e-9);
            println!(
                "| {name} | {:.1} | {:.3} % | {:.4} % | {} | {} | {} | {} |",
                process,
                100.0 * (b.agent_cpu - a.agent_cpu) / process,
                100.0 * (b.push_cpu - a.push_cpu) / process,
                b.pushed - a.pushed,
                b.bytes_pushed - a.bytes_pushed,
                b.dropped,
                b.retries,
            );
        }
        println!(
            "\nThe agent's threads, CPU over the measured run as % of the process's \
             (`/proc/<pid>/task/*/stat`, in {} ms ticks):\n",
            1000 / crate::sys::clock_ticks_per_second()
        );
        println!("| demo | {} |", AGENT_THREADS.join(" | "));
        println!("|---|{}", "---|".repeat(AGENT_THREADS.len()));
        let tick = 1.0 / crate::sys::clock_ticks_per_second() as f64;
        for ((name, (a, b)), ticks) in VARIANTS.iter().zip(&self.readings).zip(&self.threads) {
            let process = (b.process_cpu - a.process_cpu).max(1e-9);
            let cells: Vec<String> = ticks
                .iter()
                .map(|&t| format!("{:.3} %", 100.0 * t as f64 * tick / process))
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
        println!(
            "\nMemory while the server is down (resident KiB of each demo; the down demo's push queue):\n"
        );
        println!(
            "| s | RSS push | RSS no push | RSS server down | queue bytes (max) | intervals dropped | agent memory (bytes) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (at, rss, down) in &self.memory {
            println!(
                "| {at} | {} | {} | {} | {} ({}) | {} | {} |",
                rss[0],
                rss[1],
                rss[2],
                down.queue_bytes,
                down.queue_max_bytes,
                down.dropped,
                down.memory
            );
        }
        self.push_cpu_percent()
    }
}
