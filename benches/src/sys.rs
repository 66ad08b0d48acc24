//! The few operating-system calls the harness makes itself: installing the
//! empty `SIGPROF` handler (the floor), sending `SIGPROF` to the calling
//! thread, reading a thread's CPU clock, reading `/proc/self/status` and
//! `/proc/<pid>/stat`, pinning threads to CPUs and signalling the processes
//! the harness started.
//!
//! Every `unsafe` block in the harness lives here, so the measuring code
//! reads as plain Rust.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Invocations of [`empty_handler`]. Only the measuring thread is signalled
/// while the empty handler is installed, so a plain load and store (no
/// bus-locked add) keeps an exact count at almost no cost.
static EMPTY_HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);

/// The floor: an `SA_SIGINFO` handler that does nothing but count itself.
///
/// # Signal safety
/// Two relaxed atomic accesses.
extern "C" fn empty_handler(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    EMPTY_HANDLER_RUNS.store(EMPTY_HANDLER_RUNS.load(Relaxed) + 1, Relaxed);
}

/// Installs [`empty_handler`] for `SIGPROF` with the flags Smolder uses
/// (`SA_SIGINFO | SA_RESTART | SA_ONSTACK`), so the floor pays the same
/// delivery path. Returns the action it replaced.
pub fn install_empty_handler() -> io::Result<libc::sigaction> {
    // SAFETY: all-zero is a valid `sigaction`; every field that matters is
    // set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = empty_handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    // SAFETY: `sa_mask` is a sigset we own.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: all-zero is a valid `sigaction`, overwritten by the call.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a valid action whose handler has the `SA_SIGINFO` signature,
    // and a place we own for the previous one.
    if unsafe { libc::sigaction(libc::SIGPROF, &action, &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(previous)
}

/// While alive, `SIGPROF` goes to [`empty_handler`]; dropping it puts the
/// previous action (a profiler's handler) back.
///
/// This lets a child measure the floor in batches interleaved with the
/// profiler's, in the same process and moments apart, so that the ratio of
/// the two does not carry the drift of a shared machine. Signals the
/// profiler's own timer sends meanwhile reach the empty handler instead;
/// at the 1 Hz the cost children use, that is a sample or two at most.
pub struct EmptyHandlerSwap {
    previous: libc::sigaction,
}

impl EmptyHandlerSwap {
    /// Swaps the empty handler in.
    pub fn install() -> io::Result<EmptyHandlerSwap> {
        Ok(EmptyHandlerSwap {
            previous: install_empty_handler()?,
        })
    }
}

impl Drop for EmptyHandlerSwap {
    fn drop(&mut self) {
        // SAFETY: restores an action the kernel returned to us unchanged.
        unsafe { libc::sigaction(libc::SIGPROF, &self.previous, std::ptr::null_mut()) };
    }
}

/// How many times [`empty_handler`] has run.
pub fn empty_handler_runs() -> u64 {
    EMPTY_HANDLER_RUNS.load(Relaxed)
}

/// Sends `SIGPROF` to the calling thread and returns once it has been
/// handled (a signal to oneself is delivered before the syscall returns).
///
/// This makes the same three syscalls as Smolder's
/// `Agent::__sample_current_thread` (`gettid`, `getpid`,
/// `rt_tgsigqueueinfo` with `si_code = SI_TIMER`), so that the floor, the
/// `pprof` crate and Smolder pay an identical sending cost and differ only in
/// their handlers. The `pprof` crate's handler ignores `siginfo`, so it
/// samples on these signals as on its own timer's.
pub fn send_sigprof_to_self() -> bool {
    // SAFETY: all-zero is a valid `siginfo_t`; the fields a timer signal
    // carries are set below.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = libc::SIGPROF;
    info.si_code = libc::SI_TIMER;
    // SAFETY: gettid and getpid have no preconditions and cannot fail;
    // rt_tgsigqueueinfo targets our own thread with a siginfo we own, and the
    // kernel accepts any si_code for a signal a process sends itself.
    let status = unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            tid,
            libc::SIGPROF,
            &raw mut info,
        )
    };
    status == 0
}

