//! Memory: how much resident memory the profiler adds to a process.
//!
//! A child starts a workload first (two threads cycling through recursions
//! of varying depth and three leaf functions, so the profile has a few
//! hundred distinct stacks), lets it settle, and reads `VmRSS` from
//! `/proc/self/status`: the baseline. Then it starts the profiler at its
//! defaults (`smolder::start()`; the `pprof` crate at 99 Hz, the rate its
//! documentation suggests), lets it run for [`RUN`], takes a capture of
//! [`CAPTURE`] (`Agent::record`, or building the `pprof` report) and reads
//! `VmRSS` again. The difference is the profiler's, capture and
//! symbolisation included; Smolder's own account (`Stats::memory_bytes`) is
//! printed beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::child::{self, Fields, HarnessError, fail};
use crate::sys::{self, Rss};

/// Workload time before the baseline is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Profiling time before the capture.
const RUN: Duration = Duration::from_secs(3);
/// Length of the capture.
const CAPTURE: Duration = Duration::from_secs(2);
/// Workload threads.
const WORKERS: usize = 2;

// === child side ===

#[inline(never)]
fn leaf_mix(x: u64) -> u64 {
    (0..200u64).fold(x, |a, i| std::hint::black_box(a.rotate_left(5) ^ i))
}

#[inline(never)]
fn leaf_mul(x: u64) -> u64 {
    (0..200u64).fold(x, |a, i| {
        std::hint::black_box(a.wrapping_mul(0x9e37_79b9) + i)
    })
}

#[inline(never)]
fn leaf_add(x: u64) -> u64 {
    (0..200u64).fold(x, |a, i| std::hint::black_box(a.wrapping_add(i * 7)))
}

/// Recurses `depth` frames, then runs one of the leaves.
#[inline(never)]
fn varied(depth: u64, x: u64) -> u64 {
    if depth == 0 {
        return match x % 3 {
            0 => leaf_mix(x),
            1 => leaf_mul(x),
            _ => leaf_add(x),
        };
    }
    let below = varied(std::hint::black_box(depth - 1), x);
    std::hint::black_box(below ^ depth)
}

/// Runs the workload until `stop` is set.
fn work(stop: &AtomicBool, seed: u64) -> u64 {
    let mut x = seed;
    let mut round = 0u64;
    // Relaxed: a stop flag; nothing else is published through it.
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..100 {
            x = varied(round % 40, x.wrapping_add(round));
            round += 1;
        }
    }
    x
}

/// RSS readings, in order, by name.
const STAGES: [&str; 6] = ["base", "running", "captured", "retained", "second", "idle"];

/// How long the last reading waits after the second capture: longer than the
/// agent keeps its symboliser (and the debug info it parsed) without a
/// request, 20 s.
const IDLE: Duration = Duration::from_secs(25);

/// The flag that runs a child with detached debug info hidden.
const NO_DEBUG_INFO: &str = "--no-debug-info";

/// Entry point of `child memory <profiler> [--no-debug-info]`.
pub fn child(args: &[String]) -> Result<Fields, HarnessError> {
    let usage = "usage: child memory smolder|pprof [--no-debug-info]";
    let (profiler, hide_debug_info) = match args {
        [profiler] => (profiler, false),
        [profiler, flag] if flag == NO_DEBUG_INFO => (profiler, true),
        _ => return fail(usage),
    };
    if hide_debug_info {
        // Before any thread exists: the mount namespace is per process.
        sys::hide_detached_debug_info().map_err(|error| {
            HarnessError(format!("cannot hide /usr/lib/debug (needs root): {error}"))
        })?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("work-{i}"))
                .spawn(move || work(&stop, i as u64))
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(SETTLE);
    let mut rss = vec![Rss::read()?];
    let mut fields = Fields::new();
    match profiler.as_str() {
        "smolder" => {
            let agent = smolder::start()?;
            std::thread::sleep(RUN);
            rss.push(Rss::read()?);
            let profile = agent.record(CAPTURE)?;
            rss.push(Rss::read()?);
            fields
                .put("stacks", profile.samples().count())
                .put("samples", profile.sample_count());
            drop(profile);
            sys::release_free_heap();
            rss.push(Rss::read()?);
            drop(agent.record(CAPTURE)?);
            sys::release_free_heap();
            rss.push(Rss::read()?);
            std::thread::sleep(IDLE);
            sys::release_free_heap();
            rss.push(Rss::read()?);
            let stats = agent.stats();
            fields
                .put("memory_bytes", stats.memory_bytes)
                .put("frequency_hz", stats.frequency_hz)
                .put(
                    "engine",
                    stats.engine.map_or("disabled", smolder::Engine::as_str),
                )
                .put("unwinder", stats.unwinder.as_str())
                .put("dropped", stats.dropped.total());
        }
        "pprof" => {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(99)
                .build()?;
            std::thread::sleep(RUN);
            rss.push(Rss::read()?);
            std::thread::sleep(CAPTURE);
            let report = guard.report().build()?;
            rss.push(Rss::read()?);
            fields
                .put("stacks", report.data.len())
                .put("samples", report.data.values().sum::<isize>());
            drop(report);
            sys::release_free_heap();
            rss.push(Rss::read()?);
            std::thread::sleep(CAPTURE);
            drop(guard.report().build()?);
            sys::release_free_heap();
            rss.push(Rss::read()?);
            std::thread::sleep(IDLE);
            sys::release_free_heap();
            rss.push(Rss::read()?);
        }
        _ => return fail(usage),
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        std::hint::black_box(
            worker
                .join()
                .map_err(|_| HarnessError("a workload thread panicked".into()))?,
        );
    }
    for (name, rss) in STAGES.iter().zip(&rss) {
        fields
            .put(&format!("{name}_kib"), rss.total_kib)
            .put(&format!("{name}_anon_kib"), rss.anon_kib)
            .put(&format!("{name}_file_kib"), rss.file_kib);
    }
    fields
        .put("profiler", profiler)
        .put("debug_dir_entries", sys::detached_debug_info_entries());
    Ok(fields)
}

