//! In-process tests of the public API: an agent started in this very test
//! process, sampling this process's own threads under real signals.
//!
//! Only one agent may run per process, so every test takes [`serial`]
//! first; that also makes the tests that change `SMOLDER_*` variables the
//! only ones looking at the environment while they do. The HTTP endpoint is
//! off unless a test is about it (`127.0.0.1:6060`, the default, may be
//! taken on the machine running the tests).
//!
//! No test asserts a wall-clock timing. Sample counts are checked against
//! the CPU time the sampled thread measured itself with
//! `CLOCK_THREAD_CPUTIME_ID`; waits for samples to arrive have deadlines far
//! beyond what they need.

// Linux on x86_64 or aarch64, unless `--cfg smolder_unsupported` (see
// agent/build.rs): where the agent cannot sample, `start` only says so.
#![cfg(smolder_sampling)]

mod burn;
mod environment;
mod http;
mod lifecycle;
mod sampling;
mod stats;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use smolder::{Agent, AgentBuilder};

/// Serialises the tests of this binary: one agent per process. A test that
/// failed while holding the lock does not fail the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rate most tests sample at: high enough for samples to arrive within
/// a fraction of a CPU-second, low enough to cost nothing.
pub const TEST_HZ: u32 = 499;

/// An agent builder without the HTTP endpoint, at [`TEST_HZ`].
pub fn quiet_builder() -> AgentBuilder {
    Agent::builder().http_disabled().frequency_hz(TEST_HZ)
}

/// How long a test waits for something the agent does within a few
/// collector cycles; only a machine that has stopped would need it all.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `done` until it holds, failing the test with `what` after
/// [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sets `SMOLDER_*` variables for the life of the guard and restores the
/// previous values when dropped, also when the test fails.
pub struct EnvGuard {
    saved: Vec<(&'static str, Option<std::ffi::OsString>)>,
}

impl EnvGuard {
    /// Takes the [`serial`] guard as proof that no other test of this binary
    /// reads the environment meanwhile.
    pub fn set(_serial: &MutexGuard<'static, ()>, vars: &[(&'static str, &str)]) -> EnvGuard {
        let mut saved = Vec::new();
        for &(name, value) in vars {
            saved.push((name, std::env::var_os(name)));
            // SAFETY: no other thread reads the environment meanwhile: the
            // other tests of this binary wait for the serial lock, and the
            // tests change variables only while no agent (whose threads
            // could read them) is running.
            unsafe { std::env::set_var(name, value) };
        }
        EnvGuard { saved }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (name, value) in self.saved.drain(..).rev() {
            // SAFETY: as in `EnvGuard::set`; the guard lives within the lock.
            unsafe {
                match value {
                    Some(value) => std::env::set_var(name, value),
                    None => std::env::remove_var(name),
                }
            }
        }
    }
}
