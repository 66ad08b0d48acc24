//! Which failed requests may be sent again, and when: HTTP statuses and
//! `Retry-After`, gRPC codes and `RetryInfo`, as the OTLP specification
//! classifies them (Pyroscope's Connect API answers with the same HTTP
//! statuses for the same reasons). A delay the server asks for is honoured
//! up to [`MAX_ASKED_DELAY`]; otherwise a held request waits an exponential
//! backoff with jitter ([`Backoff`]).

use std::time::{Duration, Instant};

/// Why a request failed, and whether it may be tried again.
#[derive(Debug)]
pub(crate) struct ExportError {
    /// What the server did (or failed to do), in words for a log.
    pub(crate) message: String,
    pub(crate) retry: Retry,
}

/// What to do with a request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The server rejected the data: sending it again would not help.
    Never,
    /// Send it again after a backoff of the sender's choosing.
    Backoff,
    /// Send it again no sooner than this, as the server asked.
    After(Duration),
}

impl ExportError {
    pub(crate) fn fatal(message: String) -> ExportError {
        ExportError {
            message,
            retry: Retry::Never,
        }
    }

    pub(crate) fn retryable(message: String) -> ExportError {
        ExportError {
            message,
            retry: Retry::Backoff,
        }
    }
}

/// First wait before sending a refused request again; it doubles with
/// each refusal (with jitter, so that a fleet restarted together does not
/// retry in step), up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// When a request refused for now is tried again: the delay the server
/// asked for, or the next step of a jittered exponential backoff. Each
/// sender decides how long it keeps trying ([`Backoff::expired`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// When the request was first refused.
    first_refused: Instant,
    /// The backoff step after the latest refusal.
    step: Duration,
    next_try: Instant,
}

impl Backoff {
    /// The state after a request's first refusal, at `now`.
    pub(crate) fn first(retry: Retry, now: Instant) -> Backoff {
        let mut backoff = Backoff {
            first_refused: now,
            step: FIRST_BACKOFF,
            next_try: now,
        };
        backoff.schedule(retry, now);
        backoff
    }

    /// When to try again after a refusal: as asked, or after the next
    /// backoff step with up to ±25 % jitter.
    pub(crate) fn schedule(&mut self, retry: Retry, now: Instant) {
        let wait = match retry {
            Retry::After(asked) => asked,
            _ => {
                let wait = jitter(self.step);
                self.step = (self.step * 2).min(MAX_BACKOFF);
                wait
            }
        };
        self.next_try = now + wait;
    }

    /// Whether the next try is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next_try
    }

    /// When the next try is due.
    pub(crate) fn next_try(&self) -> Instant {
        self.next_try
    }

    /// Whether the next try would come more than `retry_for` after the
    /// first refusal: then the request is given up.
    pub(crate) fn expired(&self, retry_for: Duration) -> bool {
        self.next_try.duration_since(self.first_refused) > retry_for
    }
}

/// `wait` scaled by a factor between 0.75 and 1.25.
pub(crate) fn jitter(wait: Duration) -> Duration {
    let permille = 750 + crate::sampler::random::SplitMix64::seeded().below(501);
    wait * permille as u32 / 1000
}

/// Longest delay a collector may ask for that is honoured as asked; a
/// longer one is cut to this, so that a misconfigured collector cannot park
/// the exporter for hours.
pub(crate) const MAX_ASKED_DELAY: Duration = Duration::from_secs(60);

/// OTLP/HTTP: 429, 502, 503 and 504 mean "later" (after `asked`, the
/// answer's `Retry-After`, if it had one), everything else "never". Only
/// for statuses that are not a success.
pub(crate) fn http_status(status: hyper::StatusCode, asked: Option<Duration>) -> Retry {
    match status.as_u16() {
        429 | 502 | 503 | 504 => asked.map_or(Retry::Backoff, Retry::After),
        _ => Retry::Never,
    }
}

/// A `Retry-After` header's delay. Only the delay-seconds form is read: an
/// HTTP date would need this clock to agree with the collector's, and the
/// exporter's own backoff is the better guess then.
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_ASKED_DELAY))
}

/// OTLP/gRPC's retryable codes. `RESOURCE_EXHAUSTED` is retryable only
/// when the collector says when (a `RetryInfo` in the status details):
/// otherwise the request itself may be what is too large.
pub(crate) fn grpc_retry(status: &tonic::Status) -> Retry {
    use tonic::Code;
    let asked = retry_info(status.details());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => asked.map_or(Retry::Backoff, Retry::After),
        Code::ResourceExhausted => asked.map_or(Retry::Never, Retry::After),
        _ => Retry::Never,
    }
}

/// The delay of a `google.rpc.RetryInfo` among the details of a gRPC
/// status (`grpc-status-details-bin`: an encoded `google.rpc.Status`).
fn retry_info(details: &[u8]) -> Option<Duration> {
    use prost::Message as _;
    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
    let status = rpc::Status::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|any| any.type_url == RETRY_INFO)?;
    let delay = rpc::RetryInfo::decode(info.value.as_slice())
        .ok()?
        .retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos)
        .ok()
        .filter(|&n| n < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos).min(MAX_ASKED_DELAY))
}

