//! Accounting: does the profile account for the CPU the threads really used?
//!
//! One or two threads spin in a known function, [`burn_cpu`], for
//! [`BURN`]. Each measures its own CPU time over the spin with
//! `CLOCK_THREAD_CPUTIME_ID`; at `hz` samples per CPU-second the profile
//! should hold `cpu_seconds * hz` samples of that function on that thread.
//! "Kept" counts, per thread, the samples whose stack contains `burn_cpu`:
//! for Smolder its timer expirations (`SampleView::weight`, which includes
//! the overrun the kernel folds into one signal when the timer outpaces the
//! 250 Hz tick), for the `pprof` crate its sample counts (it has no weights).
//!
//! The threads idle for [`SETTLE`] before spinning, so Smolder's collector
//! (which finds new threads within 100 ms) has armed their timers, and the
//! capture window opens before and closes after the spin.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::child::{self, Fields, HarnessError, fail, median};
use crate::sys;

/// How long each thread spins.
const BURN: Duration = Duration::from_secs(2);
/// Idle time before spinning.
const SETTLE: Duration = Duration::from_millis(300);
/// Capture time after the spin ends.
const TAIL: Duration = Duration::from_millis(300);
/// The name of the function the threads spin in.
const BURN_FN: &str = "burn_cpu";

/// The (frequency, busy threads) cases, as the issue lists them.
pub const CASES: [(u32, usize); 4] = [(99, 1), (99, 2), (999, 1), (999, 2)];
/// The profilers compared.
pub const PROFILERS: [&str; 2] = ["smolder", "pprof"];

// === child side ===

/// Spins until `until`; returns a value so the work is not optimised away.
#[inline(never)]
fn burn_cpu(until: Instant) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    loop {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.rotate_left(7) ^ x.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
        if Instant::now() >= until {
            return x;
        }
    }
}

/// Starts `threads` threads named `burn-<i>` that settle, spin for
/// [`BURN`] and return the CPU time the spin used.
fn spawn_burners(threads: usize) -> Result<Vec<std::thread::JoinHandle<Duration>>, HarnessError> {
    let start = Instant::now() + SETTLE;
    (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("burn-{i}"))
                .spawn(move || {
                    std::thread::sleep(start.saturating_duration_since(Instant::now()));
                    let before = sys::thread_cpu_time();
                    std::hint::black_box(burn_cpu(start + BURN));
                    sys::thread_cpu_time() - before
                })
                .map_err(HarnessError::from)
        })
        .collect()
}

fn join_all(
    handles: Vec<std::thread::JoinHandle<Duration>>,
) -> Result<Vec<Duration>, HarnessError> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| HarnessError("a burner thread panicked".into()))
        })
        .collect()
}

