//! Response-time and satisfaction reports, computed from events.
//!
//! [`compute`] is a pure function of a slice of [`Event`]s and the
//! [`ReportOptions`]: the CLI feeds it from the store or from a JSON-lines
//! file, the service from the store for a supervisor. The definitions are
//! written for shop owners in `docs/REPORTS.md`; in short:
//!
//! - a **round** starts at a buyer message while the conversation has no
//!   open round, and ends at the conversation's next `agent` event; `bot`
//!   events never end one. Its response time is capped at [`CAP_MS`]; a round
//!   never answered counts as the cap (unless it is still younger than the
//!   cap at [`ReportOptions::now_ms`]: then it is not decided yet and left
//!   out);
//! - a round is counted when it starts inside the report window
//!   (`from..to`) and inside the daily service window in the shop's time
//!   zone;
//! - a round belongs to the agent who ended it, else to the agent the
//!   conversation was last assigned to, else to `unassigned`; its stage is
//!   that of its first buyer message;
//! - ratings: only the latest of a conversation counts, and every rating of
//!   a buyer who rated the same shop more than three times in the window is
//!   excluded (and counted as excluded).
//!
//! Events are sorted per conversation by time, so files may list them in any
//! order. Events at the same millisecond are ordered `assign`, `buyer`,
//! `bot`, `agent`, `nudge`, `breach`, `rating`, `close`, `restore` (so a
//! reply stamped with its question's millisecond answers it), then by
//! agent, stage and text, so that no figure depends on the order of the
//! input.

mod records;
mod render;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

// A fast hash for the millions of lookups by conversation (foldhash is
// already built for rusqlite's hashbrown).
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use time::UtcOffset;

use crate::events::{Event, Kind, DEFAULT_OFFSET};
use crate::matcher::Matcher;

pub use records::{RecordFields, Records};
pub use render::{to_csv, to_table};

use records::{Names, Rec, NONE};

/// A round's response time never counts more than 10 minutes.
pub const CAP_MS: i64 = 10 * 60 * 1000;
/// The platform's response target: a round over it is a breach.
pub const DEFAULT_TARGET_MS: i64 = 30_000;
/// The gold-medal check needs at least this many counted ratings.
pub const GOLD_MIN_RATINGS: u64 = 100;
/// Satisfaction rate the gold-medal check asks for unless configured.
pub const DEFAULT_GOLD_THRESHOLD: f64 = 0.80;
/// A buyer rating one shop more often than this in the window is abnormal.
pub const MAX_RATINGS_PER_BUYER: u32 = 3;
/// Stage key of a round whose first message matches no intent.
pub const UNKNOWN_STAGE: &str = "unknown";
/// Owner of an unanswered round of a conversation never assigned.
pub const UNASSIGNED: &str = "unassigned";

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;

/// What the groups of a report are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Agent,
    Day,
    Stage,
    Shop,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Agent => "agent",
            GroupBy::Day => "day",
            GroupBy::Stage => "stage",
            GroupBy::Shop => "shop",
        }
    }
}

impl FromStr for GroupBy {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<GroupBy, OptionError> {
        [GroupBy::Agent, GroupBy::Day, GroupBy::Stage, GroupBy::Shop]
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                OptionError(format!(
                    "unknown grouping {s:?}: use agent, day, stage or shop"
                ))
            })
    }
}

/// An option given as text could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

/// The daily hours in which buyers may expect an answer, in the shop's time
/// zone: `start` inclusive, `end` exclusive, in minutes after midnight. A
/// window whose end is before its start spans midnight (`20:00-02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceWindow {
    pub start_min: u16,
    pub end_min: u16,
}

impl ServiceWindow {
    /// Every minute of the day.
    pub const ALL_DAY: ServiceWindow = ServiceWindow {
        start_min: 0,
        end_min: 24 * 60,
    };

