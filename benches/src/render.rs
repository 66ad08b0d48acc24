//! HTTP endpoint: how long the flame-graph route takes to answer for a
//! large window of history, and how much memory that history holds.
//!
//! A child starts the agent at [`HZ`] with its HTTP endpoint on
//! `127.0.0.1:0`, and [`WORKERS`] threads that each walk a binary tree of
//! `#[inline(never)]` functions ([`walk`]): level `k` of the tree is
//! `node_k_0` or `node_k_1` as bit `k` of a pseudo-random path number below
//! [`PATHS`] says, so the CPU goes to [`PATHS`] distinct call paths, each
//! ending in the same leaf. It runs until the agent has taken
//! [`TARGET_SAMPLES`] (weighted) samples, then stops the load and asks the
//! endpoint, over real TCP, for `flamegraph?window=<all of it>`: once with a
//! cold symbol cache (the first request symbolises every address), then
//! [`REPEATS`] times more, and `folded` as many times (the same work without
//! drawing the SVG). The folded answer is parsed to check the window really
//! holds about 5 000 distinct stacks and 100 000 samples.
//!
//! **History memory.** Closed 10 s buckets hold one 12-byte entry per
//! distinct (stack, thread) seen in the bucket. Under this load that number
//! does not grow in proportion to the bucket's length (a longer bucket sees
//! the same paths again), so shortening the resolution and multiplying
//! would be wrong. Instead the child restarts the load and records a
//! capture during which each load thread burns exactly one bucket's length
//! of CPU (10 CPU-seconds), as an unstarved thread does in one bucket:
//! samples follow CPU time, so that is what a bucket of this load holds,
//! however busy the shared machine is. A capture aggregates samples by
//! (stack, thread) exactly as a history bucket does, so its
//! `samples().count()` is the entry count of one bucket. Fifteen minutes is
//! 90 such buckets; the section compares that with the default 4 MiB
//! budget and says how far back the history reaches. With `--full-history`
//! a third child runs the load for 15 minutes and reads
//! `Stats::history_span` and `Stats::memory_bytes` directly.
//!
//! A second child repeats the window and the requests with `/usr/lib/debug`
//! hidden from it (a private mount namespace; needs root), because this
//! machine has Debian's `libc6-dbg` and the first request's symbolisation
//! depends on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::child::{self, Fields, HarnessError, fail, median};
use crate::http;

/// Sampling rate of the child's agent.
pub const HZ: u32 = 999;
/// Busy threads walking the tree.
const WORKERS: usize = 2;
/// Distinct call paths the load spreads its CPU over.
pub const PATHS: u32 = 5000;
/// Weighted samples the window must hold.
pub const TARGET_SAMPLES: u64 = 100_000;
/// The load runs until the agent has taken this many, a little more than
/// the target so the window's edges cannot bring it below.
const LOAD_SAMPLES: u64 = TARGET_SAMPLES * 103 / 100;
/// Give up (a harness error) if the load has not got there by then.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Load time of the `--full-history` child: 15 minutes and a few buckets.
const FULL_HISTORY_LOAD: Duration = Duration::from_secs(15 * 60 + 40);
/// Timed requests per route after the first.
pub const REPEATS: usize = 7;
/// The history's settings, written out so that a `SMOLDER_HISTORY*`
/// variable on the machine cannot change what is measured: the defaults.
pub const HISTORY_SPAN: Duration = Duration::from_secs(15 * 60);
pub const HISTORY_RESOLUTION: Duration = Duration::from_secs(10);
pub const HISTORY_BYTES: usize = 4 << 20;
/// Bytes of one history entry: (stack id, thread key, CPU µs).
pub const ENTRY_BYTES: u64 = 12;
/// Iterations of the leaf's loop: long enough (about 10 µs) that samples
/// taken on the way down the 13 levels are rare, so the window's distinct
/// stacks are the paths themselves.
const LEAF_ROUNDS: u64 = 8_000;
/// Per-thread CPU a history bucket holds when the threads are not starved:
/// one bucket's length.
const BUCKET_CPU: Duration = HISTORY_RESOLUTION;
/// The longest capture taken to collect [`BUCKET_CPU`] per thread.
const MAX_BUCKET_CAPTURE: Duration = Duration::from_secs(90);
/// Time for the collector to arm new threads' timers, and to drain.
const SETTLE: Duration = Duration::from_millis(300);
/// Patience for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The sampling rate an agent runs at by default.
const DEFAULT_HZ: u64 = 99;

