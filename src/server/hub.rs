//! Shops, agents and conversations: who talks to whom, and the clock.
//!
//! The [`Hub`] is plain data behind the [`App`](super::App)'s mutex. Its
//! methods change the maps and describe what should happen as a result in
//! [`Effects`] (frames to push into client queues, events to record, closes,
//! a timer wake-up); the caller delivers them after releasing the lock.
//! Frames that carry whole conversations are snapshots under the lock,
//! rendered after it ([`render`]).
//!
//! Routing rules:
//! - a new buyer's conversation goes to the online agent of the shop with
//!   the fewest open conversations (ties: the smallest agent id) and stays
//!   there;
//! - when that agent disconnects, each of their conversations moves the same
//!   way to another online agent (longest-waiting first), clocks running on;
//!   with nobody online they wait, unassigned, for the next agent to sign in;
//! - an agent may hand a conversation they hold to a connected colleague
//!   of the shop (`transfer`), its round running on;
//! - a buyer id has at most one open conversation per shop; reconnecting to
//!   it needs the secret sent in its `welcome`;
//! - a conversation whose buyer stays away longer than the resume window is
//!   closed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

// Several look-ups per buyer message; see `clock` for the choice.
use foldhash::{HashMap, HashMapExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::warn;

use super::ask::{self, Earlier};
use super::outbox::{CloseOrder, Frame, Outbox};
use super::rate::{rate_limited, resumes_limited, Bucket};
use super::{Phrases, ResumeKey, Stats, SUGGESTIONS};
use crate::clock::{Alarm, Clock, Round, Timebase};
use crate::config::{AgentConfig, Config};
use crate::events::{Event, Kind, Rating};
use crate::matcher::{Matcher, Suggestion};
use crate::phrases::Fill;
use crate::protocol::{
    to_json, Author, ClockView, Colleague, ConversationView, ErrorCode, Line, PhraseStatus,
    Refusal, Role, ServerMsg,
};

mod render;

pub(crate) use render::Render;
use render::{earlier_lines, line_of, snapshot_budget, ColleagueSnap, ConvSnap, RenderKind};

/// What a settings reload changed among the staff (`shop:agent` ids).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaffChanges {
    pub added: Vec<String>,
    /// Agents whose token changed.
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Shops in the file the running service does not have (a restart
    /// adds them).
    pub shops_added: Vec<String>,
    /// Shops the running service has that the file no longer lists: their
    /// agents are signed out (and in `removed`), new buyers refused.
    pub shops_removed: Vec<String>,
    /// Shops removed by an earlier reload that the file lists again.
    pub shops_back: Vec<String>,
}

/// What a hub change produced, delivered once the lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    /// (to, frame, deferred)
    pub sends: Vec<(Outbox, Frame, bool)>,
    pub closes: Vec<(Outbox, CloseOrder)>,
    pub events: Vec<Event>,
    /// A deadline earlier than the timer task's sleep was added.
    pub wake_timer: bool,
    /// New buyers refused at a shop's cap, to log (see [`BusyLog`]).
    pub shop_busy: Option<ShopBusy>,
}

impl Effects {
    fn send(&mut self, out: &Outbox, msg: &ServerMsg<'_>) {
        self.sends
            .push((out.clone(), Frame::Text(to_json(msg).into()), false));
    }

    /// A frame the client does not wait on: a receipt. It keeps its place
    /// in the queue but may wait there briefly for company.
    fn send_deferred(&mut self, out: &Outbox, msg: &ServerMsg<'_>) {
        self.sends
            .push((out.clone(), Frame::Text(to_json(msg).into()), true));
    }

    /// A large frame, queued in its place but matched and serialised by
    /// the connection that writes it (see [`Render`]).
    fn send_later(&mut self, out: &Outbox, r: Render) {
        self.sends
            .push((out.clone(), Frame::Later(Box::new(r)), false));
    }
}

/// New buyers a shop refused at its cap since the last log line about it.
pub(crate) struct ShopBusy {
    pub shop: Arc<str>,
    pub refused: u64,
    pub cap: usize,
}

/// How often at most a shop's refusals at its cap are logged: one line per
/// refused buyer would flood the log just when the shop is busiest.
const BUSY_LOG_EVERY: Duration = Duration::from_secs(60);

/// A shop's refusals at its cap: counted, and logged at most once every
/// [`BUSY_LOG_EVERY`].
#[derive(Debug, Default)]
struct BusyLog {
    /// Every refusal since the start, for [`Stats`].
    total: u64,
    /// Refusals not in a log line yet.
    unlogged: u64,
    last_log: Option<Instant>,
}

impl BusyLog {
    /// Counts a refusal; `Some(n)` when a line is due, for the `n`
    /// refusals since the last one.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        self.unlogged += 1;
        if self
            .last_log
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_LOG_EVERY)
        {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// What the hub methods need besides the hub.
pub(crate) struct Ctx<'a> {
    pub config: &'a Config,
    pub tb: Timebase,
    pub phrases: &'a Phrases,
    /// The libraries' status, for an agent's `welcome`.
    pub library: &'a RwLock<Arc<PhraseStatus>>,
}

// ---- state ------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct BuyerSession {
    pub shop: Arc<str>,
    pub buyer: Arc<str>,
    pub conv: Arc<str>,
    pub conn: u64,
}

