//! What our timers' signals carry in `sigev_value`, so the handler can tell
//! them from anyone else's and knows which thread and which sampling period
//! each was for:
//!
//! | bits  | 63..48 | 47..40           | 39..32     | 31..0     |
//! |-------|--------|------------------|------------|-----------|
//! | field | tag    | agent generation | rate epoch | thread id |
//!
//! The rate epoch changes whenever the sampling rate does (timers are then
//! re-created), so every sample is weighted with the period it was taken at.

const TAG: u64 = 0x5301;

pub(crate) fn encode(agent: u8, rate_epoch: u8, tid: i32) -> u64 {
    TAG << 48 | u64::from(agent) << 40 | u64::from(rate_epoch) << 32 | u64::from(tid as u32)
}

/// The (rate epoch, thread id) of a value from our agent `agent`.
///
/// # Signal safety
/// Arithmetic only.
#[inline(always)]
pub(crate) fn decode(value: u64, agent: u8) -> Option<(u8, i32)> {
    (value >> 40 == TAG << 8 | u64::from(agent))
        .then_some(((value >> 32) as u8, value as u32 as i32))
}
