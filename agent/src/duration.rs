//! Human durations as operators type them: `30s`, `5m`, `1h30m`, `250ms`.
//!
//! Used by the `SMOLDER_HISTORY*` variables and the HTTP `window=` and
//! `base=` parameters. A bare number is refused (seconds or minutes?), as is
//! anything negative, empty, or with an unknown unit.

use std::time::Duration;

/// Why a duration did not parse; `Display` says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadDuration;

impl std::fmt::Display for BadDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as 30s, 5m, 1h or 1h30m (units: ms, s, m, h)")
    }
}

/// Parses `text` as a sum of `<number><unit>` terms.
pub(crate) fn parse(text: &str) -> Result<Duration, BadDuration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(BadDuration);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or(BadDuration)?;
        if digits == 0 || digits > 12 {
            return Err(BadDuration);
        }
        let value: u64 = rest[..digits].parse().map_err(|_| BadDuration)?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let term = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60).ok_or(BadDuration)?),
            "h" => Duration::from_secs(value.checked_mul(3600).ok_or(BadDuration)?),
            _ => return Err(BadDuration),
        };
        total = total.checked_add(term).ok_or(BadDuration)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it: `1h30m`, `45s`, `250ms`.
pub(crate) fn format(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 2m10s "), Ok(Duration::from_secs(130)));
    }

    #[test]
    fn refuses_what_is_ambiguous_or_malformed() {
        for bad in [
            "",
            "30",
            "-5s",
            "5 m",
            "5x",
            "m",
            "1.5h",
            "s5",
            "99999999999999s",
            "5m-",
        ] {
            assert_eq!(parse(bad), Err(BadDuration), "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in [
            "0s",
            "250ms",
            "30s",
            "5m",
            "1h",
            "1h30m",
            "1h10s",
            "2m5s250ms",
        ] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused(text in ".{0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn format_then_parse_is_identity(ms in 0u64..(100 * 3_600_000)) {
            let duration = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(duration)), if ms == 0 { Ok(Duration::ZERO) } else { Ok(duration) });
        }
    }
}
