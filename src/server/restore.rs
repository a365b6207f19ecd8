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
//! the window is not seen: its older lines, and an assignment or rating
//! logged before it (such a conversation waits for the next agent, as a new
//! one does).
//!
//! Each restored conversation is as after a disconnect of everyone: its
//! buyer is away (the resume window counts again from the start), its
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
use tracing::info;

use super::hub::{Effects, LINE_COST};
use super::App;
use crate::events::{Event, Kind, Rating};
use crate::protocol::Author;
use crate::store::{Query, Reader, StoreError};

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
}

/// A chat line as the log has it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PastLine {
    pub author: Author,
    pub agent: Option<Arc<str>>,
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
    /// The latest assignment.
    pub agent: Option<Arc<str>>,
    /// Oldest first, capped as the hub caps them.
    pub lines: std::collections::VecDeque<PastLine>,
    lines_bytes: usize,
    pub rated: Option<Rating>,
    pub round: Option<PastRound>,
    last_ms: i64,
    closed: bool,
}

/// Folds the events of the window, in log order, into open conversations.
pub(crate) struct Builder {
    history_bytes: usize,
    index: HashMap<(Arc<str>, Arc<str>), usize>,
    convs: Vec<OpenConv>,
}

impl Builder {
    /// `history_bytes`: the hub's `limits.history_bytes`, so a long
    /// conversation keeps no more text in memory here than it will there.
    pub(crate) fn new(history_bytes: usize) -> Builder {
        Builder {
            history_bytes,
            index: HashMap::new(),
            convs: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, e: Event) {
        let n = self.convs.len();
        let i = *self
            .index
            .entry((e.shop.clone(), e.conversation.clone()))
            .or_insert(n);
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
                last_ms: e.ts_ms,
                closed: false,
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
            text: e.text.clone().unwrap_or_else(|| Arc::from("")),
            at: e.ts_ms,
            note,
        };
        match e.kind {
            Kind::Buyer => {
                c.push(line(Author::Buyer, None, None), self.history_bytes);
                c.round.get_or_insert(PastRound {
                    started_ms: e.ts_ms,
                    holding_sent: false,
                    nudged: false,
                    breached: false,
                });
            }
            Kind::Agent => {
                c.push(
                    line(Author::Agent, e.agent.clone(), None),
                    self.history_bytes,
                );
                c.round = None;
            }
            Kind::Bot => {
                let note = match e.note.as_deref() {
                    Some("greeting") => Some("greeting"),
                    Some("holding") => Some("holding"),
                    Some("offline") => Some("offline"),
                    Some("transferred") => Some("transferred"),
                    _ => None,
                };
                if matches!(note, Some("holding" | "offline")) {
                    if let Some(r) = &mut c.round {
                        r.holding_sent = true;
                    }
                }
                c.push(line(Author::Bot, None, note), self.history_bytes);
            }
            Kind::Assign => c.agent = e.agent.clone(),
            Kind::Rating => c.rated = e.score.or(c.rated),
            Kind::Nudge => {
                if let Some(r) = &mut c.round {
                    r.nudged = true;
                }
            }
            Kind::Breach => {
                if let Some(r) = &mut c.round {
                    r.breached = true;
                }
            }
            Kind::Close => c.closed = true,
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

impl App {
    /// Brings back the conversations open in the log `reader` reads (see
    /// the module docs). Call it once, before [`super::run`], after
    /// [`App::set_resume_key`] with the key of the log's directory.
    pub fn restore(&self, reader: &Reader) -> Result<Restored, StoreError> {
        let took = std::time::Instant::now();
        let tb = self.timebase();
        let now = Instant::now();
        let window = self.config().limits.resume_window;
        let q = Query {
            from_ms: Some(tb.ms(now) - window.as_millis() as i64),
            ..Query::default()
        };
        let mut builder = Builder::new(self.config().limits.history_bytes);
        let read = reader.for_each(&q, |e| {
            builder.add(e);
            Ok(())
        })?;
        let (open, duplicates) = builder.finish();
        let phrases = self.phrases();
        let ctx = self.ctx(&phrases);
        let grace = self.config().limits.agent_grace.max(RESTART_GRACE);
        let mut fx = Effects::default();
        let mut restored = self.hub().restore(&ctx, open, now, grace, &mut fx);
        self.apply(fx);
        restored.skipped += duplicates;
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

    /// After a transfer the receiver holds the conversation, its round
    /// still open (the transfer answered nobody), and the bot's transfer
    /// line keeps its note, as the hub shows it to agents.
    #[test]
    fn a_transfer_is_restored_with_the_receiver_and_its_line() {
        let mut moved = assign(3, "c1", "a2");
        moved.note = Some("transferred".into());
        moved.text = Some("买家问退货运费".into());
        let mut b = Builder::new(16_384);
        for e in [
            assign(0, "c1", "a1"),
            buyer(1, "c1", "能退货吗"),
            bot(3, "c1", "transferred"),
            moved,
        ] {
            b.add(e);
        }
        let (open, _) = b.finish();
        assert_eq!(open.len(), 1);
        let c = &open[0];
        assert_eq!(c.agent.as_deref(), Some("a2"));
        assert_eq!(c.round, round(1, false, false, false));
        let notes: Vec<_> = c.lines.iter().map(|l| (l.author, l.note)).collect();
        assert_eq!(
            notes,
            [(Author::Buyer, None), (Author::Bot, Some("transferred"))]
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
                    None,
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
