//! Per-sample cost: what one `SIGPROF` costs the thread it interrupts.
//!
//! A CPU-time timer here delivers at most 250 signals per second per thread
//! (HZ = 250), so comparing whole-run CPU with and without a profiler hides a
//! microsecond-scale handler in the run-to-run noise. Instead the measuring
//! thread signals *itself* in a tight loop: a signal sent to oneself is
//! delivered before the sending syscall returns, so `elapsed / signals` is
//! the full per-sample cost (send, kernel delivery, handler, `sigreturn`).
//!
//! Three handlers run the same loop, each in its own child process:
//!
//! * `empty`: a handler that only counts itself, the floor (delivery alone);
//! * `smolder`: the agent's handler, reached through
//!   `Agent::__sample_current_thread`, which sends exactly the signal its
//!   timers send;
//! * `pprof`: the `pprof` crate's handler (default features, backtrace-rs
//!   unwinding), whose own timer is set to 1 Hz so nearly every sample it
//!   takes is one we sent.
//!
//! All three send with the same three syscalls (see
//! [`crate::sys::send_sigprof_to_self`]), from the bottom of the same
//! recursion, so the interrupted stack is [`STACK_FRAMES`] frames deep in a
//! default release build. Signals go in batches of [`BATCH`] separated by
//! [`PAUSE`], longer than Smolder's longest collector cycle (100 ms), so its
//! 1024-record buffer never fills; only the signalling loops are timed. Each child
//! reports the median over its batches; the parent alternates the three
//! children for several rounds and reports medians over rounds.
//!
//! The shared VM drifts by ±10 % between children a second apart, which is
//! the size of the effect measured. So the `smolder` and `pprof` children
//! also measure the floor themselves: between their own batches they swap
//! the empty handler in for one batch (see [`sys::EmptyHandlerSwap`]), and
//! report the median of the per-pair ratios, a second estimate of
//! "x floor" that drift between processes cannot reach.

use std::time::{Duration, Instant};

use crate::child::{self, Fields, HarnessError, fail, median};
use crate::sys;

/// Physical frames on the interrupted stack (leaf to `_start`), as Smolder's
/// unwinder reports them; the harness prints the measured count.
pub const STACK_FRAMES: usize = 50;
/// Depth of [`on_deep_stack`]'s recursion that, with the frames of the Rust
/// runtime, `main` and the signalling loop, gives [`STACK_FRAMES`].
const RECURSION_DEPTH: usize = STACK_FRAMES - 15;
/// Signals per timed batch: well under Smolder's 1024-record buffer.
pub const BATCH: u32 = 500;
/// Timed batches per child.
pub const TIMED_BATCHES: u32 = 40;
/// Untimed batches first: page faults, caches and lazy set-up.
const WARMUP_BATCHES: u32 = 2;
/// Pause between batches: longer than Smolder's longest collector cycle
/// (100 ms), so no cycle finds more than two batches' records.
const PAUSE: Duration = Duration::from_millis(110);

/// Which handler a child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// The floor: delivery of a signal to a handler that does nothing.
    Empty,
    /// Smolder's handler (DWARF unwinding, the default).
    Smolder,
    /// The `pprof` crate's handler.
    Pprof,
}

impl Handler {
    /// All three, in the order of the first round.
    pub const ALL: [Handler; 3] = [Handler::Empty, Handler::Smolder, Handler::Pprof];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Empty => "empty",
            Handler::Smolder => "smolder",
            Handler::Pprof => "pprof",
        }
    }

    fn from_name(name: &str) -> Option<Handler> {
        Handler::ALL.into_iter().find(|h| h.name() == name)
    }
}

// === child side ===

/// Runs `body` at the bottom of a `depth`-deep recursion of distinct
/// physical frames.
#[inline(never)]
fn on_deep_stack(depth: usize, body: &mut dyn FnMut()) -> usize {
    if depth == 0 {
        body();
        return 0;
    }
    let below = on_deep_stack(std::hint::black_box(depth - 1), body);
    // Using the result after the call keeps it from becoming a tail call.
    std::hint::black_box(below + 1)
}

/// Sends `n` signals through `send`; returns the elapsed time.
#[inline(never)]
fn signal_batch(send: &dyn Fn() -> bool, n: u32) -> Result<Duration, HarnessError> {
    let started = Instant::now();
    let mut delivered = 0;
    for _ in 0..n {
        delivered += u32::from(send());
    }
    let elapsed = started.elapsed();
    if delivered != n {
        return fail(format!("only {delivered} of {n} signals were sent"));
    }
    Ok(elapsed)
}

