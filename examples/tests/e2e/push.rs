//! Continuous profiles pushed to Pyroscope, end to end: the `traced`
//! fixture pushes to a receiver that decodes requests with Pyroscope's own
//! message definitions (`pyroscope.rs`), every pushed profile is read by
//! `go tool pprof -raw`, and its span labels are checked against the spans
//! the same run exported over OTLP.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use prost::Message;

use crate::formats::go_pprof;
use crate::pyroscope::{Behaviour, Push, PyroscopeReceiver};
use crate::receiver::Receiver;
use crate::spans::{Traced, fetch};

/// The two fields of pprof's `Profile` these tests read: when a profile
/// begins and how long it covers.
#[derive(Clone, PartialEq, prost::Message)]
struct ProfileTimes {
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
}

/// The agent's `push` stats, from `/debug/pprof/stats`.
fn push_stats(traced: &Traced) -> serde_json::Value {
    let (status, body) = fetch(&format!("http://{}/debug/pprof/stats", traced.http_addr));
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("stats are JSON");
    stats["push"].clone()
}

fn count(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("push.{key} missing in {stats}"))
}

/// Waits until the agent's push counts satisfy `done`.
fn wait_for_stats(
    traced: &Traced,
    patience: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let stats = push_stats(traced);
        if done(&stats) || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The samples of `go tool pprof -raw`: the labels of each sample. It
/// prints a sample's values and stack on one line, then its text labels
/// on one line (`span_id:[...] span_name:[...] thread:[...]`) and its
/// numeric ones on another.
fn raw_samples(raw: &str) -> Vec<BTreeMap<String, String>> {
    let mut samples = Vec::new();
    let mut in_samples = false;
    for line in raw.lines() {
        if line.starts_with("Samples:") {
            in_samples = true;
            continue;
        }
        if line.starts_with("Locations") {
            break;
        }
        let trimmed = line.trim();
        if !in_samples || trimmed.is_empty() {
            continue;
        }
        if !trimmed.contains(":[") {
            if trimmed.starts_with(|c: char| c.is_ascii_digit()) && trimmed.contains(':') {
                samples.push(BTreeMap::new());
            }
            continue;
        }
        let Some(sample) = samples.last_mut() else {
            continue;
        };
        let sample: &mut BTreeMap<String, String> = sample;
        let mut rest = trimmed;
        while let Some(open) = rest.find(":[") {
            let key = rest[..open].rsplit(' ').next().unwrap_or("").trim();
            let after = &rest[open + 2..];
            let close = after.find(']').unwrap_or(after.len());
            sample.insert(key.to_owned(), after[..close].to_owned());
            rest = &after[(close + 1).min(after.len())..];
        }
    }
    samples
}

/// Writes each pushed profile to a file and reads it with `go tool pprof
/// -raw`, returning every sample's labels.
fn read_pushed(pushes: &[Push], name: &str) -> Vec<BTreeMap<String, String>> {
    let dir = crate::fixture::scratch_dir(name);
    let mut samples = Vec::new();
    for (i, push) in pushes.iter().enumerate() {
        for series in &push.series {
            for (j, (_, pprof)) in series.profiles.iter().enumerate() {
                let path = dir.join(format!("push-{i}-{j}.pb"));
                std::fs::write(&path, pprof).unwrap();
                let raw = go_pprof(&["-raw", path.to_str().unwrap()]);
                assert!(
                    raw.contains("PeriodType: cpu nanoseconds"),
                    "a CPU profile:\n{raw}"
                );
                samples.extend(raw_samples(&raw));
            }
        }
    }
    samples
}

#[test]
fn pushed_profiles_label_samples_with_their_local_root_span_as_exported() {
    let pyroscope = PyroscopeReceiver::start();
    let otlp = Receiver::start();
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("PYROSCOPE_SERVER_ADDRESS", &pyroscope.url()),
            ("SMOLDER_PUSH_INTERVAL", "2s"),
            ("PYROSCOPE_AUTH_TOKEN", "t0ken"),
            ("PYROSCOPE_TENANT_ID", "team-checkout"),
            ("PYROSCOPE_LABELS", "region=eu-west-1,k8s.pod=traced-0"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.version=1.2.3,service.name=ignored",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint()),
        ],
    );
    let pushes = pyroscope.wait_for(Duration::from_secs(60), |p| p.len() >= 3);
    assert!(traced.rounds() > 0);
    let report = traced.finish();
    assert!(pushes.len() >= 3, "three intervals pushed: {pushes:?}");
    assert!(
        pyroscope.rejections().is_empty(),
        "{:?}",
        pyroscope.rejections()
    );

    // Headers: Connect, credentials, tenant.
    for push in &pushes {
        assert_eq!(push.header("content-type"), Some("application/proto"));
        assert_eq!(push.header("connect-protocol-version"), Some("1"));
        assert_eq!(push.header("authorization"), Some("Bearer t0ken"));
        assert_eq!(push.header("x-scope-orgid"), Some("team-checkout"));
    }
    // Series labels.
    let series = &pushes[0].series;
    assert_eq!(series.len(), 1, "CPU only, today");
    let labels: Vec<(&str, &str)> = series[0]
        .labels
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("__name__", "process_cpu"),
            ("k8s_pod", "traced-0"),
            ("region", "eu-west-1"),
            ("service_name", "traced"),
            ("service_version", "1.2.3"),
        ]
    );
    // Every interval is a profile of its own, with an id of its own.
    let ids: HashSet<&str> = pushes
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| &s.profiles)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(ids.len(), pushes.len());

    // The spans of the same run, as exported.
    let spans = otlp.wait_for(Duration::from_secs(20), |s| {
        s.iter().filter(|s| s.name() == "request").count() >= 3
    });
    let roots: BTreeMap<String, &crate::receiver::ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name() == "request")
        .map(|s| (s.span_id(), s))
        .collect();
    for root in roots.values() {
        assert_eq!(
            root.string("pyroscope.profile.id"),
            Some(root.span_id().as_str()),
            "a local root names its own profile"
        );
    }
    for child in spans.iter().filter(|s| s.name() == "cpu_heavy") {
        assert_eq!(
            child.string("pyroscope.profile.id"),
            None,
            "children do not"
        );
    }

    // Samples in spans carry the local root: its id and name, never the
    // innermost span's (the CPU is all in `cpu_heavy`, under `request`),
    // and no trace id.
    let samples = read_pushed(&pushes, "push-labels");
    let in_spans: Vec<_> = samples
        .iter()
        .filter(|s| s.contains_key("span_id"))
        .collect();
    assert!(
        in_spans.len() >= 3,
        "samples in spans: {samples:?}\nreport: {report:?}"
    );
    let mut linked = 0;
    for sample in &in_spans {
        assert_eq!(
            sample.get("span_name").map(String::as_str),
            Some("request"),
            "{sample:?}"
        );
        assert!(!sample.contains_key("trace_id"), "{sample:?}");
        assert!(sample.contains_key("thread"), "{sample:?}");
        let span_id = &sample["span_id"];
        assert_eq!(span_id.len(), 16, "{sample:?}");
        assert!(
            !spans
                .iter()
                .any(|s| s.name() == "cpu_heavy" && &s.span_id() == span_id),
            "labelled with the innermost span: {sample:?}"
        );
        if roots.contains_key(span_id) {
            linked += 1;
        }
    }
    // The fixture ends spans as it is stopped: the last ones may not have
    // been exported, but most samples must find their exported root.
    assert!(
        linked * 2 > in_spans.len(),
        "{linked} of {} samples link to an exported root span",
        in_spans.len()
    );
}

