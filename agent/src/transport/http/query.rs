//! Parsing and validating the query strings of the profile routes.
//!
//! Every route accepts the same parameters; each is checked for form and
//! range, and anything unknown, repeated or contradictory is refused with a
//! one-line reason (the HTTP layer turns [`QueryError`] into a 400). Nothing
//! here allocates more than the query string's own size.

use std::time::Duration;

use crate::collect::aggregate::filter::{Filter, Glob};
use crate::profile::ProfileKind;

/// Parameters every profile route accepts.
pub(crate) const PARAMETERS: &[&str] = &[
    "seconds", "hz", "window", "base", "ago", "thread", "trace_id", "span_id",
];

/// The routes that draw any kind of profile (`flamegraph`, `folded`) also
/// take `profile=` to say which.
const CHOOSING_PARAMETERS: &[&str] = &[
    "seconds", "hz", "window", "base", "ago", "thread", "trace_id", "span_id", "profile",
];

/// What a route serves: one kind of profile, or whichever `profile=` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kinds {
    Only(ProfileKind),
    /// `profile=`, [`ProfileKind::Cpu`] when not given.
    Chosen,
}

/// The kinds `profile=` names.
fn kind_named(value: &str) -> Result<ProfileKind, QueryError> {
    match value {
        "cpu" => Ok(ProfileKind::Cpu),
        _ => Err(reject(format!(
            "profile={value:?} is not a profile this agent keeps: expected cpu"
        ))),
    }
}

/// Where a profile's samples come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Record the next `seconds`, at `hz` if given.
    Capture { seconds: u64, hz: Option<u32> },
    /// Answer from history: the `length` ending `ago` before now, compared
    /// with the same length ending `base` earlier, if given.
    Window {
        length: Duration,
        ago: Duration,
        base: Option<Duration>,
    },
    /// The samples of one span (with everything inside it), or of one
    /// trace, from the agent's span table.
    Spans {
        trace_id: Option<u128>,
        span_id: Option<u64>,
    },
}

/// A validated profile request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProfileQuery {
    pub(crate) kind: ProfileKind,
    pub(crate) source: Source,
    pub(crate) filter: Filter,
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_seconds: u64,
    pub(crate) max_hz: u32,
    pub(crate) default_seconds: u64,
}

/// A rejected query; `Display` is the one-line reason sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryError(pub(crate) String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn reject(message: impl Into<String>) -> QueryError {
    QueryError(message.into())
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a
/// space, `%XX` a byte; the result must be UTF-8.
fn decode(component: &str) -> Result<String, QueryError> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        reject(format!("malformed percent-encoding in {component:?}"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| reject(format!("{component:?} is not UTF-8 once decoded")))
}

