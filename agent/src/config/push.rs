//! Profile push settings: where continuous profiles go (Pyroscope's
//! `PYROSCOPE_*` variables, Grafana's own SDKs' names), how often, with
//! which series labels and credentials.
//!
//! Everything is resolved here, once, at start, so that a bad value fails
//! `start` with a message naming the variable.
//!
//! Series labels are Prometheus-style names (`[a-zA-Z_][a-zA-Z0-9_]*`), as
//! Pyroscope requires. Names from `OTEL_RESOURCE_ATTRIBUTES` and
//! `PYROSCOPE_LABELS` are sanitised the way Prometheus and Pyroscope's own
//! OpenTelemetry ingestion do: every other character becomes `_`
//! (`service.version` → `service_version`, `k8s.pod.name` →
//! `k8s_pod_name`), and a name starting with a digit gets a leading `_`.
//! `service.name` from the resource is not a label of its own: the series'
//! `service_name` is the agent's service name (`OTEL_SERVICE_NAME`), as the
//! resource of exported spans says. `PYROSCOPE_LABELS` wins over a resource
//! attribute that sanitises to the same name.

use std::time::Duration;

use super::bounds::PUSH_INTERVAL;
use super::env::{Env, parse_bool};
use super::otlp::{self, OtlpSettings, OtlpTls};
use crate::Error;

/// The push's settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushSettings {
    /// Profiles of each interval go to Pyroscope, if set.
    pub(crate) pyroscope: Option<PyroscopeSettings>,
    /// ... and to an OpenTelemetry Collector as OTLP profiles, if set
    /// (only with the `otlp-profiles` feature).
    pub(crate) otlp: Option<OtlpSettings>,
    /// One profile per source per interval of this length.
    pub(crate) interval: Duration,
}

impl PushSettings {
    /// How long one request may take: half an interval, at most 10 s, so
    /// that one slow request never holds the push thread past the next
    /// interval's end.
    pub(crate) fn request_timeout(&self) -> Duration {
        (self.interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }
}

/// Where and how profiles go to Pyroscope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PyroscopeSettings {
    /// The server's base URL as given, without a trailing `/`.
    pub(crate) url: String,
    /// Headers every push carries beyond the protocol's own: credentials
    /// (`authorization`) and the tenant (`x-scope-orgid`). Names lower case.
    pub(crate) headers: Vec<(String, String)>,
    /// Series labels beyond `__name__` and `service_name`, sanitised, in
    /// the order first given.
    pub(crate) labels: Vec<(String, String)>,
}

impl PyroscopeSettings {
    /// The Connect route of `push.v1.PusherService/Push` under the base URL.
    pub(crate) fn push_url(&self) -> String {
        format!("{}/push.v1.PusherService/Push", self.url)
    }
}

/// What the builder set; the environment fills in the rest.
#[derive(Debug, Clone, Default)]
pub(crate) struct PushBuilder {
    pub(crate) pyroscope_url: Option<String>,
    pub(crate) interval: Option<Duration>,
    pub(crate) tenant_id: Option<String>,
    pub(crate) basic_auth: Option<(String, String)>,
    pub(crate) auth_token: Option<String>,
    pub(crate) labels: Vec<(String, String)>,
    /// OTLP profiles: `Some(true)` on, `Some(false)` off, `None`: as the
    /// environment says.
    pub(crate) otlp_profiles: Option<bool>,
}

/// Most series labels taken from the resource and `PYROSCOPE_LABELS`:
/// Pyroscope refuses series with more than 30 label names by default, and
/// the agent adds `__name__`, `service_name`, and per sample `span_name`
/// and `thread`.
pub(crate) const MAX_LABELS: usize = 24;
/// Pyroscope's default limits on a label's name and value.
const MAX_NAME_LEN: usize = 1024;
const MAX_VALUE_LEN: usize = 2048;

/// The builder's choices over the environment's.
pub(crate) fn resolve(given: &PushBuilder, env: &impl Env) -> Result<PushSettings, Error> {
    let interval = PUSH_INTERVAL.resolve(given.interval, env, Duration::from_secs(10))?;
    Ok(PushSettings {
        pyroscope: resolve_pyroscope(given, env)?,
        otlp: resolve_otlp_profiles(given, env)?,
        interval,
    })
}

