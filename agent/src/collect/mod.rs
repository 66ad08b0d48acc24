//! Stage 3 of the data flow: the collector thread.
//!
//! Every cycle (25 to 100 ms, see [`Pace`]) it
//! 1. drains the sample buffer, interning each stack and thread and offering
//!    the observation to the history and to every active capture; rolls the
//!    history's time buckets; applies a requested change of sampling rate;
//! 2. lists the process's threads (when their count changed, and every
//!    100 ms regardless): new ones are registered, their names read
//!    and (once the stack-region table includes them) their timers armed;
//!    exited ones are unregistered and their timers deleted;
//! 3. checks the loader's counters and, when a library was loaded or
//!    unloaded or new thread stacks appeared, rebuilds the unwind tables and
//!    publishes them to the handler.
//!
//! Draining comes before scanning so that a thread's last samples are named
//! before the thread is forgotten.
//!
//! Readers (`record`, later the HTTP endpoint) share the aggregation state
//! through [`Store`]; they lock it briefly to register a capture or copy its
//! results out. The handler never touches it.

pub(crate) mod aggregate;
mod collector;
mod ingest;
mod pace;
mod rate;
pub(crate) mod span_table;
mod store;
pub(crate) mod symbolize;
pub(crate) mod tasks;

use std::time::Duration;

pub(crate) use collector::{Collector, CollectorCounters};
pub(crate) use rate::{RateControl, RateHold};
pub(crate) use store::{CaptureResult, SpanLeaves, Store};

/// The collector's shortest cycle: while threads come and go, or when
/// samples may arrive too fast for a longer one (see `Pace`).
pub(crate) const CYCLE: Duration = Duration::from_millis(25);
/// Its longest, in a quiet process: the longest a new thread waits to be
/// found.
pub(crate) const MAX_CYCLE: Duration = Duration::from_millis(100);

/// Most captures that may run at once; each holds its own aggregate.
pub(crate) const MAX_CAPTURES: usize = 8;
