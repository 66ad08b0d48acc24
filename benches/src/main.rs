use std::time::{Duration, Instant};

extern "C" fn empty(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn raise_self() {
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        info.si_signo = libc::SIGPROF;
        info.si_code = libc::SI_TIMER;
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGPROF,
            &raw mut info,
        );
    }
}

#[inline(never)]
fn nest(depth: u32, f: &dyn Fn(), n: u32) -> Duration {
    if depth == 0 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        return t.elapsed();
    }
    std::hint::black_box(nest(depth - 1, f, n)) + Duration::ZERO
}

fn measure(f: &dyn Fn()) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..40 {
        total += nest(50, f, 500);
        std::thread::sleep(Duration::from_millis(30));
    }
    total.as_nanos() as f64 / 20000.0
}

fn main() {
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = empty as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut());
    }
    for _ in 0..3 {
        println!("floor: {:.0} ns", measure(&raise_self));
    }
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut());
    }
    let agent = smolder::Agent::builder()
        .frequency_hz(1)
        .max_depth(
            std::env::var("DEPTH")
                .map(|d| d.parse().unwrap())
                .unwrap_or(128),
        )
        .start()
        .unwrap();
    for _ in 0..3 {
        println!(
            "smolder: {:.0} ns",
            measure(&|| {
                agent.__sample_current_thread();
            })
        );
    }
    let s = agent.stats();
    println!(
        "p50 {:?} p99 {:?} samples {} dropped {:?}",
        s.handler_cost_p50_ns, s.handler_cost_p99_ns, s.samples, s.dropped
    );
}
