//! The calling thread: its kernel id, its name, and whether it is one of
//! the agent's own.

use std::ffi::CStr;

/// Marks the calling thread as one of the agent's: its id goes into
/// `own_threads`, so that it is never sampled, and the tracing layer
/// records none of its spans (the libraries the exporter runs, h2 among
/// them, open spans of their own, and exporting those would make more).
pub(crate) fn enter_agent_thread(own_threads: &std::sync::Mutex<std::collections::HashSet<i32>>) {
    crate::sync::lock(own_threads).insert(current_tid());
    crate::sampler::mark_agent_thread();
}

/// The calling thread's kernel thread id.
///
/// # Signal safety
/// `gettid`, which is async-signal-safe and cannot fail.
pub(crate) fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The thread's name (`comm`, at most 15 bytes), or `None` if it has exited.
pub(crate) fn thread_name(tid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/self/task/{tid}/comm")).ok()?;
    let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(name).into_owned())
}

/// Names a thread of the agent's own, visible in `top -H` and in `comm`.
pub(crate) fn name_current_thread(name: &CStr) {
    // SAFETY: `name` is NUL-terminated; PR_SET_NAME truncates to 15 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}
