//! The sampling rate in force: the configured default, or the rate a
//! capture asked for (`hz=`), applied by the collector at its next cycle.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// The sampling rate: the configured default, or a rate a capture asked for.
///
/// Only one non-default rate can be in force at a time: a capture asking for
/// another while one is held gets [`RateConflict`] (the HTTP endpoint turns
/// it into a 409). The collector applies the desired rate at its next cycle.
pub(crate) struct RateControl {
    default_hz: u32,
    state: Mutex<RateState>,
    applied: Condvar,
    /// The collector's thread, woken when a capture asks for a new rate so
    /// that the capture need not wait out a long cycle.
    pub(super) collector: OnceLock<std::thread::Thread>,
}

struct RateState {
    /// The override in force and how many captures hold it.
    held: Option<(u32, usize)>,
    applied_hz: u32,
}

/// Another capture holds a different sampling rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateConflict {
    pub(crate) held_hz: u32,
}

/// Keeps a requested rate in force while alive.
pub(crate) struct RateHold {
    control: Arc<RateControl>,
}

impl RateControl {
    pub(crate) fn new(default_hz: u32) -> Self {
        RateControl {
            default_hz,
            state: Mutex::new(RateState {
                held: None,
                applied_hz: default_hz,
            }),
            applied: Condvar::new(),
            collector: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RateState> {
        crate::sync::lock(&self.state)
    }

    /// Asks for `hz` until the returned hold is dropped.
    pub(crate) fn hold(this: &Arc<Self>, hz: u32) -> Result<RateHold, RateConflict> {
        let mut state = this.lock();
        match &mut state.held {
            Some((held_hz, holders)) if *held_hz == hz => *holders += 1,
            Some((held_hz, _)) => return Err(RateConflict { held_hz: *held_hz }),
            None => {
                state.held = Some((hz, 1));
                if state.applied_hz != hz
                    && let Some(collector) = this.collector.get()
                {
                    collector.unpark();
                }
            }
        }
        Ok(RateHold {
            control: Arc::clone(this),
        })
    }

    /// The rate the collector should apply.
    pub(crate) fn desired_hz(&self) -> u32 {
        self.lock().held.map_or(self.default_hz, |(hz, _)| hz)
    }

    /// The rate in force.
    pub(crate) fn applied_hz(&self) -> u32 {
        self.lock().applied_hz
    }

    pub(super) fn mark_applied(&self, hz: u32) {
        self.lock().applied_hz = hz;
        self.applied.notify_all();
    }

    /// Waits until the collector has applied `hz`; false on timeout.
    pub(crate) fn wait_applied(&self, hz: u32, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .applied
            .wait_timeout_while(state, timeout, |s| s.applied_hz != hz)
            .unwrap_or_else(|p| p.into_inner());
        state.applied_hz == hz
    }
}

impl Drop for RateHold {
    fn drop(&mut self) {
        let mut state = self.control.lock();
        if let Some((_, holders)) = &mut state.held {
            *holders -= 1;
            if *holders == 0 {
                state.held = None;
            }
        }
    }
}
