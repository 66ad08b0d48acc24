//! What every outbound connection of the agent shares, whatever it carries
//! and wherever it goes: spans to an OTLP collector (`transport::otlp`),
//! profiles to Pyroscope or an OTLP collector (`transport::push`).
//!
//! * [`http`]: one request at a time over one kept-alive HTTP/1.1
//!   connection (hyper, on the calling thread's private current-thread
//!   tokio runtime), origin-form targets, bounded answers, TLS when the URL
//!   is `https://`.
//! * [`retry`]: which failures may be sent again and when (the OTLP
//!   specification's classification of HTTP statuses and gRPC codes, the
//!   delays a server asks for), and the jittered exponential backoff of a
//!   request held for another try.
//! * `tls`: whom an `https://` connection trusts, and who it is.
//!
//! None of it knows a message type, a route or an environment variable:
//! each destination says what it sends, to which URL, with which headers,
//! and what a failure is called in its messages ([`http::Destination`]).

pub(crate) mod http;
pub(crate) mod retry;
#[cfg(feature = "tls")]
pub(crate) mod tls;

/// Why an `https://` endpoint is refused by a build without TLS.
pub(crate) fn without_tls(endpoint: &str) -> String {
    format!(
        "cannot export to {endpoint}: smolder was built without its `tls` feature; \
         enable it, or send to a collector over plain http"
    )
}
