//! One WebSocket connection: one task that reads frames, writes its queue,
//! pings a quiet peer and closes cleanly.
//!
//! A single task per connection (no split reader/writer) keeps an idle
//! connection down to the task, its queue and the socket buffers. Every
//! outgoing frame goes through the connection's bounded queue, so frames
//! keep their order whoever produced them (this connection's replies, other
//! connections' messages, the timer).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

use super::ask;
use super::hub::{AgentSession, BuyerSession, Ctx, Effects, Hub};
use super::outbox::{capture, CloseOrder, Control, Inbox, Outbox, Queued};
use super::rate::{rate_limited, Bucket};
use super::throttle::{Account, Outcome};
use super::{App, SUGGESTIONS};
use crate::config::Limits;
use crate::events::Kind;
use crate::phrases::Fill;
use crate::protocol::{
    self, ClientMsg, ErrorCode, Hello, Refusal, Role, ServerMsg, MAX_NOTE_CHARS,
};

/// Most frames written per flush.
const BATCH: usize = 64;
/// Time allowed for the closing handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a deferred frame (an agent's `reply_sent`) waits for another
/// frame to share its write. Each write to a socket costs a system call
/// and, on loopback, the peer's receive path; a receipt left alone until
/// its timer fires also costs a wake-up. An agent busy with a few hundred
/// buyer messages a second gets its next `buyer_message` within this, and
/// the receipt rides along (at 3,000 buyer messages a second over 8 agents,
/// 2 ms let most receipts go alone: 2.4 sends per buyer message against the
/// relay's 2.0, and 11,000 `futex` calls in 5 s against 4,600 at 20 ms,
/// which also makes exactly the relay's sends).
/// Twenty milliseconds on a receipt is nothing to a person; nothing anyone
/// waits on is ever held.
const DEFER: Duration = Duration::from_millis(20);

enum Session {
    Fresh,
    Buyer(BuyerSession),
    Agent(AgentSession),
}

/// Why the loop ended.
enum End {
    /// Close with this order.
    Close(CloseOrder),
    /// The peer closed or vanished; nothing more to say.
    Gone,
}

fn close(code: CloseCode, reason: impl Into<String>) -> End {
    End::Close(CloseOrder {
        error: None,
        code,
        reason: reason.into(),
        flush: true,
    })
}