/// An upper bound, by arithmetic rather than measurement, on the bytes 15
/// minutes of this load's history hold at the default rate: a bucket cannot
/// hold more (stack, thread) entries than the signals its threads took,
/// [`WORKERS`] × [`DEFAULT_HZ`] × the resolution.
pub fn history_bound_at_default_hz() -> f64 {
    let signals_per_bucket = WORKERS as u64 * DEFAULT_HZ * HISTORY_RESOLUTION.as_secs();
    let buckets = HISTORY_SPAN.as_secs() / HISTORY_RESOLUTION.as_secs();
    (signals_per_bucket * ENTRY_BYTES * buckets) as f64
}

// === child side: the load ===

/// The leaf every path ends in: a short arithmetic loop.
#[inline(never)]
fn leaf(x: u64) -> u64 {
    (0..LEAF_ROUNDS).fold(x, |a, i| std::hint::black_box(a.rotate_left(5) ^ i))
}

/// Level 0 of the tree: calls the leaf. The two functions differ in their
/// last instruction so that no linker can fold them into one.
#[inline(never)]
fn node_0_0(_path: u32, x: u64) -> u64 {
    std::hint::black_box(leaf(x)) ^ 2
}

#[inline(never)]
fn node_0_1(_path: u32, x: u64) -> u64 {
    std::hint::black_box(leaf(x)) ^ 3
}

/// Level `$bit` of the tree: two functions, each choosing the next level
/// down by bit `$bit - 1` of the path. The result goes through
/// `black_box` before being combined, so the call is never a tail call and
/// every level keeps its frame.
macro_rules! level {
    ($bit:literal: $zero:ident, $one:ident => $below_zero:ident, $below_one:ident) => {
        #[inline(never)]
        fn $zero(path: u32, x: u64) -> u64 {
            let below = if (path >> ($bit - 1)) & 1 == 0 {
                $below_zero(path, x)
            } else {
                $below_one(path, x)
            };
            std::hint::black_box(below).rotate_left($bit)
        }

        #[inline(never)]
        fn $one(path: u32, x: u64) -> u64 {
            let below = if (path >> ($bit - 1)) & 1 == 0 {
                $below_zero(path, x)
            } else {
                $below_one(path, x)
            };
            std::hint::black_box(below).rotate_left($bit) ^ 1
        }
    };
}

level!(1: node_1_0, node_1_1 => node_0_0, node_0_1);
level!(2: node_2_0, node_2_1 => node_1_0, node_1_1);
level!(3: node_3_0, node_3_1 => node_2_0, node_2_1);
level!(4: node_4_0, node_4_1 => node_3_0, node_3_1);
level!(5: node_5_0, node_5_1 => node_4_0, node_4_1);
level!(6: node_6_0, node_6_1 => node_5_0, node_5_1);
level!(7: node_7_0, node_7_1 => node_6_0, node_6_1);
level!(8: node_8_0, node_8_1 => node_7_0, node_7_1);
level!(9: node_9_0, node_9_1 => node_8_0, node_8_1);
level!(10: node_10_0, node_10_1 => node_9_0, node_9_1);
level!(11: node_11_0, node_11_1 => node_10_0, node_10_1);
level!(12: node_12_0, node_12_1 => node_11_0, node_11_1);