/// CPU time consumed so far by the calling thread (user + system, signal
/// handlers included), from `CLOCK_THREAD_CPUTIME_ID`.
pub fn thread_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process, every thread's (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec we own; the CPU-time clocks of
    // the calling thread and process cannot fail.
    unsafe { libc::clock_gettime(clock, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Returns the allocator's free memory to the kernel (glibc
/// `malloc_trim(0)`), so that a following RSS reading counts memory still
/// held, not memory freed but cached by `malloc`.
pub fn release_free_heap() {
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    unsafe { libc::malloc_trim(0) };
}

/// Entries under `/usr/lib/debug/.build-id`: detached debug info that a
/// symboliser following build ids or debug links may load (Debian's
/// `*-dbg` packages install there). Zero when absent.
pub fn detached_debug_info_entries() -> usize {
    std::fs::read_dir("/usr/lib/debug/.build-id").map_or(0, |dir| dir.count())
}

/// Hides detached debug info from this process alone: moves it into a
/// private mount namespace and mounts an empty tmpfs over `/usr/lib/debug`,
/// so a symboliser sees the machine as if no `*-dbg` package were
/// installed (the usual production container). Needs root
/// (`CAP_SYS_ADMIN`) and a single-threaded process; nothing outside this
/// process is affected.
pub fn hide_detached_debug_info() -> io::Result<()> {
    let check = |status: libc::c_int| {
        if status == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: unshare takes flags only; the caller is single-threaded, as
    // CLONE_NEWNS requires.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // Make every mount private in the new namespace first, so the tmpfs
    // below cannot propagate back to the host's namespace.
    // SAFETY: valid NUL-terminated paths; null source, type and data are
    // allowed for a propagation change.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: valid NUL-terminated strings; tmpfs takes no data.
    check(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/usr/lib/debug".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
}

/// A set of CPUs a thread may run on (`sched_setaffinity`).
#[derive(Clone, Copy)]
pub struct Affinity(libc::cpu_set_t);

impl Affinity {
    /// The calling thread's current set.
    pub fn of_current_thread() -> io::Result<Affinity> {
        // SAFETY: all-zero is a valid (empty) `cpu_set_t`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; the size and pointer describe
        // a set we own.
        let status =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if status != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Affinity(set))
    }

    /// Only `cpu`.
    pub fn only(cpu: usize) -> Affinity {
        // SAFETY: all-zero is a valid (empty) `cpu_set_t`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        Affinity(set)
    }

    /// The CPUs in the set, in ascending order.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET bounds-checks the index against the set.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &self.0) })
            .collect()
    }

    /// Binds the calling thread (and the threads and processes it starts
    /// afterwards, which inherit it) to this set.
    pub fn apply_to_current_thread(&self) -> io::Result<()> {
        // SAFETY: pid 0 is the calling thread; the size and pointer describe
        // a set we own.
        let status =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if status != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sends `signal` to process `pid` (one the harness started).
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers; the caller names its own child.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clock ticks per second, the unit of the CPU times in `/proc/*/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// User + system CPU time, in clock ticks, from the text of a
/// `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` file (fields 14 and
/// 15; the command name before them may contain spaces and parentheses).
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by process `pid`, all threads together, and by
/// those of its threads whose name starts with `prefix`.
pub fn process_cpu_ticks(pid: u32, prefix: &str) -> io::Result<(u64, u64)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat");
    let total =
        stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?).ok_or_else(bad)?;
    let mut matching = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        // A thread may end between listing and reading: skip it.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        if comm.starts_with(prefix) {
            matching += stat_cpu_ticks(&stat).ok_or_else(bad)?;
        }
    }
    Ok((total, matching))
}

/// Resident-memory figures of this process, in KiB, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: all resident pages.
    pub total_kib: u64,
    /// `RssAnon`: heap, stacks and anonymous mappings.
    pub anon_kib: u64,
    /// `RssFile`: resident pages of mapped files (binaries, libraries,
    /// files mapped for symbolisation).
    pub file_kib: u64,
}

impl Rss {
    /// Reads the current figures.
    pub fn read() -> io::Result<Rss> {
        Ok(Rss::parse(&std::fs::read_to_string("/proc/self/status")?))
    }

    /// Extracts the figures from the text of a `status` file; absent lines
    /// read as zero.
    pub fn parse(status: &str) -> Rss {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Rss {
            total_kib: field("VmRSS"),
            anon_kib: field("RssAnon"),
            file_kib: field("RssFile"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let status =
            "Name:\tx\nVmRSS:\t    4321 kB\nRssAnon:\t    1000 kB\nRssFile:\t    3000 kB\n";
        assert_eq!(
            Rss::parse(status),
            Rss {
                total_kib: 4321,
                anon_kib: 1000,
                file_kib: 3000
            }
        );
        assert_eq!(Rss::parse("VmRSSX: 5 kB\n").total_kib, 0);
    }

    #[test]
    fn stat_cpu_ticks_skips_odd_command_names() {
        let stat = "1234 (tokio (rt) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9";
        assert_eq!(stat_cpu_ticks(stat), Some(281));
        assert_eq!(stat_cpu_ticks("1234 (x) S 1"), None);
    }

    #[test]
    fn cpu_ticks_of_named_threads() {
        let burner = std::thread::Builder::new()
            .name("probe-burner".into())
            .spawn(|| {
                let until = std::time::Instant::now() + Duration::from_millis(80);
                let mut x = 0u64;
                while std::time::Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                }
                std::thread::sleep(Duration::from_millis(200));
                x
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let (total, burnt) = process_cpu_ticks(std::process::id(), "probe-burn").unwrap();
        let (_, none) = process_cpu_ticks(std::process::id(), "no-such-thread").unwrap();
        burner.join().unwrap();
        // The kernel scales a thread's and the whole process's tick counts
        // separately (each split into user and system time from its own
        // samples), so one thread can show a tick or two more than the
        // process: a bound, not an equality.
        assert!(burnt > 0 && total + 2 >= burnt, "{burnt} of {total}");
        assert_eq!(none, 0);
    }

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(thread_cpu_time() > before, "{x}");
    }
}
