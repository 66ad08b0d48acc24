//! Command-line options: where each server listens, and the load.
//!
//! Every address has a conventional default (the shop on 8080, the Jaeger UI
//! on 16686, OTLP on 4317 and 4318). A default port that is taken falls back
//! to a free one, so `cargo run --release --bin demo` works next to a real
//! Jaeger; an address given on the command line is used as given or the demo
//! fails. Tests pass `127.0.0.1:0` everywhere and read the printed URLs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

/// Usage text for `--help` and for errors.
pub const USAGE: &str = "\
usage: demo [options]

A small shop service with four planted performance problems, traced with
`tracing` and profiled by smolder, with a built-in load generator.

options:
  --addr ADDR            the shop's HTTP address (default 127.0.0.1:8080)
  --ui-addr ADDR         the embedded Jaeger UI (default 127.0.0.1:16686)
  --otlp-grpc-addr ADDR  the embedded viewer's OTLP/gRPC receiver (default 127.0.0.1:4317)
  --otlp-http-addr ADDR  the embedded viewer's OTLP/HTTP receiver (default 127.0.0.1:4318)
  --no-load              do not run the built-in load generator
  --clients N            browsing clients of the load generator (default 2, 1 to 16)
  --duration TIME        stop after TIME (e.g. 90s, 5m); default: run until Ctrl-C
  --otel-sdk             export spans through the OpenTelemetry SDK (tracing-opentelemetry,
                         BatchSpanProcessor, OTLP/HTTP) with smolder's ProfilingSpanProcessor
                         in it, as a service that already exports its traces would, instead
                         of letting the agent export them
  -h, --help             print this help

environment:
  OTEL_EXPORTER_OTLP_ENDPOINT  export spans there instead of to the embedded viewer
                               (OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf)
  SMOLDER_HTTP_ADDR            the profiler's HTTP endpoint (default 127.0.0.1:6060)
  RUST_LOG                     log filter for the console (default warn)";

/// An address to listen on, and whether a taken port may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// True for defaults: if the port is taken, listen on a free one instead.
    pub fallback: bool,
}

impl Listen {
    /// Binds the address, or a free port on the same host if this is a
    /// default whose port is taken (and says so).
    pub async fn bind(self, what: &str) -> Result<TcpListener, String> {
        match TcpListener::bind(self.addr).await {
            Ok(listener) => Ok(listener),
            Err(error) if self.fallback && error.kind() == std::io::ErrorKind::AddrInUse => {
                let mut any_port = self.addr;
                any_port.set_port(0);
                let listener = TcpListener::bind(any_port)
                    .await
                    .map_err(|e| format!("cannot listen for {what} on {any_port}: {e}"))?;
                let bound = listener.local_addr().map_err(|e| e.to_string())?;
                println!(
                    "note: {} is taken; {what} listens on {bound} instead",
                    self.addr
                );
                Ok(listener)
            }
            Err(error) => Err(format!(
                "cannot listen for {what} on {}: {error}",
                self.addr
            )),
        }
    }

    fn default_at(addr: &str) -> Self {
        Listen {
            addr: addr.parse().expect("default addresses are valid"),
            fallback: true,
        }
    }
}

/// Parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub shop: Listen,
    pub ui: Listen,
    pub otlp_grpc: Listen,
    pub otlp_http: Listen,
    pub load: bool,
    pub browsing_clients: usize,
    pub duration: Option<Duration>,
    /// Spans go through the OpenTelemetry SDK pipeline, not the agent's
    /// own exporter.
    pub otel_sdk: bool,
}

/// What the command line asks for.
pub enum Command {
    Run(Options),
    Help,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        shop: Listen::default_at("127.0.0.1:8080"),
        ui: Listen::default_at("127.0.0.1:16686"),
        otlp_grpc: Listen::default_at("127.0.0.1:4317"),
        otlp_http: Listen::default_at("127.0.0.1:4318"),
        load: true,
        browsing_clients: 2,
        duration: None,
        otel_sdk: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--addr" => options.shop = explicit(&arg, &value()?)?,
            "--ui-addr" => options.ui = explicit(&arg, &value()?)?,
            "--otlp-grpc-addr" => options.otlp_grpc = explicit(&arg, &value()?)?,
            "--otlp-http-addr" => options.otlp_http = explicit(&arg, &value()?)?,
            "--no-load" => options.load = false,
            "--otel-sdk" => options.otel_sdk = true,
            "--clients" => options.browsing_clients = clients(&value()?)?,
            "--duration" => options.duration = Some(duration(&value()?)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run(options))
}

fn explicit(flag: &str, value: &str) -> Result<Listen, String> {
    let addr = value
        .parse()
        .map_err(|_| format!("{flag} {value:?}: expected an address such as 127.0.0.1:8080"))?;
    Ok(Listen {
        addr,
        fallback: false,
    })
}

fn clients(value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(n @ 1..=16) => Ok(n),
        _ => Err(format!(
            "--clients {value:?}: expected an integer from 1 to 16"
        )),
    }
}

/// `90s`, `5m`, `1h` or a bare number of seconds.
fn duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let seconds_per_unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && seconds_per_unit > 0 => Ok(Duration::from_secs(n * seconds_per_unit)),
        _ => Err(format!(
            "--duration {value:?}: expected a positive time such as 90s, 5m or 1h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(options) => Ok(options),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults_fall_back_and_explicit_addresses_do_not() {
        let options = run(&[]).unwrap();
        assert!(options.load && options.ui.fallback);
        assert_eq!(options.ui.addr.port(), 16686);
        let options = run(&["--ui-addr", "127.0.0.1:0", "--no-load"]).unwrap();
        assert!(!options.load && !options.ui.fallback);
        assert!(!options.otel_sdk);
        assert!(run(&["--otel-sdk"]).unwrap().otel_sdk);
    }

    #[test]
    fn durations_and_errors() {
        assert_eq!(
            run(&["--duration", "5m"]).unwrap().duration,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            run(&["--duration", "20"]).unwrap().duration,
            Some(Duration::from_secs(20))
        );
        assert!(run(&["--duration", "5x"]).is_err());
        assert!(run(&["--duration"]).is_err());
        assert!(run(&["--clients", "0"]).is_err());
        assert!(run(&["--bogus"]).is_err());
    }
}
