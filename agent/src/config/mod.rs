//! Settings: defaults, `SMOLDER_*` environment overrides, and the builder.
//!
//! Precedence, lowest to highest: built-in defaults, environment variables,
//! explicit [`AgentBuilder`] calls. One exception: `SMOLDER_ENABLED=false`
//! always wins, because it is the operator's kill switch and must work without
//! a code change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

mod otlp;

pub use otlp::OtlpProtocol;
pub(crate) use otlp::{OtlpSettings, OtlpTls};

/// How the signal handler walks the interrupted thread's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Unwinder {
    /// DWARF call-frame information from each module's `.eh_frame`: works on a
    /// default `cargo build --release`, which omits frame pointers.
    #[default]
    Dwarf,
    /// Follow the frame-pointer chain. Cheaper, but only correct for code
    /// built with `-C force-frame-pointers=yes` (and libraries likewise).
    FramePointers,
}

/// Which timer drives sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Engine {
    /// Per-thread CPU timers where the kernel offers them, else `setitimer`.
    #[default]
    Auto,
    /// One `timer_create` CPU-time timer per thread, each signalling its own
    /// thread: every busy thread is sampled in proportion to its own CPU.
    PerThreadTimers,
    /// One process-wide `setitimer(ITIMER_PROF)`. Capped at one signal per
    /// kernel tick for the whole process and biased on many cores; only a
    /// fallback.
    Setitimer,
}

impl Engine {
    /// The name used in `SMOLDER_ENGINE` and in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::PerThreadTimers => "per-thread-timers",
            Engine::Setitimer => "setitimer",
        }
    }
}

impl Unwinder {
    /// The name used in `SMOLDER_UNWINDER` and in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Unwinder::Dwarf => "dwarf",
            Unwinder::FramePointers => "frame-pointers",
        }
    }
}

/// The sampling period, in nanoseconds, of a rate in samples per CPU-second.
/// The one place the rate becomes a period: timers are armed with it and
/// profiles weight their samples by it, so both must round alike.
pub(crate) fn period_ns(frequency_hz: u32) -> u64 {
    1_000_000_000 / u64::from(frequency_hz.max(1))
}

/// Settings after defaults, environment and builder calls are merged.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) enabled: bool,
    pub(crate) frequency_hz: u32,
    pub(crate) max_depth: usize,
    pub(crate) unwinder: Unwinder,
    pub(crate) engine: Engine,
    pub(crate) buffer_records: usize,
    pub(crate) stack_table_capacity: usize,
    pub(crate) history_span: Duration,
    pub(crate) history_resolution: Duration,
    pub(crate) history_bytes: usize,
    pub(crate) service_name: String,
    pub(crate) http: HttpSettings,
    /// Where spans go; `None`: not exported.
    pub(crate) otlp: Option<OtlpSettings>,
}

/// The HTTP endpoint's settings.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// Where to listen; `None` disables the endpoint.
    pub(crate) addr: Option<SocketAddr>,
    /// Bearer token every request must carry, if set.
    pub(crate) token: Option<String>,
    /// Serve a non-loopback address without a token.
    pub(crate) allow_unauthenticated: bool,
    /// Fail `start` when the address cannot be bound (else warn and go on).
    pub(crate) required: bool,
    /// Longest `seconds=` capture.
    pub(crate) max_seconds: u64,
    /// Connections served at once; more get 503.
    pub(crate) max_connections: usize,
    /// How others reach the endpoint (for links in exported spans), if not
    /// its own address.
    pub(crate) public_url: Option<String>,
}

/// The default endpoint address: loopback only.
pub(crate) const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6060";

/// A bounded integer setting: its environment variable, builder name and range.
struct Bounded {
    var: &'static str,
    setting: &'static str,
    min: u64,
    max: u64,
    expected: &'static str,
}