impl BuyerSession {
    /// A bare event of this buyer's conversation (ids shared, not copied).
    pub fn event(&self, ts_ms: i64, kind: Kind) -> Event {
        Event::shared(
            ts_ms,
            self.shop.clone(),
            self.conv.clone(),
            self.buyer.clone(),
            kind,
        )
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AgentSession {
    pub shop: Arc<str>,
    pub agent: Arc<str>,
    pub conn: u64,
}

/// What the caller needs to finish a buyer message outside the lock.
pub(crate) struct MessagePlan {
    pub agent: Option<Outbox>,
    pub agent_name: Option<Arc<str>>,
    pub shop_name: Arc<str>,
    pub at: i64,
    pub waiting_since: i64,
    pub deadline: i64,
    /// The buyer's lines of the round before this message, oldest first
    /// (empty in a round of one line): the suggestions match them with it.
    pub earlier: Earlier,
}

struct Shop {
    name: Arc<str>,
    /// Configured agents by id (ordered: ties go to the smallest id).
    agents: BTreeMap<Arc<str>, Agent>,
    /// Buyer id → their open conversation.
    buyers: HashMap<Arc<str>, Arc<str>>,
    /// Conversations waiting for an agent to come online, oldest first.
    unassigned: Vec<Arc<str>>,
    /// New buyers refused at `limits.max_open_conversations`.
    busy: BusyLog,
    /// No longer in the settings file (a reload): its agents are signed
    /// out and buyer hellos refused (a resume too), as after a restart;
    /// buyers connected at the reload keep their connection.
    removed: bool,
}

impl Agent {
    /// A configured agent, offline.
    fn new(a: &AgentConfig) -> Agent {
        Agent {
            token: a.token.clone(),
            name: a.name.as_deref().map(Arc::from),
            online: None,
            convs: BTreeSet::new(),
            moves_at: None,
            signing_out: false,
        }
    }

    /// Away within the grace: their conversations are still theirs.
    fn returning(&self) -> bool {
        self.online.is_none() && self.moves_at.is_some() && !self.removed()
    }

    /// Removed by a settings reload (its token emptied): never returns.
    fn removed(&self) -> bool {
        self.token.is_empty()
    }
}

struct Agent {
    token: String,
    name: Option<Arc<str>>,
    online: Option<Outbox>,
    convs: BTreeSet<Arc<str>>,
    /// While offline within the grace: when their conversations move. The
    /// conversations are still theirs until then (no `offline` reply to
    /// their buyers), and only the latest disconnect's move counts.
    moves_at: Option<Instant>,
    /// Signed out by a settings reload (token changed or removed) but still
    /// connected until the close is carried out: nothing new goes to them.
    signing_out: bool,
}

/// What a history line costs besides its text, about the JSON around it
/// (`{"from":"buyer","text":"","at":1795400002000}`).
pub(crate) const LINE_COST: usize = 64;

#[derive(Clone)]
struct HLine {
    author: Author,
    agent: Option<Arc<str>>,
    /// The receiver of a transfer ([`Author::System`] lines only).
    to: Option<Arc<str>>,
    /// Shared with the event that records the line.
    text: Arc<str>,
    at: i64,
    note: Option<&'static str>,
}

struct Conv {
    id: Arc<str>,
    shop: Arc<str>,
    buyer: Arc<str>,
    secret: Box<str>,
    agent: Option<Arc<str>>,
    buyer_out: Option<Outbox>,
    away_since: Option<Instant>,
    history: VecDeque<HLine>,
    history_bytes: usize,
    rated: Option<Rating>,
    /// The buyer sent a message or an agent replied. A conversation
    /// without either holds nothing for its buyer to resume but the
    /// greeting, and closes [`EMPTY_CLOSE_AFTER`] after they leave.
    chatted: bool,
    /// Buyer messages this conversation took, all told: the buyer's
    /// `welcome` carries it (`received`) so a page that lost its link can
    /// tell exactly which of the messages it sent since its last welcome
    /// arrived (they arrive in order), which a count of texts in a history
    /// cut to its newest lines cannot (found by review).
    received: u64,
    /// The buyer's message rate across their connections: each message
    /// and each resume takes from it (see `super::rate`).
    bucket: Bucket,
}

/// Conversations whose buyer is away, by when they left: at most one entry
/// per conversation, at its `away_since`, taken out when the buyer is back.
///
/// Why not a queue with an entry per departure, skipped when stale: a buyer
/// who closed and resumed in a loop added one per visit, kept for the whole
/// resume window (about 6,400 a second from one client, memory that never
/// came back; found by review). Ordered by time, then id.
#[derive(Default)]
struct Away(BTreeSet<(Instant, Arc<str>)>);

impl Away {
    fn insert(&mut self, since: Instant, id: &Arc<str>) {
        self.0.insert((since, id.clone()));
    }

    fn remove(&mut self, since: Instant, id: &Arc<str>) {
        self.0.remove(&(since, id.clone()));
    }

    /// Takes the entries of a conversation whose buyer left at `since` out
    /// of both sets (it is in `empty` too if nobody had chatted).
    fn forget(all: &mut Away, empty: &mut Away, since: Instant, id: &Arc<str>) {
        all.remove(since, id);
        empty.remove(since, id);
    }

    /// When the oldest entry's buyer left.
    fn first(&self) -> Option<Instant> {
        self.0.first().map(|(since, _)| *since)
    }

    /// The oldest entry, taken out, if `due` says its time has come.
    fn pop_due(&mut self, due: impl Fn(Instant) -> bool) -> Option<(Instant, Arc<str>)> {
        if due(self.first()?) {
            self.0.pop_first()
        } else {
            None
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// How long a conversation nobody chatted in (the buyer sent no message,
/// no agent replied: only the bot's greeting) stays open after its buyer
/// leaves, instead of the whole resume window. There is nothing in it to
/// resume but the greeting, and the 30 minutes let one client fill a
/// shop's `limits.max_open_conversations` with hellos under made-up ids
/// (one per connection, then close): a flood must now send messages, rate
/// limited per connection and seen by agents, to hold places. Long enough
/// for a reload or a dropped connection to resume the conversation; a
/// buyer back later gets a new one, greeted again. Closed with the reason
/// [`EMPTY`].
pub(crate) const EMPTY_CLOSE_AFTER: Duration = Duration::from_secs(60);

/// The `note` of the `close` event and the `reason` of the agent's
/// `conversation_closed` for a conversation closed [`EMPTY_CLOSE_AFTER`]
/// its buyer left without anyone chatting.
pub(crate) const EMPTY: &str = "empty";

impl Conv {
    fn event(&self, ts_ms: i64, kind: Kind) -> Event {
        Event::shared(
            ts_ms,
            self.shop.clone(),
            self.id.clone(),
            self.buyer.clone(),
            kind,
        )
    }

    /// Appends a line, dropping the oldest ones past `limit` bytes (the
    /// newest line always stays). A line counts its text plus
    /// [`LINE_COST`]: counting the text alone let 16,384 one-character
    /// lines through, about 1 MB of JSON in every welcome that carries the
    /// conversation.
    fn push_line(&mut self, line: HLine, limit: usize) {
        self.history_bytes += line.text.len() + LINE_COST;
        self.history.push_back(line);
        while self.history_bytes > limit && self.history.len() > 1 {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.text.len() + LINE_COST;
            }
        }
    }

    /// The history as the buyer may see it: without the staff-only
    /// [`Author::System`] lines (a transfer's note is for colleagues).
    /// The history as the buyer sees it: no staff-only lines, and agents
    /// by their display name (`agents`: the shop's), never by id.
    fn buyer_lines<'a>(&'a self, agents: &'a BTreeMap<Arc<str>, Agent>) -> Vec<Line<'a>> {
        self.history
            .iter()
            .filter(|l| l.author != Author::System)
            .map(|l| Line {
                agent: None,
                agent_name: l
                    .agent
                    .as_ref()
                    .and_then(|a| agents.get(a))
                    .and_then(|a| a.name.as_deref()),
                to: None,
                ..line_of(l)
            })
            .collect()
    }
}

/// The service's shared state.
pub(crate) struct Hub {
    shops: HashMap<Arc<str>, Shop>,
    convs: HashMap<Arc<str>, Conv>,
    clock: Clock<Arc<str>>,
    /// Conversations whose buyer left, in the order they left: one entry
    /// each, at its `away_since`.
    away: Away,
    /// Of those, the ones nobody had chatted in when their buyer left: they
    /// close [`EMPTY_CLOSE_AFTER`] later unless the buyer is back or an
    /// agent wrote meanwhile (an entry whose conversation has chatted since
    /// is skipped when it comes due).
    away_empty: Away,
    /// Agents whose socket dropped, in the order they left, with the time
    /// their conversations move on unless they are back (shop, agent).
    leaving: VecDeque<(Instant, Arc<str>, Arc<str>)>,
    /// When the timer task plans to wake up next.
    timer_wake: Option<Instant>,
    /// Derives the buyers' resume secrets.
    resume_key: ResumeKey,
    /// Restored conversations whose secret no buyer holds (the resume key
    /// was made at the restart, or at one before): the next hello for their
    /// buyer closes them and opens a new one (see [`Hub::buyer_hello`]).
    lost_secrets: foldhash::HashSet<Arc<str>>,
}

impl Hub {
    pub(crate) fn new(config: &Config) -> Hub {
        let shops = config
            .shops
            .iter()
            .map(|(id, s)| {
                let agents = s
                    .agents
                    .iter()
                    .map(|(aid, a)| (Arc::from(aid.as_str()), Agent::new(a)))
                    .collect();
                (
                    Arc::from(id.as_str()),
                    Shop {
                        name: Arc::from(config.shop_name(id)),
                        agents,
                        buyers: HashMap::new(),
                        unassigned: Vec::new(),
                        busy: BusyLog::default(),
                        removed: false,
                    },
                )
            })
            .collect();
        Hub {
            shops,
            convs: HashMap::new(),
            clock: Clock::new(config.clock),
            away: Away::default(),
            away_empty: Away::default(),
            leaving: VecDeque::new(),
            timer_wake: None,
            resume_key: ResumeKey::random(),
            lost_secrets: Default::default(),
        }
    }

    pub(crate) fn set_resume_key(&mut self, key: ResumeKey) {
        self.resume_key = key;
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            conversations: self.convs.len(),
            waiting: self.clock.waiting(),
            agents_online: self
                .shops
                .values()
                .flat_map(|s| s.agents.values())
                .filter(|a| a.online.is_some())
                .count(),
            buyers_online: self
                .convs
                .values()
                .filter(|c| c.buyer_out.is_some())
                .count(),
            refused_shop_busy: self.shops.values().map(|s| s.busy.total).sum(),
        }
    }

    /// Outboxes of every online agent (for broadcasts such as reloads).
    pub(crate) fn agent_outboxes(&self) -> Vec<Outbox> {
        self.shops
            .values()
            .flat_map(|s| s.agents.values())
            .filter_map(|a| a.online.clone())
            .collect()
    }

    /// Notes a new deadline; wakes the timer if it sleeps past it.
    fn deadline_added(timer_wake: &mut Option<Instant>, at: Instant, fx: &mut Effects) {
        if timer_wake.is_none_or(|w| at < w) {
            *timer_wake = Some(at);
            fx.wake_timer = true;
        }
    }

    /// Whether `agent` of `shop` may sign in (configured, not removed by
    /// a reload): the sign-in throttle keeps real accounts apart.
    pub(crate) fn agent_known(&self, shop: &str, agent: &str) -> bool {
        self.shops
            .get(shop)
            .and_then(|s| s.agents.get(agent))
            .is_some_and(|a| !a.token.is_empty())
    }

    // ---- settings reload ------------------------------------------------------------

    /// Takes the agents of `config` (SIGHUP): a new agent may sign in, a
    /// changed token replaces the old one, a removed agent can no longer
    /// sign in (its token is emptied, which no hello matches). An agent
    /// whose token changed or who was removed and is online is signed
    /// out (`bad_token`, 1008): a leaked token must not keep its session.
    /// A removed agent's conversations move to a colleague at once, also
    /// those of one away within the grace (they are not coming back), and
    /// the colleagues' pages drop them from their lists. Shop names follow
    /// the file. A shop the file no longer lists loses its agents (a shop
    /// taken off the service must not keep its staff's tokens working
    /// until a restart) and refuses new buyers; a shop added needs a
    /// restart (its routing is built at start) and is only reported.
    pub(crate) fn reload_staff(
        &mut self,
        config: &Config,
        ctx: &Ctx,
        now: Instant,
        fx: &mut Effects,
    ) -> StaffChanges {
        let mut changes = StaffChanges::default();
        let Hub {
            shops,
            convs,
            clock,
            ..
        } = self;
        for (shop_id, shop) in shops.iter_mut() {
            let Some(sc) = config.shops.get(&**shop_id) else {
                if !shop.removed {
                    shop.removed = true;
                    changes.shops_removed.push(shop_id.to_string());
                }
                let all: Vec<Arc<str>> = shop.agents.keys().cloned().collect();
                Self::remove_agents(
                    shop,
                    shop_id,
                    &all,
                    convs,
                    clock,
                    ctx,
                    now,
                    fx,
                    &mut changes,
                );
                continue;
            };
            if shop.removed {
                shop.removed = false;
                changes.shops_back.push(shop_id.to_string());
            }
            let name = config.shop_name(shop_id);
            if *shop.name != *name {
                shop.name = Arc::from(name);
            }
            for (aid, ac) in &sc.agents {
                let who = format!("{shop_id}:{aid}");
                match shop.agents.get_mut(aid.as_str()) {
                    Some(a) => {
                        a.name = ac.name.as_deref().map(Arc::from);
                        if a.token != ac.token {
                            if a.token.is_empty() {
                                changes.added.push(who);
                            } else {
                                changes.changed.push(who);
                                if let Some(out) = &a.online {
                                    fx.closes.push((out.clone(), signed_out()));
                                    a.signing_out = true;
                                }
                            }
                            a.token = ac.token.clone();
                        }
                    }
                    None => {
                        shop.agents.insert(Arc::from(aid.as_str()), Agent::new(ac));
                        changes.added.push(who);
                    }
                }
            }
            let gone: Vec<Arc<str>> = shop
                .agents
                .keys()
                .filter(|aid| !sc.agents.contains_key(&***aid))
                .cloned()
                .collect();
            Self::remove_agents(
                shop,
                shop_id,
                &gone,
                convs,
                clock,
                ctx,
                now,
                fx,
                &mut changes,
            );
        }
        changes.shops_added = config
            .shops
            .keys()
            .filter(|id| !self.shops.contains_key(id.as_str()))
            .cloned()
            .collect();
        // The shops are a hash map: a stable order for the log and tests.
        for list in [
            &mut changes.added,
            &mut changes.changed,
            &mut changes.removed,
            &mut changes.shops_removed,
            &mut changes.shops_back,
        ] {
            list.sort();
        }
        changes
    }

    /// Empties the tokens of `ids` (no hello matches them any more), signs
    /// the online ones out (their conversations then move as they leave),
    /// moves at once the conversations of those away within the grace, and
    /// tells the colleagues online to drop them from their lists. All the
    /// tokens go first, so no conversation moves to an agent removed by
    /// the same reload.
    #[allow(clippy::too_many_arguments)]
    fn remove_agents(
        shop: &mut Shop,
        shop_id: &str,
        ids: &[Arc<str>],
        convs: &mut HashMap<Arc<str>, Conv>,
        clock: &Clock<Arc<str>>,
        ctx: &Ctx,
        now: Instant,
        fx: &mut Effects,
        changes: &mut StaffChanges,
    ) {
        let mut removed: Vec<&Arc<str>> = Vec::new();
        for aid in ids {
            if let Some(a) = shop.agents.get_mut(aid).filter(|a| !a.removed()) {
                a.token.clear();
                a.signing_out = a.online.is_some();
                changes.removed.push(format!("{shop_id}:{aid}"));
                removed.push(aid);
            }
        }
        for aid in removed {
            let Some(a) = shop.agents.get(aid) else {
                continue;
            };
            match &a.online {
                Some(out) => fx.closes.push((out.clone(), signed_out())),
                None if !a.convs.is_empty() => {
                    Self::move_conversations(shop, aid, convs, clock, ctx, now, fx)
                }
                None => {}
            }
            tell_colleagues(shop, aid, Presence::Removed, fx);
        }
    }

    // ---- hello ----------------------------------------------------------------------

    /// Closes for good the open conversation of `buyer` at `shop_id` if it
    /// lost its secret at a restart and `resume` does not verify; returns
    /// whether it did. Nobody holds such a secret, so refusing the hello
    /// (`buyer_taken`) would lock the buyer out until the conversation
    /// expires, 30 minutes of an agent seeing a chat nobody can join.
    /// Opening a new, empty conversation instead shows nobody its history,
    /// so the secret's promise holds: only a secret reads a chat.
    fn close_if_secret_lost(
        &mut self,
        shop_id: &str,
        buyer: &str,
        resume: Option<&str>,
        at: i64,
        fx: &mut Effects,
    ) -> bool {
        let Some(cid) = self
            .shops
            .get(shop_id)
            .and_then(|s| s.buyers.get(buyer))
            .filter(|cid| self.lost_secrets.contains(*cid))
            .cloned()
        else {
            return false;
        };
        let verifies = self
            .convs
            .get(&cid)
            .is_some_and(|c| resume.is_some_and(|r| ct_eq(r.as_bytes(), c.secret.as_bytes())));
        if verifies {
            return false;
        }
        self.close_conversation(&cid, at, super::restore::SECRET_LOST, fx);
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn buyer_hello(
        &mut self,
        ctx: &Ctx,
        shop_id: &str,
        buyer: &str,
        resume: Option<&str>,
        out: &Outbox,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<BuyerSession, Refusal> {
        // An id with an open conversation was accepted when it opened: a
        // rule made stricter since (an upgrade) must not strand its buyer
        // outside a conversation the restart brought back (found by
        // review). The secret still decides who gets in.
        let open = self
            .shops
            .get(shop_id)
            .is_some_and(|s| s.buyers.contains_key(buyer));
        if !open {
            check_buyer_id(buyer)?;
        }
        // A shop a reload removed is refused as after a restart without it,
        // before anything is done to its conversations.
        if self.shops.get(shop_id).is_some_and(|s| s.removed) {
            return Err(unknown_shop(shop_id));
        }
        let replacing = self.close_if_secret_lost(shop_id, buyer, resume, ctx.tb.ms(now), fx);
        let Hub {
            shops,
            convs,
            clock,
            resume_key,
            away,
            away_empty,
            ..
        } = self;
        let Some(shop_key) = shops.get_key_value(shop_id).map(|(k, _)| k.clone()) else {
            return Err(unknown_shop(shop_id));
        };
        let shop = shops.get_mut(shop_id).expect("just found");
        let tb = ctx.tb;
        let at = tb.ms(now);

        if let Some(cid) = shop.buyers.get(buyer).cloned() {
            let conv = convs
                .get_mut(&cid)
                .expect("buyer index points at open conversations");
            let secret_ok = resume.is_some_and(|r| ct_eq(r.as_bytes(), conv.secret.as_bytes()));
            if !secret_ok {
                return Err(Refusal::new(
                    ErrorCode::BuyerTaken,
                    "this buyer id already has an open conversation; rejoin it with the \
                     `resume` secret of its welcome",
                ));
            }
            // After the secret: a wrong one must not spend the buyer's rate.
            if !conv.bucket.take(now) {
                return Err(resumes_limited(&ctx.config.limits));
            }
            if let Some(old) = conv.buyer_out.replace(out.clone()) {
                fx.closes.push((old, replaced()));
            }
            if let Some(since) = conv.away_since.take() {
                Away::forget(away, away_empty, since, &conv.id);
            }
            fx.send(
                out,
                &ServerMsg::BuyerWelcome {
                    role: Role::Buyer,
                    conversation: &conv.id,
                    shop: &shop_key,
                    shop_name: &shop.name,
                    resume: &conv.secret,
                    resumed: true,
                    history: conv.buyer_lines(&shop.agents),
                    received: conv.received,
                    rated: conv.rated,
                    max_text_chars: ctx.config.limits.max_text_chars,
                },
            );
            if let Some(agent_out) = agent_outbox(shop, conv) {
                fx.send(
                    agent_out,
                    &ServerMsg::Presence {
                        conversation: &conv.id,
                        online: true,
                    },
                );
            }
            return Ok(BuyerSession {
                shop: shop_key,
                buyer: conv.buyer.clone(),
                conv: cid,
                conn: out.conn,
            });
        }

        // Anyone may open conversations (buyer ids are not authenticated),
        // and each keeps up to `history_bytes` of chat: the cap bounds the
        // memory a shop's conversations take, and the welcome of the
        // first agent to sign in after a quiet spell, which carries them
        // all. Resumes (above) are never refused, nor a conversation that
        // takes the place of one that lost its secret (the count stays).
        let cap = ctx.config.limits.max_open_conversations;
        if !replacing && shop.buyers.len() >= cap {
            if let Some(refused) = shop.busy.refused(now) {
                fx.shop_busy = Some(ShopBusy {
                    shop: shop_key.clone(),
                    refused,
                    cap,
                });
            }
            return Err(Refusal::new(
                ErrorCode::ShopBusy,
                format!(
                    "亲，{}当前咨询人数较多，客服暂时接待不过来，请您稍后再来，给您添麻烦了～",
                    shop.name
                ),
            ));
        }

        // A new conversation: welcome, greeting, then an agent.
        let id: Arc<str> = Arc::from(format!("c{:016x}", rand::random::<u64>()));
        // Derived, not stored: it must verify after a restart, and the
        // event log it would be stored in goes to supervisors.
        let secret = resume_key.secret(&shop_key, &id);
        let buyer: Arc<str> = Arc::from(buyer);
        let agent = pick_agent(shop).or_else(|| pick_returning(shop));
        let agent_name = agent.as_ref().and_then(|a| shop.agents[a].name.clone());
        let mut conv = Conv {
            id: id.clone(),
            shop: shop_key.clone(),
            buyer: buyer.clone(),
            secret: secret.into_boxed_str(),
            agent: None,
            buyer_out: Some(out.clone()),
            away_since: None,
            history: VecDeque::new(),
            history_bytes: 0,
            rated: None,
            chatted: false,
            received: 0,
            bucket: Bucket::for_limits(&ctx.config.limits, now),
        };
        fx.send(
            out,
            &ServerMsg::BuyerWelcome {
                role: Role::Buyer,
                conversation: &id,
                shop: &shop_key,
                shop_name: &shop.name,
                resume: &conv.secret,
                resumed: false,
                history: Vec::new(),
                received: 0,
                rated: None,
                max_text_chars: ctx.config.limits.max_text_chars,
            },
        );
        let fill = Fill {
            shop: &shop.name,
            agent: agent_name.as_deref().unwrap_or(""),
            buyer: &buyer,
        };
        if let Some(t) = pick(&ctx.phrases.templates.greeting) {
            let text = fill.apply(t);
            bot_say(&mut conv, None, &text, "greeting", at, ctx, fx);
        }
        shop.buyers.insert(buyer.clone(), id.clone());
        match agent {
            Some(a) => assign(shop, &mut conv, &a, "new", clock, ctx, at, fx, true),
            None => shop.unassigned.push(id.clone()),
        }
        convs.insert(id.clone(), conv);
        Ok(BuyerSession {
            shop: shop_key,
            buyer,
            conv: id,
            conn: out.conn,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn agent_hello(
        &mut self,
        ctx: &Ctx,
        shop_id: &str,
        agent_id: &str,
        token: Option<&str>,
        out: &Outbox,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<AgentSession, Refusal> {
        let refuse = || {
            Refusal::new(
                ErrorCode::BadToken,
                "unknown shop or agent, or wrong token; check the agent id and token",
            )
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Refusal::new(
                ErrorCode::BadToken,
                "an agent hello needs `token`",
            ));
        };
        let Hub {
            shops,
            convs,
            clock,
            ..
        } = self;
        let shop_key = shops.get_key_value(shop_id).ok_or_else(refuse)?.0.clone();
        let shop = shops.get_mut(shop_id).expect("just found");
        let agent_key = shop
            .agents
            .get_key_value(agent_id)
            .ok_or_else(refuse)?
            .0
            .clone();
        let agent = shop.agents.get_mut(agent_id).expect("just found");
        if !ct_eq(token.as_bytes(), agent.token.as_bytes()) {
            return Err(refuse());
        }
        agent.moves_at = None;
        agent.signing_out = false;
        match agent.online.replace(out.clone()) {
            Some(old) => fx.closes.push((old, replaced())),
            None => tell_colleagues(shop, &agent_key, Presence::Online, fx),
        }
        let tb = ctx.tb;
        let at = tb.ms(now);
        // Buyers who came while no agent was online. The ones given to this
        // agent travel in its welcome below rather than as a frame each: a
        // backlog longer than the outbound queue (双11 after a network blip)
        // must not get the agent disconnected as it signs in.
        let mut pending = std::mem::take(&mut shop.unassigned);
        pending.sort_by_key(|c| convs.get(c).map(|c| waiting_key(clock, c)));
        let mut others = Vec::new();
        for cid in pending {
            let Some(conv) = convs.get_mut(&cid) else {
                continue;
            };
            let next = pick_agent(shop).expect("this agent is online");
            assign(shop, conv, &next, "waiting", clock, ctx, at, fx, false);
            if next != agent_key {
                others.push((next, cid));
            }
        }
        tell_assigned(shop, convs, &others, "waiting", clock, ctx, fx);
        let agent = shop.agents.get(agent_id).expect("just found");
        // The conversations this agent still holds (a reconnect that
        // replaced an older connection), longest-waiting first.
        // Matched and serialised by the agent's connection, after the
        // lock is released (see `Render`).
        let mut mine: Vec<&Conv> = agent.convs.iter().filter_map(|c| convs.get(c)).collect();
        mine.sort_by_key(|c| waiting_key(clock, c));
        let budget = snapshot_budget(mine.len(), ctx.config.limits.history_bytes);
        let mine = mine
            .into_iter()
            .map(|c| c.snapshot(clock.round(&c.id), tb, budget))
            .collect();
        let colleagues = shop
            .agents
            .iter()
            .filter(|(id, a)| **id != agent_key && !a.removed())
            .map(|(id, a)| ColleagueSnap {
                agent: id.clone(),
                name: a.name.clone(),
                online: a.online.is_some(),
            })
            .collect();
        let s = clock.settings();
        let kind = RenderKind::Welcome {
            agent: agent_key.clone(),
            shop: shop_key.clone(),
            clock: ClockView {
                target_ms: s.target.as_millis() as u64,
                nudge_ms: s.nudge.as_millis() as u64,
            },
            colleagues,
            library: ctx
                .library
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            max_text_chars: ctx.config.limits.max_text_chars,
        };
        fx.send_later(out, Render::new(ctx, &shop.name, agent, kind, mine));
        Ok(AgentSession {
            shop: shop_key,
            agent: agent_key,
            conn: out.conn,
        })
    }

    // ---- messages ---------------------------------------------------------------------

    pub(crate) fn buyer_message(
        &mut self,
        ctx: &Ctx,
        s: &BuyerSession,
        text: &Arc<str>,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<MessagePlan, Refusal> {
        let Hub {
            shops,
            convs,
            clock,
            timer_wake,
            ..
        } = self;
        let conv = own_conv(convs, s)?;
        if !conv.bucket.take(now) {
            return Err(rate_limited(&ctx.config.limits));
        }
        let shop = shops
            .get_mut(&conv.shop)
            .expect("conversations belong to known shops");
        let tb = ctx.tb;
        let at = tb.ms(now);
        conv.push_line(
            HLine {
                author: Author::Buyer,
                agent: None,
                to: None,
                text: text.clone(),
                at,
                note: None,
            },
            ctx.config.limits.history_bytes,
        );
        conv.chatted = true;
        conv.received += 1;
        let started = clock.buyer_message(&conv.id, now);
        if started.new {
            if let Some(first) = clock.next_alarm() {
                Self::deadline_added(timer_wake, first, fx);
            }
        }
        let agent = conv
            .agent
            .as_ref()
            .and_then(|a| shop.agents.get(a))
            .filter(|a| a.online.is_some());
        let plan = MessagePlan {
            agent: agent.and_then(|a| a.online.clone()),
            agent_name: agent.and_then(|a| a.name.clone()),
            shop_name: shop.name.clone(),
            at,
            waiting_since: tb.ms(started.round.started),
            deadline: tb.ms(started.round.deadline),
            // Past the line just pushed (the newest always stays).
            earlier: earlier_lines(conv.history.iter().rev().skip(1)),
        };
        // Nobody to answer: say so at once, once per round. Not while the
        // conversation's agent is away within the grace (a page refresh):
        // they are back in seconds, or it moves with the round running.
        if plan.agent.is_none() && !holder_returning(shop, conv) && clock.take_holding(&conv.id) {
            let fill = Fill {
                shop: &shop.name,
                agent: "",
                buyer: &conv.buyer,
            };
            if let Some(t) = offline_template(ctx) {
                bot_say(conv, None, &fill.apply(t), "offline", at, ctx, fx);
            }
        }
        Ok(plan)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn agent_reply(
        &mut self,
        ctx: &Ctx,
        s: &AgentSession,
        out: &Outbox,
        conversation: &str,
        text: &str,
        intent: Option<&str>,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<(), Refusal> {
        let Hub {
            convs,
            clock,
            shops,
            ..
        } = self;
        let conv = held(
            convs,
            s,
            conversation,
            "no open conversation with this id is assigned to you",
        )?;
        let tb = ctx.tb;
        let at = tb.ms(now);
        let ended = clock.agent_reply(&conv.id);
        let line: Arc<str> = Arc::from(text);
        conv.push_line(
            HLine {
                author: Author::Agent,
                agent: Some(s.agent.clone()),
                to: None,
                text: line.clone(),
                at,
                note: None,
            },
            ctx.config.limits.history_bytes,
        );
        conv.chatted = true;
        if let Some(buyer_out) = &conv.buyer_out {
            fx.send(
                buyer_out,
                &ServerMsg::Reply {
                    conversation: &conv.id,
                    from: Author::Agent,
                    agent_name: shops
                        .get(&s.shop)
                        .and_then(|shop| shop.agents.get(&s.agent))
                        .and_then(|a| a.name.as_deref()),
                    text,
                    at,
                    note: None,
                },
            );
        }
        fx.send_deferred(
            out,
            &ServerMsg::ReplySent {
                conversation: &conv.id,
                at,
                response_ms: ended.map(|r| now.duration_since(r.started).as_millis() as i64),
                delivered: conv.buyer_out.is_some(),
            },
        );
        let mut ev = conv.event(at, Kind::Agent);
        ev.agent = Some(s.agent.clone());
        ev.text = Some(line);
        ev.intent = intent.map(Arc::from);
        fx.events.push(ev);
        Ok(())
    }

    /// Hands `conversation`, which the sender holds, to colleague `to`
    /// (转接). Only to a colleague connected now: one away within the
    /// grace may not come back, and the buyer would be moved a second
    /// time by then. The buyer's round is not touched (a transfer answers
    /// nobody), so its deadline and alarms carry on and go to the
    /// receiver, and the reports give the round to whoever ends it, or to
    /// the receiver if nobody does.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transfer(
        &mut self,
        ctx: &Ctx,
        s: &AgentSession,
        out: &Outbox,
        conversation: &str,
        to: &str,
        note: Option<&str>,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<(), Refusal> {
        let Hub {
            shops,
            convs,
            clock,
            ..
        } = self;
        let conv = held(
            convs,
            s,
            conversation,
            "no open conversation with this id is assigned to you; only your own \
             conversations can be transferred",
        )?;
        if to == &*s.agent {
            return Err(Refusal::new(
                ErrorCode::SelfTransfer,
                "this conversation is already yours; pick a colleague to transfer it to",
            ));
        }
        let shop = shops
            .get_mut(&s.shop)
            .expect("sessions belong to known shops");
        // A colleague removed by a settings reload is no agent of the shop
        // any more, though their page may not have closed yet.
        let Some((to_key, receiver)) = shop.agents.get_key_value(to).filter(|(_, a)| !a.removed())
        else {
            return Err(Refusal::new(
                ErrorCode::UnknownAgent,
                format!(
                    "this shop has no agent `{}`; pick a colleague from the list in your welcome",
                    to.chars().take(64).collect::<String>()
                ),
            ));
        };
        let Some(to_out) = receiver.online.clone().filter(|_| !receiver.signing_out) else {
            return Err(Refusal::new(
                ErrorCode::AgentOffline,
                format!("agent `{to}` is not online; pick a colleague who is online"),
            ));
        };
        let to_key = to_key.clone();
        let at = ctx.tb.ms(now);
        // Before the move, so the receiver finds it in the history. The
        // shop's own line if it wrote one; `{agent}` is the receiver.
        let line = match pick(&ctx.phrases.templates.transfer) {
            Some(t) => Fill {
                shop: &shop.name,
                agent: receiver.name.as_deref().unwrap_or(""),
                buyer: &conv.buyer,
            }
            .apply(t),
            None => TRANSFER_LINE.to_string(),
        };
        bot_say(conv, None, &line, "transferred", at, ctx, fx);
        // The staff's own record of the handover, after the buyer's line
        // (the order the restore reads them in: the bot event, then the
        // `assign`): who sent it to whom, and the note, empty when there
        // is none (the receiver still learns who handed it over). In the
        // history, so the receiver's reload, a later move or transfer and
        // a restart keep it; never shown to the buyer (`buyer_lines`),
        // and no event of its own (the `assign` event below records it).
        conv.push_line(
            HLine {
                author: Author::System,
                agent: Some(s.agent.clone()),
                to: Some(to_key.clone()),
                text: Arc::from(note.unwrap_or("")),
                at,
                note: Some("transferred"),
            },
            ctx.config.limits.history_bytes,
        );
        if let Some(from) = shop.agents.get_mut(&s.agent) {
            from.convs.remove(&conv.id);
        }
        let receiver = shop.agents.get_mut(&to_key).expect("just found");
        receiver.convs.insert(conv.id.clone());
        conv.agent = Some(to_key.clone());
        // The sender is the agent of the previous `assign` event; the note
        // goes in `text`, which `assign` events had no use for.
        let mut ev = conv.event(at, Kind::Assign);
        ev.agent = Some(to_key.clone());
        ev.note = Some(Cow::Borrowed("transferred"));
        ev.text = note.map(Arc::from);
        fx.events.push(ev);
        let kind = RenderKind::Assigned {
            reason: "transferred",
            from: Some(s.agent.clone()),
            note: note.map(Arc::from),
        };
        let snap = conv.snapshot(clock.round(&conv.id), ctx.tb, usize::MAX);
        fx.send_later(
            &to_out,
            Render::new(ctx, &shop.name, receiver, kind, vec![snap]),
        );
        fx.send(
            out,
            &ServerMsg::ConversationTransferred {
                conversation: &conv.id,
                to: &to_key,
                at,
            },
        );
        Ok(())
    }

    pub(crate) fn rate(
        &mut self,
        ctx: &Ctx,
        s: &BuyerSession,
        out: &Outbox,
        score: &str,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<(), Refusal> {
        let Some(rating) = parse_rating(score) else {
            return Err(Refusal::new(
                ErrorCode::BadScore,
                "score must be one of very_satisfied, satisfied, neutral, dissatisfied, \
                 very_dissatisfied",
            ));
        };
        let Hub { shops, convs, .. } = self;
        let conv = own_conv(convs, s)?;
        if conv.rated.is_some() {
            return Err(Refusal::new(
                ErrorCode::AlreadyRated,
                "this conversation is already rated",
            ));
        }
        conv.rated = Some(rating);
        fx.send(
            out,
            &ServerMsg::Rated {
                conversation: None,
                score: rating,
            },
        );
        if let Some(agent_out) = shops
            .get(&conv.shop)
            .and_then(|shop| agent_outbox(shop, conv))
        {
            fx.send(
                agent_out,
                &ServerMsg::Rated {
                    conversation: Some(&conv.id),
                    score: rating,
                },
            );
        }
        let mut ev = conv.event(ctx.tb.ms(now), Kind::Rating);
        ev.agent = conv.agent.clone();
        ev.score = Some(rating);
        fx.events.push(ev);
        Ok(())
    }

    // ---- leaving ------------------------------------------------------------------------

    pub(crate) fn buyer_left(
        &mut self,
        ctx: &Ctx,
        s: &BuyerSession,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Hub {
            shops,
            convs,
            away,
            away_empty,
            timer_wake,
            ..
        } = self;
        let Some(conv) = convs.get_mut(&s.conv) else {
            return;
        };
        if conv.buyer_out.as_ref().map(|o| o.conn) != Some(s.conn) {
            return; // a newer connection took over
        }
        conv.buyer_out = None;
        if let Some(since) = conv.away_since.replace(now) {
            // Not expected (a resume clears it), but never two entries.
            Away::forget(away, away_empty, since, &conv.id);
        }
        away.insert(now, &conv.id);
        if let Some(agent_out) = shops
            .get(&conv.shop)
            .and_then(|shop| agent_outbox(shop, conv))
        {
            fx.send(
                agent_out,
                &ServerMsg::Presence {
                    conversation: &conv.id,
                    online: false,
                },
            );
        }
        // The expiry of this conversation is a deadline like the clock's.
        Self::deadline_added(timer_wake, now + ctx.config.limits.resume_window, fx);
        if !conv.chatted {
            away_empty.insert(now, &conv.id);
            Self::deadline_added(timer_wake, now + EMPTY_CLOSE_AFTER, fx);
        }
    }

    pub(crate) fn agent_left(
        &mut self,
        ctx: &Ctx,
        s: &AgentSession,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Hub {
            shops,
            convs,
            clock,
            ..
        } = self;
        let Some(shop) = shops.get_mut(&s.shop) else {
            return;
        };
        let Some(agent) = shop.agents.get_mut(&s.agent) else {
            return;
        };
        if agent.online.as_ref().map(|o| o.conn) != Some(s.conn) {
            return; // replaced by a newer connection of the same agent
        }
        agent.online = None;
        agent.signing_out = false;
        let grace = ctx.config.limits.agent_grace;
        let removed = agent.removed();
        // A removed agent is not coming back: no grace.
        if grace.is_zero() || removed {
            Self::move_conversations(shop, &s.agent, convs, clock, ctx, now, fx);
        } else {
            // A page refresh or a network blip comes back within seconds:
            // the agent keeps their conversations until the grace ends.
            agent.moves_at = Some(now + grace);
            let (shop_id, agent_id) = (s.shop.clone(), s.agent.clone());
            leave_at(&mut self.leaving, (now + grace, shop_id, agent_id));
            Self::deadline_added(&mut self.timer_wake, now + grace, fx);
        }
        // The colleagues were told of a removal when it happened; an
        // `online: false` now would put the agent back on their lists.
        if !removed {
            tell_colleagues(shop, &s.agent, Presence::Offline, fx);
        }
    }

    /// Moves the conversations of `agent_id`, who went offline, to the other
    /// online agents (longest-waiting first), or leaves them waiting.
    fn move_conversations(
        shop: &mut Shop,
        agent_id: &str,
        convs: &mut HashMap<Arc<str>, Conv>,
        clock: &Clock<Arc<str>>,
        ctx: &Ctx,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(agent) = shop.agents.get_mut(agent_id) else {
            return;
        };
        agent.moves_at = None;
        let mut moving: Vec<Arc<str>> = std::mem::take(&mut agent.convs).into_iter().collect();
        moving.sort_by_key(|c| convs.get(c).map(|c| waiting_key(clock, c)));
        let at = ctx.tb.ms(now);
        let mut moved = Vec::new();
        for cid in moving {
            let Some(conv) = convs.get_mut(&cid) else {
                continue;
            };
            match pick_agent(shop) {
                Some(next) => {
                    assign(shop, conv, &next, "reassigned", clock, ctx, at, fx, false);
                    moved.push((next, cid));
                }
                None => {
                    conv.agent = None;
                    shop.unassigned.push(cid);
                }
            }
        }
        tell_assigned(shop, convs, &moved, "reassigned", clock, ctx, fx);
    }

    // ---- restart ----------------------------------------------------------------------------

    /// Puts back conversations rebuilt from the event log (see
    /// `restore`), each as after everyone disconnected at `now`: buyer
    /// away, agent offline for `grace` (moving on then unless back), the
    /// unassigned waiting for an agent. Logs a `restore` event for each, so
    /// that the next start finds it in its window even if nothing else
    /// happens to it; noted `secret_lost` when no buyer's secret can verify
    /// (a key made at this start, or the conversation lost it at an earlier
    /// one).
    pub(crate) fn restore(
        &mut self,
        ctx: &Ctx,
        open: Vec<super::restore::OpenConv>,
        now: Instant,
        grace: Duration,
        fx: &mut Effects,
    ) -> super::Restored {
        let mut done = super::Restored::default();
        let mut holders: BTreeSet<(Arc<str>, Arc<str>)> = BTreeSet::new();
        let at = ctx.tb.ms(now);
        let new_key = self.resume_key.is_new();
        let mut lost = 0;
        for o in open {
            let Some((shop_key, shop)) = self.shops.get_key_value(&o.shop) else {
                done.skipped += 1;
                continue;
            };
            if self.convs.contains_key(&o.id) || shop.buyers.contains_key(&o.buyer) {
                done.skipped += 1;
                continue;
            }
            let shop_key = shop_key.clone();
            let secret_lost = new_key || o.secret_lost;
            let empty = o.empty();
            let mut conv = Conv {
                secret: self.resume_key.secret(&shop_key, &o.id).into_boxed_str(),
                id: o.id,
                shop: shop_key.clone(),
                buyer: o.buyer,
                agent: None,
                buyer_out: None,
                away_since: Some(now),
                history: VecDeque::new(),
                history_bytes: 0,
                rated: o.rated,
                chatted: !empty,
                // What the log shows; lower than the buyer's page knew when
                // the start did not read the conversation's beginning (the
                // page then falls back on the texts).
                received: o.lines.iter().filter(|l| l.author == Author::Buyer).count() as u64,
                bucket: Bucket::for_limits(&ctx.config.limits, now),
            };
            for l in o.lines {
                let line = HLine {
                    author: l.author,
                    agent: l.agent,
                    to: l.to,
                    text: l.text,
                    at: l.at,
                    note: l.note,
                };
                conv.push_line(line, ctx.config.limits.history_bytes);
            }
            if let Some(r) = o.round {
                let started = ctx.tb.instant(r.started_ms);
                self.clock.resume(
                    &conv.id,
                    Round {
                        started,
                        deadline: started,
                        holding_sent: r.holding_sent,
                        nudged: r.nudged,
                        breached: r.breached,
                    },
                );
                done.waiting += 1;
            }
            let shop = self.shops.get_mut(&shop_key).expect("just found");
            let holder = o
                .agent
                .and_then(|a| shop.agents.get_key_value(&a).map(|(k, _)| k.clone()));
            match holder {
                Some(a) => {
                    let agent = shop.agents.get_mut(&a).expect("just found");
                    agent.convs.insert(conv.id.clone());
                    agent.moves_at = Some(now + grace);
                    conv.agent = Some(a.clone());
                    holders.insert((shop_key.clone(), a));
                }
                None => shop.unassigned.push(conv.id.clone()),
            }
            shop.buyers.insert(conv.buyer.clone(), conv.id.clone());
            self.away.insert(now, &conv.id);
            if !conv.chatted {
                self.away_empty.insert(now, &conv.id);
            }
            let mut ev = conv.event(at, Kind::Restore);
            ev.agent = conv.agent.clone();
            if secret_lost {
                ev.note = Some(Cow::Borrowed(super::restore::SECRET_LOST));
                self.lost_secrets.insert(conv.id.clone());
                lost += 1;
            }
            fx.events.push(ev);
            self.convs.insert(conv.id.clone(), conv);
            done.conversations += 1;
        }
        if lost > 0 {
            warn!(
                conversations = lost,
                "restored conversations whose buyers' resume secrets cannot verify (resume.key \
                 was made at this start or an earlier one: an upgrade, or a damaged key deleted): \
                 each buyer gets a new conversation when back, the old one is closed"
            );
        }
        let Hub {
            shops,
            convs,
            clock,
            leaving,
            ..
        } = self;
        for shop in shops.values_mut() {
            shop.unassigned
                .sort_by_key(|c| convs.get(c).map(|c| waiting_key(clock, c)));
        }
        for (shop_id, agent_id) in holders {
            leave_at(leaving, (now + grace, shop_id, agent_id));
        }
        if done.conversations > 0 {
            // The timer works out the deadlines when it looks again.
            Self::deadline_added(&mut self.timer_wake, now, fx);
        }
        done
    }

    // ---- time -------------------------------------------------------------------------------

    /// Fires every alarm due at `now` and closes conversations whose buyer
    /// stayed away past the resume window, or past [`EMPTY_CLOSE_AFTER`]
    /// when nobody chatted in them. Returns when to run again.
    pub(crate) fn tick(&mut self, ctx: &Ctx, now: Instant, fx: &mut Effects) -> Option<Instant> {
        let tb = ctx.tb;
        {
            let Hub {
                shops,
                convs,
                clock,
                ..
            } = self;
            while let Some((cid, alarm, round, due)) = clock.pop_due(now) {
                let Some(conv) = convs.get_mut(&cid) else {
                    continue;
                };
                let Some(shop) = shops.get(&conv.shop) else {
                    continue;
                };
                let due_ms = tb.ms(due);
                let agent_out = agent_outbox(shop, conv).cloned();
                match alarm {
                    Alarm::Holding => {
                        let agent_name = conv
                            .agent
                            .as_ref()
                            .and_then(|a| shop.agents.get(a))
                            .and_then(|a| a.name.clone());
                        let fill = Fill {
                            shop: &shop.name,
                            agent: agent_name.as_deref().unwrap_or(""),
                            buyer: &conv.buyer,
                        };
                        let (note, template) =
                            if agent_out.is_some() || holder_returning(shop, conv) {
                                ("holding", pick(&ctx.phrases.templates.holding))
                            } else {
                                ("offline", offline_template(ctx))
                            };
                        if let Some(t) = template {
                            let text = fill.apply(t);
                            bot_say(conv, agent_out.as_ref(), &text, note, due_ms, ctx, fx);
                        }
                    }
                    Alarm::Nudge | Alarm::Breach => {
                        let (conversation, buyer) = (&*conv.id, &*conv.buyer);
                        let waiting_since = tb.ms(round.started);
                        let deadline = tb.ms(round.deadline);
                        let (msg, kind) = if alarm == Alarm::Nudge {
                            (
                                ServerMsg::Nudge {
                                    conversation,
                                    buyer,
                                    waiting_since,
                                    deadline,
                                    at: due_ms,
                                },
                                Kind::Nudge,
                            )
                        } else {
                            (
                                ServerMsg::Breach {
                                    conversation,
                                    buyer,
                                    waiting_since,
                                    deadline,
                                    at: due_ms,
                                },
                                Kind::Breach,
                            )
                        };
                        if let Some(out) = &agent_out {
                            fx.send(out, &msg);
                        }
                        let mut ev = conv.event(due_ms, kind);
                        ev.agent = conv.agent.clone();
                        fx.events.push(ev);
                    }
                }
            }
        }
        let window = ctx.config.limits.resume_window;
        while let Some((since, cid)) = self.away.pop_due(|since| since + window <= now) {
            if self
                .convs
                .get(&cid)
                .is_some_and(|c| c.away_since == Some(since))
            {
                self.close_conversation(&cid, tb.ms(now), "expired", fx);
            }
        }
        while let Some((since, cid)) = self
            .away_empty
            .pop_due(|since| since + EMPTY_CLOSE_AFTER <= now)
        {
            // Still away since then (not back, not gone and back again)
            // and still nothing said by the buyer or an agent.
            if self
                .convs
                .get(&cid)
                .is_some_and(|c| c.away_since == Some(since) && !c.chatted)
            {
                self.close_conversation(&cid, tb.ms(now), EMPTY, fx);
            }
        }
        while let Some(&(until, _, _)) = self.leaving.front() {
            if until > now {
                break;
            }
            let (until, shop_id, agent_id) = self.leaving.pop_front().expect("front exists");
            let Hub {
                shops,
                convs,
                clock,
                ..
            } = self;
            let Some(shop) = shops.get_mut(&shop_id) else {
                continue;
            };
            // Back within the grace: nothing moves. Gone again since: the
            // later disconnect's own grace decides (its entry is behind).
            if shop
                .agents
                .get(&agent_id)
                .is_some_and(|a| a.online.is_none() && a.moves_at == Some(until))
            {
                Self::move_conversations(shop, &agent_id, convs, clock, ctx, now, fx);
            }
        }
        let next_expiry = self.away.first().map(|since| since + window);
        let next_empty = self
            .away_empty
            .first()
            .map(|since| since + EMPTY_CLOSE_AFTER);
        let next_move = self.leaving.front().map(|&(until, _, _)| until);
        let next = [self.clock.next_alarm(), next_expiry, next_empty, next_move]
            .into_iter()
            .flatten()
            .min();
        self.timer_wake = next;
        next
    }

    /// Ends a conversation for good (`note`: why; `expired`, its buyer did
    /// not come back, [`EMPTY`], they left without anyone chatting, or
    /// `secret_lost`), and logs it: a restart brings back only
    /// conversations not closed.
    fn close_conversation(
        &mut self,
        cid: &Arc<str>,
        at: i64,
        note: &'static str,
        fx: &mut Effects,
    ) {
        let Some(conv) = self.convs.remove(cid) else {
            return;
        };
        if let Some(since) = conv.away_since {
            Away::forget(&mut self.away, &mut self.away_empty, since, cid);
        }
        self.clock.remove(cid);
        self.lost_secrets.remove(cid);
        let mut ev = conv.event(at, Kind::Close);
        ev.agent = conv.agent.clone();
        ev.note = Some(Cow::Borrowed(note));
        fx.events.push(ev);
        let Some(shop) = self.shops.get_mut(&conv.shop) else {
            return;
        };
        if shop.buyers.get(&conv.buyer) == Some(cid) {
            shop.buyers.remove(&conv.buyer);
        }
        shop.unassigned.retain(|c| c != cid);
        if let Some(agent) = conv.agent.as_ref().and_then(|a| shop.agents.get_mut(a)) {
            agent.convs.remove(cid);
            if let Some(out) = &agent.online {
                fx.send(
                    out,
                    &ServerMsg::ConversationClosed {
                        conversation: cid,
                        reason: note,
                    },
                );
            }
        }
    }
}

// ---- helpers ------------------------------------------------------------------------

/// Queues an agent's move in time order: a restart's longer grace puts
/// moves in the queue that come after later disconnects' ones, and the
/// timer reads it from the front.
fn leave_at(
    leaving: &mut VecDeque<(Instant, Arc<str>, Arc<str>)>,
    entry: (Instant, Arc<str>, Arc<str>),
) {
    let at = leaving.partition_point(|e| e.0 <= entry.0);
    leaving.insert(at, entry);
}

/// The conversation of a buyer session, if this connection still holds it.
fn own_conv<'a>(
    convs: &'a mut HashMap<Arc<str>, Conv>,
    s: &BuyerSession,
) -> Result<&'a mut Conv, Refusal> {
    convs
        .get_mut(&s.conv)
        .filter(|c| c.buyer_out.as_ref().is_some_and(|o| o.conn == s.conn))
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnknownConversation,
                "your conversation is closed; reconnect and say hello again",
            )
        })
}

/// The outbox of the agent holding `conv`, if they are online.
fn agent_outbox<'a>(shop: &'a Shop, conv: &Conv) -> Option<&'a Outbox> {
    conv.agent
        .as_ref()
        .and_then(|a| shop.agents.get(a))
        .and_then(|a| a.online.as_ref())
}

/// Whether `conv`'s agent is offline but within the grace, their
/// conversations not yet moved.
fn holder_returning(shop: &Shop, conv: &Conv) -> bool {
    conv.agent
        .as_ref()
        .and_then(|a| shop.agents.get(a))
        .is_some_and(Agent::returning)
}

/// Conversation `id` if agent `s` holds it; else `unknown_conversation`
/// with `message` (the same answer for another's and for none at all).
fn held<'a>(
    convs: &'a mut HashMap<Arc<str>, Conv>,
    s: &AgentSession,
    id: &str,
    message: &'static str,
) -> Result<&'a mut Conv, Refusal> {
    convs
        .get_mut(id)
        .filter(|c| c.shop == s.shop && c.agent.as_deref() == Some(&*s.agent))
        .ok_or_else(|| Refusal::new(ErrorCode::UnknownConversation, message))
}

/// The online agent with the fewest open conversations (ties: smallest id).
fn pick_agent(shop: &Shop) -> Option<Arc<str>> {
    // An agent signed out by a reload is online until the close is
    // carried out.
    fewest(shop, |a| {
        a.online.is_some() && !a.signing_out && !a.removed()
    })
}

/// Of the agents `which` accepts, the one with the fewest open
/// conversations (ties: smallest id).
fn fewest(shop: &Shop, which: impl Fn(&Agent) -> bool) -> Option<Arc<str>> {
    shop.agents
        .iter()
        .filter(|(_, a)| which(a))
        .min_by_key(|(_, a)| a.convs.len())
        .map(|(id, _)| id.clone())
}

/// With nobody online, an agent away within the grace (a page refresh),
/// fewest conversations first: a new buyer waits for them as their own
/// buyers do, instead of being told at once that nobody is there (a shop
/// with one agent said so on every F5; found by review). If they are not
/// back, the conversation moves with theirs when the grace ends.
fn pick_returning(shop: &Shop) -> Option<Arc<str>> {
    fewest(shop, Agent::returning)
}

/// A buyer's hello for a shop not served here (never configured, or
/// removed by a reload: the same words, as a restart would give).
fn unknown_shop(shop_id: &str) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownShop,
        format!(
            "shop `{}` is not served here",
            shop_id.chars().take(64).collect::<String>()
        ),
    )
}

/// What [`tell_colleagues`] reports of an agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    Online,
    Offline,
    /// Taken off the shop's staff by a settings reload.
    Removed,
}