    /// Whether `minute` (0..1440 after local midnight) is inside.
    pub fn contains(self, minute: u16) -> bool {
        if self.start_min <= self.end_min {
            self.start_min <= minute && minute < self.end_min
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl Default for ServiceWindow {
    /// 08:00-23:00.
    fn default() -> ServiceWindow {
        ServiceWindow {
            start_min: 8 * 60,
            end_min: 23 * 60,
        }
    }
}

impl FromStr for ServiceWindow {
    type Err = OptionError;
    /// `HH:MM-HH:MM`; `24:00` may end a window.
    fn from_str(s: &str) -> Result<ServiceWindow, OptionError> {
        let bad = || {
            OptionError(format!(
                "service window {s:?} is not HH:MM-HH:MM, e.g. 08:00-23:00"
            ))
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start_min, end_min) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start_min == end_min || start_min == 24 * 60 {
            return Err(OptionError(format!(
                "service window {s:?} is empty; use 00:00-24:00 for the whole day"
            )));
        }
        Ok(ServiceWindow { start_min, end_min })
    }
}

impl fmt::Display for ServiceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

/// Parses a UTC offset: `+08:00`, `-05:30`, `+8`, `UTC+8`, `Z` or `UTC`.
pub fn parse_offset(s: &str) -> Result<UtcOffset, OptionError> {
    let bad = || OptionError(format!("time zone {s:?} is not an offset such as +08:00"));
    let t = s.trim();
    let t = t
        .strip_prefix("UTC")
        .or_else(|| t.strip_prefix("GMT"))
        .unwrap_or(t);
    if t.is_empty() || t == "Z" {
        return Ok(UtcOffset::UTC);
    }
    let (sign, rest) = match t.as_bytes()[0] {
        b'+' => (1i8, &t[1..]),
        b'-' => (-1i8, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        // By bytes: `+1é1` is four bytes, not split between characters
        // (it panicked; found by review).
        None if rest.len() == 4 && rest.is_ascii() => rest.split_at(2),
        None => (rest, "0"),
    };
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())
}

/// Everything a report depends on besides the events.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Report window start (Unix ms, inclusive); `None`: from the start.
    pub from_ms: Option<i64>,
    /// Report window end (Unix ms, exclusive); `None`: to the end.
    pub to_ms: Option<i64>,
    /// Only this shop (a supervisor sees their own shop only).
    pub shop: Option<String>,
    pub by: Option<GroupBy>,
    /// The shop's time zone: service window and days.
    pub offset: UtcOffset,
    pub service_window: ServiceWindow,
    /// A round over this is a breach.
    pub target_ms: i64,
    pub gold_threshold: f64,
    pub gold_min_ratings: u64,
    /// The time of a live report: an unanswered round younger than the cap
    /// is still undecided and left out. `None` (a file of past events):
    /// every unanswered round counts as the cap.
    pub now_ms: Option<i64>,
    /// Ranks buyer messages that carry no `stage` for `--by stage`;
    /// without it such rounds are `unknown`.
    pub matcher: Option<Arc<Matcher>>,
    /// Adds `response_histogram` and `rounds_by_hour` to the total, for the
    /// supervisor page's charts (off for the CLI, whose JSON has exactly the
    /// documented fields).
    pub charts: bool,
}

impl Default for ReportOptions {
    fn default() -> ReportOptions {
        ReportOptions {
            from_ms: None,
            to_ms: None,
            shop: None,
            by: None,
            offset: DEFAULT_OFFSET,
            service_window: ServiceWindow::default(),
            target_ms: DEFAULT_TARGET_MS,
            gold_threshold: DEFAULT_GOLD_THRESHOLD,
            gold_min_ratings: GOLD_MIN_RATINGS,
            now_ms: None,
            matcher: None,
            charts: false,
        }
    }
}

impl ReportOptions {
    fn in_window(&self, ts: i64) -> bool {
        self.from_ms.is_none_or(|f| ts >= f) && self.to_ms.is_none_or(|t| ts < t)
    }

    fn offset_ms(&self) -> i64 {
        self.offset.whole_seconds() as i64 * 1000
    }
}

/// The figures of the total or of one group. Rates are fractions 0-1,
/// times seconds; `None` (JSON `null`) where nothing was counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub rounds: u64,
    pub answered: u64,
    pub first_response_avg_s: Option<f64>,
    pub response_avg_s: Option<f64>,
    pub response_p50_s: Option<f64>,
    pub response_p90_s: Option<f64>,
    pub within_30s_rate: Option<f64>,
    pub within_3min_rate: Option<f64>,
    pub breaches: u64,
    pub ratings: u64,
    pub ratings_excluded: u64,
    pub satisfaction_rate: Option<f64>,
    pub suggestion_use_rate: Option<f64>,
    pub gold_medal_eligible: bool,
    /// Counted rounds by response time (charts only, see
    /// [`ReportOptions::charts`]); capped and unanswered rounds fall in the
    /// last, open bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_histogram: Option<Vec<Bucket>>,
    /// Counted rounds by the local hour they started in (charts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds_by_hour: Option<Vec<u64>>,
}

/// Rounds whose response time is in `lo_s..hi_s` (`hi_s` `None`: no end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub lo_s: u32,
    pub hi_s: Option<u32>,
    pub count: u64,
}

