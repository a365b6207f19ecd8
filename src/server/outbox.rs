//! Each connection's bounded outbound queue: the [`Outbox`] other tasks
//! fill, the [`Inbox`] the connection's task drains, the [`Control`] that
//! carries its close order, and the [`capture`] of the frames a task queues while
//! it handles one of its own.
//!
//! A client that stops reading is disconnected rather than allowed to grow
//! the server's memory; an agent's queue, which buyers' tasks fill at a
//! peak, makes those tasks wait for room instead and keeps the frames that
//! cannot wait (alarms, colleagues' moves) beside it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use super::hub::Render;
use crate::protocol::{ErrorCode, Refusal};
use crate::room::Room;

/// A frame in a client's queue.
pub(crate) struct Queued {
    pub frame: Frame,
    /// Nobody waits on it: the connection may hold it briefly so it leaves
    /// in one write with the next frame (see `conn::DEFER`).
    pub deferred: bool,
}

/// A queued frame: text ready to write, or a large frame the connection
/// renders as it takes it off its queue (see [`Render`]).
pub(crate) enum Frame {
    Text(Utf8Bytes),
    Later(Box<Render>),
}

impl Frame {
    /// The frame's text, rendered now if it was queued unrendered.
    pub(crate) fn text(self) -> Utf8Bytes {
        match self {
            Frame::Text(t) => t,
            Frame::Later(r) => r.render(),
        }
    }

    /// The text of a frame queued rendered.
    #[cfg(test)]
    fn as_str(&self) -> &str {
        match self {
            Frame::Text(t) => t.as_str(),
            Frame::Later(_) => panic!("a frame queued unrendered"),
        }
    }
}

/// The sending side of one client's bounded outbound queue.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Queued>,
    control: Arc<Control>,
    pub(crate) conn: u64,
}

/// Out-of-band orders to a connection task (close now).
#[derive(Default)]
pub(crate) struct Control {
    pub(crate) notify: Notify,
    order: Mutex<Option<CloseOrder>>,
    /// Set once an order is in `order`, before `notify` is woken: what the
    /// connection loop reads on its hot path instead of the lock.
    ordered: AtomicBool,
    kicked: AtomicBool,
    /// An agent's connection: a buyer's task that finds its queue nearly
    /// full waits for room (see [`capture`]) instead of the agent being
    /// dropped as a slow reader.
    agent: AtomicBool,
    /// Writes to the client completed: whether it reads, for a buyer's
    /// task waiting for room (see [`Outbox::send_when_room`]).
    pub(crate) writes: AtomicU64,
    /// Where buyers' tasks wait for room in this queue, freed after each
    /// write.
    room: Room,
    /// An agent's frames that found the queue full and cannot wait (see
    /// [`Outbox::spill`]), oldest first; at most the queue's capacity.
    spill: Mutex<VecDeque<Queued>>,
    /// Whether `spill` holds frames: while it does, every frame for this
    /// connection goes behind them, and buyers' tasks wait.
    spilled: AtomicBool,
    /// The connection's task, when it found its channel empty: woken by the
    /// first frame spilled (which reaches a channel that may have emptied
    /// since the producer found it full).
    spill_waker: AtomicWaker,
}

impl Control {
    pub(crate) fn take(&self) -> Option<CloseOrder> {
        if !self.ordered() {
            return None;
        }
        self.order.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether a close order has been given.
    pub(crate) fn ordered(&self) -> bool {
        self.ordered.load(Ordering::Acquire)
    }

    /// The connection's task wrote to its client (the client reads), having
    /// taken what it wrote off its queue: room for waiting buyers' tasks.
    pub(crate) fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.room.freed();
    }
}

/// How a connection should end.
#[derive(Debug, Clone)]
pub(crate) struct CloseOrder {
    /// An error frame to send first.
    pub error: Option<Refusal>,
    pub code: CloseCode,
    pub reason: String,
    /// Write what is still queued before closing (not for a client that
    /// does not read).
    pub flush: bool,
}

impl CloseOrder {
    pub(crate) fn refused(r: Refusal) -> CloseOrder {
        // 1013 "try again later" (RFC 6455 7.4.1) for the refusals that are
        // about the server's load, not the client's request: a shop at its
        // cap of open conversations, a buyer on a place kept for staff.
        // Not for `too_many_attempts`: that is about the account, its
        // wait is the frame's `retry_after`, and clients reconnect on 1013
        // on their own schedule; it closes with 1008 as `bad_token` does.
        let code = match r.code {
            // A resume over its conversation's rate (`super::rate`) too:
            // a page reconnecting at once would only be refused again.
            ErrorCode::ShopBusy | ErrorCode::ServerBusy | ErrorCode::RateLimited => {
                CloseCode::Again
            }
            _ => CloseCode::Policy,
        };
        CloseOrder {
            reason: r.code.as_str().to_string(),
            error: Some(r),
            code,
            flush: true,
        }
    }
}

