//! The `SIGPROF` handler never allocates or frees memory.
//!
//! The handler interrupts arbitrary code, including `malloc` itself, so an
//! allocation there can deadlock or corrupt the heap of the host. This test
//! binary's global allocator aborts the process when a thread allocates,
//! reallocates or frees while it is inside the handler, and the tests run
//! the agent at a high rate over a workload that takes the handler down each
//! of its paths: DWARF and frame-pointer walks, both timer engines, samples
//! inside `tracing` spans, stacks deeper than the depth limit, several
//! threads (some short-lived), code in a library loaded after the agent
//! started, and calls from that library back into the host.
//!
//! "Inside the handler" needs no hook in the agent: the handler is installed
//! without `SA_NODEFER`, so while it runs the kernel blocks `SIGPROF` on
//! that thread, and nothing else in this process blocks it (the agent never
//! changes a signal mask, and neither do its dependencies; glibc blocks all
//! signals around thread creation and exit, but calls no allocator of ours
//! there). A blocked `SIGPROF` at allocation time therefore means a handler
//! below on the same stack.

// Linux on x86_64 or aarch64, unless `--cfg smolder_unsupported` (see
// agent/build.rs): where the agent cannot sample, `start` only says so.
#![cfg(smolder_sampling)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CString, c_void};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use smolder::{Agent, AgentBuilder, Engine, Profile, Stats, Unwinder};

// === The allocator that refuses to run inside the handler ===

/// The system allocator, behind a check that the calling thread is not
/// inside the `SIGPROF` handler.
struct HandlerAllocationTrap;

#[global_allocator]
static ALLOCATOR: HandlerAllocationTrap = HandlerAllocationTrap;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, after a check that only reads the signal mask (or aborts).
unsafe impl GlobalAlloc for HandlerAllocationTrap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        trap_inside_handler(b"alloc", layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        trap_inside_handler(b"alloc_zeroed", layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        trap_inside_handler(b"realloc", new_size);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        trap_inside_handler(b"dealloc", layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Whether the calling thread has `SIGPROF` blocked.
///
/// Allocates nothing (the allocator calls it).
fn sigprof_blocked() -> bool {
    // SAFETY: all-zero is a valid sigset; `SIG_BLOCK` with a null new set
    // changes nothing and only writes the current mask into `mask`.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) == 0
            && libc::sigismember(&mask, libc::SIGPROF) == 1
    }
}

/// Aborts the process, saying why on stderr, if the calling thread is
/// inside the `SIGPROF` handler.
fn trap_inside_handler(operation: &[u8], size: usize) {
    if sigprof_blocked() {
        report_and_abort(operation, size);
    }
}

/// Writes the message with `write(2)` from a stack buffer (formatting could
/// allocate, and the allocator is where we are) and aborts.
#[cold]
fn report_and_abort(operation: &[u8], size: usize) -> ! {
    let mut message = [0u8; 256];
    let mut length = 0;
    let mut push = |bytes: &[u8]| {
        let n = bytes.len().min(message.len() - length);
        message[length..length + n].copy_from_slice(&bytes[..n]);
        length += n;
    };
    push(b"handler_alloc: ");
    push(operation);
    push(b" of ");
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    push(&digits[at..]);
    push(b" bytes on a thread with SIGPROF blocked, i.e. inside the smolder signal handler: the handler must not allocate or free\n");
    // SAFETY: writes our own initialised buffer to stderr, then aborts;
    // both are async-signal-safe.
    unsafe {
        libc::write(2, message.as_ptr().cast(), length);
        libc::abort();
    }
}

// === Serialising the tests ===

/// One agent per process: the tests take turns.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends every thread's spans through smolder's layer, so that samples
/// carry the span they were taken in (the handler reads it).
fn install_span_layer() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(smolder::tracing_layer());
        tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
    });
}

// === A library loaded after the agent started ===

