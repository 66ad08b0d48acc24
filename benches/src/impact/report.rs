//! The section's report: the per-variant tables (each variant's medians and
//! their ratios to its baseline, then the agent's own account from its stats
//! endpoint), and the 99 Hz ratios the summary sets against the targets.

use super::ImpactResults;
use super::slice::Slice;
use super::variants::Variant;
use super::wrk::CONNECTIONS;
use crate::child::{HarnessError, median};

/// One 99 Hz variant's figures against its baseline.
#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    /// Throughput over the baseline: ratio of medians, and median of the
    /// per-round ratios.
    pub throughput: (f64, f64),
    /// p99 latency over the baseline, the same two ways.
    pub p99: (f64, f64),
    /// Demo CPU per request over the baseline (ratio of medians).
    pub cpu_per_request: f64,
}

/// The 99 Hz figures the summary sets against the targets.
#[derive(Debug, Clone, Copy)]
pub struct ImpactSummary {
    /// The agent exporting spans itself, against "off".
    pub exporting: Ratios,
    /// The agent exporting spans itself, against the SDK exporting the same
    /// spans without the agent: what the agent costs a service that exports
    /// its traces either way.
    pub exporting_like_for_like: Ratios,
    /// The agent with nothing exported, against "off".
    pub profiling_only: Ratios,
    /// The agent in the SDK pipeline, against the SDK pipeline alone.
    pub sdk: Ratios,
}

/// The smallest and the largest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

