//! Installing and retiring the `SIGPROF` handler.
//!
//! Installation refuses to replace anyone else's handler. Retirement sets
//! `SIGPROF` to *ignored*, never back to the default action: the default
//! terminates the process, and a timer signal already in flight when the
//! agent stops would then kill the host.

use crate::Error;
use crate::sampler::handler::on_sigprof;

fn current_action() -> libc::sigaction {
    // SAFETY: all-zero is a valid `sigaction`; querying never fails for a
    // valid signal number.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut old);
        old
    }
}

fn is_ours_or_unclaimed(action: &libc::sigaction) -> bool {
    let handler = action.sa_sigaction;
    handler == libc::SIG_DFL
        || handler == libc::SIG_IGN
        || handler == on_sigprof as *const () as usize
}

/// Installs the handler with `SA_SIGINFO | SA_RESTART | SA_ONSTACK`.
///
/// `SA_RESTART` keeps interrupted syscalls from failing with `EINTR` in host
/// code that does not retry; `SA_ONSTACK` uses the thread's alternate signal
/// stack where one is set up (the walk itself runs on a private stack).
pub(crate) fn install() -> Result<(), Error> {
    if !is_ours_or_unclaimed(&current_action()) {
        return Err(Error::ForeignSignalHandler);
    }
    // SAFETY: all-zero is a valid `sigaction`, completed below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigprof as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    // SAFETY: `sa_mask` is a valid sigset to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    let mut previous: libc::sigaction = current_action();
    // SAFETY: valid pointers; `on_sigprof` has the `SA_SIGINFO` signature.
    if unsafe { libc::sigaction(libc::SIGPROF, &action, &mut previous) } != 0 {
        return Err(Error::last_os("sigaction(SIGPROF)"));
    }
    // Someone may have installed a handler between the check and the swap:
    // put theirs back and refuse.
    if !is_ours_or_unclaimed(&previous) {
        // SAFETY: restoring the action we just displaced.
        unsafe { libc::sigaction(libc::SIGPROF, &previous, std::ptr::null_mut()) };
        return Err(Error::ForeignSignalHandler);
    }
    Ok(())
}

/// Sets `SIGPROF` to ignored (see the module docs for why not the default).
pub(crate) fn retire() {
    // SAFETY: all-zero is a valid `sigaction`; SIG_IGN needs no handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut());
    }
}
