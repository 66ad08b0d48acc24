//! Torture harness: everything a host process can do to a sampling
//! profiler, at once, for a while, with every loss and stall made a failure.
//!
//! ```text
//! cargo run --release --bin torture                    # 60 s
//! cargo run --release --bin torture -- --seconds 600   # the 10-minute run
//! ```
//!
//! While the agent samples every thread at 10 kHz with the `tracing` layer
//! on and its HTTP endpoint is scraped, the workload process
//!
//! * creates and joins thousands of short threads, some of which exit with
//!   a timer signal pending ([`churn`]);
//! * loads, calls and unloads a shared library in a loop ([`plugin`]);
//! * hammers the allocator, from every thread ([`alloc`]);
//! * panics and catches the panic deep in a call chain, so that samples land
//!   in the unwinder ([`panics`]);
//! * spawns, forks and execs children that check they inherited no timer
//!   and no fatal signal ([`processes`]);
//! * blocks in syscalls that can fail with `EINTR`, under a stream of stray
//!   `SIGPROF`s, and checks that std's retrying APIs never fail ([`eintr`]);
//! * recurses deeper than the agent's depth limit ([`deep`]);
//! * scrapes the HTTP routes ([`scrape`]);
//! * stops the agent and starts a new one every few seconds
//!   ([`lifecycle`]).
//!
//! Each activity bumps a progress counter; a watchdog ([`watchdog`]) fails
//! the run when one stalls for 10 s, and samples the RSS every second. The
//! lifecycle thread checks the agent's sample accounting, exactly whenever
//! the process is quiet. At the end the workload prints a report
//! ([`report`]) and exits 0 only if every check passed.
//!
//! The workload runs as a child of this same binary ([`supervisor`]), so
//! that a crash (a fatal signal) or a hang the watchdog could not catch is
//! still reported as a clear failure. `docs/reliability.md` explains each
//! check and what it proves.

// A binary's root resolves modules next to itself; ours live in torture/.
#[path = "torture/alloc.rs"]
mod alloc;
#[path = "torture/churn.rs"]
mod churn;
#[path = "torture/deep.rs"]
mod deep;
#[path = "torture/eintr.rs"]
mod eintr;
#[path = "torture/harness.rs"]
mod harness;
#[path = "torture/lifecycle.rs"]
mod lifecycle;
#[path = "torture/options.rs"]
mod options;
#[path = "torture/panics.rs"]
mod panics;
#[path = "torture/plugin.rs"]
mod plugin;
#[path = "torture/processes.rs"]
mod processes;
#[path = "torture/report.rs"]
mod report;
#[path = "torture/scrape.rs"]
mod scrape;
#[path = "torture/supervisor.rs"]
mod supervisor;
#[path = "torture/sys.rs"]
mod sys;
#[path = "torture/watchdog.rs"]
mod watchdog;

use std::process::ExitCode;

/// Which part of the harness this process plays.
const ROLE_VARIABLE: &str = "SMOLDER_TORTURE_ROLE";

fn main() -> ExitCode {
    let options = match options::Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("torture: {message}\n\n{}", options::USAGE);
            return ExitCode::from(2);
        }
    };
    match std::env::var(ROLE_VARIABLE).as_deref() {
        Ok("workload") => harness::run_workload(options),
        Ok("child-check") => processes::child_check(),
        Ok(other) => {
            eprintln!("torture: unknown {ROLE_VARIABLE}={other:?}");
            ExitCode::from(2)
        }
        Err(_) => supervisor::supervise(&options),
    }
}
