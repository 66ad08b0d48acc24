//! The supervisor: runs the workload as a child process and reports how it
//! ended.
//!
//! A crash kills the process it happens in, report and all, so the
//! workload runs in a child (this binary again, with
//! `SMOLDER_TORTURE_ROLE=workload`) that shares our stdout. The supervisor
//! turns a death by signal into a plain failure message, and enforces a
//! hard time limit in case the workload hangs so badly that its own
//! watchdog cannot act: it then prints what every thread of the workload
//! is doing, kills it and fails.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use crate::options::Options;
use crate::{ROLE_VARIABLE, sys};

/// How long past its configured duration the workload may take (its own
/// shutdown deadline is 60 s, audits and stops included).
const HARD_LIMIT_SLACK: Duration = Duration::from_secs(120);

pub fn supervise(options: &Options) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            println!("torture: FAIL: cannot find this executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    let limit = options.duration + HARD_LIMIT_SLACK;
    let mut command = Command::new(exe);
    command
        .args(options.to_args())
        .env(ROLE_VARIABLE, "workload");
    // SAFETY: prctl is async-signal-safe; the hook touches nothing else.
    unsafe {
        command.pre_exec(|| {
            // The workload dies with us (a test runner killing us, say).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            println!("torture: FAIL: cannot start the workload: {error}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                println!(
                    "torture: FAIL: the workload did not finish within {} s; its threads:\n{}",
                    limit.as_secs(),
                    sys::describe_threads(&child.id().to_string())
                );
                let _ = child.kill();
                let _ = child.wait();
                return ExitCode::FAILURE;
            }
            Err(error) => {
                println!("torture: FAIL: waiting for the workload: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    verdict(status)
}

/// Prints the verdict line for the workload's exit status.
fn verdict(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(0), _) => {
            println!("torture: PASS");
            ExitCode::SUCCESS
        }
        (Some(3), _) => {
            println!("torture: FAIL: the watchdog ended the workload (see FATAL above)");
            ExitCode::FAILURE
        }
        (Some(code), _) => {
            println!("torture: FAIL: the workload exited with status {code} (failed checks above)");
            ExitCode::FAILURE
        }
        (None, signal) => {
            let signal = signal.unwrap_or(0);
            println!(
                "torture: FAIL: the workload crashed: killed by signal {signal} ({}){}",
                signal_name(signal),
                if status.core_dumped() {
                    ", core dumped"
                } else {
                    ""
                }
            );
            ExitCode::FAILURE
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGPROF => "SIGPROF",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "another signal",
    }
}