/// The sign-out a reload gives an agent whose token changed or who was
/// removed: a leaked token must not keep its session.
fn signed_out() -> CloseOrder {
    CloseOrder::refused(Refusal::new(
        ErrorCode::BadToken,
        "your token was changed or revoked: sign in again with the new one",
    ))
}

/// Tells the other online agents of `shop` that `agent_id` came online,
/// left or was removed, for their transfer control: one small frame each.
fn tell_colleagues(shop: &Shop, agent_id: &Arc<str>, presence: Presence, fx: &mut Effects) {
    let Some(name) = shop.agents.get(agent_id).map(|a| a.name.clone()) else {
        return;
    };
    let frame: Utf8Bytes = to_json(&ServerMsg::Colleague(Colleague {
        agent: agent_id,
        name: name.as_deref(),
        online: presence == Presence::Online,
        removed: presence == Presence::Removed,
    }))
    .into();
    for (id, a) in &shop.agents {
        // Not to removed agents either: they are being signed out.
        if let Some(out) = a.online.as_ref().filter(|_| id != agent_id && !a.removed()) {
            fx.sends
                .push((out.clone(), Frame::Text(frame.clone()), false));
        }
    }
}

/// What the buyer is told when their conversation is handed to a
/// colleague and the shop wrote no `transfer` template: that someone is
/// still on it, so the pause that follows is not taken for being forgotten.
pub(crate) const TRANSFER_LINE: &str = "亲，已为您转接给同事，请稍等片刻，马上为您服务哦～";

