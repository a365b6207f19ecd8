//! Frames that carry conversations (an agent's `welcome`, a move of
//! several conversations, one `conversation_assigned`): snapshots taken
//! under the hub's lock, rendered to JSON after it is released, each
//! conversation's history cut to its share of a byte budget, and the
//! buyer lines the suggestions of a waiting conversation answer
//! ([`Conv::round_ask`]). Also helpers the hub uses elsewhere:
//! [`line_of`] (the buyer's view of the history too) and
//! [`earlier_lines`] (a live message's plan).

use super::*;

impl Conv {
    /// What the suggestions of a waiting buyer answer (see
    /// [`crate::server::ask`]): the buyer's latest message and, before it, their
    /// lines since the last agent reply. Shared texts only: the matching
    /// happens outside the lock.
    pub(super) fn round_ask(&self) -> Option<RoundAsk> {
        let mut rev = self.history.iter().rev();
        let newest = rev.find(|l| l.author == Author::Buyer)?;
        Some(RoundAsk {
            newest: newest.text.clone(),
            earlier: earlier_lines(rev),
        })
    }

    /// What [`Render`] needs of this conversation: shared texts and ids,
    /// no JSON; of the history, the newest lines that fit `budget` bytes
    /// (counted as [`Conv::push_line`] counts them), at least the newest
    /// line, cut to the budget if it alone is over it. The buyer's latest
    /// message is always among them: newer bot lines (an offline reply, a
    /// holding reply) must not push out the question the agent is to
    /// answer; then it and the lines after it share the budget half and half.
    pub(super) fn snapshot(&self, round: Option<&Round>, tb: Timebase, budget: usize) -> ConvSnap {
        let mut history = newest_within(self.history.iter(), budget);
        if budget != usize::MAX && !history.iter().any(|l| l.author == Author::Buyer) {
            let newer = self
                .history
                .iter()
                .rev()
                .take_while(|l| l.author != Author::Buyer)
                .count();
            if let Some(ask) = self.history.iter().rev().nth(newer) {
                let half = budget / 2;
                history = newest_within(self.history.iter().skip(self.history.len() - newer), half);
                history.insert(0, cut_line(ask, half.saturating_sub(LINE_COST)));
            }
        }
        ConvSnap {
            id: self.id.clone(),
            buyer: self.buyer.clone(),
            online: self.buyer_out.is_some(),
            waiting_since: round.map(|r| tb.ms(r.started)),
            deadline: round.map(|r| tb.ms(r.deadline)),
            history,
            rated: self.rated,
            ask: round.and_then(|_| self.round_ask()),
        }
    }
}

/// Bytes of history a frame carrying many conversations (a welcome, a
/// grouped move) holds in all. Each conversation keeps up to
/// `history_bytes` (16 KiB), so up to 1,024 conversations travel whole;
/// beyond that each carries its newest lines within its share (at least
/// [`MIN_SNAPSHOT_BYTES`]). Whole, the first agent to sign in after a quiet
/// spell at a shop's cap of 10,000 open conversations would get a welcome
/// of up to 160 MiB, over the 64 MiB a connection may write, and be
/// dropped as it signs in, and the next agent too.
pub(super) const FRAME_HISTORY_BUDGET: usize = 16 << 20;

/// The least history a conversation carries in a large frame: the newest
/// line, cut to this if it is longer.
pub(super) const MIN_SNAPSHOT_BYTES: usize = 512;

/// Each conversation's share of [`FRAME_HISTORY_BUDGET`] in a frame
/// carrying `n` of them: no limit while whole histories fit.
pub(super) fn snapshot_budget(n: usize, history_bytes: usize) -> usize {
    let share = FRAME_HISTORY_BUDGET / n.max(1);
    if share >= history_bytes {
        usize::MAX
    } else {
        share.max(MIN_SNAPSHOT_BYTES)
    }
}

/// The newest of `lines` (oldest first) that fit `budget` bytes, oldest
/// first; at least the newest one, cut to the budget if it alone is over.
fn newest_within<'a>(
    lines: impl DoubleEndedIterator<Item = &'a HLine>,
    budget: usize,
) -> Vec<HLine> {
    let mut kept = Vec::new();
    let mut used = 0;
    for line in lines.rev() {
        let cost = line.text.len() + LINE_COST;
        if used + cost > budget {
            if kept.is_empty() {
                kept.push(cut_line(line, budget.saturating_sub(LINE_COST)));
            }
            break;
        }
        used += cost;
        kept.push(line.clone());
    }
    kept.reverse();
    kept
}

/// `line` with its text cut to at most `max` bytes (at a character
/// boundary) and marked with an ellipsis.
fn cut_line(line: &HLine, max: usize) -> HLine {
    let text: &str = &line.text;
    if text.len() <= max {
        return line.clone();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    HLine {
        text: Arc::from(format!("{}…", &text[..end])),
        ..line.clone()
    }
}

fn lines_of<'a>(history: impl IntoIterator<Item = &'a HLine>) -> Vec<Line<'a>> {
    history.into_iter().map(line_of).collect()
}

/// A history line as agents see it.
pub(super) fn line_of(l: &HLine) -> Line<'_> {
    Line {
        from: l.author,
        agent: l.agent.as_deref(),
        agent_name: None,
        to: l.to.as_deref(),
        text: &l.text,
        at: l.at,
        note: l.note,
    }
}

/// The buyer's lines of the open round before the newest one, taken from
/// `rev` (the history newest first, past the newest buyer line): buyer
/// lines up to the last agent reply (bot and staff-only lines do not end a
/// round), at most [`ask::ROUND_LINES`] − 1, oldest first. A round of one
/// line looks at the line before it and stops: nothing is allocated.
pub(super) fn earlier_lines<'a>(rev: impl Iterator<Item = &'a HLine>) -> Earlier {
    let mut earlier: Earlier = rev
        .take_while(|l| l.author != Author::Agent)
        .filter(|l| l.author == Author::Buyer)
        .take(ask::ROUND_LINES - 1)
        .map(|l| l.text.clone())
        .collect();
    earlier.reverse();
    earlier
}