/// The few `google.rpc` and well-known messages a gRPC status's details
/// hold, with only the fields read here.
mod rpc {
    #[derive(prost::Message)]
    pub(super) struct Status {
        #[prost(message, repeated, tag = "3")]
        pub(super) details: Vec<Any>,
    }

    #[derive(prost::Message)]
    pub(super) struct Any {
        #[prost(string, tag = "1")]
        pub(super) type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) value: Vec<u8>,
    }

    #[derive(prost::Message)]
    pub(super) struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub(super) retry_delay: Option<Duration>,
    }

    /// `google.protobuf.Duration`.
    #[derive(prost::Message)]
    pub(super) struct Duration {
        #[prost(int64, tag = "1")]
        pub(super) seconds: i64,
        #[prost(int32, tag = "2")]
        pub(super) nanos: i32,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_asked_delays() {
        let now = Instant::now();
        let mut backoff = Backoff::first(Retry::Backoff, now);
        let first = backoff.next_try() - now;
        assert!((375..=625).contains(&first.as_millis()), "{first:?}");
        let mut steps = Vec::new();
        for _ in 0..6 {
            backoff.schedule(Retry::Backoff, now);
            steps.push(backoff.next_try() - now);
        }
        // 1 s, 2 s, 4 s, then capped at 5 s, each within ±25 %.
        for (step, nominal) in steps.iter().zip([1000, 2000, 4000, 5000, 5000, 5000]) {
            let ms = step.as_millis() as u64;
            assert!(ms * 4 >= nominal * 3 && ms * 4 <= nominal * 5, "{steps:?}");
        }
        backoff.schedule(Retry::After(Duration::from_secs(7)), now);
        assert_eq!(backoff.next_try() - now, Duration::from_secs(7));
        assert!(!backoff.due(now) && backoff.due(now + Duration::from_secs(7)));
        assert!(!backoff.expired(Duration::from_secs(7)));
        assert!(backoff.expired(Duration::from_secs(6)));
    }

    #[test]
    fn http_statuses_follow_the_otlp_specification() {
        let status = |code| hyper::StatusCode::from_u16(code).unwrap();
        for code in [429, 502, 503, 504] {
            assert_eq!(http_status(status(code), None), Retry::Backoff, "{code}");
            let asked = Some(Duration::from_secs(3));
            assert_eq!(
                http_status(status(code), asked),
                Retry::After(Duration::from_secs(3)),
                "{code}"
            );
        }
        for code in [400, 401, 404, 413, 500, 501] {
            let asked = Some(Duration::from_secs(3));
            assert_eq!(http_status(status(code), asked), Retry::Never, "{code}");
        }
    }

    #[test]
    fn retry_after_reads_delay_seconds_only() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("86400"), Some(MAX_ASKED_DELAY));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after(""), None);
    }

    fn status_with_retry_info(code: tonic::Code, seconds: i64, nanos: i32) -> tonic::Status {
        let info = rpc::RetryInfo {
            retry_delay: Some(rpc::Duration { seconds, nanos }),
        };
        let details = rpc::Status {
            details: vec![
                rpc::Any {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![1, 2, 3],
                },
                rpc::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: info.encode_to_vec(),
                },
            ],
        };
        tonic::Status::with_details(code, "slow down", details.encode_to_vec().into())
    }

    #[test]
    fn grpc_codes_follow_the_otlp_specification() {
        use tonic::Code;
        let plain = |code| grpc_retry(&tonic::Status::new(code, "x"));
        assert_eq!(plain(Code::Unavailable), Retry::Backoff);
        assert_eq!(plain(Code::DeadlineExceeded), Retry::Backoff);
        assert_eq!(plain(Code::InvalidArgument), Retry::Never);
        assert_eq!(plain(Code::Unauthenticated), Retry::Never);
        assert_eq!(
            plain(Code::ResourceExhausted),
            Retry::Never,
            "no RetryInfo: not retryable"
        );
        let asked = grpc_retry(&status_with_retry_info(
            Code::ResourceExhausted,
            2,
            500_000_000,
        ));
        assert_eq!(asked, Retry::After(Duration::from_millis(2500)));
        let asked = grpc_retry(&status_with_retry_info(Code::Unavailable, 1, 0));
        assert_eq!(asked, Retry::After(Duration::from_secs(1)));
        let too_long = grpc_retry(&status_with_retry_info(Code::Unavailable, 1 << 40, 0));
        assert_eq!(too_long, Retry::After(MAX_ASKED_DELAY));
        // Nonsense details are ignored, not trusted.
        let negative = grpc_retry(&status_with_retry_info(Code::Unavailable, -5, 0));
        assert_eq!(negative, Retry::Backoff);
        let garbage = tonic::Status::with_details(Code::Unavailable, "x", vec![0xff, 0xff].into());
        assert_eq!(grpc_retry(&garbage), Retry::Backoff);
    }
}
