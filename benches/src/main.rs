//! # smolder-benches
//!
//! The benchmark harness behind the performance claims in
//! `docs/benchmarks.md`. It measures Smolder side by side, in one run, with
//! the floor (an empty `SIGPROF` handler) and its peer, the `pprof` crate
//! (0.15, default features), and reports ratios:
//!
//! 1. **Per-sample cost** ([`cost`]): ns per signal, the thread signalling
//!    itself in a tight loop on a 50-frame stack; ratios to the floor and to
//!    the `pprof` crate, across processes and paired with a floor measured
//!    in the same process; Smolder's own in-handler p50/p99.
//! 2. **Accounting** ([`accounting`]): samples kept vs expected from measured
//!    thread CPU at 99 and 999 Hz on 1 and 2 busy threads, per thread too.
//! 3. **Memory** ([`memory`]): resident memory the agent adds at defaults,
//!    before and after a capture, and its own account of it; the `pprof`
//!    crate's beside it.
//! 4. **Render** ([`render`]): the HTTP endpoint's flame-graph route over
//!    real TCP for a 100 000-sample, 5 000-stack window of history, and the
//!    memory 15 minutes of that history needs.
//! 5. **Impact** ([`impact`]): the demo shop under `wrk` with the agent off,
//!    at 99 and 999 Hz, and while flame graphs are fetched: throughput and
//!    latency ratios, CPU per request.
//! 6. **Spans** ([`spans`]): CPU per traced span, on the thread making it
//!    and in the whole process until exported, Smolder exporting against
//!    the OpenTelemetry SDK pipeline.
//! 7. **Push** ([`push`]): the demo pushing profiles to a stand-in
//!    Pyroscope, beside one that does not and one whose server is down:
//!    the push thread's share of the CPU, and memory through the outage.
//!
//! ```text
//! cargo run --release -p smolder-benches                # cost, accounting, memory, render
//! cargo run --release -p smolder-benches -- cost        # one section
//! cargo run --release -p smolder-benches -- impact      # needs wrk (apt-get install -y wrk)
//! cargo run --release -p smolder-benches -- spans       # one section
//! cargo run --release -p smolder-benches -- all         # all six
//! cargo run --release -p smolder-benches -- --rounds 3  # fewer rounds
//! cargo run --release -p smolder-benches -- impact --targets-only --rounds 30 --seconds 5
//! ```
//!
//! Each measurement runs in a child process (the harness re-executes
//! itself, see [`child`]): the three handlers each claim `SIGPROF` for the
//! whole process, and only one Smolder agent may run per process. Rounds
//! alternate the order of the children and the tables give medians, since
//! the machine is a shared VM. The impact section's children are the demo
//! and `wrk` themselves.
//!
//! The harness reports, and sets each figure beside its target, but it
//! exits non-zero only when a measurement could not be made or cannot be
//! trusted (a child failed, samples were dropped or lost during the cost
//! measurement), never because a target was missed. Wall-clock numbers stay
//! here and out of the tests.

#![deny(unsafe_op_in_unsafe_fn)]

mod accounting;
mod child;
mod cost;
mod http;
mod impact;
mod memory;
mod push;
mod render;
mod spans;
mod sys;

use std::process::ExitCode;
use std::time::Instant;

use child::HarnessError;

/// Per-sample cost must stay within this multiple of the floor.
const TARGET_COST_VS_FLOOR: f64 = 1.3;
/// ... and within this fraction of the `pprof` crate's.
const TARGET_COST_VS_PPROF: f64 = 1.0 / 3.0;
/// Accounted CPU within this fraction of measured CPU.
const TARGET_ACCOUNTING: f64 = 0.03;
/// Agent memory at defaults, in bytes (8 MiB).
const TARGET_MEMORY_BYTES: f64 = 8.0 * 1024.0 * 1024.0;
/// Flame graph of a 100 000-sample, 5 000-stack window, in milliseconds.
const TARGET_RENDER_MS: f64 = 200.0;
/// Demo throughput with the agent at 99 Hz, as a fraction of without.
const TARGET_THROUGHPUT: f64 = 0.99;
/// Demo p99 latency with the agent at 99 Hz, as a multiple of without.
const TARGET_P99: f64 = 1.02;