/// Sort key: waiting conversations first, longest-waiting first.
fn waiting_key(clock: &Clock<Arc<str>>, conv: &Conv) -> (bool, Option<Instant>) {
    let started = clock.round(&conv.id).map(|r| r.started);
    (started.is_none(), started)
}

/// Gives `conv` to `agent_id`: records it and, with `tell`, tells the agent
/// (`conversation_assigned`).
#[allow(clippy::too_many_arguments)]
fn assign(
    shop: &mut Shop,
    conv: &mut Conv,
    agent_id: &Arc<str>,
    reason: &'static str,
    clock: &Clock<Arc<str>>,
    ctx: &Ctx,
    at: i64,
    fx: &mut Effects,
    tell: bool,
) {
    let Some(agent) = shop.agents.get_mut(agent_id) else {
        return;
    };
    conv.agent = Some(agent_id.clone());
    agent.convs.insert(conv.id.clone());
    let mut ev = conv.event(at, Kind::Assign);
    ev.agent = Some(agent_id.clone());
    ev.note = Some(Cow::Borrowed(reason));
    fx.events.push(ev);
    if let Some(out) = agent.online.as_ref().filter(|_| tell) {
        let kind = RenderKind::Assigned {
            reason,
            from: None,
            note: None,
        };
        let snap = conv.snapshot(clock.round(&conv.id), ctx.tb, usize::MAX);
        fx.send_later(out, Render::new(ctx, &shop.name, agent, kind, vec![snap]));
    }
}

