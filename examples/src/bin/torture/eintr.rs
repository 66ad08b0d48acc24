//! Interrupted syscalls: the host must see no `EINTR` failure where std
//! retries, and none where `SA_RESTART` restarts.
//!
//! The agent's own signals almost never interrupt a blocked syscall: a CPU
//! timer only expires while its thread runs. So a `signal-injector` worker
//! sends stray `SIGPROF`s (as `kill -PROF` or another tool would: no timer
//! cookie, so the agent must ignore them and count them as foreign) to the
//! threads below every few hundred microseconds, from the moment the first
//! agent has installed its handler (before that, `SIGPROF` would be fatal).
//! The signals then run the agent's handler while those threads are
//! blocked, with the agent's `sigaction` flags deciding what the host sees.
//!
//! The `eintr` worker and its helper thread, each step:
//!
//! | call | expected |
//! |---|---|
//! | raw `read` on a pipe | never `EINTR`: `SA_RESTART` restarts it |
//! | `Read::read_exact` on a pipe fed in small chunks | succeeds, data intact |
//! | `Write::write_all` of 256 KiB into a pipe drained slowly | succeeds, data intact |
//! | raw `poll` on an idle pipe, 2 ms | 0, or `EINTR` (counted: `poll` is never restarted) |
//! | raw `nanosleep`, 1 ms | 0, or `EINTR` (counted, likewise) |
//! | `thread::sleep`, 1 ms | never returns early |
//! | `Condvar::wait_timeout_while`, 2 ms | times out, never early |
//!
//! `Child::wait` (in [`crate::processes`]) and the thread-churn driver's
//! `join` are targets too. At the end, a run in which no raw `poll` or
//! `nanosleep` ever saw `EINTR` fails: the checks would have proved nothing.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolder_examples::{lock, wait_timeout_while};

use crate::harness::{Harness, WORKER_STACK, spawn_worker};
use crate::sys;

#[derive(Default)]
pub struct Counters {
    /// Threads that get stray signals.
    targets: Mutex<Vec<i32>>,
    /// Stray `SIGPROF`s sent.
    pub injected: AtomicU64,
    pub raw_read_calls: AtomicU64,
    /// Must stay 0.
    pub raw_read_eintr: AtomicU64,
    pub raw_poll_calls: AtomicU64,
    pub raw_poll_eintr: AtomicU64,
    pub raw_nanosleep_calls: AtomicU64,
    pub raw_nanosleep_eintr: AtomicU64,
    /// `EINTR`s retried by the fork worker's own `waitpid` loop.
    pub raw_waitpid_eintr: AtomicU64,
    /// Calls to std APIs that must retry (`read_exact`, `write_all`,
    /// `sleep`, `wait_timeout_while`, `Child::wait`).
    pub std_calls: AtomicU64,
    /// Must stay 0: std calls that failed or returned early.
    pub std_failures: AtomicU64,
}

impl Counters {
    /// Makes `tid` a target of stray signals.
    pub fn add_target(&self, tid: i32) {
        lock(&self.targets).push(tid);
    }

    fn targets(&self) -> Vec<i32> {
        lock(&self.targets).clone()
    }

    pub fn count_std_op(&self) {
        self.std_calls.fetch_add(1, Relaxed);
    }

    /// A std call that must retry failed.
    pub fn std_failure(&self, harness: &Harness, api: &str, error: &std::io::Error) {
        self.std_failures.fetch_add(1, Relaxed);
        if error.kind() == std::io::ErrorKind::Interrupted {
            harness.fail(format!("{api} surfaced EINTR: {error}"));
        } else {
            harness.fail(format!("{api} failed: {error}"));
        }
    }

    fn std_early(&self, harness: &Harness, api: &str, asked: Duration, got: Duration) {
        self.std_failures.fetch_add(1, Relaxed);
        harness.fail(format!(
            "{api} returned after {} µs, before its {} µs",
            got.as_micros(),
            asked.as_micros()
        ));
    }
}

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let eintr = harness.activity("eintr");
    let injector = harness.activity("signal-injector");
    let mut state: Option<Worker> = None;
    vec![
        spawn_worker(harness, &eintr, "eintr", WORKER_STACK, move |harness| {
            let worker = state.get_or_insert_with(|| Worker::new(harness));
            worker.step(harness);
        }),
        spawn_worker(harness, &injector, "signal-injector", WORKER_STACK, inject),
    ]
}

/// One round of stray signals to every target.
fn inject(harness: &Harness) {
    if harness.agent.ever_started() {
        for tid in harness.eintr.targets() {
            if sys::send_stray_sigprof(tid) {
                harness.eintr.injected.fetch_add(1, Relaxed);
            }
        }
    }
    std::thread::sleep(sys::random_duration(
        Duration::from_micros(200),
        Duration::from_micros(1000),
    ));
}

