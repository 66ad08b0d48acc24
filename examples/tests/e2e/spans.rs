//! Span-aware profiling end to end: spans exported over OTLP to a receiver
//! that decodes them with the official protocol types, their profile
//! attributes, their flame graph links, and export outages.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::formats::assert_well_formed_svg_naming;
use crate::receiver::{Behaviour, GrpcReceiver, Pki, ReceivedSpan, Receiver};

/// A running `traced` fixture.
pub(crate) struct Traced {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub(crate) http_addr: String,
}

impl Traced {
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> Traced {
        let mut command = Command::new(env!("CARGO_BIN_EXE_traced"));
        for (key, _) in std::env::vars() {
            if key.starts_with("SMOLDER_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command
            .env("SMOLDER_HTTP_ADDR", "127.0.0.1:0")
            .env("OTEL_SERVICE_NAME", "traced");
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the traced fixture");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let http_addr = line
            .trim()
            .strip_prefix("http_addr=")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Traced {
            child,
            stdin,
            stdout,
            http_addr,
        }
    }

    /// Asks a `steady` fixture how many requests it has finished.
    pub(crate) fn rounds(&mut self) -> u64 {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin).and_then(|()| stdin.flush()).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("rounds=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected answer {line:?}"))
    }

    /// Closes stdin, waits, and returns the printed `key=value` lines.
    pub(crate) fn finish(mut self) -> HashMap<String, String> {
        drop(self.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "traced exited with {status}:\n{rest}");
        rest.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fetches `url` (an `http://host:port/path` the agent produced) over TCP.
pub(crate) fn fetch(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, target) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    use std::io::Write;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let response = crate::service::Response::read(&mut stream);
    (response.status, response.text())
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name() == name).collect()
}

/// What every span's profile attributes must say, whichever pipeline
/// exported them: the fixture knows where each span spent its CPU.
fn assert_profiles(spans: &[ReceivedSpan], http_addr: &str) {
    for span in spans {
        let url = span
            .string("profile.flamegraph_url")
            .unwrap_or_else(|| panic!("{} has no profile.flamegraph_url", span.name()));
        assert!(
            url.starts_with(&format!(
                "http://{http_addr}/debug/pprof/flamegraph?trace_id="
            )),
            "{url}"
        );
        assert!(
            url.ends_with(&format!("&span_id={}", span.span_id())),
            "{url}"
        );
        assert!(
            span.attribute("smolder.sampled").is_none(),
            "the layer's private mark is taken off {}",
            span.name()
        );
    }
    let requests = named(spans, "request");
    for heavy in named(spans, "cpu_heavy") {
        let samples = heavy.int("profile.samples").expect("profile.samples");
        // 300 ms of CPU at 499 Hz is about 150 samples.
        assert!(samples > 50, "cpu_heavy has {samples} samples");
        assert_eq!(
            heavy.int("profile.self_samples"),
            Some(samples),
            "all of it its own"
        );
        let top = heavy
            .string("profile.top_functions")
            .expect("profile.top_functions");
        assert!(top.starts_with("traced::span_hot_function"), "{top}");
        assert!(heavy.attribute("profile.cpu_time_ms").is_some());
    }
    // A sleeping span's profile is empty: it says 0, not nothing. (A sample
    // can land, rarely, in the microseconds of CPU it takes to enter the
    // span and fall asleep: none says much, and at least one says 0.)
    let sleepy = named(spans, "sleepy");
    for span in &sleepy {
        let samples = span.int("profile.samples").expect("profile.samples");
        assert!(
            samples < 5,
            "a sleeping span has {samples} samples:\n{}",
            fetch(&format!(
                "http://{http_addr}/debug/pprof/folded?trace_id={}&span_id={}",
                span.trace_id(),
                span.span_id()
            ))
            .1
        );
    }
    let empty: Vec<_> = sleepy
        .iter()
        .filter(|s| s.int("profile.samples") == Some(0))
        .collect();
    assert!(!empty.is_empty(), "no sleeping span says 0");
    for span in empty {
        assert_eq!(span.int("profile.self_samples"), Some(0));
        assert_eq!(span.string("profile.top_functions"), Some("no CPU samples"));
    }
    for request in &requests {
        let total = request.int("profile.samples").unwrap();
        let own = request.int("profile.self_samples").unwrap();
        assert!(
            total > own,
            "a parent counts its children's samples: {total} vs {own}"
        );
    }

    // An async task hopping between runtime worker threads is attributed.
    let async_work = named(spans, "async_work")[0];
    assert!(async_work.int("profile.samples").unwrap() > 20);
    let top = async_work.string("profile.top_functions").unwrap();
    assert!(
        top.contains("span_hot_function") || top.contains("async_hot_function"),
        "{top}"
    );

    // A span never entered, with all its CPU in a child on another thread,
    // is credited through the child.
    let offload = named(spans, "offload")[0];
    let samples = offload.int("profile.samples").unwrap();
    assert!(samples > 50, "offload has {samples} samples");
    assert_eq!(offload.int("profile.self_samples"), Some(0));
    let work = named(spans, "offloaded_work")[0];
    assert!(work.int("profile.samples").unwrap() > 50);
    assert_eq!(work.parent_span_id(), offload.span_id());
}