/// Serves one upgraded connection until it ends. `staff_only`: the
/// connection holds a place of the staff reserve, and only an agent's
/// hello may keep it (see [`super::busy`]).
///
/// The waits of a peak and of a close are boxed where they are awaited: a
/// task's future is as large as its largest state, and every idle
/// connection pays for it. Held inline they made this future 3.9 KB (a
/// `draining` alone 1.5 KB), and the task crossed the allocator's 4 KiB
/// size class: 14.1 against 13.0 KB per idle connection. Boxed, they cost
/// an allocation only when they happen (`cargo +nightly rustc --release
/// --lib -- -Zprint-type-sizes` shows the sizes).
pub(crate) async fn serve<S>(mut ws: WebSocketStream<S>, app: App, peer: String, staff_only: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = app.config().limits.clone();
    let conn = app.next_conn_id();
    let (out, mut rx, control) = Outbox::new(conn, limits.outbound_queue);
    let mut session = Session::Fresh;
    let mut bucket = Bucket::for_limits(&limits, Instant::now());
    let mut shutdown = app.shutdown_rx();
    let hello_deadline = tokio::time::sleep(limits.hello_timeout);
    tokio::pin!(hello_deadline);
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut last_tick = last_heard;
    let mut ping_sent: Option<Instant> = None;
    debug!(conn, %peer, "websocket open");

    // Made once, not per turn of the loop: each `notified()` future takes
    // the `Notify`'s lock to register and again to deregister. Polled
    // through `armed`, each is polled once to register and then only once
    // its flag is set. `stop` is unconstrained: out of budget, a
    // cooperative future returns before it registers its waker, and would
    // then never be woken.
    let stop = tokio::task::coop::unconstrained(super::stopping(&mut shutdown));
    tokio::pin!(stop);
    let order = control.notify.notified();
    tokio::pin!(order);
    let mut stop_armed = false;
    let mut order_armed = false;
    // Frames taken from the queue but not written yet: deferred ones
    // waiting for company (until `hold` fires), in queue order.
    let mut held: Vec<Utf8Bytes> = Vec::new();
    let hold = tokio::time::sleep(DEFER);
    tokio::pin!(hold);
    let mut holding = false;

    // Which of the two streams `next_io` looks at first, and how many turns
    // the loop has taken.
    let mut turn = false;
    let mut turns: u32 = 0;
    // When this connection last wrote an urgent batch.
    let mut last_write = Instant::now() - GATHER_IF_BUSY;
    let mut gather = Gather::default();

    let end = 'conn: loop {
        // Biased, the streams (nearly) first: a turn that finds a frame to
        // read or write does not poll the branches after them, which are
        // rarely ready (each poll of a timer or a `Notify` costs, and there
        // are several turns per buyer message). While the streams stay busy
        // those branches are not polled at all, so every few turns their
        // conditions are checked directly; when the streams go quiet, the
        // select polls (and so registers) every branch before sleeping.
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(RARE_EVERY) {
            if app.is_stopping() {
                break close(CloseCode::Away, "server shutting down");
            }
            if let Some(order) = control.take() {
                break End::Close(order);
            }
        }
        let io = tokio::select! {
            biased;
            // The timers first, deferred frames' and the hello deadline
            // (only while the connection is fresh): they are cheap to poll,
            // and a wake-up for one should not poll the streams.
            _ = &mut hello_deadline, if matches!(session, Session::Fresh) => {
                break hello_timeout(&limits);
            }
            _ = &mut hold, if holding => {
                holding = false;
                if let Err(e) = write_batch(&mut ws, &mut held, limits.write_timeout).await {
                    debug!(conn, %peer, error = %e, "write failed");
                    break write_failed(&e);
                }
                control.wrote();
                continue;
            }
            io = next_io(&mut rx, &mut ws, &mut turn) => io,
            _ = armed(stop.as_mut(), &mut stop_armed, || app.is_stopping()) => {
                break close(CloseCode::Away, "server shutting down");
            }
            _ = armed(order.as_mut(), &mut order_armed, || control.ordered()) => match control.take() {
                Some(order) => break End::Close(order),
                None => {
                    order.set(control.notify.notified());
                    order_armed = false;
                    continue;
                }
            },
            _ = ping.tick() => {
                // A quiet interval earns a ping; a ping unanswered by the
                // next tick means the peer is gone.
                let now = Instant::now();
                if ping_sent.take().is_some_and(|sent| last_heard < sent) {
                    info!(conn, %peer, "no answer to ping: closing");
                    break close(CloseCode::Away, "no answer to ping");
                }
                if last_heard <= last_tick {
                    let sent = tokio::time::timeout(
                        limits.write_timeout,
                        ws.send(Message::Ping(Default::default())),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break End::Gone;
                    }
                    ping_sent = Some(now);
                }
                last_tick = now;
                continue;
            }
        };
        let urgent = match io {
            Io::Out(None) => break End::Gone,
            Io::Out(Some(first)) => take_batch(first, &mut rx, &mut held),
            Io::In(msg) => {
                last_heard = Instant::now();
                let text = match msg {
                    None => break End::Gone,
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        if !bucket.take(last_heard) {
                            out.refuse(&rate_limited(&limits));
                            continue;
                        }
                        out.refuse(&Refusal::new(
                            ErrorCode::BinaryNotSupported,
                            "binary frames are not supported; send JSON text frames",
                        ));
                        continue;
                    }
                    // tungstenite queues a pong for every ping, and a
                    // client that sends pings without reading would make
                    // them pile up in our write buffer: pings share the
                    // message rate, and a flood over it is closed.
                    Some(Ok(Message::Ping(_))) => {
                        if !bucket.take(last_heard) {
                            break close(CloseCode::Policy, "too many pings");
                        }
                        continue;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the close reply; reading on
                        // sends it and ends the stream.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break End::Gone;
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        info!(conn, %peer, error = %e, "frame over the size limit: closing with 1009");
                        break close(
                            CloseCode::Size,
                            format!(
                                "frame too big: the limit is {} bytes",
                                limits.max_frame_bytes
                            ),
                        );
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        break close(CloseCode::Invalid, "text frame is not valid UTF-8");
                    }
                    Some(Err(WsError::Protocol(e))) => {
                        debug!(conn, %peer, error = %e, "websocket protocol error");
                        break close(CloseCode::Protocol, "websocket protocol error");
                    }
                    Some(Err(e)) => {
                        debug!(conn, %peer, error = %e, "read failed");
                        break End::Gone;
                    }
                };
                if !bucket.take(last_heard) {
                    out.refuse(&rate_limited(&limits));
                    continue;
                }
                let is_buyer = matches!(session, Session::Buyer(_));
                // The event log is behind (a peak): whoever sent this frame
                // waits before it is taken in, a buyer's message, an
                // agent's reply or a hello alike (each brings events), and
                // what comes for this connection meanwhile is still written.
                if app.log_backlogged() {
                    let wait = app.wait_for_log_room(limits.write_timeout);
                    // Boxed, as every wait of a peak or a close: see above.
                    let wait = draining(wait, true, &mut rx, &mut ws, &mut held, &control, &limits);
                    match Box::pin(wait).await {
                        Ok(()) => {}
                        Err(Held::Ordered) => match control.take() {
                            Some(order) => break 'conn End::Close(order),
                            None => continue,
                        },
                        Err(Held::Write(e)) => {
                            debug!(conn, %peer, error = %e, "write failed");
                            break 'conn write_failed(&e);
                        }
                    }
                    // The wait ended for the shutdown: this frame's events
                    // would not fit.
                    if app.is_stopping() {
                        break 'conn close(CloseCode::Away, "server shutting down");
                    }
                }
                // What is queued already goes before what this frame
                // produces, as if both had come through the queue.
                let mut urgent = top_up(&mut rx, &mut held, usize::MAX);
                let (closing, captured) = capture(conn, is_buyer, || {
                    dispatch(&app, &mut session, &out, text.as_str(), staff_only)
                });
                for q in captured.own {
                    urgent |= !q.deferred;
                    // An agent's welcome is rendered here, outside the
                    // hub lock, and still goes before anything queued for
                    // this connection since.
                    held.push(q.frame.text());
                }
                // Every frame is passed on, whatever happens to this
                // connection meanwhile: they are in the log and the history.
                let mut failed = None;
                for (agent, q) in captured.waiting {
                    let wait = agent.send_when_room(q, limits.write_timeout);
                    if failed.is_some() {
                        Box::pin(wait).await;
                        continue;
                    }
                    let wait =
                        draining(wait, false, &mut rx, &mut ws, &mut held, &control, &limits);
                    match Box::pin(wait).await {
                        Ok(()) | Err(Held::Ordered) => {}
                        Err(Held::Write(e)) => failed = Some(e),
                    }
                }
                if let Some(e) = failed {
                    debug!(conn, %peer, error = %e, "write failed");
                    break 'conn write_failed(&e);
                }
                if let Some(order) = closing {
                    break End::Close(order);
                }
                if held.is_empty() {
                    continue;
                }
                urgent || held.len() >= BATCH
            }
        };
        if !urgent {
            // Only deferred frames: wait a little for company.
            if !holding {
                holding = true;
                hold.as_mut().reset(Instant::now() + DEFER);
            }
            continue;
        }
        // `held` has a frame someone waits on, or a full batch: write it.
        holding = false;
        let now = Instant::now();
        if matches!(session, Session::Agent(_))
            && held.len() < BATCH
            && now.saturating_duration_since(last_write) < GATHER_IF_BUSY
            && gather.worth_a_try()
        {
            // An agent's socket carries many conversations: when it is
            // busy, let the tasks that are ready run first, and whatever
            // they queue for this agent shares the write (at peak this
            // saves a send per frame). Not when it is quiet: nothing
            // would be gathered, and a yield makes tokio wake a parked
            // worker (a futex call and a context switch or two).
            tokio::task::yield_now().await;
            // Written now whatever it took: the batch is urgent.
            let before = held.len();
            let _ = top_up(&mut rx, &mut held, BATCH);
            gather.record(held.len() > before);
        }
        last_write = now;
        tokio::select! {
            r = write_batch(&mut ws, &mut held, limits.write_timeout) => {
                if let Err(e) = r {
                    debug!(conn, %peer, error = %e, "write failed");
                    break write_failed(&e);
                }
                control.wrote();
            }
            _ = &mut order => match control.take() {
                Some(order) => break End::Close(order),
                None => {
                    order.set(control.notify.notified());
                    order_armed = false;
                }
            },
        }
    };

    // Out of the routing first (a slow client's conversations move on at
    // once), then the closing handshake, which may take a while.
    let captured = leave(&app, conn, session);
    held.extend(captured.own.into_iter().map(|q| q.frame.text()));
    // All of it within one write timeout, and none once the server stops:
    // a closing connection must not hold its own close up for long.
    if !app.is_stopping() && !captured.waiting.is_empty() {
        let passed = tokio::time::timeout(limits.write_timeout, async {
            for (agent, q) in captured.waiting {
                agent.send_when_room(q, limits.write_timeout).await;
            }
        });
        let _ = Box::pin(passed).await;
    }
    if let End::Close(order) = end {
        if order.flush {
            Box::pin(finish(&mut ws, held, &mut rx, order)).await;
        } else {
            let mut stop = app.shutdown_rx();
            tokio::select! {
                _ = Box::pin(finish_slow(&mut ws, order, limits.write_timeout)) => {}
                _ = super::stopping(&mut stop) => {}
            }
        }
    }
    debug!(conn, %peer, "websocket closed");
}