/// OTLP profiles: on with `OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT`, or with
/// `SMOLDER_OTLP_PROFILES=on` (or the builder's `otlp_profiles(true)`) and
/// the general endpoint; settings as for spans, with the `..._PROFILES_*`
/// variables winning over the general ones.
fn resolve_otlp_profiles(
    given: &PushBuilder,
    env: &impl Env,
) -> Result<Option<OtlpSettings>, Error> {
    let asked = match given.otlp_profiles {
        Some(on) => Some(on),
        None => parse_bool(env, "SMOLDER_OTLP_PROFILES")?,
    };
    let own_endpoint = env
        .var(otlp::PROFILES.endpoint)
        .is_some_and(|v| !v.trim().is_empty());
    if asked == Some(false) || (asked.is_none() && !own_endpoint) {
        return Ok(None);
    }
    if !cfg!(feature = "otlp-profiles") {
        // An endpoint variable alone may be meant for other processes
        // sharing the environment; asking by name in a build that cannot
        // is a mistake worth failing start for.
        return match asked {
            Some(true) => Err(Error::InvalidEnvironment {
                var: "SMOLDER_OTLP_PROFILES",
                value: "on".to_owned(),
                expected: "off: this build of smolder lacks its `otlp-profiles` cargo feature",
            }),
            _ => Ok(None),
        };
    }
    let settings = otlp::resolve_signal(&otlp::PROFILES, None, None, &OtlpTls::default(), env)?;
    match settings {
        Some(settings) => Ok(Some(settings)),
        None if asked == Some(true) => Err(Error::InvalidEnvironment {
            var: "SMOLDER_OTLP_PROFILES",
            value: "on".to_owned(),
            expected: "off, or an endpoint in OTEL_EXPORTER_OTLP_ENDPOINT or \
                       OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT to send profiles to",
        }),
        None => Ok(None),
    }
}

