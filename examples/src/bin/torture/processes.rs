//! Child processes: what a child inherits from a sampled parent.
//!
//! Each step starts three children, re-running this binary with
//! `SMOLDER_TORTURE_ROLE=child-check` where it execs:
//!
//! * with `std::process::Command` as is (glibc's `posix_spawn`, a
//!   `vfork`-like clone);
//! * with a `pre_exec` hook, which makes std use a real `fork` and then
//!   `exec`;
//! * with a raw `fork` and no `exec` at all: the child checks itself with
//!   async-signal-safe calls only and `_exit`s.
//!
//! A child must find no POSIX timer (they are not inherited by `fork`), no
//! armed `ITIMER_PROF`, `SIGPROF` neither blocked nor pending, and must
//! survive burning 20 ms of CPU, which an inherited timer would turn into
//! a fatal `SIGPROF`. After `exec`, `SIGPROF` must be at its default action
//! or ignored: a caught signal's handler is reset by `exec`, but an ignored
//! one stays ignored, and a stopped agent leaves `SIGPROF` ignored. The
//! report counts both.
//!
//! The parent waits with `Child::wait` (which retries `EINTR`, and is hit
//! by the stray signals of [`crate::eintr`]) or with a raw `waitpid` loop.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::{Harness, WORKER_STACK, spawn_worker};
use crate::sys::{self, Disposition};
use crate::{ROLE_VARIABLE, alloc};

#[derive(Default)]
pub struct Counters {
    /// Children started with `Command` (`posix_spawn`).
    pub spawned: AtomicU64,
    /// Children started with `fork` + `exec`.
    pub forked_exec: AtomicU64,
    /// Children forked without `exec`.
    pub forked_only: AtomicU64,
    /// Exec'd children that found `SIGPROF` at its default action.
    pub sigprof_default: AtomicU64,
    /// Exec'd children that found `SIGPROF` ignored.
    pub sigprof_ignored: AtomicU64,
}

/// What a checking child found (its exit status).
const CLEAN_DEFAULT: i32 = 0;
const CLEAN_IGNORED: i32 = 10;
const FOUND_HANDLER: i32 = 20;
const FOUND_TIMERS: i32 = 21;
const FOUND_ITIMER: i32 = 22;
const FOUND_BLOCKED: i32 = 23;
const FOUND_PENDING: i32 = 24;

fn finding(code: i32) -> &'static str {
    match code {
        FOUND_HANDLER => "a SIGPROF handler survived exec",
        FOUND_TIMERS => "POSIX timers were inherited",
        FOUND_ITIMER => "ITIMER_PROF was inherited armed",
        FOUND_BLOCKED => "SIGPROF was blocked",
        FOUND_PENDING => "SIGPROF was pending",
        _ => "unexpected exit status",
    }
}

/// CPU a child burns after its checks: an inherited timer would fire.
const CHILD_BURN: Duration = Duration::from_millis(20);

/// The `child-check` role: runs in the exec'd child.
pub fn child_check() -> ExitCode {
    let code = if sys::posix_timers() > 0 {
        FOUND_TIMERS
    } else if sys::itimer_prof_armed() {
        FOUND_ITIMER
    } else if sys::sigprof_blocked() {
        FOUND_BLOCKED
    } else if sys::sigprof_pending() {
        FOUND_PENDING
    } else {
        match sys::sigprof_disposition() {
            Disposition::Default => CLEAN_DEFAULT,
            Disposition::Ignored => CLEAN_IGNORED,
            Disposition::Handler => FOUND_HANDLER,
        }
    };
    sys::spin_cpu(CHILD_BURN, Duration::from_secs(2));
    ExitCode::from(code as u8)
}

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let activity = harness.activity("fork-exec");
    let exe = std::env::current_exe().expect("the harness knows its own path");
    let mut registered = false;
    vec![spawn_worker(
        harness,
        &activity,
        "fork-exec",
        WORKER_STACK,
        move |harness| {
            if !registered {
                // Stray signals interrupt our waits too.
                harness.eintr.add_target(sys::gettid());
                registered = true;
            }
            step(harness, &exe);
        },
    )]
}

