//! Workloads with known CPU profiles, driven by the end-to-end tests (and
//! handy for trying the agent by hand).
//!
//! ```text
//! workload split     --threads N --hz H --seconds S --out DIR   70/30 split under a 21-deep chain
//! workload deep      --out DIR                                   200-deep recursion (truncation)
//! workload churn     --threads-total N --out DIR                 thousands of short threads
//! workload dlopen    --out DIR                                   a library loaded after start
//! workload lifecycle                                             start/stop/refusal behaviour
//! workload stall     --out DIR                                   the collector stuck for 3 s
//! workload serve     --shift-after S                             a service for the HTTP tests
//! ```
//!
//! Each scenario writes `folded.txt`, `profile.svg` and `profile.pb.gz` into
//! `--out` (where it records a profile) and prints `key=value` lines that the
//! tests parse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use smolder::{Agent, Profile};

use smolder_examples::thread_cpu;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "split".to_owned());
    let options = Options::parse(args)?;
    match scenario.as_str() {
        "split" => split(&options),
        "deep" => deep(&options),
        "churn" => churn(&options),
        "dlopen" => dlopen(&options),
        "lifecycle" => lifecycle(),
        "stall" => stall(&options),
        "serve" => serve(&options),
        other => Err(format!("unknown scenario {other:?}").into()),
    }
}

/// `--key value` pairs.
struct Options(BTreeMap<String, String>);

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut map = BTreeMap::new();
        while let Some(key) = args.next() {
            let key = key
                .strip_prefix("--")
                .ok_or(format!("expected --option, got {key:?}"))?;
            let value = args.next().ok_or(format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), value);
        }
        Ok(Options(map))
    }

    fn number(&self, key: &str, default: u64) -> Result<u64> {
        self.0.get(key).map_or(Ok(default), |v| Ok(v.parse()?))
    }

    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn out(&self) -> Result<PathBuf> {
        let dir = PathBuf::from(self.0.get("out").ok_or("--out DIR is required")?);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// Writes the profile in all three formats and prints its headline numbers.
fn save(profile: &Profile, out: &std::path::Path) -> Result<()> {
    std::fs::write(out.join("folded.txt"), profile.folded())?;
    profile.write_flamegraph(std::fs::File::create(out.join("profile.svg"))?)?;
    std::fs::write(out.join("profile.pb.gz"), profile.to_pprof()?)?;
    println!("profile_samples={}", profile.sample_count());
    println!("profile_duration_ms={}", profile.duration().as_millis());
    let mut per_thread: BTreeMap<&str, u64> = BTreeMap::new();
    for sample in profile.samples() {
        *per_thread.entry(sample.thread_name()).or_default() += sample.sample_count();
    }
    for (thread, weight) in per_thread {
        println!("weight.{thread}={weight}");
    }
    Ok(())
}

fn print_stats(agent: &Agent) {
    let stats = agent.stats();
    println!(
        "engine={}",
        stats.engine.map_or("disabled", smolder::Engine::as_str)
    );
    println!("signals={}", stats.signals);
    println!("samples={}", stats.samples);
    println!("dropped={}", stats.dropped.total());
    println!("truncated={}", stats.stacks_truncated);
    println!("incomplete={}", stats.stacks_incomplete);
    println!("foreign_signals={}", stats.foreign_signals);
    println!("memory_bytes={}", stats.memory_bytes);
}

// === split: a 70/30 CPU split under a 21-deep call chain ===

/// One unit of work: the same instructions in both hot functions, so time
/// divides exactly as the unit counts do.
#[inline(always)]
fn spin(units: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..units * 1000 {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x)
}

#[inline(never)]
fn hot_seventy(units: u64) -> u64 {
    spin(units * 7)
}

#[inline(never)]
fn cold_thirty(units: u64) -> u64 {
    spin(units * 3)
}

macro_rules! call_chain {
    ($($name:ident -> $next:ident),* $(,)?) => {$(
        #[inline(never)]
        fn $name(deadline: Instant) -> u64 {
            std::hint::black_box($next(deadline)).wrapping_add(1)
        }
    )*};
}

call_chain!(
    chain_01 -> chain_02, chain_02 -> chain_03, chain_03 -> chain_04, chain_04 -> chain_05,
    chain_05 -> chain_06, chain_06 -> chain_07, chain_07 -> chain_08, chain_08 -> chain_09,
    chain_09 -> chain_10, chain_10 -> chain_11, chain_11 -> chain_12, chain_12 -> chain_13,
    chain_13 -> chain_14, chain_14 -> chain_15, chain_15 -> chain_16, chain_16 -> chain_17,
    chain_17 -> chain_18, chain_18 -> chain_19, chain_19 -> chain_20, chain_20 -> chain_21,
    chain_21 -> split_work,
);

#[inline(never)]
fn split_work(deadline: Instant) -> u64 {
    let mut acc = 0u64;
    while Instant::now() < deadline {
        acc = acc
            .wrapping_add(hot_seventy(10))
            .wrapping_add(cold_thirty(10));
    }
    acc
}

fn split(options: &Options) -> Result<()> {
    let threads = options.number("threads", 1)?;
    let hz = options.number("hz", 99)? as u32;
    let seconds = options.number("seconds", 3)?;
    let out = options.out()?;
    let agent = Agent::builder().frequency_hz(hz).start()?;
    let busy = Duration::from_secs(seconds);
    // The capture opens before the busy threads start and closes after they
    // end, so all their CPU falls inside it.
    let profile = std::thread::scope(|scope| {
        let capture = scope.spawn(|| agent.record(busy + Duration::from_millis(700)));
        std::thread::sleep(Duration::from_millis(100));
        let deadline = Instant::now() + busy;
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("busy-{i}"))
                    .spawn_scoped(scope, move || {
                        let start = thread_cpu();
                        chain_01(deadline);
                        thread_cpu() - start
                    })
                    .expect("spawn busy thread")
            })
            .collect();
        for (i, worker) in workers.into_iter().enumerate() {
            let cpu = worker.join().expect("busy thread");
            println!("cpu_ns.busy-{i}={}", cpu.as_nanos());
        }
        capture.join().expect("capture thread")
    })?;
    save(&profile, &out)?;
    print_stats(&agent);
    Ok(())
}

