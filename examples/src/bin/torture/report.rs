//! The final report, and the checks that can only be made at the end.
//!
//! End-of-run checks, on top of the failures recorded during the run:
//!
//! * every check was actually exercised: some stacks were truncated, some
//!   raw `poll`/`nanosleep` saw `EINTR`, some thread exited with `SIGPROF`
//!   pending, the agent was restarted and audited, samples were taken, every
//!   HTTP route answered at least once (a capture with or without `hz=`);
//! * **RSS is flat after warm-up**: the highest reading over the last quarter
//!   of the run may exceed the highest over the second quarter by at
//!   most [`RSS_GROWTH_PERCENT`] percent or [`RSS_GROWTH_MIB`] MiB,
//!   whichever is larger (allocator and thread-stack caches fluctuate; a
//!   leak per sample, per thread, per `dlopen` or per agent restart grows
//!   without bound and crosses that line);
//! * the bytes allocated with malloc (glibc's `mallinfo2`: in use, not kept
//!   free) are flat: their lowest reading over the last quarter may exceed
//!   the lowest over the second quarter by no more than the same margin.
//!   This tells a leak from allocator retention when RSS grows;
//! * the number of open file descriptors is flat: the lowest count over the
//!   last quarter may exceed the lowest over the second quarter by at most
//!   [`FD_GROWTH`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::harness::Harness;
use crate::lifecycle::Generation;
use crate::scrape::ROUTES;
use crate::watchdog::{ResourceSample, Resources};

/// Allowed RSS growth after warm-up, relative.
const RSS_GROWTH_PERCENT: u64 = 15;
/// Allowed RSS growth after warm-up, absolute.
const RSS_GROWTH_MIB: u64 = 32;
/// Allowed growth of the open file descriptors' floor after warm-up.
const FD_GROWTH: usize = 8;
/// Runs shorter than this skip the flatness and "was exercised" checks.
const MIN_CHECKED_RUN: Duration = Duration::from_secs(20);

/// The first agent never started: nothing else ran.
pub fn early_exit(harness: &Harness) -> ExitCode {
    let (failures, _) = harness.failures();
    println!(
        "torture: the first agent did not start: {}",
        failures.join("; ")
    );
    ExitCode::from(1)
}

/// Prints the report and returns the workload's exit status.
pub fn print(harness: &Harness, generations: &[Generation], resources: &Resources) -> ExitCode {
    let mut out = String::new();
    let checked = harness.options.duration >= MIN_CHECKED_RUN;
    let _ = writeln!(out, "\n== smolder torture report ==");
    summary(&mut out, harness, generations);
    samples(&mut out, generations);
    audits(&mut out, generations);
    activities(&mut out, harness);
    let resource_problems = resources_section(&mut out, &resources.samples, checked);
    print!("{out}");

    for problem in resource_problems {
        harness.fail(problem);
    }
    if checked {
        exercised(harness, generations);
    }
    let (failures, total) = harness.failures();
    if total == 0 {
        println!("checks: all passed");
        return ExitCode::SUCCESS;
    }
    println!("checks: {total} failed:");
    for failure in &failures {
        println!("  - {failure}");
    }
    if total > failures.len() {
        println!(
            "  ... and {} more (all printed above as they happened)",
            total - failures.len()
        );
    }
    ExitCode::from(1)
}

