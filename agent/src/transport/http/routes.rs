//! Request handling: method and auth checks, routing, and the routes.
//!
//! | route | answers |
//! |---|---|
//! | `/debug/pprof/` | HTML index: views, links, current stats |
//! | `/debug/pprof/profile` | gzipped pprof protobuf |
//! | `/debug/pprof/flamegraph` | interactive SVG (differential with `base=`) |
//! | `/debug/pprof/folded` | folded stacks (two counts with `base=`) |
//! | `/debug/pprof/stats` | JSON self-report |

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::query::{self, Kinds, Limits, ProfileQuery, Source};
use super::{Endpoint, MAX_TARGET_BYTES, index};
use crate::Profile;
use crate::profile::ProfileKind;
use crate::profile::queries::{CaptureError, Coverage, WindowError};
use crate::render::flamegraph::Style;

type Body = Full<Bytes>;

/// The three renderings of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pprof,
    Svg,
    Folded,
}

/// Turns one request into one response; never fails, never panics out.
pub(crate) async fn handle(endpoint: Arc<Endpoint>, request: Request<Incoming>) -> Response<Body> {
    endpoint.counters.requests.fetch_add(1, Ordering::Relaxed);
    let response = route(&endpoint, &request).await;
    if response.status().is_client_error() {
        endpoint
            .counters
            .client_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn route(endpoint: &Arc<Endpoint>, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target_len > MAX_TARGET_BYTES {
        return text(
            StatusCode::URI_TOO_LONG,
            &format!("request target of {target_len} bytes; the limit is {MAX_TARGET_BYTES}"),
        );
    }
    if let Some(denied) = check_token(endpoint, request) {
        return denied;
    }
    let query = request.uri().query().unwrap_or("");
    let (format, kinds) = match request.uri().path() {
        "/debug/pprof" | "/debug/pprof/" => return index_page(endpoint, query),
        "/debug/pprof/stats" => return stats(endpoint, query),
        "/debug/pprof/profile" => (Format::Pprof, Kinds::Only(ProfileKind::Cpu)),
        "/debug/pprof/flamegraph" => (Format::Svg, Kinds::Chosen),
        "/debug/pprof/folded" => (Format::Folded, Kinds::Chosen),
        other => {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no route {other:?}; the index at /debug/pprof/ lists the routes"),
            );
        }
    };
    let limits = Limits {
        max_seconds: endpoint.settings.max_seconds,
        max_hz: 10_000,
        default_seconds: 30.min(endpoint.settings.max_seconds),
    };
    match query::parse_profile_query(query, limits, kinds) {
        Ok(query) => profile(endpoint, request.uri().path(), query, format).await,
        Err(error) => text(StatusCode::BAD_REQUEST, &error.to_string()),
    }
}

/// With a token configured, every request must carry it as a bearer token.
fn check_token(endpoint: &Endpoint, request: &Request<Incoming>) -> Option<Response<Body>> {
    let expected = endpoint.settings.token.as_deref()?;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return None;
    }
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this endpoint needs `Authorization: Bearer <token>` with the token from SMOLDER_HTTP_TOKEN",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"smolder\""),
    );
    Some(response)
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, &expected) in b.iter().enumerate() {
        difference |= usize::from(a.get(i).copied().unwrap_or(!expected) ^ expected);
    }
    difference == 0
}

fn index_page(endpoint: &Endpoint, query: &str) -> Response<Body> {
    if let Err(error) = query::pairs(query, &[]) {
        return text(StatusCode::BAD_REQUEST, &error.to_string());
    }
    let html = index::render(
        &endpoint.service_name,
        &endpoint.profiler.stats(),
        endpoint.settings.max_seconds,
    );
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html.into_bytes(),
    )
}

fn stats(endpoint: &Endpoint, query: &str) -> Response<Body> {
    if let Err(error) = query::pairs(query, &[]) {
        return text(StatusCode::BAD_REQUEST, &error.to_string());
    }
    let json = super::index::stats_json(&endpoint.profiler.stats(), &endpoint.counters);
    respond(StatusCode::OK, "application/json", json.into_bytes())
}

