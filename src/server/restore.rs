//! Bringing back, at start, the conversations open when the service stopped.
//!
//! A deploy or a crash at peak must not drop every open chat: the buyers'
//! pages and the agents' workbenches reconnect within seconds and expect to
//! find them. The event log already holds each conversation's lines,
//! assignments, rating and alarms, so the hub is rebuilt from it rather
//! than from a second copy of its state that every change would have to
//! write.
//!
//! The rule: a conversation is open if it has an event within
//! `limits.resume_window` before the start and no `close` event. The hub
//! logs `close` when it ends a conversation for good (its buyer stayed away
//! past the window), so a conversation whose agent wrote after the buyer
//! left is not brought back after it closed; one whose buyer sat silent for
//! longer than the window, with nothing logged, is not brought back either
//! (that buyer starts a new conversation, as before).
//!
//! Only that window is read, through the time index, so the start costs
//! the same whatever the size of the log. What a conversation had before
//! the window is not seen: its older lines, its `assign` event, its rating.
//! Its agent is the one named by the latest event read that names the
//! conversation's holder: an `assign` (a transfer included), an `agent`
//! reply (only the holder replies), a `nudge` or `breach` (logged with the
//! holder), a `restore` (the agent an earlier start gave it back to). So a
//! conversation longer than the window whose agent replied, was alarmed
//! or was restored within it goes back to that agent after the restart
//! grace, not to the first agent back (found by review: the long
//! after-sale disputes went to whoever signed in first). One with no such
//! event in what was read waits for the next agent, as a new one does. A
//! rating logged before what was read is lost: the log keeps it once, in
//! its `rating` event, and has no index by conversation to find it without
//! reading back through everything older (`restore` events do not carry
//! it).
//!
//! A start logs a `restore` event for each conversation it brings back:
//! its buyer's resume window counts again from the start, so the next start
//! within it must find the conversation, and without an event of its own a
//! quiet one was not in that start's window and was lost (no `close`
//! either). When the window holds `restore` events, the span of one window
//! before the earliest of them (what that start read) is read too, for the
//! conversations found in the window only, and put before what the window
//! holds ([`Builder::prepend`]): the conversation comes back as that start
//! had it. At most two windows are read; of a third start in a row, each
//! within the window renewed by the one before, what the first of them read
//! before the second's window is not seen. A conversation past the renewed
//! window is not brought back and gets no `close` (as one whose buyer sat
//! silent longer than the window).
//!
//! Conversations left behind are counted, not brought back. A stop longer
//! than the window leaves every open conversation behind (found by review:
//! every waiting buyer was dropped without a word): each buyer gets a new
//! conversation when back (`resumed: false`, a new greeting), no `close` is
//! logged for the old one, and its unanswered buyer message stays an
//! unanswered round, counted in the reports as 600 s against the agent it
//! was last assigned to (docs/REPORTS.md). The start reads the window
//! before the log's last event (found through the time index; what a start
//! at the stop would have read), for the conversations not found in its own
//! window, from the time index too and in the same pass as the span above:
//! those open there (no `close`, someone chatted) are counted in
//! [`Restored::given_up`] and logged at warn level with how many had an
//! unanswered buyer message. After a short stop that span is as short as
//! the stop; after a long one it is one window, and the start's own window
//! is empty. The whole log is never read.
//!
//! A resume key made at this start (see `secret`) verifies no secret a
//! buyer holds: the conversations brought back are marked as having lost
//! their secret, and their `restore` events say so (`secret_lost`), so that
//! the mark outlives the start that set it, the key being old at the next.
//! The hub then gives their buyers a new conversation instead of refusing
//! them (`Hub::buyer_hello`).
//!
//! Each restored conversation is as after a disconnect of everyone: its
//! buyer is away (the resume window counts again from the start, or
//! `EMPTY_CLOSE_AFTER` for one whose beginning was read and nobody chatted
//! in since, see [`OpenConv::empty`]), its
//! agent is offline within a grace ([`RESTART_GRACE`] at least) and gets it
//! back on signing in; conversations without an agent wait for the first
//! one. An unanswered buyer message keeps its round open, started when it
//! was: the report counts one round, and the agent sees the same
//! `waiting_since` and `deadline`. Of the round's alarms, those in the log
//! are not given again, and each of the others fires once at the start,
//! stamped with the time it fell due (a holding reply lands in the buyer's
//! history for when they are back).

use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use tokio::time::Instant;
use tracing::{info, warn};

use super::hub::{Effects, LINE_COST};
use super::App;
use crate::events::{Event, Kind, Rating};
use crate::protocol::Author;
use crate::store::{Query, Reader, StoreError};

/// The `note` of a `restore` or `close` event for a conversation whose
/// buyer's resume secret can no longer verify (see `Hub::buyer_hello`).
pub(crate) const SECRET_LOST: &str = "secret_lost";

/// How long a restored conversation waits for its agent before it moves to
/// another agent online (unless `limits.agent_grace` is longer). Longer
/// than a page refresh's grace: after a restart every agent reconnects at
/// once, the pages retrying up to 10 s apart and a workbench in a
/// background tab (browsers slow its timers to one a minute) later still;
/// the first agent back must not get everyone's buyers.
pub const RESTART_GRACE: Duration = Duration::from_secs(60);