/// Lower bounds of the histogram buckets, in seconds.
pub const HISTOGRAM_BOUNDS_S: [u32; 13] = [0, 5, 10, 15, 20, 25, 30, 45, 60, 120, 180, 300, 600];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// `{"total": {...}, "groups": [...]}`; `groups` only when grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub total: Figures,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Group>>,
}

/// Running sums of one group.
#[derive(Debug, Default)]
struct Acc {
    /// Capped response time of every counted round (unanswered = cap).
    responses_ms: Vec<i64>,
    answered: u64,
    breaches: u64,
    first_sum_ms: i64,
    first_n: u64,
    /// Counted rounds per local start hour (filled for the total only).
    by_hour: [u64; 24],
    ratings: u64,
    satisfied: u64,
    ratings_excluded: u64,
    agent_replies: u64,
    with_intent: u64,
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Milliseconds to seconds, kept to the millisecond.
fn secs(ms: f64) -> f64 {
    (ms).round() / 1000.0
}

/// Nearest-rank percentile of sorted values: the smallest value with at
/// least `p` percent of the values at or below it.
fn percentile(sorted: &[i64], p: u64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

impl Acc {
    /// `response_ms` is capped; `breach` is judged on the uncapped time
    /// (a reply 11 minutes in is a breach of a 10-minute target).
    fn round(&mut self, response_ms: i64, answered: bool, first: bool, breach: bool) {
        self.responses_ms.push(response_ms);
        if answered {
            self.answered += 1;
        }
        if breach {
            self.breaches += 1;
        }
        if first {
            self.first_sum_ms += response_ms;
            self.first_n += 1;
        }
    }

    /// The charts' extra fields; sorts the responses (as `finish` does).
    fn charts(&mut self) -> (Vec<Bucket>, Vec<u64>) {
        self.responses_ms.sort_unstable();
        let r = &self.responses_ms;
        // A bucket holds the rounds over `lo_s` up to and including `hi_s`
        // (the first from 0 s), as "within 30 s" counts a reply at 30.000
        // s; the last holds the capped and unanswered rounds (exactly the
        // cap), so the one before it stops short of the cap.
        let cap = CAP_MS;
        let at_most = |ms: i64| r.partition_point(|&t| t <= ms);
        let under = |ms: i64| r.partition_point(|&t| t < ms);
        let buckets = HISTOGRAM_BOUNDS_S
            .iter()
            .enumerate()
            .map(|(i, &lo)| {
                let hi = HISTOGRAM_BOUNDS_S.get(i + 1).copied();
                let (lo_ms, hi_ms) = (lo as i64 * 1000, hi.map(|h| h as i64 * 1000));
                let from = if i == 0 { 0 } else { at_most(lo_ms) };
                let count = match hi_ms {
                    None => r.len() - under(lo_ms.min(cap)),
                    Some(h) if h >= cap => under(cap) - from,
                    Some(h) => at_most(h) - from,
                };
                Bucket {
                    lo_s: lo,
                    hi_s: hi,
                    count: count as u64,
                }
            })
            .collect();
        (buckets, self.by_hour.to_vec())
    }

    fn finish(mut self, opts: &ReportOptions) -> Figures {
        let n = self.responses_ms.len() as u64;
        self.responses_ms.sort_unstable();
        let r = &self.responses_ms;
        let sum: i64 = r.iter().sum();
        let within = |limit: i64| r.partition_point(|&t| t <= limit) as u64;
        let satisfaction_rate = ratio(self.satisfied, self.ratings);
        Figures {
            rounds: n,
            answered: self.answered,
            first_response_avg_s: ratio(self.first_sum_ms as u64, self.first_n).map(secs),
            response_avg_s: ratio(sum as u64, n).map(secs),
            response_p50_s: percentile(r, 50).map(|t| t as f64 / 1000.0),
            response_p90_s: percentile(r, 90).map(|t| t as f64 / 1000.0),
            within_30s_rate: ratio(within(30_000), n),
            within_3min_rate: ratio(within(180_000), n),
            breaches: self.breaches,
            ratings: self.ratings,
            ratings_excluded: self.ratings_excluded,
            satisfaction_rate,
            suggestion_use_rate: ratio(self.with_intent, self.agent_replies),
            gold_medal_eligible: self.ratings >= opts.gold_min_ratings
                && satisfaction_rate.is_some_and(|s| s >= opts.gold_threshold),
            response_histogram: None,
            rounds_by_hour: None,
        }
    }
}

/// A group key before it is turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Str(&'a str),
    /// Local day number since 1970-01-01.
    Day(i64),
}

/// Ordering of events at the same millisecond (see the module docs).
fn kind_rank(k: Kind) -> u8 {
    match k {
        Kind::Assign => 0,
        Kind::Buyer => 1,
        Kind::Bot => 2,
        Kind::Agent => 3,
        Kind::Nudge => 4,
        Kind::Breach => 5,
        Kind::Rating => 6,
        Kind::Close => 7,
        Kind::Restore => 8,
    }
}

/// One round of a conversation while it is walked.
struct Round<'a> {
    start: i64,
    /// Index of the round's first buyer message.
    first: u32,
    /// `(time, agent)` of the reply that ended it.
    end: Option<(i64, &'a str)>,
}

/// Computes the report. Pure: same events and options, same report,
/// whatever the order of the events.
pub fn compute(events: &[Event], opts: &ReportOptions) -> Report {
    compute_records(&Records::from_events(events), opts)
}

/// [`compute`] over events already in compact form (a file parsed with
/// [`Records::from_jsonl`], the log read with `store::Reader::records`).
pub fn compute_records(records: &Records<'_>, opts: &ReportOptions) -> Report {
    Computer::new(records, opts).run()
}

struct Computer<'r> {
    recs: &'r [Rec<'r>],
    names: &'r Names<'r>,
    opts: &'r ReportOptions,
    offset_ms: i64,
    total: Acc,
    groups: HashMap<Key<'r>, Acc>,
    /// Raw ratings in the window per (shop, buyer) ids.
    ratings_per_buyer: HashMap<u64, u32>,
    stage_cache: HashMap<&'r str, &'static str>,
}