fn summary(out: &mut String, harness: &Harness, generations: &[Generation]) {
    let engine = generations
        .first()
        .and_then(|g| g.stats.engine)
        .map_or("none", smolder::Engine::as_str);
    let starts: Vec<u64> = generations
        .iter()
        .map(|g| g.start_time.as_millis() as u64)
        .collect();
    let stops: Vec<u64> = generations
        .iter()
        .map(|g| g.stop_time.as_millis() as u64)
        .collect();
    let lives: Vec<u64> = generations
        .iter()
        .map(|g| g.lived.as_millis() as u64)
        .collect();
    let _ = writeln!(
        out,
        "run: {:.1} s at {} Hz, engine {engine}; {} agents ({} restarts), each lived {:.1}-{:.1} s; \
         start ms p50 {} max {}; stop ms p50 {} max {}",
        harness.now_s(),
        harness.options.frequency_hz,
        generations.len(),
        generations.len().saturating_sub(1),
        *lives.iter().min().unwrap_or(&0) as f64 / 1000.0,
        *lives.iter().max().unwrap_or(&0) as f64 / 1000.0,
        median(&starts).unwrap_or(0),
        starts.iter().max().unwrap_or(&0),
        median(&stops).unwrap_or(0),
        stops.iter().max().unwrap_or(&0),
    );
}

fn samples(out: &mut String, generations: &[Generation]) {
    let sum = |f: fn(&smolder::Stats) -> u64| generations.iter().map(|g| f(&g.stats)).sum::<u64>();
    let signals = sum(|s| s.signals);
    let dropped = sum(|s| s.dropped.total());
    let _ = writeln!(
        out,
        "samples: taken {} (weight {}), collected {} (as of each agent's last reading), signals {}",
        sum(|s| s.samples),
        sum(|s| s.sample_weight),
        sum(|s| s.samples_collected),
        signals
    );
    let _ = writeln!(
        out,
        "dropped: {dropped} ({:.3}% of signals): buffer_full {}, buffer_contended {}, no_unwind_scratch {}, \
         tables_busy {}, thread_unregistered {}, stack_table_full {}, aggregate_full {}",
        100.0 * dropped as f64 / signals.max(1) as f64,
        sum(|s| s.dropped.buffer_full),
        sum(|s| s.dropped.buffer_contended),
        sum(|s| s.dropped.no_unwind_scratch),
        sum(|s| s.dropped.tables_busy),
        sum(|s| s.dropped.thread_unregistered),
        sum(|s| s.dropped.stack_table_full),
        sum(|s| s.dropped.aggregate_full),
    );
    let _ = writeln!(
        out,
        "stacks: truncated {}, incomplete {}; foreign signals {}",
        sum(|s| s.stacks_truncated),
        sum(|s| s.stacks_incomplete),
        sum(|s| s.foreign_signals),
    );
    let p50: Vec<u64> = generations
        .iter()
        .filter_map(|g| g.stats.handler_cost_p50_ns)
        .collect();
    let p99: Vec<u64> = generations
        .iter()
        .filter_map(|g| g.stats.handler_cost_p99_ns)
        .collect();
    let _ = writeln!(
        out,
        "handler cost per agent (ns): p50 median {} [{}-{}], p99 median {} [{}-{}]",
        median(&p50).unwrap_or(0),
        p50.iter().min().unwrap_or(&0),
        p50.iter().max().unwrap_or(&0),
        median(&p99).unwrap_or(0),
        p99.iter().min().unwrap_or(&0),
        p99.iter().max().unwrap_or(&0),
    );
    let overhead: Vec<u64> = generations
        .iter()
        .map(|g| (g.stats.overhead_percent * 100.0) as u64)
        .collect();
    let memory: Vec<u64> = generations.iter().map(|g| g.stats.memory_bytes).collect();
    let _ = writeln!(
        out,
        "agent overhead (% of process CPU) median {:.2}; agent memory median {:.1} MiB, max {:.1} MiB",
        median(&overhead).unwrap_or(0) as f64 / 100.0,
        median(&memory).unwrap_or(0) as f64 / (1 << 20) as f64,
        *memory.iter().max().unwrap_or(&0) as f64 / (1 << 20) as f64,
    );
}