/// Runs path number `path` (below 2^13): 13 levels, then the leaf.
#[inline(never)]
fn walk(path: u32, x: u64) -> u64 {
    let below = if (path >> 12) & 1 == 0 {
        node_12_0(path, x)
    } else {
        node_12_1(path, x)
    };
    std::hint::black_box(below)
}

/// Walks pseudo-random paths below [`PATHS`] until `stop` is set or, with
/// a budget, until this thread has burnt that much CPU. Returns the CPU it
/// burnt.
fn work(stop: &AtomicBool, seed: u64, cpu_budget: Option<Duration>) -> Duration {
    // xorshift64*: uniform enough over 5 000 paths, and not periodic at any
    // rate a timer could alias with.
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut x = seed;
    let cpu_at_start = crate::sys::thread_cpu_time();
    // Relaxed: a stop flag; nothing else is published through it.
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let path = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32 % PATHS;
            x = walk(path, x);
        }
        if cpu_budget.is_some_and(|b| crate::sys::thread_cpu_time() - cpu_at_start >= b) {
            break;
        }
    }
    std::hint::black_box(x);
    crate::sys::thread_cpu_time() - cpu_at_start
}

/// The running load; [`Load::stop`] ends it.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<Duration>>,
}

impl Load {
    /// [`WORKERS`] threads walking until stopped.
    fn start() -> Result<Load, HarnessError> {
        Self::spawn(None, Instant::now())
    }

    /// [`WORKERS`] threads that wait until `at`, then walk until each has
    /// burnt `cpu` of CPU.
    fn start_budgeted(cpu: Duration, at: Instant) -> Result<Load, HarnessError> {
        Self::spawn(Some(cpu), at)
    }

    fn spawn(cpu_budget: Option<Duration>, at: Instant) -> Result<Load, HarnessError> {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name(format!("walk-{i}"))
                    .spawn(move || {
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        work(&stop, i as u64 + 1, cpu_budget)
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Load { stop, workers })
    }

    /// Whether every thread has finished (its budget spent).
    fn finished(&self) -> bool {
        self.workers.iter().all(|w| w.is_finished())
    }

    /// Stops the threads; returns the CPU they burnt, together.
    fn stop(self) -> Result<Duration, HarnessError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut cpu = Duration::ZERO;
        for worker in self.workers {
            cpu += worker
                .join()
                .map_err(|_| HarnessError("a load thread panicked".into()))?;
        }
        Ok(cpu)
    }
}

// === child side: the measurement ===

/// What a folded answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldedSummary {
    /// Distinct stacks (lines).
    pub stacks: u64,
    /// Sum of the counts: samples.
    pub samples: u64,
}

/// Counts the lines and sums the counts of folded text.
pub fn summarize_folded(folded: &str) -> Option<FoldedSummary> {
    let mut summary = FoldedSummary {
        stacks: 0,
        samples: 0,
    };
    for line in folded.lines().filter(|l| !l.trim().is_empty()) {
        let (_, count) = line.rsplit_once(' ')?;
        summary.samples += count.trim().parse::<u64>().ok()?;
        summary.stacks += 1;
    }
    Some(summary)
}

/// The sample count in the flame graph's title
/// (`<service>: CPU, last 1m40s, 102345 samples`).
pub fn svg_title_samples(svg: &str) -> Option<u64> {
    let end = svg.find(" samples</text>")?;
    let start = svg[..end].rfind(|c: char| !c.is_ascii_digit())? + 1;
    svg[start..end].parse().ok()
}

/// Frames drawn in the flame graph (one `<g>` element each).
pub fn svg_frames(svg: &str) -> usize {
    svg.matches("<g><title>").count()
}

/// Times `route?query` `REPEATS + 1` times; checks every answer is 200 and
/// returns them all, the first first.
fn time_route(
    addr: SocketAddr,
    route: &str,
    query: &str,
) -> Result<Vec<http::Response>, HarnessError> {
    let target = format!("/debug/pprof/{route}?{query}");
    (0..=REPEATS)
        .map(|_| {
            let response = http::get(addr, &target, REQUEST_TIMEOUT)?;
            if response.status != 200 {
                return fail(format!(
                    "{target} answered {}: {}",
                    response.status,
                    response.text().trim()
                ));
            }
            Ok(response)
        })
        .collect()
}

