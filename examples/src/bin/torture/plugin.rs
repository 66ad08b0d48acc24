//! A shared library loaded, called and unloaded in a loop.
//!
//! Each step `dlopen`s the C plugin built by `build.rs`, calls into it (a
//! busy loop, and a call back into the host, so host frames sit on both
//! sides of plugin frames), `dlclose`s it and checks with `RTLD_NOLOAD`
//! that it really was unmapped. The agent must notice every load and
//! unload (its unwind tables are rebuilt each time), never unwind through
//! an unmapped library, and never deadlock on the loader lock, which
//! `dlopen` and `dlclose` hold while the agent's signal lands.

use std::ffi::{CStr, CString, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use crate::harness::{Harness, WORKER_STACK, spawn_worker};
use crate::{alloc, sys};

#[derive(Default)]
pub struct Counters {
    /// dlopen / call / dlclose cycles.
    pub cycles: AtomicU64,
    /// Calls into the plugin.
    pub calls: AtomicU64,
    /// Cycles after which `RTLD_NOLOAD` confirmed the plugin was unmapped.
    pub unload_confirmed: AtomicU64,
}

type Callback = extern "C" fn(u64) -> u64;

/// Called by the plugin: host frames above and below plugin frames.
#[inline(never)]
extern "C" fn host_callback(rounds: u64) -> u64 {
    sys::burn(rounds / 4000 + 1)
}

/// The loaded plugin's entry points.
struct Plugin {
    handle: *mut c_void,
    spin: extern "C" fn(u64) -> u64,
    call_back: extern "C" fn(Callback, u64) -> u64,
}

/// The loader's last error message.
fn dlerror() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by the loader,
    // copied here before any other dl call on this thread.
    unsafe {
        let message = libc::dlerror();
        if message.is_null() {
            "unknown error".to_owned()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    }
}

impl Plugin {
    fn open(path: &CStr) -> Result<Plugin, String> {
        // SAFETY: `path` is a valid C string; the flags are valid.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("dlopen: {}", dlerror()));
        }
        // SAFETY: `handle` is live; the names are valid C strings.
        let (spin, call_back) = unsafe {
            (
                libc::dlsym(handle, c"plugin_spin".as_ptr()),
                libc::dlsym(handle, c"plugin_call_back".as_ptr()),
            )
        };
        if spin.is_null() || call_back.is_null() {
            // SAFETY: closing the handle we opened, once.
            unsafe { libc::dlclose(handle) };
            return Err("the plugin's symbols are missing".to_owned());
        }
        // SAFETY: plugin/plugin.c defines both functions with exactly these
        // C signatures; the pointers stay valid until `close`.
        let (spin, call_back) = unsafe {
            (
                std::mem::transmute::<*mut c_void, extern "C" fn(u64) -> u64>(spin),
                std::mem::transmute::<*mut c_void, extern "C" fn(Callback, u64) -> u64>(call_back),
            )
        };
        Ok(Plugin {
            handle,
            spin,
            call_back,
        })
    }

    fn close(self) -> Result<(), String> {
        // SAFETY: the handle came from dlopen and is closed exactly once;
        // no pointer into the plugin outlives `self`.
        match unsafe { libc::dlclose(self.handle) } {
            0 => Ok(()),
            _ => Err(format!("dlclose: {}", dlerror())),
        }
    }
}

/// Whether the library at `path` is still mapped.
fn still_loaded(path: &CStr) -> bool {
    // SAFETY: RTLD_NOLOAD never loads; a non-null handle takes a reference,
    // which is given back at once.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
        true
    }
}

pub fn start(harness: &Arc<Harness>) -> Vec<JoinHandle<()>> {
    let activity = harness.activity("dlopen");
    let path = CString::new(env!("SMOLDER_PLUGIN_PATH")).expect("the plugin path has no NUL");
    vec![spawn_worker(
        harness,
        &activity,
        "dlopen",
        WORKER_STACK,
        move |harness| cycle(harness, &path),
    )]
}

fn cycle(harness: &Harness, path: &CStr) {
    let _span = tracing::info_span!("plugin_cycle").entered();
    let plugin = match Plugin::open(path) {
        Ok(plugin) => plugin,
        Err(error) => {
            harness.fail(format!("loading the plugin: {error}"));
            std::thread::sleep(std::time::Duration::from_millis(100));
            return;
        }
    };
    let calls = sys::random_range(1, 6);
    let mut acc = 0u64;
    for _ in 0..calls {
        acc = acc.wrapping_add((plugin.spin)(100_000));
        acc = acc.wrapping_add((plugin.call_back)(host_callback, 100_000));
    }
    std::hint::black_box(acc);
    if let Err(error) = plugin.close() {
        harness.fail(format!("unloading the plugin: {error}"));
    }
    let counters = &harness.plugin;
    if !still_loaded(path) {
        counters.unload_confirmed.fetch_add(1, Relaxed);
    }
    counters.cycles.fetch_add(1, Relaxed);
    counters.calls.fetch_add(calls * 2, Relaxed);
    alloc::burst(4);
}