fn audits(out: &mut String, generations: &[Generation]) {
    let audits: Vec<_> = generations
        .iter()
        .filter_map(|g| g.audit.as_ref())
        .collect();
    let exact = audits.iter().filter(|a| a.exact).count();
    let quiet = audits.iter().filter(|a| a.final_quiet).count();
    let longest = audits.iter().map(|a| a.waited).max().unwrap_or_default();
    let _ = writeln!(
        out,
        "accounting audits: {exact} exact of {} ({} with workers paused, {quiet} after all activity ended); \
         longest catch-up {} ms",
        audits.len(),
        audits.len() - quiet,
        longest.as_millis()
    );
    let probes: Vec<_> = generations
        .iter()
        .filter_map(|g| g.probe.as_ref())
        .collect();
    let attributed = probes
        .iter()
        .filter(|p| p.thread_cpu_ns > 0 && p.in_span_cpu_ns * 10 >= p.thread_cpu_ns * 9)
        .count();
    let _ = writeln!(
        out,
        "span probes: {attributed} of {} attributed to their span",
        probes.len()
    );
}

fn activities(out: &mut String, harness: &Harness) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    let (churn, plugin, alloc) = (&harness.churn, &harness.plugin, &harness.alloc);
    let (panics, processes, eintr, deep) = (
        &harness.panics,
        &harness.processes,
        &harness.eintr,
        &harness.deep,
    );
    let _ = writeln!(out, "activities:");
    let _ = writeln!(
        out,
        "  threads: {} created and joined ({} ran long enough to be sampled); \
         {} exited with SIGPROF pending ({} saw none in time)",
        get(&churn.threads),
        get(&churn.sampled_threads),
        get(&churn.exited_with_signal_pending),
        get(&churn.pending_not_reached),
    );
    let _ = writeln!(
        out,
        "  dlopen: {} load/call/unload cycles, {} calls into the library, unmapping confirmed {} times",
        get(&plugin.cycles),
        get(&plugin.calls),
        get(&plugin.unload_confirmed),
    );
    let _ = writeln!(
        out,
        "  allocator: {} blocks replaced by the dedicated threads, {} freed across threads (plus bursts on every thread)",
        get(&alloc.allocations),
        get(&alloc.cross_thread_frees),
    );
    let _ = writeln!(
        out,
        "  panics: {} caught, {} frames unwound",
        get(&panics.caught),
        get(&panics.frames_unwound),
    );
    let _ = writeln!(
        out,
        "  processes: {} spawned, {} fork+exec, {} fork only; exec'd children found SIGPROF default {}, ignored {}",
        get(&processes.spawned),
        get(&processes.forked_exec),
        get(&processes.forked_only),
        get(&processes.sigprof_default),
        get(&processes.sigprof_ignored),
    );
    let _ = writeln!(
        out,
        "  deep recursion: {} recursions, deepest {} frames",
        get(&deep.recursions),
        get(&deep.deepest),
    );
    let _ = writeln!(
        out,
        "  EINTR: {} stray SIGPROFs sent; raw read on a pipe {} calls, {} EINTR (must be 0); \
         raw poll {} calls, {} EINTR; raw nanosleep {} calls, {} EINTR; raw waitpid EINTR retried {}; \
         std retrying calls {}, failed or early {} (must be 0)",
        get(&eintr.injected),
        get(&eintr.raw_read_calls),
        get(&eintr.raw_read_eintr),
        get(&eintr.raw_poll_calls),
        get(&eintr.raw_poll_eintr),
        get(&eintr.raw_nanosleep_calls),
        get(&eintr.raw_nanosleep_eintr),
        get(&eintr.raw_waitpid_eintr),
        get(&eintr.std_calls),
        get(&eintr.std_failures),
    );
    let mut http = String::new();
    for ((path, _), counters) in ROUTES.iter().zip(&harness.scrape.routes) {
        let _ = write!(
            http,
            "\n    {path}: {} ok (mean {} ms, max {} ms), {} interrupted by a restart, {} failed",
            get(&counters.ok),
            get(&counters.ok_ms_total) / get(&counters.ok).max(1),
            get(&counters.ok_ms_max),
            get(&counters.interrupted),
            get(&counters.failed),
        );
    }
    let _ = writeln!(
        out,
        "  http: {} steps found no agent running{http}",
        get(&harness.scrape.no_agent)
    );
    let progress: Vec<String> = harness
        .activities()
        .iter()
        .map(|a| format!("{} {}", a.name, a.progress()))
        .collect();
    let _ = writeln!(out, "  progress (steps): {}", progress.join(", "));
}