fn pair(a: u32, b: u32) -> u64 {
    (a as u64) << 32 | b as u64
}

impl<'r> Computer<'r> {
    fn new(records: &'r Records<'r>, opts: &'r ReportOptions) -> Computer<'r> {
        Computer {
            recs: &records.recs,
            names: &records.names,
            opts,
            offset_ms: opts.offset_ms(),
            total: Acc::default(),
            groups: HashMap::new(),
            ratings_per_buyer: HashMap::new(),
            stage_cache: HashMap::new(),
        }
    }

    fn name(&self, id: u32) -> Option<&'r str> {
        let names: &'r Names<'r> = self.names;
        (id != NONE).then(|| names.get(id))
    }

    fn run(mut self) -> Report {
        let recs = self.recs;
        // The shop filter as a name id; a shop never seen matches nothing.
        let shop = self.opts.shop.as_deref().map(|s| {
            (0..self.names.list.len() as u32)
                .find(|&id| self.names.get(id) == s)
                .unwrap_or(NONE - 1)
        });
        // Number the conversations; sort by (conversation, time, kind) packed
        // in one integer.
        let mut conv_ids: HashMap<u64, u32> = HashMap::new();
        let mut order: Vec<(u128, u32)> = Vec::with_capacity(recs.len());
        for (i, e) in recs.iter().enumerate() {
            if shop.is_some_and(|s| s != e.shop) {
                continue;
            }
            let next = conv_ids.len() as u32;
            let conv = *conv_ids.entry(pair(e.shop, e.conversation)).or_insert(next);
            let ts = (e.ts as u64) ^ (1 << 63); // order-preserving
            let key = (conv as u128) << 96 | (ts as u128) << 32 | (kind_rank(e.kind) as u128) << 24;
            order.push((key, i as u32));
            if e.kind == Kind::Rating && self.opts.in_window(e.ts) {
                *self
                    .ratings_per_buyer
                    .entry(pair(e.shop, e.buyer))
                    .or_default() += 1;
            }
        }
        drop(conv_ids);
        order.sort_unstable();
        // Ties (same conversation, millisecond and kind: rare) by content.
        let mut i = 0;
        while i < order.len() {
            let mut j = i + 1;
            while j < order.len() && order[j].0 == order[i].0 {
                j += 1;
            }
            if j - i > 1 {
                order[i..j].sort_by(|a, b| {
                    let (x, y) = (&recs[a.1 as usize], &recs[b.1 as usize]);
                    let content =
                        |r: &Rec<'r>| (self.name(r.agent), self.name(r.stage), r.text.clone());
                    content(x).cmp(&content(y)).then(a.1.cmp(&b.1))
                });
            }
            i = j;
        }

        let mut conv: Vec<u32> = Vec::new();
        let mut rounds: Vec<Round> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let id = order[start].0 >> 96;
            let mut end = start;
            conv.clear();
            while end < order.len() && order[end].0 >> 96 == id {
                conv.push(order[end].1);
                end += 1;
            }
            self.conversation(&conv, &mut rounds);
            start = end;
        }
        self.finish()
    }

    fn day(&self, ts: i64) -> i64 {
        (ts + self.offset_ms).div_euclid(DAY_MS)
    }

    fn minute_of_day(&self, ts: i64) -> u16 {
        ((ts + self.offset_ms).rem_euclid(DAY_MS) / MINUTE_MS) as u16
    }

    /// Stage key of a buyer message: its own `stage`, else the matcher's
    /// best intent's stage, else `unknown`.
    fn stage_of(&mut self, e: &'r Rec<'r>) -> &'r str {
        if let Some(s) = self.name(e.stage) {
            return s;
        }
        let (Some(matcher), Some(text)) = (self.opts.matcher.as_ref(), e.text.as_deref()) else {
            return UNKNOWN_STAGE;
        };
        if let Some(&stage) = self.stage_cache.get(text) {
            return stage;
        }
        let stage = matcher
            .rank(text)
            .first()
            .map_or(UNKNOWN_STAGE, |r| matcher.intent_stage(r.intent).as_str());
        self.stage_cache.insert(text, stage);
        stage
    }

    /// Group key of something that happened at `ts` in the conversation,
    /// seen from `round` (the latest round started at or before it, if any).
    fn key(
        &mut self,
        e: &'r Rec<'r>,
        ts: i64,
        agent: Option<&'r str>,
        round: Option<&Round<'r>>,
    ) -> Option<Key<'r>> {
        Some(match self.opts.by? {
            GroupBy::Shop => Key::Str(self.names.get(e.shop)),
            GroupBy::Day => Key::Day(self.day(ts)),
            GroupBy::Agent => Key::Str(agent.unwrap_or(UNASSIGNED)),
            GroupBy::Stage => match round {
                Some(r) => {
                    let recs = self.recs;
                    Key::Str(self.stage_of(&recs[r.first as usize]))
                }
                None => Key::Str(UNKNOWN_STAGE),
            },
        })
    }

    fn add(&mut self, key: Option<Key<'r>>, f: impl Fn(&mut Acc)) {
        f(&mut self.total);
        if let Some(k) = key {
            f(self.groups.entry(k).or_default());
        }
    }

    /// Walks one conversation's events (indices, sorted by time).
    fn conversation(&mut self, conv: &[u32], rounds: &mut Vec<Round<'r>>) {
        let recs = self.recs;
        let opts = self.opts;
        rounds.clear();
        let mut open = false;
        let mut assignee: Option<&'r str> = None;
        // Ratings and replies are attributed once the rounds' owners are
        // known: (event index, index of the latest round before it + 1).
        let mut later: Vec<(u32, usize)> = Vec::new();
        for &i in conv {
            let e = &recs[i as usize];
            match e.kind {
                Kind::Buyer if !open => {
                    rounds.push(Round {
                        start: e.ts,
                        first: i,
                        end: None,
                    });
                    open = true;
                }
                Kind::Buyer => {
                    // A round begun outside the service hours and still
                    // open starts again at the first buyer message inside
                    // them: the buyer who wrote at 23:30 and again at 08:05
                    // waited from 08:05 (found by review: that wait counted
                    // nowhere).
                    let hours = opts.service_window;
                    let r = rounds.last_mut().expect("open round");
                    if !hours.contains(self.minute_of_day(r.start))
                        && hours.contains(self.minute_of_day(e.ts))
                    {
                        r.start = e.ts;
                        r.first = i;
                    }
                }
                Kind::Agent => {
                    if open {
                        let agent = self.name(e.agent).unwrap_or(UNASSIGNED);
                        rounds.last_mut().expect("open round").end = Some((e.ts, agent));
                        open = false;
                    }
                    if opts.in_window(e.ts) {
                        later.push((i, rounds.len()));
                    }
                }
                Kind::Assign => assignee = self.name(e.agent),
                Kind::Rating if opts.in_window(e.ts) => later.push((i, rounds.len())),
                _ => {}
            }
        }

        let owner = |r: &Round<'r>| r.end.map(|(_, a)| a).or(assignee);
        for (n, r) in rounds.iter().enumerate() {
            let first_event = &recs[r.first as usize];
            if !opts.in_window(r.start)
                || !opts.service_window.contains(self.minute_of_day(r.start))
            {
                continue;
            }
            let response = match r.end {
                Some((t, _)) => (t - r.start).min(CAP_MS),
                None => {
                    if opts.now_ms.is_some_and(|now| now < r.start + CAP_MS) {
                        continue; // not decided yet
                    }
                    CAP_MS
                }
            };
            let key = self.key(first_event, r.start, owner(r), Some(r));
            let answered = r.end.is_some();
            let breach = !matches!(r.end, Some((t, _)) if t - r.start <= opts.target_ms);
            self.total.by_hour[(self.minute_of_day(r.start) / 60) as usize] += 1;
            self.add(key, |a| a.round(response, answered, n == 0, breach));
        }

        let normal = |c: &Computer, e: &Rec| {
            c.ratings_per_buyer[&pair(e.shop, e.buyer)] <= MAX_RATINGS_PER_BUYER
        };
        // Only the conversation's latest counted rating counts: the greatest
        // (time, score, line) of a normal buyer's ratings. Two of the same
        // millisecond: the less satisfied one counts, whatever the order of
        // the lines (the line index only separates identical ratings).
        // Found once, not per rating: that was quadratic (20,000 crafted
        // ratings in one conversation took 1.5 s; found by review).
        let latest = later
            .iter()
            .filter_map(|&(j, _)| {
                let l = &recs[j as usize];
                (l.kind == Kind::Rating && normal(self, l)).then_some((l.ts, l.score, j))
            })
            .max();
        for &(i, nrounds) in &later {
            let e = &recs[i as usize];
            let round = nrounds.checked_sub(1).map(|n| &rounds[n]);
            match e.kind {
                Kind::Agent => {
                    let key = self.key(e, e.ts, self.name(e.agent), round);
                    let used = e.intent;
                    self.add(key, |a| {
                        a.agent_replies += 1;
                        a.with_intent += used as u64;
                    });
                }
                Kind::Rating => {
                    let key = self.key(e, e.ts, round.and_then(owner).or(assignee), round);
                    if !normal(self, e) {
                        self.add(key, |a| a.ratings_excluded += 1);
                        continue;
                    }
                    if latest != Some((e.ts, e.score, i)) {
                        continue; // superseded
                    }
                    let sat = e.score.is_some_and(|s| s.is_satisfied());
                    self.add(key, |a| {
                        a.ratings += 1;
                        a.satisfied += sat as u64;
                    });
                }
                _ => {}
            }
        }
    }

    fn finish(self) -> Report {
        let opts = self.opts;
        let mut total_acc = self.total;
        let charts = opts.charts.then(|| total_acc.charts());
        let mut total = total_acc.finish(opts);
        if let Some((histogram, by_hour)) = charts {
            total.response_histogram = Some(histogram);
            total.rounds_by_hour = Some(by_hour);
        }
        let groups = opts.by.map(|by| {
            let mut groups: Vec<(Key, Acc)> = self.groups.into_iter().collect();
            groups.sort_by(|(a, _), (b, _)| match (a, b) {
                (Key::Day(x), Key::Day(y)) => x.cmp(y),
                (Key::Str(x), Key::Str(y)) if by == GroupBy::Stage => {
                    (stage_order(x), *x).cmp(&(stage_order(y), *y))
                }
                (Key::Str(x), Key::Str(y)) => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            });
            groups
                .into_iter()
                .map(|(k, acc)| Group {
                    key: match k {
                        Key::Str(s) => s.to_string(),
                        Key::Day(d) => day_string(d),
                    },
                    figures: acc.finish(opts),
                })
                .collect()
        });
        Report { total, groups }
    }
}

