//! `Agent::record`: what a profile holds after a known workload.

use std::io::Read as _;
use std::sync::OnceLock;
use std::time::Duration;

use smolder::Profile;

use crate::burn::{BURN_FUNCTION, BurnLog, record_while_burning, thread_weight};
use crate::{TEST_HZ, quiet_builder, serial};

/// One recording of two burning threads, shared by the tests here (each
/// recording symbolises a profile, which is slow in debug builds).
fn two_burners() -> &'static (Profile, Vec<BurnLog>) {
    static RECORDED: OnceLock<(Profile, Vec<BurnLog>)> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let _serial = serial();
        let agent = quiet_builder().start().expect("start");
        record_while_burning(&agent, Duration::from_millis(1500), 2)
    })
}

#[test]
fn record_counts_the_cpu_each_burning_thread_spent() {
    let (profile, logs) = two_burners();

    assert_eq!(profile.frequency_hz(), TEST_HZ);
    let from = profile.start_time();
    let to = from + profile.duration();
    let period = 1.0 / f64::from(TEST_HZ);
    for log in logs {
        let (thread, burning) = thread_weight(profile, log.tid, BURN_FUNCTION);
        // The window's edges fall between two of the burner's log points, so
        // the CPU it burnt inside is known within a slice at each end.
        let (inside, around) = log.cpu_between(from, to);
        let least = (inside.as_secs_f64() / period * 0.8).floor() as u64;
        let most = (around.as_secs_f64() / period * 1.2).ceil() as u64 + 2;
        assert!(
            inside >= Duration::from_millis(100),
            "{} burnt only {inside:?} of CPU inside the window: the machine is too busy for this test",
            log.name
        );
        assert!(
            (least..=most).contains(&thread),
            "{} burnt {inside:?}..{around:?} of CPU in the window, so at {TEST_HZ} Hz it should have \
             {least}..={most} samples; the profile has {thread}",
            log.name
        );
        // Nearly all of that time goes to the burning function (the rest
        // reads the clocks between slices).
        assert!(
            burning * 10 >= thread * 8,
            "{} of {}'s {thread} samples name {BURN_FUNCTION}:\n{}",
            burning,
            log.name,
            profile.folded()
        );
        let named = profile
            .samples()
            .filter(|s| s.thread_id() == log.tid)
            .all(|s| s.thread_name() == log.name);
        assert!(named, "samples of {} carry its thread name", log.name);
    }
    let burners: u64 = logs
        .iter()
        .map(|log| thread_weight(profile, log.tid, "").0)
        .sum();
    assert!(profile.sample_count() >= burners);
    let per_sample = profile.cpu_time().as_secs_f64() / profile.sample_count() as f64;
    assert!(
        (per_sample - period).abs() <= period * 0.01,
        "each sample stands for one period of CPU ({per_sample} s vs {period} s)"
    );
}

#[test]
fn profile_renders_in_every_format() {
    let (profile, _) = two_burners();
    assert!(profile.sample_count() > 0, "no samples to render");

    let folded = profile.folded();
    assert!(folded.contains(BURN_FUNCTION), "folded:\n{folded}");
    for line in folded.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
        assert!(!stack.is_empty(), "{line:?}");
        assert!(count.parse::<u64>().is_ok_and(|c| c > 0), "{line:?}");
    }

    let mut svg = Vec::new();
    profile.write_flamegraph(&mut svg).expect("flame graph");
    let svg = String::from_utf8(svg).expect("an SVG is text");
    assert!(svg.contains("<svg") && svg.contains(BURN_FUNCTION));

    let pprof = profile.to_pprof().expect("pprof");
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(pprof.as_slice())
        .read_to_end(&mut decoded)
        .expect("pprof output is gzipped");
    // The string table of the protobuf holds the function names verbatim.
    let found = decoded
        .windows(BURN_FUNCTION.len())
        .any(|w| w == BURN_FUNCTION.as_bytes());
    assert!(found, "the pprof string table names {BURN_FUNCTION}");
}
