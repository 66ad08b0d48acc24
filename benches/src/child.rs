//! Running one measurement in a child process, and reading its result.
//!
//! Smolder, the `pprof` crate and the empty handler each claim `SIGPROF` for
//! the whole process, and only one Smolder agent may ever run per process,
//! so every measurement runs in a fresh child: the harness re-executes its
//! own binary as `smolder-benches child <what> <args>`. The child prints one
//! line `RESULT key=value key=value ...` on stdout (values contain no
//! spaces) and exits 0; on a harness error it prints the reason on stderr and
//! exits non-zero.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;

/// A harness failure: a measurement that could not be made or cannot be
/// trusted. Missed targets are not errors.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

impl From<std::io::Error> for HarnessError {
    fn from(error: std::io::Error) -> Self {
        HarnessError(format!("I/O error: {error}"))
    }
}

impl From<smolder::Error> for HarnessError {
    fn from(error: smolder::Error) -> Self {
        HarnessError(format!("smolder: {error}"))
    }
}

impl From<pprof::Error> for HarnessError {
    fn from(error: pprof::Error) -> Self {
        HarnessError(format!("pprof: {error}"))
    }
}

/// Shorthand for a failed check.
pub fn fail<T>(message: impl Into<String>) -> Result<T, HarnessError> {
    Err(HarnessError(message.into()))
}

/// The `key=value` fields of a child's `RESULT` line, in insertion-independent
/// (sorted) order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(BTreeMap<String, String>);

impl Fields {
    /// An empty set, to fill in a child.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds a field; `value` must print without spaces.
    pub fn put(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        let value = value.to_string();
        debug_assert!(!value.contains(char::is_whitespace), "{key}={value}");
        self.0.insert(key.to_owned(), value);
        self
    }

    /// Prints the `RESULT` line a child hands back.
    pub fn emit(&self) {
        let line: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("RESULT {}", line.join(" "));
    }

    /// Finds and parses the `RESULT` line in a child's stdout.
    pub fn parse(stdout: &str) -> Option<Fields> {
        let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "))?;
        let mut fields = Fields::new();
        for pair in line.split_whitespace() {
            let (key, value) = pair.split_once('=')?;
            fields.0.insert(key.to_owned(), value.to_owned());
        }
        Some(fields)
    }

    /// A field as text.
    pub fn text(&self, key: &str) -> Result<&str, HarnessError> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| HarnessError(format!("child result lacks `{key}`")))
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Result<f64, HarnessError> {
        let text = self.text(key)?;
        text.parse()
            .map_err(|_| HarnessError(format!("child result `{key}={text}` is not a number")))
    }
}

/// Runs this binary as `child <args>` and returns its result fields.
pub fn run(args: &[String]) -> Result<Fields, HarnessError> {
    let exe = std::env::current_exe()?;
    let output = Command::new(exe).arg("child").args(args).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return fail(format!(
            "child `{}` failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.trim()
        ));
    }
    Fields::parse(&stdout).ok_or_else(|| {
        HarnessError(format!(
            "child `{}` printed no RESULT line; stderr: {}",
            args.join(" "),
            stderr.trim()
        ))
    })
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_a_result_line() {
        let mut fields = Fields::new();
        fields.put("ns", 2034.5).put("what", "smolder");
        let parsed = Fields::parse("noise\nRESULT ns=2034.5 what=smolder\n").unwrap();
        assert_eq!(parsed, fields);
        assert_eq!(parsed.num("ns").unwrap(), 2034.5);
        assert!(parsed.num("what").is_err());
        assert!(parsed.text("missing").is_err());
        assert_eq!(Fields::parse("no result here"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
