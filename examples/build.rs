//! Builds `plugin/plugin.c` into a shared library for the dlopen fixture.
//!
//! gcc (present on every supported Linux build machine) compiles it with
//! optimisation and debug info but without frame pointers, like a typical
//! distribution library. The path is handed to the fixture as
//! `SMOLDER_PLUGIN_PATH` at compile time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let library = out.join("libsmolder_plugin.so");
    println!("cargo::rerun-if-changed=plugin/plugin.c");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&compiler)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-o",
        ])
        .arg(&library)
        .arg("plugin/plugin.c")
        .status()
        .unwrap_or_else(|e| panic!("running {compiler} to build the dlopen fixture: {e}"));
    assert!(
        status.success(),
        "{compiler} failed to build plugin/plugin.c"
    );
    println!("cargo::rustc-env=SMOLDER_PLUGIN_PATH={}", library.display());
}
