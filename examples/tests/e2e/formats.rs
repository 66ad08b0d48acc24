//! The three output formats, read by real consumers.

use std::process::Command;

use quick_xml::events::Event;

use crate::fixture::parse_folded;
use crate::sampling::long_split;

/// Runs `go tool pprof` with `args`; Debian's `golang-go` provides it (the
/// CI script installs it).
pub fn go_pprof(args: &[&str]) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("`go` must be installed for this test (Debian: apt-get install golang-go)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "go tool pprof {args:?} failed:\n{text}"
    );
    text
}

/// Flat percentage `go tool pprof -top` gives `function`.
fn flat_percent(top: &str, function: &str) -> f64 {
    let line = top
        .lines()
        .find(|l| l.trim_end().ends_with(function))
        .unwrap_or_else(|| panic!("{function} not in pprof -top output:\n{top}"));
    let flat = line.split_whitespace().nth(1).expect("flat% column");
    flat.trim_end_matches('%').parse().expect("a percentage")
}

#[test]
fn go_tool_pprof_reads_the_profile_and_names_the_hot_functions() {
    let run = long_split();
    let path = run.file("profile.pb.gz");
    let top = go_pprof(&["-top", path.to_str().unwrap()]);
    let hot = flat_percent(&top, "workload::hot_seventy");
    let cold = flat_percent(&top, "workload::cold_thirty");
    assert!(
        (hot - 70.0).abs() <= 3.5 && (cold - 30.0).abs() <= 3.5,
        "{top}"
    );
    assert!(top.contains("Type: cpu"), "{top}");

    // Thread labels work with -tagfocus.
    let busy0 = go_pprof(&["-top", "-tagfocus=thread=busy-0", path.to_str().unwrap()]);
    assert!(busy0.contains("workload::hot_seventy"), "{busy0}");
    let nothing = go_pprof(&[
        "-top",
        "-tagfocus=thread=no-such-thread",
        path.to_str().unwrap(),
    ]);
    assert!(!nothing.contains("workload::hot_seventy"), "{nothing}");
}

#[test]
fn pprof_total_matches_the_profile() {
    let run = long_split();
    let top = go_pprof(&[
        "-top",
        "-unit=ms",
        run.file("profile.pb.gz").to_str().unwrap(),
    ]);
    // "Duration: 6.70s, Total samples = 11993ms (178.99%)"
    let total_ms: f64 = top
        .split("Total samples = ")
        .nth(1)
        .and_then(|rest| rest.split("ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in:\n{top}"));
    let expected_ms = run.number("profile_samples") * 1000.0 / 999.0;
    assert!(
        (total_ms - expected_ms).abs() <= expected_ms * 0.01 + 2.0,
        "{total_ms} vs {expected_ms}"
    );
}

/// Parses `svg` as XML (panicking on any error) and checks that each of
/// `functions` appears in some frame's `<title>`.
pub fn assert_well_formed_svg_naming(svg: &str, functions: &[&str]) {
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut titles = Vec::new();
    let mut in_title = false;
    let mut root = None;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) if root.is_none() => {
                root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned())
            }
            Event::Start(e) if e.name().as_ref() == b"title" => in_title = true,
            Event::End(e) if e.name().as_ref() == b"title" => in_title = false,
            Event::Text(t) if in_title => titles.push(String::from_utf8_lossy(&t).into_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    for function in functions {
        assert!(
            titles.iter().any(|t| t.contains(function)),
            "{function} missing from the SVG"
        );
    }
}

#[test]
fn flamegraph_is_well_formed_svg_naming_the_hot_functions() {
    let svg = std::fs::read_to_string(long_split().file("profile.svg")).unwrap();
    assert_well_formed_svg_naming(
        &svg,
        &[
            "workload::hot_seventy",
            "workload::cold_thirty",
            "workload::chain_01",
        ],
    );
    assert!(
        svg.contains("samples at 999 Hz"),
        "subtitle states the rate"
    );
}

#[test]
fn folded_lines_are_stack_space_count() {
    let folded = long_split().folded();
    let parsed = parse_folded(&folded);
    assert!(parsed.len() > 1);
    let total: u64 = parsed.iter().map(|(_, w)| w).sum();
    assert_eq!(total as f64, long_split().number("profile_samples"));
    let mut sorted = folded.lines().collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(
        sorted,
        folded.lines().collect::<Vec<_>>(),
        "lines are sorted"
    );
    assert!(
        parsed
            .iter()
            .all(|(frames, _)| frames.iter().all(|f| !f.is_empty()))
    );
}