/// ns per signal of each timed batch of one child.
struct Timings {
    /// Batches through the handler under test.
    own_ns: Vec<f64>,
    /// Batches through the empty handler, swapped in between the handler's
    /// batches (empty for the `empty` child, which is all floor).
    floor_ns: Vec<f64>,
}

/// One batch through the empty handler, swapped in for the duration.
fn floor_batch() -> Result<Duration, HarnessError> {
    let _swap = sys::EmptyHandlerSwap::install()?;
    signal_batch(&sys::send_sigprof_to_self, BATCH)
}

fn ns_per_signal(elapsed: Duration) -> f64 {
    elapsed.as_nanos() as f64 / f64::from(BATCH)
}

/// Warm-up batches, then the timed ones, each after a [`PAUSE`]. With
/// `interleave_floor`, every batch of `send` has a floor batch beside it,
/// in alternating order.
fn timed_batches(send: &dyn Fn() -> bool, interleave_floor: bool) -> Result<Timings, HarnessError> {
    let mut timings = Timings {
        own_ns: Vec::with_capacity(TIMED_BATCHES as usize),
        floor_ns: Vec::with_capacity(TIMED_BATCHES as usize),
    };
    for i in 0..WARMUP_BATCHES + TIMED_BATCHES {
        let timed = i >= WARMUP_BATCHES;
        let floor_first = i % 2 == 1;
        for floor in [floor_first, !floor_first] {
            if floor && !interleave_floor {
                continue;
            }
            std::thread::sleep(PAUSE);
            let elapsed = if floor {
                floor_batch()?
            } else {
                signal_batch(send, BATCH)?
            };
            if timed {
                let into = if floor {
                    &mut timings.floor_ns
                } else {
                    &mut timings.own_ns
                };
                into.push(ns_per_signal(elapsed));
            }
        }
    }
    Ok(timings)
}

/// Signals sent through one handler in one child, warm-up included.
fn signals_per_child() -> u64 {
    u64::from(BATCH) * u64::from(WARMUP_BATCHES + TIMED_BATCHES)
}

/// Checks that the swapped-in floor handler ran for every floor signal
/// (more is fine: the profiler's 1 Hz timer may have fired meanwhile).
fn check_floor_runs() -> Result<(), HarnessError> {
    let runs = sys::empty_handler_runs();
    if runs < signals_per_child() {
        return fail(format!(
            "the empty handler ran {runs} times for {} floor signals",
            signals_per_child()
        ));
    }
    Ok(())
}

/// Entry point of `child cost <handler>`.
pub fn child(args: &[String]) -> Result<Fields, HarnessError> {
    let Some(handler) = args.first().and_then(|a| Handler::from_name(a)) else {
        return fail("usage: child cost empty|smolder|pprof");
    };
    let mut fields = match handler {
        Handler::Empty => child_empty()?,
        Handler::Smolder => child_smolder()?,
        Handler::Pprof => child_pprof()?,
    };
    fields.put("handler", handler.name());
    Ok(fields)
}

fn put_timings(fields: &mut Fields, timings: &Timings) {
    let own = &timings.own_ns;
    let mean = own.iter().sum::<f64>() / own.len() as f64;
    fields
        .put("ns_median", format!("{:.1}", median(own)))
        .put("ns_mean", format!("{mean:.1}"));
    if !timings.floor_ns.is_empty() {
        let paired: Vec<f64> = own
            .iter()
            .zip(&timings.floor_ns)
            .map(|(o, f)| o / f)
            .collect();
        fields
            .put(
                "floor_ns_median",
                format!("{:.1}", median(&timings.floor_ns)),
            )
            .put("paired_ratio", format!("{:.4}", median(&paired)));
    }
}

fn child_empty() -> Result<Fields, HarnessError> {
    sys::install_empty_handler()?;
    let mut result = None;
    on_deep_stack(RECURSION_DEPTH, &mut || {
        result = Some(timed_batches(&sys::send_sigprof_to_self, false));
    });
    let timings = result.expect("the body ran")?;
    let runs = sys::empty_handler_runs();
    if runs != signals_per_child() {
        return fail(format!(
            "the empty handler ran {runs} times for {} signals",
            signals_per_child()
        ));
    }
    let mut fields = Fields::new();
    put_timings(&mut fields, &timings);
    fields.put("handled", runs);
    Ok(fields)
}

