//! Per-architecture pieces: reading the interrupted registers out of the
//! signal's `ucontext`, seeding the unwinder with them, and running a function
//! on a different stack. Everything else in the crate is architecture-neutral.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;