/// Entry point of `child accounting <profiler> <hz> <threads>`.
pub fn child(args: &[String]) -> Result<Fields, HarnessError> {
    let usage = "usage: child accounting smolder|pprof HZ THREADS";
    let [profiler, hz, threads] = args else {
        return fail(usage);
    };
    let (Ok(hz), Ok(threads)) = (hz.parse::<u32>(), threads.parse::<usize>()) else {
        return fail(usage);
    };
    // kept[i]: samples (weighted for Smolder) of `burn_cpu` on `burn-<i>`.
    let mut kept = vec![0u64; threads];
    // Samples on the burner threads outside `burn_cpu` (set-up, exit).
    let mut elsewhere = 0u64;
    let mut fields = Fields::new();
    let thread_index = |name: &str| -> Option<usize> {
        name.strip_prefix("burn-")?
            .parse()
            .ok()
            .filter(|i| *i < threads)
    };
    let cpu = match profiler.as_str() {
        "smolder" => {
            let agent = smolder::Agent::builder().frequency_hz(hz).start()?;
            let handles = spawn_burners(threads)?;
            // Signals taken while the threads spin: stats read while they
            // idle before and after (nothing else in this process burns CPU).
            let (profile, before, after) = std::thread::scope(|scope| {
                let capture = scope.spawn(|| agent.record(SETTLE + BURN + TAIL));
                std::thread::sleep(SETTLE / 2);
                let before = agent.stats();
                std::thread::sleep(SETTLE / 2 + BURN + TAIL / 2);
                let after = agent.stats();
                let profile = capture
                    .join()
                    .map_err(|_| HarnessError("the capture thread panicked".into()))?;
                Ok::<_, HarnessError>((profile?, before, after))
            })?;
            let cpu = join_all(handles)?;
            for sample in profile.samples() {
                let Some(i) = thread_index(sample.thread_name()) else {
                    continue;
                };
                if sample.frames().any(|f| f.function().contains(BURN_FN)) {
                    kept[i] += sample.sample_count();
                } else {
                    elsewhere += sample.sample_count();
                }
            }
            fields
                .put("signals", after.samples - before.samples)
                .put("weight", after.sample_weight - before.sample_weight)
                .put("dropped", after.dropped.total())
                .put(
                    "engine",
                    after.engine.map_or("disabled", smolder::Engine::as_str),
                );
            cpu
        }
        "pprof" => {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(hz as i32)
                .build()?;
            let handles = spawn_burners(threads)?;
            let cpu = join_all(handles)?;
            let report = guard.report().build()?;
            drop(guard);
            let mut signals = 0;
            for (frames, &count) in &report.data {
                let count = count.max(0) as u64;
                signals += count;
                let Some(i) = thread_index(&frames.thread_name) else {
                    continue;
                };
                let in_burn = frames
                    .frames
                    .iter()
                    .any(|symbols| symbols.iter().any(|s| s.name().contains(BURN_FN)));
                if in_burn {
                    kept[i] += count;
                } else {
                    elsewhere += count;
                }
            }
            fields
                .put("signals", signals)
                .put("weight", signals)
                .put("dropped", 0)
                .put("engine", "setitimer");
            cpu
        }
        _ => return fail(usage),
    };
    fields
        .put("profiler", profiler)
        .put("hz", hz)
        .put("threads", threads)
        .put("elsewhere", elsewhere);
    for (i, (cpu, kept)) in cpu.iter().zip(&kept).enumerate() {
        fields
            .put(&format!("cpu_s_{i}"), format!("{:.6}", cpu.as_secs_f64()))
            .put(&format!("kept_{i}"), kept);
    }
    Ok(fields)
}

// === parent side ===

/// One child's numbers.
#[derive(Debug, Clone)]
struct Outcome {
    cpu_s: Vec<f64>,
    kept: Vec<f64>,
    signals: f64,
    dropped: f64,
    elsewhere: f64,
}

impl Outcome {
    fn from_fields(fields: &Fields, threads: usize) -> Result<Outcome, HarnessError> {
        let mut cpu_s = Vec::new();
        let mut kept = Vec::new();
        for i in 0..threads {
            cpu_s.push(fields.num(&format!("cpu_s_{i}"))?);
            kept.push(fields.num(&format!("kept_{i}"))?);
        }
        Ok(Outcome {
            cpu_s,
            kept,
            signals: fields.num("signals")?,
            dropped: fields.num("dropped")?,
            elsewhere: fields.num("elsewhere")?,
        })
    }

    fn expected(&self, hz: u32) -> Vec<f64> {
        self.cpu_s.iter().map(|c| c * f64::from(hz)).collect()
    }

    /// Kept / expected over all burner threads.
    fn ratio(&self, hz: u32) -> f64 {
        self.kept.iter().sum::<f64>() / self.expected(hz).iter().sum::<f64>()
    }

    fn thread_ratios(&self, hz: u32) -> Vec<f64> {
        self.kept
            .iter()
            .zip(self.expected(hz))
            .map(|(k, e)| k / e)
            .collect()
    }
}

