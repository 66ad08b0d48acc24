//! Which threads exist, and the registry the signal handler consults.
//!
//! The collector lists `/proc/self/task` ([`TaskDir`]) whenever the number of
//! threads has changed, and every few cycles regardless. Threads it has seen
//! are *registered*: the table of stack regions published to the handler was
//! read after the thread existed, so its stack is in that table. The handler
//! looks a thread up with atomics only; registration and removal happen on the
//! agent's threads.
//!
//! The registry is an open-addressing hash table of kernel thread ids with a
//! fixed capacity ([`MAX_THREADS`]), probed at most [`MAX_PROBE`] slots from
//! a thread's hash, so a lookup costs a few loads however full the table
//! is. Threads register when the collector lists them or when they first
//! enter a span; the collector removes those that have exited, including
//! ones too short-lived to have been listed. Each slot also holds the thread's
//! published span context (see `spans::context`), which the tracing layer
//! writes and the handler reads. A thread that finds the table full is
//! simply not registered: it is not sampled by the `setitimer` engine and its
//! samples carry no span.

use std::ffi::CStr;
use std::io;
use std::fs::{File, OpenOptions};
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::OnceLock;

use crate::spans::context::SpanCell;
use crate::sync::{AtomicBool, AtomicI32, Ordering};

/// Threads the registry can hold at once.
pub(crate) const MAX_THREADS: usize = 2048;

/// Slots looked at from a thread's hash position, at most.
pub(crate) const MAX_PROBE: usize = 64;

const EMPTY: i32 = 0;
/// A freed slot: lookups probe past it, registrations may reuse it.
const FREED: i32 = -1;

/// One registered thread.
pub(crate) struct ThreadSlot {
    tid: AtomicI32,
    /// The thread's current span, for its samples.
    pub(crate) span: SpanCell,
}

impl ThreadSlot {
    /// The kernel id of the thread owning the slot (`0` or negative: none).
    pub(crate) fn tid(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }
}

/// Fixed-capacity table of registered threads.
pub(crate) struct ThreadRegistry {
    slots: Box<[ThreadSlot]>,
    /// Serialises registration and removal (agent threads, and a thread
    /// registering itself on its first span) so a thread id can never occupy
    /// two slots. Lookups take no lock. A spin flag rather than a `Mutex`:
    /// after `fork`, the child must be able to release it even if a thread
    /// that no longer exists held it (see [`ThreadRegistry::reset_after_fork`]).
    writers: AtomicBool,
}

/// The process-wide registry. Built on first use outside any signal
/// handler, never freed: later agents in the same process reuse it.
pub(crate) fn registry() -> &'static ThreadRegistry {
    REGISTRY.get_or_init(|| ThreadRegistry::with_capacity(MAX_THREADS))
}

static REGISTRY: OnceLock<ThreadRegistry> = OnceLock::new();

/// [`ThreadRegistry::reset_after_fork`] on the registry, if it exists (never
/// creating it: this runs in a forked child, where allocating is unsafe).
pub(crate) fn reset_registry_after_fork() {
    if let Some(registry) = REGISTRY.get() {
        registry.reset_after_fork();
    }
}