const PLUGIN_SOURCE: &str = r#"
typedef unsigned long (*host_callback)(unsigned long);

__attribute__((noinline)) unsigned long guard_plugin_spin(unsigned long rounds)
{
    unsigned long x = rounds | 1;
    for (unsigned long i = 0; i < rounds; i++) {
        x = (x << 7 | x >> 57) ^ (i * 0x9E3779B97F4A7C15UL);
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

__attribute__((noinline)) unsigned long guard_plugin_call_host(host_callback callback, unsigned long rounds)
{
    unsigned long result = callback(rounds);
    __asm__ volatile("" : "+r"(result));
    return result + 1;
}
"#;

type HostCallback = extern "C" fn(u64) -> u64;

/// The plugin's entry points (plain function pointers: they may be used
/// on any thread while the library stays loaded).
#[derive(Clone, Copy)]
struct PluginCalls {
    spin: extern "C" fn(u64) -> u64,
    call_host: extern "C" fn(HostCallback, u64) -> u64,
}

struct Plugin {
    handle: *mut c_void,
    path: PathBuf,
    calls: PluginCalls,
}

impl Plugin {
    /// Compiles the plugin into `dir` as `lib<name>.so`. Done before the
    /// agent starts: the compiler is a child process, and the point is
    /// that the agent learns about the library only when it is loaded.
    fn compile(dir: &Path, name: &str) -> PathBuf {
        let source = dir.join(format!("{name}.c"));
        let library = dir.join(format!("lib{name}.so"));
        std::fs::write(&source, PLUGIN_SOURCE).expect("write the plugin's source");
        let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let status = std::process::Command::new(&compiler)
            .args(["-shared", "-fPIC", "-O2", "-fomit-frame-pointer", "-o"])
            .arg(&library)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
        assert!(
            status.success(),
            "{compiler} failed on {}",
            source.display()
        );
        library
    }

    fn open(path: &Path) -> Plugin {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("a path");
        // SAFETY: dlopen and dlsym with valid C strings; the symbols have the
        // signatures of PLUGIN_SOURCE, and are used only while the handle is
        // open (`close` takes the plugin by value after the workload ended).
        unsafe {
            let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!handle.is_null(), "dlopen {}", path.display());
            let symbol = |name: &std::ffi::CStr| {
                let address = libc::dlsym(handle, name.as_ptr());
                assert!(!address.is_null(), "{name:?} missing from the plugin");
                address
            };
            let calls = PluginCalls {
                spin: std::mem::transmute::<*mut c_void, extern "C" fn(u64) -> u64>(symbol(
                    c"guard_plugin_spin",
                )),
                call_host: std::mem::transmute::<
                    *mut c_void,
                    extern "C" fn(HostCallback, u64) -> u64,
                >(symbol(c"guard_plugin_call_host")),
            };
            Plugin {
                handle,
                path: path.to_owned(),
                calls,
            }
        }
    }

    fn close(self) {
        // SAFETY: the handle came from dlopen, is closed once, and no thread
        // calls into the library any more.
        unsafe { libc::dlclose(self.handle) };
    }
}

// === The workload ===

/// Burns `rounds` of integer mixing in the code of the function it is
/// written in: no call, even in a debug build, so that function is the leaf
/// of every stack sampled in it, whatever the unwinder finds above.
macro_rules! spin_here {
    ($rounds:expr) => {{
        let rounds: u64 = $rounds;
        let mut x: u64 = rounds | 1;
        let mut i: u64 = 0;
        while i < rounds {
            x ^= (x << 13) ^ (x >> 7) ^ i;
            // SAFETY: an empty instruction sequence that claims to change
            // `x`, so the loop cannot be folded away; it touches nothing else.
            unsafe {
                std::arch::asm!("/* {0} */", inout(reg) x, options(nomem, nostack, preserves_flags));
            }
            i += 1;
        }
        x
    }};
}

#[inline(never)]
fn guard_burn_in_span() -> u64 {
    spin_here!(20_000)
}

#[inline(never)]
fn guard_deep_leaf() -> u64 {
    spin_here!(50_000)
}

/// 300 frames: deeper than the 128-frame default limit, so walks are cut.
#[inline(never)]
fn guard_deep_recurse(depth: u32) -> u64 {
    if depth == 0 {
        return guard_deep_leaf();
    }
    black_box(guard_deep_recurse(black_box(depth - 1))).wrapping_add(1)
}

#[inline(never)]
extern "C" fn guard_host_callback(rounds: u64) -> u64 {
    spin_here!(rounds)
}

#[inline(never)]
fn guard_allocation_churn(round: u64) -> u64 {
    let mut kept: Vec<Vec<u64>> = Vec::with_capacity(64);
    for i in 0..64u64 {
        let mut v = Vec::with_capacity((round + i) as usize % 300 + 1);
        v.extend((0..(i % 17)).map(|k| k ^ round));
        kept.push(v);
        if i % 3 == 0 {
            kept.swap_remove((i / 3) as usize % kept.len());
        }
    }
    kept.iter().map(|v| v.len() as u64).sum()
}

#[inline(never)]
fn guard_short_lived_thread() -> u64 {
    spin_here!(200_000)
}

/// Runs `work` on a named thread until `stop` is set.
fn spawn_worker(
    name: &str,
    stop: &Arc<AtomicBool>,
    mut work: impl FnMut(u64) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let stop = Arc::clone(stop);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                work(round);
                round += 1;
            }
        })
        .expect("spawn a worker")
}