/// Every round's outcome, by (profiler, hz, threads).
#[derive(Debug, Default)]
pub struct AccountingResults {
    rounds: usize,
    outcomes: BTreeMap<(&'static str, u32, usize), Vec<Outcome>>,
}

/// Runs every case for both profilers, `rounds` times; the profiler that
/// goes first alternates between rounds.
pub fn run(rounds: usize) -> Result<AccountingResults, HarnessError> {
    let mut results = AccountingResults {
        rounds,
        ..Default::default()
    };
    for round in 0..rounds {
        for (hz, threads) in CASES {
            for k in 0..PROFILERS.len() {
                let profiler = PROFILERS[(round + k) % PROFILERS.len()];
                eprintln!(
                    "  accounting round {}/{rounds}: {profiler} {hz} Hz, {threads} thread(s)",
                    round + 1
                );
                let fields = child::run(&[
                    "accounting".into(),
                    profiler.into(),
                    hz.to_string(),
                    threads.to_string(),
                ])?;
                let outcome = Outcome::from_fields(&fields, threads)?;
                results
                    .outcomes
                    .entry((profiler, hz, threads))
                    .or_default()
                    .push(outcome);
            }
        }
    }
    Ok(results)
}

/// Smolder's worst median deviation of kept from expected, over the cases.
#[derive(Debug, Clone, Copy)]
pub struct AccountingSummary {
    /// max over cases of |median kept/expected - 1|.
    pub smolder_worst_deviation: f64,
    /// The case it occurred in.
    pub smolder_worst_case: (u32, usize),
}

impl AccountingResults {
    /// Prints the table; returns Smolder's worst case.
    pub fn print(&self) -> Result<AccountingSummary, HarnessError> {
        println!(
            "\n## Accounting: samples kept vs expected (expected = measured thread CPU x Hz), \
             {} s spin per thread, medians over {} rounds",
            BURN.as_secs_f64(),
            self.rounds
        );
        println!(
            "| profiler | Hz | busy threads | CPU s (sum) | expected | kept | kept / expected \
             | per-thread kept / expected | per-thread range, all rounds | signals per CPU-s \
             | dropped |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut summary = AccountingSummary {
            smolder_worst_deviation: 0.0,
            smolder_worst_case: CASES[0],
        };
        for (hz, threads) in CASES {
            for profiler in PROFILERS {
                let Some(outcomes) = self.outcomes.get(&(profiler, hz, threads)) else {
                    return fail(format!(
                        "no results for {profiler} {hz} Hz {threads} threads"
                    ));
                };
                let of = |f: &dyn Fn(&Outcome) -> f64| {
                    median(&outcomes.iter().map(f).collect::<Vec<_>>())
                };
                let cpu = of(&|o| o.cpu_s.iter().sum());
                let expected = of(&|o| o.expected(hz).iter().sum());
                let kept = of(&|o| o.kept.iter().sum());
                let ratio = of(&|o| o.ratio(hz));
                let per_thread: Vec<String> = (0..threads)
                    .map(|i| format!("{:.3}", of(&|o| o.thread_ratios(hz)[i])))
                    .collect();
                let all: Vec<f64> = outcomes.iter().flat_map(|o| o.thread_ratios(hz)).collect();
                let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = all.iter().copied().fold(0.0, f64::max);
                let signal_rate = of(&|o| o.signals / o.cpu_s.iter().sum::<f64>());
                let dropped = of(&|o| o.dropped);
                let elsewhere = of(&|o| o.elsewhere);
                println!(
                    "| {profiler} | {hz} | {threads} | {cpu:.2} | {expected:.0} | {kept:.0}{} \
                     | {ratio:.3} | {} | {lo:.3}-{hi:.3} | {signal_rate:.0} | {dropped:.0} |",
                    if elsewhere > 0.0 {
                        format!(" (+{elsewhere:.0} elsewhere)")
                    } else {
                        String::new()
                    },
                    per_thread.join(" / "),
                );
                if profiler == "smolder" && (ratio - 1.0).abs() > summary.smolder_worst_deviation {
                    summary.smolder_worst_deviation = (ratio - 1.0).abs();
                    summary.smolder_worst_case = (hz, threads);
                }
            }
        }
        println!(
            "\n`signals per CPU-s`: distinct stacks taken (handler runs) while the threads spun, \
             per CPU-second they burnt. CPU-time timers deliver at most 250 signals per second \
             per timer here (HZ=250): at 999 Hz Smolder's per-thread timers keep the account \
             through overrun weights (one signal standing for several expirations), while the \
             pprof crate's single process-wide timer loses the rest."
        );
        Ok(summary)
    }
}