impl Outbox {
    pub(crate) fn new(conn: u64, capacity: usize) -> (Outbox, Inbox, Arc<Control>) {
        let (tx, rx) = mpsc::channel(capacity);
        let control = Arc::new(Control::default());
        (
            Outbox {
                tx,
                control: control.clone(),
                conn,
            },
            Inbox {
                rx,
                control: control.clone(),
            },
            control,
        )
    }

    /// Queues a frame; a full queue means the client stopped reading, and it
    /// is disconnected rather than allowed to grow our memory (an agent's
    /// frames first fill the spill beside it, see [`Outbox::spill`]).
    pub(crate) fn push(&self, frame: Utf8Bytes) -> bool {
        self.queue(frame, false)
    }

    /// Queues a frame, `deferred` if the client does not wait on it (see
    /// [`Queued`]).
    pub(crate) fn queue(&self, frame: Utf8Bytes, deferred: bool) -> bool {
        self.enqueue(Queued {
            frame: Frame::Text(frame),
            deferred,
        })
    }

    /// Queues `q` as [`Outbox::queue`] does.
    pub(crate) fn enqueue(&self, q: Queued) -> bool {
        // A frame for the connection whose task is queueing it (a receipt,
        // an answer) skips the channel, and a buyer's frame for an agent
        // whose queue is nearly full waits with the buyer's task: see
        // [`capture`].
        let q = match CAPTURE.with(|c| c.borrow_mut().keep(self, q)) {
            None => return true,
            Some(q) => q,
        };
        if self.control.spilled.load(Ordering::SeqCst) {
            return self.spill(q);
        }
        match self.tx.try_send(q) {
            Ok(()) => true,
            Err(TrySendError::Full(q)) if self.control.agent.load(Ordering::Relaxed) => {
                self.spill(q)
            }
            Err(TrySendError::Full(_)) => {
                self.kick("a frame found the queue full");
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Keeps a frame for an agent whose queue is full, behind the queue,
    /// when nothing can wait for room: the clock's alarms and holding
    /// replies (the timer's task), a colleague's moved conversations.
    /// Bounded by the queue's capacity: an agent with both full does not
    /// read, and is dropped. The connection takes the spill one frame at a
    /// time once its channel is empty (see [`Inbox`]).
    ///
    /// Why: at a peak, waiting buyers' tasks keep an agent's queue at its
    /// reserve, and one pass of the timer can fire more alarms for one
    /// agent than the reserve holds (many buyers who wrote in the same
    /// moment); the agent, reading everything, was dropped as a slow
    /// reader (once in four minute-long runs at 1.4 times the maximum with
    /// a queue of 256, all 8 agents; BENCHMARKS.md, "A minute beyond the
    /// maximum"). Kept beside the channel rather than in a larger one: it
    /// costs nothing until a burst, and the channel's fullness is still
    /// what makes buyers wait.
    fn spill(&self, q: Queued) -> bool {
        let spill = self.control.spill.lock().unwrap_or_else(|e| e.into_inner());
        let q = if spill.is_empty() {
            // The connection took the spill since: the queue may have room.
            match self.tx.try_send(q) {
                Ok(()) => return true,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(q)) => q,
            }
        } else {
            q
        };
        self.keep_beside(spill, q)
    }

    /// [`Outbox::spill`]'s second half: `q` goes behind what `spill` holds.
    fn keep_beside(
        &self,
        mut spill: std::sync::MutexGuard<'_, VecDeque<Queued>>,
        q: Queued,
    ) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if spill.len() >= self.tx.max_capacity() {
            drop(spill);
            self.kick("its queue and the frames kept beside it are full");
            return false;
        }
        spill.push_back(q);
        let first = spill.len() == 1;
        self.control.spilled.store(true, Ordering::SeqCst);
        drop(spill);
        if first {
            // Its task may have found the channel empty since this frame
            // found it full, and gone to sleep: the spill's first frame
            // wakes it.
            self.control.spill_waker.wake();
            debug!(
                conn = self.conn,
                "agent's queue full: frames kept beside it"
            );
        }
        true
    }

    /// Marks this connection as an agent's (see [`Control`]).
    pub(crate) fn set_agent(&self) {
        self.control.agent.store(true, Ordering::Relaxed);
    }

    /// Room in the queue below which a buyer's task waits: the last quarter
    /// is kept for everything else (the clock's alarms, colleagues' moves),
    /// which cannot wait and would find a queue that waiting buyers keep
    /// full.
    fn reserve(&self) -> usize {
        self.tx.max_capacity() / 4
    }

    /// Whether a buyer's frame for this connection should wait for room.
    fn should_wait(&self) -> bool {
        self.control.agent.load(Ordering::Relaxed) && !self.room_for_buyers()
    }

    /// Whether a buyer's frame may go into the queue now: more than the
    /// reserve is free, and nothing is kept beside the queue (it goes
    /// behind those frames, not ahead of them).
    fn room_for_buyers(&self) -> bool {
        self.tx.capacity() > self.reserve() && !self.control.spilled.load(Ordering::Acquire)
    }

    /// Sends a frame held back by [`capture`] once the queue has more than
    /// its reserve free. A connection that wrote nothing to its client
    /// over a whole `within` of the wait (checked at the end of each) is
    /// dropped as a slow reader; one that does write is waited for on,
    /// however long the room takes. A connection closed or ordered closed
    /// ends the wait, the frame dropped with it.
    ///
    /// Why not a plain timeout: beyond the rate the server can match, an
    /// agent's task is one among thousands of buyers' tasks in tokio's run
    /// queue, and a queue that stays nearly full while the agent reads
    /// everything it is sent says the server is behind, not the agent.
    ///
    /// Waiting holds the buyer's task, so its socket is not read meanwhile:
    /// buyers beyond what the agents' connections can take are slowed down
    /// (TCP pushes back) rather than their agents disconnected.
    pub(crate) async fn send_when_room(&self, q: Queued, within: Duration) {
        // Waiting on the channel for `reserve + 1` permits would not do:
        // tokio's semaphore hands a waiter every permit free at once and
        // queues it for the rest, so while one buyer waited the queue looked
        // full to everyone else, and the next alarm or colleague's notice
        // dropped an agent that read everything (all 8 agents within 5 ms,
        // in 4 of 7 minute-long runs at 1.4 times the maximum; BENCHMARKS.md,
        // "A minute beyond the maximum"). Looking at the room takes nothing.
        // Every waiter is woken after each write while any waits: at that
        // peak hundreds per agent, a write carrying up to 64 frames.
        let mut q = Some(q);
        let mut sent = || {
            // A connection being closed takes nothing more (found by
            // review: a waiter slept out its whole wait on a closed one,
            // past the shutdown's grace, then logged it as a slow reader).
            if self.control.ordered() {
                return Some(());
            }
            if !self.room_for_buyers() {
                return None;
            }
            let Some(frame) = q.take() else {
                return Some(());
            };
            match self.tx.try_send(frame) {
                Ok(()) | Err(TrySendError::Closed(_)) => Some(()),
                // Taken meanwhile by another task: wait again.
                Err(TrySendError::Full(back)) => {
                    q = Some(back);
                    None
                }
            }
        };
        // Progress is a write to the agent: however slowly it goes, there
        // is no limit to the windows.
        let writes = || self.control.writes.load(Ordering::Relaxed);
        let room = &self.control.room;
        tokio::select! {
            biased;
            _ = self.tx.closed() => {}
            sent = room.while_progressing(&mut sent, within, writes, u32::MAX) => {
                if sent.is_none() && !self.control.ordered() {
                    self.kick("nothing written while a buyer waited for room");
                }
            }
        }
    }

    /// Drops a client that does not read (once); `how` says which test
    /// found it, for the operator.
    fn kick(&self, how: &str) {
        if !self.control.kicked.swap(true, Ordering::Relaxed) {
            warn!(
                conn = self.conn,
                how, "client does not read its messages (outbound queue full): disconnecting it"
            );
            self.close(CloseOrder {
                error: None,
                code: CloseCode::Policy,
                reason: "too slow: outbound queue full".into(),
                flush: false,
            });
        }
    }

    pub(crate) fn refuse(&self, r: &Refusal) {
        self.push(r.to_json().into());
    }

    /// Orders the connection closed (the first order wins).
    pub(crate) fn close(&self, order: CloseOrder) {
        {
            let mut slot = self.control.order.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(order);
            }
        }
        self.control.ordered.store(true, Ordering::Release);
        self.control.notify.notify_one();
        // Buyers waiting for room here stop waiting.
        self.control.room.wake_all();
    }
}

