//! What each interval's push carries: one profile per source, each with
//! the name Pyroscope files it under.
//!
//! A source records the samples of an interval, starting one interval
//! ahead, so that consecutive intervals leave no gap between them, and
//! hands over the interval's profile once it has ended. CPU is the one
//! source today. A wall-clock or heap source is one more entry in the list
//! [`sources`] returns: its Pyroscope `__name__` (`wall`; `memory` for heap
//! and allocations, as Grafana's SDKs send them), and a profile per
//! interval whose samples keep their span labels.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::Profile;
use crate::profile::queries::{Capture, Profiler};

/// One kind of profile, pushed every interval.
pub(crate) trait IntervalSource: Send {
    /// The profile's `__name__` in Pyroscope: `process_cpu` for CPU,
    /// `wall` for wall-clock, `memory` for heap and allocations.
    fn name(&self) -> &'static str;

    /// Starts recording `[from_ns, to_ns)` (monotonic nanoseconds), which
    /// may begin in the future. Called one interval ahead of its end.
    fn prepare(&mut self, from_ns: u64, to_ns: u64);

    /// The profile of `[from_ns, to_ns)`, once it has ended (this may wait
    /// for the collector to drain its last samples, a cycle or two), or
    /// `None` if it was not recorded.
    fn finish(&mut self, from_ns: u64, to_ns: u64) -> Option<Profile>;
}

/// The sources of a running agent, in the order their profiles are sent.
pub(crate) fn sources(profiler: &Arc<Profiler>) -> Vec<Box<dyn IntervalSource>> {
    vec![Box::new(CpuSource::new(Arc::clone(profiler)))]
}

/// CPU time: rolling interval captures (`Profiler::begin_interval`), the
/// one being finished and the next, so that every sample lands in exactly
/// one interval.
pub(crate) struct CpuSource {
    profiler: Arc<Profiler>,
    /// Interval captures in the order of their windows: at most
    /// `MAX_INTERVAL_CAPTURES`.
    captures: VecDeque<(u64, Capture)>,
}

impl CpuSource {
    pub(crate) fn new(profiler: Arc<Profiler>) -> CpuSource {
        CpuSource {
            profiler,
            captures: VecDeque::new(),
        }
    }
}

impl IntervalSource for CpuSource {
    fn name(&self) -> &'static str {
        "process_cpu"
    }

    fn prepare(&mut self, from_ns: u64, to_ns: u64) {
        if let Ok(capture) = self.profiler.begin_interval(from_ns, to_ns) {
            self.captures.push_back((from_ns, capture));
        }
    }

    fn finish(&mut self, from_ns: u64, _to_ns: u64) -> Option<Profile> {
        // Captures of earlier windows (none, unless an earlier finish was
        // skipped) are let go: dropping one cancels it.
        while self
            .captures
            .front()
            .is_some_and(|(from, _)| *from < from_ns)
        {
            self.captures.pop_front();
        }
        match self.captures.front() {
            Some((from, _)) if *from == from_ns => {}
            _ => return None,
        }
        let (_, capture) = self.captures.pop_front()?;
        capture.finish().ok()
    }
}
