//! The node's wall clock, in the unit every stored time uses, with a process-wide shift
//! that tests use to make time pass without waiting (an injected clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds added to the system clock (0 unless a test moved time forward).
static SHIFT_MS: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the Unix epoch (0 if the clock is before it), plus the shift.
pub fn now_ms() -> u64 {
    let system = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    system.saturating_add(SHIFT_MS.load(Ordering::Relaxed))
}

/// Moves this process's clock `ms` ahead of the system clock (from then on; not
/// cumulative). For tests: every message a node publishes, reads, delivers or screens is
/// judged by this clock, while Redis's `TIME` (used by `sh_publish_raw_v1`) is not moved,
/// so a message published through Redis looks `ms` older to the node. Never called by the
/// node itself.
pub fn shift_for_tests(ms: u64) {
    SHIFT_MS.store(ms, Ordering::Relaxed);
}
