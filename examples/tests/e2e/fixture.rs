//! Running the fixture and reading what it reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use smolder_examples::lock;

/// What one fixture run printed and where its files are.
pub struct Run {
    pub report: HashMap<String, String>,
    pub dir: PathBuf,
}

impl Run {
    pub fn get(&self, key: &str) -> &str {
        self.report.get(key).unwrap_or_else(|| {
            panic!(
                "fixture did not report {key:?}; it printed {:?}",
                self.report
            )
        })
    }

    pub fn number(&self, key: &str) -> f64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key}={} is not a number", self.get(key)))
    }

    pub fn folded(&self) -> String {
        std::fs::read_to_string(self.dir.join("folded.txt")).expect("folded.txt written")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// CPU-heavy fixtures run one at a time: on a two-core machine they would
/// otherwise compete, and the slower they run the longer the suite takes.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    lock(&LOCK)
}

/// A fresh directory under the target dir for one run's files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `workload <scenario> <args> --out DIR` with extra environment and
/// requires it to exit successfully.
pub fn run(name: &str, scenario: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = scratch_dir(name);
    let _guard = exclusive();
    let mut command = Command::new(env!("CARGO_BIN_EXE_workload"));
    command.arg(scenario).args(args);
    if scenario != "lifecycle" {
        command.arg("--out").arg(&dir);
    }
    // The fixture must see only the settings a test gives it; the HTTP
    // endpoint is off unless a test turns it on (on a free port).
    for (key, _) in std::env::vars() {
        if key.starts_with("SMOLDER_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command.env("SMOLDER_HTTP_ADDR", "off");
    command.envs(env.iter().copied());
    let output = command.output().expect("run the workload fixture");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "workload {scenario} {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Run { report, dir }
}

/// Folded stacks as (frames root first, weight).
pub fn parse_folded(folded: &str) -> Vec<(Vec<String>, u64)> {
    folded
        .lines()
        .map(|line| {
            let (stack, weight) = line.rsplit_once(' ').expect("`stack weight` line");
            (
                stack.split(';').map(str::to_owned).collect(),
                weight.parse().expect("integer weight"),
            )
        })
        .collect()
}

/// Total weight of stacks whose leaf is `function` (matched as a suffix, so
/// `hot_seventy` matches `workload::hot_seventy`).
pub fn leaf_weight(folded: &[(Vec<String>, u64)], function: &str) -> u64 {
    folded
        .iter()
        .filter(|(frames, _)| frames.last().is_some_and(|f| f.ends_with(function)))
        .map(|(_, w)| w)
        .sum()
}