/// A profile route: record or read history, then render.
async fn profile(
    endpoint: &Arc<Endpoint>,
    path: &str,
    query: ProfileQuery,
    format: Format,
) -> Response<Body> {
    match query.source {
        Source::Capture { seconds, hz } => {
            capture(endpoint, seconds, hz, query.filter, format).await
        }
        Source::Window { length, ago, base } => {
            let endpoint = Arc::clone(endpoint);
            let path = path.to_owned();
            blocking(move || window(&endpoint, &path, length, ago, base, &query.filter, format))
                .await
        }
        Source::Spans { trace_id, span_id } => {
            let endpoint = Arc::clone(endpoint);
            blocking(move || spans(&endpoint, trace_id, span_id, &query.filter, format)).await
        }
    }
}

async fn capture(
    endpoint: &Arc<Endpoint>,
    seconds: u64,
    hz: Option<u32>,
    filter: crate::collect::aggregate::filter::Filter,
    format: Format,
) -> Response<Body> {
    let duration = Duration::from_secs(seconds);
    let profiler = Arc::clone(&endpoint.profiler);
    // Starting may wait a collector cycle for a new rate: off the event loop.
    let started =
        tokio::task::spawn_blocking(move || profiler.begin_capture(duration, hz, filter)).await;
    let capture = match started {
        Ok(Ok(capture)) => capture,
        Ok(Err(CaptureError::RateConflict { held_hz })) => {
            return text(
                StatusCode::CONFLICT,
                &format!(
                    "a capture at {held_hz} Hz is running; retry when it ends, or ask for hz={held_hz} or no hz"
                ),
            );
        }
        Ok(Err(CaptureError::TooMany)) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many captures are running; retry shortly",
            );
        }
        Ok(Err(CaptureError::RateNotApplied)) | Err(_) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the collector did not respond; retry shortly",
            );
        }
    };
    // Sleeping here, not in a thread: if the client goes away, hyper drops
    // this future, and dropping the capture cancels it.
    let cancelled = CancelGuard {
        endpoint: Arc::clone(endpoint),
        armed: true,
    };
    tokio::time::sleep(capture.remaining()).await;
    let rendering = {
        let endpoint = Arc::clone(endpoint);
        blocking(move || match capture.finish() {
            Ok(profile) => {
                let what = format!("{seconds}s recording");
                render(&endpoint, &profile, None, &what, format)
            }
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
        })
    };
    let response = rendering.await;
    cancelled.disarm();
    response
}

/// Counts a capture abandoned by its client.
struct CancelGuard {
    endpoint: Arc<Endpoint>,
    armed: bool,
}