// === deep: recursion deeper than the depth limit ===

#[inline(never)]
fn recurse(depth: u32, deadline: Instant) -> u64 {
    if depth == 0 {
        let mut acc = 0;
        while Instant::now() < deadline {
            acc += deep_leaf();
        }
        return acc;
    }
    std::hint::black_box(recurse(depth - 1, deadline)).wrapping_add(1)
}

#[inline(never)]
fn deep_leaf() -> u64 {
    spin(5)
}

fn deep(options: &Options) -> Result<()> {
    let out = options.out()?;
    let agent = Agent::builder().frequency_hz(499).start()?;
    let profile = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("deep".into())
            .stack_size(16 << 20)
            .spawn_scoped(scope, || {
                recurse(200, Instant::now() + Duration::from_millis(1500))
            })
            .expect("spawn");
        let profile = agent.record(Duration::from_millis(1200));
        worker.join().expect("deep thread");
        profile
    })?;
    save(&profile, &out)?;
    let deepest = profile
        .samples()
        .map(|s| s.frames().count())
        .max()
        .unwrap_or(0);
    println!("deepest_stack={deepest}");
    print_stats(&agent);
    Ok(())
}

// === churn: thousands of short threads while sampling ===

fn posix_timers() -> usize {
    std::fs::read_to_string("/proc/self/timers")
        .map(|t| t.lines().filter(|l| l.starts_with("ID:")).count())
        .unwrap_or(usize::MAX)
}