impl ThreadRegistry {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        ThreadRegistry {
            slots: (0..capacity)
                .map(|_| ThreadSlot {
                    tid: AtomicI32::new(EMPTY),
                    span: SpanCell::new(),
                })
                .collect(),
            writers: AtomicBool::new(false),
        }
    }

    fn probe(&self, tid: i32) -> impl Iterator<Item = usize> + '_ {
        let n = self.slots.len();
        // Fibonacci hashing spreads sequential thread ids over the table.
        let start = ((tid as u32).wrapping_mul(0x9E37_79B9) as usize) % n;
        (0..n.min(MAX_PROBE)).map(move |i| (start + i) % n)
    }

    fn lock_writers(&self) -> WritersGuard<'_> {
        // Acquire: pairs with the release in `WritersGuard::drop`.
        while self
            .writers
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        WritersGuard(&self.writers)
    }

    /// In a child process just forked: only the forking thread exists, so
    /// every registration (and a writer lock some other thread held) is
    /// void. Atomic stores only: this runs in `pthread_atfork`'s child hook.
    pub(crate) fn reset_after_fork(&self) {
        for slot in self.slots.iter() {
            slot.tid.store(EMPTY, Ordering::Relaxed);
        }
        self.writers.store(false, Ordering::Release);
    }

    /// The slot of `tid`, if registered.
    ///
    /// # Signal safety
    /// Atomic loads only; at most [`MAX_PROBE`] of them (usually one).
    #[inline]
    pub(crate) fn find(&self, tid: i32) -> Option<usize> {
        for index in self.probe(tid) {
            // Relaxed: registration happens-before the thread is sampled
            // through the timer set-up (or, for a thread registering itself,
            // program order on that thread), not through this load.
            match self.slots[index].tid.load(Ordering::Relaxed) {
                EMPTY => return None,
                found if found == tid => return Some(index),
                _ => {}
            }
        }
        None
    }

    /// Whether `tid` is registered.
    ///
    /// # Signal safety
    /// As [`Self::find`].
    pub(crate) fn contains(&self, tid: i32) -> bool {
        self.find(tid).is_some()
    }

    pub(crate) fn slot(&self, index: usize) -> &ThreadSlot {
        &self.slots[index]
    }

    /// Registers `tid`, returning its slot; `None` when no slot within
    /// [`MAX_PROBE`] of its hash is free.
    pub(crate) fn register(&self, tid: i32) -> Option<usize> {
        let _guard = self.lock_writers();
        let mut free = None;
        for index in self.probe(tid) {
            match self.slots[index].tid.load(Ordering::Relaxed) {
                found if found == tid => return Some(index),
                FREED => {
                    free.get_or_insert(index);
                }
                EMPTY => {
                    free.get_or_insert(index);
                    break;
                }
                _ => {}
            }
        }
        let index = free?;
        self.slots[index].span.clear();
        self.slots[index].tid.store(tid, Ordering::Relaxed);
        Some(index)
    }

    /// Removes `tid`, if registered.
    pub(crate) fn unregister(&self, tid: i32) {
        let _guard = self.lock_writers();
        if let Some(index) = self.find(tid) {
            self.slots[index].tid.store(FREED, Ordering::Relaxed);
        }
    }

    /// Removes every registered thread for which `alive` says no.
    pub(crate) fn retain(&self, mut alive: impl FnMut(i32) -> bool) -> usize {
        let _guard = self.lock_writers();
        let mut removed = 0;
        for slot in self.slots.iter() {
            let tid = slot.tid.load(Ordering::Relaxed);
            if tid > 0 && !alive(tid) {
                slot.tid.store(FREED, Ordering::Relaxed);
                removed += 1;
            }
        }
        removed
    }

    /// Empties the table (an agent stopping).
    pub(crate) fn clear(&self) {
        let _guard = self.lock_writers();
        for slot in self.slots.iter() {
            slot.tid.store(EMPTY, Ordering::Relaxed);
        }
    }

    /// Bytes held by the table.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<ThreadSlot>()
    }
}

/// Holds the registry's writer flag.
struct WritersGuard<'a>(&'a AtomicBool);

impl Drop for WritersGuard<'_> {
    fn drop(&mut self) {
        // Release: our writes to the table happen before the next writer's.
        self.0.store(false, Ordering::Release);
    }
}

/// Marks the calling thread as one of the agent's: its id goes into
/// `own_threads`, so that it is never sampled, and the tracing layer
/// records none of its spans (the libraries the exporter runs, h2 among
/// them, open spans of their own, and exporting those would make more).
pub(crate) fn enter_agent_thread(own_threads: &std::sync::Mutex<std::collections::HashSet<i32>>) {
    own_threads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(current_tid());
    crate::spans::mark_agent_thread();
}

