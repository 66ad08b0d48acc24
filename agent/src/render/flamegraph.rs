//! Interactive SVG flame graphs, drawn by inferno.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use crate::profile::ProfileKind;
use crate::{Error, Profile};

/// Title and labels of a flame graph.
#[derive(Debug, Clone)]
pub(crate) struct Style {
    pub(crate) title: String,
    pub(crate) subtitle: Option<String>,
}

impl Style {
    /// The default title of `profile`'s kind, and the default subtitle.
    pub(crate) fn of(profile: &Profile) -> Style {
        Style {
            title: format!("{} profile", profile.kind.title()),
            subtitle: None,
        }
    }
}

/// Writes `profile` as an SVG flame graph.
pub(crate) fn write(profile: &Profile, style: &Style, out: impl Write) -> Result<(), Error> {
    let folded = crate::render::folded::render(profile);
    let subtitle = style
        .subtitle
        .clone()
        .unwrap_or_else(|| default_subtitle(profile));
    let mut options = options(profile, &style.title, subtitle);
    if folded.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid
        // answer, shown as a single "no samples" bar.
        return flamegraph::from_lines(&mut options, ["[no samples] 1"], out)
            .map_err(|e| Error::Flamegraph(e.to_string()));
    }
    flamegraph::from_lines(&mut options, folded.lines(), out)
        .map_err(|e| Error::Flamegraph(e.to_string()))
}

/// Writes a differential flame graph: frame widths from `after`, colours
/// from the change since `before` (red grew, blue shrank).
pub(crate) fn write_diff(
    before: &Profile,
    after: &Profile,
    style: &Style,
    out: impl Write,
) -> Result<(), Error> {
    let diff = crate::render::folded::render_diff(before, after);
    let subtitle = style
        .subtitle
        .clone()
        .unwrap_or_else(|| default_subtitle(after));
    let mut options = options(after, &style.title, subtitle);
    if diff.is_empty() {
        return flamegraph::from_lines(&mut options, ["[no samples] 1 1"], out)
            .map_err(|e| Error::Flamegraph(e.to_string()));
    }
    flamegraph::from_lines(&mut options, diff.lines(), out)
        .map_err(|e| Error::Flamegraph(e.to_string()))
}

fn default_subtitle(profile: &Profile) -> String {
    let over = profile.duration().as_secs_f64();
    match profile.kind {
        ProfileKind::Cpu | ProfileKind::Wall => format!(
            "{} samples at {} Hz over {over:.1} s ({:.2} {}-s)",
            profile.sample_count(),
            profile.frequency_hz(),
            profile.drawn_total() as f64 / 1e9,
            if profile.kind == ProfileKind::Cpu {
                "CPU"
            } else {
                "wall"
            },
        ),
        ProfileKind::Heap | ProfileKind::Allocs => format!(
            "{:.1} MiB sampled every {} KiB on average, over {over:.1} s",
            profile.drawn_total() as f64 / (1 << 20) as f64,
            profile.period / 1024,
        ),
    }
}

fn options(profile: &Profile, title: &str, subtitle: String) -> Options<'static> {
    let mut options = Options::default();
    options.title = title.to_owned();
    options.subtitle = Some(subtitle);
    options.count_name = profile.kind.count_name().to_owned();
    options.name_type = "Function:".to_owned();
    options
}
