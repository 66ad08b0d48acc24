//! Stage 5 of the data flow: the symbolised profile handed to users and
//! renderers.
//!
//! The model follows pprof's: functions (name, file), locations (an address
//! in a module, with one line per function inlined there, innermost first)
//! and samples (a stack of locations, leaf first, a thread, labels and
//! values). What the values measure is the profile's [`ProfileKind`]: CPU
//! time, wall-clock time, heap memory. Renderers in [`crate::render`] turn
//! it into folded text, SVG and pprof.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) use kind::{ProfileKind, Values, samples_in};

use crate::sampler::span_context::SpanLabel;

/// A CPU profile: the samples of one time window, symbolised.
///
/// ```no_run
/// # fn main() -> Result<(), smolder::Error> {
/// let agent = smolder::start()?;
/// let profile = agent.record(std::time::Duration::from_secs(5))?;
/// println!("{}", profile.folded());
/// profile.write_flamegraph(std::fs::File::create("cpu.svg")?)?;
/// std::fs::write("cpu.pb.gz", profile.to_pprof()?)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Profile {
    pub(crate) kind: ProfileKind,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    /// Samples per second (per CPU-second for CPU profiles); 0 for memory
    /// profiles.
    pub(crate) frequency_hz: u32,
    /// What one sample stands for: nanoseconds for time profiles, bytes (the
    /// sampling rate) for memory profiles.
    pub(crate) period: u64,
    pub(crate) functions: Vec<Function>,
    pub(crate) locations: Vec<Location>,
    pub(crate) modules: Vec<Module>,
    pub(crate) threads: Vec<Thread>,
    pub(crate) spans: Vec<SpanLabel>,
    pub(crate) samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Function {
    pub(crate) name: Arc<str>,
    pub(crate) file: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) address: u64,
    pub(crate) module: Option<u32>,
    /// Innermost (most deeply inlined) first; the last is the function the
    /// machine code belongs to.
    pub(crate) lines: Vec<Line>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Line {
    pub(crate) function: u32,
    pub(crate) line: Option<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Module {
    pub(crate) name: String,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) file_offset: u64,
    pub(crate) build_id: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Thread {
    pub(crate) tid: i32,
    pub(crate) name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Leaf first.
    pub(crate) locations: Vec<u32>,
    pub(crate) thread: u32,
    /// Index into `spans`, if the samples were taken inside a span.
    pub(crate) span: Option<u32>,
    /// Labels beyond thread and span (a thread's state, say).
    pub(crate) labels: Vec<Label>,
    /// What the samples with this stack and these labels stand for, as the
    /// kind defines. Time rather than a count for time profiles, so that
    /// windows spanning a change of sampling rate add up.
    pub(crate) values: Values,
}

/// A sample label beyond thread and span, as pprof carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Label {
    pub(crate) key: &'static str,
    pub(crate) value: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    smolder_sampling,
    expect(dead_code, reason = "the wall-clock sampler labels thread states")
)]
pub(crate) enum LabelValue {
    Text(Arc<str>),
    Number(i64),
}

impl Profile {
    /// When the window began.
    pub fn start_time(&self) -> SystemTime {
        self.start
    }

    /// The window's length.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The sampling rate, in samples per CPU-second per thread.
    pub fn frequency_hz(&self) -> u32 {
        self.frequency_hz
    }

    /// Samples recorded, counted at [`frequency_hz`](Self::frequency_hz):
    /// each stands for `1 / frequency_hz` seconds of CPU. Timer expirations
    /// the kernel coalesced are counted, so this tracks CPU time even above
    /// the kernel's tick rate.
    pub fn sample_count(&self) -> u64 {
        self.drawn_count(self.drawn_total())
    }

    /// CPU time the samples stand for.
    pub fn cpu_time(&self) -> Duration {
        match self.kind {
            ProfileKind::Cpu => Duration::from_nanos(self.drawn_total()),
            _ => Duration::ZERO,
        }
    }

