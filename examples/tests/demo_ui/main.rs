//! The demo, seen as a person sees it: the real Jaeger UI in a real
//! (headless) browser.
//!
//! The demo runs as built (`CARGO_BIN_EXE_demo`) with its load generator,
//! its embedded trace viewer and the agent on free loopback ports. The test
//! waits, through the Jaeger query API, for a `GET /report` trace whose
//! request span carries a real CPU profile, follows that span's flame graph
//! link, then drives Chromium through chromedriver as a user would: the
//! search page, the trace in the results, the span, its Tags, and reads
//! `profile.top_functions` off the rendered page. A screenshot of the page
//! is left in the target directory.
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the test
//! fails, saying so.

mod demo;
mod http;
mod webdriver;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use smolder_examples::lock;

use demo::Demo;
use webdriver::{Driver, find_executable, poll};

const SERVICE: &str = "smolder-demo";
/// The operation the browser test looks at: the report always burns tens
/// of milliseconds of CPU, so its span always has samples.
const OPERATION: &str = "GET /report";
/// How long spans may take to reach the viewer once the demo is up.
const SPANS_ARRIVE: Duration = Duration::from_secs(90);
/// How long the UI may take to render what the test waits for.
const UI_RENDERS: Duration = Duration::from_secs(30);

#[test]
fn jaeger_ui_shows_profile_top_functions_on_a_demo_span() {
    let chromium = find_executable("CHROMIUM", "chromium", "chromium");
    let chromedriver = find_executable("CHROMEDRIVER", "chromedriver", "chromium-driver");
    let _one_at_a_time = exclusive();
    let mut demo = Demo::start(&[], &[]);
    let ui = demo.jaeger_ui();

    let span = wait_for_profiled_span(&mut demo, &ui, OPERATION);
    check_flamegraph_link(&span);

    let dir = scratch_dir("demo-ui");
    let driver = Driver::start(&chromedriver);
    let session = driver.session(&chromium, &dir.join("chromium-profile"));
    let screenshot = dir.join("trace.png");

    // The search page, as the demo's banner links it, narrowed to the report.
    session.goto(&format!(
        "{ui}/search?service={SERVICE}&operation=GET%20%2Freport&lookback=1h&limit=100"
    ));
    let excerpt = &span.trace_id[..7];
    let link = poll(UI_RENDERS, || {
        session
            .find_all(".ResultItemTitle a")
            .into_iter()
            .find(|link| session.attribute(link, "href").contains(&span.trace_id))
    });
    let Some(link) = link else {
        session.screenshot(&screenshot);
        panic!(
            "the Jaeger UI's search results never listed trace {excerpt}; page text:\n{}\n\
             (screenshot: {})",
            session.page_text(),
            screenshot.display()
        );
    };
    session.click(&link);

    // The trace page: open the request span, then its Tags.
    let found = session.wait_for(".span-name", UI_RENDERS, |text| text.ends_with(OPERATION));
    let (span_row, _) = found.unwrap_or_else(|| {
        fail_with_page(&session, &screenshot, &format!("no {OPERATION:?} span row"))
    });
    session.click(&span_row);
    let tags = session.wait_for(".AccordianKeyValues--header", UI_RENDERS, |text| {
        text.starts_with("Tags")
    });
    let (tags_header, _) = tags
        .unwrap_or_else(|| fail_with_page(&session, &screenshot, "no Tags in the span details"));
    session.click(&tags_header);
    let row = session.wait_for(".KeyValueTable--row", UI_RENDERS, |text| {
        text.starts_with("profile.top_functions")
    });
    session.screenshot(&screenshot);
    let (_, row_text) = row.unwrap_or_else(|| {
        fail_with_page(
            &session,
            &screenshot,
            "no profile.top_functions row in the span's Tags",
        )
    });

    let shown = words(row_text.trim_start_matches("profile.top_functions"));
    assert_eq!(
        shown,
        words(&span.top_functions),
        "the Jaeger UI shows profile.top_functions {row_text:?}, but the span's tag is {:?} \
         (screenshot: {})",
        span.top_functions,
        screenshot.display()
    );
    println!(
        "the Jaeger UI shows, on trace {excerpt}'s {OPERATION} span: profile.top_functions = {}\n\
         screenshot: {}",
        span.top_functions,
        screenshot.display()
    );
}