/// An agent connection that wrote less than this long ago is busy enough
/// that waiting one scheduler pass gathers frames for its next write. At
/// 1,000 buyer messages a second per agent (8,000 a second over 8 agents)
/// its writes come about this far apart.
const GATHER_IF_BUSY: Duration = Duration::from_millis(1);

/// Whether waiting a scheduler pass before an agent's write has been
/// gathering frames lately. Busy is not enough: at 12,000 buyer messages a
/// second over 8 agents (half of the maximum here) a yield found another
/// frame for the agent 9 % of the time, and only cost latency; at the
/// maximum, 74 % of the time (2.5 frames each). So a yield that gathers
/// earns two more, one that does not spends one; with none left, every
/// [`Gather::PROBE_EVERY`]th chance is a probe, so a rising load is noticed.
/// Yields go on while more than a third gather something.
#[derive(Debug, Default)]
struct Gather {
    credit: u8,
    skipped: u8,
}

impl Gather {
    const MAX_CREDIT: u8 = 8;
    const PROBE_EVERY: u8 = 16;

    fn worth_a_try(&mut self) -> bool {
        if self.credit > 0 {
            return true;
        }
        self.skipped += 1;
        if self.skipped == Self::PROBE_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    fn record(&mut self, gathered: bool) {
        self.credit = if gathered {
            (self.credit + 2).min(Self::MAX_CREDIT)
        } else {
            self.credit.saturating_sub(1)
        };
    }
}

/// Polls `fut` the first time (registering the task's waker with it) and
/// after that only once `ready()` says its wake-up has come, until
/// `*is_armed` is cleared (a new future in its place). `ready` must turn
/// true before whatever wakes `fut` is done, and the first poll must
/// register (no cooperative budget in the way).
///
/// Why: a `Notified` or a watch's change future takes its lock at every
/// poll, even while it stays registered (the shutdown watch's lock is
/// shared by every connection), and a connection loop polls its branches
/// at every idle turn. A task's waker never changes, so one registration
/// holds. The two polls were about 1.5 % of the CPU at the maximum.
fn armed<'a, F: Future>(
    mut fut: Pin<&'a mut F>,
    is_armed: &'a mut bool,
    ready: impl Fn() -> bool + 'a,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        if *is_armed && !ready() {
            return Poll::Pending;
        }
        *is_armed = true;
        fut.as_mut().poll(cx)
    })
}

/// Turns of the connection loop between direct checks of the branches a
/// busy loop does not poll (shutdown, close orders).
const RARE_EVERY: u32 = 16;

/// What the connection's two streams produced.
enum Io {
    /// A frame queued for this connection (`None`: the queue closed).
    Out(Option<Queued>),
    /// A frame read from the peer (`None`: the stream ended).
    In(Option<Result<Message, WsError>>),
}

/// The next queued frame or frame read, whichever is ready; when both are,
/// the two take turns, so a steady stream either way never starves the
/// other direction.
fn next_io<'a, S>(
    rx: &'a mut Inbox,
    ws: &'a mut WebSocketStream<S>,
    turn: &'a mut bool,
) -> impl std::future::Future<Output = Io> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(move |cx| {
        *turn = !*turn;
        let out_first = *turn;
        for side in [out_first, !out_first] {
            if side {
                if let Poll::Ready(q) = rx.poll_recv(cx) {
                    return Poll::Ready(Io::Out(q));
                }
            } else if let Poll::Ready(m) = ws.poll_next_unpin(cx) {
                return Poll::Ready(Io::In(m));
            }
        }
        Poll::Pending
    })
}

fn hello_timeout(limits: &Limits) -> End {
    End::Close(CloseOrder::refused(Refusal::new(
        ErrorCode::HelloTimeout,
        format!("no hello within {} s", limits.hello_timeout.as_secs_f64()),
    )))
}

/// Moves `first` and whatever else is queued (up to a batch) into `held`;
/// `true` when the batch should be written now: it holds a frame someone
/// waits on, or is full.
fn take_batch(first: Queued, rx: &mut Inbox, held: &mut Vec<Utf8Bytes>) -> bool {
    let now = !first.deferred;
    held.push(first.frame.text());
    let urgent = top_up(rx, held, BATCH);
    now || urgent || held.len() >= BATCH
}

/// Moves what is queued into `held` until it holds `limit` frames; `true`
/// when that took a frame someone waits on.
fn top_up(rx: &mut Inbox, held: &mut Vec<Utf8Bytes>, limit: usize) -> bool {
    let mut urgent = false;
    while held.len() < limit {
        match rx.try_recv() {
            Some(q) => {
                urgent |= !q.deferred;
                held.push(q.frame.text());
            }
            None => break,
        }
    }
    urgent
}

/// Why a [`draining`] wait ended before its future did.
enum Held {
    /// A write to this connection failed (the wait was seen to its end).
    Write(WsError),
    /// This connection was ordered closed: the caller's loop picks the
    /// order up (the wait was dropped if `droppable`, else seen to its end).
    Ordered,
}

/// How often a [`draining`] wait looks for a close order of its own.
const ORDER_CHECK: Duration = Duration::from_millis(100);

/// Waits for `wait` (the task held back at a peak: for room in the event
/// log's queue, or a buyer's for room in an agent's) while writing what
/// comes into this connection's own queue meanwhile; `held` is written
/// first when the wait does not end at once. A write that fails still sees
/// the wait to its end (a frame for an agent inside it is passed on).
///
/// Why: held back, the task used to write nothing. A buyer's replies to
/// the messages it had passed on then filled its queue and got it dropped
/// as a slow reader, though it read everything; an agent's task held back
/// this way would stop the buyers' messages to it and be dropped by the
/// buyers waiting for room in its queue (BENCHMARKS.md, "A minute beyond
/// the maximum"). A close order (a kick, a replacing sign-in) ends a wait
/// for the log within [`ORDER_CHECK`] (`droppable`: the log's wait can be
/// long, and a closing connection's frame needs no room); a wait with a
/// frame in it is seen to its end.
async fn draining<S, F>(
    wait: F,
    droppable: bool,
    rx: &mut Inbox,
    ws: &mut WebSocketStream<S>,
    held: &mut Vec<Utf8Bytes>,
    control: &Control,
    limits: &Limits,
) -> Result<(), Held>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = ()>,
{
    let mut wait = std::pin::pin!(wait);
    // Nearly every wait ends at once: then nothing changes.
    if (&mut wait).now_or_never().is_some() {
        return Ok(());
    }
    loop {
        if !held.is_empty() {
            if let Err(e) = write_batch(ws, held, limits.write_timeout).await {
                wait.await;
                return Err(Held::Write(e));
            }
            control.wrote();
        }
        if control.ordered() {
            if !droppable {
                wait.await;
            }
            return Err(Held::Ordered);
        }
        tokio::select! {
            biased;
            () = &mut wait => return Ok(()),
            q = rx.recv() => match q {
                Some(q) => {
                    held.push(q.frame.text());
                    top_up(rx, held, BATCH);
                }
                // Not while this task holds its own sender.
                None => {
                    wait.await;
                    return Ok(());
                }
            },
            () = tokio::time::sleep(ORDER_CHECK) => {}
        }
    }
}