/// The buyer lines a waiting buyer's suggestions answer.
pub(super) struct RoundAsk {
    pub(super) newest: Arc<str>,
    /// The round's lines before it, oldest first.
    pub(super) earlier: Earlier,
}

/// A conversation as [`Render`] takes it under the lock.
pub(super) struct ConvSnap {
    id: Arc<str>,
    buyer: Arc<str>,
    online: bool,
    waiting_since: Option<i64>,
    deadline: Option<i64>,
    /// Read by the hub's tests, hence `pub(super)`.
    pub(super) history: Vec<HLine>,
    rated: Option<Rating>,
    /// While the buyer waits, the round's buyer lines: what the
    /// suggestions answer.
    ask: Option<RoundAsk>,
}

/// The content of a frame that carries many conversations (an agent's
/// welcome, a grouped move), taken under the hub lock as shared data (ids
/// and texts are `Arc<str>`: a reference count each, no copy), and matched
/// and serialised by the connection that writes it, after the lock is
/// released. Built under the lock, a welcome of 1,000 conversations with
/// long histories (19.8 MB of JSON, suggestions for each waiting buyer)
/// froze every chat for about 145 ms. The connection renders the frame as
/// it takes it off its queue, so it keeps its place among the agent's
/// frames; one queued to a connection that has gone is never rendered.
pub(crate) struct Render {
    matcher: Arc<Matcher>,
    shop_name: Arc<str>,
    /// The receiving agent's name, for the suggestions' `{agent}`.
    agent_name: Option<Arc<str>>,
    kind: RenderKind,
    convs: Vec<ConvSnap>,
    /// The server's clock, read when the frame is rendered (just before it
    /// is sent) for the frame's `now`.
    tb: Timebase,
}

/// A colleague as a welcome lists them, taken under the lock.
pub(super) struct ColleagueSnap {
    pub(super) agent: Arc<str>,
    pub(super) name: Option<Arc<str>>,
    pub(super) online: bool,
}

impl ColleagueSnap {
    fn view(&self) -> Colleague<'_> {
        Colleague {
            agent: &self.agent,
            name: self.name.as_deref(),
            online: self.online,
            removed: false,
        }
    }
}

pub(super) enum RenderKind {
    /// `welcome` to an agent signing in.
    Welcome {
        agent: Arc<str>,
        shop: Arc<str>,
        clock: ClockView,
        colleagues: Vec<ColleagueSnap>,
        library: Arc<PhraseStatus>,
        max_text_chars: usize,
    },
    /// `conversation_assigned` for one conversation (with a transfer's
    /// sender and note), `conversations_assigned` for more.
    Assigned {
        reason: &'static str,
        from: Option<Arc<str>>,
        note: Option<Arc<str>>,
    },
}

impl Render {
    /// A frame for `agent` of the shop named `shop_name` about `convs`.
    pub(super) fn new(
        ctx: &Ctx,
        shop_name: &Arc<str>,
        agent: &Agent,
        kind: RenderKind,
        convs: Vec<ConvSnap>,
    ) -> Render {
        Render {
            matcher: ctx.phrases.matcher.clone(),
            shop_name: shop_name.clone(),
            agent_name: agent.name.clone(),
            kind,
            convs,
            tb: ctx.tb,
        }
    }

    /// The frame's JSON: the suggestions are matched here.
    pub(crate) fn render(&self) -> Utf8Bytes {
        let fill = Fill {
            shop: &self.shop_name,
            agent: self.agent_name.as_deref().unwrap_or(""),
            buyer: "",
        };
        let suggestions: Vec<Vec<Suggestion>> = self
            .convs
            .iter()
            .map(|c| match &c.ask {
                Some(a) => {
                    let fill = Fill {
                        buyer: &c.buyer,
                        ..fill
                    };
                    ask::suggest(&self.matcher, &a.earlier, &a.newest, SUGGESTIONS, &fill)
                }
                None => Vec::new(),
            })
            .collect();
        let mut views: Vec<ConversationView<'_>> = self
            .convs
            .iter()
            .zip(&suggestions)
            .map(|(c, s)| ConversationView {
                conversation: &c.id,
                buyer: &c.buyer,
                online: c.online,
                waiting_since: c.waiting_since,
                deadline: c.deadline,
                history: lines_of(&c.history),
                suggestions: s,
                rated: c.rated,
            })
            .collect();
        let now = self.tb.now_ms();
        let json = match &self.kind {
            RenderKind::Welcome {
                agent,
                shop,
                clock,
                colleagues,
                library,
                max_text_chars,
            } => to_json(&ServerMsg::AgentWelcome {
                role: Role::Agent,
                agent,
                shop,
                shop_name: &self.shop_name,
                clock: *clock,
                colleagues: colleagues.iter().map(ColleagueSnap::view).collect(),
                conversations: views,
                phrases: library,
                max_text_chars: *max_text_chars,
                now,
            }),
            RenderKind::Assigned { reason, from, note } if views.len() == 1 => {
                let view = views.pop().expect("one view");
                to_json(&ServerMsg::ConversationAssigned {
                    reason,
                    from: from.as_deref(),
                    note: note.as_deref(),
                    view,
                    now,
                })
            }
            RenderKind::Assigned { reason, .. } => to_json(&ServerMsg::ConversationsAssigned {
                reason,
                conversations: views,
            }),
        };
        json.into()
    }
}