fn churn(options: &Options) -> Result<()> {
    let total = options.number("threads-total", 3000)?;
    let out = options.out()?;
    println!("timers_before={}", posix_timers());
    let agent = Agent::builder().frequency_hz(999).start()?;
    let profile = std::thread::scope(|scope| {
        let capture = scope.spawn(|| agent.record(Duration::from_secs(3)));
        let start = Instant::now();
        let mut spawned = 0;
        while spawned < total && start.elapsed() < Duration::from_millis(2500) {
            let batch: Vec<_> = (0..20)
                .map(|_| {
                    std::thread::Builder::new()
                        .name("short".into())
                        .spawn(|| spin(200))
                        .expect("spawn short thread")
                })
                .collect();
            spawned += batch.len() as u64;
            for thread in batch {
                thread.join().expect("short thread");
            }
        }
        println!("threads_spawned={spawned}");
        capture.join().expect("capture")
    })?;
    save(&profile, &out)?;
    // Let the collector notice the exits, then compare timers with threads.
    std::thread::sleep(Duration::from_millis(300));
    let stats = agent.stats();
    println!("timers_during={}", posix_timers());
    println!("timers_armed={}", stats.timers_armed);
    println!("threads_sampled={}", stats.threads_sampled);
    print_stats(&agent);
    drop(agent);
    println!("timers_after={}", posix_timers());
    Ok(())
}

// === dlopen: a library loaded after the agent started ===

type Callback = extern "C" fn(u64) -> u64;

#[inline(never)]
extern "C" fn host_burn_called_from_plugin(rounds: u64) -> u64 {
    spin(rounds / 1000 + 1)
}

/// The loaded plugin's entry points.
struct Plugin {
    handle: *mut libc::c_void,
    spin: extern "C" fn(u64) -> u64,
    call_back: extern "C" fn(Callback, u64) -> u64,
}

impl Plugin {
    fn open() -> Result<Plugin> {
        let path = std::ffi::CString::new(env!("SMOLDER_PLUGIN_PATH"))?;
        // SAFETY: dlopen/dlsym with valid C strings; the symbols have the
        // signatures declared in plugin/plugin.c.
        unsafe {
            let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if handle.is_null() {
                return Err("dlopen of the plugin failed".into());
            }
            let symbol = |name: &std::ffi::CStr| libc::dlsym(handle, name.as_ptr());
            let (spin, call_back) = (symbol(c"plugin_spin"), symbol(c"plugin_call_back"));
            if spin.is_null() || call_back.is_null() {
                return Err("plugin symbols missing".into());
            }
            Ok(Plugin {
                handle,
                spin: std::mem::transmute::<*mut libc::c_void, extern "C" fn(u64) -> u64>(spin),
                call_back: std::mem::transmute::<
                    *mut libc::c_void,
                    extern "C" fn(Callback, u64) -> u64,
                >(call_back),
            })
        }
    }

    fn close(self) {
        // SAFETY: the handle came from dlopen and is closed once.
        unsafe { libc::dlclose(self.handle) };
    }
}

#[inline(never)]
fn drive_plugin(plugin: &Plugin, deadline: Instant) -> u64 {
    let mut acc = 0u64;
    while Instant::now() < deadline {
        acc = acc.wrapping_add((plugin.spin)(50_000));
        acc = acc.wrapping_add((plugin.call_back)(host_burn_called_from_plugin, 50_000));
    }
    acc
}

fn dlopen(options: &Options) -> Result<()> {
    let out = options.out()?;
    let agent = Agent::builder().frequency_hz(499).start()?;
    // Loaded only now: the agent must notice the new module on its own.
    let plugin = Plugin::open()?;
    let profile = std::thread::scope(|scope| {
        let capture = scope.spawn(|| agent.record(Duration::from_millis(2500)));
        std::thread::sleep(Duration::from_millis(150));
        std::hint::black_box(drive_plugin(
            &plugin,
            Instant::now() + Duration::from_millis(1800),
        ));
        // Unloaded before the capture ends: its samples must still resolve.
        plugin.close();
        capture.join().expect("capture")
    })?;
    save(&profile, &out)?;
    print_stats(&agent);
    Ok(())
}

// === lifecycle: one agent per process, refusal, kill switch, restart ===

fn sigprof_disposition() -> &'static str {
    // SAFETY: querying the current action into a zeroed struct.
    let handler = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut old);
        old.sa_sigaction
    };
    match handler {
        libc::SIG_DFL => "default",
        libc::SIG_IGN => "ignored",
        _ => "handler",
    }
}

extern "C" fn foreign_handler(_: libc::c_int) {}

