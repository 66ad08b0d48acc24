//! Span export settings from the standard OpenTelemetry variables.
//!
//! The exporter reads nothing from the environment itself: everything is
//! resolved here, once, at start, so that a bad value fails `start` with a
//! message naming the variable (as every `SMOLDER_*` variable does) instead
//! of failing each export later. Names and meanings follow the
//! OpenTelemetry exporter specification: a signal-specific variable
//! (`OTEL_EXPORTER_OTLP_TRACES_*`) wins over the general one.

use std::path::PathBuf;
use std::time::Duration;

use super::env::{Env, parse_choice};
use crate::Error;

/// The OTLP transport for exported spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`http/protobuf`, port 4318 by convention).
    #[default]
    HttpProtobuf,
    /// gRPC (`grpc`, port 4317 by convention).
    Grpc,
}

impl OtlpProtocol {
    /// The name used in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// Where and how spans are exported, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtlpSettings {
    /// The URL requests go to: for HTTP the whole URL of the traces route,
    /// for gRPC the server's address.
    pub(crate) endpoint: String,
    pub(crate) protocol: OtlpProtocol,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an API key.
    pub(crate) headers: Vec<(String, String)>,
    /// How long one export request may take.
    pub(crate) timeout: Duration,
    /// Whether request bodies are gzip-compressed.
    pub(crate) gzip: bool,
    /// Certificates for an `https://` endpoint.
    pub(crate) tls: OtlpTls,
}