fn millis(durations: impl Iterator<Item = Duration>) -> String {
    durations
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(",")
}

/// The flag that runs a child with detached debug info hidden.
pub const NO_DEBUG_INFO: &str = "--no-debug-info";

/// Entry point of `child render [full] [--no-debug-info]`.
pub fn child(args: &[String]) -> Result<Fields, HarnessError> {
    let usage = "usage: child render [full] [--no-debug-info]";
    let mut full = false;
    let mut hide_debug_info = false;
    for arg in args {
        match arg.as_str() {
            "full" => full = true,
            NO_DEBUG_INFO => hide_debug_info = true,
            _ => return fail(usage),
        }
    }
    if hide_debug_info {
        // Before any thread exists: the mount namespace is per process.
        crate::sys::hide_detached_debug_info().map_err(|error| {
            HarnessError(format!("cannot hide /usr/lib/debug (needs root): {error}"))
        })?;
    }
    let agent = smolder::Agent::builder()
        .frequency_hz(HZ)
        .history(HISTORY_SPAN)
        .history_resolution(HISTORY_RESOLUTION)
        .history_bytes(HISTORY_BYTES)
        .http_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()?;
    let addr = agent
        .http_addr()
        .ok_or_else(|| HarnessError("the agent's HTTP endpoint is off".into()))?;
    let mut fields = Fields::new();

    // The load, until the window holds enough samples (and, for the full
    // history, for 15 minutes).
    let load = Load::start()?;
    std::thread::sleep(SETTLE);
    let before = agent.stats();
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let weight = agent.stats().sample_weight - before.sample_weight;
        let elapsed = started.elapsed();
        if weight >= LOAD_SAMPLES && (!full || elapsed >= FULL_HISTORY_LOAD) {
            break;
        }
        if !full && elapsed > LOAD_TIMEOUT {
            load.stop()?;
            return fail(format!(
                "the load took only {weight} samples in {LOAD_TIMEOUT:?} (is the machine that busy?)"
            ));
        }
    }
    let load_cpu = load.stop()?.as_secs_f64();
    let loaded_for = started.elapsed();
    std::thread::sleep(SETTLE);
    let after = agent.stats();
    fields
        .put("load_s", format!("{:.1}", loaded_for.as_secs_f64()))
        .put("load_cpu_s", format!("{load_cpu:.1}"))
        .put("signals", after.samples - before.samples)
        .put("weight", after.sample_weight - before.sample_weight)
        .put("dropped", after.dropped.total())
        .put("memory_bytes", after.memory_bytes)
        .put(
            "history_span_s",
            format!("{:.0}", after.history_span.as_secs_f64()),
        );

    // The window: all of the load (whole seconds, plus a bucket either
    // side); for the full history, the default 15 minutes.
    let window = if full {
        "15m".to_owned()
    } else {
        format!(
            "{}s",
            loaded_for.as_secs() + 2 * HISTORY_RESOLUTION.as_secs()
        )
    };
    let query = format!("window={window}");
    let svg = time_route(addr, "flamegraph", &query)?;
    let folded = time_route(addr, "folded", &query)?;
    let text = svg[0].text();
    let summary = summarize_folded(&folded[0].text())
        .ok_or_else(|| HarnessError("the folded answer does not parse".into()))?;
    fields
        .put("window", &window)
        .put("svg_cold_ms", millis(svg[..1].iter().map(|r| r.elapsed)))
        .put("svg_warm_ms", millis(svg[1..].iter().map(|r| r.elapsed)))
        .put("folded_ms", millis(folded.iter().map(|r| r.elapsed)))
        .put("svg_bytes", svg[0].body.len())
        .put("svg_frames", svg_frames(&text))
        .put(
            "svg_samples",
            svg_title_samples(&text)
                .ok_or_else(|| HarnessError("no sample count in the SVG title".into()))?,
        )
        .put("folded_stacks", summary.stacks)
        .put("folded_samples", summary.samples)
        .put("full", full)
        .put("debug_info_hidden", hide_debug_info);
    if hide_debug_info {
        return Ok(fields);
    }

    // One bucket's worth of (stack, thread) entries: a capture during which
    // each load thread burns exactly one bucket's length of CPU, as an
    // unstarved thread does in one bucket. (Samples follow CPU time, so
    // what a bucket holds depends on the CPU its threads burnt, not on wall
    // time; on a busy machine the threads take longer, and the capture is
    // made long enough for them, from the CPU share they had above.)
    let share = (load_cpu / (WORKERS as f64 * loaded_for.as_secs_f64())).clamp(0.05, 1.0);
    let length = (BUCKET_CPU.div_f64(share).mul_f64(1.5) + Duration::from_secs(2)).clamp(
        HISTORY_RESOLUTION + Duration::from_secs(2),
        MAX_BUCKET_CAPTURE,
    );
    let load = Load::start_budgeted(BUCKET_CPU, Instant::now() + SETTLE)?;
    let capture = agent.record(length);
    let finished = load.finished();
    let capture_cpu = load.stop()?.as_secs_f64();
    let capture = capture?;
    if !finished {
        return fail(format!(
            "the load threads had not burnt {BUCKET_CPU:?} each within a {length:?} capture \
             (the machine is too busy)"
        ));
    }
    let capture_summary = summarize_folded(&capture.folded())
        .ok_or_else(|| HarnessError("the capture's folded text does not parse".into()))?;
    fields
        .put("bucket_capture_s", length.as_secs())
        .put(
            "bucket_cpu_s_per_thread",
            format!("{:.1}", capture_cpu / WORKERS as f64),
        )
        .put("bucket_entries", capture.samples().count())
        .put("bucket_stacks", capture_summary.stacks)
        .put("bucket_samples", capture.sample_count());
    Ok(fields)
}

