//! The matching engine: buyer message in, ranked reply suggestions out.
//!
//! Every keyword and exclusion of every library goes into one Aho-Corasick
//! automaton, built once when the libraries are loaded (or reloaded) and
//! shared behind an `Arc`. A message is normalised, scanned once with
//! overlapping search, and each intent with hits gets a score:
//!
//! - **evidence**: the keywords' weights combined as a noisy-OR
//!   (`1 - Π(1 - w)`), so two weak hints add up but never exceed 1. A weight
//!   is given in the YAML or derived from the keyword's length: a longer
//!   keyword is a more specific one (`发票抬头` says more than `发票`);
//! - **coverage**: the share of the message's meaningful characters that
//!   the intent's keywords cover, so `你好` alone is a greeting while in
//!   `你好，我要退货` the greeting loses to the return;
//! - **patterns** add evidence, **exclusions** veto the intent, and the
//!   intent's **priority** scales the result.
//!
//! `score = priority × evidence × (COVERAGE_FLOOR + (1 - COVERAGE_FLOOR) × coverage)`
//!
//! A keyword hit lying strictly inside a longer hit of another intent is
//! dropped (`发货` inside `发错货了`-style overlaps), and an intent whose score
//! stays under [`MIN_SCORE`] is not suggested: an agent is better served by
//! no suggestion than by a wrong one.
//!
//! Why overlapping search with the standard match kind: keywords of different
//! intents overlap all the time in Chinese (`退货退款`), and leftmost-first or
//! leftmost-longest semantics would hide one of them. Why a DFA: the full
//! libraries are a few thousand short patterns, small enough that the DFA's
//! memory (measured in `benches/matcher.rs`) buys the fastest scan.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::RegexSet;
use serde::Serialize;

use crate::normalize::normalize;
use crate::phrases::{Fill, Library, Stage};

/// Below this score an intent is not suggested.
pub const MIN_SCORE: f32 = 0.30;
/// Share of the score that does not depend on coverage.
pub const COVERAGE_FLOOR: f32 = 0.55;
/// Evidence a matching regex pattern adds.
pub const PATTERN_WEIGHT: f32 = 0.8;

/// Default weight of a keyword of `chars` characters.
pub fn default_weight(chars: usize) -> f32 {
    match chars {
        0 => 0.0,
        1 => 0.3,
        2 => 0.6,
        3 => 0.75,
        _ => 0.9,
    }
}

/// One ready-to-send suggestion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub stage: Stage,
    pub intent: Arc<str>,
    pub score: f32,
    pub reply: String,
    pub matched: Vec<String>,
}

/// One intent's score for a message, before a reply is filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// Index into the matcher's intents.
    pub intent: usize,
    pub score: f32,
    /// Indices of the keywords (automaton patterns) that matched.
    pub matched: Vec<u32>,
    pub pattern_hit: bool,
}

#[derive(Debug)]
struct CompiledIntent {
    id: Arc<str>,
    stage: Stage,
    replies: Vec<String>,
    priority: f32,
}

/// What one automaton pattern means for one intent.
#[derive(Debug, Clone, Copy)]
struct Entry {
    intent: u32,
    weight: f32,
    exclude: bool,
}

/// The compiled libraries. Cheap to share (`Arc<Matcher>`), never rebuilt
/// per message.
#[derive(Debug)]
pub struct Matcher {
    ac: AhoCorasick,
    /// Per automaton pattern: its text as written and what it means.
    patterns: Vec<(String, Vec<Entry>)>,
    intents: Vec<CompiledIntent>,
    regexes: RegexSet,
    regex_owner: Vec<u32>,
}