const FREQUENCY: Bounded = Bounded {
    var: "SMOLDER_FREQUENCY_HZ",
    setting: "frequency_hz",
    min: 1,
    max: 10_000,
    expected: "an integer from 1 to 10000 (samples per CPU-second per thread)",
};
const MAX_DEPTH: Bounded = Bounded {
    var: "SMOLDER_MAX_DEPTH",
    setting: "max_depth",
    min: 8,
    max: 1024,
    expected: "an integer from 8 to 1024 (frames per sample)",
};
const BUFFER_RECORDS: Bounded = Bounded {
    var: "SMOLDER_BUFFER_RECORDS",
    setting: "buffer_records",
    min: 16,
    max: 1 << 16,
    expected: "an integer from 16 to 65536 (samples in flight between handler and collector)",
};
const STACK_TABLE: Bounded = Bounded {
    var: "SMOLDER_STACK_TABLE_CAPACITY",
    setting: "stack_table_capacity",
    min: 1024,
    max: 1 << 24,
    expected: "an integer from 1024 to 16777216 (interned stack nodes)",
};

const HTTP_MAX_SECONDS: Bounded = Bounded {
    var: "SMOLDER_HTTP_MAX_SECONDS",
    setting: "http_max_seconds",
    min: 1,
    max: 24 * 3600,
    expected: "an integer from 1 to 86400 (longest seconds= capture)",
};

const HTTP_MAX_CONNECTIONS: Bounded = Bounded {
    var: "SMOLDER_HTTP_MAX_CONNECTIONS",
    setting: "http_max_connections",
    min: 1,
    max: 10_000,
    expected: "an integer from 1 to 10000 (connections served at once)",
};

const HISTORY_BYTES: Bounded = Bounded {
    var: "SMOLDER_HISTORY_BYTES",
    setting: "history_bytes",
    min: 64 * 1024,
    max: 1 << 30,
    expected: "an integer from 65536 to 1073741824 (bytes of history kept)",
};

/// A duration setting: its variable, builder name and range.
struct BoundedDuration {
    var: &'static str,
    setting: &'static str,
    min: Duration,
    max: Duration,
    expected: &'static str,
}

const HISTORY_SPAN: BoundedDuration = BoundedDuration {
    var: "SMOLDER_HISTORY",
    setting: "history",
    min: Duration::from_secs(10),
    max: Duration::from_secs(48 * 3600),
    expected: "a duration from 10s to 48h, such as 15m or 2h",
};

const HISTORY_RESOLUTION: BoundedDuration = BoundedDuration {
    var: "SMOLDER_HISTORY_RESOLUTION",
    setting: "history_resolution",
    min: Duration::from_secs(1),
    max: Duration::from_secs(600),
    expected: "a duration from 1s to 10m, such as 10s",
};

impl BoundedDuration {
    fn resolve(
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

    fn resolve(&self, explicit: Option<u64>, env: &impl Env, default: u64) -> Result<u64, Error> {
        match explicit {
            Some(value) => self.check(value),
            None => Ok(self.read_env(env)?.unwrap_or(default)),
        }
    }
}

/// `SMOLDER_HTTP_ADDR`: an `ip:port`, or `off`.
fn parse_http_addr(env: &impl Env) -> Result<Option<SocketAddr>, Error> {
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
fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown_service".to_owned())
}

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

fn parse_choice<T: Copy>(
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

fn parse_bool(env: &impl Env, var: &'static str) -> Result<Option<bool>, Error> {
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

/// Configures and starts an [`Agent`](crate::Agent).
///
/// Every setting has a `SMOLDER_*` environment variable; a value set here
/// overrides it.
///
/// ```no_run
/// let agent = smolder::Agent::builder()
///     .frequency_hz(999)
///     .max_depth(256)
///     .start()?;
/// # Ok::<(), smolder::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct AgentBuilder {
    pub(crate) enabled: Option<bool>,
    pub(crate) frequency_hz: Option<u64>,
    pub(crate) max_depth: Option<u64>,
    pub(crate) unwinder: Option<Unwinder>,
    pub(crate) engine: Option<Engine>,
    pub(crate) buffer_records: Option<u64>,
    pub(crate) stack_table_capacity: Option<u64>,
    pub(crate) history_span: Option<Duration>,
    pub(crate) history_resolution: Option<Duration>,
    pub(crate) history_bytes: Option<u64>,
    pub(crate) service_name: Option<String>,
    /// `Some(None)`: explicitly disabled.
    pub(crate) http_addr: Option<Option<SocketAddr>>,
    pub(crate) http_token: Option<String>,
    pub(crate) http_allow_unauthenticated: bool,
    pub(crate) http_required: Option<bool>,
    pub(crate) http_max_seconds: Option<u64>,
    pub(crate) http_max_connections: Option<u64>,
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) otlp_protocol: Option<OtlpProtocol>,
    pub(crate) otlp_tls: OtlpTls,
    pub(crate) http_public_url: Option<String>,
}

impl AgentBuilder {
    /// Samples per CPU-second of each thread (`SMOLDER_FREQUENCY_HZ`, default
    /// 99, 1 to 10 000). A prime-ish default avoids lock-step with periodic work.
    pub fn frequency_hz(mut self, hz: u32) -> Self {
        self.frequency_hz = Some(hz.into());
        self
    }

