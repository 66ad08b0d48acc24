//! Folded stacks: `root;caller;...;leaf COUNT`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::Profile;

/// One folded line per distinct stack, with threads merged, sorted by stack.
pub(crate) fn render(profile: &Profile) -> String {
    let mut out = String::new();
    for (stack, weight) in fold(profile) {
        let _ = writeln!(out, "{stack} {weight}");
    }
    out
}

/// Distinct folded stacks and their counts (samples for time profiles,
/// bytes for memory profiles). Time is summed per stack first and converted
/// to a count once, so rounding never adds up.
pub(crate) fn fold(profile: &Profile) -> BTreeMap<String, u64> {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    let mut names: Vec<&str> = Vec::new();
    for sample in profile.samples() {
        names.clear();
        names.extend(sample.frames().map(|f| f.function()));
        let mut line = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for (i, name) in names.iter().rev().enumerate() {
            if i > 0 {
                line.push(';');
            }
            push_sanitized(&mut line, name);
        }
        *stacks.entry(line).or_default() += sample.drawn();
    }
    stacks
        .into_iter()
        .map(|(stack, drawn)| (stack, profile.drawn_count(drawn)))
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// Function names may not contain the format's separators: `;` splits
/// frames and a newline ends the record.
fn push_sanitized(line: &mut String, name: &str) {
    if name.contains([';', '\n', '\r']) {
        line.extend(name.chars().map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            c => c,
        }));
    } else {
        line.push_str(name);
    }
}

/// Differential folded stacks: `stack BEFORE AFTER` per stack present in
/// either profile, the format inferno's differential flame graphs read.
///
/// `before` is scaled to the same total as `after`, so that a difference
/// shows a change in *share* of the CPU: when the whole service got busier,
/// a function that kept its share is not painted as grown.
pub(crate) fn render_diff(before: &Profile, after: &Profile) -> String {
    let mut out = String::new();
    for (stack, (was, now)) in fold_diff(before, after) {
        let _ = writeln!(out, "{stack} {was} {now}");
    }
    out
}

/// Both profiles folded, stack by stack: (count before, scaled to the after
/// total; count after).
pub(crate) fn fold_diff(before: &Profile, after: &Profile) -> BTreeMap<String, (u64, u64)> {
    let before = fold(before);
    let after = fold(after);
    let before_total: u64 = before.values().sum();
    let after_total: u64 = after.values().sum();
    let scale = if before_total == 0 {
        1.0
    } else {
        after_total as f64 / before_total as f64
    };
    let mut merged: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (stack, count) in before {
        merged.entry(stack).or_default().0 = (count as f64 * scale).round() as u64;
    }
    for (stack, count) in after {
        merged.entry(stack).or_default().1 = count;
    }
    merged
}
