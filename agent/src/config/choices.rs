//! The public choices among sampling mechanisms: which unwinder walks the
//! stack and which timer drives sampling, each with the names its
//! `SMOLDER_*` variable accepts.

use super::env::{Env, parse_choice};
use crate::Error;

/// How the signal handler walks the interrupted thread's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Unwinder {
    /// DWARF call-frame information from each module's `.eh_frame`: works on a
    /// default `cargo build --release`, which omits frame pointers.
    #[default]
    Dwarf,
    /// Follow the frame-pointer chain. Cheaper, but only correct for code
    /// built with `-C force-frame-pointers=yes` (and libraries likewise).
    FramePointers,
}

/// Which timer drives sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Engine {
    /// Per-thread CPU timers where the kernel offers them, else `setitimer`.
    #[default]
    Auto,
    /// One `timer_create` CPU-time timer per thread, each signalling its own
    /// thread: every busy thread is sampled in proportion to its own CPU.
    PerThreadTimers,
    /// One process-wide `setitimer(ITIMER_PROF)`. Capped at one signal per
    /// kernel tick for the whole process and biased on many cores; only a
    /// fallback.
    Setitimer,
}

// === impl Engine ===

impl Engine {
    /// The name used in `SMOLDER_ENGINE` and in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::PerThreadTimers => "per-thread-timers",
            Engine::Setitimer => "setitimer",
        }
    }

    /// `SMOLDER_ENGINE`: `Ok(None)` when unset.
    pub(super) fn from_env(env: &impl Env) -> Result<Option<Engine>, Error> {
        parse_choice(
            env,
            "SMOLDER_ENGINE",
            "auto, per-thread-timers or setitimer",
            &[
                ("auto", Engine::Auto),
                ("per-thread-timers", Engine::PerThreadTimers),
                ("setitimer", Engine::Setitimer),
            ],
        )
    }
}

// === impl Unwinder ===

impl Unwinder {
    /// The name used in `SMOLDER_UNWINDER` and in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Unwinder::Dwarf => "dwarf",
            Unwinder::FramePointers => "frame-pointers",
        }
    }

    /// `SMOLDER_UNWINDER`: `Ok(None)` when unset. Also accepts the short
    /// spellings `frame-pointer` and `fp`.
    pub(super) fn from_env(env: &impl Env) -> Result<Option<Unwinder>, Error> {
        parse_choice(
            env,
            "SMOLDER_UNWINDER",
            "dwarf or frame-pointers",
            &[
                ("dwarf", Unwinder::Dwarf),
                ("frame-pointers", Unwinder::FramePointers),
                ("frame-pointer", Unwinder::FramePointers),
                ("fp", Unwinder::FramePointers),
            ],
        )
    }
}