fn stage_order(s: &str) -> u8 {
    match s {
        "pre_sale" => 0,
        "in_sale" => 1,
        "after_sale" => 2,
        UNKNOWN_STAGE => 4,
        _ => 3,
    }
}

/// `YYYY-MM-DD` of a local day number.
fn day_string(day: i64) -> String {
    match time::Date::from_julian_day((day + 2_440_588) as i32) {
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day()),
        Err(_) => day.to_string(),
    }
}

/// Unix ms of local midnight starting `date` (`YYYY-MM-DD`) at `offset`.
pub fn parse_date(s: &str, offset: UtcOffset) -> Result<i64, OptionError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s.trim(), fmt).map_err(|_| {
        // Well formed but not on the calendar (2026-11-31, 2026-02-29,
        // 2026-13-01): say so rather than blame the format.
        let shape_ok = s.trim().bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        }) && s.trim().len() == 10;
        OptionError(if shape_ok {
            format!(
                "the date {} does not exist{}",
                s.trim(),
                why_no_such_day(s.trim())
            )
        } else {
            format!("{s:?} is not a date (YYYY-MM-DD) or a time (2026-11-20T10:00:00+08:00)")
        })
    })?;
    let local_midnight_ms = (d.to_julian_day() as i64 - 2_440_588) * DAY_MS;
    Ok(local_midnight_ms - offset.whole_seconds() as i64 * 1000)
}

