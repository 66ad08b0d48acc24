//! The crate's one error type.
//!
//! Every fallible public call returns [`Error`]. Messages are written for the
//! operator who reads them in a log: they name the setting, variable or
//! resource at fault and, where there is one, the fix.

use std::io;

/// Everything that can go wrong when starting the agent or using its output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent samples with Linux-only mechanisms (per-thread CPU timers,
    /// `ucontext` registers, `/proc`).
    #[error(
        "smolder does not support this platform ({os}/{arch}): it profiles Linux on x86_64 and aarch64"
    )]
    UnsupportedPlatform {
        /// The operating system the crate was compiled for.
        os: &'static str,
        /// The CPU architecture the crate was compiled for.
        arch: &'static str,
    },

    /// Signals are process-wide, so only one agent may run per process.
    #[error("a smolder agent is already running in this process; drop it before starting another")]
    AlreadyRunning,

    /// Something else owns `SIGPROF`; replacing its handler would break it.
    #[error(
        "another SIGPROF handler is already installed (another profiler, such as the `pprof` crate or gperftools?); \
         smolder will not replace it: stop the other profiler first"
    )]
    ForeignSignalHandler,

    /// An environment variable holds a value the agent cannot use.
    #[error("environment variable {var}={value:?} is invalid: expected {expected}")]
    InvalidEnvironment {
        /// The variable's name.
        var: &'static str,
        /// The value found.
        value: String,
        /// What the variable accepts.
        expected: &'static str,
    },

    /// A builder setting is out of range.
    #[error("setting `{setting}` = {value} is invalid: expected {expected}")]
    InvalidSetting {
        /// The builder method's name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What the setting accepts.
        expected: &'static str,
    },

    /// Profiling was switched off with `SMOLDER_ENABLED=false`.
    #[error("profiling is disabled (SMOLDER_ENABLED=false), so there is nothing to record")]
    Disabled,

    /// An operating-system call the agent depends on failed.
    #[error("{operation} failed: {source}")]
    Os {
        /// What the agent was doing, e.g. `timer_create`.
        operation: &'static str,
        /// The error the kernel reported.
        #[source]
        source: io::Error,
    },

    /// The collector thread did not deliver the samples of a capture.
    #[error(
        "the smolder collector thread did not respond within {waited_ms} ms; the capture was abandoned"
    )]
    CollectorUnresponsive {
        /// How long the caller waited, in milliseconds.
        waited_ms: u64,
    },

    /// Too many captures are running at once; each holds its own table.
    #[error("{limit} captures are already running; wait for one to finish")]
    TooManyCaptures {
        /// The most captures that may run at once.
        limit: usize,
    },

    /// A capture asked for a sampling rate while another capture holds a
    /// different one (the rate is process-wide).
    #[error(
        "a capture at {held_hz} Hz is running; wait for it to finish, or ask for {held_hz} Hz or no rate"
    )]
    RateConflict {
        /// The rate in force.
        held_hz: u32,
    },

    /// The HTTP endpoint could not listen on its address.
    #[error(
        "the smolder HTTP endpoint cannot listen on {addr}: {source} \
         (set SMOLDER_HTTP_ADDR to another address, or `off`)"
    )]
    HttpBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },

    /// The HTTP endpoint would listen beyond loopback without a token.
    #[error(
        "refusing to serve profiles on {addr} without authentication: set SMOLDER_HTTP_TOKEN \
         (clients then send `Authorization: Bearer <token>`), bind a loopback address, or call \
         AgentBuilder::http_allow_unauthenticated(true) if the network is trusted"
    )]
    HttpUnauthenticated {
        /// The non-loopback address asked for.
        addr: std::net::SocketAddr,
    },

    /// Rendering a flame graph failed.
    #[error("rendering the flame graph failed: {0}")]
    Flamegraph(String),

    /// Writing output to the caller's writer failed.
    #[error("writing profile output failed: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// An [`Error::Os`] carrying the calling thread's current `errno`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn last_os(operation: &'static str) -> Self {
        Error::Os {
            operation,
            source: io::Error::last_os_error(),
        }
    }
}