fn resolve_pyroscope(
    given: &PushBuilder,
    env: &impl Env,
) -> Result<Option<PyroscopeSettings>, Error> {
    let set = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
    let url = match &given.pyroscope_url {
        Some(url) => Some(check_url(url).map_err(|expected| Error::InvalidSetting {
            setting: "pyroscope_url",
            value: url.clone(),
            expected,
        })?),
        None => match set("PYROSCOPE_SERVER_ADDRESS") {
            Some(url) => Some(
                check_url(&url).map_err(|expected| Error::InvalidEnvironment {
                    var: "PYROSCOPE_SERVER_ADDRESS",
                    value: url.clone(),
                    expected,
                })?,
            ),
            None => None,
        },
    };
    let Some(url) = url else {
        return Ok(None);
    };

    let mut headers = Vec::new();
    let token = given
        .auth_token
        .clone()
        .map(|t| (t, "pyroscope_auth_token"))
        .or_else(|| set("PYROSCOPE_AUTH_TOKEN").map(|t| (t, "PYROSCOPE_AUTH_TOKEN")));
    let basic = match &given.basic_auth {
        Some(pair) => Some(pair.clone()),
        None => match (
            set("PYROSCOPE_BASIC_AUTH_USER"),
            set("PYROSCOPE_BASIC_AUTH_PASSWORD"),
        ) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            (Some(_), None) => return Err(missing("PYROSCOPE_BASIC_AUTH_PASSWORD", "user")),
            (None, Some(_)) => return Err(missing("PYROSCOPE_BASIC_AUTH_USER", "password")),
        },
    };
    match (token, basic) {
        (Some((_, source)), Some(_)) => {
            return Err(credential_error(
                source,
                "either a bearer token or a basic-auth user and password, not both",
            ));
        }
        (Some((token, source)), None) => {
            let token = token.trim();
            if !header_safe(token) {
                return Err(credential_error(
                    source,
                    "a token of printable characters (it is sent as `Authorization: Bearer <token>`)",
                ));
            }
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        (None, Some((user, password))) => {
            if user.contains(':') {
                return Err(credential_error(
                    "PYROSCOPE_BASIC_AUTH_USER",
                    "a user name without `:` (HTTP basic authentication cannot carry one)",
                ));
            }
            let credentials = base64(format!("{user}:{password}").as_bytes());
            headers.push(("authorization".to_owned(), format!("Basic {credentials}")));
        }
        (None, None) => {}
    }
    let tenant = given
        .tenant_id
        .clone()
        .or_else(|| set("PYROSCOPE_TENANT_ID"));
    if let Some(tenant) = tenant {
        let tenant = tenant.trim().to_owned();
        if !header_safe(&tenant) {
            return Err(Error::InvalidEnvironment {
                var: "PYROSCOPE_TENANT_ID",
                value: tenant,
                expected: "a tenant id of printable characters (sent as X-Scope-OrgID)",
            });
        }
        headers.push(("x-scope-orgid".to_owned(), tenant));
    }

    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(raw) = set("OTEL_RESOURCE_ATTRIBUTES") {
        let pairs = parse_pairs(&raw, true).ok_or_else(|| Error::InvalidEnvironment {
            var: "OTEL_RESOURCE_ATTRIBUTES",
            value: raw.clone(),
            expected: "comma-separated key=value pairs, values percent-encoded where needed",
        })?;
        for (key, value) in pairs {
            if key == "service.name" {
                continue;
            }
            add_label(&mut labels, &key, value, "OTEL_RESOURCE_ATTRIBUTES")?;
        }
    }
    let mut from_labels = given.labels.clone();
    if from_labels.is_empty()
        && let Some(raw) = set("PYROSCOPE_LABELS")
    {
        from_labels = parse_pairs(&raw, false).ok_or_else(|| Error::InvalidEnvironment {
            var: "PYROSCOPE_LABELS",
            value: raw.clone(),
            expected: "comma-separated name=value pairs, e.g. region=eu-west-1,team=checkout",
        })?;
    }
    for (key, value) in from_labels {
        add_label(&mut labels, &key, value, "PYROSCOPE_LABELS")?;
    }
    if labels.len() > MAX_LABELS {
        return Err(Error::InvalidEnvironment {
            var: "PYROSCOPE_LABELS",
            value: format!("{} labels", labels.len()),
            expected: "at most 24 labels from OTEL_RESOURCE_ATTRIBUTES and PYROSCOPE_LABELS together \
                       (Pyroscope refuses series with more than 30 label names)",
        });
    }

    Ok(Some(PyroscopeSettings {
        url,
        headers,
        labels,
    }))
}

/// A Prometheus-style label name for `key`: every character but ASCII
/// letters, digits and `_` becomes `_`; a leading digit gets a `_` before
/// it.
fn sanitize_label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// Adds (or replaces) one label, checked.
fn add_label(
    labels: &mut Vec<(String, String)>,
    key: &str,
    value: String,
    var: &'static str,
) -> Result<(), Error> {
    let name = sanitize_label_name(key.trim());
    let refuse = |expected| Error::InvalidEnvironment {
        var,
        value: format!("{key}={value}"),
        expected,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(refuse("label names of 1 to 1024 characters"));
    }
    if name.starts_with("__") || name == "service_name" {
        return Err(refuse(
            "label names other than service_name (set OTEL_SERVICE_NAME) and names starting \
             with __ (Pyroscope reserves them)",
        ));
    }
    if value.is_empty() || value.len() > MAX_VALUE_LEN {
        return Err(refuse("label values of 1 to 2048 bytes"));
    }
    match labels.iter_mut().find(|(n, _)| *n == name) {
        Some(label) => label.1 = value,
        None => labels.push((name, value)),
    }
    Ok(())
}

/// `key=value,key=value`, trimmed; values percent-decoded if `decode`.
/// `None` if any part is malformed.
fn parse_pairs(raw: &str, decode: bool) -> Option<Vec<(String, String)>> {
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = if decode {
                super::otlp::percent_decode(value)?
            } else {
                value.to_owned()
            };
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_owned(), value))
        })
        .collect()
}