/// Building the matcher failed; the loader validates everything it checks,
/// so this only happens for libraries built by hand.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the keyword automaton: {0}")]
    Automaton(#[from] aho_corasick::BuildError),
    #[error("cannot compile the patterns: {0}")]
    Regex(#[from] regex::Error),
}

impl Matcher {
    /// Compiles every intent of `lib`.
    pub fn new(lib: &Library) -> Result<Matcher, BuildError> {
        Self::with_kind(lib, AhoCorasickKind::DFA)
    }

    /// Like [`Matcher::new`] with a chosen automaton kind (for benchmarks).
    pub fn with_kind(lib: &Library, kind: AhoCorasickKind) -> Result<Matcher, BuildError> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut patterns: Vec<(String, Vec<Entry>)> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut intents = Vec::with_capacity(lib.intents.len());
        let mut regex_src = Vec::new();
        let mut regex_owner = Vec::new();

        for (i, intent) in lib.intents.iter().enumerate() {
            let mut add = |text: &str, weight: f32, exclude: bool| {
                let norm = normalize(text);
                if norm.is_empty() {
                    return;
                }
                let slot = *index.entry(norm.clone()).or_insert_with(|| {
                    texts.push(norm);
                    patterns.push((text.to_string(), Vec::new()));
                    patterns.len() - 1
                });
                let entries = &mut patterns[slot].1;
                if !entries.iter().any(|e| e.intent == i as u32 && e.exclude == exclude) {
                    entries.push(Entry {
                        intent: i as u32,
                        weight,
                        exclude,
                    });
                }
            };
            for k in &intent.keywords {
                let chars = normalize(&k.text).chars().count();
                add(&k.text, k.weight.unwrap_or_else(|| default_weight(chars)), false);
            }
            for e in &intent.exclude {
                add(e, 0.0, true);
            }
            for p in &intent.patterns {
                regex_src.push(p.clone());
                regex_owner.push(i as u32);
            }
            intents.push(CompiledIntent {
                id: Arc::from(intent.id.as_str()),
                stage: intent.stage,
                replies: intent.replies.clone(),
                priority: intent.priority,
            });
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(kind))
            .build(&texts)?;
        let regexes = RegexSet::new(&regex_src)?;
        Ok(Matcher {
            ac,
            patterns,
            intents,
            regexes,
            regex_owner,
        })
    }

    pub fn intent_count(&self) -> usize {
        self.intents.len()
    }

    pub fn keyword_count(&self) -> usize {
        self.patterns.len()
    }

    /// Heap bytes of the keyword automaton.
    pub fn automaton_bytes(&self) -> usize {
        self.ac.memory_usage()
    }

    pub fn intent_id(&self, intent: usize) -> &str {
        &self.intents[intent].id
    }

    pub fn intent_stage(&self, intent: usize) -> Stage {
        self.intents[intent].stage
    }

    /// Scores every intent for `text`, best first, dropping those under
    /// [`MIN_SCORE`].
    pub fn rank(&self, text: &str) -> Vec<Ranked> {
        let norm = normalize(text);
        self.rank_normalized(&norm)
    }

    fn rank_normalized(&self, norm: &str) -> Vec<Ranked> {
        let content = content_chars(norm);
        if content == 0 {
            return Vec::new();
        }
        // Collect (start, end, pattern) hits; overlapping search reports
        // every keyword at every position.
        let mut hits: Vec<(u32, u32, u32)> = self
            .ac
            .find_overlapping_iter(norm)
            .map(|m| (m.start() as u32, m.end() as u32, m.pattern().as_u32()))
            .collect();
        // Drop hits strictly inside a longer hit (of another keyword).
        if hits.len() > 1 {
            let all = hits.clone();
            hits.retain(|&(s, e, _)| {
                !all.iter()
                    .any(|&(s2, e2, _)| s2 <= s && e <= e2 && (e2 - s2) > (e - s))
            });
        }

        // Per intent: evidence so far, hit spans, vetoed?
        let mut acc: Vec<Acc> = Vec::new();
        for &(s, e, p) in &hits {
            for entry in &self.patterns[p as usize].1 {
                let a = match acc.iter_mut().position(|a| a.intent == entry.intent) {
                    Some(i) => &mut acc[i],
                    None => {
                        acc.push(Acc::new(entry.intent));
                        acc.last_mut().expect("just pushed")
                    }
                };
                if entry.exclude {
                    a.vetoed = true;
                    continue;
                }
                if !a.matched.contains(&p) {
                    a.matched.push(p);
                    a.miss *= 1.0 - entry.weight;
                }
                a.spans.push((s, e));
            }
        }
        if !self.regex_owner.is_empty() {
            for i in self.regexes.matches(norm).iter() {
                let owner = self.regex_owner[i];
                let a = match acc.iter_mut().position(|a| a.intent == owner) {
                    Some(i) => &mut acc[i],
                    None => {
                        acc.push(Acc::new(owner));
                        acc.last_mut().expect("just pushed")
                    }
                };
                if !a.pattern_hit {
                    a.pattern_hit = true;
                    a.miss *= 1.0 - PATTERN_WEIGHT;
                }
            }
        }

        let mut ranked: Vec<Ranked> = acc
            .into_iter()
            .filter(|a| !a.vetoed)
            .filter_map(|mut a| {
                let intent = &self.intents[a.intent as usize];
                let evidence = 1.0 - a.miss;
                let covered = covered_chars(norm, &mut a.spans);
                // A pattern match stands for the whole message it matched.
                let coverage = if a.pattern_hit {
                    1.0f32.min(covered as f32 / content as f32).max(0.5)
                } else {
                    (covered as f32 / content as f32).min(1.0)
                };
                let score = intent.priority
                    * evidence
                    * (COVERAGE_FLOOR + (1.0 - COVERAGE_FLOOR) * coverage);
                (score >= MIN_SCORE).then(|| Ranked {
                    intent: a.intent as usize,
                    score: (score.min(1.0) * 1000.0).round() / 1000.0,
                    matched: a.matched,
                    pattern_hit: a.pattern_hit,
                })
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.intent.cmp(&b.intent)));
        ranked
    }

    /// The best `top` suggestions for `text`, replies filled in with `fill`.
    pub fn suggest(&self, text: &str, top: usize, fill: &Fill) -> Vec<Suggestion> {
        let norm = normalize(text);
        let seed = fnv1a(norm.as_bytes());
        self.rank_normalized(&norm)
            .into_iter()
            .take(top)
            .map(|r| {
                let intent = &self.intents[r.intent];
                // Vary the wording between messages, but deterministically,
                // so the same message always gets the same reply.
                let variant = (seed % intent.replies.len().max(1) as u64) as usize;
                let reply = intent
                    .replies
                    .get(variant)
                    .map(|t| fill.apply(t))
                    .unwrap_or_default();
                Suggestion {
                    stage: intent.stage,
                    intent: intent.id.clone(),
                    score: (r.score * 100.0).round() / 100.0,
                    reply,
                    matched: r
                        .matched
                        .iter()
                        .map(|&p| self.patterns[p as usize].0.clone())
                        .collect(),
                }
            })
            .collect()
    }
}