/// Tells each agent in `moved` (agent, conversation; in the order given)
/// what they were given: one `conversation_assigned` for a single
/// conversation, as for a new buyer, and one `conversations_assigned` for
/// more. A frame per conversation would let a large move (an agent with
/// hundreds of buyers leaves a shop with one colleague online) fill the
/// colleague's outbound queue, which nothing waits on, and drop them too.
/// The frames are rendered by the receiving connections ([`Render`]).
fn tell_assigned(
    shop: &Shop,
    convs: &HashMap<Arc<str>, Conv>,
    moved: &[(Arc<str>, Arc<str>)],
    reason: &'static str,
    clock: &Clock<Arc<str>>,
    ctx: &Ctx,
    fx: &mut Effects,
) {
    let mut agents: Vec<&Arc<str>> = moved.iter().map(|(a, _)| a).collect();
    agents.sort();
    agents.dedup();
    for agent_id in agents {
        let Some(agent) = shop.agents.get(agent_id) else {
            continue;
        };
        let Some(out) = agent.online.as_ref() else {
            continue;
        };
        let theirs: Vec<&Conv> = moved
            .iter()
            .filter(|(a, _)| a == agent_id)
            .filter_map(|(_, c)| convs.get(c))
            .collect();
        let budget = snapshot_budget(theirs.len(), ctx.config.limits.history_bytes);
        let theirs: Vec<ConvSnap> = theirs
            .into_iter()
            .map(|c| c.snapshot(clock.round(&c.id), ctx.tb, budget))
            .collect();
        if theirs.is_empty() {
            continue;
        }
        let kind = RenderKind::Assigned {
            reason,
            from: None,
            note: None,
        };
        fx.send_later(out, Render::new(ctx, &shop.name, agent, kind, theirs));
    }
}

/// The bot says `text` in `conv`: history, buyer, agent, event.
fn bot_say(
    conv: &mut Conv,
    agent_out: Option<&Outbox>,
    text: &str,
    note: &'static str,
    at: i64,
    ctx: &Ctx,
    fx: &mut Effects,
) {
    let line: Arc<str> = Arc::from(text);
    conv.push_line(
        HLine {
            author: Author::Bot,
            agent: None,
            to: None,
            text: line.clone(),
            at,
            note: Some(note),
        },
        ctx.config.limits.history_bytes,
    );
    if let Some(out) = &conv.buyer_out {
        fx.send(
            out,
            &ServerMsg::Reply {
                conversation: &conv.id,
                from: Author::Bot,
                agent_name: None,
                text,
                at,
                note: Some(note),
            },
        );
    }
    if let Some(out) = agent_out {
        fx.send(
            out,
            &ServerMsg::BotReply {
                conversation: &conv.id,
                text,
                at,
                note,
            },
        );
    }
    let mut ev = conv.event(at, Kind::Bot);
    ev.text = Some(line);
    ev.note = Some(Cow::Borrowed(note));
    fx.events.push(ev);
}

fn pick(list: &[String]) -> Option<&str> {
    match list.len() {
        0 => None,
        n => Some(&list[rand::random_range(0..n)]),
    }
}

/// The offline template, or a holding one when the shop wrote none.
fn offline_template<'a>(ctx: &Ctx<'a>) -> Option<&'a str> {
    let t = &ctx.phrases.templates;
    pick(&t.offline).or_else(|| pick(&t.holding))
}

fn replaced() -> CloseOrder {
    CloseOrder::refused(Refusal::new(
        ErrorCode::Replaced,
        "a newer connection took over this session",
    ))
}

fn parse_rating(score: &str) -> Option<Rating> {
    serde_json::from_value(serde_json::Value::String(score.to_string())).ok()
}

/// Buyer ids come from the platform (nicknames included): any text up to
/// 64 characters that shows as it is on the agent's screen: nothing blank
/// or invisible (see [`crate::config::has_hidden_chars`]), so `b1 `,
/// `b1\u{3000}` or `b1\u{200b}` cannot be another buyer who looks exactly
/// like `b1`.
fn check_buyer_id(id: &str) -> Result<(), Refusal> {
    let ok = !id.is_empty() && id.chars().count() <= 64 && !crate::config::has_hidden_chars(id);
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::BadId,
            "the buyer id must be 1-64 characters with no spaces, control or invisible \
             characters",
        ))
    }
}

