//! End-to-end tests: real processes running the agent under real signals.
//!
//! Each test runs the `workload` fixture binary (examples/src/bin/workload.rs)
//! in a child process, then checks what it printed and the profile files it
//! wrote, with the real consumers where they exist (`go tool pprof`, an XML
//! parser). No test asserts wall-clock timings; accuracy is checked against
//! CPU time the fixture measured itself.

mod fixture;
mod formats;
mod hostile;
mod http;
mod http1;
#[cfg(feature = "otlp-profiles")]
mod otlp_profiles;
mod push;
mod pyroscope;
mod receiver;
mod robustness;
mod sampling;
mod service;
mod spans;