#[test]
fn demo_exports_to_otel_exporter_otlp_endpoint_instead_of_its_own_viewer() {
    let _one_at_a_time = exclusive();
    // One demo without load serves as the collector; a second one exports to
    // its gRPC receiver, as it would to a real Jaeger.
    let mut collector = Demo::start(&["--no-load"], &[]);
    let ui = collector.jaeger_ui();
    let receivers = collector.banner("OTLP in").to_owned();
    let grpc = receivers
        .split_whitespace()
        .find_map(|word| word.strip_prefix("grpc://"))
        .unwrap_or_else(|| panic!("no grpc:// address in {receivers:?}"))
        .to_owned();
    let endpoint = format!("http://{grpc}");
    let exporter = Demo::start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert!(
        !exporter.has_banner("Jaeger UI"),
        "with OTEL_EXPORTER_OTLP_ENDPOINT set the demo must not start its own viewer"
    );
    assert!(
        exporter.banner("traces").contains(&endpoint),
        "the banner must say where spans go: {:?}",
        exporter.banner("traces")
    );
    let span = wait_for_profiled_span(&mut collector, &ui, "GET /search");
    assert!(span.top_functions.contains('%'), "{span:?}");
}

/// A request span as the Jaeger query API returns it.
#[derive(Debug)]
struct ProfiledSpan {
    trace_id: String,
    top_functions: String,
    flamegraph_url: String,
}

/// Waits until the viewer lists a trace of `operation` whose root span has
/// CPU samples, and returns that span's profile attributes.
fn wait_for_profiled_span(demo: &mut Demo, ui: &str, operation: &str) -> ProfiledSpan {
    let url = format!(
        "{ui}/api/traces?service={SERVICE}&operation={}&limit=50",
        operation.replace(' ', "%20")
    );
    let mut last = String::new();
    let found = poll(SPANS_ARRIVE, || {
        let answer = http::get(&url).ok()?;
        last = answer.text();
        let traces = answer.json();
        traces["data"].as_array()?.iter().find_map(profiled_root)
    });
    found.unwrap_or_else(|| {
        panic!(
            "no {operation:?} trace with a CPU profile on its request span reached the \
             viewer within {SPANS_ARRIVE:?}.\nlast answer from {url}: {}\ndemo output:\n{}",
            truncate(&last, 2000),
            demo.printed()
        )
    })
}

/// The root span's profile, if it has samples.
fn profiled_root(trace: &Value) -> Option<ProfiledSpan> {
    let root = trace["spans"].as_array()?.iter().find(|span| {
        span["references"]
            .as_array()
            .is_none_or(|references| references.is_empty())
    })?;
    let tag = |key: &str| {
        root["tags"]
            .as_array()?
            .iter()
            .find(|tag| tag["key"] == key)
            .map(|tag| tag["value"].clone())
    };
    let samples = tag("profile.samples")?.as_i64()?;
    let top_functions = tag("profile.top_functions")?.as_str()?.to_owned();
    let flamegraph_url = tag("profile.flamegraph_url")?.as_str()?.to_owned();
    (samples > 0 && top_functions.contains('%')).then(|| ProfiledSpan {
        trace_id: trace["traceID"].as_str().unwrap_or_default().to_owned(),
        top_functions,
        flamegraph_url,
    })
}

/// The span's flame graph link answers an SVG.
fn check_flamegraph_link(span: &ProfiledSpan) {
    let answer = http::get(&span.flamegraph_url)
        .unwrap_or_else(|e| panic!("the span's profile.flamegraph_url: {e}"));
    assert_eq!(
        answer.status,
        200,
        "{} answered {}: {}",
        span.flamegraph_url,
        answer.status,
        truncate(&answer.text(), 500)
    );
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.contains("svg") && answer.text().contains("<svg"),
        "{} did not answer an SVG: {}",
        span.flamegraph_url,
        truncate(&answer.text(), 500)
    );
}

fn fail_with_page(session: &webdriver::Session<'_>, screenshot: &std::path::Path, what: &str) -> ! {
    session.screenshot(screenshot);
    panic!(
        "the Jaeger UI shows {what}; url {}, page text:\n{}\n(screenshot: {})",
        session.current_url(),
        truncate(&session.page_text(), 3000),
        screenshot.display()
    )
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Each test runs two to three processes that want the CPU; one test at a
/// time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    lock(&LOCK)
}

/// A fresh directory under the target dir for one test's files (the last
/// run's screenshot stays there).
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}