/// Compares secrets in time independent of where they differ and of
/// their lengths: the SHA-256 digests of both are compared, every byte.
/// Comparing the secrets themselves returned early on a length mismatch,
/// which timed told a guesser a token's length (found by review).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::render::{FRAME_HISTORY_BUDGET, MIN_SNAPSHOT_BYTES};
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// An agent a settings reload signs out (removed, or their token
    /// changed) stays connected until the close is carried out: no
    /// transfer and no new buyer may go to them meanwhile (found by
    /// review: both did, and moved again at the close).
    #[test]
    fn agents_a_reload_signs_out_get_nothing_new() {
        type Change = fn(&mut Config);
        let cases: [(&str, Change, ErrorCode); 2] = [
            (
                "removed",
                |c| {
                    c.shops.get_mut("s1").unwrap().agents.remove("a2");
                },
                ErrorCode::UnknownAgent,
            ),
            (
                "token changed",
                |c| {
                    let s1 = c.shops.get_mut("s1").unwrap();
                    s1.agents.get_mut("a2").unwrap().token = "t2-new".into();
                },
                ErrorCode::AgentOffline,
            ),
        ];
        for (name, change, want) in cases {
            let (config, phrases) = setup(100);
            let ctx = ctx(&config, &phrases);
            let mut hub = Hub::new(&config);
            let now = Instant::now();
            let mut fx = Effects::default();
            let a1 = hub
                .agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(1), now, &mut fx)
                .unwrap();
            hub.agent_hello(&ctx, "s1", "a2", Some("t2"), &outbox(2), now, &mut fx)
                .unwrap();
            let buyer = hub
                .buyer_hello(&ctx, "s1", "b1", None, &outbox(10), now, &mut fx)
                .unwrap();
            let cid = buyer.conv.clone();
            assert_eq!(hub.convs[&cid].agent.as_deref(), Some("a1"), "{name}");

            let mut reloaded = config.clone();
            change(&mut reloaded);
            let mut fx = Effects::default();
            hub.reload_staff(&reloaded, &ctx, now, &mut fx);
            assert_eq!(fx.closes.len(), 1, "{name}: a2 is signed out");

            let got = hub.transfer(&ctx, &a1, &outbox(1), &cid, "a2", None, now, &mut fx);
            assert_eq!(got.err().map(|r| r.code), Some(want), "{name}");
            // a2 holds fewer conversations, but is on the way out.
            let next = hub
                .buyer_hello(&ctx, "s1", "b2", None, &outbox(11), now, &mut fx)
                .unwrap();
            assert_eq!(hub.convs[&next.conv].agent.as_deref(), Some("a1"), "{name}");
        }
    }

    /// Shop s1 (agents a1 小美 and a2, tokens t1 and t2; at most `cap`
    /// open conversations) and s2 (agent b1), the repository's phrases, no
    /// grace for agents who leave.
    fn setup(cap: usize) -> (Config, Phrases) {
        use crate::config::{AgentConfig, ShopConfig};
        let mut config = Config {
            phrases: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases"),
            ..Config::default()
        };
        let agent = |token: &str, name: Option<&str>| AgentConfig {
            token: token.into(),
            name: name.map(str::to_string),
        };
        let mut s1 = ShopConfig {
            name: Some("测试旗舰店".into()),
            ..ShopConfig::default()
        };
        s1.agents.insert("a1".into(), agent("t1", Some("小美")));
        s1.agents.insert("a2".into(), agent("t2", None));
        let mut s2 = ShopConfig::default();
        s2.agents.insert("b1".into(), agent("u1", None));
        config.shops.insert("s1".into(), s1);
        config.shops.insert("s2".into(), s2);
        config.limits.agent_grace = Duration::ZERO;
        config.limits.max_open_conversations = cap;
        let phrases = Phrases::load(&config.phrases).expect("the repository's phrases load");
        (config, phrases)
    }

    fn ctx<'a>(config: &'a Config, phrases: &'a Phrases) -> Ctx<'a> {
        Ctx {
            config,
            tb: Timebase::new(),
            phrases,
            library: Box::leak(Box::default()),
        }
    }

    /// A buyer's outbox (its queue dropped: nothing is delivered here).
    fn outbox(conn: u64) -> Outbox {
        Outbox::new(conn, 16).0
    }

    /// Bytes of frames in `fx` that were serialised when it was built.
    fn rendered_bytes(fx: &Effects) -> usize {
        fx.sends
            .iter()
            .map(|(_, f, _)| match f {
                Frame::Text(t) => t.len(),
                Frame::Later(_) => 0,
            })
            .sum()
    }

    /// Takes the one frame of `fx` for connection `conn`.
    fn frame_for(fx: &mut Effects, conn: u64) -> Frame {
        let i = fx
            .sends
            .iter()
            .position(|(o, _, _)| o.conn == conn)
            .expect("a frame for the connection");
        fx.sends.remove(i).1
    }

    /// `v` as a client reads it (scores are `f32`: through the text).
    fn as_sent(v: &impl serde::Serialize) -> serde_json::Value {
        serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
    }

    /// A conversation of shop s1 whose history is `lines`: buyer messages,
    /// or bot lines when they start with `bot:`, a transfer's staff-only
    /// line (a1 to a2) with `sys:`, a reply of agent a1 with `agent:`.
    fn conv_with(lines: &[&str]) -> Conv {
        let mut c = Conv {
            id: "c1".into(),
            shop: "s1".into(),
            buyer: "b1".into(),
            secret: "x".into(),
            agent: None,
            buyer_out: None,
            away_since: None,
            history: VecDeque::new(),
            history_bytes: 0,
            rated: None,
            chatted: false,
            received: 0,
            bucket: Bucket::new(1.0, 1, Instant::now()),
        };
        for (i, text) in lines.iter().enumerate() {
            let (author, text) = match (text.strip_prefix("bot:"), text.strip_prefix("sys:")) {
                (Some(t), _) => (Author::Bot, t),
                (_, Some(t)) => (Author::System, t),
                _ => match text.strip_prefix("agent:") {
                    Some(t) => (Author::Agent, t),
                    None => (Author::Buyer, *text),
                },
            };
            let system = author == Author::System;
            let line = HLine {
                author,
                agent: (system || author == Author::Agent).then(|| Arc::from("a1")),
                to: system.then(|| Arc::from("a2")),
                text: Arc::from(text),
                at: i as i64,
                note: system.then_some("transferred"),
            };
            c.push_line(line, usize::MAX);
        }
        c
    }

    /// The suggestions of a waiting buyer answer their newest line and,
    /// before it, their lines since the last agent reply: bot and
    /// staff-only lines do not end the round, an agent reply does, and at
    /// most `ask::ROUND_LINES` lines in all (the newest ones).
    #[test]
    fn the_round_ask_is_the_buyer_lines_since_the_last_agent_reply() {
        /// (history, the newest buyer line and the earlier ones).
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a [&'a str])>);
        let cases: &[Case] = &[
            (&["bot:欢迎光临"], None),
            (&["bot:欢迎光临", "在吗"], Some(("在吗", &[]))),
            (&["几号发货", "agent:今天发", "谢谢"], Some(("谢谢", &[]))),
            (
                &["几号发货", "bot:客服不在", "sys:", "？"],
                Some(("？", &["几号发货"])),
            ),
            (
                &["早", "agent:您好", "一", "二", "bot:请稍等", "三", "四"],
                Some(("四", &["二", "三"])),
            ),
            // The newest buyer line even after a reply (the round is
            // closed then, and the snapshot does not ask).
            (&["几号发货", "agent:今天发"], Some(("几号发货", &[]))),
        ];
        for (lines, want) in cases {
            let got = conv_with(lines).round_ask();
            let got = got.as_ref().map(|a| {
                let earlier: Vec<&str> = a.earlier.iter().map(|t| &**t).collect();
                (&*a.newest, earlier)
            });
            let want = want.map(|(n, e)| (n, e.to_vec()));
            assert_eq!(got, want, "{lines:?}");
            assert!(!conv_with(lines)
                .round_ask()
                .is_some_and(|a| a.earlier.spilled()));
        }
    }

    /// Past 1,024 conversations a large frame's histories share
    /// `FRAME_HISTORY_BUDGET`: each keeps its newest lines within its share,
    /// at least the newest line, cut (at a character boundary) when it
    /// alone is over the share.
    #[test]
    fn large_frames_carry_the_newest_history_within_a_budget() {
        let k16 = 16 * 1024;
        let shares: &[(usize, usize, usize)] = &[
            // (conversations, history_bytes, each one's share)
            (1, k16, usize::MAX),
            (1_024, k16, usize::MAX),
            (1_025, k16, FRAME_HISTORY_BUDGET / 1_025),
            (10_000, k16, FRAME_HISTORY_BUDGET / 10_000),
            (100_000, k16, MIN_SNAPSHOT_BYTES),
            (4_000, 1_024, usize::MAX),
        ];
        for &(n, history_bytes, want) in shares {
            assert_eq!(
                snapshot_budget(n, history_bytes),
                want,
                "{n} × {history_bytes}"
            );
        }
        let long = "好".repeat(1_000); // 3,000 bytes
        let cases: &[(&[&str], usize, &[&str])] = &[
            // (history, budget, lines carried)
            (&["一", "二", "三"], usize::MAX, &["一", "二", "三"]),
            (&["一", "二", "三"], 2 * (3 + LINE_COST), &["二", "三"]),
            (&["一", "二", "三"], 2 * (3 + LINE_COST) - 1, &["三"]),
            // No room at all: the newest line, cut to its mark.
            (&["一", "二", "三"], 1, &["…"]),
            (&["一", &long], 3_000 + LINE_COST, &[&long]),
            // Newer bot lines do not push out the buyer's question: it and
            // what follows share the budget.
            (
                &["问", "bot:久", "bot:等"],
                2 * (3 + LINE_COST),
                &["问", "等"],
            ),
            (
                &["问", "bot:久", "bot:等"],
                3 * (3 + LINE_COST),
                &["问", "久", "等"],
            ),
            (&["bot:您", "bot:等"], 3 + LINE_COST, &["等"]),
            // A transfer's note is a line like any other: it costs its
            // text plus LINE_COST, goes first when older, and shares the
            // budget after the buyer's question with the bot lines.
            (
                &["问", "sys:买家要退款"],
                3 + LINE_COST + 15 + LINE_COST,
                &["问", "买家要退款"],
            ),
            (
                &["问", "sys:买家要退款"],
                3 + LINE_COST + 15 + LINE_COST - 1,
                &["问", "买…"],
            ),
            (&["sys:买家要退款", "问"], 3 + LINE_COST, &["问"]),
            (
                &["问", "sys:买家要退款", "bot:等"],
                2 * (3 + LINE_COST),
                &["问", "等"],
            ),
        ];
        for (history, budget, want) in cases {
            let snap = conv_with(history).snapshot(None, Timebase::new(), *budget);
            let got: Vec<&str> = snap.history.iter().map(|l| &*l.text).collect();
            assert_eq!(got, *want, "budget {budget}");
        }
        // The newest line alone over the share: cut to it, at a character
        // boundary, and marked.
        let snap = conv_with(&["一", &long]).snapshot(None, Timebase::new(), 600);
        assert_eq!(snap.history.len(), 1);
        let text = &*snap.history[0].text;
        assert!(text.ends_with('…'), "{text}");
        assert!(text.len() <= 600 - LINE_COST, "{} bytes", text.len());
        assert!(text.len() > 600 - LINE_COST - 6, "{} bytes", text.len());
        assert!(text.trim_end_matches('…').chars().all(|c| c == '好'));
    }

    /// `n` new buyers of shop s1 (b0, b1, ...), each sending `texts`.
    fn waiting_buyers(hub: &mut Hub, ctx: &Ctx, n: usize, texts: &[Arc<str>], now: Instant) {
        for i in 0..n {
            let mut fx = Effects::default();
            let out = outbox(100 + i as u64);
            let s = hub
                .buyer_hello(ctx, "s1", &format!("b{i}"), None, &out, now, &mut fx)
                .unwrap();
            for t in texts {
                hub.buyer_message(ctx, &s, t, now, &mut fx).unwrap();
            }
        }
    }

    /// The welcome of an agent signing in to 2,000 waiting buyers with
    /// long histories (the offline reply and four 3 KB messages each, 12.5
    /// KB) carries each one's newest two: 2,000 shares of 16 MiB are 8.4 KB
    /// each. Whole, the welcome would be 25 MB.
    #[test]
    fn a_welcome_past_1024_conversations_trims_their_histories() {
        const BUYERS: usize = 2_000;
        let (config, phrases) = setup(10_000);
        let ctx = ctx(&config, &phrases);
        let mut hub = Hub::new(&config);
        let now = Instant::now();
        let texts: Vec<Arc<str>> = (0..5)
            .map(|k| Arc::from(format!("{k}{}", "啊".repeat(1_000))))
            .collect();
        waiting_buyers(&mut hub, &ctx, BUYERS, &texts, now);
        let mut fx = Effects::default();
        hub.agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(1), now, &mut fx)
            .unwrap();
        let text = frame_for(&mut fx, 1).text();
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        let convs = v["conversations"].as_array().unwrap();
        assert_eq!(convs.len(), BUYERS);
        for c in convs {
            let got: Vec<&str> = c["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["text"].as_str().unwrap())
                .collect();
            let want: Vec<&str> = texts[3..].iter().map(|t| &**t).collect();
            assert_eq!(got, want);
        }
        assert!(
            text.len() < FRAME_HISTORY_BUDGET + BUYERS * 2_048,
            "{} bytes",
            text.len()
        );
    }

    /// With many conversations holding long histories, an agent's welcome
    /// and a colleague's grouped move are built under the hub lock only as
    /// shared data: nothing of them is matched or serialised until the
    /// receiving connection renders them, and then they hold every
    /// conversation, its history and its suggestions as before.
    #[test]
    fn large_frames_are_rendered_outside_the_hub_lock() {
        const BUYERS: usize = 60;
        let (config, phrases) = setup(10_000);
        let ctx = ctx(&config, &phrases);
        let mut hub = Hub::new(&config);
        let now = Instant::now();
        // Three long messages each: the history holds the last two (12 KB).
        let ask: Arc<str> = Arc::from(format!("这款有货吗{}", "啊".repeat(1990)));
        waiting_buyers(
            &mut hub,
            &ctx,
            BUYERS,
            &[ask.clone(), ask.clone(), ask.clone()],
            now,
        );
        let fill = Fill {
            shop: "测试旗舰店",
            agent: "小美",
            buyer: "",
        };
        let want = as_sent(&phrases.matcher.suggest(&ask, SUGGESTIONS, &fill));
        assert!(
            !want.as_array().unwrap().is_empty(),
            "the question has suggestions"
        );
        let check = |frame: Frame, ty: &str, key: &str, want: &serde_json::Value| {
            assert!(
                matches!(frame, Frame::Later(_)),
                "{ty}: rendered under the lock"
            );
            let text = frame.text();
            assert!(text.len() > BUYERS * 10_000, "{ty}: {} bytes", text.len());
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            assert_eq!(v["type"], ty);
            let convs = v[key].as_array().unwrap();
            assert_eq!(convs.len(), BUYERS, "{ty}");
            for c in convs {
                assert_eq!(c["suggestions"], *want, "{ty}");
                assert!(c["waiting_since"].is_i64(), "{ty}");
                let history = c["history"].as_array().unwrap();
                assert_eq!(history.last().unwrap()["text"], &*ask, "{ty}");
            }
        };

        // a1 signs in: every waiting buyer comes in the welcome.
        let a1 = outbox(1);
        let mut fx = Effects::default();
        let s1 = hub
            .agent_hello(&ctx, "s1", "a1", Some("t1"), &a1, now, &mut fx)
            .unwrap();
        assert!(rendered_bytes(&fx) < 1024, "{} bytes", rendered_bytes(&fx));
        check(frame_for(&mut fx, 1), "welcome", "conversations", &want);

        // a2 signs in, a1 leaves: all of it moves to a2 in one frame.
        let a2 = outbox(2);
        let mut fx = Effects::default();
        hub.agent_hello(&ctx, "s1", "a2", Some("t2"), &a2, now, &mut fx)
            .unwrap();
        let mut fx = Effects::default();
        hub.agent_left(&ctx, &s1, now, &mut fx);
        assert!(rendered_bytes(&fx) < 1024, "{} bytes", rendered_bytes(&fx));
        let fill = Fill { agent: "", ..fill };
        let want = as_sent(&phrases.matcher.suggest(&ask, SUGGESTIONS, &fill));
        check(
            frame_for(&mut fx, 2),
            "conversations_assigned",
            "conversations",
            &want,
        );
    }

    /// What a buyer's hello gets with the shop at or under its cap.
    #[test]
    fn new_buyers_beyond_a_shops_cap_are_refused_and_resumes_get_in() {
        #[derive(Debug, Clone, Copy)]
        enum Hello {
            /// A buyer id with no open conversation.
            New,
            /// b0 with its resume secret.
            Resume,
            /// b0 with a wrong secret.
            WrongSecret,
            /// A new buyer of shop s2.
            OtherShop,
            /// A new buyer after b0's conversation closed (b0 left and
            /// stayed away past the resume window).
            NewAfterAClose,
        }
        use ErrorCode::{BuyerTaken, ShopBusy};
        let cases: &[(usize, usize, Hello, Option<ErrorCode>)] = &[
            // (cap, open conversations in s1, hello, refusal)
            (3, 0, Hello::New, None),
            (3, 2, Hello::New, None),
            (3, 3, Hello::New, Some(ShopBusy)),
            (1, 1, Hello::New, Some(ShopBusy)),
            (3, 3, Hello::Resume, None),
            (3, 3, Hello::WrongSecret, Some(BuyerTaken)),
            (3, 3, Hello::OtherShop, None),
            (3, 3, Hello::NewAfterAClose, None),
        ];
        for &(cap, open, hello, refused) in cases {
            let name = format!("cap {cap}, {open} open, {hello:?}");
            let (config, phrases) = setup(cap);
            let ctx = ctx(&config, &phrases);
            let mut hub = Hub::new(&config);
            let now = Instant::now();
            let mut fx = Effects::default();
            let sessions: Vec<BuyerSession> = (0..open)
                .map(|i| {
                    hub.buyer_hello(
                        &ctx,
                        "s1",
                        &format!("b{i}"),
                        None,
                        &outbox(10 + i as u64),
                        now,
                        &mut fx,
                    )
                    .unwrap()
                })
                .collect();
            let secret = |hub: &Hub| hub.convs[&sessions[0].conv].secret.to_string();
            let mut at = now;
            let (shop, buyer, resume) = match hello {
                Hello::New => ("s1", "new", None),
                Hello::Resume => ("s1", "b0", Some(secret(&hub))),
                Hello::WrongSecret => ("s1", "b0", Some("0".repeat(32))),
                Hello::OtherShop => ("s2", "new", None),
                Hello::NewAfterAClose => {
                    hub.buyer_left(&ctx, &sessions[0], now, &mut fx);
                    at = now + config.limits.resume_window;
                    hub.tick(&ctx, at, &mut fx);
                    ("s1", "new", None)
                }
            };
            let mut fx = Effects::default();
            let got = hub.buyer_hello(
                &ctx,
                shop,
                buyer,
                resume.as_deref(),
                &outbox(1),
                at,
                &mut fx,
            );
            assert_eq!(got.as_ref().err().map(|r| r.code), refused, "{name}");
            if refused == Some(ShopBusy) {
                let r = got.unwrap_err();
                assert!(
                    r.message.starts_with("亲，测试旗舰店当前咨询人数较多"),
                    "{name}: {}",
                    r.message
                );
                assert_eq!(CloseOrder::refused(r).code, CloseCode::Again, "{name}");
                assert_eq!(hub.stats().refused_shop_busy, 1, "{name}");
                assert_eq!(hub.stats().conversations, open, "{name}: nothing opened");
                let logged = fx.shop_busy.expect("the first refusal is logged");
                assert_eq!((&*logged.shop, logged.refused, logged.cap), ("s1", 1, cap));
            } else {
                assert_eq!(hub.stats().refused_shop_busy, 0, "{name}");
                assert!(fx.shop_busy.is_none(), "{name}");
            }
        }
    }

    /// A buyer who leaves and resumes in a loop: the conversation keeps one
    /// entry in each away queue however many visits (an entry per visit,
    /// kept for the resume window, grew without bound; found by review),
    /// resumes and messages share the conversation's rate across
    /// connections (each new connection's full bucket let one conversation
    /// take about 730 messages a second), a resume over it is refused with
    /// 1013, and the conversation still expires a window after the last
    /// departure.
    #[test]
    fn a_buyer_reconnecting_in_a_loop_holds_one_entry_and_the_rate() {
        let (config, phrases) = setup(10);
        let ctx = ctx(&config, &phrases);
        let mut hub = Hub::new(&config);
        let t0 = Instant::now();
        let mut fx = Effects::default();
        let mut s = hub
            .buyer_hello(&ctx, "s1", "b1", None, &outbox(1), t0, &mut fx)
            .unwrap();
        let secret = hub.convs[&s.conv].secret.to_string();
        let burst = config.limits.rate_burst as usize;
        let mut resumed = 0;
        let mut refused = None;
        for i in 0..burst + 5 {
            // A microsecond apart: each departure its own time.
            let t = t0 + Duration::from_micros(i as u64);
            hub.buyer_left(&ctx, &s, t, &mut fx);
            assert_eq!((hub.away.len(), hub.away_empty.len()), (1, 1), "visit {i}");
            let conn = outbox(100 + i as u64);
            match hub.buyer_hello(&ctx, "s1", "b1", Some(&secret), &conn, t, &mut fx) {
                Ok(next) => {
                    s = next;
                    resumed += 1;
                }
                Err(r) => {
                    refused = Some(r);
                    break;
                }
            }
        }
        assert_eq!(resumed, burst, "the burst, then refused");
        let r = refused.expect("refused beyond the burst");
        assert_eq!(r.code, ErrorCode::RateLimited);
        assert_eq!(CloseOrder::refused(r).code, CloseCode::Again);
        assert_eq!((hub.away.len(), hub.away_empty.len()), (1, 1));

        // Later, the bucket full again: a burst, one of it for the resume.
        let t1 = t0 + Duration::from_secs(3);
        let s = hub
            .buyer_hello(&ctx, "s1", "b1", Some(&secret), &outbox(1000), t1, &mut fx)
            .expect("resumed once the rate allows");
        assert_eq!((hub.away.len(), hub.away_empty.len()), (0, 0), "back");
        let text: Arc<str> = Arc::from("在吗");
        for i in 0..burst - 1 {
            assert!(
                hub.buyer_message(&ctx, &s, &text, t1, &mut fx).is_ok(),
                "message {i}"
            );
        }
        let over = hub.buyer_message(&ctx, &s, &text, t1, &mut fx);
        assert_eq!(over.err().map(|r| r.code), Some(ErrorCode::RateLimited));

        // Left at t1: open a window after t0, closed a window after t1.
        hub.buyer_left(&ctx, &s, t1, &mut fx);
        assert_eq!((hub.away.len(), hub.away_empty.len()), (1, 0), "chatted");
        let window = config.limits.resume_window;
        hub.tick(&ctx, t0 + window, &mut fx);
        assert!(
            hub.convs.contains_key(&s.conv),
            "expired from an earlier visit"
        );
        hub.tick(&ctx, t1 + window, &mut fx);
        assert!(!hub.convs.contains_key(&s.conv), "not expired");
        assert_eq!(hub.away.len(), 0);
    }

    /// Refusals at the cap are logged at most once a minute, each line
    /// with the count since the last one.
    #[test]
    fn refusals_at_the_cap_are_logged_once_a_minute() {
        let t0 = Instant::now();
        let mut log = BusyLog::default();
        // (seconds after t0, line due with this count)
        let steps: &[(u64, Option<u64>)] = &[
            (0, Some(1)),
            (1, None),
            (30, None),
            (59, None),
            (60, Some(4)),
            (61, None),
            (200, Some(2)),
        ];
        for &(secs, want) in steps {
            assert_eq!(
                log.refused(t0 + Duration::from_secs(secs)),
                want,
                "at {secs} s"
            );
        }
        assert_eq!(log.total, steps.len() as u64);
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn ratings_parse() {
        assert_eq!(parse_rating("very_satisfied"), Some(Rating::VerySatisfied));
        assert_eq!(parse_rating("meh"), None);
    }

    /// Ids that look like `b1` on the agent's screen are refused, so the
    /// buyer holding `b1`'s conversation is the only `b1`; ordinary Chinese
    /// and Latin ids (nicknames, emoji) stay accepted.
    #[test]
    fn buyer_ids() {
        let cases: &[(&str, bool, &str)] = &[
            ("b1", true, "plain"),
            ("tb_小明2026", true, "Taobao nickname"),
            ("张三", true, "Chinese name"),
            ("jd-user_01", true, "Latin with - and _"),
            ("买家😀", true, "emoji"),
            ("❤小店", true, "emoji without a variation selector"),
            (
                "\u{2764}\u{fe0f}小店",
                true,
                "emoji presentation selector after an emoji",
            ),
            ("1\u{fe0f}\u{20e3}号", true, "keycap"),
            ("\u{1f469}\u{200d}\u{1f4bb}程序员", true, "joined emoji"),
            (
                "\u{1f469}\u{1f3fd}\u{200d}\u{1f4bb}",
                true,
                "joined emoji with a skin tone",
            ),
            (
                "\u{2764}\u{fe0f}\u{200d}\u{1f525}",
                true,
                "joined after a presentation selector",
            ),
            ("b1\u{200d}", false, "joiner at the end"),
            ("b\u{200d}1", false, "joiner between letters"),
            ("\u{1f469}\u{200d}b", false, "joiner before a letter"),
            (
                "1\u{fe0f}",
                false,
                "presentation selector after a digit without keycap",
            ),
            ("\u{2764}\u{fe0f}\u{fe0f}", false, "a second selector"),
            ("", false, "empty"),
            ("  ", false, "spaces only"),
            ("b1 ", false, "trailing space"),
            (" b1", false, "leading space"),
            (
                "tb_小明 88",
                false,
                "inner space: `tb_小明  88` would look alike",
            ),
            ("b1\t", false, "tab"),
            ("b1\u{a0}", false, "no-break space"),
            ("b1\u{3000}", false, "ideographic space"),
            ("b1\u{2003}", false, "em space"),
            ("b1\u{1680}", false, "ogham space mark"),
            ("b1\u{3164}", false, "Hangul filler"),
            ("b1\u{115f}", false, "Hangul choseong filler"),
            ("b1\u{1160}", false, "Hangul jungseong filler"),
            ("b1\u{ffa0}", false, "halfwidth Hangul filler"),
            ("b1\u{2800}", false, "braille blank"),
            ("b1\u{16fe4}", false, "Khitan filler"),
            ("b1\u{34f}", false, "combining grapheme joiner"),
            ("b1\u{fe0f}", false, "variation selector 16"),
            ("b1\u{fe00}", false, "variation selector 1"),
            ("b1\u{e0100}", false, "variation selector 17"),
            ("b1\u{e01ef}", false, "variation selector 256"),
            ("b1\u{180b}", false, "Mongolian variation selector"),
            ("b1\u{17b4}", false, "Khmer inherent vowel"),
            ("b1\u{ad}", false, "soft hyphen"),
            ("b1\u{200b}", false, "zero-width space"),
            ("b1\u{200d}", false, "zero-width joiner"),
            ("b1\u{2060}", false, "word joiner"),
            ("\u{202e}b1", false, "right-to-left override"),
            ("\u{feff}b1", false, "byte-order mark"),
            ("b1\u{e0041}", false, "tag character"),
            ("a\nb", false, "line feed"),
            ("b1\u{2028}x", false, "line separator"),
            ("b1\u{2029}x", false, "paragraph separator"),
        ];
        for &(id, ok, why) in cases {
            assert_eq!(check_buyer_id(id).is_ok(), ok, "{why}: {id:?}");
        }
        assert!(check_buyer_id(&"x".repeat(64)).is_ok());
        assert!(check_buyer_id(&"x".repeat(65)).is_err());
    }

    /// The frames of `fx` for connection `conn`, as the client reads them.
    fn sent_to(fx: &Effects, conn: u64) -> Vec<serde_json::Value> {
        fx.sends
            .iter()
            .filter(|(o, _, _)| o.conn == conn)
            .map(|(_, f, _)| match f {
                Frame::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
                Frame::Later(r) => serde_json::from_str(r.render().as_str()).unwrap(),
            })
            .collect()
    }

    /// The agent `welcome` and `conversation_assigned` carry the server's
    /// clock (`now`, Unix ms, read when the frame is rendered): the page
    /// learns its clock's offset before any stamped frame.
    #[test]
    fn welcome_and_assigned_carry_the_servers_clock() {
        let (config, phrases) = setup(100);
        let ctx = ctx(&config, &phrases);
        let mut hub = Hub::new(&config);
        let now = Instant::now();
        let mut fx = Effects::default();
        hub.agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(1), now, &mut fx)
            .unwrap();
        let before = ctx.tb.now_ms();
        let welcome = sent_to(&fx, 1);
        let after = ctx.tb.now_ms();
        assert_eq!(welcome.len(), 1, "{welcome:?}");
        assert_eq!(welcome[0]["type"], "welcome");
        let at = welcome[0]["now"].as_i64().expect("now is a number");
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );

        let mut fx = Effects::default();
        hub.buyer_hello(&ctx, "s1", "b1", None, &outbox(10), now, &mut fx)
            .unwrap();
        let before = ctx.tb.now_ms();
        let assigned = sent_to(&fx, 1);
        let after = ctx.tb.now_ms();
        let m = assigned
            .iter()
            .find(|m| m["type"] == "conversation_assigned")
            .unwrap_or_else(|| panic!("no conversation_assigned in {assigned:?}"));
        let at = m["now"].as_i64().expect("now is a number");
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );
    }

    /// A shop's own `transfer` template is what the buyer reads, filled
    /// with the shop and the receiving colleague's name.
    #[test]
    fn a_transfer_tells_the_buyer_in_the_shops_own_words() {
        let (config, mut phrases) = setup(100);
        phrases.templates.transfer = vec!["亲，{shop}已将您转给客服{agent}～".into()];
        let ctx = ctx(&config, &phrases);
        let mut hub = Hub::new(&config);
        let now = Instant::now();
        let mut fx = Effects::default();
        // a2 alone takes the buyer, then hands them to a1 (小美).
        let a2 = hub
            .agent_hello(&ctx, "s1", "a2", Some("t2"), &outbox(2), now, &mut fx)
            .unwrap();
        let buyer = hub
            .buyer_hello(&ctx, "s1", "b1", None, &outbox(10), now, &mut fx)
            .unwrap();
        hub.agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(1), now, &mut fx)
            .unwrap();
        let mut fx = Effects::default();
        hub.transfer(&ctx, &a2, &outbox(2), &buyer.conv, "a1", None, now, &mut fx)
            .unwrap();
        // The buyer's line, then the staff's own record (no note: empty).
        let history = &hub.convs[&buyer.conv].history;
        let told = &history[history.len() - 2];
        assert_eq!(&*told.text, "亲，测试旗舰店已将您转给客服小美～");
        assert_eq!((told.author, told.note), (Author::Bot, Some("transferred")));
        let record = history.back().unwrap();
        assert_eq!(
            (record.author, record.agent.as_deref(), record.to.as_deref()),
            (Author::System, Some("a2"), Some("a1"))
        );
        assert_eq!(&*record.text, "");
    }

    /// A transfer: only of a conversation the sender holds, only to
    /// another agent of the same shop who is connected. On success the
    /// conversation is the receiver's, told with who sent it and the note;
    /// the sender is told it left; the buyer gets one polite bot line; the
    /// round goes on unanswered with its deadline; the log has an `assign`
    /// event noted `transferred`. A refusal changes nothing.
    #[test]
    fn transfers_go_only_to_a_connected_colleague_and_keep_the_round() {
        use ErrorCode::*;
        struct Case {
            name: &'static str,
            from: &'static str,
            to: &'static str,
            a2_online: bool,
            want: Option<ErrorCode>,
        }
        let cases = [
            Case {
                name: "to a colleague online",
                from: "a1",
                to: "a2",
                a2_online: true,
                want: None,
            },
            Case {
                name: "not the sender's conversation",
                from: "a2",
                to: "a1",
                a2_online: true,
                want: Some(UnknownConversation),
            },
            Case {
                name: "no such agent",
                from: "a1",
                to: "zz",
                a2_online: true,
                want: Some(UnknownAgent),
            },
            Case {
                name: "colleague offline",
                from: "a1",
                to: "a2",
                a2_online: false,
                want: Some(AgentOffline),
            },
            Case {
                name: "to oneself",
                from: "a1",
                to: "a1",
                a2_online: true,
                want: Some(SelfTransfer),
            },
            Case {
                name: "another shop's agent (online)",
                from: "a1",
                to: "b1",
                a2_online: true,
                want: Some(UnknownAgent),
            },
        ];
        for c in cases {
            let name = c.name;
            let (config, phrases) = setup(100);
            let ctx = ctx(&config, &phrases);
            let mut hub = Hub::new(&config);
            let now = Instant::now();
            let mut fx = Effects::default();
            let a1 = hub
                .agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(1), now, &mut fx)
                .unwrap();
            let a2 = c.a2_online.then(|| {
                hub.agent_hello(&ctx, "s1", "a2", Some("t2"), &outbox(2), now, &mut fx)
                    .unwrap()
            });
            hub.agent_hello(&ctx, "s2", "b1", Some("u1"), &outbox(3), now, &mut fx)
                .unwrap();
            let buyer = hub
                .buyer_hello(&ctx, "s1", "b1", None, &outbox(10), now, &mut fx)
                .unwrap();
            hub.buyer_message(&ctx, &buyer, &Arc::from("能退货吗"), now, &mut fx)
                .unwrap();
            let cid = buyer.conv.clone();
            assert_eq!(hub.convs[&cid].agent.as_deref(), Some("a1"), "{name}");
            let round = *hub.clock.round(&cid).expect("the buyer waits");
            let lines = hub.convs[&cid].history.len();

            let sender = if c.from == "a1" {
                a1.clone()
            } else {
                a2.clone().expect("a2 online")
            };
            let later = now + Duration::from_secs(5);
            let mut fx = Effects::default();
            let got = hub.transfer(
                &ctx,
                &sender,
                &outbox(sender.conn),
                &cid,
                c.to,
                Some("买家问退货运费"),
                later,
                &mut fx,
            );
            assert_eq!(got.as_ref().err().map(|r| r.code), c.want, "{name}");
            let after = hub.clock.round(&cid).expect("the round stays open");
            assert_eq!(
                (after.started, after.deadline),
                (round.started, round.deadline),
                "{name}: the deadline is unchanged"
            );
            if c.want.is_some() {
                assert!(fx.sends.is_empty() && fx.events.is_empty(), "{name}");
                assert_eq!(hub.convs[&cid].agent.as_deref(), Some("a1"), "{name}");
                assert_eq!(hub.convs[&cid].history.len(), lines, "{name}");
                continue;
            }
            let shop = &hub.shops["s1"];
            assert_eq!(hub.convs[&cid].agent.as_deref(), Some("a2"), "{name}");
            assert!(!shop.agents["a1"].convs.contains(&cid), "{name}");
            assert!(shop.agents["a2"].convs.contains(&cid), "{name}");

            let tb = ctx.tb;
            let to_a2 = sent_to(&fx, 2);
            assert_eq!(to_a2.len(), 1, "{name}: {to_a2:?}");
            let m = &to_a2[0];
            assert_eq!(m["type"], "conversation_assigned");
            assert_eq!(m["reason"], "transferred");
            assert_eq!(m["from"], "a1");
            assert_eq!(m["note"], "买家问退货运费");
            assert_eq!(m["conversation"], &*cid);
            assert_eq!(m["waiting_since"], tb.ms(round.started));
            assert_eq!(m["deadline"], tb.ms(round.deadline));
            assert!(!m["suggestions"].as_array().unwrap().is_empty());
            // The buyer's bot line, then the staff-only record of the
            // transfer (what a reload, a move or a restart keeps).
            let history = m["history"].as_array().unwrap();
            let told = &history[history.len() - 2];
            assert_eq!(
                (&told["from"], &told["note"]),
                (&"bot".into(), &"transferred".into())
            );
            assert_eq!(told["text"], TRANSFER_LINE);
            assert_eq!(
                history.last().unwrap(),
                &serde_json::json!({"from": "system", "agent": "a1", "to": "a2",
                    "text": "买家问退货运费", "at": tb.ms(later), "note": "transferred"}),
                "{name}"
            );

            let to_a1 = sent_to(&fx, 1);
            assert_eq!(
                to_a1,
                [serde_json::json!({"type": "conversation_transferred",
                    "conversation": &*cid, "to": "a2", "at": tb.ms(later)})],
                "{name}"
            );
            let to_buyer = sent_to(&fx, 10);
            assert_eq!(to_buyer.len(), 1, "{name}");
            assert_eq!(to_buyer[0]["from"], "bot");
            assert_eq!(to_buyer[0]["note"], "transferred");
            assert!(
                sent_to(&fx, 3).is_empty(),
                "{name}: the other shop hears nothing"
            );

            let kinds: Vec<_> = fx
                .events
                .iter()
                .map(|e| {
                    (
                        e.kind,
                        e.agent.as_deref(),
                        e.note.as_deref(),
                        e.text.as_deref().filter(|_| e.kind == Kind::Assign),
                    )
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    (Kind::Bot, None, Some("transferred"), None),
                    (
                        Kind::Assign,
                        Some("a2"),
                        Some("transferred"),
                        Some("买家问退货运费")
                    ),
                ],
                "{name}"
            );

            // The buyer's next message reaches the receiver; the sender
            // may no longer reply.
            let mut fx = Effects::default();
            let plan = hub
                .buyer_message(&ctx, &buyer, &Arc::from("运费谁出"), later, &mut fx)
                .unwrap();
            assert_eq!(plan.agent.map(|o| o.conn), Some(2));
            let refused = hub
                .agent_reply(&ctx, &a1, &outbox(1), &cid, "亲", None, later, &mut fx)
                .unwrap_err();
            assert_eq!(refused.code, UnknownConversation);
        }
    }

    /// An agent's welcome lists the shop's other agents with their names
    /// and whether they are online; an agent coming or going is told to
    /// the other online agents of its shop (one frame each), and a
    /// reconnect that replaces a live connection tells nobody.
    #[test]
    fn colleagues_are_listed_and_told_of_comings_and_goings() {
        let (mut config, phrases) = setup(100);
        config.limits.agent_grace = Duration::from_secs(10);
        let ctx = ctx(&config, &phrases);
        let mut hub = Hub::new(&config);
        let now = Instant::now();
        let mut fx = Effects::default();
        hub.agent_hello(&ctx, "s2", "b1", Some("u1"), &outbox(3), now, &mut fx)
            .unwrap();
        let a1 = hub
            .agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(1), now, &mut fx)
            .unwrap();
        assert_eq!(
            sent_to(&fx, 1)[0]["colleagues"],
            serde_json::json!([{"agent": "a2", "name": null, "online": false}])
        );

        let mut fx = Effects::default();
        hub.agent_hello(&ctx, "s1", "a2", Some("t2"), &outbox(2), now, &mut fx)
            .unwrap();
        assert_eq!(
            sent_to(&fx, 2)[0]["colleagues"],
            serde_json::json!([{"agent": "a1", "name": "小美", "online": true}])
        );
        assert_eq!(
            sent_to(&fx, 1),
            [serde_json::json!({"type": "colleague", "agent": "a2", "name": null, "online": true})]
        );
        assert!(sent_to(&fx, 3).is_empty(), "another shop's agent");

        let mut fx = Effects::default();
        hub.agent_hello(&ctx, "s1", "a1", Some("t1"), &outbox(4), now, &mut fx)
            .unwrap();
        assert!(sent_to(&fx, 2).is_empty(), "a1 replaced its connection");

        let mut fx = Effects::default();
        let a1 = AgentSession { conn: 4, ..a1 };
        hub.agent_left(&ctx, &a1, now, &mut fx);
        assert_eq!(
            sent_to(&fx, 2),
            [
                serde_json::json!({"type": "colleague", "agent": "a1", "name": "小美", "online": false})
            ]
        );
    }
}
