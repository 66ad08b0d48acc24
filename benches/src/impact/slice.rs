//! Measuring one slice: a paused demo resumed, loaded with `wrk` for the
//! slice's length while its CPU is read from `/proc`, and paused again;
//! for the rendering variant, with flame graphs fetched meanwhile.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::demo::Demo;
use super::variants::Variant;
use super::wrk::{WrkReport, run_wrk};
use crate::child::{HarnessError, fail};
use crate::http;
use crate::sys;

/// Unmeasured load at the start of every slice, after resuming.
const SLICE_WARMUP: Duration = Duration::from_secs(1);
/// Pause after resuming a demo, before loading it.
const RESUME_SETTLE: Duration = Duration::from_millis(300);
/// The window of the flame graphs fetched in the rendering variant.
const RENDER_WINDOW: &str = "1m";
/// The name prefix of the agent's threads.
const AGENT_THREADS: &str = "smolder-";

/// One measured slice.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slice {
    pub(super) wrk: WrkReport,
    /// The demo's CPU over the slice, and its agent threads' part of it.
    pub(super) cpu_s: f64,
    pub(super) agent_threads_s: f64,
    /// Flame graphs fetched during the slice, and their total time.
    pub(super) renders: u64,
    pub(super) render_s: f64,
}

impl Slice {
    pub(super) fn requests_per_second(&self) -> f64 {
        self.wrk.requests_per_second
    }

    pub(super) fn p50_ms(&self) -> f64 {
        self.wrk.p50_ms
    }

    pub(super) fn p99_ms(&self) -> f64 {
        self.wrk.p99_ms
    }

    /// The demo's CPU milliseconds per request answered.
    pub(super) fn cpu_ms_per_request(&self) -> f64 {
        self.cpu_s * 1e3 / self.wrk.requests.max(1) as f64
    }
}

/// Fetches flame graphs back to back until stopped, on its own thread.
struct RenderLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(u64, Duration), HarnessError>>,
}

impl RenderLoop {
    fn start(agent: SocketAddr) -> RenderLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let target = format!("/debug/pprof/flamegraph?window={RENDER_WINDOW}");
                let (mut count, mut total) = (0, Duration::ZERO);
                // Relaxed: a stop flag; the result comes back through join.
                while !stop.load(Ordering::Relaxed) {
                    let response = http::get(agent, &target, Duration::from_secs(60))?;
                    if response.status != 200 {
                        return fail(format!("{target} answered {}", response.status));
                    }
                    count += 1;
                    total += response.elapsed;
                }
                Ok((count, total))
            })
        };
        RenderLoop { stop, thread }
    }

    /// Stops fetching; returns how many flame graphs were fetched and
    /// their total time.
    fn finish(self) -> Result<(u64, Duration), HarnessError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| HarnessError("the flame-graph client panicked".into()))?
    }
}

/// Resumes `demo`, measures one slice of `seconds` under `wrk` with the
/// browsing `script`, and pauses it again.
pub(super) fn measure_slice(
    demo: &Demo,
    variant: Variant,
    script: &Path,
    seconds: u64,
    ticks_per_second: f64,
) -> Result<Slice, HarnessError> {
    demo.resume()?;
    std::thread::sleep(RESUME_SETTLE);
    run_wrk(script, &demo.url(), SLICE_WARMUP)?;
    let renders = match (variant.fetches_flame_graphs(), demo.agent) {
        (true, Some(agent)) => Some(RenderLoop::start(agent)),
        _ => None,
    };
    let (cpu_before, agent_before) = sys::process_cpu_ticks(demo.pid, AGENT_THREADS)?;
    let wrk = run_wrk(script, &demo.url(), Duration::from_secs(seconds));
    let (cpu_after, agent_after) = sys::process_cpu_ticks(demo.pid, AGENT_THREADS)?;
    let rendered = renders.map(RenderLoop::finish).transpose();
    demo.pause()?;
    let wrk = wrk?;
    let (renders, render_time) = rendered?.unwrap_or_default();
    Ok(Slice {
        wrk,
        cpu_s: (cpu_after - cpu_before) as f64 / ticks_per_second,
        agent_threads_s: agent_after.saturating_sub(agent_before) as f64 / ticks_per_second,
        renders,
        render_s: render_time.as_secs_f64(),
    })
}
