//! Events in the compact form the reports compute on.
//!
//! Why: a report over a million events is mostly reading them. Shop,
//! conversation, buyer, agent and stage names repeat all the time, so they
//! are interned once and the records carry small ids; text is kept only
//! where a stage must be ranked from it. Records parsed from a file borrow
//! from the file's bytes (no copy unless a string has escapes); records read
//! from the log own their names once each.

use std::borrow::Cow;

use foldhash::HashMap;

use crate::events::{self, BadLine, Event, Kind, Line, Rating};

/// No agent / no stage.
pub(crate) const NONE: u32 = u32::MAX;

/// One event, compact.
#[derive(Debug, Clone)]
pub(crate) struct Rec<'a> {
    pub ts: i64,
    pub kind: Kind,
    pub score: Option<Rating>,
    /// An agent reply that used a suggested intent.
    pub intent: bool,
    pub shop: u32,
    pub conversation: u32,
    pub buyer: u32,
    pub agent: u32,
    pub stage: u32,
    /// Only for buyer messages without a stage.
    pub text: Option<Cow<'a, str>>,
}

/// Interned names: id → name and name → id.
#[derive(Debug, Default)]
pub(crate) struct Names<'a> {
    pub list: Vec<Cow<'a, str>>,
    map: HashMap<Cow<'a, str>, u32>,
}

impl<'a> Names<'a> {
    fn intern(&mut self, s: Cow<'a, str>) -> u32 {
        if let Some(&id) = self.map.get(s.as_ref()) {
            return id;
        }
        let id = self.list.len() as u32;
        self.list.push(s.clone());
        self.map.insert(s, id);
        id
    }

    /// Interns a borrowed name, copying it only the first time.
    fn intern_copy(&mut self, s: &str) -> u32 {
        match self.map.get(s) {
            Some(&id) => id,
            None => self.intern(Cow::Owned(s.to_owned())),
        }
    }

    fn intern_opt(&mut self, s: Option<Cow<'a, str>>) -> u32 {
        match s {
            Some(s) if !s.is_empty() => self.intern(s),
            _ => NONE,
        }
    }

    pub fn get(&self, id: u32) -> &str {
        &self.list[id as usize]
    }
}

/// Events ready for [`super::compute_records`].
#[derive(Debug, Default)]
pub struct Records<'a> {
    pub(crate) recs: Vec<Rec<'a>>,
    pub(crate) names: Names<'a>,
}

/// The fields of one event, borrowed or owned.
pub struct RecordFields<'a> {
    pub ts_ms: i64,
    pub shop: Cow<'a, str>,
    pub conversation: Cow<'a, str>,
    pub buyer: Cow<'a, str>,
    pub kind: Kind,
    pub agent: Option<Cow<'a, str>>,
    pub text: Option<Cow<'a, str>>,
    pub intent: bool,
    pub stage: Option<Cow<'a, str>>,
    pub score: Option<Rating>,
}

impl<'a> Records<'a> {
    pub fn new() -> Records<'a> {
        Records::default()
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// The shops these events belong to, sorted.
    pub fn shops(&self) -> Vec<&str> {
        let ids: std::collections::BTreeSet<u32> = self.recs.iter().map(|r| r.shop).collect();
        let mut shops: Vec<&str> = ids.into_iter().map(|id| self.names.get(id)).collect();
        shops.sort_unstable();
        shops
    }

    /// Adds one event; drops the text unless its stage must be ranked.
    pub fn push(&mut self, f: RecordFields<'a>) {
        let stage = self.names.intern_opt(f.stage);
        let text = f.text.filter(|_| f.kind == Kind::Buyer && stage == NONE);
        let rec = Rec {
            ts: f.ts_ms,
            kind: f.kind,
            score: f.score,
            intent: f.intent,
            shop: self.names.intern(f.shop),
            conversation: self.names.intern(f.conversation),
            buyer: self.names.intern(f.buyer),
            agent: self.names.intern_opt(f.agent),
            stage,
            text,
        };
        self.recs.push(rec);
    }