/// What a start brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    pub conversations: usize,
    /// Of which with an unanswered buyer message.
    pub waiting: usize,
    /// Open in the log but not brought back: shop no longer configured, or
    /// a second open conversation of the same buyer and shop (the older).
    pub skipped: usize,
    /// Open at the last stop (within the resume window before the log's
    /// last event, no `close`, someone chatted) but not brought back: their
    /// last event is older than the window before this start (a stop
    /// longer than the window, or a buyer quiet nearly as long before it).
    pub given_up: usize,
    /// Of which with an unanswered buyer message.
    pub given_up_waiting: usize,
}

/// A chat line as the log has it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PastLine {
    pub author: Author,
    pub agent: Option<Arc<str>>,
    /// The receiver, on a transfer's [`Author::System`] line.
    pub to: Option<Arc<str>>,
    pub text: Arc<str>,
    pub at: i64,
    pub note: Option<&'static str>,
}

/// An unanswered round as the log has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PastRound {
    pub started_ms: i64,
    pub holding_sent: bool,
    pub nudged: bool,
    pub breached: bool,
}

/// An open conversation rebuilt from the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenConv {
    pub shop: Arc<str>,
    pub buyer: Arc<str>,
    pub id: Arc<str>,
    /// The agent of the latest event that names the holder: an
    /// assignment or transfer, a reply, an alarm, a restart's `restore`.
    pub agent: Option<Arc<str>>,
    /// Oldest first, capped as the hub caps them.
    pub lines: std::collections::VecDeque<PastLine>,
    lines_bytes: usize,
    pub rated: Option<Rating>,
    pub round: Option<PastRound>,
    /// A start before this one logged its `restore` with `secret_lost`: its
    /// buyer's secret cannot verify, whatever key this start has.
    pub secret_lost: bool,
    last_ms: i64,
    closed: bool,
    /// A buyer message or an agent reply was read (lines the history cap
    /// dropped included).
    spoke: bool,
    /// Its beginning was read: the greeting, or the first assignment
    /// (`new`). Without it, lines before what was read may exist.
    began: bool,
    /// An agent reply was read: the round before what was read is over.
    answered: bool,
    /// Alarms and holding replies read, rounds or not: an earlier span's
    /// open round takes them when nothing here answered it (see
    /// [`OpenConv::then`]).
    marks: Marks,
}

/// A round's holding reply and alarms, as read anywhere in a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Marks {
    holding_sent: bool,
    nudged: bool,
    breached: bool,
}

/// Folds the events of the window, in log order, into open conversations.
pub(crate) struct Builder {
    history_bytes: usize,
    index: HashMap<(Arc<str>, Arc<str>), usize>,
    convs: Vec<OpenConv>,
    /// Only these conversations are read (a span before the window, read
    /// for the conversations found in it).
    only: Option<foldhash::HashSet<(Arc<str>, Arc<str>)>>,
    /// These conversations are not read (a span before the window, read
    /// for the conversations not found in it).
    except: Option<foldhash::HashSet<(Arc<str>, Arc<str>)>>,
    /// The earliest `restore` event read.
    first_restore_ms: Option<i64>,
    /// The latest time of an event read.
    last_ms: Option<i64>,
}

impl Builder {
    /// `history_bytes`: the hub's `limits.history_bytes`, so a long
    /// conversation keeps no more text in memory here than it will there.
    pub(crate) fn new(history_bytes: usize) -> Builder {
        Builder {
            history_bytes,
            index: HashMap::new(),
            convs: Vec::new(),
            only: None,
            except: None,
            first_restore_ms: None,
            last_ms: None,
        }
    }

    /// The time of the latest event read.
    pub(crate) fn last_ms(&self) -> Option<i64> {
        self.last_ms
    }

    /// A builder for the events before the ones this one read, keeping
    /// only the conversations this one did not find: those the start
    /// leaves behind ([`Builder::given_up`]).
    pub(crate) fn others(&self) -> Builder {
        Builder {
            except: Some(self.index.keys().cloned().collect()),
            ..Builder::new(self.history_bytes)
        }
    }

    /// The conversations read that were open and not empty
    /// ([`OpenConv::empty`]), and of those how many with an unanswered
    /// buyer message.
    pub(crate) fn given_up(&self) -> (usize, usize) {
        let open = self
            .convs
            .iter()
            .filter(|c| !c.closed && !c.buyer.is_empty() && !c.empty());
        open.fold((0, 0), |(n, w), c| {
            (n + 1, w + usize::from(c.round.is_some()))
        })
    }

    /// When the earliest `restore` event read was logged: a start then
    /// read the window before it, which this start must read too.
    pub(crate) fn first_restore_ms(&self) -> Option<i64> {
        self.first_restore_ms
    }

    /// A builder for the events before the ones this one read, keeping
    /// only the conversations this one found; [`Builder::prepend`] it.
    pub(crate) fn earlier(&self) -> Builder {
        Builder {
            only: Some(self.index.keys().cloned().collect()),
            ..Builder::new(self.history_bytes)
        }
    }