// === parent side ===

/// Each child's numbers.
#[derive(Debug)]
pub struct RenderResults {
    main: Fields,
    /// The same with `/usr/lib/debug` hidden, or why it was skipped.
    no_debug_info: Result<Fields, HarnessError>,
    full: Option<Fields>,
}

/// Runs the child, the same with detached debug info hidden, and the
/// 15-minute one if asked.
pub fn run(full_history: bool) -> Result<RenderResults, HarnessError> {
    eprintln!("  render: load until {TARGET_SAMPLES} samples, then the requests");
    let main = child::run(&["render".into()])?;
    eprintln!("  render: the same with /usr/lib/debug hidden");
    let no_debug_info = child::run(&["render".into(), NO_DEBUG_INFO.into()]);
    let full = if full_history {
        eprintln!("  render: 15 minutes of history (about 17 minutes)");
        Some(child::run(&["render".into(), "full".into()])?)
    } else {
        None
    };
    Ok(RenderResults {
        main,
        no_debug_info,
        full,
    })
}

/// The figures the summary sets against the targets.
#[derive(Debug, Clone, Copy)]
pub struct RenderSummary {
    pub cold_ms: f64,
    pub warm_median_ms: f64,
    pub warm_max_ms: f64,
    /// The first request with `/usr/lib/debug` hidden, if measured.
    pub cold_no_debug_info_ms: Option<f64>,
    pub samples: f64,
    pub stacks: f64,
    /// Bytes 15 minutes of 10 s buckets would take under this load.
    pub history_bytes_15m: f64,
    /// How far back the default budget reaches under this load.
    pub reach: Duration,
}

