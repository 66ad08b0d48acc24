//! Reading settings from the environment: where variables come from, and
//! the parsers shared by every variable that names a choice, a switch or an
//! address. Each parser answers `Ok(None)` for an unset variable and an
//! error naming the variable and what it accepts for a bad value, so that a
//! typo fails `start` instead of being ignored.

use std::net::SocketAddr;

use crate::Error;

/// The default endpoint address: loopback only.
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6060";

/// Where environment variables come from; a trait so tests can supply a map.
pub(crate) trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A variable whose value is one of a few names (compared trimmed and
/// without case).
pub(super) fn parse_choice<T: Copy>(
    env: &impl Env,
    var: &'static str,
    expected: &'static str,
    choices: &[(&str, T)],
) -> Result<Option<T>, Error> {
    let Some(raw) = env.var(var) else {
        return Ok(None);
    };
    let wanted = raw.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|&(_, value)| Some(value))
        .ok_or(Error::InvalidEnvironment {
            var,
            value: raw,
            expected,
        })
}

/// A switch: `true`/`false` and the usual spellings of each.
pub(super) fn parse_bool(env: &impl Env, var: &'static str) -> Result<Option<bool>, Error> {
    parse_choice(
        env,
        var,
        "true or false (also 1/0, yes/no, on/off)",
        &[
            ("true", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("off", false),
        ],
    )
}

/// `SMOLDER_HTTP_ADDR`: an `ip:port`, or `off`. Unlike the other parsers it
/// applies its own default, since unset and `off` mean different things.
pub(super) fn parse_http_addr(env: &impl Env) -> Result<Option<SocketAddr>, Error> {
    let raw = env
        .var("SMOLDER_HTTP_ADDR")
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned());
    if matches!(
        raw.trim().to_ascii_lowercase().as_str(),
        "off" | "false" | "0" | "none" | "disabled"
    ) {
        return Ok(None);
    }
    raw.trim()
        .parse()
        .map(Some)
        .map_err(|_| Error::InvalidEnvironment {
            var: "SMOLDER_HTTP_ADDR",
            value: raw,
            expected: "an address such as 127.0.0.1:6060 or [::1]:6060, or off",
        })
}

/// The executable's file name, the service name of last resort.
pub(super) fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown_service".to_owned())
}

/// An environment made of a fixed map, for the configuration's tests.
#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::AgentBuilder;

    pub(in crate::config) struct MapEnv(HashMap<&'static str, &'static str>);

    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    pub(in crate::config) fn env(pairs: &[(&'static str, &'static str)]) -> MapEnv {
        MapEnv(pairs.iter().copied().collect())
    }

    #[test]
    fn invalid_environment_names_variable_and_range() {
        for bad in ["abc", "0", "-5", "10001", ""] {
            let e = env(&[("SMOLDER_FREQUENCY_HZ", bad)]);
            let message = AgentBuilder::default().resolve(&e).unwrap_err().to_string();
            assert!(message.contains("SMOLDER_FREQUENCY_HZ"), "{message}");
            assert!(message.contains("1 to 10000"), "{message}");
        }
        let e = env(&[("SMOLDER_ENABLED", "maybe")]);
        let message = AgentBuilder::default().resolve(&e).unwrap_err().to_string();
        assert!(message.contains("SMOLDER_ENABLED") && message.contains("true or false"));
    }

    #[test]
    fn http_address_defaults_to_loopback_and_can_be_turned_off() {
        let config = AgentBuilder::default().resolve(&env(&[])).unwrap();
        assert_eq!(config.http.addr, Some("127.0.0.1:6060".parse().unwrap()));
        let off = AgentBuilder::default()
            .resolve(&env(&[("SMOLDER_HTTP_ADDR", "off")]))
            .unwrap();
        assert_eq!(off.http.addr, None);
        let bad = AgentBuilder::default().resolve(&env(&[("SMOLDER_HTTP_ADDR", "localhost")]));
        assert!(bad.unwrap_err().to_string().contains("SMOLDER_HTTP_ADDR"));
        let named = AgentBuilder::default()
            .resolve(&env(&[("OTEL_SERVICE_NAME", "checkout")]))
            .unwrap();
        assert_eq!(named.service_name, "checkout");
    }
}