/// Writes the frames of `held` (emptying it), then flushes once.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    held: &mut Vec<Utf8Bytes>,
    timeout: Duration,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        for frame in held.drain(..) {
            ws.feed(Message::Text(frame)).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(WsError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        ))),
    }
}

/// Sends what is held and queued (if asked), the error frame, then a close
/// frame, and waits briefly for the peer's close reply.
async fn finish<S>(
    ws: &mut WebSocketStream<S>,
    held: Vec<Utf8Bytes>,
    rx: &mut Inbox,
    order: CloseOrder,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if order.flush {
            for frame in held {
                ws.feed(Message::Text(frame)).await?;
            }
            while let Some(q) = rx.try_recv() {
                ws.feed(Message::Text(q.frame.text())).await?;
            }
        }
        if let Some(r) = &order.error {
            ws.feed(Message::Text(r.to_json().into())).await?;
        }
        ws.send(Message::Close(Some(CloseFrame {
            code: order.code,
            reason: order.reason.into(),
        })))
        .await?;
        while let Some(Ok(_)) = ws.next().await {}
        Ok::<_, WsError>(())
    })
    .await;
}

/// A buyer's hello on a place kept for staff. The buyer reads the message
/// (the buyer page shows it); it is theirs to wait for.
fn server_busy() -> Refusal {
    Refusal::new(
        ErrorCode::ServerBusy,
        "亲，现在咨询的人太多啦，请您稍等片刻再试哦～\
         (server busy: at its connection limit; reconnect in a few seconds)",
    )
}

/// How a failed write ends the connection: one that timed out means the
/// client stopped reading (closed as a slow reader); any other error, that
/// the socket is gone.
fn write_failed(e: &WsError) -> End {
    match e {
        WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => End::Close(CloseOrder {
            error: None,
            code: CloseCode::Policy,
            reason: "too slow: a write timed out".into(),
            flush: false,
        }),
        _ => End::Gone,
    }
}

/// Closes a client that stopped reading. Nothing can be taken back: the
/// frames already in the kernel's socket buffer, and in tungstenite's
/// write buffer (perhaps half written), go first, and the close frame
/// queues behind them. So the close frame is queued without waiting, and
/// for up to `within` the write is driven (reaching the client if it
/// reads again) while what the client sends is read and discarded:
/// closing a socket with unread input sends a reset, and a client that
/// gets it loses what it had not read yet, close frame included. A client
/// that reads again within `within` gets every frame written so far, then
/// the close frame; one that does not, the end of the stream (see
/// docs/PROTOCOL.md, "Limits and closing").
async fn finish_slow<S>(ws: &mut WebSocketStream<S>, order: CloseOrder, within: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::Sink;
    let close = Message::Close(Some(CloseFrame {
        code: order.code,
        reason: order.reason.into(),
    }));
    // Not `send`: its readiness check waits for the buffer to drain first.
    if Pin::new(&mut *ws).start_send(close).is_err() {
        return;
    }
    let _ = tokio::time::timeout(
        within,
        std::future::poll_fn(|cx| {
            if let Poll::Ready(Err(_)) = Pin::new(&mut *ws).poll_flush(cx) {
                return Poll::Ready(());
            }
            loop {
                match ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    // The client's close reply came (or the socket ended).
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }),
    )
    .await;
}

/// Handles one text frame; `Some` closes the connection.
fn dispatch(
    app: &App,
    session: &mut Session,
    out: &Outbox,
    text: &str,
    staff_only: bool,
) -> Option<CloseOrder> {
    let msg = match protocol::parse(text) {
        Ok(m) => m,
        Err(r) => {
            out.refuse(&r);
            return None;
        }
    };
    // Who a refused hello claimed to be, for the log line: an agent who
    // cannot sign in is traced by shop and id (found by review), never by
    // token. Cut short: a refused id may be anything up to a frame long.
    let claimed = match &msg {
        ClientMsg::Hello(h) => {
            let cut = |s: &str| s.chars().take(64).collect::<String>();
            Some((
                cut(&h.shop),
                h.agent.as_deref().or(h.buyer.as_deref()).map(cut),
            ))
        }
        _ => None,
    };
    let result = match (&*session, msg) {
        (Session::Fresh, ClientMsg::Hello(h)) => {
            if h.role == Role::Buyer {
                super::outbox::capturing_for_a_buyer();
            }
            hello(app, h, out, staff_only).map(|s| {
                if matches!(s, Session::Agent(_)) {
                    out.set_agent();
                }
                *session = s
            })
        }
        (Session::Fresh, _) => Err(Refusal::new(
            ErrorCode::HelloFirst,
            "say hello first: {\"type\":\"hello\",\"role\":...}",
        )),
        (_, ClientMsg::Hello(_)) => Err(Refusal::new(
            ErrorCode::AlreadyHello,
            "this connection already said hello; open a new one to change role",
        )),
        (Session::Buyer(s), ClientMsg::Message { text }) => buyer_message(app, s, text),
        (Session::Buyer(s), ClientMsg::Rate { score }) => rate(app, s, out, &score),
        (
            Session::Agent(s),
            ClientMsg::Reply {
                conversation,
                text,
                intent,
            },
        ) => agent_reply(app, s, out, &conversation, &text, intent.as_deref()),
        (Session::Agent(_), ClientMsg::Lint { text }) => lint(app, out, &text),
        (
            Session::Agent(s),
            ClientMsg::Transfer {
                conversation,
                to,
                note,
            },
        ) => transfer(app, s, out, &conversation, &to, note.as_deref()),
        (Session::Buyer(_), _) => Err(Refusal::new(
            ErrorCode::WrongRole,
            "a buyer may send `message` and `rate`",
        )),
        (Session::Agent(_), _) => Err(Refusal::new(
            ErrorCode::WrongRole,
            "an agent may send `reply`, `lint` and `transfer`",
        )),
    };
    // A hello refused over its conversation's rate closes too (1013): the
    // socket has no session, and a page that stayed on it waited for the
    // hello timeout (found by review). A message over the rate does not.
    let hello_over_rate = |r: &Refusal| claimed.is_some() && r.code == ErrorCode::RateLimited;
    match result {
        Ok(()) => None,
        Err(r) if is_fatal(r.code) || hello_over_rate(&r) => {
            // Busy refusals come by the thousand at a peak: a busy shop's
            // are logged by the hub once a minute, a buyer on a staff
            // place is told by the places free (`App::free_places`). A
            // guesser's refusals during a lockout as many: the lockout is
            // logged once, as it starts (`throttle`).
            if matches!(
                r.code,
                ErrorCode::ShopBusy
                    | ErrorCode::ServerBusy
                    | ErrorCode::TooManyAttempts
                    | ErrorCode::RateLimited
            ) {
                debug!(
                    conn = out.conn,
                    code = r.code.as_str(),
                    "hello refused: closing"
                );
            } else {
                let (shop, id) = claimed.unwrap_or_default();
                info!(
                    conn = out.conn,
                    code = r.code.as_str(),
                    shop = ?shop,
                    id = ?id.unwrap_or_default(),
                    "hello refused: closing"
                );
            }
            Some(CloseOrder::refused(r))
        }
        Err(r) => {
            out.refuse(&r);
            None
        }
    }
}

/// Refusals that end the connection: nobody gets a second guess at a token
/// or another buyer's secret on the same socket.
fn is_fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadToken
            | ErrorCode::TooManyAttempts
            | ErrorCode::UnknownShop
            | ErrorCode::BuyerTaken
            | ErrorCode::ShopBusy
            | ErrorCode::ServerBusy
    )
}

