//! Profiles a small batch job and writes its flame graph.
//!
//! ```text
//! cargo run --release --bin flamegraph            # 5 seconds, writes ./flamegraph.svg
//! cargo run --release --bin flamegraph -- 20      # 20 seconds
//! ```
//!
//! The job builds a word index over generated text on two threads: tokenise,
//! count in a hash map, sort by frequency, render a report. Open the SVG in a
//! browser: it is interactive (click to zoom, Ctrl-F to search). The same
//! profile is written as `profile.pb.gz` for `go tool pprof`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const WORDS: &[&str] = &[
    "ember", "spark", "flame", "ash", "smoke", "coal", "kindling", "blaze", "cinder", "glow",
    "hearth", "torch", "wick", "soot", "char", "flare",
];

/// Deterministic pseudo-random text, one document per seed.
#[inline(never)]
fn generate_document(seed: u64, words: usize) -> String {
    let mut state = seed | 1;
    let mut text = String::with_capacity(words * 8);
    for _ in 0..words {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        text.push(if state.is_multiple_of(11) { '\n' } else { ' ' });
    }
    text
}

#[inline(never)]
fn count_words(text: &str, counts: &mut HashMap<String, u64>) {
    for word in text.split_whitespace() {
        *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
    }
}

#[inline(never)]
fn rank(counts: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut ranked: Vec<(&str, u64)> = counts.iter().map(|(w, c)| (w.as_str(), *c)).collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
}

#[inline(never)]
fn render_report(ranked: &[(&str, u64)]) -> String {
    let mut report = String::new();
    for (word, count) in ranked {
        let _ = writeln!(
            report,
            "{word:>12} {count:>10} {}",
            "#".repeat((*count % 40) as usize)
        );
    }
    report
}

fn index_documents(deadline: Instant, first_seed: u64) -> usize {
    let mut reports = 0;
    let mut seed = first_seed;
    while Instant::now() < deadline {
        let mut counts = HashMap::new();
        for _ in 0..8 {
            seed += 1;
            count_words(&generate_document(seed, 20_000), &mut counts);
        }
        reports += render_report(&rank(&counts)).len();
    }
    reports
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let agent = smolder::start()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..2)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("indexer-{i}"))
                .spawn(move || index_documents(deadline, i * 1_000_000))
        })
        .collect::<Result<_, _>>()?;
    println!("profiling a word-index job on 2 threads for {seconds} s ...");
    let profile = agent.record(Duration::from_secs(seconds))?;
    for worker in workers {
        let _ = worker.join();
    }

    profile.write_flamegraph(std::fs::File::create("flamegraph.svg")?)?;
    std::fs::write("profile.pb.gz", profile.to_pprof()?)?;

    let mut self_weight: HashMap<&str, u64> = HashMap::new();
    for sample in profile.samples() {
        if let Some(leaf) = sample.frames().next() {
            *self_weight.entry(leaf.function()).or_default() += sample.sample_count();
        }
    }
    let mut top: Vec<_> = self_weight.into_iter().collect();
    top.sort_by_key(|&(_, weight)| std::cmp::Reverse(weight));
    let total = profile.sample_count().max(1);
    println!(
        "\n{} samples, {:.2} CPU-s; hottest functions (self time):",
        total,
        profile.cpu_time().as_secs_f64()
    );
    for (function, weight) in top.iter().take(8) {
        println!(
            "  {:5.1} %  {function}",
            100.0 * *weight as f64 / total as f64
        );
    }
    let stats = agent.stats();
    println!(
        "\nagent: {} engine, {} samples, {} dropped, handler p50 {} ns, {:.1} MB",
        stats.engine.map_or("disabled", smolder::Engine::as_str),
        stats.samples,
        stats.dropped.total(),
        stats.handler_cost_p50_ns.unwrap_or(0),
        stats.memory_bytes as f64 / 1e6
    );
    println!(
        "\nwrote flamegraph.svg (open it in a browser) and profile.pb.gz (go tool pprof -top profile.pb.gz)"
    );
    Ok(())
}
