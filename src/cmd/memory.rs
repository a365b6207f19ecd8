//! Giving memory back after a peak.
//!
//! mimalloc frees a page to the system only when the thread that owns it
//! next allocates or frees, and a block freed by another thread (an event
//! the log writer dropped, a frame another connection sent) waits on its
//! owner's list until then. After a peak the workers go quiet and keep it
//! all: measured (`BENCHMARKS.md`, "Memory after a peak"), 15,000 buyers
//! at 23,000 messages/s for 5 s left 261 MB resident 30 s after every
//! conversation had closed, against 33 MB before (glibc's allocator kept as
//! much until `malloc_trim`). So a worker about to park collects its heap,
//! at most once every [`EVERY`]: under load that is a few microseconds
//! every ten seconds (no change in CPU per message, three pairs), and after
//! the peak it gives back what the closed conversations held: 53 MB. The
//! collect that does so took 10-18 ms, on a worker with nothing else to do.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often at most a worker collects.
const EVERY: Duration = Duration::from_secs(10);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For tokio's `on_thread_park`: runs on the worker that is about to
/// park, which is the thread whose heap `mi_collect` collects.
pub fn collect_when_idle() {
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.duration_since(t) < EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: mi_collect takes no pointers and may be called on any
        // thread at any time; `false` frees what is already free (no
        // forced release of the thread's caches).
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}
