//! Command-line options, shared by the supervisor and the workload (the
//! supervisor passes its arguments on unchanged).

use std::time::Duration;

pub const USAGE: &str = "\
usage: torture [--seconds N] [--restart-every-ms N] [--frequency-hz N] [--skip A,B]

  --seconds N            how long the workload runs (default 60)
  --restart-every-ms N   mean lifetime of one agent; each lives between half
                         and one and a half times this (default 3000)
  --frequency-hz N       sampling rate (default 10000, the agent's maximum)
  --skip A,B             leave these activities out, to narrow a failure down:
                         churn, dlopen, alloc, panic, fork-exec, eintr, deep,
                         http-scrape

Exit status 0 only if every check passed. SMOLDER_* variables other than the
rate, buffer size and HTTP address (which the harness sets) reach the agent,
e.g. SMOLDER_ENGINE=setitimer tortures the fallback engine.";

/// What the run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub restart_every: Duration,
    pub frequency_hz: u32,
    /// Activities left out.
    pub skip: Vec<String>,
}

/// The activities `--skip` accepts.
pub const ACTIVITIES: [&str; 8] = [
    "churn",
    "dlopen",
    "alloc",
    "panic",
    "fork-exec",
    "eintr",
    "deep",
    "http-scrape",
];

impl Options {
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            duration: Duration::from_secs(60),
            restart_every: Duration::from_millis(3000),
            frequency_hz: 10_000,
            skip: Vec::new(),
        };
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err("help requested".to_owned());
            }
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            if flag == "--skip" {
                for name in value.split(',').filter(|n| !n.is_empty()) {
                    if !ACTIVITIES.contains(&name) {
                        return Err(format!("--skip: unknown activity {name:?}"));
                    }
                    options.skip.push(name.to_owned());
                }
                continue;
            }
            let number: u64 = value
                .parse()
                .map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
            match flag.as_str() {
                "--seconds" if number >= 1 => options.duration = Duration::from_secs(number),
                "--restart-every-ms" if number >= 200 => {
                    options.restart_every = Duration::from_millis(number);
                }
                "--frequency-hz" if (1..=10_000).contains(&number) => {
                    options.frequency_hz = number as u32;
                }
                "--seconds" | "--restart-every-ms" | "--frequency-hz" => {
                    return Err(format!("{flag} {number} is out of range"));
                }
                _ => return Err(format!("unknown option {flag:?}")),
            }
        }
        Ok(options)
    }

    /// Whether the activity `name` (one of [`ACTIVITIES`]) runs.
    pub fn runs(&self, name: &str) -> bool {
        !self.skip.iter().any(|s| s == name)
    }

    /// The arguments that reproduce these options.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--seconds".into(),
            self.duration.as_secs().to_string(),
            "--restart-every-ms".into(),
            self.restart_every.as_millis().to_string(),
            "--frequency-hz".into(),
            self.frequency_hz.to_string(),
        ];
        if !self.skip.is_empty() {
            args.extend(["--skip".to_owned(), self.skip.join(",")]);
        }
        args
    }
}
