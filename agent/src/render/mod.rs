//! Stage 6 of the data flow: profiles out as text, pictures and protobuf.
//!
//! Format-only code: nothing here knows about signals, threads or timers;
//! everything works from a [`Profile`](crate::Profile).

pub(crate) mod flamegraph;
pub(crate) mod folded;
pub(crate) mod pprof;

use std::io::Write;

use crate::{Error, Profile};

/// The renderers, as methods of the profile they render.
impl Profile {
    /// Folded stacks, one `root;caller;...;leaf COUNT` line per distinct
    /// stack (threads merged), sorted. The format of Brendan Gregg's
    /// `stackcollapse` scripts, read by inferno, speedscope and others.
    pub fn folded(&self) -> String {
        folded::render(self)
    }

    /// Writes an interactive flame graph (SVG with search and zoom, rendered
    /// by inferno).
    pub fn write_flamegraph<W: Write>(&self, out: W) -> Result<(), Error> {
        flamegraph::write(self, &flamegraph::Style::of(self), out)
    }

    /// The profile as gzip-compressed pprof protobuf, as `go tool pprof`
    /// and Go's `net/http/pprof` exchange it.
    pub fn to_pprof(&self) -> Result<Vec<u8>, Error> {
        pprof::encode(self)
    }
}
