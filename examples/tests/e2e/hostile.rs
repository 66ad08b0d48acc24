//! Hostile HTTP clients: floods, slow and huge requests, garbage, abandoned
//! captures, rate tug-of-war. The endpoint must keep answering legitimate
//! requests within seconds, leave the host's own work alone, and leak
//! nothing (file descriptors, threads, memory) afterwards.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::service::Service;

/// Open file descriptors, threads and resident memory (KiB) of a process.
fn resources(pid: u32) -> (usize, usize, u64) {
    let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
        rss,
    )
}

/// Raises this process's open-file limit to its hard limit, so a test can
/// hold a thousand connections.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then setting what we just read.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// Polls until `/debug/pprof/stats` answers 200, returning how long it took.
fn until_served(service: &Service, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(service.addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(
                b"GET /debug/pprof/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < within,
            "the endpoint did not answer within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_thousand_connections_then_business_as_usual() {
    assert!(
        raise_fd_limit() > 1100,
        "the test needs a file limit above 1100"
    );
    let service = Service::start(&[], &[]);
    let pid = service.pid();
    until_served(&service, Duration::from_secs(10));
    let (fds_before, threads_before, rss_before) = resources(pid);

    let flood: Vec<_> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(service.addr).ok())
        .collect();
    assert!(flood.len() >= 990, "opened {} connections", flood.len());
    // Idle connections hold their slots until the 10 s head timeout; the
    // rest were refused with 503 at once. Legitimate requests get through
    // within seconds either way.
    until_served(&service, Duration::from_secs(30));
    drop(flood);

    // Afterwards, nothing is left behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (fds, threads, rss) = resources(pid);
        // The render pool (up to 4 threads) may still be warm.
        let settled = fds <= fds_before + 2 && threads <= threads_before + 4;
        if settled {
            assert!(
                rss < rss_before + 32 * 1024,
                "RSS grew from {rss_before} KiB to {rss} KiB"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fds {fds_before} -> {fds}, threads {threads_before} -> {threads}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = service.stop();
    assert!(
        summary["rounds"].parse::<u64>().unwrap() > 0,
        "the host kept working"
    );
}

#[test]
fn a_megabyte_of_headers_is_refused() {
    let service = Service::start(&[], &[]);
    let mut stream = service.connect();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = stream.write_all(b"GET /debug/pprof/stats HTTP/1.1\r\nHost: x\r\nX-Big: ");
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..16 {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let mut head = [0u8; 12];
    let answered = stream.read_exact(&mut head).is_ok();
    let _ = writer.join();
    // The server answers 431 as soon as the head passes its limit and then
    // closes; a client still writing may see the close (a reset) first.
    assert!(
        !answered || &head[9..12] == b"431",
        "got {:?}",
        String::from_utf8_lossy(&head)
    );
    until_served(&service, Duration::from_secs(10));
    service.stop();
}

#[test]
fn pipelined_garbage_after_a_good_request() {
    let service = Service::start(&[], &[]);
    let response = service.send(
        b"GET /debug/pprof/stats HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02GARBAGE / HTTP/9.9\r\n\r\n",
    );
    assert_eq!(response.status, 200, "the good request is answered first");
    let mut stream = service.connect();
    stream.write_all(b"GET /debug/pprof/stats HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = String::new();
    let _ = stream.read_to_string(&mut all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(
        all.contains("HTTP/1.1 404"),
        "pipelined requests are answered in order: {all}"
    );
    until_served(&service, Duration::from_secs(10));
    service.stop();
}

#[test]
fn a_tug_of_war_over_the_sampling_rate() {
    let service = Service::start(&[], &[]);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let requests: Vec<_> = [199, 499, 999, 199, 2999, 499, 99, 999, 199, 4999]
            .into_iter()
            .map(|hz| {
                let service = &service;
                scope.spawn(move || {
                    service
                        .get(&format!("/debug/pprof/profile?seconds=1&hz={hz}"))
                        .status
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));
    // With every capture done, the rate is the configured one again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.stats()["frequency_hz"] != 99 {
        assert!(
            Instant::now() < deadline,
            "the rate never returned to 99 Hz"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        service.get("/debug/pprof/profile?seconds=1&hz=777").status,
        200
    );
    service.stop();
}