/// Prints the resource readings and returns the flatness problems.
fn resources_section(out: &mut String, samples: &[ResourceSample], checked: bool) -> Vec<String> {
    let mib = |kib: u64| kib / 1024;
    let step = samples.len().div_ceil(60).max(1);
    let _ = write!(out, "RSS over time (s: MiB), every {step} s:");
    for (i, sample) in samples.iter().step_by(step).enumerate() {
        let separator = if i % 10 == 0 { "\n  " } else { "  " };
        let _ = write!(
            out,
            "{separator}{}: {}",
            sample.at.as_secs(),
            mib(sample.rss_kib)
        );
    }
    let _ = write!(
        out,
        "\nmalloc'd / kept free by malloc (s: MiB), every {} s:",
        step * 3
    );
    for (i, sample) in samples.iter().step_by(step * 3).enumerate() {
        let separator = if i % 10 == 0 { "\n  " } else { "  " };
        let _ = write!(
            out,
            "{separator}{}: {}/{}",
            sample.at.as_secs(),
            sample.malloc_used >> 20,
            sample.malloc_free >> 20
        );
    }
    let _ = writeln!(out);
    let mut problems = Vec::new();
    if !checked || samples.len() < 8 {
        let _ = writeln!(out, "RSS check: skipped (run too short)");
        return problems;
    }
    // RSS swings by tens of MiB within a second as the workers allocate and
    // free in bursts, so a single reading says little. Compare peaks: the
    // highest reading of the second quarter (warmed up) with the highest of
    // the last quarter. Noise reaches both; a leak lifts only the later one.
    let n = samples.len();
    let peak = |part: &[ResourceSample]| {
        *part
            .iter()
            .max_by_key(|s| s.rss_kib)
            .expect("at least eight samples")
    };
    let (warm, late) = (peak(&samples[n / 4..n / 2]), peak(&samples[n * 3 / 4..]));
    let allowed = (warm.rss_kib * RSS_GROWTH_PERCENT / 100).max(RSS_GROWTH_MIB * 1024);
    let growing = late.rss_kib > warm.rss_kib + allowed;
    let _ = writeln!(
        out,
        "RSS check: peak {} MiB in the second quarter (t={} s), peak {} MiB in the last quarter \
         (t={} s); growth {:+} MiB, allowed {} MiB: {}",
        mib(warm.rss_kib),
        warm.at.as_secs(),
        mib(late.rss_kib),
        late.at.as_secs(),
        mib(late.rss_kib) as i64 - mib(warm.rss_kib) as i64,
        mib(allowed),
        if growing { "GROWING" } else { "flat" },
    );
    if growing {
        problems.push(format!(
            "RSS grew after warm-up: peak {} MiB at t={} s, {} MiB at t={} s \
             (malloc'd {} -> {} MiB, kept free by malloc {} -> {} MiB)",
            mib(warm.rss_kib),
            warm.at.as_secs(),
            mib(late.rss_kib),
            late.at.as_secs(),
            warm.malloc_used >> 20,
            late.malloc_used >> 20,
            warm.malloc_free >> 20,
            late.malloc_free >> 20,
        ));
    }
    // The allocator's in-use bytes swing with what the workers hold at the
    // instant of reading; a leak raises the floor. Compare the lowest
    // reading of the last quarter with the lowest of the second.
    let floor = |part: &[ResourceSample]| part.iter().map(|s| s.malloc_used).min().unwrap_or(0);
    let (warm_used, late_used_floor) =
        (floor(&samples[n / 4..n / 2]), floor(&samples[n * 3 / 4..]));
    let allowed_used = (warm_used * RSS_GROWTH_PERCENT / 100).max(RSS_GROWTH_MIB << 20);
    let _ = writeln!(
        out,
        "malloc'd check: lowest {} MiB in the second quarter, lowest {} MiB in the last quarter; \
         allowed growth {} MiB: {}",
        warm_used >> 20,
        late_used_floor >> 20,
        allowed_used >> 20,
        if late_used_floor > warm_used + allowed_used {
            "GROWING"
        } else {
            "flat"
        }
    );
    if late_used_floor > warm_used + allowed_used {
        problems.push(format!(
            "malloc'd bytes grew after warm-up (a leak): lowest {} MiB in the second quarter, \
             lowest {} MiB in the last",
            warm_used >> 20,
            late_used_floor >> 20
        ));
    }
    // Descriptors come and go with connections, pipes and children; a leak
    // raises the floor, as for malloc'd bytes.
    let fd_floor = |part: &[ResourceSample]| part.iter().map(|s| s.fds).min().unwrap_or(0);
    let (warm_fds, late_fds) = (
        fd_floor(&samples[n / 4..n / 2]),
        fd_floor(&samples[n * 3 / 4..]),
    );
    let most_threads = |part: &[ResourceSample]| part.iter().map(|s| s.threads).max().unwrap_or(0);
    let (warm_threads, late_threads) = (
        most_threads(&samples[n / 4..n / 2]),
        most_threads(&samples[n * 3 / 4..]),
    );
    let _ = writeln!(
        out,
        "fd check: lowest {warm_fds} open in the second quarter, lowest {late_fds} in the last quarter \
         (at most {FD_GROWTH} more allowed); threads: at most {warm_threads} in the second quarter, \
         at most {late_threads} in the last"
    );
    if late_fds > warm_fds + FD_GROWTH {
        problems.push(format!(
            "open file descriptors grew after warm-up: at least {warm_fds} in the second quarter, \
             at least {late_fds} in the last"
        ));
    }
    problems
}