    /// Whether to profile at all (`SMOLDER_ENABLED`, default true).
    /// `SMOLDER_ENABLED=false` in the environment overrides `true` here.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }

    /// Deepest stack recorded, in frames (`SMOLDER_MAX_DEPTH`, default 128,
    /// 8 to 1024). Deeper stacks keep their leaf-most frames and are marked
    /// `[truncated]` at the root.
    pub fn max_depth(mut self, frames: usize) -> Self {
        self.max_depth = Some(frames as u64);
        self
    }

    /// Stack-walking method (`SMOLDER_UNWINDER=dwarf|frame-pointers`,
    /// default `dwarf`).
    pub fn unwinder(mut self, unwinder: Unwinder) -> Self {
        self.unwinder = Some(unwinder);
        self
    }

    /// Timer engine (`SMOLDER_ENGINE=auto|per-thread-timers|setitimer`,
    /// default `auto`).
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Capacity of the lock-free buffer between the signal handler and the
    /// collector, in samples (`SMOLDER_BUFFER_RECORDS`, default 1024, rounded
    /// up to a power of two). When it is full, samples are dropped and counted.
    pub fn buffer_records(mut self, records: usize) -> Self {
        self.buffer_records = Some(records as u64);
        self
    }

    /// Capacity of the interned-stack table, in stack nodes
    /// (`SMOLDER_STACK_TABLE_CAPACITY`, default 65536). Each node is one
    /// (caller stack, frame) pair; identical stack prefixes share nodes.
    pub fn stack_table_capacity(mut self, nodes: usize) -> Self {
        self.stack_table_capacity = Some(nodes as u64);
        self
    }

    /// How far back the always-on history reaches (`SMOLDER_HISTORY`,
    /// default `15m`, 10 s to 48 h). Queries with `window=` are answered from
    /// it without recording.
    pub fn history(mut self, span: Duration) -> Self {
        self.history_span = Some(span);
        self
    }

    /// The history's time resolution (`SMOLDER_HISTORY_RESOLUTION`, default
    /// `10s`, 1 s to 10 min): windows are answered in whole buckets of this
    /// length.
    pub fn history_resolution(mut self, bucket: Duration) -> Self {
        self.history_resolution = Some(bucket);
        self
    }

    /// Memory the history may use (`SMOLDER_HISTORY_BYTES`, default 4 MiB).
    /// When full, the oldest buckets are dropped first, so the history
    /// reaches less far back rather than growing.
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = Some(bytes as u64);
        self
    }