/// Checks a base URL: `http://` or `https://`, a host, no query or
/// fragment. Returns it without a trailing `/`.
fn check_url(url: &str) -> Result<String, &'static str> {
    const EXPECTED: &str = "a URL such as http://pyroscope:4040 or https://profiles.example.com \
                            (http or https, a host, an optional path, no query)";
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or(EXPECTED)?;
    let host = rest.split('/').next().unwrap_or("");
    let valid = !host.is_empty()
        && !host.starts_with(':')
        && !url.contains(['?', '#'])
        && url.bytes().all(|b| b.is_ascii_graphic());
    valid.then(|| url.to_owned()).ok_or(EXPECTED)
}

fn header_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

fn missing(var: &'static str, given: &'static str) -> Error {
    Error::InvalidEnvironment {
        var,
        value: String::new(),
        expected: if given == "user" {
            "the basic-auth password, since PYROSCOPE_BASIC_AUTH_USER is set"
        } else {
            "the basic-auth user, since PYROSCOPE_BASIC_AUTH_PASSWORD is set"
        },
    }
}

/// A refused credential, named but never shown.
fn credential_error(source: &'static str, expected: &'static str) -> Error {
    if source.starts_with("PYROSCOPE_") {
        Error::InvalidEnvironment {
            var: source,
            value: "…".to_owned(),
            expected,
        }
    } else {
        Error::InvalidSetting {
            setting: source,
            value: "…".to_owned(),
            expected,
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4), for basic authentication.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::tests::env;

    fn resolved(pairs: &[(&'static str, &'static str)]) -> Result<PushSettings, Error> {
        resolve(&PushBuilder::default(), &env(pairs))
    }

    fn pyroscope(pairs: &[(&'static str, &'static str)]) -> PyroscopeSettings {
        let mut all = vec![("PYROSCOPE_SERVER_ADDRESS", "http://pyroscope:4040/")];
        all.extend_from_slice(pairs);
        resolved(&all).unwrap().pyroscope.expect("configured")
    }

    #[test]
    fn nothing_is_pushed_without_a_server() {
        let settings = resolved(&[("PYROSCOPE_LABELS", "a=b")]).unwrap();
        assert!(settings.pyroscope.is_none());
        assert_eq!(settings.interval, Duration::from_secs(10));
        assert_eq!(settings.request_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn the_url_gets_the_connect_route() {
        assert_eq!(
            pyroscope(&[]).push_url(),
            "http://pyroscope:4040/push.v1.PusherService/Push"
        );
        for bad in [
            "pyroscope:4040",
            "ftp://x",
            "http://",
            "http://h/?x=1",
            "http://h h",
        ] {
            let error = resolved(&[("PYROSCOPE_SERVER_ADDRESS", bad)]).unwrap_err();
            assert!(
                error.to_string().contains("PYROSCOPE_SERVER_ADDRESS"),
                "{bad}: {error}"
            );
        }
        let builder = PushBuilder {
            pyroscope_url: Some("https://profiles.example.com/base".into()),
            ..Default::default()
        };
        let given = resolve(&builder, &env(&[])).unwrap().pyroscope.unwrap();
        assert_eq!(
            given.push_url(),
            "https://profiles.example.com/base/push.v1.PusherService/Push"
        );
    }

    #[test]
    fn labels_are_sanitised_and_pyroscope_labels_win() {
        let settings = pyroscope(&[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,service.version=1.2%2C3,k8s.pod.name=shop-7,region=us",
            ),
            ("PYROSCOPE_LABELS", " region = eu-west-1 , 2xx=yes"),
        ]);
        let labels: Vec<(&str, &str)> = settings
            .labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("service_version", "1.2,3"),
                ("k8s_pod_name", "shop-7"),
                ("region", "eu-west-1"),
                ("_2xx", "yes"),
            ]
        );
        for (var, value) in [
            ("PYROSCOPE_LABELS", "no-equals"),
            ("PYROSCOPE_LABELS", "__name__=x"),
            ("PYROSCOPE_LABELS", "service_name=x"),
            ("PYROSCOPE_LABELS", "empty="),
            ("OTEL_RESOURCE_ATTRIBUTES", "k=%zz"),
        ] {
            let mut all = vec![("PYROSCOPE_SERVER_ADDRESS", "http://p:4040")];
            all.push((var, value));
            let error = resolved(&all).unwrap_err().to_string();
            assert!(error.contains(var), "{var}={value}: {error}");
        }
    }

    #[test]
    fn credentials_and_tenant_become_headers() {
        let header = |settings: &PyroscopeSettings, name: &str| {
            settings
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let token = pyroscope(&[
            ("PYROSCOPE_AUTH_TOKEN", "s3cret"),
            ("PYROSCOPE_TENANT_ID", "team-a"),
        ]);
        assert_eq!(header(&token, "authorization").unwrap(), "Bearer s3cret");
        assert_eq!(header(&token, "x-scope-orgid").unwrap(), "team-a");
        let basic = pyroscope(&[
            ("PYROSCOPE_BASIC_AUTH_USER", "Aladdin"),
            ("PYROSCOPE_BASIC_AUTH_PASSWORD", "open sesame"),
        ]);
        // RFC 7617's example.
        assert_eq!(
            header(&basic, "authorization").unwrap(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(header(&basic, "x-scope-orgid"), None);
        for (pairs, named) in [
            (
                &[("PYROSCOPE_BASIC_AUTH_USER", "u")][..],
                "PYROSCOPE_BASIC_AUTH_PASSWORD",
            ),
            (
                &[
                    ("PYROSCOPE_AUTH_TOKEN", "t"),
                    ("PYROSCOPE_BASIC_AUTH_USER", "u"),
                    ("PYROSCOPE_BASIC_AUTH_PASSWORD", "p"),
                ][..],
                "PYROSCOPE_AUTH_TOKEN",
            ),
        ] {
            let mut all = vec![("PYROSCOPE_SERVER_ADDRESS", "http://p:4040")];
            all.extend_from_slice(pairs);
            let error = resolved(&all).unwrap_err().to_string();
            assert!(error.contains(named), "{error}");
            assert!(
                !error.contains("t\"") && !error.contains("\"p\""),
                "{error}"
            );
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn otlp_profiles_follow_the_signal_variables() {
        let on = resolved(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("SMOLDER_OTLP_PROFILES", "on"),
        ]);
        let own = resolved(&[(
            "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
            "http://collector:4318/custom",
        )]);
        // The general endpoint alone sends spans, not profiles.
        let spans_only = resolved(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).unwrap();
        assert!(spans_only.otlp.is_none());
        let nowhere = resolved(&[("SMOLDER_OTLP_PROFILES", "on")]);
        if cfg!(feature = "otlp-profiles") {
            assert_eq!(
                on.unwrap().otlp.unwrap().endpoint,
                "http://collector:4318/v1development/profiles"
            );
            assert_eq!(
                own.unwrap().otlp.unwrap().endpoint,
                "http://collector:4318/custom"
            );
            let grpc = resolved(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL", "grpc"),
                ("SMOLDER_OTLP_PROFILES", "true"),
            ])
            .unwrap()
            .otlp
            .unwrap();
            assert_eq!(grpc.endpoint, "http://collector:4317");
            assert!(
                nowhere
                    .unwrap_err()
                    .to_string()
                    .contains("SMOLDER_OTLP_PROFILES")
            );
        } else {
            let error = on.unwrap_err().to_string();
            assert!(error.contains("otlp-profiles"), "{error}");
            assert!(own.unwrap().otlp.is_none(), "ignored without the feature");
            assert!(nowhere.is_err());
        }
    }

    #[test]
    fn the_interval_is_bounded() {
        let settings = resolved(&[("SMOLDER_PUSH_INTERVAL", "15s")]).unwrap();
        assert_eq!(settings.interval, Duration::from_secs(15));
        for bad in ["0s", "10", "1h"] {
            let error = resolved(&[("SMOLDER_PUSH_INTERVAL", bad)]).unwrap_err();
            assert!(
                error.to_string().contains("SMOLDER_PUSH_INTERVAL"),
                "{error}"
            );
        }
    }
}