/// The receiving side of one client's queue, for its connection's task:
/// the channel, then what spilled beside it (see [`Outbox::spill`]).
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Queued>,
    control: Arc<Control>,
}

impl Inbox {
    /// The next frame, as [`mpsc::Receiver::poll_recv`]; `None` once every
    /// sender is gone and nothing is kept beside the queue.
    pub(crate) fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Queued>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(q)) => return Poll::Ready(Some(q)),
            // Every sender gone: what was kept beside the queue still goes.
            Poll::Ready(None) => return Poll::Ready(self.unspill()),
            Poll::Pending => {}
        }
        if self.control.agent.load(Ordering::Relaxed) {
            // Before the spill is looked at: a frame spilled after the look
            // wakes this task (the channel, empty, would not).
            self.control.spill_waker.register(cx.waker());
        }
        match self.unspill() {
            Some(q) => Poll::Ready(Some(q)),
            None => Poll::Pending,
        }
    }

    /// The next frame queued, if any.
    pub(crate) fn try_recv(&mut self) -> Option<Queued> {
        match self.rx.try_recv() {
            Ok(q) => Some(q),
            Err(_) => self.unspill(),
        }
    }

    /// Waits for the next frame, as [`mpsc::Receiver::recv`].
    pub(crate) async fn recv(&mut self) -> Option<Queued> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The oldest frame kept beside the queue, once the channel is empty.
    ///
    /// Order: while the spill holds frames, no frame from a producer that
    /// saw it do so enters the channel; what the channel still gets came
    /// from a producer that looked before the spill began, and goes first.
    /// The channel is looked at under the lock: a producer's next frame,
    /// spilled behind one of its own still in the channel, waits for the
    /// lock until this look is over. The spill is left empty only under the
    /// lock, with its flag cleared, so one producer's frames never pass
    /// each other between the two.
    fn unspill(&mut self) -> Option<Queued> {
        if !self.control.spilled.load(Ordering::SeqCst) {
            return None;
        }
        let mut spill = self.control.spill.lock().unwrap_or_else(|e| e.into_inner());
        if !self.rx.is_empty() {
            // Sent since the channel was found empty: it goes first (found
            // by review: `None` here ended a flush with frames queued).
            return self.rx.try_recv().ok();
        }
        let q = spill.pop_front();
        if spill.is_empty() {
            self.control.spilled.store(false, Ordering::SeqCst);
            // A burst's memory is not kept for the next one.
            *spill = VecDeque::new();
        }
        q
    }
}