fn check_text(text: &str, limits: &Limits) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        return Err(Refusal::new(ErrorCode::EmptyText, "the text is empty"));
    }
    check_controls(text, "text")?;
    let n = text.chars().count();
    if n > limits.max_text_chars {
        return Err(Refusal::new(
            ErrorCode::TextTooLong,
            format!(
                "the text has {n} characters; the limit is {}",
                limits.max_text_chars
            ),
        ));
    }
    Ok(())
}

/// Refuses C0 control characters other than tab and line breaks. Nobody
/// types them, nothing shows them, and JSON writes each as six bytes
/// (`\u0001`): a few hundred made-up buyers sending 2,000 of them per
/// message made the welcome of the next agent to sign in over 64 MiB, and
/// the agent was dropped as they signed in (found by review). With them
/// gone a text's JSON is at most twice its bytes (`"` and `\` take two).
fn check_controls(text: &str, what: &str) -> Result<(), Refusal> {
    let bad = |b: u8| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r');
    match text.bytes().position(bad) {
        None => Ok(()),
        Some(i) => Err(Refusal::new(
            ErrorCode::ControlCharacters,
            format!(
                "the {what} has a control character (U+{:04X}, character {}); send plain text \
                 (tabs and line breaks are fine)",
                text.as_bytes()[i],
                text[..i].chars().count() + 1
            ),
        )),
    }
}

fn hello(app: &App, h: Hello, out: &Outbox, staff_only: bool) -> Result<Session, Refusal> {
    if staff_only && h.role == Role::Buyer {
        return Err(server_busy());
    }
    let now = Instant::now();
    let phrases = app.phrases();
    let ctx = app.ctx(&phrases);
    let mut fx = Effects::default();
    let result = match h.role {
        Role::Buyer => {
            let Some(buyer) = h.buyer else {
                return Err(Refusal::new(
                    ErrorCode::BadMessage,
                    "a buyer hello needs `buyer` (the buyer id)",
                ));
            };
            app.hub()
                .buyer_hello(
                    &ctx,
                    &h.shop,
                    &buyer,
                    h.resume.as_deref(),
                    out,
                    now,
                    &mut fx,
                )
                .map(Session::Buyer)
        }
        Role::Agent => {
            let Some(agent) = h.agent else {
                return Err(Refusal::new(
                    ErrorCode::BadMessage,
                    "an agent hello needs `agent` (the agent id) and `token`",
                ));
            };
            // The budget first: while it is spent the token is not looked
            // at. Made-up ids are throttled alike (in a table of their
            // own), so the answers do not tell which ids exist.
            // (The hub's guard is released at the end of the statement.)
            let known = app.hub().agent_known(&h.shop, &agent);
            let ticket = app
                .begin_signin(Account::Agent(h.shop.clone(), agent.clone()), known)
                .map_err(|l| Refusal::too_many_attempts(l.retry_after))?;
            // The hub's guard is a temporary of this statement: released
            // before the throttle's lock is taken again.
            let result =
                app.hub()
                    .agent_hello(&ctx, &h.shop, &agent, h.token.as_deref(), out, now, &mut fx);
            let outcome = match &result {
                Err(r) if r.code == ErrorCode::BadToken => Outcome::Failure,
                _ => Outcome::Success,
            };
            app.end_signin(ticket, outcome);
            result.map(Session::Agent)
        }
    };
    app.apply(fx);
    if let Ok(s) = &result {
        match s {
            Session::Buyer(b) => {
                debug!(conn = out.conn, shop = %b.shop, buyer = %b.buyer, conversation = %b.conv, "buyer joined")
            }
            Session::Agent(a) => {
                info!(conn = out.conn, shop = %a.shop, agent = %a.agent, "agent online")
            }
            Session::Fresh => {}
        }
    }
    result
}

fn buyer_message(app: &App, s: &BuyerSession, text: String) -> Result<(), Refusal> {
    check_text(&text, &app.config().limits)?;
    // One copy, shared by the history and the event.
    let text: Arc<str> = Arc::from(text);
    let phrases = app.phrases();
    let ctx = app.ctx(&phrases);
    let mut fx = Effects::default();
    // The time is read once the lock is held (the receiver is evaluated
    // before the arguments), as `in_hub` does: read before it, a reply that
    // took the lock first could be stamped later than this message though
    // the hub saw it earlier, and the report would call the round answered
    // while the live clock kept it open (found by review).
    let plan = app
        .hub()
        .buyer_message(&ctx, s, &text, Instant::now(), &mut fx)?;
    // Matching and serialising happen outside the lock.
    let fill = Fill {
        shop: &plan.shop_name,
        agent: plan.agent_name.as_deref().unwrap_or(""),
        buyer: &s.buyer,
    };
    // The round's lines together (a question, then `？？？`); a round of
    // one line is matched alone, as it always was.
    let suggestions = ask::suggest(&phrases.matcher, &plan.earlier, &text, SUGGESTIONS, &fill);
    let frame = plan.agent.as_ref().map(|_| {
        protocol::to_json(&ServerMsg::BuyerMessage {
            conversation: &s.conv,
            buyer: &s.buyer,
            text: &text,
            at: plan.at,
            waiting_since: plan.waiting_since,
            deadline: plan.deadline,
            suggestions: &suggestions,
        })
    });
    // The event keeps the message's own text; its intent and stage are
    // those of the top suggestion the agent was shown (for a round of
    // several lines, what the round's lines ranked, see `ask`).
    let mut ev = s.event(plan.at, Kind::Buyer);
    if let Some(top) = suggestions.first() {
        ev.intent = Some(top.intent.clone());
        ev.stage = Some(Cow::Borrowed(top.stage.as_str()));
    }
    ev.text = Some(text);
    // Recorded before the agent can see (and answer) it.
    app.record(ev);
    if let (Some(out), Some(frame)) = (plan.agent, frame) {
        out.push(frame.into());
    }
    app.apply(fx);
    Ok(())
}

