//! What a profile's samples measure, and what that means for every output.
//!
//! Each kind fixes the values a sample carries (see [`Values`]), the pprof
//! sample and period types Go's tools expect for it, and the one value that
//! folded stacks and flame graphs draw. Renderers ask the kind; none of them
//! knows a kind's numbers by heart.

/// What a profile's samples measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    all(smolder_sampling, not(test)),
    expect(dead_code, reason = "the wall-clock and heap samplers are being built")
)]
pub(crate) enum ProfileKind {
    /// On-CPU time, from CPU-time timers. Values: `[cpu ns]`.
    Cpu,
    /// Wall-clock time, whatever the thread was doing. Values: `[wall ns]`.
    Wall,
    /// Sampled heap, shown as the memory in use. Values: `[allocated
    /// objects, allocated bytes, objects in use, bytes in use]`, unbiased
    /// estimates.
    Heap,
    /// The same data as [`ProfileKind::Heap`], shown as allocated bytes
    /// (Go's `/debug/pprof/allocs`).
    Allocs,
}

/// A sample's values; how many are used, and what each means, is the
/// kind's to say (see [`ProfileKind`]). Unused slots are zero.
pub(crate) type Values = [u64; 4];

/// A pprof value type: (type, unit), as `profile.proto` names them.
pub(crate) type ValueType = (&'static str, &'static str);

const HEAP_TYPES: &[ValueType] = &[
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

impl ProfileKind {
    /// Whether samples stand for time (a period in nanoseconds each), as
    /// opposed to memory.
    pub(crate) fn is_time(self) -> bool {
        matches!(self, ProfileKind::Cpu | ProfileKind::Wall)
    }

    /// The pprof sample types, in the order [`Self::pprof_values`] writes
    /// them.
    pub(crate) fn sample_types(self) -> &'static [ValueType] {
        match self {
            ProfileKind::Cpu => &[("samples", "count"), ("cpu", "nanoseconds")],
            ProfileKind::Wall => &[("samples", "count"), ("wall", "nanoseconds")],
            ProfileKind::Heap | ProfileKind::Allocs => HEAP_TYPES,
        }
    }

    /// The pprof period type: what the profile's period counts.
    pub(crate) fn period_type(self) -> ValueType {
        match self {
            ProfileKind::Cpu => ("cpu", "nanoseconds"),
            ProfileKind::Wall => ("wall", "nanoseconds"),
            ProfileKind::Heap | ProfileKind::Allocs => ("space", "bytes"),
        }
    }

    /// The sample type `go tool pprof` should show first, when it is not
    /// the last one (which pprof shows when none is named).
    pub(crate) fn default_sample_type(self) -> Option<&'static str> {
        match self {
            ProfileKind::Allocs => Some("alloc_space"),
            ProfileKind::Cpu | ProfileKind::Wall | ProfileKind::Heap => None,
        }
    }

    /// A sample's pprof values, in the order of [`Self::sample_types`].
    /// Time samples count as `time / period` samples, rounded.
    pub(crate) fn pprof_values(self, values: &Values, period: u64) -> Vec<i64> {
        match self {
            ProfileKind::Cpu | ProfileKind::Wall => {
                vec![samples_in(values[0], period) as i64, values[0] as i64]
            }
            ProfileKind::Heap | ProfileKind::Allocs => values.iter().map(|&v| v as i64).collect(),
        }
    }

    /// The one value folded stacks and flame graphs draw, before
    /// [`Self::drawn_count`] turns a sum of them into a count.
    pub(crate) fn drawn(self, values: &Values) -> u64 {
        match self {
            ProfileKind::Cpu | ProfileKind::Wall => values[0],
            ProfileKind::Heap => values[3],
            ProfileKind::Allocs => values[1],
        }
    }

    /// The count shown for a sum of [`Self::drawn`] values: samples for time
    /// (summed first and converted once, so rounding never adds up), bytes
    /// for memory.
    pub(crate) fn drawn_count(self, drawn: u64, period: u64) -> u64 {
        if self.is_time() {
            samples_in(drawn, period)
        } else {
            drawn
        }
    }

    /// What the drawn count counts, for flame graph tooltips.
    pub(crate) fn count_name(self) -> &'static str {
        if self.is_time() { "samples" } else { "bytes" }
    }

    /// How titles name the profile: `CPU`, `Wall-clock`, ...
    pub(crate) fn title(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "CPU",
            ProfileKind::Wall => "Wall-clock",
            ProfileKind::Heap => "Heap in use",
            ProfileKind::Allocs => "Allocations",
        }
    }
}

/// The number of samples `time_ns` is at a period of `period_ns`, rounded
/// to the nearest: the one conversion from time back to counts.
pub(crate) fn samples_in(time_ns: u64, period_ns: u64) -> u64 {
    let period_ns = period_ns.max(1);
    (time_ns + period_ns / 2) / period_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_writes_one_value_per_sample_type() {
        let values = [1, 2, 3, 4];
        for kind in [
            ProfileKind::Cpu,
            ProfileKind::Wall,
            ProfileKind::Heap,
            ProfileKind::Allocs,
        ] {
            assert_eq!(
                kind.pprof_values(&values, 10).len(),
                kind.sample_types().len(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn time_rounds_to_the_nearest_sample() {
        assert_eq!(samples_in(14, 10), 1);
        assert_eq!(samples_in(15, 10), 2);
        assert_eq!(ProfileKind::Cpu.pprof_values(&[25, 0, 0, 0], 10), [3, 25]);
        assert_eq!(ProfileKind::Heap.drawn_count(1000, 10), 1000);
        assert_eq!(ProfileKind::Allocs.drawn(&[1, 2, 3, 4]), 2);
    }
}