/// Fails the run if a check never had anything to check.
fn exercised(harness: &Harness, generations: &[Generation]) {
    let sum = |f: fn(&smolder::Stats) -> u64| generations.iter().map(|g| f(&g.stats)).sum::<u64>();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    let require = |ok: bool, what: &str| {
        if !ok {
            harness.fail(format!("not exercised: {what}"));
        }
    };
    let runs = |activity: &str| harness.options.runs(activity);
    require(sum(|s| s.samples) > 0, "no samples were taken");
    require(generations.len() >= 2, "the agent was never restarted");
    require(
        generations
            .iter()
            .any(|g| g.audit.as_ref().is_some_and(|a| a.exact)),
        "no exact accounting audit",
    );
    // Frame-pointer walks end early in a binary built without them.
    let dwarf = generations
        .iter()
        .all(|g| g.stats.unwinder == smolder::Unwinder::Dwarf);
    require(
        !runs("deep") || !dwarf || sum(|s| s.stacks_truncated) > 0,
        "no stack was truncated",
    );
    require(
        !runs("eintr")
            || get(&harness.eintr.raw_poll_eintr) + get(&harness.eintr.raw_nanosleep_eintr) > 0,
        "no raw poll or nanosleep was ever interrupted",
    );
    require(
        !runs("churn") || get(&harness.churn.exited_with_signal_pending) > 0,
        "no thread exited with SIGPROF pending",
    );
    // Captures often overlap a restart; either kind succeeding will do.
    let routes = &harness.scrape.routes;
    let captured = get(&routes[3].ok) + get(&routes[4].ok);
    for ((path, _), counters) in ROUTES.iter().zip(routes).take(3) {
        require(
            !runs("http-scrape") || get(&counters.ok) > 0,
            &format!("GET {path} never succeeded"),
        );
    }
    require(
        !runs("http-scrape") || captured > 0,
        "no /debug/pprof/profile capture succeeded",
    );
}

fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}