fn agent_reply(
    app: &App,
    s: &AgentSession,
    out: &Outbox,
    conversation: &str,
    text: &str,
    intent: Option<&str>,
) -> Result<(), Refusal> {
    check_text(text, &app.config().limits)?;
    if intent.is_some_and(|i| i.len() > 128) {
        return Err(Refusal::new(
            ErrorCode::BadMessage,
            "`intent` is longer than 128 bytes",
        ));
    }
    in_hub(app, |hub, ctx, now, fx| {
        hub.agent_reply(ctx, s, out, conversation, text, intent, now, fx)
    })
}

fn transfer(
    app: &App,
    s: &AgentSession,
    out: &Outbox,
    conversation: &str,
    to: &str,
    note: Option<&str>,
) -> Result<(), Refusal> {
    // A blank note is no note.
    let note = note.map(str::trim).filter(|n| !n.is_empty());
    if let Some(n) = note {
        check_controls(n, "note")?;
    }
    if let Some(n) = note
        .map(|n| n.chars().count())
        .filter(|&n| n > MAX_NOTE_CHARS)
    {
        return Err(Refusal::new(
            ErrorCode::TextTooLong,
            format!("the note has {n} characters; the limit is {MAX_NOTE_CHARS}"),
        ));
    }
    in_hub(app, |hub, ctx, now, fx| {
        hub.transfer(ctx, s, out, conversation, to, note, now, fx)
    })
}

fn rate(app: &App, s: &BuyerSession, out: &Outbox, score: &str) -> Result<(), Refusal> {
    in_hub(app, |hub, ctx, now, fx| {
        hub.rate(ctx, s, out, score, now, fx)
    })
}

/// Runs one change of the hub under its lock, then delivers what it
/// produced (frames, events) once the lock is released.
fn in_hub<R>(app: &App, f: impl FnOnce(&mut Hub, &Ctx, Instant, &mut Effects) -> R) -> R {
    let phrases = app.phrases();
    let ctx = app.ctx(&phrases);
    let mut fx = Effects::default();
    // The guard is a temporary of this statement: released before `apply`.
    let r = f(&mut app.hub(), &ctx, Instant::now(), &mut fx);
    app.apply(fx);
    r
}

fn lint(app: &App, out: &Outbox, text: &str) -> Result<(), Refusal> {
    let n = text.chars().count();
    let max = app.config().limits.max_text_chars;
    if n > max {
        return Err(Refusal::new(
            ErrorCode::TextTooLong,
            format!("the text has {n} characters; the limit is {max}"),
        ));
    }
    let result = app.phrases().checker.check(text);
    out.push(
        protocol::to_json(&ServerMsg::LintResult {
            text,
            ok: result.ok,
            issues: &result.issues,
        })
        .into(),
    );
    Ok(())
}

/// Takes `session` out of the routing ([`disconnect`]). What that queues
/// for agents whose queue is nearly full comes back for the ending task to
/// wait with, as a buyer's message's frames do (see `outbox::capture`): the
/// ending task's own queue is no longer drained, and buyers waiting on it
/// are let go when it closes, so no cycle; the caller bounds the waits.
///
/// Why: these notices (a colleague signing out, a buyer leaving, the
/// conversations moving on) could not wait and went into the reserve kept
/// for such frames. At 1.4 times the maximum for a minute, with that
/// reserve taken by a waiting buyer (see `Outbox::send_when_room`), the
/// first agent dropped took its colleagues with it: all 8 within 5 ms
/// (BENCHMARKS.md, "A minute beyond the maximum").
fn leave(app: &App, conn: u64, session: Session) -> super::outbox::Captured {
    let ((), captured) = capture(conn, true, || disconnect(app, session));
    captured
}