struct Acc {
    intent: u32,
    /// Π(1 - w) over matched keywords and patterns.
    miss: f32,
    matched: Vec<u32>,
    spans: Vec<(u32, u32)>,
    vetoed: bool,
    pattern_hit: bool,
}

impl Acc {
    fn new(intent: u32) -> Acc {
        Acc {
            intent,
            miss: 1.0,
            matched: Vec::new(),
            spans: Vec::new(),
            vetoed: false,
            pattern_hit: false,
        }
    }
}

/// Characters that carry meaning: not white space or punctuation.
fn is_content(c: char) -> bool {
    !(c.is_whitespace()
        || c.is_ascii_punctuation()
        || "。，、！？～…：；“”‘’（）【】《》·￥".contains(c))
}

fn content_chars(s: &str) -> usize {
    s.chars().filter(|&c| is_content(c)).count()
}

/// Content characters covered by the union of `spans` (byte ranges).
fn covered_chars(s: &str, spans: &mut [(u32, u32)]) -> usize {
    spans.sort_unstable();
    let mut total = 0;
    let mut cur_end = 0u32;
    for &(start, end) in spans.iter() {
        let from = start.max(cur_end);
        if from < end {
            total += content_chars(&s[from as usize..end as usize]);
            cur_end = end;
        }
    }
    total
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