fn list(fields: &Fields, key: &str) -> Result<Vec<f64>, HarnessError> {
    fields
        .text(key)?
        .split(',')
        .map(|v| {
            v.parse()
                .map_err(|_| HarnessError(format!("`{key}` holds `{v}`, not a number")))
        })
        .collect()
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// Bytes one closed bucket of `entries` entries takes (the entries, plus
/// the bucket's own bookkeeping, about 40 bytes).
pub fn bucket_bytes(entries: f64) -> f64 {
    entries * ENTRY_BYTES as f64 + 40.0
}

/// Buckets in the default 15 minutes.
fn buckets_15m() -> f64 {
    (HISTORY_SPAN.as_secs() / HISTORY_RESOLUTION.as_secs()) as f64
}

impl RenderResults {
    fn print_window(label: &str, f: &Fields) -> Result<(), HarnessError> {
        println!(
            "| {label} | {} s ({} CPU-s) | {} ({}) | `window={}` | {} | {} / {} | {:.2} MB | {} \
             | {} |",
            f.text("load_s")?,
            f.text("load_cpu_s")?,
            f.text("weight")?,
            f.text("signals")?,
            f.text("window")?,
            f.text("svg_samples")?,
            f.text("folded_samples")?,
            f.text("folded_stacks")?,
            f.num("svg_bytes")? / 1e6,
            f.text("svg_frames")?,
            f.text("dropped")?,
        );
        Ok(())
    }

    fn print_timings(label: &str, f: &Fields) -> Result<(), HarnessError> {
        let cold = list(f, "svg_cold_ms")?[0];
        let warm = list(f, "svg_warm_ms")?;
        let folded = list(f, "folded_ms")?;
        println!(
            "| {label} | `flamegraph?window={}` | {cold:.0} ms | {:.0} ms | {:.0} ms |",
            f.text("window")?,
            median(&warm),
            max(&warm)
        );
        println!(
            "| {label} | `folded?window={}`, after the flame graphs | {:.0} ms | {:.0} ms | \
             {:.0} ms |",
            f.text("window")?,
            folded[0],
            median(&folded[1..]),
            max(&folded[1..])
        );
        Ok(())
    }

    /// Prints the history row; returns (bytes for 15 minutes, reach).
    fn print_history(label: &str, f: &Fields) -> Result<(f64, Duration), HarnessError> {
        let entries = f.num("bucket_entries")?;
        let per_bucket = bucket_bytes(entries);
        let bytes_15m = per_bucket * buckets_15m();
        let fitting = (HISTORY_BYTES as f64 / per_bucket)
            .floor()
            .min(buckets_15m());
        let reach = HISTORY_RESOLUTION * fitting as u32;
        println!(
            "| {label} | {} s, {} CPU-s per thread, {} samples | {entries:.0} | {} | {:.1} KiB | \
             {:.2} MiB | {} | {:.2} MiB | {} s |",
            f.text("bucket_capture_s")?,
            f.text("bucket_cpu_s_per_thread")?,
            f.text("bucket_samples")?,
            f.text("bucket_stacks")?,
            per_bucket / 1024.0,
            bytes_15m / 1048576.0,
            if fitting >= buckets_15m() {
                "all 15 min".to_owned()
            } else {
                format!("{:.1} min", reach.as_secs_f64() / 60.0)
            },
            f.num("memory_bytes")? / 1048576.0,
            f.text("history_span_s")?,
        );
        Ok((bytes_15m, reach))
    }

    /// Prints the tables; returns the main run's figures.
    pub fn print(&self) -> Result<RenderSummary, HarnessError> {
        let f = &self.main;
        let hidden = self.no_debug_info.as_ref().ok();
        println!(
            "\n## HTTP endpoint: flame graph of a {TARGET_SAMPLES}-sample window over {PATHS} \
             call paths ({WORKERS} threads, {HZ} Hz)"
        );
        println!(
            "| run | load (wall, CPU) | samples taken (signals) | window | samples in the SVG \
             title | folded: samples / distinct stacks | SVG size | frames drawn | samples \
             dropped |"
        );
        println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
        Self::print_window("this machine", f)?;
        if let Some(h) = hidden {
            Self::print_window("/usr/lib/debug hidden", h)?;
        }
        if let Some(full) = &self.full {
            Self::print_window("15 minutes (--full-history)", full)?;
        }

        println!(
            "\n| run | route, over TCP | first request (cold symbol cache) | next {REPEATS}: \
             median | max |"
        );
        println!("|---|---|---:|---:|---:|");
        Self::print_timings("this machine", f)?;
        match &self.no_debug_info {
            Ok(h) => Self::print_timings("/usr/lib/debug hidden", h)?,
            Err(error) => println!("| /usr/lib/debug hidden | skipped: {error} | | | |"),
        }
        if let Some(full) = &self.full {
            Self::print_timings("15 minutes (--full-history)", full)?;
        }

        println!(
            "\n| history under this load | capture of one bucket's CPU: wall, CPU, samples | \
             entries (distinct stack, thread) | distinct stacks | bytes per bucket | 15 min = \
             {:.0} buckets | reach within the default {} MiB | agent's own account after the \
             load | history reaches then |",
            buckets_15m(),
            HISTORY_BYTES >> 20
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let (history_bytes_15m, reach) = Self::print_history("this machine", f)?;
        if let Some(full) = &self.full {
            Self::print_history("15 minutes (--full-history)", full)?;
        }

        let samples = f.num("folded_samples")?;
        if samples < TARGET_SAMPLES as f64 {
            return fail(format!(
                "the window held {samples} samples, fewer than the {TARGET_SAMPLES} asked for"
            ));
        }
        // About 20 samples a path: every path should appear, give or take
        // the few that sampling misses and the stacks caught on the way down.
        let stacks = f.num("folded_stacks")?;
        if stacks < f64::from(PATHS) * 0.95 {
            return fail(format!(
                "the window held {stacks} distinct stacks, not the {PATHS} the load walks"
            ));
        }
        println!(
            "\nThe first request symbolises every address in the window (the symbol cache is \
             cold); later ones find them cached. `folded` does the same work except drawing the \
             SVG. This machine has Debian's `libc6-dbg`; the second run hides /usr/lib/debug \
             from its process (as on a host without `-dbg` packages). History: a capture \
             aggregates by (stack, thread) exactly as a history bucket does ({ENTRY_BYTES} bytes \
             an entry); during it each load thread burns one bucket's length of CPU, what an \
             unstarved thread burns in one bucket."
        );
        let warm = list(f, "svg_warm_ms")?;
        Ok(RenderSummary {
            cold_ms: list(f, "svg_cold_ms")?[0],
            warm_median_ms: median(&warm),
            warm_max_ms: max(&warm),
            cold_no_debug_info_ms: match hidden {
                Some(h) => Some(list(h, "svg_cold_ms")?[0]),
                None => None,
            },
            samples,
            stacks: f.num("folded_stacks")?,
            history_bytes_15m,
            reach,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_text_is_summarised() {
        let folded = "main;a;b 10\nmain;a;c 5\n\nmain;x y;z 1\n";
        assert_eq!(
            summarize_folded(folded),
            Some(FoldedSummary {
                stacks: 3,
                samples: 16
            })
        );
        assert_eq!(summarize_folded("main;a;b ten\n"), None);
    }

    #[test]
    fn svg_title_and_frames() {
        let svg = "<svg><text id=\"title\">svc: CPU, last 1m40s, 102345 samples</text>\
                   <g><title>a (1 samples)</title></g><g><title>b</title></g></svg>";
        assert_eq!(svg_title_samples(svg), Some(102_345));
        assert_eq!(svg_frames(svg), 2);
        assert_eq!(svg_title_samples("<svg></svg>"), None);
    }

    #[test]
    fn every_path_has_its_own_call_chain() {
        // Paths 0 and PATHS - 1 run without panicking and give different
        // results, so the tree's two halves are really different code.
        assert_ne!(walk(0, 1), walk(PATHS - 1, 1));
    }
}