fn step(harness: &Harness, exe: &std::path::Path) {
    let _span = tracing::info_span!("fork_exec").entered();
    let mut command = Command::new(exe);
    command
        .env(ROLE_VARIABLE, "child-check")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    run_exec_child(harness, &mut command, "spawned");
    harness.processes.spawned.fetch_add(1, Relaxed);

    // SAFETY: the hook does nothing (it only makes std fork and exec rather
    // than posix_spawn), so it cannot break the forked child.
    unsafe { command.pre_exec(|| Ok(())) };
    run_exec_child(harness, &mut command, "fork+exec");
    harness.processes.forked_exec.fetch_add(1, Relaxed);

    fork_without_exec(harness);
    harness.processes.forked_only.fetch_add(1, Relaxed);
    alloc::burst(4);
}

fn run_exec_child(harness: &Harness, command: &mut Command, how: &str) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            harness.fail(format!("{how} child: spawn failed: {error}"));
            return;
        }
    };
    let status = child.wait();
    harness.eintr.count_std_op();
    match status {
        Ok(status) => check_exec_status(harness, status, how),
        Err(error) => harness.eintr.std_failure(harness, "Child::wait", &error),
    }
}

fn check_exec_status(harness: &Harness, status: ExitStatus, how: &str) {
    let counters = &harness.processes;
    match (status.code(), status.signal()) {
        (Some(CLEAN_DEFAULT), _) => {
            counters.sigprof_default.fetch_add(1, Relaxed);
        }
        (Some(CLEAN_IGNORED), _) => {
            counters.sigprof_ignored.fetch_add(1, Relaxed);
        }
        (Some(code), _) => harness.fail(format!("{how} child: {}", finding(code))),
        (None, signal) => harness.fail(format!("{how} child was killed by signal {signal:?}")),
    }
}

/// Forks without exec; the child checks what it inherited using only
/// async-signal-safe calls (the parent has many threads, whose locks the
/// child's copy of memory may hold) and `_exit`s.
fn fork_without_exec(harness: &Harness) {
    // SAFETY: after fork the child runs only `forked_child_checks`, which
    // makes async-signal-safe calls and allocates nothing, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = forked_child_checks();
        // SAFETY: leaving the child at once, without running any of the
        // parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        harness.fail(format!("fork failed: {}", std::io::Error::last_os_error()));
        return;
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            break;
        }
        if waited < 0 && sys::errno() == libc::EINTR {
            harness.eintr.raw_waitpid_eintr.fetch_add(1, Relaxed);
            continue;
        }
        harness.fail(format!("waitpid: {}", std::io::Error::last_os_error()));
        return;
    }
    if libc::WIFSIGNALED(status) {
        harness.fail(format!(
            "forked child was killed by signal {}",
            libc::WTERMSIG(status)
        ));
    } else if libc::WEXITSTATUS(status) != 0 {
        harness.fail(format!(
            "forked child: {}",
            finding(libc::WEXITSTATUS(status))
        ));
    }
}

/// The forked child's checks: POSIX timers, `ITIMER_PROF`, the signal mask
/// and pending set, then 20 ms of CPU.
///
/// # Signal safety
/// `open`, `read`, `close`, `getitimer`, `sigprocmask`, `sigpending` and
/// `clock_gettime` only; no allocation, no locks.
fn forked_child_checks() -> i32 {
    if has_posix_timers() {
        return FOUND_TIMERS;
    }
    if sys::itimer_prof_armed() {
        return FOUND_ITIMER;
    }
    if sys::sigprof_blocked() {
        return FOUND_BLOCKED;
    }
    if sys::sigprof_pending() {
        return FOUND_PENDING;
    }
    let start = sys::thread_cpu();
    while sys::thread_cpu() - start < CHILD_BURN {
        sys::burn(16);
    }
    CLEAN_DEFAULT
}

/// Whether `/proc/self/timers` lists a timer, read into a stack buffer.
///
/// # Signal safety
/// `open`, `read` and `close` only.
fn has_posix_timers() -> bool {
    // SAFETY: a valid NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/timers".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buffer = [0u8; 4096];
    let mut found = false;
    loop {
        // SAFETY: reading into a buffer we own, within its length.
        let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read <= 0 {
            break;
        }
        if buffer[..read as usize].windows(3).any(|w| w == b"ID:") {
            found = true;
            break;
        }
    }
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(fd) };
    found
}