/// Why a well-formed `YYYY-MM-DD` is not a day: ": November 2026 has 30
/// days", ": there is no month 13".
fn why_no_such_day(s: &str) -> String {
    let mut parts = s.splitn(3, '-');
    let year = parts.next().and_then(|y| y.parse::<i32>().ok());
    let month = parts.next().and_then(|m| m.parse::<u8>().ok());
    match (year, month) {
        (Some(y), Some(m)) => match time::Month::try_from(m) {
            Ok(month) => format!(": {month} {y} has {} days", month.length(y)),
            Err(_) => format!(": there is no month {m}"),
        },
        _ => String::new(),
    }
}

/// A report window bound: a date (`YYYY-MM-DD`, local midnight; as an end,
/// the whole day is included) or an RFC 3339 time (exact). The caller names
/// the option in front of the error (`--from: ...`).
pub fn parse_bound(s: &str, offset: UtcOffset, end: bool) -> Result<i64, OptionError> {
    let s = s.trim();
    if s.contains('T') {
        return crate::events::parse_ts(s).map_err(|_| {
            OptionError(match crate::events::missing_offset(s) {
                true => format!(
                    "{s:?} has no UTC offset; add the shop's, e.g. {s}{}",
                    fmt_offset(offset)
                ),
                false => format!(
                    "{s:?} is not an RFC 3339 time such as 2026-11-20T10:00:00+08:00 \
                     (or give a date, YYYY-MM-DD)"
                ),
            })
        });
    }
    Ok(parse_date(s, offset)? + if end { DAY_MS } else { 0 })
}