    /// The sum of what flame graphs draw (time, or bytes), over all samples.
    pub(crate) fn drawn_total(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| self.kind.drawn(&s.values))
            .sum()
    }

    /// The count flame graphs show for `drawn` (see
    /// [`ProfileKind::drawn_count`]).
    pub(crate) fn drawn_count(&self, drawn: u64) -> u64 {
        self.kind.drawn_count(drawn, self.period)
    }

    /// The distinct (stack, thread) samples.
    pub fn samples(&self) -> impl Iterator<Item = SampleView<'_>> + '_ {
        self.samples.iter().map(move |sample| SampleView {
            profile: self,
            sample,
        })
    }

    /// Frames of a location, innermost first.
    pub(crate) fn location_frames(&self, location: u32) -> impl Iterator<Item = Frame<'_>> + '_ {
        let loc = &self.locations[location as usize];
        let count = loc.lines.len();
        loc.lines.iter().enumerate().map(move |(i, line)| Frame {
            profile: self,
            location: loc,
            line: *line,
            inlined: i + 1 < count,
        })
    }
}

/// One distinct (stack, thread) in a [`Profile`].
#[derive(Clone, Copy)]
pub struct SampleView<'a> {
    profile: &'a Profile,
    sample: &'a Sample,
}

impl<'a> SampleView<'a> {
    /// Samples recorded with this stack on this thread (see
    /// [`Profile::sample_count`]).
    pub fn sample_count(&self) -> u64 {
        self.profile.drawn_count(self.drawn())
    }

    /// CPU time recorded with this stack on this thread.
    pub fn cpu_time(&self) -> Duration {
        match self.profile.kind {
            ProfileKind::Cpu => Duration::from_nanos(self.drawn()),
            _ => Duration::ZERO,
        }
    }

    /// What flame graphs draw for this sample: its time, or its bytes.
    pub(crate) fn drawn(&self) -> u64 {
        self.profile.kind.drawn(&self.sample.values)
    }

    /// The thread's name.
    pub fn thread_name(&self) -> &'a str {
        &self.profile.threads[self.sample.thread as usize].name
    }

    /// The thread's kernel id.
    pub fn thread_id(&self) -> i32 {
        self.profile.threads[self.sample.thread as usize].tid
    }

    /// The OpenTelemetry trace id (32 hex digits) of the span the samples
    /// were taken in, if any.
    pub fn trace_id(&self) -> Option<String> {
        self.span().map(|s| format!("{:032x}", s.trace_id))
    }

    /// The span id (16 hex digits) of the span the samples were taken in.
    pub fn span_id(&self) -> Option<String> {
        self.span().map(|s| format!("{:016x}", s.span_id))
    }

    /// The name of the span the samples were taken in.
    pub fn span_name(&self) -> Option<&'static str> {
        self.span().map(|s| s.name)
    }

    fn span(&self) -> Option<&'a SpanLabel> {
        self.sample.span.map(|i| &self.profile.spans[i as usize])
    }

    /// The stack, leaf first, with inlined functions as frames of their own.
    pub fn frames(&self) -> impl Iterator<Item = Frame<'a>> + 'a {
        let profile = self.profile;
        self.sample
            .locations
            .iter()
            .flat_map(move |&l| profile.location_frames(l))
    }
}

/// One frame of a stack.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    profile: &'a Profile,
    location: &'a Location,
    line: Line,
    inlined: bool,
}

impl<'a> Frame<'a> {
    /// The function's demangled name (`module+0xoffset` if unknown).
    pub fn function(&self) -> &'a str {
        &self.profile.functions[self.line.function as usize].name
    }

    /// The source file, when debug info says.
    pub fn file(&self) -> Option<&'a str> {
        self.profile.functions[self.line.function as usize]
            .file
            .as_deref()
    }

    /// The source line, when debug info says.
    pub fn line(&self) -> Option<u32> {
        self.line.line
    }

    /// The module (executable or library path) the code lies in.
    pub fn module(&self) -> Option<&'a str> {
        self.location
            .module
            .map(|m| self.profile.modules[m as usize].name.as_str())
    }

    /// The code address (for callers: inside the call instruction).
    pub fn address(&self) -> u64 {
        self.location.address
    }

    /// Whether this function was inlined into the next frame.
    pub fn is_inlined(&self) -> bool {
        self.inlined
    }
}

#[cfg(smolder_sampling)]
mod builder;
mod kind;
#[cfg(smolder_sampling)]
pub(crate) mod queries;
mod summary;

#[cfg(smolder_sampling)]
pub(crate) use builder::ProfileBuilder;
pub(crate) use summary::SpanSummary;