#[test]
fn exported_spans_carry_their_cpu_profile() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let traced = Traced::start(
        &["own", "--rounds", "3"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let spans = receiver.wait_for(Duration::from_secs(60), |spans| {
        named(spans, "request").len() >= 3
            && !named(spans, "async_work").is_empty()
            && !named(spans, "offload").is_empty()
    });
    assert!(
        spans.iter().all(|s| s.service == "traced"),
        "service.name from OTEL_SERVICE_NAME"
    );

    // Structure: each child's parent is its request, in the same trace.
    let requests = named(&spans, "request");
    for child in named(&spans, "cpu_heavy")
        .iter()
        .chain(&named(&spans, "sleepy"))
    {
        let parent = requests
            .iter()
            .find(|r| r.span_id() == child.parent_span_id())
            .unwrap_or_else(|| panic!("{} has no request parent", child.name()));
        assert_eq!(parent.trace_id(), child.trace_id());
    }
    assert!(
        requests.iter().all(|r| r.span.parent_span_id.is_empty()),
        "requests are roots"
    );

    assert_profiles(&spans, &traced.http_addr);

    // The flame graph link works and shows the span's hot function.
    let url = named(&spans, "cpu_heavy")[0]
        .string("profile.flamegraph_url")
        .unwrap();
    assert!(
        url.starts_with(&format!(
            "http://{}/debug/pprof/flamegraph?trace_id=",
            traced.http_addr
        )),
        "{url}"
    );
    let (status, svg) = fetch(url);
    assert_eq!(status, 200, "{svg}");
    assert_well_formed_svg_naming(&svg, &["traced::span_hot_function"]);
    // So does the trace's.
    let trace_url = format!(
        "http://{}/debug/pprof/folded?trace_id={}",
        traced.http_addr,
        requests[0].trace_id()
    );
    let (status, folded) = fetch(&trace_url);
    assert_eq!(status, 200);
    assert!(folded.contains("span_hot_function"), "{folded}");

    // Every request was origin-form HTTP/1.1 that a strict server takes.
    assert_eq!(receiver.rejections(), Vec::<String>::new());
    // The resource says smolder produced these spans, not the SDK.
    let resource = receiver.resource();
    let attribute = |key: &str| {
        resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(attribute("telemetry.sdk.name"), Some("smolder"));
    assert_eq!(attribute("telemetry.sdk.language"), Some("rust"));
    assert_eq!(
        attribute("telemetry.sdk.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );

    let summary = traced.finish();
    assert_eq!(summary["spans_dropped"], "0");
    assert_eq!(summary["spans_export_failed"], "0");
    // Of the 12 spans, the 3 sleeping ones are known to have no samples
    // without a lookup (bar a rare sample as they fall asleep).
    let sampled: u64 = summary["spans_sampled"].parse().unwrap();
    assert!((9..12).contains(&sampled), "{sampled} spans looked up");
}

/// The receiver the span tests export to is as strict as a server that
/// routes on the raw request target: it must refuse what the agent once
/// sent, or the tests above would not show the agent sends origin form.
#[test]
fn the_receiver_refuses_absolute_form_targets() {
    use std::io::Write as _;
    let receiver = Receiver::start();
    let ask = |target: &str| {
        let mut stream = std::net::TcpStream::connect(receiver.addr).unwrap();
        write!(
            stream,
            "POST {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
            receiver.addr
        )
        .unwrap();
        // No more requests: the receiver closes once it has answered.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        crate::service::Response::read(&mut stream).status
    };
    assert_eq!(ask(&format!("http://{}/v1/traces", receiver.addr)), 400);
    assert_eq!(ask("/v1/traces"), 200);
    assert_eq!(ask("/v1/logs"), 404);
    let rejections = receiver.rejections();
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    assert!(rejections[0].contains("origin form"), "{rejections:?}");
}

#[test]
fn a_users_own_otel_pipeline_gets_the_profile_attributes() {
    let receiver = Receiver::start();
    let endpoint = format!("{}/v1/traces", receiver.endpoint());
    // OTEL_EXPORTER_OTLP_ENDPOINT is set as many deployments do; smolder must
    // not export a second copy of the spans the user's pipeline exports.
    let traced = Traced::start(
        &["otel", "--endpoint", &endpoint],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    // The fixture flushes its provider before it reports, so every span has
    // arrived by then.
    let spans = receiver.wait_for(Duration::from_secs(60), |spans| spans.len() >= 9);
    assert!(
        spans.iter().all(|s| s.service == "traced-otel"),
        "the user's resource"
    );
    let mut ids: Vec<String> = spans.iter().map(|s| s.span_id()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "each span exported once");
    assert_eq!(spans.len(), 9);
    assert_profiles(&spans, &traced.http_addr);
    let summary = traced.finish();
    assert_eq!(summary["spans_forwarded"], "9");
    // Only spans that may have samples went through the agent's span
    // thread: not the 2 sleeping ones (bar a rare sample as they fall
    // asleep).
    let sampled: u64 = summary["spans_sampled"].parse().unwrap();
    assert!((7..9).contains(&sampled), "{sampled} spans looked up");
    assert_eq!(
        summary["spans_exported"], "0",
        "smolder itself exported nothing"
    );
}

#[test]
fn export_survives_a_receiver_outage() {
    let receiver = Receiver::start();
    let addr = receiver.addr;
    let endpoint = receiver.endpoint();
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    );
    receiver.wait_for(Duration::from_secs(30), |spans| spans.len() > 10);
    receiver.stop();
    // Down for a while: the host keeps working, exports fail and are counted.
    let rounds = traced.rounds();
    std::thread::sleep(Duration::from_secs(3));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while traced.rounds() < rounds + 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = traced.rounds();
    assert!(
        now >= rounds + 5,
        "the host's requests went on while the receiver was down: {rounds} -> {now}"
    );
    let receiver = Receiver::start_on(addr);
    let spans = receiver.wait_for(Duration::from_secs(30), |spans| spans.len() > 10);
    assert!(
        spans.len() > 10,
        "spans flow again once the receiver is back"
    );
    let summary = traced.finish();
    let count = |key: &str| summary[key].parse::<u64>().unwrap();
    assert!(
        count("spans_export_retries") > 0,
        "the request refused while the receiver was down was sent again"
    );
    assert!(
        count("spans_exported") > 0 && count("spans_exported") >= spans.len() as u64,
        "{summary:?}"
    );
}

#[test]
fn a_throttled_request_goes_again_after_the_delay_asked_for_and_nothing_is_lost() {
    let receiver = Receiver::start();
    receiver.set(Behaviour::RetryAfter(429, 2));
    let traced = Traced::start(
        &["steady"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.requests() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    receiver.set(Behaviour::Accept);
    receiver.wait_for(Duration::from_secs(30), |spans| !spans.is_empty());
    let arrivals = receiver.arrivals();
    assert!(arrivals.len() >= 2, "{arrivals:?}");
    // A lower bound only: the held request cannot go before the delay the
    // receiver asked for, however slow the machine (and no other request
    // goes while it is held).
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_secs(2),
        "the retry waited for Retry-After: {:?}",
        arrivals[1] - arrivals[0]
    );
    let summary = traced.finish();
    let count = |key: &str| summary[key].parse::<u64>().unwrap();
    assert!(count("spans_export_retries") >= 1, "{summary:?}");
    assert_eq!(count("spans_export_failed"), 0, "{summary:?}");
    assert_eq!(count("spans_dropped"), 0, "{summary:?}");
    assert_eq!(
        count("spans_exported"),
        receiver.spans().len() as u64,
        "every span exported reached the receiver once"
    );
}

#[test]
fn export_sends_configured_headers_gzipped_over_one_kept_connection() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=s%3Dcret, x-team=checkout",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    // Spans go out at least once a second: wait for a few requests.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.requests() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(receiver.requests() >= 3, "{} requests", receiver.requests());
    assert_eq!(receiver.last_header("x-api-key").as_deref(), Some("s=cret"));
    assert_eq!(receiver.last_header("x-team").as_deref(), Some("checkout"));
    assert_eq!(
        receiver.last_header("content-encoding").as_deref(),
        Some("gzip")
    );
    assert_eq!(
        receiver.connections(),
        1,
        "every request went over the one kept-alive connection"
    );
    let spans = receiver.spans();
    assert!(
        !spans.is_empty() && spans.iter().all(|s| s.service == "traced"),
        "the gzipped requests decode to the fixture's spans"
    );
    assert!(spans.iter().all(|s| s.int("profile.samples").is_some()));
    let summary = traced.finish();
    assert_eq!(summary["spans_export_failed"], "0");
}

#[test]
fn spans_reach_an_https_collector_that_checks_both_sides() {
    let pki = Pki::new("mutual");
    let receiver = Receiver::start_tls(pki.server_config());
    let endpoint = receiver.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let ca = pki.ca_file().display().to_string();
    let (certificate, key) = pki.client_files();
    let (certificate, key) = (certificate.display().to_string(), key.display().to_string());
    let traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &certificate),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ],
    );
    let spans = receiver.wait_for(Duration::from_secs(30), |spans| spans.len() >= 10);
    assert!(spans.len() >= 10, "{} spans arrived over TLS", spans.len());
    assert!(
        spans.iter().all(|s| s.int("profile.samples").is_some()),
        "spans carry their profile over TLS too"
    );
    let summary = traced.finish();
    let count = |key: &str| summary[key].parse::<u64>().unwrap();
    assert_eq!(count("spans_export_failed"), 0, "{summary:?}");
    assert_eq!(
        count("spans_exported"),
        receiver.spans().len() as u64,
        "{summary:?}"
    );
}

#[test]
fn spans_reach_a_grpc_collector_over_tls() {
    let pki = Pki::new("grpc");
    let receiver = GrpcReceiver::start_tls(&pki);
    let ca = pki.ca_file().display().to_string();
    let (certificate, key) = pki.client_files();
    let (certificate, key) = (certificate.display().to_string(), key.display().to_string());
    let traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &certificate),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.spans().len() < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary = traced.finish();
    let spans = receiver.spans();
    assert!(
        spans.len() >= 10,
        "{} spans arrived over gRPC and TLS: {summary:?}",
        spans.len()
    );
    // Only the fixture's own: the spans h2 opens on the agent's thread
    // while sending are not recorded (they would feed on themselves).
    let names: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cpu_heavy", "request"].into(), "{names:?}");
    let count = |key: &str| summary[key].parse::<u64>().unwrap();
    assert_eq!(count("spans_export_failed"), 0, "{summary:?}");
    assert_eq!(count("spans_exported"), spans.len() as u64, "{summary:?}");
}