/// A pipe as two files.
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    let status = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(status, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

/// What the helper thread does next.
enum Order {
    /// Waits, then writes one byte.
    WriteByteAfter(Duration),
    /// Writes `total` patterned bytes in small pieces, pausing between.
    WriteChunks(usize),
    /// Reads `len` bytes slowly and reports whether they match the pattern.
    Drain(usize),
}

/// The byte at `index` of the patterned streams.
fn pattern(index: usize) -> u8 {
    (index % 251) as u8
}

/// The `eintr` worker's pipes and its helper.
struct Worker {
    orders: mpsc::SyncSender<Order>,
    drained: mpsc::Receiver<Result<(), String>>,
    /// Fed by the helper.
    incoming: File,
    /// Drained by the helper.
    outgoing: File,
    /// Never written: `poll` on it can only time out or be interrupted.
    idle: File,
    _idle_writer: File,
    condvar: (Mutex<()>, Condvar),
    /// Failed std calls on the helper's side, reported by the worker.
    helper_problems: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn new(harness: &Harness) -> Worker {
        harness.eintr.add_target(sys::gettid());
        let (incoming, helper_writes) = pipe();
        let (helper_reads, outgoing) = pipe();
        let (idle, idle_writer) = pipe();
        let (orders, inbox) = mpsc::sync_channel(1);
        let (report, drained) = mpsc::sync_channel(1);
        let (tid_sender, tid) = mpsc::sync_channel(1);
        let helper_problems = Arc::new(Mutex::new(Vec::new()));
        // The helper ends when the worker's state (and `orders`) is dropped.
        {
            let problems = Arc::clone(&helper_problems);
            std::thread::Builder::new()
                .name("eintr-helper".into())
                .spawn(move || {
                    let _ = tid_sender.send(sys::gettid());
                    helper(inbox, helper_writes, helper_reads, report, &problems);
                })
                .expect("spawning the EINTR helper");
        }
        if let Ok(tid) = tid.recv() {
            harness.eintr.add_target(tid);
        }
        Worker {
            orders,
            drained,
            incoming,
            outgoing,
            idle,
            _idle_writer: idle_writer,
            condvar: (Mutex::new(()), Condvar::new()),
            helper_problems,
        }
    }

    fn step(&mut self, harness: &Harness) {
        let _span = tracing::info_span!("eintr_step").entered();
        self.raw_read(harness);
        self.read_exact(harness);
        self.write_all(harness);
        self.raw_poll(harness);
        raw_nanosleep(harness);
        std_sleep(harness);
        self.condvar_wait(harness);
        let problems = std::mem::take(&mut *lock(&self.helper_problems));
        for problem in problems {
            harness.eintr.std_failures.fetch_add(1, Relaxed);
            harness.fail(format!("EINTR helper: {problem}"));
        }
    }

    fn order(&self, harness: &Harness, order: Order) -> bool {
        if self.orders.send(order).is_err() {
            harness.fail("the EINTR helper thread ended");
            return false;
        }
        true
    }

    /// A raw `read` blocked on a pipe until the helper writes a byte.
    fn raw_read(&mut self, harness: &Harness) {
        let delay = sys::random_duration(Duration::from_micros(200), Duration::from_millis(2));
        if !self.order(harness, Order::WriteByteAfter(delay)) {
            return;
        }
        sys::burn(8);
        let mut byte = 0u8;
        loop {
            harness.eintr.raw_read_calls.fetch_add(1, Relaxed);
            // SAFETY: reading one byte into a byte we own.
            let read = unsafe { libc::read(self.incoming.as_raw_fd(), (&raw mut byte).cast(), 1) };
            match read {
                1 => return,
                -1 if sys::errno() == libc::EINTR => {
                    harness.eintr.raw_read_eintr.fetch_add(1, Relaxed);
                    harness.fail(
                        "raw read() on a pipe failed with EINTR: the handler lacks SA_RESTART",
                    );
                }
                _ => {
                    harness.fail(format!(
                        "raw read() on a pipe: {}",
                        std::io::Error::last_os_error()
                    ));
                    return;
                }
            }
        }
    }

    /// `read_exact` while the helper writes in small pieces.
    fn read_exact(&mut self, harness: &Harness) {
        const TOTAL: usize = 64 * 1024;
        if !self.order(harness, Order::WriteChunks(TOTAL)) {
            return;
        }
        let mut data = vec![0u8; TOTAL];
        harness.eintr.count_std_op();
        match self.incoming.read_exact(&mut data) {
            Ok(()) if data.iter().enumerate().all(|(i, &b)| b == pattern(i)) => {}
            Ok(()) => harness.fail("read_exact on a pipe returned corrupted data"),
            Err(error) => harness
                .eintr
                .std_failure(harness, "Read::read_exact", &error),
        }
    }

    /// `write_all` of more than a pipe holds, while the helper drains it
    /// slowly: the write blocks, and is interrupted part-way.
    fn write_all(&mut self, harness: &Harness) {
        const TOTAL: usize = 256 * 1024;
        if !self.order(harness, Order::Drain(TOTAL)) {
            return;
        }
        let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
        harness.eintr.count_std_op();
        if let Err(error) = self.outgoing.write_all(&data) {
            harness
                .eintr
                .std_failure(harness, "Write::write_all", &error);
        }
        match self.drained.recv() {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => harness.fail(format!("write_all into a pipe: {problem}")),
            Err(_) => harness.fail("the EINTR helper thread ended"),
        }
    }

    /// A raw `poll` on a pipe nobody writes to.
    fn raw_poll(&mut self, harness: &Harness) {
        let mut poll = libc::pollfd {
            fd: self.idle.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        harness.eintr.raw_poll_calls.fetch_add(1, Relaxed);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 2) };
        match ready {
            0 => {}
            -1 if sys::errno() == libc::EINTR => {
                harness.eintr.raw_poll_eintr.fetch_add(1, Relaxed);
            }
            _ => harness.fail(format!(
                "poll on an idle pipe returned {ready}: {}",
                std::io::Error::last_os_error()
            )),
        }
    }

    fn condvar_wait(&self, harness: &Harness) {
        let asked = Duration::from_millis(2);
        let (mutex, condvar) = &self.condvar;
        let guard = lock(mutex);
        let started = Instant::now();
        harness.eintr.count_std_op();
        let (_guard, result) = wait_timeout_while(condvar, guard, asked, |_| true);
        let waited = started.elapsed();
        if !result.timed_out() || waited < asked {
            harness
                .eintr
                .std_early(harness, "Condvar::wait_timeout_while", asked, waited);
        }
    }
}