    /// Adds one event whose strings live shorter than the records (a row of
    /// the log): names are copied the first time they are seen only.
    pub fn push_copied(&mut self, f: RecordFields<'_>) {
        let n = &mut self.names;
        let stage = match f.stage.as_deref() {
            Some(s) if !s.is_empty() => n.intern_copy(s),
            _ => NONE,
        };
        let rec = Rec {
            ts: f.ts_ms,
            kind: f.kind,
            score: f.score,
            intent: f.intent,
            shop: n.intern_copy(&f.shop),
            conversation: n.intern_copy(&f.conversation),
            buyer: n.intern_copy(&f.buyer),
            agent: match f.agent.as_deref() {
                Some(s) if !s.is_empty() => n.intern_copy(s),
                _ => NONE,
            },
            stage,
            text: f
                .text
                .filter(|_| f.kind == Kind::Buyer && stage == NONE)
                .map(|t| Cow::Owned(t.into_owned())),
        };
        self.recs.push(rec);
    }

    /// Borrows from `events`.
    pub fn from_events(events: &'a [Event]) -> Records<'a> {
        let mut r = Records::new();
        r.recs.reserve(events.len());
        for e in events {
            r.push(RecordFields {
                ts_ms: e.ts_ms,
                shop: Cow::Borrowed(&e.shop),
                conversation: Cow::Borrowed(&e.conversation),
                buyer: Cow::Borrowed(&e.buyer),
                kind: e.kind,
                agent: e.agent.as_deref().map(Cow::Borrowed),
                text: e.text.as_deref().map(Cow::Borrowed),
                intent: e.intent.as_deref().is_some_and(|s| !s.is_empty()),
                stage: e.stage.as_deref().map(Cow::Borrowed),
                score: e.score,
            });
        }
        r
    }

    /// Parses a JSON-lines file in memory on every core, borrowing from
    /// it; bad lines go to `bad` with their numbers, in order.
    pub fn from_jsonl(bytes: &'a [u8], bad: impl FnMut(BadLine)) -> Records<'a> {
        let parts = events::parse_parallel(
            bytes,
            |chunk| {
                let mut r = Records::new();
                r.recs.reserve(chunk.len() / 128);
                let mut bad = Vec::new();
                let lines = events::each_line(chunk, |i, line: Line<'a>| match line.parse() {
                    Ok((ts_ms, w)) => r.push(RecordFields {
                        ts_ms,
                        shop: w.shop,
                        conversation: w.conversation,
                        buyer: w.buyer,
                        kind: w.kind,
                        agent: w.agent,
                        text: w.text,
                        intent: w.intent.is_some_and(|s| !s.is_empty()),
                        stage: w.stage,
                        score: w.score,
                    }),
                    Err(error) => bad.push(BadLine { line: i + 1, error }),
                });
                (r, bad, lines)
            },
            bad,
        );
        Records::concat(parts)
    }

    /// Joins pieces read in parallel, renumbering their names.
    pub fn concat(parts: Vec<Records<'a>>) -> Records<'a> {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else {
            return Records::new();
        };
        for part in parts {
            let remap: Vec<u32> = part
                .names
                .list
                .into_iter()
                .map(|n| all.names.intern(n))
                .collect();
            let id = |x: u32| if x == NONE { NONE } else { remap[x as usize] };
            all.recs.reserve(part.recs.len());
            all.recs.extend(part.recs.into_iter().map(|mut r| {
                r.shop = id(r.shop);
                r.conversation = id(r.conversation);
                r.buyer = id(r.buyer);
                r.agent = id(r.agent);
                r.stage = id(r.stage);
                r
            }));
        }
        all
    }

    /// Whether some buyer message has no stage but a text to rank (then
    /// `--by stage` wants the phrase libraries).
    pub fn needs_ranking(&self) -> bool {
        self.recs.iter().any(|r| r.text.is_some())
    }
}
