//! The [`AgentBuilder`]: one setter per setting, and `resolve`, which puts
//! the builder's values over the environment's over the defaults (the
//! order, and its one exception, are in the `config` module docs) and
//! checks each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::bounds::{
    BUFFER_RECORDS, FREQUENCY, HISTORY_BYTES, HISTORY_RESOLUTION, HISTORY_SPAN,
    HTTP_MAX_CONNECTIONS, HTTP_MAX_SECONDS, MAX_DEPTH, STACK_TABLE,
};
use super::env::{Env, default_service_name, parse_bool, parse_http_addr};
use super::otlp::{self, OtlpProtocol};
use super::push::{self, PushBuilder};
use super::{Config, Engine, HttpSettings, OtlpTls, Unwinder};
use crate::Error;

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
    pub(crate) push: PushBuilder,
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

    /// Pushes the profiles of every interval to this Grafana Pyroscope
    /// server (`PYROSCOPE_SERVER_ADDRESS`, e.g. `http://pyroscope:4040`):
    /// gzipped pprof to `{url}/push.v1.PusherService/Push`. See
    /// `docs/fleet.md`.
    pub fn pyroscope_url(mut self, url: impl Into<String>) -> Self {
        self.push.pyroscope_url = Some(url.into());
        self
    }

    /// How long each pushed profile covers (`SMOLDER_PUSH_INTERVAL`,
    /// default `10s`, 1 s to 5 min).
    pub fn push_interval(mut self, interval: Duration) -> Self {
        self.push.interval = Some(interval);
        self
    }

    /// The Pyroscope tenant (`PYROSCOPE_TENANT_ID`), sent as
    /// `X-Scope-OrgID`.
    pub fn pyroscope_tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.push.tenant_id = Some(tenant.into());
        self
    }

    /// HTTP basic authentication for Pyroscope
    /// (`PYROSCOPE_BASIC_AUTH_USER`, `PYROSCOPE_BASIC_AUTH_PASSWORD`).
    pub fn pyroscope_basic_auth(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.push.basic_auth = Some((user.into(), password.into()));
        self
    }

    /// A bearer token for Pyroscope (`PYROSCOPE_AUTH_TOKEN`).
    pub fn pyroscope_auth_token(mut self, token: impl Into<String>) -> Self {
        self.push.auth_token = Some(token.into());
        self
    }

    /// Series labels for pushed profiles (`PYROSCOPE_LABELS=k=v,...`),
    /// instead of the environment's; names are sanitised to Prometheus
    /// style (`service.version` becomes `service_version`).
    pub fn pyroscope_labels<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.push.labels = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sends each interval's profiles to an OpenTelemetry Collector as OTLP
    /// profiles too (`SMOLDER_OTLP_PROFILES=on`, with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; or set
    /// `OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT`). Needs the crate's
    /// `otlp-profiles` feature: without it, `true` fails `start`.
    pub fn otlp_profiles(mut self, on: bool) -> Self {
        self.push.otlp_profiles = Some(on);
        self
    }

    /// Merges defaults, environment and explicit settings, validating each.
    pub(crate) fn resolve(&self, env: &impl Env) -> Result<Config, Error> {
        let env_enabled = parse_bool(env, "SMOLDER_ENABLED")?;
        let enabled = env_enabled != Some(false) && self.enabled.or(env_enabled).unwrap_or(true);
        let unwinder = match self.unwinder {
            Some(u) => u,
            None => Unwinder::from_env(env)?.unwrap_or_default(),
        };
        let engine = match self.engine {
            Some(e) => e,
            None => Engine::from_env(env)?.unwrap_or_default(),
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
            push: push::resolve(&self.push, env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::tests::env;

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
    fn buffer_capacity_rounds_up_to_power_of_two() {
        let config = AgentBuilder::default()
            .buffer_records(1000)
            .resolve(&env(&[]))
            .unwrap();
        assert_eq!(config.buffer_records, 1024);
    }
}
