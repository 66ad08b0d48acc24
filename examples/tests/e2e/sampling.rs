//! Sampling accuracy: where the CPU went, and how much of it was seen.

use std::sync::OnceLock;

use crate::fixture::{Run, leaf_weight, parse_folded, run};

/// The split fixture at 999 Hz on two threads for six seconds: about 3000
/// distinct samples, enough for the shares to be within ±3 points with
/// wide statistical margin. Shared with the format tests.
pub fn long_split() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        run(
            "split-long",
            "split",
            &["--threads", "2", "--hz", "999", "--seconds", "6"],
            &[],
        )
    })
}

/// The share of hot vs cold CPU, in percent, from the folded stacks.
fn hot_share(run: &Run) -> f64 {
    let folded = parse_folded(&run.folded());
    let hot = leaf_weight(&folded, "::hot_seventy") as f64;
    let cold = leaf_weight(&folded, "::cold_thirty") as f64;
    assert!(
        hot + cold > 0.0,
        "no samples in the hot functions:\n{}",
        run.folded()
    );
    100.0 * hot / (hot + cold)
}

/// Each busy thread's recorded weight vs frequency × the CPU it measured.
fn assert_counts_match_cpu(run: &Run, hz: f64, threads: usize) {
    for i in 0..threads {
        let name = format!("busy-{i}");
        let cpu_seconds = run.number(&format!("cpu_ns.{name}")) / 1e9;
        let expected = hz * cpu_seconds;
        let recorded = run.number(&format!("weight.{name}"));
        let error = (recorded - expected) / expected;
        assert!(
            error.abs() <= 0.05,
            "{name} at {hz} Hz: recorded {recorded} samples, expected {expected:.0} from {cpu_seconds:.3} CPU-s ({:+.1} %)",
            error * 100.0
        );
    }
    assert_eq!(
        run.get("dropped"),
        "0",
        "no sample may be lost at this load"
    );
}

#[test]
fn seventy_thirty_split_within_three_points() {
    let run = long_split();
    let share = hot_share(run);
    assert!(
        (share - 70.0).abs() <= 3.0,
        "hot_seventy got {share:.1} % of the split, expected 70 ± 3"
    );
    assert_eq!(run.get("engine"), "per-thread-timers");
}

#[test]
fn sample_counts_match_cpu_time_on_one_and_two_threads() {
    assert_counts_match_cpu(long_split(), 999.0, 2);
    for (threads, hz) in [(1, 99), (2, 99), (1, 999)] {
        let (t, h) = (threads.to_string(), hz.to_string());
        let run = run(
            &format!("split-{t}-{h}"),
            "split",
            &["--threads", &t, "--hz", &h, "--seconds", "3"],
            &[],
        );
        assert_counts_match_cpu(&run, hz as f64, threads);
        // Leaf functions are right at any rate, whatever the statistics.
        let share = hot_share(&run);
        assert!(
            (50.0..90.0).contains(&share),
            "{threads} threads at {hz} Hz: hot share {share:.1} %"
        );
    }
}

#[test]
fn stacks_are_whole_from_thread_start_to_leaf() {
    let folded = parse_folded(&long_split().folded());
    let (frames, _) = folded
        .iter()
        .filter(|(frames, _)| frames.last().is_some_and(|f| f.ends_with("::hot_seventy")))
        .max_by_key(|(_, w)| *w)
        .expect("a hot stack");
    let chain: Vec<&String> = frames.iter().filter(|f| f.contains("::chain_")).collect();
    assert_eq!(
        chain.len(),
        21,
        "the 21-deep chain is unwound in full: {frames:?}"
    );
    let position = |suffix: &str| frames.iter().position(|f| f.ends_with(suffix));
    assert!(
        position("::chain_01") < position("::chain_21"),
        "root first: {frames:?}"
    );
    assert!(position("::split_work") < position("::hot_seventy"));
    assert!(
        frames
            .first()
            .is_some_and(|f| f == "clone3" || f == "start_thread" || f.starts_with("__clone")),
        "walk reaches the thread's entry: {frames:?}"
    );
}

#[test]
fn frame_pointer_mode_still_starts_at_the_interrupted_leaf() {
    // The workspace builds without frame pointers, so the chain is broken;
    // the leaf (taken from the interrupted instruction pointer) must not be.
    let run = run(
        "split-fp",
        "split",
        &["--threads", "1", "--hz", "999", "--seconds", "2"],
        &[("SMOLDER_UNWINDER", "frame-pointers")],
    );
    let share = hot_share(&run);
    assert!(
        (60.0..80.0).contains(&share),
        "hot share {share:.1} % with frame-pointer mode"
    );
}

#[test]
fn setitimer_engine_samples_when_asked_for() {
    let run = run(
        "split-setitimer",
        "split",
        &["--threads", "1", "--hz", "99", "--seconds", "2"],
        &[("SMOLDER_ENGINE", "setitimer")],
    );
    assert_eq!(run.get("engine"), "setitimer");
    let cpu_seconds = run.number("cpu_ns.busy-0") / 1e9;
    let recorded = run.number("weight.busy-0");
    let expected = 99.0 * cpu_seconds;
    assert!(
        (recorded - expected).abs() / expected <= 0.10,
        "setitimer recorded {recorded}, expected about {expected:.0}"
    );
}
