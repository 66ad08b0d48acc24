//! Hard cases: deep stacks, thread churn, libraries loaded late, and the
//! agent's lifecycle rules.

use crate::fixture::{parse_folded, run};

#[test]
fn deep_recursion_is_truncated_and_marked() {
    let run = run("deep", "deep", &[], &[]);
    assert!(run.number("truncated") > 0.0);
    let folded = parse_folded(&run.folded());
    let deep: Vec<_> = folded
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f.ends_with("::recurse")))
        .collect();
    assert!(!deep.is_empty(), "the deep thread was sampled");
    for (frames, _) in &deep {
        assert_eq!(
            frames[0], "[truncated]",
            "cut stacks are marked at the root"
        );
        assert_eq!(
            frames.len(),
            129,
            "128 frames kept, leaf first, plus the marker"
        );
    }
    let (leaf_frames, _) = deep.iter().max_by_key(|(_, w)| *w).unwrap();
    assert!(
        leaf_frames.last().unwrap().ends_with("::deep_leaf"),
        "the leaf end is kept: {leaf_frames:?}"
    );
    assert_eq!(run.number("deepest_stack"), 129.0);
}

#[test]
fn thread_churn_neither_crashes_nor_leaks_timers() {
    let run = run("churn", "churn", &["--threads-total", "3000"], &[]);
    assert!(
        run.number("threads_spawned") >= 1000.0,
        "enough churn happened"
    );
    assert_eq!(run.get("timers_before"), "0");
    assert_eq!(
        run.get("timers_during"),
        run.get("timers_armed"),
        "one kernel timer per sampled thread, none left for exited threads"
    );
    assert_eq!(run.get("timers_armed"), run.get("threads_sampled"));
    assert_eq!(
        run.get("timers_after"),
        "0",
        "dropping the agent deletes every timer"
    );
    assert_eq!(run.get("dropped"), "0");
}

#[test]
fn library_loaded_after_start_is_unwound_through_and_symbolised() {
    let run = run("dlopen", "dlopen", &[], &[]);
    let folded = parse_folded(&run.folded());
    let total: u64 = folded.iter().map(|(_, w)| w).sum();
    let weight_of = |path: &[&str]| -> u64 {
        folded
            .iter()
            .filter(|(frames, _)| {
                frames
                    .windows(path.len())
                    .any(|w| w.iter().zip(path).all(|(f, p)| f.ends_with(p)))
            })
            .map(|(_, w)| w)
            .sum()
    };
    // CPU inside the plugin, with its inlined helper as a frame of its own,
    // unwound back into the host that called it.
    let inside = weight_of(&["::drive_plugin", "plugin_spin", "plugin_inlined_mix"]);
    // CPU in a host function the plugin called: the walk crossed the plugin.
    let through = weight_of(&[
        "::drive_plugin",
        "plugin_call_back",
        "::host_burn_called_from_plugin",
    ]);
    assert!(
        inside * 5 > total,
        "plugin CPU seen: {inside} of {total}\n{}",
        run.folded()
    );
    assert!(
        through * 5 > total,
        "host CPU under the plugin seen: {through} of {total}\n{}",
        run.folded()
    );
    assert!(
        !run.folded().contains("libsmolder_plugin.so+0x"),
        "every plugin address resolves, although the plugin was closed before the profile was built"
    );
}

#[test]
fn lifecycle_rules_hold() {
    let run = run("lifecycle", "lifecycle", &[], &[]);
    assert_eq!(run.get("initial_disposition"), "default");
    assert_eq!(run.get("disabled_enabled"), "false");
    assert_eq!(
        run.get("disabled_disposition"),
        "default",
        "the kill switch installs nothing"
    );
    assert!(
        run.get("disabled_record_error")
            .contains("SMOLDER_ENABLED=false")
    );
    let invalid = run.get("invalid_env_error");
    assert!(
        invalid.contains("SMOLDER_FREQUENCY_HZ") && invalid.contains("1 to 10000"),
        "{invalid}"
    );
    assert_eq!(run.get("running_disposition"), "handler");
    assert!(run.get("second_start_error").contains("already running"));
    assert_eq!(
        run.get("stopped_disposition"),
        "ignored",
        "never back to the default (fatal) action"
    );
    assert_eq!(run.get("timers_after_restarts"), "0");
    assert!(
        run.number("restarted_samples") > 100.0,
        "a restarted agent samples again"
    );
    assert_eq!(
        run.get("forked_child"),
        "exited-0",
        "a child forked from a sampled process starts its own agent and profiles itself"
    );
    assert!(
        run.get("foreign_handler_error")
            .contains("another SIGPROF handler")
    );
    assert_eq!(
        run.get("foreign_disposition"),
        "handler",
        "the other handler is left in place"
    );
}

#[test]
fn a_stuck_collector_costs_the_host_nothing_and_loses_no_count() {
    // The fixture holds the loader's lock for 3 s, which the collector needs
    // every cycle: the agent's consumer is stuck, as it would be behind a
    // slow library constructor.
    let run = run("stall", "stall", &[], &[]);
    assert!(
        run.number("buffer_full_released") > run.number("buffer_full_before"),
        "the buffer filled while the collector was stuck, so the test tested something"
    );
    for burner in 0..2 {
        assert!(
            run.number(&format!("rounds_during_stall.{burner}")) > 0.0,
            "burner {burner} kept working while the buffer was full"
        );
    }
    assert_eq!(
        run.get("final_collected"),
        run.get("final_samples"),
        "every published sample was collected once the collector resumed"
    );
    let folded = parse_folded(&run.folded());
    let burning: u64 = folded
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f.ends_with("::stall_burn")))
        .map(|(_, w)| w)
        .sum();
    let total: u64 = folded.iter().map(|(_, w)| w).sum();
    assert!(
        burning * 2 > total,
        "sampling resumed: the burners are in the profile recorded after the stall ({burning} of {total})"
    );
}