/// `+08:00`, `-05:00`, `+00:00`.
fn fmt_offset(offset: UtcOffset) -> String {
    let (h, m, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
}

/// `--last Nd`: the window from local midnight N-1 days before today to
/// `now` (so `7d` is today and the six days before it).
pub fn last_days(spec: &str, now_ms: i64, offset: UtcOffset) -> Result<(i64, i64), OptionError> {
    let n: i64 = spec
        .trim()
        .strip_suffix('d')
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=3660).contains(n))
        .ok_or_else(|| {
            OptionError(format!(
                "--last {spec:?}: give a number of days from 1d to 3660d, such as 7d or 30d"
            ))
        })?;
    let off = offset.whole_seconds() as i64 * 1000;
    let today = (now_ms + off).div_euclid(DAY_MS);
    Ok(((today - (n - 1)) * DAY_MS - off, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `close` and `restore` events are the service's own bookkeeping: a
    /// log with them, at any time and even at a reply's millisecond, gives
    /// the report of the log without them.
    #[test]
    fn close_and_restore_events_change_no_figure() {
        let t = 1_795_400_000_000;
        let at = |ms: i64, kind: Kind| Event::new(t + ms, "s1", "c1", "b1", kind);
        let mut plain = Vec::new();
        let mut b = at(0, Kind::Buyer);
        b.text = Some("在吗".into());
        plain.push(b);
        let mut a = at(9_000, Kind::Agent);
        a.agent = Some("a1".into());
        plain.push(a);
        let mut b = at(20_000, Kind::Buyer);
        b.text = Some("几天到".into());
        plain.push(b);
        let mut r = at(30_000, Kind::Rating);
        r.score = Some(crate::events::Rating::Satisfied);
        plain.push(r);
        let mut with = plain.clone();
        for (ms, kind) in [
            (9_000, Kind::Restore),
            (15_000, Kind::Restore),
            (40_000, Kind::Close),
        ] {
            let mut e = at(ms, kind);
            e.agent = Some("a2".into());
            with.push(e);
        }
        let opts = ReportOptions {
            service_window: ServiceWindow::ALL_DAY,
            ..ReportOptions::default()
        };
        let want = compute(&plain, &opts);
        assert_eq!(want.total.rounds, 2);
        assert_eq!(compute(&with, &opts), want);
    }

    #[test]
    fn parses_service_windows() {
        let cases: [(&str, Option<(u16, u16)>); 6] = [
            ("08:00-23:00", Some((480, 1380))),
            ("00:00-24:00", Some((0, 1440))),
            ("20:00-02:30", Some((1200, 150))),
            ("8:00-23:00", Some((480, 1380))),
            ("08:00-08:00", None),
            ("08-23", None),
        ];
        for (s, want) in cases {
            let got = s
                .parse::<ServiceWindow>()
                .ok()
                .map(|w| (w.start_min, w.end_min));
            assert_eq!(got, want, "{s}");
        }
        let night: ServiceWindow = "20:00-02:00".parse().unwrap();
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        assert!(!night.contains(120), "end is exclusive");
    }

    #[test]
    fn parses_offsets() {
        let cases = [
            ("+08:00", Some(8 * 3600)),
            ("+8", Some(8 * 3600)),
            ("UTC+8", Some(8 * 3600)),
            ("-05:30", Some(-(5 * 3600 + 1800))),
            ("+0545", Some(5 * 3600 + 45 * 60)),
            ("Z", Some(0)),
            ("UTC", Some(0)),
            ("8", None),
            ("+25:00", None),
            ("+1é1", None),
            ("+é", None),
            ("+08:é", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_offset(s).ok().map(|o| o.whole_seconds()), want, "{s}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&[7], 90), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn dates_and_last_days_use_the_shop_offset() {
        let cst = DEFAULT_OFFSET;
        // 2026-11-20 00:00 +08:00 is 2026-11-19 16:00 UTC.
        let from = parse_date("2026-11-20", cst).unwrap();
        assert_eq!(
            crate::events::format_ts(from, UtcOffset::UTC),
            "2026-11-19T16:00:00.000+00:00"
        );
        assert_eq!(parse_bound("2026-11-20", cst, true).unwrap(), from + DAY_MS);
        let now = crate::events::parse_ts("2026-11-20T01:00:00+08:00").unwrap();
        let (f, t) = last_days("7d", now, cst).unwrap();
        assert_eq!(
            crate::events::format_ts(f, cst),
            "2026-11-14T00:00:00.000+08:00"
        );
        assert_eq!(t, now);
        assert!(last_days("7", now, cst).is_err());
        assert_eq!(day_string(0), "1970-01-01");
    }

    /// A bound that cannot be used says what is wrong with it: a day that
    /// does not exist is not blamed on the format, and a time without its
    /// offset is told so (with the shop's offset to add).
    #[test]
    fn bad_bounds_say_what_is_wrong() {
        let est = UtcOffset::from_hms(-5, 0, 0).unwrap();
        let cases = [
            ("2026-11-31", DEFAULT_OFFSET, "the date 2026-11-31 does not exist: November 2026 has 30 days"),
            ("2026-02-29", DEFAULT_OFFSET, "the date 2026-02-29 does not exist: February 2026 has 28 days"),
            ("2026-13-01", DEFAULT_OFFSET, "the date 2026-13-01 does not exist: there is no month 13"),
            ("20/11/2026", DEFAULT_OFFSET, "\"20/11/2026\" is not a date (YYYY-MM-DD)"),
            (
                "2026-11-20T10:00:00",
                DEFAULT_OFFSET,
                "\"2026-11-20T10:00:00\" has no UTC offset; add the shop's, e.g. 2026-11-20T10:00:00+08:00",
            ),
            ("2026-11-20T10:00:00", est, "e.g. 2026-11-20T10:00:00-05:00"),
            ("2026-11-20T25:00:00+08:00", DEFAULT_OFFSET, "is not an RFC 3339 time"),
        ];
        for (s, offset, want) in cases {
            let err = parse_bound(s, offset, false).unwrap_err().to_string();
            assert!(err.contains(want), "{s}: {err}");
            assert!(!err.starts_with("ts "), "{s}: {err}");
        }
        assert_eq!(
            parse_bound("2024-02-29", DEFAULT_OFFSET, false).unwrap(),
            parse_date("2024-02-29", DEFAULT_OFFSET).unwrap()
        );
    }
}
