//! The HTTP endpoint, driven over real TCP: Go's tools, browsers' views,
//! history, diffs, and every kind of bad request.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::fixture::{leaf_weight, parse_folded};
use crate::formats::assert_well_formed_svg_naming;
use crate::service::{Service, start_error};

/// Waits until the service's history reaches back `span`.
fn wait_for_history(service: &Service, span: Duration) {
    let deadline = Instant::now() + span + Duration::from_secs(60);
    while service.stats()["history_span_seconds"].as_f64().unwrap() < span.as_secs_f64() {
        assert!(Instant::now() < deadline, "history never reached {span:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn go_tool_pprof_reads_a_live_capture() {
    let service = Service::start(&[], &[]);
    let url = format!("http://{}/debug/pprof/profile?seconds=2", service.addr);
    let top = crate::formats::go_pprof(&["-top", &url]);
    assert!(top.contains("workload::steady_function"), "{top}");
    assert!(top.contains("workload::growing_function"), "{top}");
    let summary = service.stop();
    assert!(
        summary["rounds"].parse::<u64>().unwrap() > 0,
        "the host kept working"
    );
}

#[test]
fn profile_route_follows_go_conventions() {
    let service = Service::start(&[], &[]);
    let response = service.get("/debug/pprof/profile?seconds=1");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        response.header("content-disposition"),
        Some("attachment; filename=\"profile\"")
    );
    assert_eq!(&response.body[..2], &[0x1f, 0x8b], "gzip");
    let head =
        service.send(b"HEAD /debug/pprof/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
}

#[test]
fn flamegraph_and_folded_answer_from_history() {
    let service = Service::start(&[], &[]);
    wait_for_history(&service, Duration::from_secs(3));
    let svg = service.get("/debug/pprof/flamegraph?window=2s");
    assert_eq!(svg.status, 200, "{}", svg.text());
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let text = svg.text();
    assert_well_formed_svg_naming(
        &text,
        &["workload::steady_function", "workload::growing_function"],
    );
    assert!(
        text.contains("workload: CPU, last 2s"),
        "the title names the service and span"
    );

    let folded = service
        .get("/debug/pprof/folded?window=2s&thread=work*")
        .text();
    let stacks = parse_folded(&folded);
    assert!(leaf_weight(&stacks, "::steady_function") > 0, "{folded}");
    let other_thread = service
        .get("/debug/pprof/folded?window=2s&thread=no-such-thread")
        .text();
    assert!(
        other_thread.is_empty(),
        "the thread filter applies: {other_thread}"
    );

    let pprof = service.get("/debug/pprof/profile?window=2s");
    assert_eq!(pprof.status, 200);

    // A young agent answers "the last hour" with the history it has.
    let hour = service.get("/debug/pprof/flamegraph?window=1h");
    assert_eq!(hour.status, 200, "{}", hour.text());
    assert!(
        hour.text().contains("(the history covers"),
        "the title says how much"
    );
    service.stop();
}

#[test]
fn diff_shows_the_function_that_got_hotter() {
    let service = Service::start(
        &[("SMOLDER_HISTORY_RESOLUTION", "1s")],
        &["--shift-after", "4"],
    );
    // Before the shift growing_function has a quarter of the work; after it,
    // half (three times the units). Compare the last 3 s with the 3 s ending 5 s earlier.
    wait_for_history(&service, Duration::from_secs(9));
    let folded = service.get("/debug/pprof/folded?window=3s&base=5s");
    assert_eq!(folded.status, 200, "{}", folded.text());
    let (mut before, mut after) = (0u64, 0u64);
    for line in folded.text().lines() {
        let mut fields = line.rsplitn(3, ' ');
        let (now, was, stack) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        if stack.ends_with("::growing_function") {
            before += was.parse::<u64>().unwrap();
            after += now.parse::<u64>().unwrap();
        }
    }
    assert!(
        after as f64 > 1.5 * before as f64,
        "growing_function: {before} before, {after} after"
    );

    let svg = service
        .get("/debug/pprof/flamegraph?window=3s&base=5s")
        .text();
    assert_well_formed_svg_naming(&svg, &["workload::growing_function"]);
    let title = svg
        .split("<title>")
        .find(|t| t.starts_with("workload::growing_function"))
        .expect("growing_function has a frame");
    assert!(
        title.contains("; +"),
        "a positive delta marks it grown: {title}"
    );

    let pprof = service.get("/debug/pprof/profile?window=3s&base=5s");
    assert_eq!(pprof.status, 200);
    let link = pprof.header("link").expect("the base is linked");
    assert!(
        link.contains("window=3s&ago=5s") && link.contains("rel=\"base\""),
        "{link}"
    );
    service.stop();
}

#[test]
fn concurrent_captures_both_succeed_and_rates_conflict_clearly() {
    let service = Service::start(&[], &[]);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| service.get("/debug/pprof/profile?seconds=3&hz=499"));
        std::thread::sleep(Duration::from_millis(500));
        let b = scope.spawn(|| service.get("/debug/pprof/folded?seconds=1"));
        let conflict = service.get("/debug/pprof/profile?seconds=1&hz=199");
        assert_eq!(conflict.status, 409, "{}", conflict.text());
        assert!(conflict.text().contains("499 Hz"), "{}", conflict.text());
        let same_rate = service.get("/debug/pprof/profile?seconds=1&hz=499");
        assert_eq!(same_rate.status, 200, "the same rate is no conflict");
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(b.status, 200, "{}", b.text());
    assert!(!b.text().is_empty());
    let after = service.get("/debug/pprof/profile?seconds=1&hz=199");
    assert_eq!(
        after.status, 200,
        "the rate is free again once the capture ended"
    );
    service.stop();
}

#[test]
fn bad_requests_get_precise_client_errors() {
    let service = Service::start(&[], &[]);
    let cases: &[(&str, u16, &str)] = &[
        (
            "/debug/pprof/profile?seconds=abc",
            400,
            "whole number from 1 to 300",
        ),
        (
            "/debug/pprof/profile?seconds=-5",
            400,
            "whole number from 1 to 300",
        ),
        (
            "/debug/pprof/profile?seconds=0",
            400,
            "whole number from 1 to 300",
        ),
        (
            "/debug/pprof/profile?seconds=301",
            400,
            "whole number from 1 to 300",
        ),
        ("/debug/pprof/profile?seconds=2&hz=0", 400, "1 to 10000"),
        ("/debug/pprof/profile?seconds=2&hz=20000", 400, "1 to 10000"),
        (
            "/debug/pprof/flamegraph?window=5parsecs",
            400,
            "such as 30s",
        ),
        (
            "/debug/pprof/flamegraph?seconds=5&window=5m",
            400,
            "cannot be combined",
        ),
        ("/debug/pprof/folded?color=red", 400, "unknown parameter"),
        (
            "/debug/pprof/folded?window=1m&window=2m",
            400,
            "more than once",
        ),
        (
            "/debug/pprof/flamegraph?window=1m&base=10h",
            400,
            "history reaches back",
        ),
        ("/debug/pprof/stats?verbose=1", 400, "unknown parameter"),
        ("/debug/pprof/heap", 404, "no route"),
        ("/", 404, "no route"),
    ];
    for (target, status, reason) in cases {
        let response = service.get(target);
        assert_eq!(response.status, *status, "{target}: {}", response.text());
        assert!(
            response.text().contains(reason),
            "{target}: {}",
            response.text()
        );
        assert_eq!(
            response.text().trim().lines().count(),
            1,
            "one-line reason for {target}"
        );
    }
    let post = service.send(b"POST /debug/pprof/profile HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    let long_target = format!("/debug/pprof/folded?thread={}", "a".repeat(9000));
    assert_eq!(service.get(&long_target).status, 414);
    let huge_header = service.get_with("/debug/pprof/stats", &[("X-Filler", &"b".repeat(20_000))]);
    assert_eq!(huge_header.status, 431);
    let garbage = service.send(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n");
    assert_eq!(garbage.status, 400);

    // The agent and the host are unaffected.
    assert_eq!(service.get("/debug/pprof/profile?seconds=1").status, 200);
    let stats = service.stats();
    assert!(stats["http"]["client_errors"].as_u64().unwrap() >= cases.len() as u64);
    let summary = service.stop();
    assert!(summary["rounds"].parse::<u64>().unwrap() > 0);
}

#[test]
fn connections_over_the_limit_get_503_then_service_resumes() {
    let service = Service::start(&[("SMOLDER_HTTP_MAX_CONNECTIONS", "4")], &[]);
    let idle: Vec<_> = (0..4).map(|_| service.connect()).collect();
    // Give the server a moment to accept all four.
    std::thread::sleep(Duration::from_millis(300));
    let refused = service.get("/debug/pprof/stats");
    assert_eq!(refused.status, 503, "{}", refused.text());
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = service.get("/debug/pprof/stats");
        if response.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the endpoint never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(service.stats()["http"]["rejected_busy"].as_u64().unwrap() >= 1);
    service.stop();
}

#[test]
fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let service = Service::start(&[], &[]);
    let mut slow = service.connect();
    slow.write_all(b"GET /debug/pprof/stats HTTP/1.1\r\n")
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(60) {
        // One header byte a second, never finishing the head.
        if slow.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        assert_eq!(
            service.get("/debug/pprof/stats").status,
            200,
            "others are served meanwhile"
        );
        slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut byte = [0u8; 512];
        match slow.read(&mut byte) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true; // the server answered (408) and will close
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        closed,
        "the server must close a connection whose head never completes"
    );
    service.stop();
}

#[test]
fn a_client_that_disconnects_cancels_its_capture() {
    let service = Service::start(&[], &[]);
    {
        let mut stream = service.connect();
        stream
            .write_all(b"GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
    } // disconnect
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.stats()["http"]["captures_cancelled"]
        .as_u64()
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the capture was never cancelled");
        std::thread::sleep(Duration::from_millis(200));
    }
    service.stop();
}

#[test]
fn non_loopback_addresses_need_a_token() {
    let refused = start_error(&[("SMOLDER_HTTP_ADDR", "0.0.0.0:0")]).expect("start must fail");
    assert!(refused.contains("SMOLDER_HTTP_TOKEN"), "{refused}");

    let local = Service::start(
        &[
            ("SMOLDER_HTTP_ADDR", "0.0.0.0:0"),
            ("SMOLDER_HTTP_TOKEN", "s3cret"),
        ],
        &[],
    );
    let anonymous = local.get("/debug/pprof/stats");
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    let wrong = local.get_with("/debug/pprof/stats", &[("Authorization", "Bearer s3creT")]);
    assert_eq!(wrong.status, 401);
    let right = local.get_with("/debug/pprof/stats", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(right.status, 200);
    local.stop();
}

#[test]
fn a_taken_address_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let error = start_error(&[("SMOLDER_HTTP_ADDR", &addr)]).expect("start must fail");
    assert!(
        error.contains(&addr) && error.contains("SMOLDER_HTTP_ADDR"),
        "{error}"
    );
}

#[test]
fn index_and_stats_describe_the_agent() {
    let service = Service::start(&[], &[]);
    let index = service.get("/debug/pprof/");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    for link in [
        "flamegraph?window=5m",
        "profile?seconds=10",
        "folded?window=5m",
        "stats",
    ] {
        assert!(index.text().contains(link), "index links {link}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.stats()["samples_taken"].as_u64().unwrap() == 0 {
        assert!(Instant::now() < deadline, "no samples taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = service.stats();
    for field in [
        "engine",
        "frequency_hz",
        "threads_sampled",
        "samples_taken",
        "samples_dropped",
        "handler_cost_ns",
        "collector_cpu_seconds",
        "overhead_percent",
        "agent_memory_bytes",
        "history_span_seconds",
        "uptime_seconds",
        "spans",
        "http",
    ] {
        assert!(stats.get(field).is_some(), "stats has {field}: {stats}");
    }
    assert_eq!(stats["engine"], "per-thread-timers");
    assert!(stats["handler_cost_ns"]["p50"].as_u64().is_some());
    service.stop();
}
