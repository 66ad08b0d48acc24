//! Runs the torture harness (`src/bin/torture.rs`, described in
//! `docs/reliability.md`) for 60 s, as CI does, and fails if any of its
//! checks failed, the workload crashed or it hung.
//!
//! Only release builds run it (`cargo test --release --test torture`, as CI
//! does): in a debug build the agent's symbolisation of the 125 MB debug
//! binary takes longer than the harness's 10 s watchdog allows, so there the
//! test is marked ignored (`cargo test` lists it as such; `--ignored` runs it
//! anyway).

use std::process::Command;

/// `SMOLDER_TORTURE_SECONDS=N` changes the duration for a local run.
/// `SMOLDER_TORTURE_SECONDS=0` is an explicit opt-out: the test prints that
/// it skipped the run and returns, so the runner reports it as passed
/// although nothing ran. Set it only when you mean to skip the run.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "debug build: symbolising the debug binary outlasts the watchdog; \
              run `cargo test --release --test torture`"
)]
fn torture_harness_passes_every_check() {
    let seconds = std::env::var("SMOLDER_TORTURE_SECONDS").unwrap_or_else(|_| "60".to_owned());
    if seconds == "0" {
        eprintln!("SMOLDER_TORTURE_SECONDS=0: torture run skipped on request, nothing was checked");
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_torture"))
        .args(["--seconds", &seconds])
        .output()
        .expect("running the torture harness");
    let report = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    // Shown with `--nocapture`, and on failure.
    println!("{report}");
    if !errors.is_empty() {
        eprintln!("stderr:\n{errors}");
    }
    assert!(
        output.status.success() && report.contains("torture: PASS"),
        "the torture harness failed ({}); report:\n{report}\nstderr:\n{errors}",
        output.status
    );
}
