//! Small Linux helpers: `/proc` readers, signals, CPU burning, a cheap
//! random number generator, and output that takes no lock.

use std::cell::Cell;
use std::time::{Duration, Instant};

// === /proc ===

/// A `Name:   value kB` line of `/proc/<pid>/status`, as a number.
fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Resident set size, KiB.
pub fn rss_kib() -> Option<u64> {
    status_field("VmRSS:")
}

/// Threads in the process.
pub fn thread_count() -> Option<u64> {
    status_field("Threads:")
}

/// (bytes allocated, bytes free but kept) in glibc's malloc, all arenas
/// and `mmap`ed blocks included: tells a leak (allocated grows) from
/// fragmentation (free grows).
pub fn malloc_usage() -> (u64, u64) {
    // SAFETY: mallinfo2 has no preconditions; it locks each arena briefly.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) as u64, info.fordblks as u64)
}

/// Open file descriptors.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// POSIX timers (`timer_create`) that exist in this process.
pub fn posix_timers() -> usize {
    std::fs::read_to_string("/proc/self/timers")
        .map(|t| t.lines().filter(|l| l.starts_with("ID:")).count())
        .unwrap_or(0)
}

/// `(tid, comm)` of every thread of the process `pid` (`"self"` works).
pub fn threads_of(pid: &str) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(i32, String)> = entries
        .filter_map(|e| {
            let tid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((tid, comm.trim_end().to_owned()))
        })
        .collect();
    threads.sort();
    threads
}

/// One line per thread of `pid`: id, name, scheduler state, the kernel
/// function it sleeps in and the syscall it is blocked in. What a hung
/// process is doing, without a debugger.
pub fn describe_threads(pid: &str) -> String {
    let mut out = String::new();
    for (tid, comm) in threads_of(pid) {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        // The state follows the parenthesised name, which may hold spaces.
        let stat = read("stat");
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        let syscall = read("syscall");
        let syscall = syscall.split_whitespace().next().unwrap_or("?");
        out.push_str(&format!(
            "  {tid:>7} {comm:<16} state={state} wchan={} syscall={syscall}\n",
            read("wchan")
        ));
    }
    out
}

// === signals and timers ===

/// What `SIGPROF` does in this process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Default,
    Ignored,
    Handler,
}

pub fn sigprof_disposition() -> Disposition {
    // SAFETY: all-zero is a valid `sigaction`; a null new action only
    // queries the current one, which never fails for SIGPROF.
    let handler = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut current);
        current.sa_sigaction
    };
    match handler {
        libc::SIG_DFL => Disposition::Default,
        libc::SIG_IGN => Disposition::Ignored,
        _ => Disposition::Handler,
    }
}

/// Whether the process-wide profiling timer (`setitimer(ITIMER_PROF)`) is
/// armed.
pub fn itimer_prof_armed() -> bool {
    // SAFETY: all-zero is a valid `itimerval`; `getitimer` writes into it.
    let mut current: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getitimer(libc::ITIMER_PROF, &mut current) };
    current.it_value.tv_sec != 0 || current.it_value.tv_usec != 0
}

/// Whether `SIGPROF` is pending for the calling thread (or the process).
pub fn sigprof_pending() -> bool {
    // SAFETY: all-zero is a valid `sigset_t`; `sigpending` fills it.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to the set.
    unsafe {
        libc::sigpending(&mut pending);
        libc::sigismember(&pending, libc::SIGPROF) == 1
    }
}

/// Whether the calling thread blocks `SIGPROF`.
pub fn sigprof_blocked() -> bool {
    // SAFETY: all-zero is a valid `sigset_t`; a null new set only queries.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; querying the mask never fails.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        libc::sigismember(&mask, libc::SIGPROF) == 1
    }
}

/// Blocks `SIGPROF` on the calling thread, for the rest of its life.
pub fn block_sigprof() {
    // SAFETY: the set is initialised by `sigemptyset` before use; changing
    // the calling thread's own mask has no other precondition.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPROF);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The calling thread's kernel id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Sends `SIGPROF` to thread `tid` of this process, as `kill -PROF` or
/// another tool would: no timer cookie, so the agent must ignore it.
pub fn send_stray_sigprof(tid: i32) -> bool {
    // SAFETY: tgkill to a thread of our own process; an exited thread only
    // makes it fail with ESRCH.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGPROF) == 0 }
}

/// This thread's `errno`.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// === CPU ===

pub use smolder_examples::thread_cpu;

/// A few microseconds of arithmetic the optimiser cannot remove.
#[inline(never)]
pub fn burn(rounds: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ rounds;
    for i in 0..rounds * 64 {
        x = x.rotate_left(7) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x)
}

/// Burns `cpu` of the calling thread's CPU time (so its CPU timer fires),
/// giving up after `wall_limit` of wall time on a crowded machine.
pub fn spin_cpu(cpu: Duration, wall_limit: Duration) {
    let (cpu_start, wall_start) = (thread_cpu(), Instant::now());
    while thread_cpu() - cpu_start < cpu && wall_start.elapsed() < wall_limit {
        burn(16);
    }
}

// === randomness ===

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A per-thread xorshift generator; only spread matters here.
pub fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x = (gettid() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos ^ 0x5DEE_CE66;
            x |= 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// Uniform in `low..high` (`low` if the range is empty).
pub fn random_range(low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    low + random_u64() % (high - low)
}

/// A duration uniform in `[low, high)`.
pub fn random_duration(low: Duration, high: Duration) -> Duration {
    Duration::from_nanos(random_range(low.as_nanos() as u64, high.as_nanos() as u64))
}

// === output ===

/// Writes to stdout with `write(2)`, taking no lock: usable when another
/// thread may hold stdout's lock forever (the watchdog's last words).
pub fn raw_print(text: &str) {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writing from a valid buffer of the given length.
        let written = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if written <= 0 {
            if written < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        rest = &rest[written as usize..];
    }
}