impl Drop for Inbox {
    /// The connection is over: nothing more is taken, and what was kept
    /// beside its queue goes now rather than with the last `Outbox` clone.
    fn drop(&mut self) {
        self.rx.close();
        let mut spill = self.control.spill.lock().unwrap_or_else(|e| e.into_inner());
        *spill = VecDeque::new();
        self.control.spilled.store(false, Ordering::SeqCst);
        // Nor the finished task, through its waker.
        drop(spill);
        self.control.spill_waker.take();
    }
}

/// Frames a connection task queues for itself while it handles a frame,
/// and a buyer task's frames that wait for room in an agent's queue.
#[derive(Default)]
struct Capture {
    conn: Option<u64>,
    frames: Vec<Queued>,
    /// The capturing task may wait (a buyer's).
    may_wait: bool,
    waiting: Vec<(Outbox, Queued)>,
}

impl Capture {
    /// Keeps `q` when it is for the capturing connection, or for an agent
    /// the capturing buyer's task is to wait for (its queue nearly full, or
    /// an earlier frame for it already waiting: the order holds); hands it
    /// back otherwise.
    fn keep(&mut self, to: &Outbox, q: Queued) -> Option<Queued> {
        if self.conn == Some(to.conn) {
            self.frames.push(q);
            None
        } else if self.may_wait
            && (to.should_wait() || self.waiting.iter().any(|(o, _)| o.conn == to.conn))
        {
            self.waiting.push((to.clone(), q));
            None
        } else {
            Some(q)
        }
    }
}

/// What a connection task's handling of one frame queued for later:
/// frames for itself, and (a buyer's task) frames waiting for room in an
/// agent's queue, each in order.
#[derive(Default)]
pub(crate) struct Captured {
    pub(crate) own: Vec<Queued>,
    pub(crate) waiting: Vec<(Outbox, Queued)>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Capture> = std::cell::RefCell::default();
}

/// Runs `f` (synchronous: nothing else runs on this thread meanwhile) and
/// returns, besides its result, the frames it queued for connection `conn`
/// in order, instead of sending them through that connection's channel;
/// with `may_wait` (a buyer's task), also the frames for agents whose
/// queue was nearly full, for the task to send with
/// [`Outbox::send_when_room`].
///
/// Why the first: a task that sends to its own channel wakes itself while
/// it runs, and tokio reschedules such a task as if it had yielded, waking
/// a parked worker to maybe take it: at 3,000 messages a second the agents'
/// receipts alone cost 1.8 `futex` calls and a context switch or two per
/// buyer message. Why the second: beyond the rate the server can match
/// (双11's first minute), buyers' frames pile up in the agents' queues
/// faster than the agents' tasks, which share the cores with thousands of
/// buyers' tasks, can write them, and every agent was dropped as a slow
/// reader within a fraction of a second though each one read at once.
/// Only buyers' tasks and ending tasks wait (see `conn::leave`), and only
/// for agents' queues, which no task waiting could be draining: no cycle,
/// no deadlock. An ending agent's task may wait on a colleague's queue
/// whose own task is ending too: a chain, which ends as each closes (a
/// waiter returns when the queue it waits on is closed or ordered to).
pub(crate) fn capture<R>(conn: u64, may_wait: bool, f: impl FnOnce() -> R) -> (R, Captured) {
    CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        c.conn = Some(conn);
        c.may_wait = may_wait;
    });
    // Reset even if `f` panics, so later frames on this thread are not
    // kept for a connection that is gone.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CAPTURE.with(|c| *c.borrow_mut() = Capture::default());
        }
    }
    let reset = Reset;
    let r = f();
    let captured = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        Captured {
            own: std::mem::take(&mut c.frames),
            waiting: std::mem::take(&mut c.waiting),
        }
    });
    drop(reset);
    (r, captured)
}

