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
//!
//! ```text
//! cargo run --release -p smolder-benches                # everything (~2.5 min)
//! cargo run --release -p smolder-benches -- cost        # one section
//! cargo run --release -p smolder-benches -- --rounds 3  # fewer rounds
//! ```
//!
//! Each measurement runs in a child process (the harness re-executes
//! itself, see [`child`]): the three handlers each claim `SIGPROF` for the
//! whole process, and only one Smolder agent may run per process. Rounds
//! alternate the order of the children and the tables give medians, since
//! the machine is a shared VM.
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
mod memory;
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

/// What to run, from the command line.
struct Options {
    cost: bool,
    accounting: bool,
    memory: bool,
    cost_rounds: usize,
    accounting_rounds: usize,
}

const USAGE: &str = "usage: smolder-benches [all|cost|accounting|memory]... [--rounds N]\n\
    \n\
    Runs the chosen sections (default: all). --rounds sets the rounds of the\n\
    cost section (default 7) and of the accounting section (default 3).\n\
    (`smolder-benches child ...` is internal: one measurement in a fresh process.)";

impl Options {
    fn parse(args: &[String]) -> Result<Options, HarnessError> {
        let mut options = Options {
            cost: false,
            accounting: false,
            memory: false,
            cost_rounds: 7,
            accounting_rounds: 3,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "all" => {
                    options.cost = true;
                    options.accounting = true;
                    options.memory = true;
                }
                "cost" => options.cost = true,
                "accounting" => options.accounting = true,
                "memory" => options.memory = true,
                "--rounds" => {
                    let rounds = args
                        .next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| HarnessError(USAGE.into()))?;
                    options.cost_rounds = rounds;
                    options.accounting_rounds = rounds;
                }
                _ => return child::fail(USAGE),
            }
        }
        if !(options.cost || options.accounting || options.memory) {
            options.cost = true;
            options.accounting = true;
            options.memory = true;
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
    let (section, rest) = args
        .split_first()
        .ok_or_else(|| HarnessError("usage: child cost|accounting|memory ...".into()))?;
    let fields = match section.as_str() {
        "cost" => cost::child(rest)?,
        "accounting" => accounting::child(rest)?,
        "memory" => memory::child(rest)?,
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
        assert!(options.cost && options.accounting && options.memory);
        assert_eq!((options.cost_rounds, options.accounting_rounds), (7, 3));
        let options = parse(&["memory", "--rounds", "2"]).unwrap();
        assert!(!options.cost && !options.accounting && options.memory);
        assert_eq!((options.cost_rounds, options.accounting_rounds), (2, 2));
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["bogus"]).is_err());
    }
}