#[test]
fn a_refusing_server_gets_the_same_interval_again_with_backoff() {
    let pyroscope = PyroscopeReceiver::start();
    pyroscope.set(Behaviour::Status(503));
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("PYROSCOPE_SERVER_ADDRESS", &pyroscope.url()),
            ("SMOLDER_PUSH_INTERVAL", "1s"),
            ("PYROSCOPE_BASIC_AUTH_USER", "alice"),
            ("PYROSCOPE_BASIC_AUTH_PASSWORD", "s3cret"),
        ],
    );
    // Refused for now: the same interval (the same profile id) comes again.
    let refused = |pushes: &[Push]| -> Vec<String> {
        pushes
            .iter()
            .filter(|p| !p.accepted)
            .map(|p| p.series[0].profiles[0].0.clone())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while refused(&pyroscope.pushes()).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let tries = refused(&pyroscope.pushes());
    assert!(tries.len() >= 3, "{tries:?}");
    assert_eq!(tries[0], tries[1], "the refused interval is sent again");
    let stats = push_stats(&traced);
    assert!(count(&stats, "retries") >= 2, "{stats}");
    assert_eq!(count(&stats, "pushed"), 0, "{stats}");
    assert!(
        stats["last_error"].as_str().unwrap_or("").contains("503"),
        "{stats}"
    );
    // Throttled with a delay asked for, then accepted.
    pyroscope.set(Behaviour::RetryAfter(429, 1));
    std::thread::sleep(Duration::from_secs(2));
    pyroscope.set(Behaviour::Accept);
    let accepted = pyroscope.wait_for(Duration::from_secs(30), |p| !p.is_empty());
    assert!(!accepted.is_empty(), "push resumes once the server accepts");
    // The first accepted is the oldest still queued: refusals lose nothing
    // while the queue holds them.
    let stats = wait_for_stats(&traced, Duration::from_secs(20), |s| {
        count(s, "pushed") >= 2 && count(s, "queue_intervals") == 0
    });
    assert!(stats["last_error"].is_null(), "{stats}");
    assert_eq!(count(&stats, "failed"), 0, "{stats}");
    assert!(
        accepted[0].series[0].profiles[0].0 == tries[0] || count(&stats, "dropped") > 0,
        "the first refused interval went through, or was counted as dropped: {stats}"
    );
    assert!(traced.rounds() > 0);
    for push in pyroscope.pushes() {
        // RFC 7617: base64 of "alice:s3cret".
        assert_eq!(push.header("authorization"), Some("Basic YWxpY2U6czNjcmV0"));
    }
    drop(traced.finish());
}