/// Splits a query string into decoded pairs, refusing repeats and names
/// not in `allowed`.
pub(crate) fn pairs(query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, QueryError> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        if !allowed.contains(&name.as_str()) {
            return Err(reject(format!(
                "unknown parameter {name:?}; this route accepts: {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if seen.iter().any(|(n, _)| *n == name) {
            return Err(reject(format!(
                "parameter {name:?} is given more than once"
            )));
        }
        seen.push((name, value));
    }
    Ok(seen)
}

fn whole_number(name: &str, value: &str, max: u64) -> Result<u64, QueryError> {
    let expected = || {
        reject(format!(
            "{name}={value:?} is invalid: expected a whole number from 1 to {max}"
        ))
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 12 {
        return Err(expected());
    }
    let number: u64 = value.parse().map_err(|_| expected())?;
    if number == 0 || number > max {
        return Err(expected());
    }
    Ok(number)
}

/// A hex id of at most `digits` digits (OpenTelemetry ids: 32 for traces, 16
/// for spans; shorter ones are accepted, as some UIs drop leading zeros).
fn hex_id(name: &str, value: &str, digits: usize) -> Result<u128, QueryError> {
    let valid =
        !value.is_empty() && value.len() <= digits && value.bytes().all(|b| b.is_ascii_hexdigit());
    let id = valid
        .then(|| u128::from_str_radix(value, 16).ok())
        .flatten()
        .filter(|&id| id != 0);
    id.ok_or_else(|| {
        reject(format!(
            "{name}={value:?} is invalid: expected a non-zero id of up to {digits} hex digits"
        ))
    })
}

fn duration(name: &str, value: &str) -> Result<Duration, QueryError> {
    crate::duration::parse(value)
        .map_err(|e| reject(format!("{name}={value:?} is invalid: expected {e}")))
}

/// Parses a profile route's query string.
pub(crate) fn parse_profile_query(
    query: &str,
    limits: Limits,
    kinds: Kinds,
) -> Result<ProfileQuery, QueryError> {
    let (parameters, mut kind) = match kinds {
        Kinds::Only(kind) => (PARAMETERS, kind),
        Kinds::Chosen => (CHOOSING_PARAMETERS, ProfileKind::Cpu),
    };
    let mut seconds = None;
    let mut hz = None;
    let mut window = None;
    let mut base = None;
    let mut ago = None;
    let mut filter = Filter::default();
    let (mut trace_id, mut span_id) = (None, None);
    for (name, value) in pairs(query, parameters)? {
        match name.as_str() {
            "seconds" => seconds = Some(whole_number("seconds", &value, limits.max_seconds)?),
            "hz" => hz = Some(whole_number("hz", &value, u64::from(limits.max_hz))? as u32),
            "window" => {
                let length = duration("window", &value)?;
                if length.is_zero() {
                    return Err(reject("window=0s is invalid: a window must have a length"));
                }
                window = Some(length);
            }
            "base" => base = Some(duration("base", &value)?),
            "ago" => ago = Some(duration("ago", &value)?),
            "trace_id" => trace_id = Some(hex_id("trace_id", &value, 32)?),
            "span_id" => span_id = Some(hex_id("span_id", &value, 16)? as u64),
            "profile" => kind = kind_named(&value)?,
            "thread" => {
                if value.is_empty() || value.len() > 256 {
                    return Err(reject(
                        "thread= needs a name or glob pattern of 1 to 256 characters",
                    ));
                }
                filter.thread = Some(Glob::new(&value));
            }
            _ => unreachable!("pairs() admits only known names"),
        }
    }
    if trace_id.is_some() || span_id.is_some() {
        if seconds.is_some() || window.is_some() || base.is_some() || ago.is_some() || hz.is_some()
        {
            return Err(reject(
                "trace_id= and span_id= are answered from the agent's span table and take no seconds=, hz=, window=, ago= or base=",
            ));
        }
        return Ok(ProfileQuery {
            kind,
            source: Source::Spans { trace_id, span_id },
            filter,
        });
    }
    let source = match (seconds, window) {
        (Some(_), Some(_)) => {
            return Err(reject(
                "seconds= and window= cannot be combined: seconds= records the coming seconds, window= reads the past",
            ));
        }
        (_, Some(length)) => {
            if hz.is_some() {
                return Err(reject(
                    "hz= applies to recording (seconds=), not to history (window=)",
                ));
            }
            if base.is_some_and(|b| b.is_zero()) {
                return Err(reject(
                    "base=0s is invalid: the base window must lie in the past",
                ));
            }
            Source::Window {
                length,
                ago: ago.unwrap_or(Duration::ZERO),
                base,
            }
        }
        (seconds, None) => {
            if base.is_some() {
                return Err(reject("base= needs window=, as in window=5m&base=1h"));
            }
            if ago.is_some() {
                return Err(reject("ago= needs window=, as in window=5m&ago=1h"));
            }
            Source::Capture {
                seconds: seconds.unwrap_or(limits.default_seconds),
                hz,
            }
        }
    };
    Ok(ProfileQuery {
        kind,
        source,
        filter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_seconds: 300,
        max_hz: 10_000,
        default_seconds: 30,
    };

    fn ok(query: &str) -> ProfileQuery {
        parse_profile_query(query, LIMITS, Kinds::Chosen).unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    fn err(query: &str) -> String {
        parse_profile_query(query, LIMITS, Kinds::Chosen)
            .expect_err(query)
            .0
    }

    #[test]
    fn defaults_to_a_thirty_second_capture_like_go() {
        assert_eq!(
            ok("").source,
            Source::Capture {
                seconds: 30,
                hz: None
            }
        );
        assert_eq!(
            ok("seconds=5&hz=999").source,
            Source::Capture {
                seconds: 5,
                hz: Some(999)
            }
        );
    }

    /// What Grafana Alloy's `pyroscope.scrape`, Pyroscope's and Parca's
    /// scrapers send for a delta CPU profile on `/debug/pprof/profile`:
    /// `seconds=` one less than the scrape interval (or the configured
    /// profiling duration), and nothing else unless configured (`params`).
    #[test]
    fn what_profile_scrapers_send_is_accepted() {
        let cpu_route = |query| {
            parse_profile_query(query, LIMITS, Kinds::Only(ProfileKind::Cpu))
                .unwrap_or_else(|e| panic!("{query}: {e}"))
                .source
        };
        for (query, seconds) in [("seconds=14", 14), ("seconds=59", 59), ("seconds=9", 9)] {
            assert_eq!(cpu_route(query), Source::Capture { seconds, hz: None });
        }
        // Go's own parameter for non-CPU profiles is refused, with the
        // reason, rather than ignored: see docs/fleet.md.
        assert!(
            parse_profile_query("seconds=14&debug=0", LIMITS, Kinds::Only(ProfileKind::Cpu))
                .is_err()
        );
    }

    #[test]
    fn the_profile_parameter_picks_a_kind_where_a_route_allows_one() {
        assert_eq!(ok("").kind, ProfileKind::Cpu);
        assert_eq!(ok("profile=cpu&window=1m").kind, ProfileKind::Cpu);
        assert!(err("profile=gpu").contains("profile=\"gpu\""));
        let fixed = parse_profile_query("profile=cpu", LIMITS, Kinds::Only(ProfileKind::Cpu));
        assert!(
            fixed
                .unwrap_err()
                .0
                .contains("unknown parameter \"profile\""),
            "a route that serves one kind takes no profile="
        );
    }

    #[test]
    fn windows_bases_and_filters() {
        let q = ok("window=5m&base=1h&thread=tokio-*");
        assert_eq!(
            q.source,
            Source::Window {
                length: Duration::from_secs(300),
                ago: Duration::ZERO,
                base: Some(Duration::from_secs(3600)),
            }
        );
        assert!(q.filter.thread.unwrap().matches("tokio-runtime-worker"));
        assert_eq!(
            ok("window=1m&ago=10m").source,
            Source::Window {
                length: Duration::from_secs(60),
                ago: Duration::from_secs(600),
                base: None,
            }
        );
        assert!(ok("thread=a%20b+c").filter.thread.unwrap().matches("a b c"));
    }

    #[test]
    fn span_and_trace_filters() {
        assert_eq!(
            ok("trace_id=0af7651916cd43dd8448eb211c80319c&span_id=b7ad6b7169203331").source,
            Source::Spans {
                trace_id: Some(0x0af7651916cd43dd8448eb211c80319c),
                span_id: Some(0xb7ad6b7169203331),
            }
        );
        assert!(err("span_id=xyz").contains("hex digits"));
        assert!(err("span_id=00000000000000000").contains("up to 16"));
        assert!(err("trace_id=0").contains("non-zero"));
        assert!(err("span_id=1&seconds=5").contains("take no seconds="));
    }

    #[test]
    fn bad_numbers_say_what_is_accepted() {
        for query in [
            "seconds=abc",
            "seconds=-1",
            "seconds=0",
            "seconds=301",
            "seconds=",
            "seconds=1.5",
            "seconds=99999999999999999999",
        ] {
            assert!(
                err(query).contains("whole number from 1 to 300"),
                "{query}: {}",
                err(query)
            );
        }
        for query in ["hz=0", "hz=10001", "hz=fast"] {
            assert!(err(query).contains("1 to 10000"), "{query}");
        }
    }

    #[test]
    fn contradictions_and_unknowns_are_refused() {
        assert!(err("seconds=5&window=5m").contains("cannot be combined"));
        assert!(err("base=1h").contains("needs window="));
        assert!(err("window=5m&hz=99").contains("hz= applies to recording"));
        assert!(err("window=5x").contains("such as 30s"));
        assert!(err("window=0s").contains("must have a length"));
        assert!(err("debug=1").contains(r#"unknown parameter "debug""#));
        assert!(err("seconds=5&seconds=6").contains("more than once"));
        assert!(err("thread=%zz").contains("percent-encoding"));
        assert!(err("thread=%ff").contains("not UTF-8"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits {
        max_seconds: 300,
        max_hz: 10_000,
        default_seconds: 30,
    };

    proptest! {
        /// Whatever a client sends, the parser answers (never panics), and a
        /// refusal is one line.
        #[test]
        fn any_query_is_answered(query in ".{0,200}") {
            if let Err(error) = parse_profile_query(&query, LIMITS, Kinds::Chosen) {
                prop_assert!(!error.0.contains('\n'));
            }
        }

        /// Byte soup, including `%` escapes and separators, is handled too.
        #[test]
        fn any_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let query = String::from_utf8_lossy(&bytes);
            let _ = parse_profile_query(&query, LIMITS, Kinds::Chosen);
            let _ = pairs(&query, PARAMETERS);
        }

        /// In-range seconds and rates are accepted as given, out-of-range
        /// ones refused.
        #[test]
        fn seconds_and_hz_ranges(seconds in 0u64..1000, hz in 0u32..20_000) {
            let parsed = parse_profile_query(&format!("seconds={seconds}&hz={hz}"), LIMITS, Kinds::Chosen);
            let valid = (1..=300).contains(&seconds) && (1..=10_000).contains(&hz);
            prop_assert_eq!(parsed.is_ok(), valid);
            if let Ok(query) = parsed {
                prop_assert_eq!(query.source, Source::Capture { seconds, hz: Some(hz) });
            }
        }

        /// Ids round-trip through their hex form.
        #[test]
        fn ids_round_trip(trace in 1u128.., span in 1u64..) {
            let query = format!("trace_id={trace:032x}&span_id={span:016x}");
            let parsed = parse_profile_query(&query, LIMITS, Kinds::Chosen).unwrap();
            prop_assert_eq!(parsed.source, Source::Spans { trace_id: Some(trace), span_id: Some(span) });
        }

        /// Percent-encoding of any text decodes back to it.
        #[test]
        fn percent_encoding_round_trips(text in "\\PC{0,40}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(decode(&encoded).unwrap(), text);
        }
    }
}