/// A raw `nanosleep` of 1 ms.
fn raw_nanosleep(harness: &Harness) {
    let request = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    let mut remaining = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    harness.eintr.raw_nanosleep_calls.fetch_add(1, Relaxed);
    // SAFETY: valid pointers to two timespecs.
    match unsafe { libc::nanosleep(&request, &mut remaining) } {
        0 => {}
        _ if sys::errno() == libc::EINTR => {
            harness.eintr.raw_nanosleep_eintr.fetch_add(1, Relaxed);
        }
        _ => harness.fail(format!("nanosleep: {}", std::io::Error::last_os_error())),
    }
}

/// `thread::sleep` must sleep at least as long as asked.
fn std_sleep(harness: &Harness) {
    let asked = Duration::from_millis(1);
    let started = Instant::now();
    harness.eintr.count_std_op();
    std::thread::sleep(asked);
    let slept = started.elapsed();
    if slept < asked {
        harness
            .eintr
            .std_early(harness, "thread::sleep", asked, slept);
    }
}

/// The helper's side of each order; ends when the worker's sender is
/// dropped.
fn helper(
    inbox: mpsc::Receiver<Order>,
    mut writes: File,
    mut reads: File,
    report: mpsc::SyncSender<Result<(), String>>,
    problems: &Mutex<Vec<String>>,
) {
    let failed = |error: std::io::Error| {
        let problem = match error.kind() {
            std::io::ErrorKind::Interrupted => format!("Write::write_all surfaced EINTR: {error}"),
            _ => format!("Write::write_all failed: {error}"),
        };
        lock(problems).push(problem);
    };
    for order in inbox {
        let _span = tracing::info_span!("eintr_helper").entered();
        match order {
            Order::WriteByteAfter(delay) => {
                std::thread::sleep(delay);
                writes.write_all(&[1]).unwrap_or_else(failed);
            }
            Order::WriteChunks(total) => {
                let data: Vec<u8> = (0..total).map(pattern).collect();
                for piece in data.chunks(4096) {
                    writes.write_all(piece).unwrap_or_else(failed);
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            Order::Drain(total) => {
                let _ = report.send(drain(&mut reads, total));
            }
        }
    }
}

/// Reads `total` patterned bytes in 8 KiB pieces, pausing between them.
fn drain(reads: &mut File, total: usize) -> Result<(), String> {
    let mut piece = vec![0u8; 8192];
    let mut offset = 0;
    while offset < total {
        let len = piece.len().min(total - offset);
        reads
            .read_exact(&mut piece[..len])
            .map_err(|e| format!("the reader's read_exact failed: {e}"))?;
        if piece[..len]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != pattern(offset + i))
        {
            return Err(format!("bytes after offset {offset} arrived corrupted"));
        }
        offset += len;
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}