/// The certificate files of an `https://` endpoint, all PEM. Read when the
/// exporter starts, on the agent's thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OtlpTls {
    /// The certificate authorities trusted for the collector's certificate
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`); without it, the system's.
    pub(crate) certificate: Option<PathBuf>,
    /// A client certificate and its private key, for collectors that ask
    /// for one (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `..._CLIENT_KEY`).
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// The specification's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One OTLP signal's variables: its own (`OTEL_EXPORTER_OTLP_<SIGNAL>_*`),
/// which win over the general ones, and its HTTP path.
pub(crate) struct Signal {
    pub(crate) endpoint: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) headers: &'static str,
    pub(crate) timeout: &'static str,
    pub(crate) compression: &'static str,
    pub(crate) certificate: &'static str,
    pub(crate) client_certificate: &'static str,
    pub(crate) client_key: &'static str,
    /// `OTEL_<SIGNAL>_EXPORTER`, whose `none` turns the signal off.
    pub(crate) exporter: &'static str,
    /// Appended to the general endpoint for HTTP.
    pub(crate) http_path: &'static str,
}

/// Spans.
pub(crate) const TRACES: Signal = Signal {
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    certificate: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    exporter: "OTEL_TRACES_EXPORTER",
    http_path: "/v1/traces",
};

/// Profiles (the `otlp-profiles` feature): `profiles/v1development`.
#[cfg_attr(not(feature = "otlp-profiles"), allow(dead_code))]
pub(crate) const PROFILES: Signal = Signal {
    endpoint: "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_PROFILES_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION",
    certificate: "OTEL_EXPORTER_OTLP_PROFILES_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_PROFILES_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_PROFILES_CLIENT_KEY",
    exporter: "OTEL_PROFILES_EXPORTER",
    http_path: "/v1development/profiles",
};

/// The builder's choices, if any, over the environment's. `None`: spans
/// are not exported (no endpoint anywhere, or OpenTelemetry disabled).
pub(crate) fn resolve(
    endpoint: Option<&str>,
    protocol: Option<OtlpProtocol>,
    tls: &OtlpTls,
    env: &impl Env,
) -> Result<Option<OtlpSettings>, Error> {
    resolve_signal(&TRACES, endpoint, protocol, tls, env)
}

/// As [`resolve`], for any signal: its own variables win over the general
/// ones, and the general endpoint gets its HTTP path.
pub(crate) fn resolve_signal(
    signal: &Signal,
    endpoint: Option<&str>,
    protocol: Option<OtlpProtocol>,
    tls: &OtlpTls,
    env: &impl Env,
) -> Result<Option<OtlpSettings>, Error> {
    let set = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
    let is_true = |name: &str| set(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let is_none = |name: &str| set(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    if is_true("OTEL_SDK_DISABLED") || is_none(signal.exporter) {
        return Ok(None);
    }
    // Which variable is in force: the signal's own if set, else the general one.
    let pick = |own: &'static str, general: &'static str| {
        if set(own).is_some() { own } else { general }
    };

    let protocol = match protocol {
        Some(protocol) => protocol,
        None => parse_choice(
            env,
            pick(signal.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL"),
            "grpc or http/protobuf (http/json is not supported)",
            &[
                ("grpc", OtlpProtocol::Grpc),
                ("http/protobuf", OtlpProtocol::HttpProtobuf),
            ],
        )?
        .unwrap_or_default(),
    };
    let endpoint = match (
        endpoint,
        set(signal.endpoint),
        set("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(given), _, _) if protocol == OtlpProtocol::HttpProtobuf => {
            http_signal_endpoint(given, signal.http_path)
        }
        (Some(given), _, _) => given.trim().to_owned(),
        // The signal-specific URL is used as it is, for either protocol.
        (None, Some(traces), _) => traces.trim().to_owned(),
        (None, None, Some(base)) if protocol == OtlpProtocol::HttpProtobuf => {
            format!("{}{}", base.trim().trim_end_matches('/'), signal.http_path)
        }
        (None, None, Some(base)) => base.trim().to_owned(),
        (None, None, None) => return Ok(None),
    };

    let headers_var = pick(signal.headers, "OTEL_EXPORTER_OTLP_HEADERS");
    let headers = match env.var(headers_var) {
        Some(raw) => parse_headers(&raw).ok_or_else(|| Error::InvalidEnvironment {
            var: headers_var,
            // The values are often credentials: the message names only the
            // headers.
            value: redacted(&raw),
            expected: "comma-separated name=value pairs with header names of letters, digits and -_., \
                       values percent-encoded where needed",
        })?,
        None => Vec::new(),
    };

    let timeout_var = pick(signal.timeout, "OTEL_EXPORTER_OTLP_TIMEOUT");
    let timeout = match set(timeout_var) {
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(Error::InvalidEnvironment {
                    var: timeout_var,
                    value: raw,
                    expected: "a whole number of milliseconds, at least 1",
                });
            }
        },
        None => DEFAULT_TIMEOUT,
    };

    let gzip = parse_choice(
        env,
        pick(signal.compression, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        "gzip or none",
        &[("gzip", true), ("none", false)],
    )?
    .unwrap_or(false);

    let path = |own, general| set(pick(own, general)).map(|p| PathBuf::from(p.trim()));
    let certificate = tls
        .certificate
        .clone()
        .or_else(|| path(signal.certificate, "OTEL_EXPORTER_OTLP_CERTIFICATE"));
    let client = match tls.client.clone() {
        Some(client) => Some(client),
        None => {
            let certificate_var = pick(
                signal.client_certificate,
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            );
            let key_var = pick(signal.client_key, "OTEL_EXPORTER_OTLP_CLIENT_KEY");
            match (set(certificate_var), set(key_var)) {
                (Some(certificate), Some(key)) => {
                    Some((PathBuf::from(certificate.trim()), PathBuf::from(key.trim())))
                }
                (None, None) => None,
                (Some(_), None) => return Err(alone(key_var, certificate_var)),
                (None, Some(_)) => return Err(alone(certificate_var, key_var)),
            }
        }
    };

    Ok(Some(OtlpSettings {
        endpoint,
        protocol,
        headers,
        timeout,
        gzip,
        tls: OtlpTls {
            certificate,
            client,
        },
    }))
}

/// A client certificate without its key, or the other way round.
fn alone(missing: &'static str, given: &'static str) -> Error {
    Error::InvalidEnvironment {
        var: missing,
        value: String::new(),
        expected: if given.ends_with("_KEY") {
            "the client certificate's file, since its private key is given"
        } else {
            "the client private key's file, since its certificate is given"
        },
    }
}

/// An HTTP endpoint given without a path gets the signal's path.
fn http_signal_endpoint(endpoint: &str, signal_path: &str) -> String {
    let endpoint = endpoint.trim();
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .map_or(trimmed, |(_, rest)| rest)
        .contains('/');
    if has_path {
        endpoint.to_owned()
    } else {
        format!("{trimmed}{signal_path}")
    }
}

/// `name=value,name=value`, values percent-decoded, spaces around each part
/// ignored. `None` when any pair is malformed: a header silently lost would
/// show up only as a collector refusing every export.
fn parse_headers(raw: &str) -> Option<Vec<(String, String)>> {
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = name.trim();
            let value = percent_decode(value.trim())?;
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
            let value_ok = value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
            (name_ok && value_ok).then(|| (name.to_ascii_lowercase(), value))
        })
        .collect()
}

/// `name=…,name=…`: a headers value fit for an error message.
fn redacted(raw: &str) -> String {
    raw.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{}=…", name.trim()),
            None => pair.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `%XX` escapes to bytes; `None` for a broken escape or a result that is
/// not UTF-8.
pub(super) fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::tests::env;

    fn resolved(pairs: &[(&'static str, &'static str)]) -> Result<Option<OtlpSettings>, Error> {
        resolve(None, None, &OtlpTls::default(), &env(pairs))
    }

    #[test]
    fn no_endpoint_or_disabled_means_no_export() {
        assert_eq!(resolved(&[]).unwrap(), None);
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(resolved(&disabled).unwrap(), None);
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(resolved(&none).unwrap(), None);
    }

    /// Where and how the variables send spans.
    fn target(pairs: &[(&'static str, &'static str)]) -> (String, OtlpProtocol) {
        let settings = resolved(pairs).unwrap().expect("export configured");
        (settings.endpoint, settings.protocol)
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let http = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            target(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            ("http://c:4318/v1/traces".into(), http)
        );
        // The general variable always gets the signal's path, even after a path.
        assert_eq!(
            target(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/otlp")]),
            ("http://c:4318/otlp/v1/traces".into(), http)
        );
        assert_eq!(
            target(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ]),
            ("http://c:4318/custom".into(), http)
        );
        assert_eq!(
            target(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
            ("http://collector:4317".into(), OtlpProtocol::Grpc)
        );
        // The builder's URL: the traces path only when it has no path.
        let given = |url| {
            resolve(Some(url), None, &OtlpTls::default(), &env(&[]))
                .unwrap()
                .unwrap()
                .endpoint
        };
        assert_eq!(given("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(given("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            given("http://c:4318/custom/path"),
            "http://c:4318/custom/path"
        );
        let given_grpc = resolve(
            Some("http://c:4317"),
            Some(OtlpProtocol::Grpc),
            &OtlpTls::default(),
            &env(&[]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(given_grpc.endpoint, "http://c:4317");
    }

    #[test]
    fn headers_timeout_and_compression_are_read_and_checked() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let defaults = resolved(&[base]).unwrap().unwrap();
        assert_eq!(
            (defaults.headers.len(), defaults.timeout, defaults.gzip),
            (0, DEFAULT_TIMEOUT, false)
        );
        let set = resolved(&[
            base,
            ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                " Api-Key = s%20e%3Dcret ,x-team=checkout,",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
        ])
        .unwrap()
        .unwrap();
        let expected = [("api-key", "s e=cret"), ("x-team", "checkout")]
            .map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(set.headers, expected);
        assert_eq!((set.timeout, set.gzip), (Duration::from_millis(2500), true));
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad name=1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%0a"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ] {
            let message = resolved(&[base, (var, value)]).unwrap_err().to_string();
            assert!(message.contains(var), "{var}={value}: {message}");
        }
        let secret = resolved(&[
            base,
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret,broken"),
        ])
        .unwrap_err();
        let message = secret.to_string();
        assert!(
            message.contains("api-key=…") && !message.contains("s3cret"),
            "{message}"
        );
    }

    #[test]
    fn the_builder_wins_over_the_environment() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let settings = resolve(
            Some("http://given:4318"),
            Some(OtlpProtocol::HttpProtobuf),
            &OtlpTls::default(),
            &e,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (settings.endpoint.as_str(), settings.protocol),
            ("http://given:4318/v1/traces", OtlpProtocol::HttpProtobuf)
        );
    }

    #[test]
    fn certificate_files_are_read_from_the_standard_variables() {
        let tls = |pairs: &[(&'static str, &'static str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")];
            all.extend_from_slice(pairs);
            resolved(&all).map(|settings| settings.unwrap().tls)
        };
        assert_eq!(tls(&[]).unwrap(), OtlpTls::default());
        assert_eq!(
            tls(&[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/general.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", " /etc/ca.pem "),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem"),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/client.key"),
            ])
            .unwrap(),
            OtlpTls {
                certificate: Some("/etc/ca.pem".into()),
                client: Some(("/etc/client.pem".into(), "/etc/client.key".into())),
            }
        );
        // Half a client identity is a mistake worth failing start for.
        let error =
            tls(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem")]).unwrap_err();
        assert!(
            error.to_string().contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            "{error}"
        );
        let error =
            tls(&[("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/etc/client.key")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            "{error}"
        );
        // The builder's files win.
        let given = OtlpTls {
            certificate: Some("/given/ca.pem".into()),
            client: None,
        };
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ]);
        let settings = resolve(None, None, &given, &e).unwrap().unwrap();
        assert_eq!(settings.tls, given);
    }
}
