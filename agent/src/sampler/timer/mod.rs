//! Stage 0 of the data flow: the timers that interrupt threads.
//!
//! Two engines behind one trait, chosen at start:
//!
//! * [`PerThreadTimers`] (preferred): one `timer_create` timer per thread on
//!   that thread's CPU-time clock, delivering `SIGPROF` to that very thread
//!   (`SIGEV_THREAD_ID`). Each busy thread is sampled in proportion to its
//!   own CPU; the kernel reports coalesced expirations as overrun, which the
//!   handler adds to the sample's weight.
//! * [`Setitimer`] (fallback where per-thread timers are unavailable): one
//!   process-wide `ITIMER_PROF`. Capped at one signal per kernel tick for
//!   the whole process and biased towards whichever thread is running when
//!   the tick lands.
//!
//! The collector tells the engine which threads started and exited on each
//! cycle; `sampler::signal` installs and retires the handler itself.

mod per_thread;
mod setitimer;

pub(crate) use per_thread::PerThreadTimers;
pub(crate) use setitimer::Setitimer;

use crate::Error;
use crate::config::Engine;

/// A source of `SIGPROF` signals.
pub(crate) trait TimerEngine: Send {
    /// Starts sampling threads in `started`, stops sampling those in
    /// `exited`. Threads that vanished before their timer could be created
    /// are skipped.
    fn track(&mut self, started: &[i32], exited: &[i32]);

    /// Timers currently armed.
    fn armed(&self) -> usize;

    /// Changes the sampling period; signals from now on carry `rate_epoch`.
    fn set_rate(&mut self, period_ns: u64, rate_epoch: u8);

    /// Disarms and deletes every timer. Signals already pending may still be
    /// delivered after this returns.
    fn stop(&mut self);
}

/// Decides which engine will run, without arming anything: `Auto` becomes
/// per-thread timers if the kernel accepts one, `setitimer` otherwise.
pub(crate) fn resolve(requested: Engine) -> Result<Engine, Error> {
    match requested {
        Engine::PerThreadTimers => PerThreadTimers::probe().map(|()| Engine::PerThreadTimers),
        Engine::Setitimer => Ok(Engine::Setitimer),
        Engine::Auto => Ok(match PerThreadTimers::probe() {
            Ok(()) => Engine::PerThreadTimers,
            Err(_) => Engine::Setitimer,
        }),
    }
}

/// Starts the engine chosen by [`resolve`]. The handler must be installed
/// first: `setitimer` starts signalling at once.
pub(crate) fn start(
    kind: Engine,
    period_ns: u64,
    agent: u8,
) -> Result<Box<dyn TimerEngine>, Error> {
    match kind {
        Engine::Setitimer => Ok(Box::new(Setitimer::start(period_ns)?)),
        Engine::PerThreadTimers | Engine::Auto => {
            Ok(Box::new(PerThreadTimers::new(period_ns, agent)))
        }
    }
}