    /// Puts what `earlier` read before what this builder read, as if one
    /// builder had read both spans in order.
    pub(crate) fn prepend(&mut self, earlier: Builder) {
        let mut before: HashMap<(Arc<str>, Arc<str>), OpenConv> = earlier
            .convs
            .into_iter()
            .map(|c| ((c.shop.clone(), c.id.clone()), c))
            .collect();
        let limit = self.history_bytes;
        // Same positions: `index` stays right.
        self.convs = std::mem::take(&mut self.convs)
            .into_iter()
            .map(
                |after| match before.remove(&(after.shop.clone(), after.id.clone())) {
                    Some(b) => b.then(after, limit),
                    None => after,
                },
            )
            .collect();
    }

    pub(crate) fn add(&mut self, e: Event) {
        let key = (e.shop.clone(), e.conversation.clone());
        if self.only.as_ref().is_some_and(|only| !only.contains(&key))
            || self.except.as_ref().is_some_and(|e| e.contains(&key))
        {
            return;
        }
        self.last_ms = Some(self.last_ms.map_or(e.ts_ms, |l| l.max(e.ts_ms)));
        let n = self.convs.len();
        let i = *self.index.entry(key).or_insert(n);
        if i == n {
            self.convs.push(OpenConv {
                shop: e.shop.clone(),
                buyer: e.buyer.clone(),
                id: e.conversation.clone(),
                agent: None,
                lines: Default::default(),
                lines_bytes: 0,
                rated: None,
                round: None,
                secret_lost: false,
                last_ms: e.ts_ms,
                closed: false,
                spoke: false,
                began: false,
                answered: false,
                marks: Marks::default(),
            });
        }
        let c = &mut self.convs[i];
        c.last_ms = c.last_ms.max(e.ts_ms);
        // Only buyer messages and ratings must name the buyer (an imported
        // log may leave it out elsewhere).
        if c.buyer.is_empty() {
            c.buyer = e.buyer.clone();
        }
        let line = |author, agent, note| PastLine {
            author,
            agent,
            to: None,
            text: e.text.clone().unwrap_or_else(|| Arc::from("")),
            at: e.ts_ms,
            note,
        };
        match e.kind {
            Kind::Buyer => {
                c.spoke = true;
                c.push(line(Author::Buyer, None, None), self.history_bytes);
                c.round.get_or_insert(PastRound {
                    started_ms: e.ts_ms,
                    holding_sent: false,
                    nudged: false,
                    breached: false,
                });
            }
            Kind::Agent => {
                // Only the holder replies: an assignment older than what
                // was read still comes back (found by review).
                c.agent = e.agent.clone().or(c.agent.take());
                c.push(
                    line(Author::Agent, e.agent.clone(), None),
                    self.history_bytes,
                );
                c.round = None;
                c.answered = true;
                c.spoke = true;
            }
            Kind::Bot => {
                let note = match e.note.as_deref() {
                    Some("greeting") => Some("greeting"),
                    Some("holding") => Some("holding"),
                    Some("offline") => Some("offline"),
                    Some("transferred") => Some("transferred"),
                    _ => None,
                };
                c.began |= note == Some("greeting");
                if matches!(note, Some("holding" | "offline")) {
                    c.marks.holding_sent = true;
                    if let Some(r) = &mut c.round {
                        r.holding_sent = true;
                    }
                }
                c.push(line(Author::Bot, None, note), self.history_bytes);
            }
            Kind::Assign => {
                c.began |= e.note.as_deref() == Some("new");
                // A transfer: the staff-only line the hub put in the
                // history (`Hub::transfer`), from the sender (the agent of
                // the assignment before) to the receiver, with the note.
                if e.note.as_deref() == Some("transferred") {
                    let sender = c.agent.clone();
                    c.push(
                        PastLine {
                            to: e.agent.clone(),
                            ..line(Author::System, sender, Some("transferred"))
                        },
                        self.history_bytes,
                    );
                }
                c.agent = e.agent.clone();
            }
            Kind::Rating => c.rated = e.score.or(c.rated),
            Kind::Nudge => {
                c.agent = e.agent.clone().or(c.agent.take());
                c.marks.nudged = true;
                if let Some(r) = &mut c.round {
                    r.nudged = true;
                }
            }
            Kind::Breach => {
                c.agent = e.agent.clone().or(c.agent.take());
                c.marks.breached = true;
                if let Some(r) = &mut c.round {
                    r.breached = true;
                }
            }
            Kind::Close => c.closed = true,
            // Activity (`last_ms` above), the lost secret and the agent
            // the start gave it back to: the lines and the rest are in the
            // events before it.
            Kind::Restore => {
                c.agent = e.agent.clone().or(c.agent.take());
                c.secret_lost |= e.note.as_deref() == Some(SECRET_LOST);
                let first = self.first_restore_ms.get_or_insert(e.ts_ms);
                *first = (*first).min(e.ts_ms);
            }
        }
    }

    /// The open conversations, least recently active first; of two open
    /// conversations of one buyer and shop (a log from before `close`
    /// events), only the more recent, the second counted in the result.
    /// A conversation that names no buyer is left out: nobody could
    /// resume it.
    pub(crate) fn finish(self) -> (Vec<OpenConv>, usize) {
        let mut open: Vec<OpenConv> = self
            .convs
            .into_iter()
            .filter(|c| !c.closed && !c.buyer.is_empty())
            .collect();
        open.sort_by_key(|c| c.last_ms);
        let mut latest: HashMap<(Arc<str>, Arc<str>), usize> = HashMap::new();
        for (i, c) in open.iter().enumerate() {
            latest.insert((c.shop.clone(), c.buyer.clone()), i);
        }
        let before = open.len();
        let mut i = 0;
        open.retain(|c| {
            let keep = latest.get(&(c.shop.clone(), c.buyer.clone())) == Some(&i);
            i += 1;
            keep
        });
        let dropped = before - open.len();
        (open, dropped)
    }
}

