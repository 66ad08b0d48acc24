//! Host impact: what the agent costs a real service under load.
//!
//! The service is the demo shop (`examples/src/bin/demo`, binary
//! `target/release/demo`), run with `--no-load` and driven by `wrk` over
//! loopback with the demo's own browsing mix (see [`wrk::WRK_SCRIPT`]).
//! Seven variants of the demo differ only in their environment and
//! arguments ([`Variant`]): the agent switched off with its kill switch
//! (`SMOLDER_ENABLED=false`: the agent installs nothing, and the tracing
//! layer, still in the subscriber, only mints span ids), at 99 Hz, at 99 Hz
//! without span export, at 999 Hz, and at 99 Hz while a client fetches a
//! flame graph from the agent's endpoint back to back; then a service that
//! exports its spans through the OpenTelemetry SDK, without and with the
//! agent in that pipeline.
//!
//! **Like for like.** Every variant sets `OTEL_EXPORTER_OTLP_ENDPOINT` to a
//! stand-in collector in the harness ([`crate::http::OtlpSink`]), so no
//! variant runs the demo's embedded trace viewer, which would otherwise
//! store every span the agent exports in the measured process itself.
//! Exporting spans is the agent's work and is counted; receiving them is a
//! collector's, elsewhere, and is not.
//!
//! **No starving.** On a machine with two or more CPUs, the demo runs on the
//! last one (`taskset -c <cpu>`), and `wrk` (one thread, [`wrk::CONNECTIONS`]
//! connections), the harness and the stand-in collector on the first.
//!
//! **Alternation.** All the demos start at once, each warms up, and all
//! are stopped (`SIGSTOP`), costing nothing. Then, round by round, each is
//! resumed in turn for one measured slice (a second of unmeasured load,
//! then [`ImpactOptions::seconds`] of `wrk --latency`) and stopped again;
//! the order rotates every round. So every variant sees the same drift of
//! this shared machine, and each round's ratio to its own "off" slice is a
//! paired estimate. The demo's CPU per request comes from `/proc/<pid>/stat`
//! (and the agent's own threads' share from `/proc/<pid>/task/*/stat`).
//!
//! This file runs the rounds; [`variants`] says what each variant is,
//! [`demo`] starts and stops a demo process, [`wrk`] drives the load and
//! reads its report, [`slice`] measures one slice, and [`report`] prints
//! the tables and the ratios the summary sets against the targets.

mod demo;
mod report;
mod slice;
mod variants;
mod wrk;

use std::path::Path;
use std::time::Duration;

use self::demo::Demo;
pub(crate) use self::demo::demo_binary;
use self::slice::{Slice, measure_slice};
use self::variants::{PerVariant, Variant};
use self::wrk::{WRK_SCRIPT, run_wrk};
use crate::child::{HarnessError, fail};
use crate::http::{self, OtlpSink};
use crate::sys::{self, Affinity};

/// Unmeasured load after a demo starts (caches, SQLite pages, symbols).
const DEMO_WARMUP: Duration = Duration::from_secs(5);

/// Section settings.
#[derive(Debug, Clone, Copy)]
pub struct ImpactOptions {
    pub rounds: usize,
    pub seconds: u64,
    /// Only the variants the 99 Hz targets compare ([`Variant::TARGETS`]):
    /// with fewer variants, a round is shorter, and more rounds fit the
    /// same time.
    pub targets_only: bool,
}

/// Everything measured; [`ImpactResults::print`] reports it.
pub struct ImpactResults {
    options: ImpactOptions,
    /// Per variant, its slices in round order (none for a variant not run).
    slices: PerVariant<Vec<Slice>>,
    /// Per variant, the agent's stats JSON at the end (if it runs).
    stats: PerVariant<Option<String>>,
    /// The harness's CPU and the demo's, when there are two to choose from.
    pinning: Option<(usize, usize)>,
    /// Export requests and bytes the stand-in collector received.
    sink: (u64, u64),
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

/// Per variant, its slices and the agent's stats at the end.
type Measured = (PerVariant<Vec<Slice>>, PerVariant<Option<String>>);

/// Starts and warms up every demo, then measures the rounds, each demo in
/// turn, in an order that rotates every round.
fn run_with(
    options: ImpactOptions,
    demo_exe: &Path,
    pinning: Option<(usize, usize)>,
    sink: &OtlpSink,
    script: &Path,
) -> Result<Measured, HarnessError> {
    let ticks = sys::clock_ticks_per_second() as f64;
    let active: &[Variant] = if options.targets_only {
        &Variant::TARGETS
    } else {
        &Variant::ALL
    };
    let mut demos = Vec::new();
    for &variant in active {
        eprintln!("  impact: starting the demo, {}", variant.label());
        let demo = Demo::start(demo_exe, pinning.map(|p| p.1), variant, &sink.endpoint())?;
        run_wrk(script, &demo.url(), DEMO_WARMUP)?;
        demo.pause()?;
        demos.push((variant, demo));
    }
    let mut slices = PerVariant::<Vec<Slice>>::default();
    for round in 0..options.rounds {
        for k in 0..demos.len() {
            let (variant, demo) = &demos[(round + k) % demos.len()];
            let variant = *variant;
            eprintln!(
                "  impact round {}/{}: {}",
                round + 1,
                options.rounds,
                variant.label()
            );
            let slice = measure_slice(demo, variant, script, options.seconds, ticks)?;
            let errors = slice.wrk.errors;
            if errors * 100 > slice.wrk.requests.max(1) {
                return fail(format!(
                    "{} of {} requests failed ({}); stderr: {}",
                    errors,
                    slice.wrk.requests,
                    variant.label(),
                    demo.stderr_text()
                ));
            }
            slices[variant].push(slice);
        }
    }
    let mut stats = PerVariant::<Option<String>>::default();
    for (variant, demo) in &demos {
        demo.resume()?;
        if let Some(agent) = demo.agent {
            stats[*variant] =
                Some(http::get(agent, "/debug/pprof/stats", Duration::from_secs(10))?.text());
        }
    }
    for (_, demo) in demos {
        demo.stop()?;
    }
    Ok((slices, stats))
}
