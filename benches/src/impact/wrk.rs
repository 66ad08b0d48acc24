//! The load: `wrk` with the demo's browsing mix, and reading its report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::child::{HarnessError, fail};

/// `wrk` connections: enough to keep one CPU's worth of request handlers
/// busy, few enough that queueing does not dominate latency.
pub(super) const CONNECTIONS: u32 = 4;

/// The load: the demo's browsing mix (`load.rs`: order history, search,
/// order history, search, sales report), without its pauses, so that the
/// demo's CPU is always busy. Order histories are of business accounts
/// (every tenth customer, hundreds of orders each: the N+1 queries, one
/// span per order); searches cycle through the 40 brands (a full scan of
/// 200 000 products each); the report renders megabytes of JSON. Checkout
/// is left out: it waits 150 ms on a lock and a simulated payment call, so
/// it would measure waiting, not CPU.
pub(super) const WRK_SCRIPT: &str = r#"-- smolder-benches impact: the demo's browsing mix, back to back
local brands = {"Acme", "Northwind", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay",
  "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent", "Wonka", "Gringotts", "Oscorp",
  "Aperture", "Monarch", "Dunder", "Pied%20Piper", "Massive", "Blue%20Sun", "Buy%20n%20Large",
  "Ollivander", "Zorg", "Nakatomi", "Prestige", "Sirius", "Virtucon", "Gekko", "Krusty",
  "Duff", "Bluth", "Sterling", "Pendant", "Rekall", "Weyland", "Yoyodyne", "Omni", "Spacely",
  "Cogswell"}
local n = 0
request = function()
  local step = n % 5
  local pair = math.floor(n / 5) * 2 + math.floor(step / 2)
  n = n + 1
  local path
  if step == 0 or step == 2 then
    path = string.format("/orders/%d", ((pair * 37) % 100 + 1) * 10)
  elseif step == 1 or step == 3 then
    path = "/search?brand=" .. brands[(pair * 7) % 40 + 1]
  else
    path = "/report"
  end
  return wrk.format("GET", path)
end
"#;

/// What one `wrk --latency` run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct WrkReport {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx/3xx answers plus socket errors (connect, read, write,
    /// timeout).
    pub errors: u64,
}

/// A latency as wrk prints it (`850.00us`, `99.75ms`, `1.25s`, `2.00m`), in
/// milliseconds.
fn wrk_millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// Parses wrk's output (with `--latency`).
fn parse_wrk(output: &str) -> Option<WrkReport> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0u64;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => p50 = wrk_millis(value),
            ["99%", value] => p99 = wrk_millis(value),
            [n, "requests", "in", time, ..] => {
                requests = n.parse().ok();
                seconds = time.trim_end_matches(',').strip_suffix('s')?.parse().ok();
            }
            ["Requests/sec:", value] => rps = value.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    Some(WrkReport {
        requests: requests?,
        seconds: seconds?,
        requests_per_second: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
        errors,
    })
}

/// Runs `wrk` against `url` for `duration` with the browsing script.
pub(super) fn run_wrk(
    script: &Path,
    url: &str,
    duration: Duration,
) -> Result<WrkReport, HarnessError> {
    let output = Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| HarnessError(format!("cannot run wrk (apt-get install -y wrk): {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return fail(format!(
            "wrk failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse_wrk(&stdout).ok_or_else(|| HarnessError(format!("cannot read wrk's output:\n{stdout}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "\
Running 10s test @ http://127.0.0.1:8080
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   103.19ms   80.12ms 412.00ms   71.00%
    Req/Sec    36.10     10.00    60.00     70.00%
  Latency Distribution
     50%   99.75ms
     75%  150.00ms
     90%  250.00ms
     99%    1.25s
  372 requests in 10.02s, 1.23GB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:     37.11
Transfer/sec:    125.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let report = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(
            report,
            WrkReport {
                requests: 372,
                seconds: 10.02,
                requests_per_second: 37.11,
                p50_ms: 99.75,
                p99_ms: 1250.0,
                errors: 6,
            }
        );
        assert_eq!(wrk_millis("850.00us"), Some(0.85));
        assert_eq!(wrk_millis("2.00m"), Some(120_000.0));
        assert_eq!(wrk_millis("12"), None);
        assert!(parse_wrk("Running 10s test").is_none());
    }
}