impl OpenConv {
    /// This conversation as read up to the end of `later`, the events of
    /// the same conversation read after this one's: what one fold over both
    /// spans gives (a unit test checks every short sequence).
    fn then(mut self, later: OpenConv, limit: usize) -> OpenConv {
        // The hub's cap keeps the longest run of newest lines that fits:
        // the lines `later` dropped would go here too.
        let mut first_transfer = true;
        for mut line in later.lines {
            // The first transfer `later` read before any event naming the
            // holder did not know its sender: the holder as of the end of
            // this span.
            if line.author == Author::System
                && std::mem::take(&mut first_transfer)
                && line.agent.is_none()
            {
                line.agent = self.agent.clone();
            }
            self.push(line, limit);
        }
        self.agent = later.agent.or(self.agent);
        self.rated = later.rated.or(self.rated);
        self.round = match self.round {
            // Nothing later answered it: the later messages joined it, the
            // later alarms were its own.
            Some(mut r) if !later.answered => {
                r.holding_sent |= later.marks.holding_sent;
                r.nudged |= later.marks.nudged;
                r.breached |= later.marks.breached;
                Some(r)
            }
            _ => later.round,
        };
        self.answered |= later.answered;
        self.marks.holding_sent |= later.marks.holding_sent;
        self.marks.nudged |= later.marks.nudged;
        self.marks.breached |= later.marks.breached;
        if self.buyer.is_empty() {
            self.buyer = later.buyer;
        }
        self.secret_lost |= later.secret_lost;
        self.last_ms = self.last_ms.max(later.last_ms);
        self.closed |= later.closed;
        self.spoke |= later.spoke;
        self.began |= later.began;
        self
    }

    /// Nobody chatted in it: its beginning was read and no buyer message
    /// or agent reply since. The hub closes it `EMPTY_CLOSE_AFTER` the
    /// restart unless its buyer is back, as it would have after the
    /// buyer left. One whose beginning was not read may have older chat
    /// and keeps the whole resume window.
    pub(crate) fn empty(&self) -> bool {
        self.began && !self.spoke
    }

    /// The hub's rule (`Conv::push_line`): a line costs its text plus
    /// [`LINE_COST`], the oldest go past `limit`, the newest always stays.
    fn push(&mut self, line: PastLine, limit: usize) {
        self.lines_bytes += line.text.len() + LINE_COST;
        self.lines.push_back(line);
        while self.lines_bytes > limit && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.lines_bytes -= old.text.len() + LINE_COST;
            }
        }
    }
}

/// Hands the log's events on in the order they were written, except that a
/// buyer's message goes ahead of the replies of its conversation written
/// before it in the same millisecond, as the reports read them ("a reply
/// stamped with its question's millisecond answers it", docs/REPORTS.md).
///
/// Why: a buyer's message is logged after its suggestions are found,
/// outside the hub's lock, so a reply the hub handled after the message
/// (and which answered it) can be logged first with the same millisecond.
/// Read in the written order, the start brought such a conversation back
/// as waiting, with a holding reply and alarms nobody was owed (found by
/// review, from the code).
#[derive(Default)]
struct AnswersLast {
    /// The current millisecond's events, in the order to hand on.
    held: Vec<Event>,
}

impl AnswersLast {
    fn push(&mut self, e: Event, mut f: impl FnMut(Event)) {
        if self.held.first().is_some_and(|h| h.ts_ms != e.ts_ms) {
            self.flush(&mut f);
        }
        let mut at = self.held.len();
        if e.kind == Kind::Buyer {
            // Before the run of this conversation's replies that its
            // latest events in this millisecond make, if any.
            for (i, h) in self.held.iter().enumerate().rev() {
                if h.conversation != e.conversation {
                    continue;
                }
                if h.kind != Kind::Agent {
                    break;
                }
                at = i;
            }
        }
        self.held.insert(at, e);
    }

    fn flush(&mut self, mut f: impl FnMut(Event)) {
        for e in self.held.drain(..) {
            f(e);
        }
    }
}

