//! `Agent::stats`: the relations between its numbers that hold whatever
//! the load.

use smolder::{Engine, Stats, Unwinder};

use crate::burn::Burner;
use crate::{TEST_HZ, quiet_builder, serial, wait_until};

/// The timer engines `Stats::engine` may name for a running agent.
const ENGINES: [Engine; 2] = [Engine::PerThreadTimers, Engine::Setitimer];

#[test]
fn stats_hold_their_invariants_after_sampling() {
    let _serial = serial();
    let agent = quiet_builder().start().expect("start");
    let early = agent.stats();
    assert!(
        early.engine.is_some_and(|engine| ENGINES.contains(&engine)),
        "engine {:?}",
        early.engine
    );

    let burners = [
        Burner::start("stats-burner-0"),
        Burner::start("stats-burner-1"),
    ];
    wait_until("200 samples to be collected", || {
        agent.stats().samples_collected >= 200
    });
    let logs: Vec<_> = burners.into_iter().map(Burner::finish).collect();
    // Let the collector drain what the burners left in flight: the handler
    // publishes a record before it counts it, so `samples_collected` may
    // run ahead of `samples` for a moment while threads are being sampled.
    let before = agent.stats().samples;
    wait_until("the collector to catch up", || {
        agent.stats().samples_collected >= before
    });
    let stats = agent.stats();
    let burnt: std::time::Duration = logs.iter().map(|log| log.total_cpu()).sum();

    assert_eq!(stats.engine, early.engine);
    assert_eq!(stats.unwinder, Unwinder::Dwarf);
    assert_eq!(stats.frequency_hz, TEST_HZ);
    assert!(stats.threads_sampled >= 1, "{stats:#?}");
    assert!(stats.timers_armed >= 1, "{stats:#?}");
    assert_counts_consistent(&stats);
    let (p50, p99) = (
        stats.handler_cost_p50_ns.expect("a median handler cost"),
        stats
            .handler_cost_p99_ns
            .expect("a 99th-percentile handler cost"),
    );
    assert!(
        0 < p50 && p50 <= p99,
        "handler cost p50 {p50} ns, p99 {p99} ns"
    );
    assert!(!stats.handler_cpu.is_zero(), "{stats:#?}");
    assert!(
        stats.process_cpu >= burnt,
        "the process used at least what its threads measured: {:?} < {burnt:?}",
        stats.process_cpu
    );
    assert!(
        (0.0..=100.0).contains(&stats.overhead_percent),
        "overhead {} %",
        stats.overhead_percent
    );
    assert!(stats.memory_bytes > 0);
    assert!(stats.uptime > early.uptime, "uptime grows");
    assert!(!stats.spans.exporting, "no OTLP endpoint was configured");
}

/// Every signal handled is a sample or a drop in the handler; every sample
/// stands for at least one timer expiry; the collector has seen no more
/// than the handler recorded.
fn assert_counts_consistent(stats: &Stats) {
    let d = &stats.dropped;
    let in_handler = d.buffer_full
        + d.buffer_contended
        + d.no_unwind_scratch
        + d.tables_busy
        + d.thread_unregistered;
    assert_eq!(stats.signals, stats.samples + in_handler, "{stats:#?}");
    assert_eq!(
        d.total(),
        in_handler + d.stack_table_full + d.aggregate_full,
        "{stats:#?}"
    );
    assert!(stats.samples <= stats.signals, "{stats:#?}");
    assert!(stats.sample_weight >= stats.samples, "{stats:#?}");
    assert!(stats.samples_collected <= stats.samples, "{stats:#?}");
    assert!(stats.samples_collected >= 200, "{stats:#?}");
}
