//! The human-facing pages: the HTML index and the JSON stats.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::HttpCounters;
use crate::Stats;
use crate::config::Engine;

/// `/debug/pprof/stats`, as serialised.
#[derive(Serialize)]
struct StatsView<'a> {
    engine: &'a str,
    unwinder: &'a str,
    frequency_hz: u32,
    threads_sampled: usize,
    timers_armed: usize,
    signals: u64,
    samples_taken: u64,
    sample_weight: u64,
    samples_collected: u64,
    samples_dropped: Dropped,
    samples_dropped_total: u64,
    stacks_truncated: u64,
    stacks_incomplete: u64,
    foreign_signals: u64,
    handler_cost_ns: HandlerCost,
    handler_cpu_seconds: f64,
    collector_cpu_seconds: f64,
    agent_threads_cpu_seconds: f64,
    process_cpu_seconds: f64,
    overhead_percent: f64,
    agent_memory_bytes: u64,
    history_span_seconds: f64,
    uptime_seconds: f64,
    http: Http,
    spans: Spans,
    push: Push,
    otlp_profiles: Push,
}

/// `Stats::push`: profiles pushed to Pyroscope.
#[derive(Serialize)]
struct Push {
    enabled: bool,
    intervals: u64,
    pushed: u64,
    profiles_pushed: u64,
    bytes_pushed: u64,
    dropped: u64,
    failed: u64,
    retries: u64,
    last_error: Option<String>,
    queue_intervals: usize,
    queue_bytes: usize,
    queue_max_intervals: usize,
    queue_max_bytes: usize,
    cpu_seconds: f64,
}

#[derive(Serialize)]
struct Spans {
    exporting: bool,
    exported: u64,
    export_failed: u64,
    export_retries: u64,
    export_error: Option<String>,
    forwarded: u64,
    sampled: u64,
    dropped_queue_full: u64,
    dropped_no_exporter: u64,
    tracked: usize,
}

impl Push {
    fn of(push: &crate::PushStats) -> Push {
        Push {
            enabled: push.enabled,
            intervals: push.intervals,
            pushed: push.pushed,
            profiles_pushed: push.profiles_pushed,
            bytes_pushed: push.bytes_pushed,
            dropped: push.dropped,
            failed: push.failed,
            retries: push.retries,
            last_error: push.last_error.clone(),
            queue_intervals: push.queue_intervals,
            queue_bytes: push.queue_bytes,
            queue_max_intervals: push.queue_max_intervals,
            queue_max_bytes: push.queue_max_bytes,
            cpu_seconds: push.cpu.as_secs_f64(),
        }
    }
}

#[derive(Serialize)]
struct Dropped {
    buffer_full: u64,
    buffer_contended: u64,
    no_unwind_scratch: u64,
    tables_busy: u64,
    thread_unregistered: u64,
    stack_table_full: u64,
    aggregate_full: u64,
}

#[derive(Serialize)]
struct HandlerCost {
    p50: Option<u64>,
    p99: Option<u64>,
}

#[derive(Serialize)]
struct Http {
    requests: usize,
    client_errors: usize,
    rejected_busy: usize,
    captures_cancelled: usize,
}