impl App {
    /// Brings back the conversations open in the log `reader` reads (see
    /// the module docs). Call it once, before [`super::run`], after
    /// [`App::set_resume_key`] with the key of the log's directory.
    /// `limits.max_open_conversations` does not apply: every open
    /// conversation comes back (its buyer must be able to rejoin it), and
    /// new buyers of a shop above a lowered cap get `shop_busy` until
    /// enough close.
    pub fn restore(&self, reader: &Reader) -> Result<Restored, StoreError> {
        let took = std::time::Instant::now();
        let tb = self.timebase();
        let now = Instant::now();
        let window = self.config().limits.resume_window.as_millis() as i64;
        let from = tb.ms(now) - window;
        let q = Query {
            from_ms: Some(from),
            ..Query::default()
        };
        let mut builder = Builder::new(self.config().limits.history_bytes);
        let mut order = AnswersLast::default();
        let mut read = reader.for_each(&q, |e| {
            order.push(e, |e| builder.add(e));
            Ok(())
        })?;
        order.flush(|e| builder.add(e));
        // Two spans before the window, read at once. A start within the
        // window read the window before it: read that too, for the
        // conversations found here, so they come back as that start had
        // them. And the window before the log's last event (what a start
        // at the stop would have brought back), for the other
        // conversations: those this start leaves behind, to count them
        // (see the module docs).
        let earlier_from = builder
            .first_restore_ms()
            .map(|first| first - window)
            .filter(|&s| s < from);
        let last = match builder.last_ms() {
            Some(last) => Some(last),
            None => reader.last_ms()?,
        };
        let others_from = last.map(|last| last - window).filter(|&s| s < from);
        let mut earlier = earlier_from.map(|_| builder.earlier());
        let mut others = others_from.map(|_| builder.others());
        if let Some(start) = earlier_from.into_iter().chain(others_from).min() {
            let q = Query {
                from_ms: Some(start),
                to_ms: Some(from),
                ..Query::default()
            };
            let mut add = |e: Event| {
                if let (Some(b), Some(s)) = (&mut earlier, earlier_from) {
                    if e.ts_ms >= s {
                        b.add(e.clone());
                    }
                }
                if let (Some(b), Some(s)) = (&mut others, others_from) {
                    if e.ts_ms >= s {
                        b.add(e);
                    }
                }
            };
            let mut order = AnswersLast::default();
            read += reader.for_each(&q, |e| {
                order.push(e, &mut add);
                Ok(())
            })?;
            order.flush(&mut add);
        }
        if let Some(earlier) = earlier {
            builder.prepend(earlier);
        }
        let (given_up, given_up_waiting) = others.as_ref().map_or((0, 0), Builder::given_up);
        let (open, duplicates) = builder.finish();
        let phrases = self.phrases();
        let ctx = self.ctx(&phrases);
        let grace = self.config().limits.agent_grace.max(RESTART_GRACE);
        let mut fx = Effects::default();
        let mut restored = self.hub().restore(&ctx, open, now, grace, &mut fx);
        self.apply(fx);
        // The `restore` events committed before anyone connects: a crash
        // in the writer's next 50 ms would lose them, and with them the
        // conversations at a second restart and the lost secrets' notes.
        // A flush fails when they were not committed (a full disk): the
        // start stops then, rather than serve conversations the next start
        // would not find.
        if restored.conversations > 0 {
            self.shared.store.flush().map_err(|e| {
                StoreError::Failed(format!(
                    "cannot record the `restore` events of the {} conversation(s) brought back, \
                     so a later restart would lose them; not starting: {}",
                    restored.conversations,
                    e.detail()
                ))
            })?;
        }
        restored.skipped += duplicates;
        restored.given_up = given_up;
        restored.given_up_waiting = given_up_waiting;
        if given_up > 0 {
            warn!(
                conversations = given_up,
                waiting = given_up_waiting,
                resume_window_secs = window / 1000,
                "conversations open at the last stop were not brought back: nothing happened in \
                 them within the resume window before this start (a stop longer than the window, \
                 or a buyer quiet nearly as long before it). Each buyer gets a new conversation \
                 when back; an unanswered message stays an unanswered round in the reports \
                 (600 s, docs/REPORTS.md). A longer limits.resume_window_secs keeps them across \
                 longer stops"
            );
        }
        info!(
            conversations = restored.conversations,
            waiting = restored.waiting,
            skipped = restored.skipped,
            events_read = read,
            took_ms = took.elapsed().as_millis() as u64,
            "restored the conversations open at the last stop"
        );
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_795_400_000_000;

    fn ev(s: i64, conv: &str, kind: Kind) -> Event {
        let buyer = format!("b{}", &conv[1..]);
        Event::new(T + s * 1000, "s1", conv, &buyer, kind)
    }

    fn buyer(s: i64, conv: &str, text: &str) -> Event {
        let mut e = ev(s, conv, Kind::Buyer);
        e.text = Some(text.into());
        e
    }

    fn agent(s: i64, conv: &str, who: &str, text: &str) -> Event {
        let mut e = ev(s, conv, Kind::Agent);
        e.agent = Some(who.into());
        e.text = Some(text.into());
        e
    }

    fn bot(s: i64, conv: &str, note: &'static str) -> Event {
        let mut e = ev(s, conv, Kind::Bot);
        e.text = Some("亲，欢迎光临".into());
        e.note = Some(note.into());
        e
    }

    fn assign(s: i64, conv: &str, who: &str) -> Event {
        let mut e = ev(s, conv, Kind::Assign);
        e.agent = Some(who.into());
        e
    }

    fn rating(s: i64, conv: &str, r: Rating) -> Event {
        let mut e = ev(s, conv, Kind::Rating);
        e.score = Some(r);
        e
    }

    fn round(s: i64, holding_sent: bool, nudged: bool, breached: bool) -> Option<PastRound> {
        Some(PastRound {
            started_ms: T + s * 1000,
            holding_sent,
            nudged,
            breached,
        })
    }

    /// What a test looks at: (id, agent, line authors and texts, rating, round).
    type Seen = (
        String,
        Option<String>,
        Vec<(Author, String)>,
        Option<Rating>,
        Option<PastRound>,
    );

    fn seen(events: Vec<Event>, history_bytes: usize) -> (Vec<Seen>, usize) {
        let mut b = Builder::new(history_bytes);
        for e in events {
            b.add(e);
        }
        let (open, dropped) = b.finish();
        let seen = open
            .into_iter()
            .map(|c| {
                (
                    c.id.to_string(),
                    c.agent.as_deref().map(str::to_string),
                    c.lines
                        .iter()
                        .map(|l| (l.author, l.text.to_string()))
                        .collect(),
                    c.rated,
                    c.round,
                )
            })
            .collect();
        (seen, dropped)
    }

    fn lines(l: &[(Author, &str)]) -> Vec<(Author, String)> {
        l.iter().map(|(a, t)| (*a, t.to_string())).collect()
    }

    /// A transfer to `who` with `note` (`None`: none written), as the hub
    /// logs it.
    fn transfer(s: i64, conv: &str, who: &str, note: Option<&str>) -> Event {
        let mut e = assign(s, conv, who);
        e.note = Some("transferred".into());
        e.text = note.map(Arc::from);
        e
    }

    /// After a transfer the receiver holds the conversation, its round
    /// still open (the transfer answered nobody), the bot's transfer line
    /// keeps its note, and each transfer's staff-only line is rebuilt from
    /// its `assign` event as the hub wrote it: sender (the assignment
    /// before), receiver and note, empty when none was written; a chain of
    /// transfers keeps every one.
    #[test]
    fn a_transfer_is_restored_with_the_receiver_and_its_lines() {
        let mut b = Builder::new(16_384);
        for e in [
            assign(0, "c1", "a1"),
            buyer(1, "c1", "能退货吗"),
            bot(3, "c1", "transferred"),
            transfer(3, "c1", "a2", Some("买家问退货运费")),
            bot(4, "c1", "transferred"),
            transfer(4, "c1", "a3", None),
        ] {
            b.add(e);
        }
        let (open, _) = b.finish();
        assert_eq!(open.len(), 1);
        let c = &open[0];
        assert_eq!(c.agent.as_deref(), Some("a3"));
        assert_eq!(c.round, round(1, false, false, false));
        let got: Vec<_> = c
            .lines
            .iter()
            .map(|l| {
                (
                    l.author,
                    l.note,
                    l.agent.as_deref(),
                    l.to.as_deref(),
                    &*l.text,
                    l.at,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Author::Buyer, None, None, None, "能退货吗", T + 1000),
                (
                    Author::Bot,
                    Some("transferred"),
                    None,
                    None,
                    "亲，欢迎光临",
                    T + 3000
                ),
                (
                    Author::System,
                    Some("transferred"),
                    Some("a1"),
                    Some("a2"),
                    "买家问退货运费",
                    T + 3000
                ),
                (
                    Author::Bot,
                    Some("transferred"),
                    None,
                    None,
                    "亲，欢迎光临",
                    T + 4000
                ),
                (
                    Author::System,
                    Some("transferred"),
                    Some("a2"),
                    Some("a3"),
                    "",
                    T + 4000
                ),
            ]
        );
    }

    #[test]
    fn restore_cases() {
        use Author::*;
        let long = "很".repeat(100); // 300 bytes, 364 with the line cost
        type Case = (&'static str, Vec<Event>, usize, Vec<Seen>, usize);
        let cases: Vec<Case> = vec![
            (
                "waiting for an agent: greeting, a message, no assignment",
                vec![bot(0, "c1", "greeting"), buyer(2, "c1", "在吗")],
                16_384,
                vec![(
                    "c1".into(),
                    None,
                    lines(&[(Bot, "亲，欢迎光临"), (Buyer, "在吗")]),
                    None,
                    round(2, false, false, false),
                )],
                0,
            ),
            (
                "assigned with history; a second buyer message joins the open round \
                 and the logged alarms are remembered",
                vec![
                    bot(0, "c1", "greeting"),
                    assign(0, "c1", "a1"),
                    buyer(1, "c1", "有货吗"),
                    agent(5, "c1", "a1", "亲，有的"),
                    buyer(10, "c1", "几天到"),
                    bot(25, "c1", "holding"),
                    buyer(28, "c1", "在吗"),
                    ev(30, "c1", Kind::Nudge),
                ],
                16_384,
                vec![(
                    "c1".into(),
                    Some("a1".into()),
                    lines(&[
                        (Bot, "亲，欢迎光临"),
                        (Buyer, "有货吗"),
                        (Agent, "亲，有的"),
                        (Buyer, "几天到"),
                        (Bot, "亲，欢迎光临"),
                        (Buyer, "在吗"),
                    ]),
                    None,
                    round(10, true, true, false),
                )],
                0,
            ),
            (
                "answered and rated, then moved: the latest assignment counts",
                vec![
                    assign(0, "c1", "a1"),
                    buyer(1, "c1", "谢谢"),
                    ev(31, "c1", Kind::Breach),
                    agent(40, "c1", "a1", "亲，不客气"),
                    rating(50, "c1", Rating::Satisfied),
                    assign(60, "c1", "a2"),
                ],
                16_384,
                vec![(
                    "c1".into(),
                    Some("a2".into()),
                    lines(&[(Buyer, "谢谢"), (Agent, "亲，不客气")]),
                    Some(Rating::Satisfied),
                    None,
                )],
                0,
            ),
            (
                "closed: not restored, even with an agent reply after the buyer left",
                vec![
                    buyer(0, "c1", "在吗"),
                    agent(100, "c1", "a1", "亲，在的"),
                    {
                        let mut e = ev(1900, "c1", Kind::Close);
                        e.note = Some("expired".into());
                        e
                    },
                    buyer(2000, "c2", "你好"),
                ],
                16_384,
                vec![(
                    "c2".into(),
                    None,
                    lines(&[(Buyer, "你好")]),
                    None,
                    round(2000, false, false, false),
                )],
                0,
            ),
            (
                "history cap: the oldest lines go first, the newest stays whole",
                vec![
                    buyer(0, "c1", &long),
                    buyer(1, "c1", "一"),
                    agent(2, "c1", "a1", "二"),
                    agent(3, "c1", "a1", &format!("{long}{long}")),
                ],
                800,
                vec![(
                    "c1".into(),
                    // The agent of the replies.
                    Some("a1".into()),
                    // 300+64 + 3+64 + 3+64 + 600+64 = 1162 > 800: the
                    // first goes (798 left, within the cap).
                    lines(&[
                        (Buyer, "一"),
                        (Agent, "二"),
                        (Agent, &format!("{long}{long}")),
                    ]),
                    None,
                    None,
                )],
                0,
            ),
            (
                "two open conversations of one buyer (a log from before close \
                 events): the more recent one",
                vec![buyer(0, "c1", "旧的"), {
                    let mut e = buyer(5, "c9", "新的");
                    e.buyer = "b1".into();
                    e
                }],
                16_384,
                vec![(
                    "c9".into(),
                    None,
                    lines(&[(Buyer, "新的")]),
                    None,
                    round(5, false, false, false),
                )],
                1,
            ),
        ];
        for (name, events, cap, want, want_dropped) in cases {
            let (got, dropped) = seen(events, cap);
            assert_eq!(got, want, "{name}");
            assert_eq!(dropped, want_dropped, "{name}");
        }
    }

    /// Reading a span before the window and putting it first
    /// ([`Builder::prepend`]) gives what one fold over both gives: every
    /// sequence of up to five events cut at every point, with a cap that
    /// drops lines.
    #[test]
    fn an_earlier_span_prepended_is_one_fold_of_both() {
        let mut lost = ev(0, "c1", Kind::Restore);
        lost.note = Some(SECRET_LOST.into());
        let alphabet: Vec<Box<dyn Fn(i64) -> Event>> = vec![
            Box::new(|s| buyer(s, "c1", "在吗")),
            Box::new(|s| agent(s, "c1", "a1", "亲，在的")),
            Box::new(|s| bot(s, "c1", "holding")),
            Box::new(|s| bot(s, "c1", "greeting")),
            Box::new(|s| ev(s, "c1", Kind::Nudge)),
            Box::new(|s| ev(s, "c1", Kind::Breach)),
            Box::new(|s| {
                let mut e = assign(s, "c1", "a2");
                e.note = Some("new".into());
                e
            }),
            Box::new(|s| assign(s, "c1", "a2")),
            Box::new(|s| transfer(s, "c1", "a3", Some("买家要退款"))),
            Box::new(move |s| {
                let mut e = lost.clone();
                e.ts_ms = T + s * 1000;
                e
            }),
        ];
        let fold = |events: &[Event], b: &mut Builder| {
            for e in events {
                b.add(e.clone());
            }
        };
        let mut checked = 0;
        for len in 1..=5u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut k = n;
                let events: Vec<Event> = (0..len as i64)
                    .map(|s| {
                        let e = alphabet[k % alphabet.len()](s);
                        k /= alphabet.len();
                        e
                    })
                    .collect();
                let mut whole = Builder::new(200);
                fold(&events, &mut whole);
                let (want, _) = whole.finish();
                for cut in 0..events.len() {
                    // The later span must hold an event, as the window
                    // holds one of every conversation it finds.
                    let mut later = Builder::new(200);
                    fold(&events[cut..], &mut later);
                    let mut earlier = later.earlier();
                    fold(&events[..cut], &mut earlier);
                    fold(&[buyer(0, "c2", "别的会话")], &mut earlier);
                    later.prepend(earlier);
                    let (got, _) = later.finish();
                    assert_eq!(got, want, "{events:?} cut at {cut}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// A conversation is empty (the hub closes it soon after the restart
    /// unless its buyer is back) when its beginning was read and nobody
    /// chatted since; one whose beginning was not read may have older chat.
    #[test]
    fn empty_conversations_are_those_begun_without_chat() {
        let first = |s: i64, conv: &str| {
            let mut e = assign(s, conv, "a1");
            e.note = Some("new".into());
            e
        };
        let moved = |s: i64, conv: &str| {
            let mut e = assign(s, conv, "a1");
            e.note = Some("waiting".into());
            e
        };
        let cases: Vec<(&str, Vec<Event>, bool)> = vec![
            ("greeting only", vec![bot(0, "c1", "greeting")], true),
            ("first assignment only", vec![first(0, "c1")], true),
            (
                "greeting, assignment and a rating",
                vec![
                    bot(0, "c1", "greeting"),
                    first(0, "c1"),
                    rating(5, "c1", Rating::Satisfied),
                ],
                true,
            ),
            (
                "a buyer message",
                vec![bot(0, "c1", "greeting"), buyer(1, "c1", "在吗")],
                false,
            ),
            (
                "an agent reply",
                vec![first(0, "c1"), agent(1, "c1", "a1", "亲，在的")],
                false,
            ),
            (
                "a buyer message the history cap dropped",
                vec![
                    bot(0, "c1", "greeting"),
                    buyer(1, "c1", "在吗"),
                    bot(2, "c1", "holding"),
                    bot(3, "c1", "holding"),
                ],
                false,
            ),
            (
                "beginning not read: a later assignment and the bot",
                vec![moved(0, "c1"), bot(1, "c1", "offline")],
                false,
            ),
        ];
        for (name, events, want) in cases {
            // 100 bytes: one line (and its cost) at a time.
            let mut b = Builder::new(100);
            for e in events {
                b.add(e);
            }
            let (open, _) = b.finish();
            assert_eq!(open.len(), 1, "{name}");
            assert_eq!(open[0].empty(), want, "{name}");
        }
    }

    /// The agent comes from the latest event read that names the holder,
    /// not only from `assign` events: a conversation whose assignment is
    /// older than the window goes back to the agent of its replies, alarms
    /// or earlier restore (found by review: it went to the first agent to
    /// sign in). A transfer still moves it, and a later reply of the
    /// receiver keeps it there.
    #[test]
    fn the_agent_comes_from_the_latest_event_naming_the_holder() {
        let alarm = |s: i64, conv: &str, kind: Kind, who: &str| {
            let mut e = ev(s, conv, kind);
            e.agent = Some(who.into());
            e
        };
        let mut b = Builder::new(16_384);
        for e in [
            // c1: only replies of a2 within the window.
            buyer(0, "c1", "退货运费谁出"),
            agent(5, "c1", "a2", "亲，我们承担"),
            buyer(9, "c1", "那快递呢"),
            // c2: only an alarm naming a3.
            buyer(0, "c2", "在吗"),
            alarm(20, "c2", Kind::Nudge, "a3"),
            alarm(30, "c2", Kind::Breach, "a3"),
            // c3: a reply of a1, then a transfer to a2.
            agent(0, "c3", "a1", "亲，在的"),
            transfer(3, "c3", "a2", Some("买家要换货")),
            // c4: a restore naming a1, then nothing.
            alarm(1, "c4", Kind::Restore, "a1"),
            // c5: nothing naming anyone.
            buyer(1, "c5", "你好"),
        ] {
            b.add(e);
        }
        let (open, _) = b.finish();
        let mut got: Vec<_> = open
            .iter()
            .map(|c| (c.id.to_string(), c.agent.as_deref().map(str::to_string)))
            .collect();
        got.sort();
        let want: Vec<(String, Option<String>)> = [
            ("c1", Some("a2")),
            ("c2", Some("a3")),
            ("c3", Some("a2")),
            ("c4", Some("a1")),
            ("c5", None),
        ]
        .iter()
        .map(|(c, a)| (c.to_string(), a.map(str::to_string)))
        .collect();
        assert_eq!(got, want);
        // The transfer line names the sender known from the reply.
        let c3 = open.iter().find(|c| &*c.id == "c3").unwrap();
        let line = c3.lines.back().unwrap();
        assert_eq!(
            (line.agent.as_deref(), line.to.as_deref()),
            (Some("a1"), Some("a2"))
        );
    }

    /// A `restore` event is activity and nothing else, but for the lost
    /// secret it may note and the agent it names; the earliest one says
    /// where the start before began to read.
    #[test]
    fn restore_events_keep_a_conversation_and_its_lost_secret() {
        let restored = |s: i64, conv: &str, lost: bool| {
            let mut e = ev(s, conv, Kind::Restore);
            e.agent = Some("a1".into());
            e.note = lost.then(|| SECRET_LOST.into());
            e
        };
        let mut b = Builder::new(16_384);
        for e in [
            restored(100, "c1", false),
            restored(100, "c2", true),
            restored(200, "c2", false),
        ] {
            b.add(e);
        }
        assert_eq!(b.first_restore_ms(), Some(T + 100_000));
        let (open, _) = b.finish();
        let seen: Vec<_> = open
            .iter()
            .map(|c| (&*c.id, c.agent.clone(), c.lines.len(), c.secret_lost))
            .collect();
        let a1 = Some(Arc::from("a1"));
        assert_eq!(seen, [("c1", a1.clone(), 0, false), ("c2", a1, 0, true)]);
    }

    /// An imported log may name the buyer only where it must: the buyer
    /// comes from whichever event names them, and a conversation no event
    /// names a buyer for is not brought back.
    #[test]
    fn the_buyer_comes_from_any_event_that_names_them() {
        let unnamed = |mut e: Event| {
            e.buyer = "".into();
            e
        };
        let mut b = Builder::new(16_384);
        b.add(unnamed(assign(0, "c1", "a1")));
        b.add(buyer(1, "c1", "在吗"));
        b.add(unnamed(assign(2, "c2", "a1")));
        let (open, _) = b.finish();
        let who: Vec<(&str, &str)> = open.iter().map(|c| (&*c.id, &*c.buyer)).collect();
        assert_eq!(who, [("c1", "b1")]);
    }
}