/// The capturing task turned out to be a buyer's (its `hello`): its frames
/// for agents may wait for room from now on, as a buyer's message's do
/// (see [`capture`]).
///
/// Why: a burst of buyers opening chats (10,000 in half a second in
/// `scripts/bench.sh`'s idle step) puts a `conversation_assigned` in one
/// agent's queue per buyer, from tasks that were not yet known to be
/// buyers', and the agent was dropped as a slow reader though it read.
pub(crate) fn capturing_for_a_buyer() {
    CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        if c.conn.is_some() {
            c.may_wait = true;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Frames a task queues for its own connection while capturing come
    /// back in order instead of through the channel; frames for others go
    /// through their channels; after the capture (even one that panicked)
    /// nothing is kept.
    #[test]
    fn capture_keeps_only_the_capturing_connections_frames() {
        let (me, mut my_rx, _) = Outbox::new(1, 8);
        let (other, mut other_rx, _) = Outbox::new(2, 8);
        let ((), Captured { own, .. }) = capture(1, false, || {
            me.push("a".into());
            other.push("x".into());
            me.queue("b".into(), true);
        });
        let own: Vec<(String, bool)> = own
            .into_iter()
            .map(|q| (q.frame.as_str().to_string(), q.deferred))
            .collect();
        assert_eq!(own, [("a".to_string(), false), ("b".to_string(), true)]);
        assert!(
            my_rx.try_recv().is_none(),
            "nothing went through my channel"
        );
        assert_eq!(other_rx.try_recv().unwrap().frame.as_str(), "x");

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            capture(1, false, || {
                me.push("lost".into());
                panic!("handler failed");
            })
        }));
        assert!(panicked.is_err());
        me.push("after".into());
        assert_eq!(my_rx.try_recv().unwrap().frame.as_str(), "after");
        let ((), Captured { own, .. }) = capture(1, false, || ());
        assert!(
            own.is_empty(),
            "nothing left over from the panicked capture"
        );
    }

    /// An agent's connection as the tests play it: every `pause`, takes a
    /// frame, writes it and says so, then lets a waiter look; the `n`
    /// frames' texts once done.
    fn agent_writing(
        mut rx: Inbox,
        control: &Arc<Control>,
        n: usize,
        pause: Duration,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let writer = control.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < n {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                got.push(rx.recv().await.unwrap().frame.as_str().to_string());
                writer.wrote();
                tokio::task::yield_now().await;
            }
            got
        })
    }

    fn texts(rx: &mut Inbox) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|q| q.frame.as_str().to_string())
            .collect()
    }

    /// A buyer's task holds back its frames for an agent whose queue is
    /// down to its reserve (in order, and behind the first one held even
    /// when room comes meanwhile), sends them once there is room, and
    /// nobody is dropped; frames for others and from tasks that cannot
    /// wait go straight on, into the reserve.
    #[tokio::test]
    async fn a_buyer_waits_for_room_in_an_agents_queue() {
        let (agent, mut agent_rx, control) = Outbox::new(1, 8);
        agent.set_agent();
        let (other, mut other_rx, _) = Outbox::new(2, 8);
        for i in 0..6 {
            assert!(agent.push(format!("q{i}").into()));
        }
        let ((), captured) = capture(9, true, || {
            agent.push("b1".into());
            other.push("x".into());
            // Room comes while b1 waits: b2 still goes behind it.
            assert_eq!(agent_rx.try_recv().unwrap().frame.as_str(), "q0");
            agent.push("b2".into());
        });
        assert!(captured.own.is_empty());
        assert_eq!(texts(&mut other_rx), ["x"]);
        let held: Vec<(u64, String)> = captured
            .waiting
            .iter()
            .map(|(o, q)| (o.conn, q.frame.as_str().to_string()))
            .collect();
        assert_eq!(held, [(1, "b1".into()), (1, "b2".into())]);
        // Not a buyer's task: into the reserve, no waiting, no drop.
        let (sent, other_task) = capture(3, false, || agent.push("nudge".into()));
        assert!(sent);
        assert!(other_task.waiting.is_empty());

        // The agent's connection: takes a frame, writes it, says so.
        let drain = agent_writing(agent_rx, &control, 8, Duration::ZERO);
        for (to, q) in captured.waiting {
            to.send_when_room(q, Duration::from_secs(10)).await;
        }
        assert_eq!(
            drain.await.unwrap(),
            ["q1", "q2", "q3", "q4", "q5", "nudge", "b1", "b2"]
        );
        assert!(!control.ordered(), "the agent was not dropped");
    }

    /// An agent's queue of `capacity` holding `queued` frames, and a buyer's
    /// frame `b1` for it held back to wait for room (`to`, `q`).
    struct Waiting {
        agent: Outbox,
        rx: Inbox,
        control: Arc<Control>,
        to: Outbox,
        q: Queued,
    }

    fn a_buyer_waiting(capacity: usize, queued: usize) -> Waiting {
        let (agent, rx, control) = Outbox::new(1, capacity);
        agent.set_agent();
        for i in 0..queued {
            assert!(agent.push(format!("q{i}").into()));
        }
        let (held, captured) = capture(9, true, || agent.push("b1".into()));
        assert!(held, "queued to wait, not refused");
        let (to, q) = captured.waiting.into_iter().next().unwrap();
        Waiting {
            agent,
            rx,
            control,
            to,
            q,
        }
    }

    /// An agent to whom nothing is written for the whole wait is
    /// dropped as a slow reader; a queue that is merely full is dropped at
    /// once only for tasks that cannot wait.
    #[tokio::test(start_paused = true)]
    async fn an_agent_that_does_not_read_is_dropped_after_the_wait() {
        let Waiting {
            rx: _agent_rx,
            control,
            to,
            q,
            ..
        } = a_buyer_waiting(4, 4);
        let started = Instant::now();
        to.send_when_room(q, Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let order = control.take().expect("dropped");
        assert_eq!(order.reason, "too slow: outbound queue full");

        let (full, _rx, control) = Outbox::new(2, 1);
        full.set_agent();
        assert!(full.push("a".into()));
        assert!(full.push("b".into()), "kept beside the queue");
        assert!(!control.ordered());
        assert!(!full.push("c".into()), "no room and nobody to wait");
        assert!(control.ordered());
    }

    /// Frames that cannot wait and find an agent's queue full are kept
    /// beside it, up to the queue's capacity; every later frame goes behind
    /// them even once the queue has room, and a buyer's task waits while
    /// any are kept. Once they are taken, frames use the queue again. A
    /// buyer's queue has nothing beside it: full, it drops the buyer.
    #[test]
    fn frames_that_cannot_wait_are_kept_beside_a_full_queue_in_order() {
        let (agent, mut rx, control) = Outbox::new(1, 3);
        agent.set_agent();
        for f in ["q0", "q1", "q2", "s0", "s1"] {
            assert!(agent.push(f.into()), "{f}");
        }
        assert!(!control.ordered());
        // Room in the queue now, but s0 and s1 are older than n0.
        assert_eq!(rx.try_recv().unwrap().frame.as_str(), "q0");
        assert!(agent.push("n0".into()));
        let (held, captured) = capture(9, true, || agent.push("b0".into()));
        assert!(held);
        assert_eq!(captured.waiting.len(), 1, "a buyer's task waits");
        assert_eq!(texts(&mut rx), ["q1", "q2", "s0", "s1", "n0"]);
        assert!(agent.push("n1".into()));
        assert_eq!(texts(&mut rx), ["n1"], "through the queue again");

        // Queue and spill full: a client that does not read.
        for f in ["a", "b", "c", "d", "e", "f"] {
            assert!(agent.push(f.into()), "{f}");
        }
        assert!(!agent.push("g".into()));
        assert!(control.ordered());

        let (buyer, _rx, control) = Outbox::new(2, 1);
        assert!(buyer.push("a".into()));
        assert!(!buyer.push("b".into()));
        assert!(control.ordered());
    }

    /// A frame that reached the channel between the connection's look at it
    /// and its taking the spill's lock (from a producer that looked at the
    /// spill before it held anything) is taken first, not missed: a `None`
    /// there ended a close's flush with frames still queued. That
    /// producer's next frame, which finds the spill holding frames, goes
    /// behind them, and its two frames keep their order. Fails when the
    /// spill is taken without looking at the channel first (`s0` before
    /// `n0`). Single-threaded, it cannot stage a frame arriving between
    /// that look and the lock: the threaded test below does.
    #[test]
    fn a_frame_sent_while_the_spill_is_taken_is_not_missed() {
        let (agent, mut rx, _control) = Outbox::new(1, 2);
        agent.set_agent();
        for f in ["q0", "q1", "s0"] {
            assert!(agent.push(f.into()));
        }
        assert_eq!(rx.try_recv().unwrap().frame.as_str(), "q0");
        assert_eq!(rx.try_recv().unwrap().frame.as_str(), "q1");
        // The channel looked empty. Straight into it, as such a producer's `try_send` does.
        let sent = agent.tx.try_send(Queued {
            frame: Frame::Text("n0".into()),
            deferred: false,
        });
        assert!(sent.is_ok());
        assert!(agent.push("n1".into()), "kept beside the queue");
        assert_eq!(rx.unspill().unwrap().frame.as_str(), "n0");
        assert_eq!(texts(&mut rx), ["s0", "n1"]);
    }

    /// A producer on a thread of its own and the connection draining at
    /// once: every frame the producer had accepted arrives, in the order it
    /// queued them, and nothing else. The race `cbd2517` fixed is narrow:
    /// the channel must fill between the connection's look at it and its
    /// look at the spill's flag, and the producer's next frame reach the
    /// empty spill meanwhile. So the queue holds one frame, the connection
    /// spins rather than sleeps (a yield now and then, or on a busy machine
    /// it spun out whole time slices while the producer waited for its
    /// core: 43 s), and the rounds are long (bounded: four of 500,000
    /// frames, 2-4 s in a debug build). With the look under the lock taken
    /// out of [`Inbox::unspill`] it failed in 8 of 8 runs, in its first or
    /// second round (the frame from the spill first).
    #[test]
    fn a_producers_frames_keep_their_order_through_the_spill() {
        const ROUNDS: usize = 4;
        const FRAMES: usize = 500_000;
        for round in 0..ROUNDS {
            let (agent, mut rx, _control) = Outbox::new(1, 1);
            agent.set_agent();
            let done = Arc::new(AtomicBool::new(false));
            let producer = std::thread::spawn({
                let done = done.clone();
                move || {
                    let mut accepted = Vec::new();
                    for i in 0..FRAMES {
                        if agent.push(i.to_string().into()) {
                            accepted.push(i);
                        } else {
                            // Queue and spill full: a turn for the
                            // connection to catch up.
                            std::thread::yield_now();
                        }
                    }
                    done.store(true, Ordering::SeqCst);
                    accepted
                }
            });
            let mut got = Vec::new();
            let mut idle = 0u32;
            loop {
                // Read before the queue: once the producer is done, what
                // it queued is there to take.
                let finished = done.load(Ordering::SeqCst);
                match rx.try_recv() {
                    Some(q) => got.push(q.frame.as_str().parse::<usize>().unwrap()),
                    None if finished => break,
                    // Spinning looks again soonest; now and then a yield,
                    // for a producer that shares this core (a busy machine).
                    None => {
                        idle = idle.wrapping_add(1);
                        if idle.is_multiple_of(64) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
            let accepted = producer.join().unwrap();
            if got != accepted {
                let at = got.iter().zip(&accepted).position(|(g, a)| g != a);
                panic!(
                    "round {round}: {} frames accepted, {} received, first difference at {at:?}",
                    accepted.len(),
                    got.len()
                );
            }
        }
    }

    /// Frames kept beside the queue are still taken once every sender is
    /// gone, as those in the channel are. (The connection's task holds a
    /// sender of its own, so in the service this is for the tests, whose
    /// producers end; it was a `None` with the spill still full.)
    #[tokio::test]
    async fn what_was_kept_beside_the_queue_outlives_its_senders() {
        for wait in [false, true] {
            let (agent, mut rx, _control) = Outbox::new(1, 2);
            agent.set_agent();
            for f in ["q0", "q1", "s0", "s1"] {
                assert!(agent.push(f.into()));
            }
            drop(agent);
            let mut got = Vec::new();
            loop {
                let q = if wait { rx.recv().await } else { rx.try_recv() };
                let Some(q) = q else { break };
                got.push(q.frame.as_str().to_string());
            }
            assert_eq!(got, ["q0", "q1", "s0", "s1"], "waiting: {wait}");
        }
    }

    /// A connection that ends lets go of what was kept beside its queue at
    /// once (the hub may hold its `Outbox` a while longer), and nothing
    /// more is kept.
    #[test]
    fn an_ended_connection_keeps_nothing_beside_its_queue() {
        let (agent, rx, control) = Outbox::new(1, 1);
        agent.set_agent();
        for f in ["q0", "s0"] {
            assert!(agent.push(f.into()));
        }
        assert_eq!(control.spill.lock().unwrap().len(), 1);
        drop(rx);
        assert!(control.spill.lock().unwrap().is_empty());
        assert!(!agent.push("s1".into()));
        assert!(control.spill.lock().unwrap().is_empty());
    }

    /// A buyer's frame waiting for room goes behind the frames kept beside
    /// the queue, though the queue has room before they are taken. Fails
    /// when the wait looks only at the queue's room.
    #[tokio::test]
    async fn a_waiting_buyer_goes_behind_the_frames_kept_beside_the_queue() {
        let (agent, rx, control) = Outbox::new(1, 4);
        agent.set_agent();
        for f in ["q0", "q1", "q2", "q3", "s0"] {
            assert!(agent.push(f.into()), "{f}");
        }
        let (_, captured) = capture(9, true, || agent.push("b0".into()));
        let (to, q) = captured.waiting.into_iter().next().expect("b0 waits");
        let drain = agent_writing(rx, &control, 6, Duration::ZERO);
        to.send_when_room(q, Duration::from_secs(10)).await;
        assert_eq!(drain.await.unwrap(), ["q0", "q1", "q2", "q3", "s0", "b0"]);
        assert!(!control.ordered());
    }

    /// A connection that found its queue empty and went to sleep is woken
    /// by a frame kept beside the queue (the spill is reached only when the
    /// queue looked full to the producer, which may have emptied since).
    #[tokio::test]
    async fn a_frame_kept_beside_the_queue_wakes_its_connection() {
        let (agent, mut rx, control) = Outbox::new(1, 1);
        agent.set_agent();
        let conn = tokio::spawn(async move {
            let q = rx.recv().await.unwrap();
            (q.frame.as_str().to_string(), rx.try_recv().is_none())
        });
        // The connection finds its queue empty and sleeps.
        tokio::task::yield_now().await;
        assert!(!conn.is_finished());
        // As a producer does after it found the queue full and the
        // connection took everything meanwhile: into the spill.
        let spill = control.spill.lock().unwrap();
        assert!(agent.keep_beside(
            spill,
            Queued {
                frame: Frame::Text("s0".into()),
                deferred: false,
            }
        ));
        let got = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("woken by the spilled frame");
        assert_eq!(got.unwrap(), ("s0".to_string(), true));
    }

    /// While a buyer's task waits for room, the reserve stays free for the
    /// frames that cannot wait. Fails with a wait on the channel for
    /// `reserve + 1` permits, which takes every free one at once: the
    /// first alarm then found the queue full and dropped the agent.
    #[tokio::test(start_paused = true)]
    async fn the_reserve_stays_free_while_a_buyer_waits() {
        let Waiting {
            agent,
            rx: mut agent_rx,
            control,
            to,
            q,
        } = a_buyer_waiting(8, 6);
        let waiter =
            tokio::spawn(async move { to.send_when_room(q, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        // The reserve of 2 takes what cannot wait (the clock's alarms).
        let (sent, _) = capture(3, false, || {
            [agent.push("n1".into()), agent.push("n2".into())]
        });
        assert_eq!(sent, [true, true]);
        assert!(
            !control.ordered(),
            "dropped for the reserve a waiting buyer held"
        );
        let mut got = Vec::new();
        while got.len() < 9 {
            got.push(agent_rx.recv().await.unwrap().frame.as_str().to_string());
            control.wrote();
            tokio::task::yield_now().await;
        }
        waiter.await.unwrap();
        assert_eq!(got, ["q0", "q1", "q2", "q3", "q4", "q5", "n1", "n2", "b1"]);
        assert!(!control.ordered());
    }

    /// A buyer waiting for room stops waiting, at once and without calling
    /// anyone slow, when the agent's connection is ordered closed or ends
    /// (found by review: it slept out the whole wait, past the shutdown's
    /// grace, then logged a slow reader).
    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_agents_connection_does() {
        for ends_by_order in [true, false] {
            let Waiting {
                agent,
                rx: agent_rx,
                control,
                to,
                q,
            } = a_buyer_waiting(8, 6);
            let started = Instant::now();
            let waiter =
                tokio::spawn(async move { to.send_when_room(q, Duration::from_secs(10)).await });
            tokio::time::sleep(Duration::from_secs(1)).await;
            if ends_by_order {
                agent.close(CloseOrder::refused(Refusal::new(
                    ErrorCode::ServerBusy,
                    "bye",
                )));
            } else {
                drop(agent_rx);
            }
            waiter.await.unwrap();
            assert_eq!(
                started.elapsed(),
                Duration::from_secs(1),
                "ordered: {ends_by_order}"
            );
            assert!(!control.kicked.load(Ordering::Relaxed), "called slow");
        }
    }

    /// An agent whose task writes, but too slowly for the room a buyer
    /// waits for to come within the wait (the server behind at a peak,
    /// not the agent), is waited for, not dropped.
    #[tokio::test(start_paused = true)]
    async fn an_agent_that_reads_slowly_is_waited_for() {
        let Waiting {
            rx: agent_rx,
            control,
            to,
            q,
            ..
        } = a_buyer_waiting(8, 8);
        // One frame taken and written every 6 s: the room for b1 (the
        // reserve of 2 and one more) comes after 18 s.
        let drain = agent_writing(agent_rx, &control, 9, Duration::from_secs(6));
        let started = Instant::now();
        to.send_when_room(q, Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(18));
        assert!(!control.ordered(), "a reading agent was dropped");
        assert_eq!(drain.await.unwrap().last().unwrap(), "b1");
    }
}
