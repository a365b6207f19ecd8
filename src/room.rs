//! Waiting for room in a bounded queue that another task or thread empties.
//!
//! Two queues make the tasks that fill them wait at a peak rather than drop
//! what they bring: an agent's outbound queue (a buyer's task waits,
//! `server::outbox`) and the event log's (every client's next frame waits,
//! [`crate::store`]). Both need the same two halves: a waiter that cannot
//! miss a wake-up that comes between looking at the queue and sleeping,
//! and an emptying side that pays one load on its hot path while nobody
//! waits. Getting that order right once is the point of this module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Where waiters for room sleep and the emptying side wakes them.
#[derive(Debug, Default)]
pub(crate) struct Room {
    notify: Notify,
    /// Someone sleeps here: the emptying side wakes them after it makes
    /// room, and otherwise does nothing.
    wanted: AtomicBool,
}

impl Room {
    /// Resolves with `ready()`'s value once it gives one, looking again
    /// after every [`Room::freed`] or [`Room::wake_all`]. Cancel-safe: a
    /// caller that gives up (a timeout) just drops the future.
    pub(crate) async fn until<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is set and the queue looked at
            // again, so a wake-up in between is not missed.
            notified.as_mut().enable();
            self.wanted.store(true, Ordering::SeqCst);
            if let Some(t) = ready() {
                return t;
            }
            notified.await;
        }
    }

    /// [`Room::until`], for as long as the emptying side makes progress:
    /// every `within` it looks whether `progress()` moved since the last
    /// look, and gives up (`None`) once a window passes without it, or
    /// after `windows` windows in all. Why not a plain timeout: at a peak
    /// the emptying side is behind for longer than any fixed wait while
    /// still working, and waiters that all gave up at once lost what they
    /// carried (BENCHMARKS.md, "A minute beyond the maximum").
    pub(crate) async fn while_progressing<T>(
        &self,
        mut ready: impl FnMut() -> Option<T>,
        within: Duration,
        progress: impl Fn() -> u64,
        windows: u32,
    ) -> Option<T> {
        let mut seen = progress();
        for _ in 0..windows {
            if let Ok(t) = tokio::time::timeout(within, self.until(&mut ready)).await {
                return Some(t);
            }
            let now = progress();
            if now == seen {
                return None;
            }
            seen = now;
        }
        None
    }

    /// The queue has more room: wakes whoever waits (a load, while nobody
    /// does). The caller made the room with a `SeqCst` operation, or one
    /// at least as strong on the hardware (the channel's permits are
    /// locked instructions on x86): with the waiter's `SeqCst` store of
    /// `wanted` and its `SeqCst` look, one of the two sees the other.
    pub(crate) fn freed(&self) {
        // SeqCst, not Relaxed (found by review): a relaxed load may be
        // ordered before the room was made on weak-memory hardware, and
        // miss a waiter who missed the room. A plain load on x86.
        if self.wanted.load(Ordering::SeqCst) && self.wanted.swap(false, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// Wakes every waiter whether or not there is room: something they
    /// look at besides the room changed (the connection is closing).
    pub(crate) fn wake_all(&self) {
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room made just after the waiter looked and found none (here: by the
    /// look itself, the narrowest gap there is) still wakes it. A waiter
    /// that registered after looking would sleep through it; the timeout
    /// fails that.
    #[tokio::test(start_paused = true)]
    async fn room_made_right_after_the_look_is_not_missed() {
        let room = Room::default();
        let mut looks = 0;
        let woke = tokio::time::timeout(
            Duration::from_secs(1),
            room.until(|| {
                looks += 1;
                if looks == 1 {
                    room.freed();
                    return None;
                }
                Some(looks)
            }),
        )
        .await;
        assert_eq!(woke, Ok(2));
    }
}