#[test]
fn an_https_collector_signed_by_an_authority_not_trusted_gets_nothing() {
    let trusted = Pki::new("trusted");
    let other = Pki::new("other");
    let receiver = Receiver::start_tls(other.server_config());
    let ca = trusted.ca_file().display().to_string();
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ],
    );
    // The host works on while every export fails its handshake.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.connections() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(receiver.connections() >= 2, "the exporter tried");
    let before = traced.rounds();
    std::thread::sleep(Duration::from_millis(500));
    assert!(traced.rounds() > before, "the host's requests go on");
    let (status, stats) = fetch(&format!("http://{}/debug/pprof/stats", traced.http_addr));
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let error = stats["spans"]["export_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "{error:?}"
    );
    let summary = traced.finish();
    assert!(
        summary["spans_export_failed"].parse::<u64>().unwrap() > 0,
        "{summary:?}"
    );
    assert_eq!(
        summary["spans_export_retries"], "0",
        "a certificate not trusted is not retried"
    );
    assert_eq!(receiver.requests(), 0);
}

#[test]
fn a_hung_or_refusing_receiver_never_blocks_the_host() {
    let receiver = Receiver::start();
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    );
    receiver.wait_for(Duration::from_secs(30), |spans| !spans.is_empty());
    // Accepts connections and never answers, then refuses with 500 and 429.
    // Under each, the exporter must keep trying and the host's requests
    // must keep finishing. (Progress is awaited, not timed: CI machines are
    // shared, and a blocked host makes none at all.)
    for behaviour in [
        Behaviour::Hang,
        Behaviour::Status(500),
        Behaviour::Status(429),
    ] {
        receiver.set(behaviour);
        let (requests, rounds) = (receiver.requests(), traced.rounds());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (receiver.requests() < requests + 2 || traced.rounds() < rounds + 5)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            receiver.requests() >= requests + 2,
            "the exporter kept trying under {behaviour:?}"
        );
        let now = traced.rounds();
        assert!(
            now >= rounds + 5,
            "the host's requests went on under {behaviour:?}: {rounds} -> {now}"
        );
        // Operators can see why.
        let (_, stats) = fetch(&format!("http://{}/debug/pprof/stats", traced.http_addr));
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let error = stats["spans"]["export_error"].as_str().unwrap_or_default();
        let expected = match behaviour {
            Behaviour::Status(code) => code.to_string(),
            _ => "no answer".to_owned(),
        };
        assert!(
            error.contains(&expected),
            "under {behaviour:?}: {}",
            stats["spans"]
        );
    }
    receiver.set(Behaviour::Accept);
    let before = receiver.spans().len();
    let spans = receiver.wait_for(Duration::from_secs(30), |spans| spans.len() > before + 10);
    assert!(spans.len() > before + 10, "export resumed");
    let (status, stats) = fetch(&format!("http://{}/debug/pprof/stats", traced.http_addr));
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let spans = &stats["spans"];
    assert!(
        spans["export_failed"].as_u64().unwrap() > 0,
        "requests refused with 500 are counted in /debug/pprof/stats: {spans}"
    );
    assert!(
        spans["export_retries"].as_u64().unwrap() > 0,
        "requests refused with 429 or unanswered were sent again: {spans}"
    );
    assert!(
        spans["export_error"].is_null(),
        "cleared on success: {spans}"
    );
    let summary = traced.finish();
    assert!(summary["spans_export_failed"].parse::<u64>().unwrap() > 0);
}

