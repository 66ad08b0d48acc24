//! One name for "this target can sample": `cfg(smolder_sampling)`.
//!
//! Sampling needs Linux on x86_64 or aarch64. Rather than repeat that
//! condition on every item compiled only there, the build script states it
//! once. `--cfg smolder_unsupported` builds the unsupported variant on a
//! supported machine, which is how CI checks that it still compiles.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(smolder_sampling)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let forced_off = std::env::var_os("CARGO_CFG_SMOLDER_UNSUPPORTED").is_some();
    if os == "linux" && matches!(arch.as_str(), "x86_64" | "aarch64") && !forced_off {
        println!("cargo::rustc-cfg=smolder_sampling");
    }
}