fn child_smolder() -> Result<Fields, HarnessError> {
    // 1 Hz: the agent's own timer adds at most a sample or two to the
    // hundreds of thousands of signals sent here.
    let agent = smolder::Agent::builder().frequency_hz(1).start()?;
    let send = || agent.__sample_current_thread();
    let mut result = None;
    on_deep_stack(RECURSION_DEPTH, &mut || {
        result = Some(smolder_at_depth(&agent, &send));
    });
    let (profile, timings) = result.expect("the body ran")?;
    check_floor_runs()?;

    // One untimed batch was captured into a profile: check what the agent
    // saw of the stack.
    let Some(sample) = profile.samples().max_by_key(|s| s.sample_count()) else {
        return fail("smolder's capture of the check batch is empty");
    };
    let physical_frames = sample.frames().filter(|f| !f.is_inlined()).count();
    let recursion_frames = sample
        .frames()
        .filter(|f| f.function().contains("on_deep_stack"))
        .count();
    if profile.sample_count() < u64::from(BATCH) {
        return fail(format!(
            "smolder's capture of the check batch kept {} of {BATCH} samples",
            profile.sample_count()
        ));
    }

    let stats = agent.stats();
    let sent = signals_per_child() + u64::from(BATCH);
    if stats.dropped.total() != 0 {
        return fail(format!(
            "smolder dropped samples, so its cost is understated: {:?}",
            stats.dropped
        ));
    }
    if stats.samples < sent {
        return fail(format!(
            "smolder recorded {} samples of {sent} sent",
            stats.samples
        ));
    }
    let mut fields = Fields::new();
    put_timings(&mut fields, &timings);
    fields
        .put("sent", sent)
        .put("handled", stats.samples)
        .put("dropped", stats.dropped.total())
        .put("frames", physical_frames)
        .put("recursion_frames", recursion_frames)
        .put("truncated", stats.stacks_truncated)
        .put("incomplete", stats.stacks_incomplete)
        .put("p50_ns", stats.handler_cost_p50_ns.unwrap_or(0))
        .put("p99_ns", stats.handler_cost_p99_ns.unwrap_or(0));
    Ok(fields)
}

/// At the bottom of the stack: one batch under a capture (to see the stack
/// as the agent records it), then the timed batches.
fn smolder_at_depth(
    agent: &smolder::Agent,
    send: &dyn Fn() -> bool,
) -> Result<(smolder::Profile, Timings), HarnessError> {
    let profile = std::thread::scope(|scope| {
        let capture = scope.spawn(|| agent.record(Duration::from_millis(300)));
        // Let the capture window open before the batch.
        std::thread::sleep(Duration::from_millis(50));
        let sent = signal_batch(send, BATCH);
        let profile = capture
            .join()
            .map_err(|_| HarnessError("the capture thread panicked".into()))?;
        sent?;
        Ok::<_, HarnessError>(profile?)
    })?;
    Ok((profile, timed_batches(send, true)?))
}

fn child_pprof() -> Result<Fields, HarnessError> {
    // 1 Hz: its setitimer adds at most a sample or two of its own.
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(1)
        .build()?;
    let mut result = None;
    on_deep_stack(RECURSION_DEPTH, &mut || {
        result = Some(timed_batches(&sys::send_sigprof_to_self, true));
    });
    let timings = result.expect("the body ran")?;
    check_floor_runs()?;
    let report = guard.report().build()?;
    drop(guard);

    let recorded: isize = report.data.values().sum();
    let sent = signals_per_child();
    if recorded < sent as isize {
        return fail(format!("pprof recorded {recorded} samples of {sent} sent"));
    }
    let Some((frames, _)) = report.data.iter().max_by_key(|(_, count)| **count) else {
        return fail("pprof's report is empty");
    };
    let recursion_frames = frames
        .frames
        .iter()
        .filter(|symbols| symbols.iter().any(|s| s.name().contains("on_deep_stack")))
        .count();
    let mut fields = Fields::new();
    put_timings(&mut fields, &timings);
    fields
        .put("sent", sent)
        .put("handled", recorded)
        .put("frames", frames.frames.len())
        .put("recursion_frames", recursion_frames);
    Ok(fields)
}

// === parent side ===

/// Results of every round, by handler.
#[derive(Debug, Default)]
pub struct CostResults {
    rounds: Vec<[Fields; 3]>,
}

/// Runs `rounds` rounds of the three children, rotating their order each
/// round so that none always runs first or last.
pub fn run(rounds: usize) -> Result<CostResults, HarnessError> {
    let mut results = CostResults::default();
    for round in 0..rounds {
        let mut fields: [Fields; 3] = Default::default();
        for k in 0..3 {
            let index = (round + k) % 3;
            let handler = Handler::ALL[index];
            eprintln!("  cost round {}/{rounds}: {}", round + 1, handler.name());
            fields[index] = child::run(&["cost".into(), handler.name().into()])?;
        }
        results.rounds.push(fields);
    }
    Ok(results)
}