impl CancelGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.endpoint
                .counters
                .captures_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn window(
    endpoint: &Endpoint,
    path: &str,
    length: Duration,
    ago: Duration,
    base: Option<Duration>,
    filter: &crate::collect::aggregate::filter::Filter,
    format: Format,
) -> Response<Body> {
    let beyond = |reach: Duration, needed: Duration| {
        text(
            StatusCode::BAD_REQUEST,
            &format!(
                "history reaches back {}; this query needs {} (history keeps up to {})",
                crate::duration::format(round_to_seconds(reach)),
                crate::duration::format(needed),
                crate::duration::format(endpoint.profiler.config.history_span),
            ),
        )
    };
    let current = match endpoint
        .profiler
        .window(length, ago, filter, Coverage::Partial)
    {
        Ok(profile) => profile,
        Err(WindowError::BeyondHistory { reach }) => return beyond(reach, ago),
    };
    let short_by = length.saturating_sub(current.duration());
    let covered = if short_by > endpoint.profiler.config.history_resolution {
        format!(
            " (the history covers {})",
            crate::duration::format(round_to_seconds(current.duration()))
        )
    } else {
        String::new()
    };
    let describe = |ago: Duration| match ago.is_zero() {
        true => format!("last {}{covered}", crate::duration::format(length)),
        false => format!(
            "{} ending {} ago{covered}",
            crate::duration::format(length),
            crate::duration::format(ago)
        ),
    };
    let Some(base) = base else {
        return render(endpoint, &current, None, &describe(ago), format);
    };
    let base_ago = ago + base;
    let before = match endpoint
        .profiler
        .window(length, base_ago, filter, Coverage::Whole)
    {
        Ok(profile) => profile,
        Err(WindowError::BeyondHistory { reach }) => return beyond(reach, base_ago + length),
    };
    if format == Format::Pprof {
        // pprof has no two-profile file: serve the current window and point
        // at the base, for `go tool pprof -diff_base`.
        let mut response = render(endpoint, &current, None, &describe(ago), format);
        let link = format!(
            "<{path}?window={}&ago={}>; rel=\"base\"",
            crate::duration::format(length),
            crate::duration::format(base_ago)
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
        return response;
    }
    let what = format!("{} vs {}", describe(ago), describe(base_ago));
    render(endpoint, &current, Some(&before), &what, format)
}

/// A span's or a trace's profile, from the span table. A span the table does
/// not hold (it used no CPU, or aged out) gets an empty profile that says so,
/// so links from traces always open.
fn spans(
    endpoint: &Endpoint,
    trace_id: Option<u128>,
    span_id: Option<u64>,
    filter: &crate::collect::aggregate::filter::Filter,
    format: Format,
) -> Response<Body> {
    let profiler = &endpoint.profiler;
    let (profile, what) = match (trace_id, span_id) {
        (_, Some(span_id)) => (
            profiler.span_profile(span_id, trace_id, filter),
            format!("span {span_id:016x}"),
        ),
        (Some(trace_id), None) => (
            profiler.trace_profile(trace_id, filter),
            format!("trace {trace_id:032x}"),
        ),
        (None, None) => unreachable!("the query parser requires an id"),
    };
    let profile = profile.unwrap_or_else(|| profiler.empty_profile());
    if profile.sample_count() == 0 && format == Format::Svg {
        let what = format!(
            "{what}: no CPU samples (it used none, or is no longer among the recent spans)"
        );
        return render(endpoint, &profile, None, &what, format);
    }
    render(endpoint, &profile, None, &what, format)
}

fn round_to_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// Renders a profile (or a diff against `before`) in `format`.
fn render(
    endpoint: &Endpoint,
    profile: &Profile,
    before: Option<&Profile>,
    what: &str,
    format: Format,
) -> Response<Body> {
    match format {
        Format::Pprof => match profile.to_pprof() {
            Ok(bytes) => {
                let mut response = respond(StatusCode::OK, "application/octet-stream", bytes);
                response.headers_mut().insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"profile\""),
                );
                response
            }
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        },
        Format::Folded => {
            let body = match before {
                None => profile.folded(),
                Some(before) => crate::render::folded::render_diff(before, profile),
            };
            respond(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                body.into_bytes(),
            )
        }
        Format::Svg => {
            let style = Style {
                title: title(&endpoint.service_name, what, profile, before),
                subtitle: Some(subtitle(profile, before)),
            };
            let mut svg = Vec::new();
            let rendered = match before {
                None => crate::render::flamegraph::write(profile, &style, &mut svg),
                Some(before) => {
                    crate::render::flamegraph::write_diff(before, profile, &style, &mut svg)
                }
            };
            match rendered {
                Ok(()) => respond(StatusCode::OK, "image/svg+xml", svg),
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
            }
        }
    }
}

fn title(service: &str, what: &str, profile: &Profile, before: Option<&Profile>) -> String {
    match before {
        None => format!(
            "{service}: {}, {what}, {} {}",
            profile.kind.title(),
            profile.sample_count(),
            profile.kind.count_name()
        ),
        Some(before) => format!(
            "{service}: {} diff, {what}, {} vs {} {}",
            profile.kind.title(),
            profile.sample_count(),
            before.sample_count(),
            profile.kind.count_name()
        ),
    }
}

fn subtitle(profile: &Profile, before: Option<&Profile>) -> String {
    let span = format!(
        "from {} UTC for {:.0} s at {} Hz",
        utc(profile.start_time()),
        profile.duration().as_secs_f64(),
        profile.frequency_hz()
    );
    match before {
        None => span,
        Some(_) => format!("{span}; red grew, blue shrank, widths are the newer window"),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, from the days-to-civil algorithm (no
/// calendar dependency for one timestamp).
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Runs CPU-bound or blocking work on the render threads.
async fn blocking(work: impl FnOnce() -> Response<Body> + Send + 'static) -> Response<Body> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed"))
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A plain-text response: a one-line message.
fn text(status: StatusCode, message: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_450_605);
        assert_eq!(utc(t), "2026-11-23 16:16:45");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29 00:00:00");
    }
}