/// Forks while the agent runs; the child, which has none of the parent's
/// agent threads or timers, starts an agent of its own and profiles. Returns
/// how the child ended.
fn fork_and_profile_in_child() -> String {
    // SAFETY: the child only runs Rust code that the agent's fork hook has
    // prepared for (it forgets the parent's agent), then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let profiled = smolder::start().and_then(|agent| {
            let capture = std::thread::spawn(move || agent.record(Duration::from_millis(300)));
            let deadline = Instant::now() + Duration::from_millis(350);
            while Instant::now() < deadline {
                std::hint::black_box(spin(10));
            }
            capture.join().expect("capture thread")
        });
        let code = match profiled {
            Ok(profile) if profile.sample_count() > 0 => 0,
            Ok(_) => {
                eprintln!("forked child: no samples");
                1
            }
            Err(error) => {
                eprintln!("forked child: {error}");
                1
            }
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        format!("exited-{}", libc::WEXITSTATUS(status))
    } else {
        format!("killed-by-signal-{}", libc::WTERMSIG(status))
    }
}

fn lifecycle() -> Result<()> {
    println!("initial_disposition={}", sigprof_disposition());

    // SAFETY: setting the variable before any thread of ours reads the
    // environment concurrently (the process is single-threaded here).
    unsafe { std::env::set_var("SMOLDER_ENABLED", "false") };
    let disabled = smolder::start()?;
    println!("disabled_enabled={}", disabled.is_enabled());
    println!("disabled_disposition={}", sigprof_disposition());
    println!(
        "disabled_record_error={}",
        disabled.record(Duration::from_millis(10)).unwrap_err()
    );
    drop(disabled);
    // SAFETY: as above.
    unsafe { std::env::set_var("SMOLDER_FREQUENCY_HZ", "fast") };
    // SAFETY: as above.
    unsafe { std::env::remove_var("SMOLDER_ENABLED") };
    println!("invalid_env_error={}", smolder::start().unwrap_err());
    // SAFETY: as above.
    unsafe { std::env::remove_var("SMOLDER_FREQUENCY_HZ") };

    let first = smolder::start()?;
    println!("running_disposition={}", sigprof_disposition());
    println!("second_start_error={}", smolder::start().unwrap_err());
    drop(first);
    println!("stopped_disposition={}", sigprof_disposition());

    for _ in 0..20 {
        let agent = Agent::builder().frequency_hz(999).start()?;
        spin(2000);
        drop(agent);
    }
    println!("restarts=20");
    println!("timers_after_restarts={}", posix_timers());

    let agent = Agent::builder().frequency_hz(999).start()?;
    let profile = std::thread::scope(|scope| {
        let capture = scope.spawn(|| agent.record(Duration::from_millis(500)));
        std::thread::sleep(Duration::from_millis(50));
        let deadline = Instant::now() + Duration::from_millis(400);
        while Instant::now() < deadline {
            std::hint::black_box(spin(10));
        }
        capture.join().expect("capture")
    })?;
    println!("restarted_samples={}", profile.sample_count());
    println!("forked_child={}", fork_and_profile_in_child());
    drop(agent);

    // Someone else's SIGPROF handler: the agent must refuse and leave it be.
    // SAFETY: installing a handler with the plain signature.
    unsafe {
        libc::signal(
            libc::SIGPROF,
            foreign_handler as *const () as libc::sighandler_t,
        )
    };
    println!("foreign_handler_error={}", smolder::start().unwrap_err());
    println!("foreign_disposition={}", sigprof_disposition());
    Ok(())
}

// === stall: the collector stuck behind the loader's lock ===

