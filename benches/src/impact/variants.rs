//! The configurations of the demo the section compares, and a table with
//! one entry per configuration.
//!
//! Each variant differs from the others only in the environment and the
//! arguments the demo starts with, and in whether a client fetches flame
//! graphs from it while it is measured. Two of them are baselines:
//! [`Variant::Off`], to which the agent's own span export is compared, and
//! [`Variant::SdkAlone`], a service that already exports its spans through
//! the OpenTelemetry SDK, to which the same service with the agent in that
//! pipeline is compared.

use std::ops::{Index, IndexMut};

/// One configuration of the demo.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Variant {
    /// The agent switched off with its kill switch: it installs nothing, and
    /// the tracing layer, still in the subscriber, only mints span ids.
    Off,
    /// The agent at 99 Hz, exporting spans itself.
    At99Hz,
    /// The agent at 99 Hz with span export switched off.
    At99HzNoExport,
    /// The agent at 999 Hz.
    At999Hz,
    /// The agent at 99 Hz while a client fetches flame graphs back to back.
    At99HzRendering,
    /// The agent off, the spans exported by the OpenTelemetry SDK.
    SdkAlone,
    /// The agent at 99 Hz inside the SDK pipeline (its span processor).
    SdkWithAgent,
}

/// What sets a variant apart.
struct Spec {
    label: &'static str,
    /// Environment on top of the common one.
    env: &'static [(&'static str, &'static str)],
    /// Demo arguments on top of the common ones.
    args: &'static [&'static str],
    /// The variant this one's ratios are to (itself for a baseline).
    baseline: Variant,
    /// Whether the agent runs (and has an endpoint to ask for stats).
    agent: bool,
    /// Whether a client fetches flame graphs back to back during the slice.
    render_loop: bool,
}

impl Variant {
    /// Every variant, in the order the tables list them.
    pub(super) const ALL: [Variant; 7] = [
        Variant::Off,
        Variant::At99Hz,
        Variant::At99HzNoExport,
        Variant::At999Hz,
        Variant::At99HzRendering,
        Variant::SdkAlone,
        Variant::SdkWithAgent,
    ];

    /// The variants the 99 Hz targets are read from: the three 99 Hz ones
    /// and their baselines.
    pub(super) const TARGETS: [Variant; 5] = [
        Variant::Off,
        Variant::At99Hz,
        Variant::At99HzNoExport,
        Variant::SdkAlone,
        Variant::SdkWithAgent,
    ];

    fn spec(self) -> &'static Spec {
        match self {
            Variant::Off => &Spec {
                label: "off (`SMOLDER_ENABLED=false`)",
                env: &[("SMOLDER_ENABLED", "false")],
                args: &[],
                baseline: Variant::Off,
                agent: false,
                render_loop: false,
            },
            Variant::At99Hz => &Spec {
                label: "99 Hz",
                env: &[("SMOLDER_FREQUENCY_HZ", "99")],
                args: &[],
                baseline: Variant::Off,
                agent: true,
                render_loop: false,
            },
            Variant::At99HzNoExport => &Spec {
                label: "99 Hz, spans not exported (`OTEL_TRACES_EXPORTER=none`)",
                env: &[
                    ("SMOLDER_FREQUENCY_HZ", "99"),
                    ("OTEL_TRACES_EXPORTER", "none"),
                ],
                args: &[],
                baseline: Variant::Off,
                agent: true,
                render_loop: false,
            },
            Variant::At999Hz => &Spec {
                label: "999 Hz",
                env: &[("SMOLDER_FREQUENCY_HZ", "999")],
                args: &[],
                baseline: Variant::Off,
                agent: true,
                render_loop: false,
            },
            Variant::At99HzRendering => &Spec {
                label: "99 Hz, flame graphs fetched back to back",
                env: &[("SMOLDER_FREQUENCY_HZ", "99")],
                args: &[],
                baseline: Variant::Off,
                agent: true,
                render_loop: true,
            },
            Variant::SdkAlone => &Spec {
                label: "off, spans exported by the OpenTelemetry SDK (`--otel-sdk`)",
                env: &[("SMOLDER_ENABLED", "false")],
                args: &["--otel-sdk"],
                baseline: Variant::SdkAlone,
                agent: false,
                render_loop: false,
            },
            Variant::SdkWithAgent => &Spec {
                label: "99 Hz in the SDK pipeline (`--otel-sdk`, ProfilingSpanProcessor)",
                env: &[("SMOLDER_FREQUENCY_HZ", "99")],
                args: &["--otel-sdk"],
                baseline: Variant::SdkAlone,
                agent: true,
                render_loop: false,
            },
        }
    }

    /// The variant's name in the tables.
    pub(super) fn label(self) -> &'static str {
        self.spec().label
    }

    /// Environment variables the demo gets on top of the common ones.
    pub(super) fn env(self) -> &'static [(&'static str, &'static str)] {
        self.spec().env
    }

    /// Demo arguments on top of the common ones.
    pub(super) fn args(self) -> &'static [&'static str] {
        self.spec().args
    }

    /// The variant the tables divide this one's figures by (itself for a
    /// baseline).
    pub(super) fn baseline(self) -> Variant {
        self.spec().baseline
    }

    /// Whether the agent runs, and so has an endpoint to ask for stats.
    pub(super) fn runs_agent(self) -> bool {
        self.spec().agent
    }

    /// Whether a client fetches flame graphs back to back while a slice is
    /// measured.
    pub(super) fn fetches_flame_graphs(self) -> bool {
        self.spec().render_loop
    }

    /// The variant's place in [`Variant::ALL`], and in a [`PerVariant`].
    fn position(self) -> usize {
        self as usize
    }
}

/// One `T` for every variant.
#[derive(Debug, Clone)]
pub(super) struct PerVariant<T>([T; Variant::ALL.len()]);

impl<T: Default> Default for PerVariant<T> {
    fn default() -> Self {
        PerVariant(std::array::from_fn(|_| T::default()))
    }
}

impl<T> Index<Variant> for PerVariant<T> {
    type Output = T;

    fn index(&self, variant: Variant) -> &T {
        &self.0[variant.position()]
    }
}

impl<T> IndexMut<Variant> for PerVariant<T> {
    fn index_mut(&mut self, variant: Variant) -> &mut T {
        &mut self.0[variant.position()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_own_slot_in_table_order() {
        for (i, variant) in Variant::ALL.into_iter().enumerate() {
            assert_eq!(variant.position(), i, "{variant:?}");
        }
        let mut table = PerVariant::<usize>::default();
        for (i, variant) in Variant::ALL.into_iter().enumerate() {
            table[variant] = i;
        }
        assert_eq!(table.0, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn baselines_are_their_own_baseline_and_run_no_agent() {
        for variant in Variant::ALL {
            let base = variant.baseline();
            assert_eq!(base.baseline(), base, "{variant:?}");
            assert!(!base.runs_agent(), "{variant:?}");
            // `--targets-only` must still run every baseline.
            assert!(Variant::TARGETS.contains(&base), "{variant:?}");
        }
    }
}
