//! `demo`: a small shop service with four planted performance problems,
//! profiled by smolder, traced with `tracing`, under its own load.
//!
//! ```sh
//! cargo run --release --bin demo
//! ```
//!
//! starts, in one process:
//!
//! * the shop, an HTTP service (axum) over an in-memory SQLite database
//!   seeded at start ([`db`], [`shop`]), with one planted problem per route:
//!   N+1 queries ([`orders`]), a missing index ([`search`]), CPU-heavy
//!   serialisation ([`report`]) and a contended lock ([`checkout`]);
//! * the smolder agent and its tracing layer, which export every request's
//!   spans with their CPU profile attributes ([`telemetry`]), and serve flame
//!   graphs on `127.0.0.1:6060`;
//! * unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an embedded trace viewer
//!   with the real Jaeger UI, which receives those spans ([`viewer`]);
//! * a load generator, so every problem shows up at once ([`load`]).
//!
//! It prints the URLs to open and runs until Ctrl-C (or `--duration`).

mod checkout;
mod cli;
mod db;
mod load;
mod orders;
mod report;
mod search;
mod shop;
mod telemetry;
mod viewer;

use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli::{Command, Options};
use telemetry::Export;

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("demo: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;

    let export = match Export::from_environment() {
        Some(export) => export,
        None => Export::Embedded(runtime.block_on(viewer::start(
            options.ui,
            options.otlp_grpc,
            options.otlp_http,
        ))?),
    };
    let agent = telemetry::start_agent(&export, options.otel_sdk)
        .map_err(|e| format!("cannot start the smolder agent: {e}"))?;
    let sdk = options
        .otel_sdk
        .then(|| telemetry::sdk_pipeline(&export))
        .transpose()?;
    telemetry::init_tracing(sdk.as_ref());

    print!("seeding the shop database ... ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let database = db::create().map_err(|e| format!("cannot create the database: {e}"))?;
    println!(
        "{} products, {} customers, {} orders, {} order lines in {:.1} s",
        db::PRODUCTS,
        db::CUSTOMERS,
        database.orders,
        database.order_lines,
        started.elapsed().as_secs_f64()
    );

    let result = runtime.block_on(serve(&options, &agent, &export));
    // Dropping the agent flushes the last spans, while the embedded viewer
    // (on the runtime's threads) still receives them. Then the runtime's
    // threads end, closing their database connections, and the database
    // files go.
    drop(agent);
    if let Some(sdk) = sdk {
        // The SDK's batch processor sends what it still holds.
        let _ = sdk.shutdown();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(database);
    result
}

/// Serves the shop (and runs the load) until Ctrl-C or `--duration`.
async fn serve(options: &Options, agent: &smolder::Agent, export: &Export) -> Result<(), String> {
    let listener = options.shop.bind("the shop").await?;
    let shop_addr = listener
        .local_addr()
        .map_err(|e| format!("the shop's address: {e}"))?;
    let shop = Arc::new(shop::Shop {
        inventory: checkout::Inventory::default(),
    });
    let (shutdown, shutting_down) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, shop::router(shop)).with_graceful_shutdown(async {
        let _ = shutting_down.await;
    });
    let server = tokio::spawn(server.into_future());
    print_banner(options, agent, export, shop_addr);
    let load = options
        .load
        .then(|| load::start(shop_addr, options.browsing_clients));
    stop(options.duration).await;
    // The clients stop first, so none of them sees the server go away.
    drop(load);
    let _ = shutdown.send(());
    server
        .await
        .map_err(|e| format!("the shop's server failed: {e}"))?
        .map_err(|e| format!("the shop's server failed: {e}"))?;
    println!("stopping");
    Ok(())
}

/// Resolves on Ctrl-C, or when `--duration` has passed.
async fn stop(duration: Option<Duration>) {
    let timer = async move {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = timer => {}
    }
}

fn print_banner(options: &Options, agent: &smolder::Agent, export: &Export, shop: SocketAddr) {
    let service = telemetry::SERVICE_NAME;
    println!();
    println!("smolder demo: a shop with four planted performance problems");
    println!();
    match export {
        Export::Embedded(viewer) => {
            println!(
                "  Jaeger UI     http://{}/search?service={service}",
                viewer.ui
            );
        }
        Export::Environment { endpoint } => {
            let protocol = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
                .unwrap_or_else(|_| "http/protobuf".to_owned());
            let protocol = if options.otel_sdk {
                "http/protobuf".to_owned()
            } else {
                protocol
            };
            println!("  traces        exported to {endpoint} ({protocol}), service {service}");
        }
    }
    if options.otel_sdk {
        println!("  (spans go through the OpenTelemetry SDK pipeline: --otel-sdk)");
    }
    match agent.http_addr() {
        Some(addr) => {
            println!("  flame graph   http://{addr}/debug/pprof/flamegraph?window=1m");
            println!("  agent stats   http://{addr}/debug/pprof/stats");
        }
        None => println!("  flame graph   off (SMOLDER_HTTP_ADDR=off)"),
    }
    println!("  the shop      http://{shop}/");
    if let Export::Embedded(viewer) = export {
        println!(
            "  OTLP in       grpc://{} and http://{}/v1/traces",
            viewer.otlp_grpc, viewer.otlp_http
        );
    }
    println!();
    println!("Planted problems, one per route (each span has profile.top_functions):");
    println!("  GET /orders/{{customer}}  N+1 queries: a SELECT per order and per line");
    println!("  GET /search?brand=      a missing index: every query scans 200 000 products");
    println!("  GET /report             CPU-heavy serialisation: megabytes of JSON, twice");
    println!("  POST /checkout          a contended lock held across a payment call");
    println!();
    if options.load {
        println!(
            "Load: {} browsing and {} checkout clients. Ctrl-C to stop.",
            options.browsing_clients,
            load::CHECKOUT_CLIENTS
        );
    } else {
        println!("No load (--no-load): send requests yourself. Ctrl-C to stop.");
    }
}