fn disconnect(app: &App, session: Session) {
    let now = Instant::now();
    let phrases = app.phrases();
    let ctx = app.ctx(&phrases);
    let mut fx = Effects::default();
    match &session {
        Session::Fresh => return,
        Session::Buyer(s) => app.hub().buyer_left(&ctx, s, now, &mut fx),
        Session::Agent(s) => {
            info!(shop = %s.shop, agent = %s.agent, "agent offline");
            app.hub().agent_left(&ctx, s, now, &mut fx)
        }
    }
    app.apply(fx);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `armed` polls its future once to register, then only when the flag
    /// says it was woken; the wake-up reaches the task that polled first,
    /// and a watch's cooperative future still registers when the task's
    /// budget is spent (it is wrapped `unconstrained`, as in `serve`).
    #[tokio::test]
    async fn an_armed_future_is_polled_to_register_and_when_woken() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::sync::Notify;

        let notify = Arc::new(Notify::new());
        let flag = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let (n, f, p) = (notify.clone(), flag.clone(), polls.clone());
        let task = tokio::spawn(async move {
            let notified = n.notified();
            tokio::pin!(notified);
            let counted = std::future::poll_fn(|cx| {
                p.fetch_add(1, Ordering::SeqCst);
                notified.as_mut().poll(cx)
            });
            tokio::pin!(counted);
            let mut is_armed = false;
            let mut idle_turns = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = armed(counted.as_mut(), &mut is_armed, || f.load(Ordering::Acquire)) => break idle_turns,
                    // Another branch keeps waking the loop, as frames do.
                    _ = tokio::task::yield_now() => idle_turns += 1,
                }
            }
        });
        while !task.is_finished() && polls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled once, to register");
        flag.store(true, Ordering::Release);
        notify.notify_one();
        let turns = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the wake-up reaches the armed future")
            .unwrap();
        assert!(turns > 0, "the loop turned while armed");
        assert_eq!(polls.load(Ordering::SeqCst), 2, "polled again once woken");

        // Polled first with the task's budget spent, a watch's future
        // (cooperative) would return before registering, and an armed
        // loop would never hear the change: `serve` wraps it unconstrained.
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let s = stopping.clone();
        let waiter = tokio::spawn(async move {
            let stop = tokio::task::coop::unconstrained(crate::server::stopping(&mut rx));
            tokio::pin!(stop);
            let mut is_armed = false;
            while tokio::task::coop::has_budget_remaining() {
                tokio::task::coop::consume_budget().await;
            }
            armed(stop.as_mut(), &mut is_armed, || s.load(Ordering::Acquire)).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        stopping.store(true, Ordering::Release);
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the change wakes the armed future")
            .unwrap();
    }

    /// (what successive yields gather, `+` something or `-` nothing, in a
    /// loop; least and most share of 1,600 chances taken as yields).
    #[test]
    fn gathering_follows_what_yields_gather() {
        let cases: &[(&str, f64, f64)] = &[
            // Never: only the probes, one chance in 16.
            ("-", 0.06, 0.07),
            // Always, or two in three, or one in two: (nearly) every chance.
            ("+", 0.99, 1.0),
            ("++-", 0.99, 1.0),
            ("+-", 0.98, 1.0),
            // One in three or fewer: mostly probes.
            ("+--", 0.1, 0.2),
            ("+---", 0.1, 0.2),
            ("+-------", 0.06, 0.12),
        ];
        for (pattern, least, most) in cases {
            let mut g = Gather::default();
            let mut outcomes = pattern.chars().cycle();
            let mut taken = 0;
            for _ in 0..1600 {
                if g.worth_a_try() {
                    taken += 1;
                    g.record(outcomes.next() == Some('+'));
                }
            }
            let share = taken as f64 / 1600.0;
            assert!(
                (*least..=*most).contains(&share),
                "{pattern}: {share} of chances taken"
            );
        }
    }

    /// A task held back (for room in the event log's queue, or a buyer's in
    /// an agent's) still writes what it holds and what comes into its queue
    /// meanwhile, so the replies to a buyer's earlier messages do not fill
    /// its queue, nor a waiting agent's buyers find it writing nothing.
    #[tokio::test]
    async fn a_held_back_task_still_writes_its_queue() {
        use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let mut ws = WebSocketStream::from_raw_socket(ours, WsRole::Server, None).await;
        let mut peer = WebSocketStream::from_raw_socket(theirs, WsRole::Client, None).await;
        let (out, mut rx, control) = Outbox::new(1, 8);
        let mut held = vec![Utf8Bytes::from("held")];
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let wait = async move {
            let _ = released.await;
        };
        let limits = Limits::default();
        let task = draining(wait, false, &mut rx, &mut ws, &mut held, &control, &limits);
        let peer_side = async {
            for want in ["held", "reply"] {
                if want == "reply" {
                    out.push("reply".into());
                }
                let m = tokio::time::timeout(Duration::from_secs(5), peer.next()).await;
                let m = m
                    .expect("nothing written while held back")
                    .unwrap()
                    .unwrap();
                assert_eq!(m.into_text().unwrap(), want);
            }
            release.send(()).unwrap();
        };
        let (waited, ()) = tokio::join!(task, peer_side);
        assert!(waited.is_ok());
        assert!(
            control.writes.load(std::sync::atomic::Ordering::Relaxed) >= 2,
            "writes not counted"
        );
        assert!(held.is_empty());
    }

    /// A peer whose frames never stop coming: every read is ready, with
    /// masked empty pings (which the loop answers and otherwise ignores),
    /// until the server sends a close frame; then the stream ends.
    #[derive(Default)]
    struct Flood {
        at: usize,
        /// What the server wrote, not yet parsed into frames.
        written: Vec<u8>,
        closed: bool,
    }

    impl Flood {
        /// Parses the server's (unmasked) frames, noting a close.
        fn parse(&mut self) {
            loop {
                let w = &self.written;
                if w.len() < 2 {
                    return;
                }
                let (len, head) = match w[1] & 0x7f {
                    126 if w.len() >= 4 => (u16::from_be_bytes([w[2], w[3]]) as usize, 4),
                    126 => return,
                    127 => panic!("no frame here is that long"),
                    n => (n as usize, 2),
                };
                if w.len() < head + len {
                    return;
                }
                self.closed |= w[0] & 0x0f == 0x8;
                self.written.drain(..head + len);
            }
        }
    }

    const PING: [u8; 6] = [0x89, 0x80, 1, 2, 3, 4];

    impl AsyncRead for Flood {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            while buf.remaining() > 0 {
                let n = buf.remaining().min(PING.len() - self.at);
                buf.put_slice(&PING[self.at..self.at + n]);
                self.at = (self.at + n) % PING.len();
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Flood {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.written.extend_from_slice(buf);
            self.parse();
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The loop polls the streams first and the rest only when the streams
    /// are quiet; a peer that is never quiet must still be closed on
    /// shutdown (the direct checks every few turns).
    #[test]
    fn a_peer_that_never_pauses_still_hears_the_shutdown() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let closed = rt.block_on(async {
            let mut config = crate::config::Config {
                phrases: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases"),
                ..Default::default()
            };
            // Pings share the message rate (a flood over it is closed);
            // this peer must stay within it and never pause.
            config.limits.rate_per_sec = 1e12;
            config.limits.rate_burst = u32::MAX;
            let app = App::new(config, crate::store::StoreHandle::default()).unwrap();
            let ws = WebSocketStream::from_raw_socket(
                Flood::default(),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let task = tokio::spawn(serve(ws, app.clone(), "flood".into(), false));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!task.is_finished(), "the flood is served, not refused");
            app.shutdown();
            tokio::time::timeout(Duration::from_secs(5), task).await
        });
        // A connection stuck polling its streams would hold a worker
        // forever: do not wait for it.
        rt.shutdown_timeout(Duration::from_millis(100));
        assert!(
            matches!(closed, Ok(Ok(()))),
            "the connection did not close on shutdown"
        );
    }

    /// A buyer message is stamped with a time read under the hub lock, so
    /// its order in time is the order the hub handled it in. Fails with the
    /// time read before the lock: the message waits 50 ms for it here.
    #[test]
    fn a_buyer_message_is_stamped_under_the_hub_lock() {
        use crate::config::{AgentConfig, ShopConfig};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _rt = rt.enter();
        let mut config = crate::config::Config {
            phrases: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases"),
            ..Default::default()
        };
        let mut shop = ShopConfig::default();
        shop.agents.insert(
            "a1".into(),
            AgentConfig {
                token: "t1".into(),
                name: None,
            },
        );
        config.shops.insert("s1".into(), shop);
        let app = App::new(config, crate::store::StoreHandle::default()).unwrap();
        let (agent_out, mut agent_rx, _) = Outbox::new(1, 64);
        let (buyer_out, _buyer_rx, _) = Outbox::new(2, 64);
        let session = in_hub(&app, |hub, ctx, now, fx| {
            hub.agent_hello(ctx, "s1", "a1", Some("t1"), &agent_out, now, fx)
                .unwrap();
            hub.buyer_hello(ctx, "s1", "b1", None, &buyer_out, now, fx)
                .unwrap()
        });
        let tb = app.timebase();
        let (released_ms, sent) = {
            let held = app.hub();
            let app2 = app.clone();
            let sender = std::thread::spawn(move || buyer_message(&app2, &session, "在吗".into()));
            std::thread::sleep(Duration::from_millis(50));
            let released_ms = tb.ms(Instant::now());
            drop(held);
            (released_ms, sender.join().unwrap())
        };
        sent.unwrap();
        let mut at = None;
        while let Some(q) = agent_rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(q.frame.text().as_str()).unwrap();
            if v["type"] == "buyer_message" {
                at = v["at"].as_i64();
            }
        }
        let at = at.expect("the agent got the buyer message");
        assert!(
            at >= released_ms,
            "stamped {} ms before the hub let it in",
            released_ms - at
        );
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Shop s1 with agents a1 (token t1) and a2 (t2), the repository's
    /// phrases, `tweak`ed; inside a runtime.
    fn two_agents(tweak: impl FnOnce(&mut crate::config::Config)) -> App {
        use crate::config::{AgentConfig, ShopConfig};
        let mut config = crate::config::Config {
            phrases: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases"),
            ..Default::default()
        };
        let mut shop = ShopConfig::default();
        for (id, token) in [("a1", "t1"), ("a2", "t2")] {
            let agent = AgentConfig {
                token: token.into(),
                name: None,
            };
            shop.agents.insert(id.into(), agent);
        }
        config.shops.insert("s1".into(), shop);
        tweak(&mut config);
        App::new(config, crate::store::StoreHandle::default()).unwrap()
    }

    fn agent_hello(agent: &str, token: &str) -> String {
        format!(
            r#"{{"type":"hello","role":"agent","shop":"s1","agent":"{agent}","token":"{token}"}}"#
        )
    }

    /// A buyer's `hello` that finds the agent's queue down to its reserve
    /// holds the agent's `conversation_assigned` back for the buyer's task
    /// to wait with, as its messages' frames are, instead of putting it
    /// into the reserve (where, with the reserve full, it would drop the
    /// agent); an agent's `hello` (agents' tasks never wait) is not held.
    #[test]
    fn a_buyers_hello_waits_for_room_in_the_agents_queue() {
        let rt = current_thread();
        let _rt = rt.enter();
        let app = two_agents(|_| {});
        let (agent_out, _agent_rx, agent_control) = Outbox::new(1, 8);
        let mut agent = Session::Fresh;
        let hello = agent_hello("a1", "t1");
        let (closing, _) = capture(1, false, || {
            dispatch(&app, &mut agent, &agent_out, &hello, false)
        });
        assert!(closing.is_none() && matches!(agent, Session::Agent(_)));
        // The agent's queue of 8 down to its reserve of 2.
        for _ in 0..6 {
            assert!(agent_out.push("earlier".into()));
        }
        let (buyer_out, _buyer_rx, _) = Outbox::new(2, 8);
        let mut buyer = Session::Fresh;
        let hello = r#"{"type":"hello","role":"buyer","shop":"s1","buyer":"b1"}"#;
        let (closing, captured) = capture(2, false, || {
            dispatch(&app, &mut buyer, &buyer_out, hello, false)
        });
        assert!(closing.is_none() && matches!(buyer, Session::Buyer(_)));
        let held: Vec<u64> = captured.waiting.iter().map(|(o, _)| o.conn).collect();
        assert_eq!(held, [1], "the assignment waits for room");
        assert!(!agent_control.ordered(), "the agent was not dropped");
        // A colleague signing in: its frames for a1 go into the reserve.
        let (colleague_out, _colleague_rx, _) = Outbox::new(3, 8);
        let mut colleague = Session::Fresh;
        let hello = agent_hello("a2", "t2");
        let (_, captured) = capture(3, false, || {
            dispatch(&app, &mut colleague, &colleague_out, &hello, false)
        });
        assert!(captured.waiting.is_empty(), "an agent's task does not wait");
    }

    /// An agent leaving while a colleague's queue is down to its reserve:
    /// the frames its conversations' move puts in the colleague's queue
    /// come back to wait with, instead of overflowing the reserve and
    /// dropping a colleague who reads.
    #[test]
    fn a_leaving_agents_conversations_wait_for_room_at_a_colleague() {
        let rt = current_thread();
        let _rt = rt.enter();
        // Conversations move at once when their agent leaves.
        let app = two_agents(|c| c.limits.agent_grace = Duration::ZERO);
        let say = |conn: u64, out: &Outbox, session: &mut Session, hello: &str| {
            let (closing, _) = capture(conn, false, || dispatch(&app, session, out, hello, false));
            assert!(closing.is_none());
        };
        let (a1_out, _a1_rx, _) = Outbox::new(1, 8);
        let mut a1 = Session::Fresh;
        say(1, &a1_out, &mut a1, &agent_hello("a1", "t1"));
        // Three buyers, all with a1 (a2 is not online yet).
        let mut buyers = Vec::new();
        for (i, b) in ["b1", "b2", "b3"].iter().enumerate() {
            let (out, rx, _) = Outbox::new(10 + i as u64, 8);
            let mut session = Session::Fresh;
            let hello = format!(r#"{{"type":"hello","role":"buyer","shop":"s1","buyer":"{b}"}}"#);
            say(10 + i as u64, &out, &mut session, &hello);
            buyers.push((out, rx, session));
        }
        let (a2_out, _a2_rx, a2_control) = Outbox::new(2, 8);
        let mut a2 = Session::Fresh;
        say(2, &a2_out, &mut a2, &agent_hello("a2", "t2"));
        // a2's queue of 8 down to its reserve of 2.
        for _ in 0..6 {
            assert!(a2_out.push("earlier".into()));
        }
        let captured = leave(&app, 1, a1);
        let to: Vec<u64> = captured.waiting.iter().map(|(o, _)| o.conn).collect();
        assert!(!to.is_empty() && to.iter().all(|&c| c == 2), "{to:?}");
        assert!(!a2_control.ordered(), "a colleague who reads was dropped");
    }

    #[test]
    fn text_limits() {
        let limits = Limits {
            max_text_chars: 3,
            ..Limits::default()
        };
        let cases: &[(&str, Option<ErrorCode>)] = &[
            (" \n", Some(ErrorCode::EmptyText)),
            ("亲你好", None), // characters, not bytes
            ("亲你好呀", Some(ErrorCode::TextTooLong)),
            ("亲\n好", None),
            ("亲\r\n", None),
            ("\t好", None),
            ("亲\u{1}", Some(ErrorCode::ControlCharacters)),
            ("\u{0}好", Some(ErrorCode::ControlCharacters)),
            ("亲\u{1b}", Some(ErrorCode::ControlCharacters)),
            // DEL and C1 controls are written as they are in JSON.
            ("亲\u{7f}", None),
            ("亲\u{85}", None),
        ];
        for (text, want) in cases {
            let got = check_text(text, &limits).err().map(|r| r.code);
            assert_eq!(got, *want, "{text:?}");
        }
        let r = check_text("a\u{1}", &Limits::default()).unwrap_err();
        assert!(r.message.contains("U+0001, character 2"), "{}", r.message);
    }
}
