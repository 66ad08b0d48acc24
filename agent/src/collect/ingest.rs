//! Turning one sample record into counts: the stack and thread interned,
//! the observation offered to the history, the span table and every
//! capture.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use super::CollectorCounters;
use super::store::StoreState;
use crate::collect::aggregate::Observation;
use crate::collect::aggregate::stacks::TRUNCATED_FRAME;
use crate::sampler::buffer::{FLAG_TRUNCATED, Record};
use crate::sampler::threads;

/// Interns one record and offers it to every capture.
pub(super) fn ingest(
    state: &mut StoreState,
    counters: &CollectorCounters,
    names: &mut HashMap<i32, String>,
    record: &Record,
    root_first: &mut Vec<u64>,
) {
    counters.samples_collected.fetch_add(1, Relaxed);
    root_first.clear();
    if record.flags & FLAG_TRUNCATED != 0 {
        root_first.push(TRUNCATED_FRAME);
    }
    let stack = record.stack();
    // Callers' return addresses point after the call; minus one lands inside
    // it, on the line that made the call.
    root_first.extend(stack.iter().enumerate().rev().map(|(i, &address)| {
        if i == 0 {
            address
        } else {
            address.saturating_sub(1)
        }
    }));
    let Some(stack_id) = state.stacks.intern(root_first.iter().copied()) else {
        counters.dropped_stack_table_full.fetch_add(1, Relaxed);
        return;
    };
    let name = names.entry(record.tid).or_insert_with(|| {
        threads::thread_name(record.tid).unwrap_or_else(|| format!("thread-{}", record.tid))
    });
    let Some(thread) = state.threads.intern(record.tid, name, None) else {
        counters.dropped_aggregate_full.fetch_add(1, Relaxed);
        return;
    };
    let observation = Observation {
        stack: stack_id,
        thread,
        weight: u64::from(record.weight) * state.periods[usize::from(record.rate_epoch)],
        timestamp_ns: record.timestamp_ns,
    };
    if !state.history.offer(&observation) {
        counters.dropped_aggregate_full.fetch_add(1, Relaxed);
    }
    state.spans.offer(&record.span, &observation);
    if state.captures.is_empty() {
        return;
    }
    // Captures keep the span as a label (for pprof's -tagfocus); if the
    // thread table has no room for one more (thread, span) pair, the sample
    // still counts, unlabelled.
    let labelled = record.span.label();
    let thread = labelled
        .and_then(|label| state.threads.intern(record.tid, name, Some(label)))
        .unwrap_or(thread);
    let observation = Observation {
        thread,
        ..observation
    };
    for capture in &mut state.captures {
        if !capture.offer(&observation) {
            counters.dropped_aggregate_full.fetch_add(1, Relaxed);
        }
    }
}