/// Holds the dynamic loader's lock for `hold`, by sleeping inside a
/// `dl_iterate_phdr` callback, as a slow library constructor or a host's own
/// unwinder can. The agent's collector takes the same lock every cycle (to
/// see libraries come and go), so it is stuck until this returns.
fn hold_loader_lock(hold: Duration) {
    unsafe extern "C" fn sleep_then_stop(
        _info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Duration` passed below, alive for the call.
        std::thread::sleep(unsafe { *data.cast::<Duration>() });
        1 // stop after the first module
    }
    let mut hold = hold;
    // SAFETY: the callback only reads `hold`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(sleep_then_stop), (&raw mut hold).cast()) };
}

#[inline(never)]
fn stall_burn(units: u64) -> u64 {
    spin(units) ^ 0x57
}

/// Two threads burn CPU while the collector is stuck for 3 s: the buffer
/// fills, the handler drops and counts, the host's threads go on. Then the
/// collector resumes, catches up exactly, and profiles again.
fn stall(options: &Options) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let out = options.out()?;
    // A small buffer, so that it fills within the stall.
    let agent = Agent::builder()
        .frequency_hz(999)
        .buffer_records(64)
        .start()?;
    let stop = AtomicBool::new(false);
    let rounds = [AtomicU64::new(0), AtomicU64::new(0)];
    let progress = || rounds.each_ref().map(|r| r.load(Relaxed));
    std::thread::scope(|scope| -> Result<()> {
        for (i, counter) in rounds.iter().enumerate() {
            let stop = &stop;
            std::thread::Builder::new()
                .name(format!("burner-{i}"))
                .spawn_scoped(scope, move || {
                    while !stop.load(Relaxed) {
                        std::hint::black_box(stall_burn(50));
                        counter.fetch_add(1, Relaxed);
                    }
                })?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let before = (agent.stats(), progress());
        let holder = std::thread::spawn(|| hold_loader_lock(Duration::from_secs(3)));
        // The collector blocks at its next cycle, within 100 ms.
        std::thread::sleep(Duration::from_millis(200));
        let stuck = (agent.stats(), progress());
        holder.join().map_err(|_| "the lock holder panicked")?;
        let released = (agent.stats(), progress());
        println!("buffer_records=64");
        println!("collected_before={}", before.0.samples_collected);
        println!("collected_stuck={}", stuck.0.samples_collected);
        println!("collected_released={}", released.0.samples_collected);
        println!("buffer_full_before={}", before.0.dropped.buffer_full);
        println!("buffer_full_released={}", released.0.dropped.buffer_full);
        for i in 0..2 {
            println!("rounds_during_stall.{i}={}", released.1[i] - stuck.1[i]);
        }
        // Sampling goes on: a profile recorded now has the burners in it.
        let profile = agent.record(Duration::from_millis(500))?;
        save(&profile, &out)?;
        stop.store(true, Relaxed);
        Ok(())
    })?;
    // With nothing running, the collector must account for every sample the
    // handler published: none lost in the jam.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stats = agent.stats();
    while stats.samples_collected != stats.samples && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        stats = agent.stats();
    }
    println!("final_samples={}", stats.samples);
    println!("final_collected={}", stats.samples_collected);
    print_stats(&agent);
    Ok(())
}

// === serve: a long-running process for the HTTP endpoint tests ===

// The two differ in their last step so that the compiler cannot merge them.
#[inline(never)]
fn growing_function(units: u64) -> u64 {
    spin(units) ^ 0x67
}

#[inline(never)]
fn steady_function(units: u64) -> u64 {
    spin(units).rotate_left(3)
}

/// Starts the agent from the environment (the tests set `SMOLDER_HTTP_*`),
/// prints the endpoint's address, and keeps one thread busy until stdin
/// closes. After `--shift-after` seconds, `growing_function` gets three times
/// the work it had, so a diff across the shift shows it grown.
fn serve(options: &Options) -> Result<()> {
    let agent = match smolder::start() {
        Ok(agent) => agent,
        Err(error) => {
            println!("start_error={error}");
            return Ok(());
        }
    };
    let addr = agent.http_addr().ok_or("the HTTP endpoint is off")?;
    println!("http_addr={addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let shift_after = Duration::from_secs(options.number("shift-after", 3600)?);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || {
                let start = Instant::now();
                let mut rounds = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let growing = if start.elapsed() < shift_after {
                        10
                    } else {
                        30
                    };
                    std::hint::black_box(growing_function(growing) + steady_function(30));
                    rounds += 1;
                }
                rounds
            })?
    };
    // Runs until the test closes our stdin.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = worker.join().map_err(|_| "worker panicked")?;
    println!("rounds={rounds}");
    if options.has("print-stats") {
        print_stats(&agent);
    }
    Ok(())
}