#[test]
fn pprof_samples_carry_span_labels_for_tagfocus() {
    let traced = Traced::start(&["steady"], &[]);
    let url = format!("http://{}/debug/pprof/profile?seconds=2", traced.http_addr);
    let focused = crate::formats::go_pprof(&["-top", "-tagfocus=span_name=cpu_heavy", &url]);
    assert!(focused.contains("traced::span_hot_function"), "{focused}");
    let ignored = crate::formats::go_pprof(&["-top", "-tagfocus=span_name=no_such_span", &url]);
    assert!(!ignored.contains("traced::span_hot_function"), "{ignored}");
    let tags = crate::formats::go_pprof(&["-tags", &url]);
    for label in ["trace_id:", "span_id:", "span_name:", "cpu_heavy"] {
        assert!(tags.contains(label), "{label} missing from:\n{tags}");
    }
    traced.finish();
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn no_receiver_for_two_minutes_then_spans_flow() {
    // A port with nothing behind it: connections are refused from the start.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{addr}");
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ],
    );
    let pid = traced.child.id();
    let stats_url = format!("http://{}/debug/pprof/stats", traced.http_addr);
    let mut rss = Vec::new();
    let rounds_at_start = traced.rounds();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(5));
        rss.push(rss_kib(pid));
    }
    let rounds_after_outage = traced.rounds();
    assert!(
        rounds_after_outage > rounds_at_start + 5,
        "the host's requests went on without a receiver: {rounds_at_start} -> {rounds_after_outage}"
    );
    let (status, stats) = fetch(&stats_url);
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    // Memory stays bounded while spans cannot leave: compare the second
    // minute with the first.
    let first_minute = rss[..rss.len() / 2].iter().max().copied().unwrap();
    let second_minute = rss[rss.len() / 2..].iter().max().copied().unwrap();
    assert!(
        second_minute < first_minute + 16 * 1024,
        "RSS {first_minute} -> {second_minute} KiB"
    );
    assert!(stats["agent_memory_bytes"].as_u64().unwrap() < 32 << 20);
    // The outage shows where operators look.
    let spans = &stats["spans"];
    assert!(
        spans["export_failed"].as_u64().unwrap() + spans["dropped_queue_full"].as_u64().unwrap()
            > 0,
        "the outage is counted in /debug/pprof/stats: {spans}"
    );

    let receiver = Receiver::start_on(addr);
    let spans = receiver.wait_for(Duration::from_secs(60), |spans| spans.len() > 10);
    assert!(spans.len() > 10, "spans flow once the receiver appears");
    let summary = traced.finish();
    let failed: u64 = summary["spans_export_failed"].parse().unwrap();
    let dropped: u64 = summary["spans_dropped"].parse().unwrap();
    assert!(failed + dropped > 0, "the outage shows in the counters");
}