/// The calling thread's kernel thread id.
pub(crate) fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK` from the kernel's
/// `posix-timers.h`: a thread's CPU clock counting all its run time.
const THREAD_CPU_CLOCK_BITS: u32 = 2 | 4;

/// The clock id of thread `tid`'s CPU-time clock, as the kernel's
/// `MAKE_THREAD_CPUCLOCK` builds it. Unlike `pthread_getcpuclockid`, this
/// works for any thread of the process knowing only its kernel id.
pub(crate) fn thread_cpu_clock(tid: i32) -> libc::clockid_t {
    ((!(tid as u32)) << 3 | THREAD_CPU_CLOCK_BITS) as libc::clockid_t
}

/// CPU time thread `tid` (of this process) has used, or `None` if it has
/// exited.
pub(crate) fn thread_cpu(tid: i32) -> Option<std::time::Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; an invalid clock only makes the call fail.
    (unsafe { libc::clock_gettime(thread_cpu_clock(tid), &mut now) } == 0)
        .then(|| std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// `/proc/self/task`, held open for listing the process's threads again and
/// again.
///
/// The collector lists threads 40 times a second for as long as the agent
/// runs. Opening the directory each time (with `std::fs::read_dir`: open,
/// fstat, a heap-allocated reader per listing and per entry, close) cost
/// more than the listing itself; this keeps one descriptor, rewinds it and
/// reads the entries with `getdents64` into a buffer it reuses.
pub(crate) struct TaskDir {
    dir: File,
    /// The directory's link count when last listed: two plus the number of
    /// threads.
    links: Option<u64>,
    /// Raw `linux_dirent64` records, a buffer-full per `getdents64`.
    entries: Vec<u8>,
}

impl TaskDir {
    pub(crate) fn open() -> io::Result<TaskDir> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open("/proc/self/task")?;
        Ok(TaskDir {
            dir,
            links: None,
            entries: vec![0; 16 * 1024],
        })
    }

    /// The directory's link count: the kernel reports two plus the number
    /// of threads.
    fn links(&self) -> Option<u64> {
        self.dir.metadata().ok().map(|m| m.nlink())
    }

    /// True if the process has as many threads as at the last listing (not
    /// necessarily the same ones). False when in doubt.
    pub(crate) fn count_unchanged(&self) -> bool {
        self.links.is_some() && self.links() == self.links
    }

    /// The process's threads, sorted, into `out`.
    pub(crate) fn list(&mut self, out: &mut Vec<i32>) -> io::Result<()> {
        out.clear();
        // Counted before reading: a thread that starts in between shows up
        // as a changed count at the next check, never as a missed one.
        self.links = self.links();
        self.dir.rewind()?;
        let fd = self.dir.as_raw_fd();
        loop {
            // SAFETY: the kernel writes at most `entries.len()` bytes into
            // our buffer.
            let read = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd,
                    self.entries.as_mut_ptr(),
                    self.entries.len(),
                )
            };
            if read < 0 {
                return Err(io::Error::last_os_error());
            }
            if read == 0 {
                break;
            }
            parse_dirents(&self.entries[..read as usize], out);
        }
        out.sort_unstable();
        Ok(())
    }
}

/// Appends the numeric names among `linux_dirent64` records (`d_ino` u64,
/// `d_off` i64, `d_reclen` u16, `d_type` u8, then the NUL-terminated name).
fn parse_dirents(mut records: &[u8], out: &mut Vec<i32>) {
    const NAME_AT: usize = 19;
    while records.len() > NAME_AT {
        let length = usize::from(u16::from_ne_bytes([records[16], records[17]]));
        if length <= NAME_AT || length > records.len() {
            return; // never from the kernel; stop rather than misread
        }
        let name = &records[NAME_AT..length];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(tid) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
        records = &records[length..];
    }
}

/// The thread's name (`comm`, at most 15 bytes), or `None` if it has exited.
pub(crate) fn thread_name(tid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/self/task/{tid}/comm")).ok()?;
    let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(name).into_owned())
}

/// Names a thread of the agent's own, visible in `top -H` and in `comm`.
pub(crate) fn name_current_thread(name: &CStr) {
    // SAFETY: `name` is NUL-terminated; PR_SET_NAME truncates to 15 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn task_dir_lists_the_same_threads_as_read_dir_every_time() {
        let from_std = || {
            let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
                .collect();
            tids.sort_unstable();
            tids
        };
        let mut tasks = TaskDir::open().unwrap();
        let mut listed = Vec::new();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, ready) = std::sync::mpsc::channel();
        let extra = std::thread::spawn(move || {
            started.send(current_tid()).unwrap();
            let _ = released.recv();
        });
        let extra_tid = ready.recv().unwrap();
        // Other tests' threads come and go: retry until two listings agree.
        let agreed = (0..100).any(|_| {
            tasks.list(&mut listed).unwrap();
            listed == from_std()
        });
        assert!(agreed, "the listings never agreed; last: {listed:?}");
        assert!(listed.contains(&current_tid()) && listed.contains(&extra_tid));
        drop(release);
        extra.join().unwrap();
        // The same descriptor, rewound, no longer shows the joined thread
        // (once the kernel has finished with it: `join` returns when the
        // thread's id is cleared, a moment before its task is unlisted).
        let gone = (0..1000).any(|_| {
            tasks.list(&mut listed).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
            !listed.contains(&extra_tid)
        });
        assert!(gone, "the joined thread is still listed");
    }

    #[test]
    fn task_dir_notices_a_new_thread_by_its_count() {
        let mut tasks = TaskDir::open().unwrap();
        assert!(!tasks.count_unchanged(), "nothing listed yet");
        // Other tests start and end threads too: one that ends just as ours
        // starts leaves the count as it was (which is why the collector also
        // lists every few cycles regardless). So try until the count held
        // still around the new thread; a count that never notices fails.
        for _ in 0..100 {
            let mut listed = Vec::new();
            tasks.list(&mut listed).unwrap();
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (started, ready) = std::sync::mpsc::channel();
            let extra = std::thread::spawn(move || {
                started.send(()).unwrap();
                let _ = released.recv();
            });
            ready.recv().unwrap();
            let changed = !tasks.count_unchanged();
            drop(release);
            extra.join().unwrap();
            if changed {
                return;
            }
        }
        panic!("a new thread never changed the count");
    }

    #[test]
    fn dirent_parsing_takes_numeric_names_and_stops_at_a_bad_length() {
        let record = |name: &str, length: u16| {
            let mut r = vec![0u8; 19];
            r[16..18].copy_from_slice(&length.to_ne_bytes());
            r.extend_from_slice(name.as_bytes());
            r.resize(usize::from(length), 0);
            r
        };
        let mut records = [record(".", 24), record("..", 24), record("4242", 24), record("17", 32)].concat();
        let mut out = Vec::new();
        parse_dirents(&records, &mut out);
        assert_eq!(out, [4242, 17]);
        records.extend(record("99", 8)); // shorter than its own header
        records.extend(record("98", 24));
        out.clear();
        parse_dirents(&records, &mut out);
        assert_eq!(out, [4242, 17]);
    }

    #[test]
    fn register_lookup_unregister() {
        let registry = ThreadRegistry::with_capacity(8);
        for tid in [5, 13, 21] {
            assert!(registry.register(tid).is_some());
        }
        assert!(registry.contains(13));
        registry.unregister(13);
        assert!(!registry.contains(13));
        assert!(registry.contains(21), "probe must continue past a freed slot");
        let slot = registry.register(13).unwrap();
        assert_eq!(registry.slot(slot).tid(), 13);
        assert_eq!(registry.find(13), Some(slot));
    }

    #[test]
    fn dead_threads_are_reaped_and_their_slots_reused() {
        let registry = ThreadRegistry::with_capacity(16);
        for tid in 1..=16 {
            assert!(registry.register(tid).is_some());
        }
        assert_eq!(registry.register(100), None, "full");
        assert_eq!(registry.retain(|tid| tid % 2 == 0), 8);
        assert!(registry.register(100).is_some());
        assert!((2..=16).step_by(2).all(|tid| registry.contains(tid)));
        assert!(!registry.contains(3));
    }

    #[test]
    fn full_table_refuses_new_threads() {
        let registry = ThreadRegistry::with_capacity(4);
        for tid in 1..=4 {
            assert!(registry.register(tid).is_some());
        }
        assert_eq!(registry.register(99), None);
        assert_eq!(registry.register(3), registry.find(3), "re-registering is idempotent");
        assert!((1..=4).all(|tid| registry.contains(tid)));
    }
}
