//! Giving memory back after a peak.
//!
//! mimalloc frees a page to the system only when the thread that owns it
//! next allocates or frees, and a block freed by another thread (an event
//! the log writer dropped, a frame another connection sent) waits on its
//! owner's list until then. After a peak the workers go quiet and keep it
//! all: measured (docs/benchmarks-history.md, "Memory after a peak"),
//! 15,000 buyers at 23,000 messages/s for 5 s still held 261,456 KiB 30 s
//! after the load ended (their conversations closed 5 s after it), against
//! 32,508 KiB before; glibc's allocator kept as much until `malloc_trim`.
//! So a worker collects its heap (`mi_collect`) as it parks, when it has
//! been quiet: its previous park lasted [`QUIET`] or more, or it has not
//! collected for [`AT_LEAST_EVERY`] (a load that falls from a peak to a
//! steady trickle may never leave a worker quiet that long). After that
//! peak: 53,152 KiB.
//!
//! The collect that gives a peak back takes 10-18 ms, and tokio runs this
//! hook while the worker still holds its place (its queue waits, nothing
//! else is told to take it): hence only when quiet, where a stall meets
//! few messages; the fallback's collects under a steady load find little
//! to free and take microseconds (CPU per message unchanged, three pairs).
//! A light load that follows a peak meets the big collect as one slowest
//! message of 5.0-14 ms, its p99 unchanged (`FALL=1 scripts/bench.sh`;
//! docs/benchmarks-history.md "A falling load after a peak").

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A park this long says the worker has been quiet.
const QUIET: Duration = Duration::from_secs(1);
/// A worker collects at least this often, quiet or not.
const AT_LEAST_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
    static PARKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    static LAST_PARK: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// For tokio's `on_thread_park`: runs on the worker that is about to
/// park, which is the thread whose heap `mi_collect` collects.
pub fn collect_when_quiet() {
    let now = Instant::now();
    PARKED_AT.with(|p| p.set(Some(now)));
    let due = LAST_COLLECT.with(|last| {
        let quiet = LAST_PARK.with(Cell::get) >= QUIET;
        let overdue = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= AT_LEAST_EVERY);
        let due = quiet || overdue;
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mi_collect takes no pointers and collects the calling
        // thread's heap; it must not run inside the allocator or a signal
        // handler, and tokio calls this hook from neither. `false` frees
        // what is already free (no forced release of the thread's caches).
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// For tokio's `on_thread_unpark`: how long the park lasted.
pub fn note_unpark() {
    if let Some(at) = PARKED_AT.with(Cell::take) {
        LAST_PARK.with(|l| l.set(at.elapsed()));
    }
}
