//! Scratch workload for manual experiments (replaced by proper fixtures).
use std::time::{Duration, Instant};

#[inline(never)]
fn hot_seventy(units: u64) -> u64 {
    spin(units * 7)
}

#[inline(never)]
fn cold_thirty(units: u64) -> u64 {
    spin(units * 3)
}

#[inline(always)]
fn spin(n: u64) -> u64 {
    let mut x = 0x9E3779B97F4A7C15u64;
    for i in 0..n * 1000 {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545F4914F6CDD1D);
    }
    std::hint::black_box(x)
}

macro_rules! chain {
    ($name:ident -> $next:ident $(, $rest_name:ident -> $rest_next:ident)*) => {
        #[inline(never)]
        fn $name(deadline: Instant) -> u64 { std::hint::black_box($next(deadline)) + 1 }
        chain!($($rest_name -> $rest_next),*);
    };
    () => {};
}
chain!(l01 -> l02, l02 -> l03, l03 -> l04, l04 -> l05, l05 -> l06, l06 -> l07, l07 -> l08, l08 -> l09,
       l09 -> l10, l10 -> l11, l11 -> l12, l12 -> l13, l13 -> l14, l14 -> l15, l15 -> l16, l16 -> l17,
       l17 -> l18, l18 -> l19, l19 -> l20, l20 -> l21, l21 -> work);

#[inline(never)]
fn work(deadline: Instant) -> u64 {
    let mut acc = 0;
    while Instant::now() < deadline {
        acc += hot_seventy(10);
        acc += cold_thirty(10);
    }
    acc
}

fn main() -> Result<(), smolder::Error> {
    let hz: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(99);
    let threads: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let agent = smolder::Agent::builder().frequency_hz(hz).start()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("busy-{i}"))
                .spawn(move || l01(deadline))
                .unwrap()
        })
        .collect();
    let profile = agent.record(Duration::from_millis(2500))?;
    for w in workers {
        w.join().unwrap();
    }
    println!("{}", profile.folded());
    println!("{:#?}", agent.stats());
    Ok(())
}