/// A number from the agent's `/debug/pprof/stats` JSON, by key (the keys
/// the harness reads are unique in it); `None` for `null` or absent.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let quoted = format!("\"{key}\"");
    let at = json.find(&quoted)? + quoted.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl ImpactResults {
    /// One figure of each of `variant`'s slices, in round order.
    fn column(&self, variant: Variant, f: impl Fn(&Slice) -> f64) -> Vec<f64> {
        self.slices[variant].iter().map(f).collect()
    }

    /// Median over rounds of `variant` / `base`, round by round.
    fn paired_to(&self, variant: Variant, base: Variant, f: impl Fn(&Slice) -> f64) -> f64 {
        let ratios: Vec<f64> = self.slices[variant]
            .iter()
            .zip(&self.slices[base])
            .map(|(v, off)| f(v) / f(off))
            .collect();
        median(&ratios)
    }

    /// Prints the tables; returns the 99 Hz figures.
    pub fn print(&self) -> Result<ImpactSummary, HarnessError> {
        let o = self.options;
        println!(
            "\n## Host impact: the demo shop under wrk, {} rounds x {} s per variant, variants \
             alternating; medians over rounds",
            o.rounds, o.seconds
        );
        match self.pinning {
            Some((client, demo)) => println!(
                "demo pinned to CPU {demo} (taskset); wrk (1 thread, {CONNECTIONS} connections, \
                 the browsing mix), the harness and the stand-in OTLP collector on CPU {client}"
            ),
            None => println!("one CPU: nothing pinned; wrk and the demo share it"),
        }
        self.print_load_table();
        self.print_agent_table();
        println!(
            "\nThe stand-in collector received {} export requests, {:.1} MB in all.",
            self.sink.0,
            self.sink.1 as f64 / 1e6
        );
        Ok(ImpactSummary {
            exporting: self.ratios_to(Variant::At99Hz, Variant::Off),
            exporting_like_for_like: self.ratios_to(Variant::At99Hz, Variant::SdkAlone),
            profiling_only: self.ratios_to(Variant::At99HzNoExport, Variant::Off),
            sdk: self.ratios_to(Variant::SdkWithAgent, Variant::SdkAlone),
        })
    }

    /// The main table: what `wrk` and `/proc` measured, per variant and
    /// against its baseline.
    fn print_load_table(&self) {
        println!(
            "\n| variant | req/s (range) | x base | x base, paired by round | p50 ms | x base \
             | p99 ms | x base | x base, paired | demo CPU ms / request | x base | agent \
             threads, % of demo CPU | flame graphs / s (ms each) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let (rps, p50, p99, cpu_per_request) = (
            Slice::requests_per_second,
            Slice::p50_ms,
            Slice::p99_ms,
            Slice::cpu_ms_per_request,
        );
        for variant in Variant::ALL {
            if self.slices[variant].is_empty() {
                continue; // not run (`--targets-only`)
            }
            let base = variant.baseline();
            let off_rps = median(&self.column(base, rps));
            let off_p50 = median(&self.column(base, p50));
            let off_p99 = median(&self.column(base, p99));
            let off_cpu = median(&self.column(base, cpu_per_request));
            let m_rps = median(&self.column(variant, rps));
            let (lo, hi) = range(&self.column(variant, rps));
            let m_p50 = median(&self.column(variant, p50));
            let m_p99 = median(&self.column(variant, p99));
            let m_cpu = median(&self.column(variant, cpu_per_request));
            let agent_share =
                median(&self.column(variant, |s| 100.0 * s.agent_threads_s / s.cpu_s));
            let renders = if variant.fetches_flame_graphs() {
                let per_second =
                    median(&self.column(variant, |s| s.renders as f64 / s.wrk.seconds));
                let each =
                    median(&self.column(variant, |s| 1e3 * s.render_s / s.renders.max(1) as f64));
                format!("{per_second:.1} ({each:.0})")
            } else {
                "-".to_owned()
            };
            println!(
                "| {} | {m_rps:.1} ({lo:.1}-{hi:.1}) | {:.3} | {:.3} | {m_p50:.1} | {:.3} | \
                 {m_p99:.1} | {:.3} | {:.3} | {m_cpu:.2} | {:.3} | {agent_share:.1} | {renders} |",
                variant.label(),
                m_rps / off_rps,
                self.paired_to(variant, base, rps),
                m_p50 / off_p50,
                m_p99 / off_p99,
                self.paired_to(variant, base, p99),
                m_cpu / off_cpu,
            );
        }
        println!(
            "\n`x base`: ratio to the variant's baseline, \"off\" for the first five and \
             \"off, spans exported by the OpenTelemetry SDK\" for the last two (the baselines \
             show 1.000). `x base, paired`: the median over rounds of each round's ratio to that \
             round's baseline slice. `demo CPU ms / request`: the demo's user + system CPU over the slice \
             (/proc/<pid>/stat) per request answered. `agent threads`: the part of it used by \
             the agent's own threads (smolder-*); the signal handler runs on the host's threads \
             and is not in it."
        );
    }

    /// The agent's own account, from its stats endpoint at the end of the
    /// run, for the variants that run it.
    fn print_agent_table(&self) {
        println!("\n### The agent's own account at the end (warm-up included)");
        println!(
            "| variant | samples (signals) | handler p50 / p99 | agent threads CPU s | \
             process CPU s | overhead (own estimate) | spans exported | spans dropped, queue \
             full | export failed | handed to the SDK's processor | spans looked up \
             (sampled) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for variant in Variant::ALL {
            let Some(json) = &self.stats[variant] else {
                continue;
            };
            let n = |key: &str| {
                json_number(json, key).map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
            };
            let s = |key: &str| {
                json_number(json, key).map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
            };
            println!(
                "| {} | {} | {} / {} ns | {} | {} | {} % | {} | {} | {} | {} | {} |",
                variant.label(),
                n("samples_taken"),
                n("p50"),
                n("p99"),
                s("agent_threads_cpu_seconds"),
                s("process_cpu_seconds"),
                json_number(json, "overhead_percent")
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                n("exported"),
                n("dropped_queue_full"),
                n("export_failed"),
                n("forwarded"),
                n("sampled"),
            );
        }
    }

    /// `variant`'s figures against `base`.
    fn ratios_to(&self, variant: Variant, base: Variant) -> Ratios {
        let of_medians =
            |f: fn(&Slice) -> f64| median(&self.column(variant, f)) / median(&self.column(base, f));
        Ratios {
            throughput: (
                of_medians(Slice::requests_per_second),
                self.paired_to(variant, base, Slice::requests_per_second),
            ),
            p99: (
                of_medians(Slice::p99_ms),
                self.paired_to(variant, base, Slice::p99_ms),
            ),
            cpu_per_request: of_medians(Slice::cpu_ms_per_request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_numbers_are_read() {
        let json = r#"{"samples_taken": 1232, "handler_cost_ns": {"p50": null, "p99": 30720},
                       "overhead_percent": 1.5e0, "spans": {"exported": 6394}}"#;
        assert_eq!(json_number(json, "samples_taken"), Some(1232.0));
        assert_eq!(json_number(json, "p50"), None);
        assert_eq!(json_number(json, "p99"), Some(30720.0));
        assert_eq!(json_number(json, "overhead_percent"), Some(1.5));
        assert_eq!(json_number(json, "exported"), Some(6394.0));
        assert_eq!(json_number(json, "missing"), None);
    }
}