/// What to run, from the command line.
struct Options {
    cost: bool,
    accounting: bool,
    memory: bool,
    render: bool,
    impact: bool,
    spans: bool,
    push: bool,
    cost_rounds: usize,
    accounting_rounds: usize,
    impact_rounds: usize,
    spans_rounds: usize,
    impact_seconds: u64,
    /// The push section's measured length (`--push-seconds`).
    push_seconds: u64,
    impact_targets_only: bool,
    full_history: bool,
}

const USAGE: &str = "usage: smolder-benches [all|cost|accounting|memory|render|impact|spans|push]... \
    [--rounds N] [--seconds S] [--targets-only] [--full-history] [--push-seconds S]\n\
    \n\
    Runs the chosen sections (default: cost, accounting, memory, render and\n\
    spans; `all` adds impact, which needs wrk). --rounds sets the rounds of\n\
    the cost (default 7), accounting (3), impact (5) and spans (3) sections;\n\
    --seconds the length\n\
    of each measured impact slice (default 8); --targets-only runs only the\n\
    impact variants the 99 Hz targets compare. --full-history adds a\n\
    16-minute run to the render section: 15 minutes of history, measured.\n\
    (`smolder-benches child ...` is internal: one measurement in a fresh process.)";

impl Options {
    fn parse(args: &[String]) -> Result<Options, HarnessError> {
        let mut options = Options {
            cost: false,
            accounting: false,
            memory: false,
            render: false,
            impact: false,
            spans: false,
            push: false,
            cost_rounds: 7,
            accounting_rounds: 3,
            impact_rounds: 5,
            spans_rounds: 3,
            impact_seconds: 8,
            push_seconds: 180,
            impact_targets_only: false,
            full_history: false,
        };
        let mut args = args.iter();
        let positive = |args: &mut std::slice::Iter<'_, String>| {
            args.next()
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| HarnessError(USAGE.into()))
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "all" => {
                    options.cost = true;
                    options.accounting = true;
                    options.memory = true;
                    options.render = true;
                    options.impact = true;
                    options.spans = true;
                }
                "cost" => options.cost = true,
                "accounting" => options.accounting = true,
                "memory" => options.memory = true,
                "render" => options.render = true,
                "impact" => options.impact = true,
                "spans" => options.spans = true,
                "push" => options.push = true,
                "--rounds" => {
                    let rounds = positive(&mut args)?;
                    options.cost_rounds = rounds;
                    options.accounting_rounds = rounds;
                    options.impact_rounds = rounds;
                    options.spans_rounds = rounds;
                }
                "--seconds" => options.impact_seconds = positive(&mut args)? as u64,
                "--push-seconds" => options.push_seconds = positive(&mut args)? as u64,
                "--full-history" => options.full_history = true,
                "--targets-only" => options.impact_targets_only = true,
                _ => return child::fail(USAGE),
            }
        }
        if !(options.cost
            || options.accounting
            || options.memory
            || options.render
            || options.impact
            || options.spans
            || options.push)
        {
            options.cost = true;
            options.accounting = true;
            options.memory = true;
            options.render = true;
            options.spans = true;
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("child") => run_child(&args[1..]),
        _ => run_parent(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("smolder-benches: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `child <section> <args>`: one measurement, printed as a `RESULT` line.
fn run_child(args: &[String]) -> Result<(), HarnessError> {
    let (section, rest) = args.split_first().ok_or_else(|| {
        HarnessError("usage: child cost|accounting|memory|render|spans ...".into())
    })?;
    let fields = match section.as_str() {
        "cost" => cost::child(rest)?,
        "accounting" => accounting::child(rest)?,
        "memory" => memory::child(rest)?,
        "render" => render::child(rest)?,
        "spans" => spans::child(rest)?,
        other => return child::fail(format!("unknown child section `{other}`")),
    };
    fields.emit();
    Ok(())
}

/// One line about the machine: vCPUs, CPU model, kernel.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} vCPU, {model}, Linux {}", kernel.trim())
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minutes): other
/// work on this shared VM shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn run_parent(args: &[String]) -> Result<(), HarnessError> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let options = Options::parse(args)?;
    let started = Instant::now();
    println!("# smolder-benches");
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());

    let cost = if options.cost {
        eprintln!("per-sample cost ({} rounds)...", options.cost_rounds);
        Some(cost::run(options.cost_rounds)?.print()?)
    } else {
        None
    };
    let accounting = if options.accounting {
        eprintln!("accounting ({} rounds)...", options.accounting_rounds);
        Some(accounting::run(options.accounting_rounds)?.print()?)
    } else {
        None
    };
    let memory = if options.memory {
        eprintln!("memory...");
        Some(memory::run()?.print()?)
    } else {
        None
    };
    let render = if options.render {
        eprintln!("render...");
        Some(render::run(options.full_history)?.print()?)
    } else {
        None
    };
    if options.spans {
        eprintln!("spans ({} rounds)...", options.spans_rounds);
        spans::run(options.spans_rounds)?.print()?;
    }
    let impact = if options.impact {
        eprintln!(
            "impact ({} rounds x {} s)...",
            options.impact_rounds, options.impact_seconds
        );
        Some(
            impact::run(impact::ImpactOptions {
                rounds: options.impact_rounds,
                seconds: options.impact_seconds,
                targets_only: options.impact_targets_only,
            })?
            .print()?,
        )
    } else {
        None
    };
    let push = if options.push {
        let seconds = options.push_seconds;
        eprintln!("push ({seconds} s, three demos side by side)...");
        Some(push::run(seconds)?.print())
    } else {
        None
    };

    println!("\n## Targets");
    println!("| target | measured | verdict |");
    println!("|---|---:|---|");
    if let Some(c) = cost {
        let vs_floor = c.smolder_ns / c.floor_ns;
        let vs_pprof = c.smolder_ns / c.pprof_ns;
        let paired_vs_pprof = c.smolder_paired / c.pprof_paired;
        println!(
            "| per-sample cost <= {TARGET_COST_VS_FLOOR}x the floor | {vs_floor:.3}x across \
             processes, {:.3}x paired in-process | {} |",
            c.smolder_paired,
            verdict(vs_floor.max(c.smolder_paired) <= TARGET_COST_VS_FLOOR)
        );
        println!(
            "| per-sample cost <= 1/3 of the pprof crate's | {vs_pprof:.3} across processes, \
             {paired_vs_pprof:.3} paired | {} |",
            verdict(vs_pprof.max(paired_vs_pprof) <= TARGET_COST_VS_PPROF)
        );
    }
    if let Some(a) = accounting {
        let (hz, threads) = a.smolder_worst_case;
        println!(
            "| accounted CPU within +/-{:.0} % of measured (99 and 999 Hz, 1 and 2 threads) \
             | worst {:.1} % ({hz} Hz, {threads} thread(s)) | {} |",
            TARGET_ACCOUNTING * 100.0,
            a.smolder_worst_deviation * 100.0,
            verdict(a.smolder_worst_deviation <= TARGET_ACCOUNTING)
        );
    }
    if let Some(m) = memory {
        let mib = |bytes: f64| bytes / 1048576.0;
        println!(
            "| agent memory <= 8 MiB at defaults, before any capture | RSS +{:.2} MiB, own account \
             {:.2} MiB | {} |",
            mib(m.running_delta_bytes),
            mib(m.memory_bytes),
            verdict(m.running_delta_bytes.max(m.memory_bytes) <= TARGET_MEMORY_BYTES)
        );
        println!(
            "| agent memory <= 8 MiB at defaults, after a capture | RSS +{:.2} MiB retained | {} |",
            mib(m.retained_delta_bytes),
            verdict(m.retained_delta_bytes <= TARGET_MEMORY_BYTES)
        );
        if let Some(bytes) = m.retained_no_debug_info_bytes {
            println!(
                "| ... the same without detached debug info (/usr/lib/debug hidden) | RSS +{:.2} \
                 MiB retained | {} |",
                mib(bytes),
                verdict(bytes <= TARGET_MEMORY_BYTES)
            );
        }
        println!(
            "| agent memory <= 8 MiB at defaults, idle 25 s after the captures (symboliser \
             released) | RSS +{:.2} MiB | {} |",
            mib(m.idle_delta_bytes),
            verdict(m.idle_delta_bytes <= TARGET_MEMORY_BYTES)
        );
    }
    if let Some(r) = render {
        println!(
            "| flame graph of a 100 000-sample, 5 000-stack window <= {TARGET_RENDER_MS:.0} ms | \
             window of {} samples, {} stacks; first request {:.0} ms (cold symbol cache) | {} |",
            r.samples,
            r.stacks,
            r.cold_ms,
            verdict(r.cold_ms <= TARGET_RENDER_MS)
        );
        if let Some(cold) = r.cold_no_debug_info_ms {
            println!(
                "| ... first request without detached debug info (/usr/lib/debug hidden) | {cold:.0} \
                 ms | {} |",
                verdict(cold <= TARGET_RENDER_MS)
            );
        }
        println!(
            "| ... later requests (symbols cached) | median {:.0} ms, max {:.0} ms | {} |",
            r.warm_median_ms,
            r.warm_max_ms,
            verdict(r.warm_max_ms <= TARGET_RENDER_MS)
        );
        // The issue asks for this figure, not for a bound on it: the byte
        // budget is the bound, and a heavier load shortens the reach instead
        // of growing memory (docs/architecture.md, "History").
        println!(
            "| memory held by 15 minutes of that load's history (999 Hz; at most \
             {:.1} MiB at the default 99 Hz) | {:.2} MiB; the default {} MiB budget reaches \
             {:.1} min | reported |",
            render::history_bound_at_default_hz() / 1048576.0,
            r.history_bytes_15m / 1048576.0,
            render::HISTORY_BYTES >> 20,
            r.reach.as_secs_f64() / 60.0,
        );
    }
    if let Some(i) = impact {
        let rows = [
            (
                "profiling alone (spans not exported), against off",
                i.profiling_only,
            ),
            ("in the SDK pipeline, against the SDK pipeline alone", i.sdk),
            (
                "exporting spans itself, against off (which exports none)",
                i.exporting,
            ),
            (
                "exporting spans itself, against the SDK exporting the same spans without \
                 the agent (like for like)",
                i.exporting_like_for_like,
            ),
        ];
        for (what, r) in rows {
            println!(
                "| demo throughput at 99 Hz >= {:.0} % of without: {what} | {:.1} % (ratio of \
                 medians), {:.1} % (paired by round) | {} |",
                TARGET_THROUGHPUT * 100.0,
                r.throughput.0 * 100.0,
                r.throughput.1 * 100.0,
                verdict(r.throughput.0.min(r.throughput.1) >= TARGET_THROUGHPUT)
            );
            println!(
                "| demo p99 latency at 99 Hz within {:.0} % of without: {what} | {:+.1} % (ratio \
                 of medians), {:+.1} % (paired) | {} |",
                (TARGET_P99 - 1.0) * 100.0,
                (r.p99.0 - 1.0) * 100.0,
                (r.p99.1 - 1.0) * 100.0,
                verdict(r.p99.0.max(r.p99.1) <= TARGET_P99)
            );
            println!(
                "| (for reading the two above) demo CPU per request | {:+.1} % | - |",
                (r.cpu_per_request - 1.0) * 100.0
            );
        }
    }
    if let Some(percent) = push {
        println!(
            "| pushing profiles at defaults <= {} % of the demo's CPU | {percent:.4} % | {} |",
            push::TARGET_PUSH_CPU_PERCENT,
            verdict(percent <= push::TARGET_PUSH_CPU_PERCENT)
        );
    }
    println!(
        "\n(harness ran {:.0} s; load average at the end: {})",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, HarnessError> {
        Options::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn no_section_means_all_and_rounds_apply_to_both() {
        let options = parse(&[]).unwrap();
        assert!(options.cost && options.accounting && options.memory && options.render);
        assert!(!options.impact && !options.full_history && !options.impact_targets_only);
        assert_eq!((options.cost_rounds, options.accounting_rounds), (7, 3));
        assert_eq!((options.impact_rounds, options.impact_seconds), (5, 8));
        let options = parse(&["memory", "--rounds", "2"]).unwrap();
        assert!(!options.cost && !options.accounting && options.memory && !options.render);
        assert_eq!((options.cost_rounds, options.accounting_rounds), (2, 2));
        assert_eq!(options.impact_rounds, 2);
        let options = parse(&["all", "--seconds", "20", "--full-history"]).unwrap();
        assert!(options.impact && options.render && options.full_history);
        assert_eq!(options.impact_seconds, 20);
        let options = parse(&["impact", "--targets-only"]).unwrap();
        assert!(options.impact && options.impact_targets_only && !options.cost);
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["--seconds"]).is_err());
        assert!(parse(&["bogus"]).is_err());
    }
}