/// Starts the agent, loads a freshly compiled plugin, records `WINDOW`
/// while the workload runs on several threads, and returns the profile
/// and the agent's stats at the end.
fn sample_every_handler_path(label: &str, builder: AgentBuilder) -> Sampled {
    const WINDOW: Duration = Duration::from_millis(2000);
    install_span_layer();
    let dir = std::env::temp_dir().join(format!(
        "smolder-handler-alloc-{}-{label}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let library = Plugin::compile(&dir, &format!("guard_{label}"));

    let agent: Agent = builder
        .http_disabled()
        .frequency_hz(4999)
        .start()
        .expect("start");
    let plugin = Plugin::open(&library);
    let calls = plugin.calls;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = [
        spawn_worker("guard-spans", &stop, |_| {
            let outer = tracing::info_span!("handler_guard_outer");
            let _outer = outer.enter();
            for _ in 0..8 {
                let inner = tracing::info_span!("handler_guard_inner");
                let _inner = inner.enter();
                black_box(guard_burn_in_span());
            }
        }),
        spawn_worker("guard-deep", &stop, |_| {
            black_box(guard_deep_recurse(300));
        }),
        spawn_worker("guard-plugin", &stop, move |round| {
            black_box((calls.spin)(200_000 + round % 7));
            black_box((calls.call_host)(guard_host_callback, 200_000));
        }),
        spawn_worker("guard-alloc", &stop, |round| {
            black_box(guard_allocation_churn(round));
        }),
        spawn_worker("guard-churn", &stop, |_| {
            let short = std::thread::Builder::new()
                .name("guard-short".to_owned())
                .spawn(guard_short_lived_thread)
                .expect("spawn a short-lived thread");
            black_box(short.join().expect("short-lived thread"));
        }),
    ];
    let profile = agent.record(WINDOW);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    let stats = agent.stats();
    let profile = profile.expect("record");
    let plugin_path = plugin.path.clone();
    plugin.close();
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Sampled {
        profile,
        stats,
        plugin_path,
    }
}

struct Sampled {
    profile: Profile,
    stats: Stats,
    plugin_path: PathBuf,
}

impl Sampled {
    fn has_frame(&self, function: &str) -> bool {
        self.profile
            .samples()
            .any(|s| s.frames().any(|f| f.function().contains(function)))
    }

    /// Asserts what every run must show: samples in each part of the
    /// workload, so that a handler that sampled nothing cannot pass.
    fn assert_each_path_was_sampled(&self) {
        let folded = || self.profile.folded();
        assert!(
            self.stats.samples >= 200,
            "only {} samples at 4999 Hz: {:#?}",
            self.stats.samples,
            self.stats
        );
        for function in ["guard_plugin_spin", "guard_deep_leaf", "guard_burn_in_span"] {
            assert!(
                self.has_frame(function),
                "no sample in {function}:\n{}",
                folded()
            );
        }
        let plugin_name = self.plugin_path.to_string_lossy();
        let in_plugin = self.profile.samples().any(|s| {
            s.frames()
                .any(|f| f.module().is_some_and(|m| m.ends_with(&*plugin_name)))
        });
        assert!(in_plugin, "no frame in the module {plugin_name}");
        let in_span = self
            .profile
            .samples()
            .any(|s| s.span_name() == Some("handler_guard_inner"));
        assert!(in_span, "no sample carries the span handler_guard_inner");
        let threads: std::collections::HashSet<i32> =
            self.profile.samples().map(|s| s.thread_id()).collect();
        assert!(threads.len() >= 4, "samples from {} threads", threads.len());
    }
}

#[test]
fn dwarf_walks_do_not_allocate() {
    let _serial = serial();
    let run = sample_every_handler_path("dwarf", Agent::builder().unwinder(Unwinder::Dwarf));
    run.assert_each_path_was_sampled();
    assert_eq!(run.stats.unwinder, Unwinder::Dwarf);
    assert!(
        run.stats.stacks_truncated > 0,
        "the 300-deep recursion was cut at the depth limit: {:#?}",
        run.stats
    );
    // Host → plugin → host: the walk went through the library's own unwind
    // information, which the agent read after it was loaded.
    let through_plugin = run.profile.samples().any(|s| {
        let names: Vec<&str> = s.frames().map(|f| f.function()).collect();
        let position = |name: &str| names.iter().position(|f| f.contains(name));
        matches!(
            (position("guard_host_callback"), position("guard_plugin_call_host")),
            (Some(callback), Some(plugin)) if callback < plugin
        )
    });
    assert!(
        through_plugin,
        "no stack runs from the host through the plugin back into the host:\n{}",
        run.profile.folded()
    );
}

#[test]
fn frame_pointer_walks_do_not_allocate() {
    let _serial = serial();
    let run = sample_every_handler_path(
        "frame_pointers",
        Agent::builder().unwinder(Unwinder::FramePointers),
    );
    run.assert_each_path_was_sampled();
    assert_eq!(run.stats.unwinder, Unwinder::FramePointers);
}

#[test]
fn setitimer_signals_do_not_allocate() {
    let _serial = serial();
    let run = sample_every_handler_path("setitimer", Agent::builder().engine(Engine::Setitimer));
    run.assert_each_path_was_sampled();
    assert_eq!(run.stats.engine, Some(Engine::Setitimer));
}

#[test]
fn the_trap_sees_a_blocked_sigprof() {
    let _serial = serial();
    // SAFETY: all-zero is a valid sigset, then set to {SIGPROF}; blocking and
    // unblocking it on this thread only. Nothing allocates in between.
    let blocked = unsafe {
        let mut only_sigprof: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only_sigprof);
        libc::sigaddset(&mut only_sigprof, libc::SIGPROF);
        libc::pthread_sigmask(libc::SIG_BLOCK, &only_sigprof, std::ptr::null_mut());
        let blocked = sigprof_blocked();
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only_sigprof, std::ptr::null_mut());
        blocked
    };
    assert!(blocked, "a blocked SIGPROF is seen");
    assert!(!sigprof_blocked(), "and an unblocked one is not");
}