pub(crate) fn stats_json(stats: &Stats, http: &HttpCounters) -> String {
    let d = &stats.dropped;
    let view = StatsView {
        engine: stats.engine.map_or("disabled", Engine::as_str),
        unwinder: stats.unwinder.as_str(),
        frequency_hz: stats.frequency_hz,
        threads_sampled: stats.threads_sampled,
        timers_armed: stats.timers_armed,
        signals: stats.signals,
        samples_taken: stats.samples,
        sample_weight: stats.sample_weight,
        samples_collected: stats.samples_collected,
        samples_dropped: Dropped {
            buffer_full: d.buffer_full,
            buffer_contended: d.buffer_contended,
            no_unwind_scratch: d.no_unwind_scratch,
            tables_busy: d.tables_busy,
            thread_unregistered: d.thread_unregistered,
            stack_table_full: d.stack_table_full,
            aggregate_full: d.aggregate_full,
        },
        samples_dropped_total: d.total(),
        stacks_truncated: stats.stacks_truncated,
        stacks_incomplete: stats.stacks_incomplete,
        foreign_signals: stats.foreign_signals,
        handler_cost_ns: HandlerCost {
            p50: stats.handler_cost_p50_ns,
            p99: stats.handler_cost_p99_ns,
        },
        handler_cpu_seconds: stats.handler_cpu.as_secs_f64(),
        collector_cpu_seconds: stats.collector_cpu.as_secs_f64(),
        agent_threads_cpu_seconds: stats.agent_threads_cpu.as_secs_f64(),
        process_cpu_seconds: stats.process_cpu.as_secs_f64(),
        overhead_percent: stats.overhead_percent,
        agent_memory_bytes: stats.memory_bytes,
        history_span_seconds: stats.history_span.as_secs_f64(),
        uptime_seconds: stats.uptime.as_secs_f64(),
        http: Http {
            requests: http.requests.load(Relaxed),
            client_errors: http.client_errors.load(Relaxed),
            rejected_busy: http.rejected_busy.load(Relaxed),
            captures_cancelled: http.captures_cancelled.load(Relaxed),
        },
        spans: Spans {
            exporting: stats.spans.exporting,
            exported: stats.spans.exported,
            export_failed: stats.spans.export_failed,
            export_retries: stats.spans.export_retries,
            export_error: stats.spans.export_error.clone(),
            forwarded: stats.spans.forwarded,
            sampled: stats.spans.sampled,
            dropped_queue_full: stats.spans.dropped_queue_full,
            dropped_no_exporter: stats.spans.dropped_no_exporter,
            tracked: stats.spans.tracked,
        },
        push: Push::of(&stats.push),
        otlp_profiles: Push::of(&stats.otlp_profiles),
    };
    serde_json::to_string_pretty(&view).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// `/debug/pprof/`: what is available, with links, and the current stats.
pub(crate) fn render(service: &str, stats: &Stats, max_seconds: u64) -> String {
    let service = escape(service);
    let reach =
        crate::duration::format(std::time::Duration::from_secs(stats.history_span.as_secs()));
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{service}: smolder profiles</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }}
code {{ background: #f3f3f3; padding: 0 .3em; }} table {{ border-collapse: collapse; }}
td, th {{ padding: .2em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
</style></head><body>
<h1>{service}: CPU profiles</h1>
<p>History reaches back <b>{reach}</b>. Profiles from history answer at once; recordings take their length.</p>
<h2>Flame graphs</h2>
<ul>
<li><a href="flamegraph?window=1m">last minute</a> · <a href="flamegraph?window=5m">last 5 minutes</a> · <a href="flamegraph?window=15m">last 15 minutes</a></li>
<li><a href="flamegraph?window=5m&amp;base=1h">last 5 minutes vs an hour ago</a> (differential: red grew, blue shrank)</li>
<li><a href="flamegraph?seconds=10">record the next 10 seconds</a></li>
</ul>
<h2>Routes</h2>
<table>
<tr><th>route</th><th>answers</th></tr>
<tr><td><a href="profile?seconds=10"><code>profile</code></a></td><td>gzipped pprof protobuf, for <code>go tool pprof</code></td></tr>
<tr><td><a href="flamegraph?window=5m"><code>flamegraph</code></a></td><td>interactive SVG (click to zoom, Ctrl-F to search)</td></tr>
<tr><td><a href="folded?window=5m"><code>folded</code></a></td><td>folded stacks, <code>root;...;leaf count</code></td></tr>
<tr><td><a href="stats"><code>stats</code></a></td><td>the agent's self-report, JSON</td></tr>
</table>
<p>Parameters, on all three profile routes:</p>
<ul>
<li><code>seconds=N</code>: record the next N seconds (default 30, at most {max_seconds}), like Go's <code>net/http/pprof</code>; <code>hz=F</code> samples that recording at F Hz</li>
<li><code>window=5m</code>: the last 5 minutes, from history; <code>ago=1h</code> moves the window back; <code>base=1h</code> compares with the window an hour earlier</li>
<li><code>thread=glob</code>: only threads whose name matches, e.g. <code>thread=tokio-*</code></li>
</ul>
<p>With Go's tools: <code>go tool pprof http://HOST/debug/pprof/profile?seconds=30</code>; compare with an hour ago:
<code>go tool pprof -diff_base 'http://HOST/debug/pprof/profile?window=5m&amp;ago=1h' 'http://HOST/debug/pprof/profile?window=5m'</code></p>
<h2>Agent</h2>
<table>
"#
    );
    let rows: [(&str, String); 9] = [
        (
            "engine",
            format!(
                "{} at {} Hz, {} unwinding",
                stats.engine.map_or("disabled", Engine::as_str),
                stats.frequency_hz,
                stats.unwinder.as_str()
            ),
        ),
        ("threads sampled", stats.threads_sampled.to_string()),
        (
            "samples",
            format!("{} taken, {} dropped", stats.samples, stats.dropped.total()),
        ),
        (
            "handler cost",
            format!(
                "p50 {} ns, p99 {} ns",
                stats.handler_cost_p50_ns.unwrap_or(0),
                stats.handler_cost_p99_ns.unwrap_or(0)
            ),
        ),
        (
            "overhead",
            format!("{:.3} % of process CPU", stats.overhead_percent),
        ),
        (
            "collector CPU",
            format!("{:.3} s", stats.collector_cpu.as_secs_f64()),
        ),
        (
            "memory",
            format!("{:.1} MB", stats.memory_bytes as f64 / 1e6),
        ),
        ("history", reach.clone()),
        (
            "uptime",
            crate::duration::format(std::time::Duration::from_secs(stats.uptime.as_secs())),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(html, "<tr><td>{name}</td><td>{}</td></tr>", escape(&value));
    }
    html.push_str("</table>\n</body></html>\n");
    html
}