/// A minute of pushing at 2 s intervals with the server down for 30 s of
/// it: the queue (6 intervals) overflows, the oldest intervals are dropped
/// and counted, and push resumes by itself. Every interval the agent ended
/// is accounted for (pushed, dropped, failed, or queued), the server holds
/// exactly the pushed ones, and those tile time without gaps but the
/// dropped ones: no sample falls between two intervals.
#[test]
fn an_outage_loses_only_counted_intervals_and_push_resumes() {
    let pyroscope = PyroscopeReceiver::start();
    let addr = pyroscope.addr;
    let mut traced = Traced::start(
        &["steady"],
        &[
            ("PYROSCOPE_SERVER_ADDRESS", &pyroscope.url()),
            ("SMOLDER_PUSH_INTERVAL", "2s"),
        ],
    );
    let first = pyroscope.wait_for(Duration::from_secs(30), |p| p.len() >= 5);
    assert!(first.len() >= 5);
    let before: Vec<Push> = pyroscope
        .stop()
        .into_iter()
        .filter(|p| p.accepted)
        .collect();
    std::thread::sleep(Duration::from_secs(30));
    let during = push_stats(&traced);
    assert!(
        count(&during, "dropped") > 0,
        "30 s is 15 intervals: {during}"
    );
    assert!(
        count(&during, "queue_intervals") <= count(&during, "queue_max_intervals"),
        "{during}"
    );
    assert!(
        count(&during, "queue_bytes") <= count(&during, "queue_max_bytes"),
        "{during}"
    );
    assert!(count(&during, "retries") > 0, "{during}");
    let pyroscope = PyroscopeReceiver::start_on(addr);
    let after = pyroscope.wait_for(Duration::from_secs(40), |p| p.len() >= 8);
    assert!(after.len() >= 8, "push resumed: {} pushes", after.len());
    assert!(traced.rounds() > 0);

    // Every interval ended is accounted for, at an instant when none is in
    // flight (a snapshot may straddle one: read again).
    let mut reconciled = None;
    for _ in 0..20 {
        let stats = push_stats(&traced);
        let sum = count(&stats, "pushed")
            + count(&stats, "dropped")
            + count(&stats, "failed")
            + count(&stats, "queue_intervals");
        if sum == count(&stats, "intervals") && count(&stats, "queue_intervals") == 0 {
            reconciled = Some(stats);
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let stats = reconciled.expect("intervals = pushed + dropped + failed + queued");
    drop(traced.finish());
    assert_eq!(count(&stats, "failed"), 0, "{stats}");

    // The server holds the pushed intervals (each once) and they tile time,
    // their gaps adding up to the dropped ones.
    let mut received: Vec<(String, ProfileTimes)> = before
        .iter()
        .chain(&pyroscope.accepted())
        .flat_map(|p| &p.series)
        .flat_map(|s| &s.profiles)
        .map(|(id, pprof)| (id.clone(), ProfileTimes::decode(pprof.as_slice()).unwrap()))
        .collect();
    received.sort_by_key(|(_, t)| t.time_nanos);
    received.dedup_by(|a, b| a.0 == b.0);
    assert!(received.len() as u64 >= count(&stats, "pushed"), "{stats}");
    let length = received[0].1.duration_nanos;
    assert_eq!(length, 2_000_000_000, "a profile covers its interval");
    let mut missing = 0;
    for pair in received.windows(2) {
        let (a, b) = (&pair[0].1, &pair[1].1);
        assert_eq!(b.duration_nanos, length);
        let gap = b.time_nanos - (a.time_nanos + a.duration_nanos);
        // Windows are back to back on the monotonic clock; a profile's start
        // is that clock read against the wall clock when its capture is
        // registered, so a step of the wall clock (NTP, the VM's clock
        // source: a few milliseconds here) shows between two of them. Allow
        // for that, and no more: a lost interval is a whole 2 s.
        const CLOCK_STEPS: i64 = 250_000_000;
        let skipped = (gap + CLOCK_STEPS).div_euclid(length);
        assert!(
            (gap - skipped * length).abs() < CLOCK_STEPS,
            "intervals tile time: gap {gap} ns between {a:?} and {b:?}"
        );
        missing += skipped as u64;
    }
    assert_eq!(
        missing,
        count(&stats, "dropped"),
        "the intervals missing at the server are the dropped ones: {stats}"
    );
}
