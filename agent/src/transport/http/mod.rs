//! Transport: the HTTP endpoint, following Go's `net/http/pprof`
//! conventions so that `go tool pprof http://host:6060/debug/pprof/profile`
//! and a browser work unchanged.
//!
//! The server runs [hyper] on a private single-threaded tokio runtime on the
//! agent's own thread (`smolder-http`), plus at most four blocking threads
//! for symbolising and rendering. The host needs no async runtime, and a
//! slow or hostile client can only occupy the agent's threads, never the
//! host's. Limits, all enforced before any work is done:
//!
//! * at most `max_connections` connections; more are answered 503 and closed;
//! * request heads over 16 KiB get 431 (from hyper), request targets over
//!   8 KiB get 414; a head must arrive within 10 s (slowloris);
//! * a connection lives at most `max_seconds` + 2 min, however it behaves;
//! * every bad parameter is a 400 with a one-line reason (see [`query`]).
//!
//! A capture whose client disconnects is cancelled: the connection's task is
//! dropped, and with it the capture.
//!
//! [hyper]: https://hyper.rs

mod index;
pub(crate) mod query;
mod routes;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::Error;
use crate::config::HttpSettings;
use crate::profile::queries::Profiler;

/// Longest request head hyper buffers; larger heads get 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest request target; longer ones get 414.
const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Time a client has to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocking threads for symbolising and rendering.
const RENDER_THREADS: usize = 4;

/// The listening socket of the running endpoint, or -1: a child forked from
/// the process must close its copy, or it would hold the port after the
/// parent's agent stopped.
static LISTENER_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Closes the child's copy of the listening socket. Runs in
/// `pthread_atfork`'s child hook: an atomic swap and `close`, both
/// async-signal-safe.
pub(crate) fn close_listener_after_fork() {
    let fd = LISTENER_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: `fd` is the child's copy of our listening socket, which
        // nothing in the child uses.
        unsafe { libc::close(fd) };
    }
}

/// What every request handler can reach.
pub(crate) struct Endpoint {
    profiler: Arc<Profiler>,
    settings: HttpSettings,
    service_name: String,
    /// Connections being served now.
    active: AtomicUsize,
    /// Counters reported in `/debug/pprof/stats`.
    pub(crate) counters: HttpCounters,
}

/// Requests by outcome.
#[derive(Default)]
pub(crate) struct HttpCounters {
    pub(crate) requests: AtomicUsize,
    pub(crate) rejected_busy: AtomicUsize,
    pub(crate) client_errors: AtomicUsize,
    pub(crate) captures_cancelled: AtomicUsize,
}

/// The running endpoint. Dropping it stops the server and joins its thread.
pub(crate) struct HttpServer {
    local_addr: SocketAddr,
    shutdown: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds the address (so that a failure is reported by `start`) and
    /// starts serving on a new thread. `Ok(None)` if the endpoint is
    /// disabled, or failed to bind and is not required.
    pub(crate) fn start(
        profiler: Arc<Profiler>,
        settings: &HttpSettings,
        service_name: &str,
        own_threads: Arc<Mutex<std::collections::HashSet<i32>>>,
    ) -> Result<Option<HttpServer>, Error> {
        let Some(addr) = settings.addr else {
            return Ok(None);
        };
        if !addr.ip().is_loopback() && settings.token.is_none() && !settings.allow_unauthenticated {
            return Err(Error::HttpUnauthenticated { addr });
        }
        let listener = match StdListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(listener) => listener,
            Err(source) if settings.required => return Err(Error::HttpBind { addr, source }),
            Err(source) => {
                tracing::warn!(%addr, error = %source, "smolder: HTTP endpoint disabled: cannot bind");
                return Ok(None);
            }
        };
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::HttpBind { addr, source })?;
        LISTENER_FD.store(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            Ordering::Release,
        );
        let endpoint = Arc::new(Endpoint {
            profiler,
            settings: settings.clone(),
            service_name: service_name.to_owned(),
            active: AtomicUsize::new(0),
            counters: HttpCounters::default(),
        });
        let shutdown = Arc::new(Notify::new());
        let runtime = {
            let own_threads = Arc::clone(&own_threads);
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .max_blocking_threads(RENDER_THREADS)
                .thread_name("smolder-http")
                .on_thread_start(move || {
                    crate::sampler::threads::enter_agent_thread(&own_threads);
                })
                .build()
                .map_err(|source| Error::Os {
                    operation: "building the HTTP endpoint's runtime",
                    source,
                })?
        };
        let thread = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::Builder::new()
                .name("smolder-http".into())
                .stack_size(512 * 1024)
                .spawn(move || {
                    crate::sampler::threads::enter_agent_thread(&own_threads);
                    runtime.block_on(serve(listener, endpoint, shutdown));
                    // Do not wait for blocking work still running (a long
                    // render): it finishes on its own thread, holding what it
                    // needs, and its result goes nowhere.
                    runtime.shutdown_background();
                })
                .map_err(|source| Error::Os {
                    operation: "spawning the HTTP thread",
                    source,
                })?
        };
        Ok(Some(HttpServer {
            local_addr,
            shutdown,
            thread: Some(thread),
        }))
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        LISTENER_FD.store(-1, Ordering::Release);
        self.shutdown.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until told to stop.
async fn serve(listener: StdListener, endpoint: Arc<Endpoint>, shutdown: Arc<Notify>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            () = shutdown.notified() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off, do not spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if endpoint.active.fetch_add(1, Ordering::AcqRel) >= endpoint.settings.max_connections {
            endpoint.active.fetch_sub(1, Ordering::AcqRel);
            endpoint
                .counters
                .rejected_busy
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse_busy(stream));
            continue;
        }
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let lifetime =
                Duration::from_secs(endpoint.settings.max_seconds) + Duration::from_secs(120);
            let _ = tokio::time::timeout(lifetime, serve_connection(stream, Arc::clone(&endpoint)))
                .await;
            endpoint.active.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn serve_connection(stream: TcpStream, endpoint: Arc<Endpoint>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let endpoint = Arc::clone(&endpoint);
        async move { Ok::<_, std::convert::Infallible>(routes::handle(endpoint, request).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(64)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Answers a connection over the limit without reading its request.
async fn refuse_busy(mut stream: TcpStream) {
    const BODY: &str = "too many connections to the profiling endpoint; retry shortly\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        stream.write_all(response.as_bytes()),
    )
    .await;
}
