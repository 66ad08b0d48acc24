//! Every clock the agent reads, in one place: `clock_gettime` on the
//! monotonic clock, the process's CPU clock, and any thread's CPU clock.
//!
//! # Signal safety
//! All of it: `clock_gettime` is async-signal-safe (the vDSO serves the
//! monotonic clock without entering the kernel), and the rest is arithmetic.

use std::time::Duration;

/// `CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK` from the kernel's
/// `posix-timers.h`: a thread's CPU clock counting all its run time.
const THREAD_CPU_CLOCK_BITS: u32 = 2 | 4;

/// Reads `clock`, or `None` if it does not exist (a thread's clock after the
/// thread exited).
#[inline(always)]
fn read(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer; an invalid clock only makes the
    // call fail.
    let status = unsafe { libc::clock_gettime(clock, &mut now) };
    (status == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the time base of samples, buckets and
/// captures.
#[inline(always)]
pub(crate) fn monotonic_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC).map_or(0, |now| now.as_nanos() as u64)
}

/// CPU time the whole process has used.
pub(crate) fn process_cpu() -> Duration {
    read(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or_default()
}

/// CPU time the calling thread has used, in nanoseconds.
pub(crate) fn current_thread_cpu_ns() -> u64 {
    read(libc::CLOCK_THREAD_CPUTIME_ID).map_or(0, |cpu| cpu.as_nanos() as u64)
}

/// The clock id of thread `tid`'s CPU-time clock, as the kernel's
/// `MAKE_THREAD_CPUCLOCK` builds it. Unlike `pthread_getcpuclockid`, this
/// works for any thread of the process knowing only its kernel id.
pub(crate) fn thread_cpu_clock(tid: i32) -> libc::clockid_t {
    ((!(tid as u32)) << 3 | THREAD_CPU_CLOCK_BITS) as libc::clockid_t
}

/// CPU time thread `tid` (of this process) has used, or `None` if it has
/// exited.
pub(crate) fn thread_cpu(tid: i32) -> Option<Duration> {
    read(thread_cpu_clock(tid))
}

/// `ns` as a `timespec`, for timer settings.
pub(crate) fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_matches_the_kernel_encoding() {
        // glibc's `pthread_getcpuclockid` builds the same clock id for the
        // calling thread from its kernel id; ours must agree bit for bit.
        let mut from_libc: libc::clockid_t = 0;
        // SAFETY: `pthread_self` is the calling thread; `from_libc` is a
        // valid out-pointer.
        let status = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut from_libc) };
        assert_eq!(status, 0);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        assert_eq!(thread_cpu_clock(tid), from_libc);
        assert!(thread_cpu(tid).is_some());
    }

    #[test]
    fn an_exited_thread_has_no_clock() {
        let tid = std::thread::spawn(|| {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::syscall(libc::SYS_gettid) as i32 }
        })
        .join()
        .unwrap();
        assert_eq!(thread_cpu(tid), None);
    }
}