/// The numbers the summary needs.
#[derive(Debug, Clone, Copy)]
pub struct CostSummary {
    /// Median ns per sample with the empty handler.
    pub floor_ns: f64,
    /// Median ns per sample with Smolder's handler.
    pub smolder_ns: f64,
    /// Median ns per sample with the `pprof` crate's handler.
    pub pprof_ns: f64,
    /// Median over rounds of Smolder's cost / the floor measured in the
    /// same process.
    pub smolder_paired: f64,
    /// The same for the `pprof` crate.
    pub pprof_paired: f64,
}

impl CostResults {
    fn column(&self, handler: Handler, key: &str) -> Result<Vec<f64>, HarnessError> {
        let index = Handler::ALL.iter().position(|h| *h == handler).unwrap_or(0);
        self.rounds.iter().map(|r| r[index].num(key)).collect()
    }

    fn last(&self, handler: Handler, key: &str) -> String {
        let index = Handler::ALL.iter().position(|h| *h == handler).unwrap_or(0);
        self.rounds
            .last()
            .and_then(|r| r[index].text(key).ok())
            .unwrap_or("-")
            .to_owned()
    }

    /// Prints the table; returns the medians.
    pub fn print(&self) -> Result<CostSummary, HarnessError> {
        let floor = median(&self.column(Handler::Empty, "ns_median")?);
        let mut medians = [0.0; 3];
        let mut paired_medians = [0.0; 3];
        println!(
            "\n## Per-sample cost: SIGPROF to self, {} rounds x {} timed signals per handler, \
             medians over rounds",
            self.rounds.len(),
            TIMED_BATCHES * BATCH
        );
        println!(
            "| handler | ns/sample (median) | range over rounds | x floor | over floor, ns \
             | x floor, paired in-process | stack frames seen | in-handler p50 / p99 (own stats) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (i, handler) in Handler::ALL.into_iter().enumerate() {
            let values = self.column(handler, "ns_median")?;
            let ns = median(&values);
            medians[i] = ns;
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(0.0, f64::max);
            let frames = match handler {
                Handler::Empty => "-".to_owned(),
                _ => format!(
                    "{} ({} recursion)",
                    self.last(handler, "frames"),
                    self.last(handler, "recursion_frames")
                ),
            };
            let in_handler = match handler {
                Handler::Smolder => format!(
                    "{:.0} / {:.0} ns",
                    median(&self.column(handler, "p50_ns")?),
                    median(&self.column(handler, "p99_ns")?)
                ),
                _ => "-".to_owned(),
            };
            let paired = match handler {
                Handler::Empty => {
                    paired_medians[i] = 1.0;
                    "1.00".to_owned()
                }
                _ => {
                    let ratios = self.column(handler, "paired_ratio")?;
                    paired_medians[i] = median(&ratios);
                    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = ratios.iter().copied().fold(0.0, f64::max);
                    format!("{:.2} ({lo:.2}-{hi:.2})", paired_medians[i])
                }
            };
            println!(
                "| {} | {ns:.0} | {lo:.0}-{hi:.0} | {:.2} | {:.0} | {paired} | {frames} \
                 | {in_handler} |",
                handler.name(),
                ns / floor,
                ns - floor,
            );
        }
        let summary = CostSummary {
            floor_ns: medians[0],
            smolder_ns: medians[1],
            pprof_ns: medians[2],
            smolder_paired: paired_medians[1],
            pprof_paired: paired_medians[2],
        };
        println!(
            "\nAcross processes: smolder / floor = {:.2}, smolder / pprof = {:.2}; over the \
             floor, smolder adds {:.0} ns and pprof {:.0} ns ({:.1}x more).",
            summary.smolder_ns / summary.floor_ns,
            summary.smolder_ns / summary.pprof_ns,
            summary.smolder_ns - summary.floor_ns,
            summary.pprof_ns - summary.floor_ns,
            (summary.pprof_ns - summary.floor_ns) / (summary.smolder_ns - summary.floor_ns)
        );
        println!(
            "Paired in-process (each against the floor measured beside it): smolder / floor = \
             {:.2}, pprof / floor = {:.2}, so smolder / pprof = {:.2}.",
            summary.smolder_paired,
            summary.pprof_paired,
            summary.smolder_paired / summary.pprof_paired
        );
        println!(
            "Checks (every round): empty handler ran for every signal; smolder dropped {} and \
             recorded {} of {} signals in the last round, truncated {} and incomplete {} stacks; \
             pprof recorded {} of {}.",
            self.last(Handler::Smolder, "dropped"),
            self.last(Handler::Smolder, "handled"),
            self.last(Handler::Smolder, "sent"),
            self.last(Handler::Smolder, "truncated"),
            self.last(Handler::Smolder, "incomplete"),
            self.last(Handler::Pprof, "handled"),
            self.last(Handler::Pprof, "sent"),
        );
        Ok(summary)
    }
}
