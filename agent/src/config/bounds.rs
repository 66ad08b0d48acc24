//! Settings with a range: each one's environment variable, builder name,
//! limits and the words an error uses to say what is accepted. A value out
//! of range is an error, never clamped: a setting silently changed would
//! leave the operator guessing what the agent is really doing.

use std::time::Duration;

use super::env::Env;
use crate::Error;

/// A bounded integer setting: its environment variable, builder name and range.
pub(super) struct Bounded {
    var: &'static str,
    setting: &'static str,
    min: u64,
    max: u64,
    expected: &'static str,
}

// === impl Bounded ===

impl Bounded {
    fn check(&self, value: u64) -> Result<u64, Error> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(Error::InvalidSetting {
                setting: self.setting,
                value: value.to_string(),
                expected: self.expected,
            })
        }
    }

    /// Reads the variable: `Ok(None)` when unset, an error naming the variable
    /// and its range when set to anything but an in-range integer.
    fn read_env(&self, env: &impl Env) -> Result<Option<u64>, Error> {
        let Some(raw) = env.var(self.var) else {
            return Ok(None);
        };
        raw.trim()
            .parse::<u64>()
            .ok()
            .filter(|v| (self.min..=self.max).contains(v))
            .map(Some)
            .ok_or(Error::InvalidEnvironment {
                var: self.var,
                value: raw,
                expected: self.expected,
            })
    }

    /// The explicit value if there is one (checked), else the variable's,
    /// else `default`.
    pub(super) fn resolve(
        &self,
        explicit: Option<u64>,
        env: &impl Env,
        default: u64,
    ) -> Result<u64, Error> {
        match explicit {
            Some(value) => self.check(value),
            None => Ok(self.read_env(env)?.unwrap_or(default)),
        }
    }
}

pub(super) const FREQUENCY: Bounded = Bounded {
    var: "SMOLDER_FREQUENCY_HZ",
    setting: "frequency_hz",
    min: 1,
    max: 10_000,
    expected: "an integer from 1 to 10000 (samples per CPU-second per thread)",
};
pub(super) const MAX_DEPTH: Bounded = Bounded {
    var: "SMOLDER_MAX_DEPTH",
    setting: "max_depth",
    min: 8,
    max: 1024,
    expected: "an integer from 8 to 1024 (frames per sample)",
};
pub(super) const BUFFER_RECORDS: Bounded = Bounded {
    var: "SMOLDER_BUFFER_RECORDS",
    setting: "buffer_records",
    min: 16,
    max: 1 << 16,
    expected: "an integer from 16 to 65536 (samples in flight between handler and collector)",
};
pub(super) const STACK_TABLE: Bounded = Bounded {
    var: "SMOLDER_STACK_TABLE_CAPACITY",
    setting: "stack_table_capacity",
    min: 1024,
    max: 1 << 24,
    expected: "an integer from 1024 to 16777216 (interned stack nodes)",
};

pub(super) const HTTP_MAX_SECONDS: Bounded = Bounded {
    var: "SMOLDER_HTTP_MAX_SECONDS",
    setting: "http_max_seconds",
    min: 1,
    max: 24 * 3600,
    expected: "an integer from 1 to 86400 (longest seconds= capture)",
};

pub(super) const HTTP_MAX_CONNECTIONS: Bounded = Bounded {
    var: "SMOLDER_HTTP_MAX_CONNECTIONS",
    setting: "http_max_connections",
    min: 1,
    max: 10_000,
    expected: "an integer from 1 to 10000 (connections served at once)",
};

pub(super) const HISTORY_BYTES: Bounded = Bounded {
    var: "SMOLDER_HISTORY_BYTES",
    setting: "history_bytes",
    min: 64 * 1024,
    max: 1 << 30,
    expected: "an integer from 65536 to 1073741824 (bytes of history kept)",
};

/// A duration setting: its variable, builder name and range.
pub(super) struct BoundedDuration {
    var: &'static str,
    setting: &'static str,
    min: Duration,
    max: Duration,
    expected: &'static str,
}

// === impl BoundedDuration ===

impl BoundedDuration {
    /// The explicit value if there is one (checked), else the variable's
    /// (a duration such as `15m`), else `default`.
    pub(super) fn resolve(
        &self,
        explicit: Option<Duration>,
        env: &impl Env,
        default: Duration,
    ) -> Result<Duration, Error> {
        let in_range = |d: &Duration| (self.min..=self.max).contains(d);
        match explicit {
            Some(value) if in_range(&value) => Ok(value),
            Some(value) => Err(Error::InvalidSetting {
                setting: self.setting,
                value: format!("{value:?}"),
                expected: self.expected,
            }),
            None => match env.var(self.var) {
                None => Ok(default),
                Some(raw) => crate::duration::parse(&raw).ok().filter(in_range).ok_or(
                    Error::InvalidEnvironment {
                        var: self.var,
                        value: raw,
                        expected: self.expected,
                    },
                ),
            },
        }
    }
}

pub(super) const HISTORY_SPAN: BoundedDuration = BoundedDuration {
    var: "SMOLDER_HISTORY",
    setting: "history",
    min: Duration::from_secs(10),
    max: Duration::from_secs(48 * 3600),
    expected: "a duration from 10s to 48h, such as 15m or 2h",
};

pub(super) const HISTORY_RESOLUTION: BoundedDuration = BoundedDuration {
    var: "SMOLDER_HISTORY_RESOLUTION",
    setting: "history_resolution",
    min: Duration::from_secs(1),
    max: Duration::from_secs(600),
    expected: "a duration from 1s to 10m, such as 10s",
};

pub(super) const PUSH_INTERVAL: BoundedDuration = BoundedDuration {
    var: "SMOLDER_PUSH_INTERVAL",
    setting: "push_interval",
    min: Duration::from_secs(1),
    max: Duration::from_secs(300),
    expected: "a duration from 1s to 5m, such as 10s",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentBuilder;
    use crate::config::env::tests::env;

    #[test]
    fn invalid_builder_value_names_setting() {
        let err = AgentBuilder::default()
            .frequency_hz(0)
            .resolve(&env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("frequency_hz"), "{err}");
    }

    #[test]
    fn history_settings_parse_durations() {
        let e = env(&[
            ("SMOLDER_HISTORY", "1h"),
            ("SMOLDER_HISTORY_RESOLUTION", "30s"),
        ]);
        let config = AgentBuilder::default().resolve(&e).unwrap();
        assert_eq!(config.history_span, Duration::from_secs(3600));
        assert_eq!(config.history_resolution, Duration::from_secs(30));
        let e = env(&[("SMOLDER_HISTORY", "15")]);
        let message = AgentBuilder::default().resolve(&e).unwrap_err().to_string();
        assert!(
            message.contains("SMOLDER_HISTORY") && message.contains("15m"),
            "{message}"
        );
    }
}
