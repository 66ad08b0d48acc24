//! # Smolder
//!
//! An always-on, low-overhead CPU profiler that lives inside your Rust
//! service. Start it once; from then on you can ask it where the CPU goes,
//! in production, without reproducing anything.
//!
//! ```no_run
//! fn main() -> Result<(), smolder::Error> {
//!     let agent = smolder::start()?; // defaults + SMOLDER_* environment
//!     // ... run the service ...
//!     let profile = agent.record(std::time::Duration::from_secs(5))?;
//!     profile.write_flamegraph(std::fs::File::create("cpu.svg")?)?;
//!     Ok(())
//! }
//! ```
//!
//! ## What it does
//!
//! Every thread gets a CPU-time timer; at each expiry (99 per CPU-second by
//! default) a `SIGPROF` handler walks the thread's stack with DWARF unwind
//! information, so it works on an ordinary `cargo build --release` without
//! frame pointers. The handler allocates nothing and takes no locks; samples
//! go through a lock-free buffer to a collector thread that counts them per
//! (stack, thread). Profiles come out as folded stacks, interactive flame
//! graphs (inferno) and gzipped pprof protobuf (`go tool pprof`).
//!
//! ## What you must do
//!
//! Keep the returned [`Agent`] alive: dropping it stops profiling. Only one
//! agent can run per process.
//!
//! ## What it will not do
//!
//! * Replace another `SIGPROF` handler (`start` fails if one is installed).
//! * Block, crash or slow your threads when something goes wrong: every
//!   table is bounded, a full buffer drops the sample and counts it
//!   ([`Agent::stats`]), and errors are values.
//! * Run on anything but Linux x86_64 and aarch64: elsewhere the crate
//!   compiles and `start` returns [`Error::UnsupportedPlatform`].
//!
//! ## Data flow
//!
//! timer → handler (unwind into a pre-allocated record) → lock-free buffer
//! → collector (intern stacks, count) → profile → renderers. One module per
//! stage; `docs/architecture.md` in the repository has the details.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// Without sampling, the configuration, the profile model and the renderers
// are still compiled (they are platform-independent, and tested there too),
// but what would use them is not. Allow that, rather than scatter `cfg`s over
// shared code. `smolder_sampling` (set by `build.rs`) means Linux on x86_64
// or aarch64; `--cfg smolder_unsupported` turns it off, which is how CI
// checks that the unsupported build compiles.
#![cfg_attr(not(smolder_sampling), allow(dead_code, unused_imports))]

// Modules in the order data flows through them; each imports only from
// those above it (checked by `tests/module_graph.rs`).
mod sync;
mod duration;
mod error;
mod wire;
mod config;
mod stats;
mod sampler;
#[cfg(smolder_sampling)]
mod collect;
mod profile;
mod render;
mod spans;
#[cfg(smolder_sampling)]
mod transport;
mod agent;

pub use agent::Agent;
pub use config::{AgentBuilder, Engine, OtlpProtocol, Unwinder};
pub use error::Error;
pub use profile::{Frame, Profile, SampleView};
pub use spans::layer::{SpanLayer, tracing_layer};
pub use spans::processor::ProfilingSpanProcessor;
pub use stats::{DroppedSamples, PushStats, SpanStats, Stats};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Starts the agent with default settings and `SMOLDER_*` environment
/// overrides: `SMOLDER_FREQUENCY_HZ` (default 99), `SMOLDER_ENABLED=false`
/// (an agent that installs nothing), `SMOLDER_MAX_DEPTH`, `SMOLDER_UNWINDER`,
/// `SMOLDER_ENGINE`, `SMOLDER_BUFFER_RECORDS`, `SMOLDER_STACK_TABLE_CAPACITY`.
///
/// # Errors
/// An invalid environment value (the message names the variable and its
/// range), another agent already running, another `SIGPROF` handler
/// installed, an unsupported platform, or an OS call failing.
pub fn start() -> Result<Agent, Error> {
    Agent::builder().start()
}