// === parent side ===

/// The rows of the table: a label and the child's arguments.
const ROWS: [(&str, &[&str]); 3] = [
    ("smolder", &["smolder"]),
    (
        "smolder, /usr/lib/debug hidden",
        &["smolder", NO_DEBUG_INFO],
    ),
    ("pprof", &["pprof"]),
];

/// Each row's result, or why it was skipped.
#[derive(Debug)]
pub struct MemoryResults {
    rows: Vec<(&'static str, Result<Fields, HarnessError>)>,
}

/// Runs one child per row. Only the row with debug info hidden may fail
/// without failing the harness (it needs root).
pub fn run() -> Result<MemoryResults, HarnessError> {
    let mut rows = Vec::new();
    for (label, args) in ROWS {
        eprintln!("  memory: {label}");
        let mut child_args = vec!["memory".to_owned()];
        child_args.extend(args.iter().map(|a| a.to_string()));
        match child::run(&child_args) {
            Err(error) if !args.contains(&NO_DEBUG_INFO) => return Err(error),
            result => rows.push((label, result)),
        }
    }
    Ok(MemoryResults { rows })
}

/// Smolder's figures for the summary, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct MemorySummary {
    /// VmRSS while running, before any capture, minus the baseline.
    pub running_delta_bytes: f64,
    /// VmRSS after a capture, the profile dropped and free heap returned,
    /// minus the baseline: what the agent holds.
    pub retained_delta_bytes: f64,
    /// The same with `/usr/lib/debug` hidden, when that could be done.
    pub retained_no_debug_info_bytes: Option<f64>,
    /// VmRSS once the agent has been idle longer than it keeps its
    /// symboliser, minus the baseline.
    pub idle_delta_bytes: f64,
    /// The agent's own account.
    pub memory_bytes: f64,
}

fn mib(kib: f64) -> String {
    format!("{:.2}", kib / 1024.0)
}

impl MemoryResults {
    /// Prints the table; returns Smolder's figures.
    pub fn print(&self) -> Result<MemorySummary, HarnessError> {
        let smolder = match &self.rows[0].1 {
            Ok(fields) => fields,
            Err(error) => return fail(error.to_string()),
        };
        println!(
            "\n## Memory: resident set (MiB) of a process with {WORKERS} busy threads, before and \
             after starting the profiler at defaults (Smolder: {} Hz, {}, {} unwinding; pprof: \
             99 Hz)",
            smolder.text("frequency_hz")?,
            smolder.text("engine")?,
            smolder.text("unwinder")?,
        );
        println!(
            "| profiler | VmRSS before | running {} s (delta) | after a {} s capture (delta) \
             | retained: profile dropped, heap trimmed (delta; anon / file) | after a 2nd capture \
             (delta) | {} s later, idle (delta) | own account | stacks / samples in capture |",
            RUN.as_secs(),
            CAPTURE.as_secs(),
            IDLE.as_secs()
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (label, result) in &self.rows {
            let f = match result {
                Ok(fields) => fields,
                Err(error) => {
                    println!("| {label} | skipped: {error} | | | | | | | |");
                    continue;
                }
            };
            let base = f.num("base_kib")?;
            let at = |stage: &str| -> Result<String, HarnessError> {
                let kib = f.num(&format!("{stage}_kib"))?;
                Ok(format!("{} (+{})", mib(kib), mib(kib - base)))
            };
            let anon = f.num("retained_anon_kib")? - f.num("base_anon_kib")?;
            let file = f.num("retained_file_kib")? - f.num("base_file_kib")?;
            let own = f
                .num("memory_bytes")
                .map_or_else(|_| "-".to_owned(), |bytes| mib(bytes / 1024.0));
            println!(
                "| {label} | {} | {} | {} | {}; {} / {} | {} | {} | {own} | {} / {} |",
                mib(base),
                at("running")?,
                at("captured")?,
                at("retained")?,
                mib(anon),
                mib(file),
                at("second")?,
                at("idle")?,
                f.text("stacks")?,
                f.text("samples")?,
            );
        }
        let delta = |f: &Fields, stage: &str| -> Result<f64, HarnessError> {
            Ok((f.num(&format!("{stage}_kib"))? - f.num("base_kib")?) * 1024.0)
        };
        let summary = MemorySummary {
            running_delta_bytes: delta(smolder, "running")?,
            retained_delta_bytes: delta(smolder, "retained")?,
            retained_no_debug_info_bytes: match &self.rows[1].1 {
                Ok(f) => Some(delta(f, "retained")?),
                Err(_) => None,
            },
            idle_delta_bytes: delta(smolder, "idle")?,
            memory_bytes: smolder.num("memory_bytes")?,
        };
        println!(
            "\n`own account` is Smolder's `Stats::memory_bytes` (buffer, unwind scratch and \
             tables, stack table). This machine has {} entries under /usr/lib/debug/.build-id \
             (Debian `*-dbg` packages: detached DWARF a symboliser may load); the \
             second row hides them from that child alone (a private mount namespace with a tmpfs \
             over /usr/lib/debug).",
            smolder.text("debug_dir_entries")?
        );
        Ok(summary)
    }
}