    /// The service's name, shown in flame-graph titles and exported spans
    /// (`OTEL_SERVICE_NAME`; default: the executable's file name).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Address of the HTTP endpoint (`SMOLDER_HTTP_ADDR`, default
    /// `127.0.0.1:6060`, `off` to disable). Port 0 picks a free port; see
    /// [`Agent::http_addr`](crate::Agent::http_addr).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(Some(addr));
        self
    }

    /// Runs without the HTTP endpoint (as `SMOLDER_HTTP_ADDR=off`).
    pub fn http_disabled(mut self) -> Self {
        self.http_addr = Some(None);
        self
    }

    /// Bearer token every HTTP request must carry (`SMOLDER_HTTP_TOKEN`):
    /// `Authorization: Bearer <token>`. Required to listen on anything but
    /// loopback, unless [`http_allow_unauthenticated`](Self::http_allow_unauthenticated).
    pub fn http_token(mut self, token: impl Into<String>) -> Self {
        self.http_token = Some(token.into());
        self
    }

    /// Lets the endpoint listen on a non-loopback address without a token.
    /// Only for networks you trust: profiles reveal code structure.
    pub fn http_allow_unauthenticated(mut self, allow: bool) -> Self {
        self.http_allow_unauthenticated = allow;
        self
    }

    /// Whether failing to bind the HTTP address fails `start` (the default)
    /// or only logs a warning and profiles without the endpoint.
    pub fn http_required(mut self, required: bool) -> Self {
        self.http_required = Some(required);
        self
    }

    /// Longest `seconds=` capture the endpoint accepts
    /// (`SMOLDER_HTTP_MAX_SECONDS`, default 300).
    pub fn http_max_seconds(mut self, seconds: u64) -> Self {
        self.http_max_seconds = Some(seconds);
        self
    }

    /// Connections the endpoint serves at once (`SMOLDER_HTTP_MAX_CONNECTIONS`,
    /// default 64); more are answered 503 and closed.
    pub fn http_max_connections(mut self, connections: usize) -> Self {
        self.http_max_connections = Some(connections as u64);
        self
    }

    /// The base URL others reach the HTTP endpoint at
    /// (`SMOLDER_HTTP_PUBLIC_URL`, e.g. `http://checkout-7.internal:6060`),
    /// used for the flame graph links in exported spans. Default: the
    /// endpoint's own address (the host name when it listens on all
    /// interfaces).
    pub fn http_public_url(mut self, url: impl Into<String>) -> Self {
        self.http_public_url = Some(url.into());
        self
    }

    /// Exports the spans recorded by [`tracing_layer`](crate::tracing_layer)
    /// to this OTLP endpoint, each with its CPU profile attributes. Without
    /// it, `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) decides;
    /// with neither, spans are not exported. For HTTP, a URL without a path
    /// gets `/v1/traces` appended, as the environment variable does.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`,
    /// the default, or `grpc`).
    pub fn otlp_protocol(mut self, protocol: OtlpProtocol) -> Self {
        self.otlp_protocol = Some(protocol);
        self
    }

    /// The certificate authorities (a PEM file) trusted to sign an
    /// `https://` endpoint's certificate, instead of the system's
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub fn otlp_certificate(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.otlp_tls.certificate = Some(pem_file.into());
        self
    }

    /// A client certificate and its private key (PEM files) for an
    /// `https://` endpoint that asks for one
    /// (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub fn otlp_client_certificate(
        mut self,
        certificate_pem_file: impl Into<PathBuf>,
        key_pem_file: impl Into<PathBuf>,
    ) -> Self {
        self.otlp_tls.client = Some((certificate_pem_file.into(), key_pem_file.into()));
        self
    }

    /// Merges defaults, environment and explicit settings, validating each.
    pub(crate) fn resolve(&self, env: &impl Env) -> Result<Config, Error> {
        let env_enabled = parse_bool(env, "SMOLDER_ENABLED")?;
        let enabled = env_enabled != Some(false) && self.enabled.or(env_enabled).unwrap_or(true);
        let unwinder = match self.unwinder {
            Some(u) => u,
            None => parse_choice(
                env,
                "SMOLDER_UNWINDER",
                "dwarf or frame-pointers",
                &[
                    ("dwarf", Unwinder::Dwarf),
                    ("frame-pointers", Unwinder::FramePointers),
                    ("frame-pointer", Unwinder::FramePointers),
                    ("fp", Unwinder::FramePointers),
                ],
            )?
            .unwrap_or_default(),
        };
        let engine = match self.engine {
            Some(e) => e,
            None => parse_choice(
                env,
                "SMOLDER_ENGINE",
                "auto, per-thread-timers or setitimer",
                &[
                    ("auto", Engine::Auto),
                    ("per-thread-timers", Engine::PerThreadTimers),
                    ("setitimer", Engine::Setitimer),
                ],
            )?
            .unwrap_or_default(),
        };
        Ok(Config {
            enabled,
            frequency_hz: FREQUENCY.resolve(self.frequency_hz, env, 99)? as u32,
            max_depth: MAX_DEPTH.resolve(self.max_depth, env, 128)? as usize,
            unwinder,
            engine,
            buffer_records: (BUFFER_RECORDS.resolve(self.buffer_records, env, 1024)? as usize)
                .next_power_of_two(),
            stack_table_capacity: STACK_TABLE.resolve(self.stack_table_capacity, env, 1 << 16)?
                as usize,
            history_span: HISTORY_SPAN.resolve(
                self.history_span,
                env,
                Duration::from_secs(15 * 60),
            )?,
            history_resolution: HISTORY_RESOLUTION.resolve(
                self.history_resolution,
                env,
                Duration::from_secs(10),
            )?,
            history_bytes: HISTORY_BYTES.resolve(self.history_bytes, env, 4 << 20)? as usize,
            service_name: self
                .service_name
                .clone()
                .or_else(|| {
                    env.var("OTEL_SERVICE_NAME")
                        .filter(|n| !n.trim().is_empty())
                })
                .unwrap_or_else(default_service_name),
            http: HttpSettings {
                addr: match self.http_addr {
                    Some(addr) => addr,
                    None => parse_http_addr(env)?,
                },
                token: self
                    .http_token
                    .clone()
                    .or_else(|| env.var("SMOLDER_HTTP_TOKEN"))
                    .filter(|t| !t.is_empty()),
                allow_unauthenticated: self.http_allow_unauthenticated,
                required: self.http_required.unwrap_or(true),
                max_seconds: HTTP_MAX_SECONDS.resolve(self.http_max_seconds, env, 300)?,
                max_connections: HTTP_MAX_CONNECTIONS.resolve(self.http_max_connections, env, 64)?
                    as usize,
                public_url: self
                    .http_public_url
                    .clone()
                    .or_else(|| env.var("SMOLDER_HTTP_PUBLIC_URL"))
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| u.trim().trim_end_matches('/').to_owned()),
            },
            otlp: otlp::resolve(
                self.otlp_endpoint.as_deref(),
                self.otlp_protocol,
                &self.otlp_tls,
                env,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    pub(super) struct MapEnv(HashMap<&'static str, &'static str>);

    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    pub(super) fn env(pairs: &[(&'static str, &'static str)]) -> MapEnv {
        MapEnv(pairs.iter().copied().collect())
    }

    #[test]
    fn defaults_apply_without_environment() {
        let config = AgentBuilder::default().resolve(&env(&[])).unwrap();
        assert!(config.enabled);
        assert_eq!(config.frequency_hz, 99);
        assert_eq!(config.max_depth, 128);
        assert_eq!(config.unwinder, Unwinder::Dwarf);
        assert_eq!(config.engine, Engine::Auto);
        assert_eq!(config.buffer_records, 1024);
    }

    #[test]
    fn environment_overrides_defaults_and_builder_overrides_environment() {
        let e = env(&[("SMOLDER_FREQUENCY_HZ", "250"), ("SMOLDER_MAX_DEPTH", "64")]);
        let config = AgentBuilder::default().resolve(&e).unwrap();
        assert_eq!((config.frequency_hz, config.max_depth), (250, 64));
        let config = AgentBuilder::default()
            .frequency_hz(999)
            .resolve(&e)
            .unwrap();
        assert_eq!((config.frequency_hz, config.max_depth), (999, 64));
    }

    #[test]
    fn kill_switch_beats_the_builder() {
        let e = env(&[("SMOLDER_ENABLED", "false")]);
        assert!(
            !AgentBuilder::default()
                .enabled(true)
                .resolve(&e)
                .unwrap()
                .enabled
        );
        assert!(
            !AgentBuilder::default()
                .enabled(false)
                .resolve(&env(&[]))
                .unwrap()
                .enabled
        );
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

    #[test]
    fn buffer_capacity_rounds_up_to_power_of_two() {
        let config = AgentBuilder::default()
            .buffer_records(1000)
            .resolve(&env(&[]))
            .unwrap();
        assert_eq!(config.buffer_records, 1024);
    }
}
