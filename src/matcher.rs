//! The matching engine: buyer message in, ranked reply suggestions out.
//!
//! Every keyword and exclusion of every library, and the literals that
//! decide which regex patterns are worth running (see `Gates`), go into one
//! Aho-Corasick automaton, built once when the libraries are loaded (or reloaded) and
//! shared behind an `Arc`. A message is normalised, scanned once with
//! overlapping search, and each intent with hits gets a score:
//!
//! - **evidence**: the keywords' weights combined as a noisy-OR
//!   (`1 - Π(1 - w)`), so two weak hints add up but never exceed 1. A weight
//!   is given in the YAML or derived from the keyword's length: a longer
//!   keyword is a more specific one (`发票抬头` says more than `发票`);
//! - **coverage**: the share of the message's meaningful characters that
//!   the intent's keywords and patterns cover, so `你好` alone is a greeting
//!   while in `你好，我要退货` the greeting loses to the return. Punctuation
//!   and white space do not count, and a run of digits (an order number, a
//!   phone number, a price) counts as one character: data pasted into a
//!   message should not drown the words that say what the buyer wants;
//! - a short **bracketed token** (`[图片]`, `[微笑]`, `[订单x]`: how chat
//!   clients show a picture, an emoticon or a pasted link, and how
//!   anonymised logs mask an order number or an address) is data as well:
//!   it counts as one character and no keyword inside it counts, so
//!   `[地址x]` is an address, not the word 地址;
//! - **patterns** add evidence and cover the text they matched,
//!   **exclusions** veto the intent's hits they touch (see below), and the
//!   intent's **priority** scales the result.
//!
//! `score = priority × evidence × (COVERAGE_FLOOR + (1 - COVERAGE_FLOOR) × coverage)`
//!
//! A keyword hit lying strictly inside a longer keyword hit is dropped
//! (`退货` inside `七天无理由退货`, `发货` inside `什么时候发货`: the longer,
//! more specific keyword speaks for that text). Two more rules read the
//! words around a hit, on the hits already found (no extra scan):
//!
//! - **exclusions are local**: an exclusion drops the hits of its intent
//!   (keywords and patterns) that it overlaps or that lie within
//!   [`EXCLUDE_REACH`] characters of it, because it names another reading
//!   of *that* text (`退款到账` is not a return, `会不会坏` is not a broken
//!   item). A word elsewhere in the message says nothing about it: in
//!   `用了优惠券买的，收到是坏的` the coupon does not veto the broken item.
//!   An exclusion that ends the message (a final `吗` or `?`) sets the
//!   mood of the whole message and vetoes every hit of its intent. An
//!   exclusion ending in `了` names a finished state (`到账了`); followed by a
//!   question (`到账了吗`) it asks about that state and does not veto;
//! - **negation**: a keyword hit directly preceded by a negator
//!   ([`NEGATORS`], with a degree word of [`NEGATION_FILLERS`] between,
//!   itself maybe after 是: `不是很满意`, `不太满意`, `不要退货`, `没有问题`) does not count, since the
//!   buyer says the opposite of the keyword. It does count for an intent
//!   that has the negated form itself as a keyword (`不满意` is a complaint,
//!   so `不太满意` is one too), and the negation is not one when it is a
//!   question (`退不退`, `要不要`, `满不满意`: the same character on both
//!   sides of the negator) or asks why something has not happened yet
//!   (`还没`, `怎么不`, `为什么没` before the negator: the buyer still wants
//!   it).
//!
//! An intent whose score stays under [`MIN_SCORE`] is
//! not suggested: an agent is better served by no suggestion than by a
//! wrong one.
//!
//! Why overlapping search with the standard match kind: keywords of different
//! intents overlap all the time in Chinese (`退货退款`), and leftmost-first or
//! leftmost-longest semantics would hide one of them. Why `daachorse`'s
//! character-wise double-array automaton and not the `aho-corasick` crate:
//! the text is Chinese, so a byte automaton takes three steps per
//! character where this one takes one. What counts is the cost in the
//! service, where the buyer's frame, JSON and sockets have just been
//! through the caches: `cargo bench --bench matcher` measures `suggest`
//! cold (after 512 KiB of other memory) as well as hot, and against the
//! contiguous NFA the cold median went 3.6-4.7 -> 2.6-2.9 µs per message
//! (hot 1.2-1.6 -> 0.9-1.1). The automaton takes 607 KiB for the full
//! libraries; `aho-corasick`'s DFA took 4.9 MiB and was no faster in place.
//!
//! Ranking never looks at replies. For each suggested intent, `suggest`
//! then shows the reply written for what the message asks (a reply's
//! `when:` cue words, see `CompiledIntent::reply`), else one of the
//! intent's general replies: an intent such as a return covers several
//! questions (退货, 换货, the address, the postage), and a reply answering
//! another one than the buyer's is a wrong suggestion too.

use std::collections::HashMap;
use std::sync::Arc;

use daachorse::{CharwiseDoubleArrayAhoCorasick, CharwiseDoubleArrayAhoCorasickBuilder, MatchKind};
// The anchored gates' sets are probed for every message they see.
use foldhash::{HashSet, HashSetExt};
use regex::Regex;
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Class, Hir, HirKind, Look};
use serde::Serialize;
use smallvec::SmallVec;

use crate::normalize::normalize;
use crate::phrases::{Fill, Library, Reply, Stage};

/// Below this score an intent is not suggested.
pub const MIN_SCORE: f32 = 0.30;
/// Share of the score that does not depend on coverage.
pub const COVERAGE_FLOOR: f32 = 0.55;
/// Evidence a matching regex pattern adds.
pub const PATTERN_WEIGHT: f32 = 0.8;
/// Longest bracketed token (characters between `[` and `]`) taken as data.
pub const TOKEN_MAX_CHARS: usize = 12;
/// Characters between an exclusion and a hit of its intent at which the
/// exclusion still vetoes the hit: it touches it (`钱什么时候到`, `券坏了`)
/// but not a word further away (`钱都付了，快递到哪了`).
pub const EXCLUDE_REACH: usize = 2;
/// Words that negate the keyword right after them, longest first (the
/// first that ends where a hit starts is the negator). 不会 is not one:
/// `不会用` asks for help.
pub const NEGATORS: [&str; 9] = [
    "不需要",
    "不用",
    "不要",
    "不想",
    "没有",
    "不",
    "没",
    "别",
    "无",
];
/// The negators of a wish (indices into [`NEGATORS`]: 不需要, 不用, 不要,
/// 不想, 别): a reply cue after one of them is not what the buyer asks about.
const WISH_NEGATORS: [u8; 5] = [0, 1, 2, 3, 7];
/// Degree words that may stand between a negator and the keyword it
/// negates (`不太满意`, `不怎么好`), optionally after 是 (`不是很满意`).
pub const NEGATION_FILLERS: [&str; 5] = ["怎么", "太", "很", "大", "有"];
/// Words before a negator that make it ask why something has not
/// happened: `还没发货`, `怎么不发货`, `为什么没到账`. The buyer still wants it.
const PENDING: [&str; 7] = ["还", "都", "咋", "怎么", "为什么", "为啥", "怎"];
/// Characters before 别 that make it part of a word (特别, 区别, 识别),
/// not a negator.
const BIE_WORDS: &str = "特区分告级类个识性差离辨鉴道派";
/// Question words after an exclusion ending in 了 (`到账了吗`).
const QUESTION_AFTER: [&str; 10] = [
    "吗", "么", "嘛", "没", "?", "不", "吧", "是吗", "对吗", "对吧",
];

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
    /// Shared with the library unless a placeholder was filled in.
    pub reply: Arc<str>,
    /// Why it ranked: the keywords as the library spells them (shared
    /// with the matcher, not copied per message), then the text a regex
    /// pattern of the intent matched, if one did (as normalised).
    pub matched: Vec<Arc<str>>,
}

/// Keyword indices of one intent's hits: a handful, so kept inline (two
/// heap allocations per intent hit were a tenth of the matcher's time).
pub type Hits = SmallVec<[u32; 4]>;

/// Automaton hits of one message as (start, end, pattern).
type Spans = SmallVec<[(u32, u32, u32); 16]>;

/// One intent's score for a message, before a reply is filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// Index into the matcher's intents.
    pub intent: usize,
    pub score: f32,
    /// Indices of the keywords (automaton patterns) that matched.
    pub matched: Hits,
    /// Byte range, in the normalised message, of the first of the
    /// intent's regex patterns that matched, if any.
    pub pattern: Option<(u32, u32)>,
}

/// One step of ranking a message, for `kefu suggest --explain`: what a
/// shop writing its libraries needs to see when a keyword did not count
/// (a negation, an exclusion, a longer keyword around it) or an intent
/// scored under the minimum. Texts are as the libraries write them; hits
/// are shown as they stand in the normalised message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The message holds only punctuation and white space: nothing is
    /// ranked.
    NoWords,
    /// A keyword or exclusion inside a bracketed data token (`[退款]`):
    /// data, not the buyer's words, so not counted.
    InToken { text: String },
    /// A keyword of `intents` inside a longer keyword's hit: the longer
    /// one is matched instead, and this one counts for nothing.
    Swallowed {
        keyword: String,
        intents: Vec<String>,
        by: String,
    },
    /// A keyword after a negator (`不`, `没有`, `不想`, ...) says the
    /// opposite; it counts only as a negated form the libraries hold.
    Negated {
        keyword: String,
        negator: String,
        counted_as: Option<String>,
    },
    /// An exclusion of `intent`: at the end of the message it vetoes the
    /// intent; elsewhere the hits of the intent it touches.
    Exclusion {
        exclusion: String,
        intent: String,
        at_end: bool,
    },
    /// An exclusion ending in 了 before a question (`到账了吗`): a finished
    /// state asked about, not applied.
    ExclusionAsked { exclusion: String, intent: String },
    /// A keyword or pattern hit that an exclusion of `intent` touches
    /// (overlaps, or lies within [`EXCLUDE_REACH`] characters of).
    Vetoed { hit: String, intent: String },
    /// Evidence for `intent`: a keyword with its weight.
    Keyword {
        keyword: String,
        intent: String,
        weight: f32,
    },
    /// Evidence for `intent`: the text one of its patterns matched.
    Pattern { matched: String, intent: String },
    /// An intent's score: priority × evidence × (floor + (1 − floor) ×
    /// coverage); `verdict` says whether it is suggested.
    Score {
        intent: String,
        priority: f32,
        evidence: f32,
        coverage: f32,
        score: f32,
        verdict: String,
    },
}

/// Where the ranking reports its steps: nowhere on the service's path
/// (`()`, compiled away), into a list for `--explain`.
trait Tracer {
    /// Whether steps are kept: work done only to report a step is guarded
    /// by it, so the service's ranking does none of it.
    const ON: bool;
    fn step(&mut self, f: impl FnOnce() -> Step);
}

impl Tracer for () {
    const ON: bool = false;
    #[inline(always)]
    fn step(&mut self, _: impl FnOnce() -> Step) {}
}

impl Tracer for Vec<Step> {
    const ON: bool = true;
    /// A step already reported is not repeated (`退款` a thousand times
    /// in one message says one thing).
    fn step(&mut self, f: impl FnOnce() -> Step) {
        let step = f();
        if !self.contains(&step) {
            self.push(step);
        }
    }
}

#[derive(Debug)]
struct CompiledIntent {
    id: Arc<str>,
    stage: Stage,
    replies: Vec<Arc<str>>,
    /// How the replies written for a sub-question are chosen.
    cues: Cues,
    /// Indices into `replies` of the general replies (no cues).
    general: Vec<usize>,
    priority: f32,
}

impl CompiledIntent {
    /// The reply for a message (`norm`, normalised; `seed`, its hash): the
    /// cued reply whose cues cover the most of the message (most cue
    /// characters, then most cues, then the first written), else a general
    /// one picked by `seed`, so wording varies between messages but the
    /// same message always gets the same reply. `found`: the plain cue
    /// words in the message. As for keywords, a cue inside a bracketed
    /// token (`tokens`: `[姓名x]`, `[图片]`) is data, not words.
    fn reply(
        &self,
        words: &CueWords,
        found: &[u32],
        norm: &str,
        tokens: &[(u32, u32)],
        seed: u64,
    ) -> Option<&Arc<str>> {
        let index = match self.cues.best(words, found, norm, tokens) {
            Some(r) => r,
            None if !self.general.is_empty() => {
                self.general[(seed % self.general.len() as u64) as usize]
            }
            // A library built in code without general replies: any reply.
            None => (seed % self.replies.len().max(1) as u64) as usize,
        };
        self.replies.get(index)
    }
}

/// Whether `s..e` lies outside every bracketed token of `tokens`.
fn outside(tokens: &[(u32, u32)], s: usize, e: usize) -> bool {
    !tokens
        .iter()
        .any(|&(ts, te)| (s as u32) < te && ts < e as u32)
}

/// The plain `when:` cue words of every intent (those without `#`),
/// normalised and deduplicated into one automaton: one scan of a message
/// finds the cue words of all its suggested intents (a substring search
/// per cue cost 2 µs a message, a scan per intent 0.1-0.2 µs).
#[derive(Debug)]
struct CueWords {
    ac: Automaton,
    /// Per word: its length in characters, the measure of how much it says.
    chars: Vec<u32>,
}

/// Cue words found in one message (their ids), inline: a message holds a
/// handful.
type Found = SmallVec<[u32; 8]>;

/// How one intent's cued replies are chosen.
#[derive(Debug, Default)]
struct Cues {
    /// Cue words with `#` (any digit), searched one by one and only in a
    /// message that has a digit: (text, length in characters).
    digit: Vec<(Box<str>, u32)>,
    /// Per cued reply: its index in the intent's replies, its plain words
    /// (ids in [`CueWords`]) and its `#` words (indices into `digit`).
    replies: Vec<(usize, Vec<u32>, Vec<u32>)>,
}

impl Cues {
    /// The cues of `replies`; plain words are added to `words` (their
    /// ids: positions there, found through `index`).
    fn new(replies: &[Reply], index: &mut HashMap<String, u32>, words: &mut Vec<String>) -> Cues {
        let mut cues = Cues::default();
        for (n, r) in replies.iter().enumerate().filter(|(_, r)| !r.is_general()) {
            let (mut plain, mut digit) = (Vec::new(), Vec::new());
            for w in &r.when {
                let text = normalize(w);
                if text.is_empty() {
                    continue;
                }
                if text.contains('#') {
                    let at = match cues.digit.iter().position(|(t, _)| **t == *text) {
                        Some(at) => at,
                        None => {
                            let chars = text.chars().count() as u32;
                            cues.digit.push((text.into_boxed_str(), chars));
                            cues.digit.len() - 1
                        }
                    } as u32;
                    if !digit.contains(&at) {
                        digit.push(at);
                    }
                } else {
                    let id = *index.entry(text.clone()).or_insert_with(|| {
                        words.push(text);
                        (words.len() - 1) as u32
                    });
                    if !plain.contains(&id) {
                        plain.push(id);
                    }
                }
            }
            cues.replies.push((n, plain, digit));
        }
        cues
    }

    fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// The index of the best cued reply for `norm`, given the plain cue
    /// words `found` in it, if any of its cues is there.
    fn best(
        &self,
        words: &CueWords,
        found: &[u32],
        norm: &str,
        tokens: &[(u32, u32)],
    ) -> Option<usize> {
        if self.replies.is_empty() {
            return None;
        }
        let digits = !self.digit.is_empty() && norm.bytes().any(|b| b.is_ascii_digit());
        // The common case: no cue word in the message.
        if !digits && found.is_empty() {
            return None;
        }
        let mut best: Option<(usize, (u32, usize))> = None;
        for (r, plain, digit) in &self.replies {
            let (mut chars, mut hits) = (0, 0);
            for &w in plain.iter().filter(|w| found.contains(w)) {
                chars += words.chars[w as usize];
                hits += 1;
            }
            if digits {
                for &d in digit {
                    let (text, n) = &self.digit[d as usize];
                    if digit_cue_in(text, norm, tokens) {
                        chars += n;
                        hits += 1;
                    }
                }
            }
            if hits > 0 && best.is_none_or(|(_, b)| (chars, hits) > b) {
                best = Some((*r, (chars, hits)));
            }
        }
        best.map(|(r, _)| r)
    }
}

/// Whether the cue `text`, whose `#` stands for any ASCII digit, occurs in
/// `norm` outside the bracketed `tokens`. Byte-wise is exact: `#` and
/// digits are ASCII, and no byte of a multi-byte UTF-8 character is.
fn digit_cue_in(text: &str, norm: &str, tokens: &[(u32, u32)]) -> bool {
    let (hay, cue) = (norm.as_bytes(), text.as_bytes());
    hay.len() >= cue.len()
        && hay.windows(cue.len()).enumerate().any(|(s, w)| {
            w.iter()
                .zip(cue)
                .all(|(&h, &c)| h == c || (c == b'#' && h.is_ascii_digit()))
                && outside(tokens, s, s + cue.len())
        })
}

/// What one automaton pattern means for one intent.
#[derive(Debug, Clone, Copy)]
struct Entry {
    intent: u32,
    weight: f32,
    exclude: bool,
}

/// The keyword automaton; `None` when there is nothing to look for (a
/// library of patterns without literals), which its crate cannot build.
struct Automaton(Option<CharwiseDoubleArrayAhoCorasick<u32>>);

impl Automaton {
    fn new(texts: &[String]) -> Result<Automaton, BuildError> {
        if texts.is_empty() {
            return Ok(Automaton(None));
        }
        // Every text is distinct and non-empty, as the builder requires:
        // keywords are unique after normalising and never empty, and a
        // literal equal to a keyword shares its slot.
        CharwiseDoubleArrayAhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(texts)
            .map(|ac| Automaton(Some(ac)))
            .map_err(|e| BuildError::Automaton(e.to_string()))
    }

    /// Every occurrence of every text in `hay`: (start, end, text index).
    fn hits<'a>(&'a self, hay: &'a str) -> impl Iterator<Item = (u32, u32, u32)> + 'a {
        self.0.iter().flat_map(move |ac| {
            ac.find_overlapping_iter(hay)
                .map(|m| (m.start() as u32, m.end() as u32, m.value()))
        })
    }

    fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |ac| ac.heap_bytes())
    }
}

// Its crate implements no `Debug`.
impl std::fmt::Debug for Automaton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Automaton({} bytes)", self.heap_bytes())
    }
}

/// The compiled libraries. Cheap to share (`Arc<Matcher>`), never rebuilt
/// per message.
#[derive(Debug)]
pub struct Matcher {
    /// The plain `when:` cue words of every intent's replies.
    cue_words: CueWords,
    /// Every keyword and exclusion, and the gates' literals (see [`Gates`]):
    /// one scan of the message finds both.
    ac: Automaton,
    /// Per automaton pattern: its text as written and what it means (no
    /// entries: a gate literal only).
    patterns: Vec<(Arc<str>, Vec<Entry>)>,
    /// Distinct keyword texts (an automaton pattern that some intent
    /// credits; exclusions and gate literals alone are not keywords).
    keywords: usize,
    intents: Vec<CompiledIntent>,
    /// The patterns, each run only on a message that holds one of its
    /// prefix literals (see [`Gates`]).
    regex_list: Vec<Regex>,
    regex_owner: Vec<u32>,
    gates: Gates,
    /// (keyword pattern, index into [`NEGATORS`]) -> the pattern of the
    /// keyword that is the negator followed by it (`满意`, `不` -> `不满意`),
    /// for the negated forms the libraries list.
    negated_forms: HashMap<(u32, u8), u32>,
}

/// Which patterns are worth running on a message.
///
/// Why: run as one `RegexSet`, the 40-odd patterns (with `.{0,8}` and `\d`
/// everywhere) cost more than all the keywords together, because the set's
/// lazy DFA must scan every message to its end with every pattern alive.
/// But a pattern can only match a message holding certain literals: in
/// `(改|换|修改).{0,4}(地址|电话)`, one of 改/换/修改 *and* one of 地址/电话.
/// Those literal sets ([`required`]) of all patterns go into the keyword
/// automaton (one scan finds keywords and literals alike), and a message
/// runs only the patterns all of whose sets it hits, each as a single
/// regex. When a pattern's matches are at most so many bytes long, the
/// literals must also lie that close together (`改` at one end of a long
/// message and `地址` at the other do not open the pattern above): in the
/// service a regex search on a cold cache costs more than the keyword scan
/// of the whole message, and this halves the searches that find nothing.
/// A pattern that requires nothing runs on every message. The gate may let
/// through a pattern that then does not match, never the reverse (tested
/// over the corpus).
#[derive(Debug)]
struct Gates {
    /// Per automaton pattern: the (pattern, clause) it satisfies.
    opens: Vec<Vec<(u32, u8)>>,
    /// Per pattern: one bit per clause that must be satisfied (0: none,
    /// the pattern runs on every message).
    needs: Vec<u8>,
    /// Per pattern: the longest match in bytes, when there is one.
    window: Vec<Option<u32>>,
    /// The patterns that require no literal.
    always: Vec<u32>,
    /// Per pattern anchored at the start (`^`): the message must begin
    /// with one of these, when they are known.
    heads: Vec<Option<HashSet<Vec<u8>>>>,
    /// Per pattern anchored at the end (`$`): the message must end with
    /// one of these, when they are known.
    tails: Vec<Option<HashSet<Vec<u8>>>>,
}

/// Most clauses kept per pattern (the most selective ones).
const MAX_CLAUSES: usize = 8;
/// A character class of at most this many characters is a literal set.
const MAX_CLASS_CHARS: u32 = 32;

/// How a match anchored at the start (end) of the message must begin
/// (end): each literal it can begin with, cut to its first (last)
/// [`EDGE_CHARS`] characters. A message fits when its own first (last) one
/// or two characters are in the set. Why: the libraries' short-answer
/// patterns (`^[嗯哦 ]*(好|行)[嗯哦 ]*$`) hold literals as common as 好 and
/// 我 and pass the literal gate on a third of all messages; few messages
/// begin and end the way they must.
fn anchored(hir: &Hir, kind: ExtractKind) -> Option<HashSet<Vec<u8>>> {
    let prefix = matches!(kind, ExtractKind::Prefix);
    let (looks, look) = if prefix {
        (hir.properties().look_set_prefix(), Look::Start)
    } else {
        (hir.properties().look_set_suffix(), Look::End)
    };
    if !looks.contains(look) {
        return None;
    }
    let seq = Extractor::new()
        .kind(kind)
        .limit_class(MAX_CLASS_CHARS as usize)
        .limit_total(EDGE_LITERALS)
        .extract(hir);
    let mut set = HashSet::new();
    for lit in seq.literals()? {
        let edge = edge(
            std::str::from_utf8(lit.as_bytes()).ok()?,
            prefix,
            EDGE_CHARS,
        );
        if edge.is_empty() {
            return None;
        }
        set.insert(edge.as_bytes().to_vec());
    }
    (!set.is_empty()).then_some(set)
}

/// The first (`front`) or last `n` characters of `text`.
fn edge(text: &str, front: bool, n: usize) -> &str {
    if front {
        let end = text.char_indices().nth(n).map_or(text.len(), |(i, _)| i);
        &text[..end]
    } else {
        let start = text.char_indices().rev().nth(n - 1).map_or(0, |(i, _)| i);
        &text[start..]
    }
}

/// Characters kept of each edge literal.
const EDGE_CHARS: usize = 2;
/// Most literals extracted for an edge (the filler classes of the
/// short-answer patterns, repeated, make hundreds).
const EDGE_LITERALS: usize = 5000;

/// Whether `text` begins (ends) with one of `set`'s literals.
fn fits_edge(set: &HashSet<Vec<u8>>, text: &str, front: bool) -> bool {
    (1..=EDGE_CHARS).any(|n| set.contains(edge(text, front, n).as_bytes()))
}

impl Gates {
    /// The gates of `sources` and the literals they need found, indexed
    /// like `opens` until [`Gates::place`] moves them into the automaton.
    fn new(sources: &[String]) -> Result<(Gates, Vec<String>), BuildError> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut literals: Vec<String> = Vec::new();
        let mut opens: Vec<Vec<(u32, u8)>> = Vec::new();
        let mut needs = vec![0u8; sources.len()];
        let mut window = Vec::with_capacity(sources.len());
        let mut heads = Vec::with_capacity(sources.len());
        let mut tails = Vec::with_capacity(sources.len());
        for (i, src) in sources.iter().enumerate() {
            let hir = regex_syntax::parse(src).map_err(|e| BuildError::Syntax(Box::new(e)))?;
            window.push(
                hir.properties()
                    .maximum_len()
                    .and_then(|n| u32::try_from(n).ok()),
            );
            heads.push(anchored(&hir, ExtractKind::Prefix));
            tails.push(anchored(&hir, ExtractKind::Suffix));
            let mut clauses = required(&hir);
            clauses.sort_by_key(|c| std::cmp::Reverse(selectivity(c)));
            clauses.truncate(MAX_CLAUSES);
            for (k, clause) in clauses.iter().enumerate() {
                needs[i] |= 1 << k;
                for lit in clause {
                    let slot = *index.entry(lit.clone()).or_insert_with(|| {
                        literals.push(lit.clone());
                        opens.push(Vec::new());
                        literals.len() - 1
                    });
                    opens[slot].push((i as u32, k as u8));
                }
            }
        }
        let always = (0..needs.len() as u32)
            .filter(|&p| needs[p as usize] == 0)
            .collect();
        let gates = Gates {
            opens,
            needs,
            window,
            always,
            heads,
            tails,
        };
        Ok((gates, literals))
    }

    /// Re-indexes `opens` by automaton pattern: literal `i` became
    /// pattern `slots[i]` of `len`.
    fn place(&mut self, slots: &[usize], len: usize) {
        let mut opens = vec![Vec::new(); len];
        for (i, o) in std::mem::take(&mut self.opens).into_iter().enumerate() {
            opens[slots[i]] = o;
        }
        self.opens = opens;
    }

    /// Whether automaton pattern `p` is some gate's literal.
    fn wants(&self, p: u32) -> bool {
        !self.opens[p as usize].is_empty()
    }

    /// The patterns to run on `norm`, in pattern order, given the gate
    /// literals found in it as (start, end, automaton pattern).
    fn open(&self, norm: &str, hits: &[(u32, u32, u32)]) -> SmallVec<[u32; 8]> {
        let fits = |p: u32| {
            let p = p as usize;
            self.heads[p]
                .as_ref()
                .is_none_or(|h| fits_edge(h, norm, true))
                && self.tails[p]
                    .as_ref()
                    .is_none_or(|t| fits_edge(t, norm, false))
        };
        // The clauses met per pattern, for the few patterns the message's
        // literals touch (most messages touch none or one), plus the
        // patterns that need nothing.
        let mut seen: SmallVec<[(u32, u8); 8]> = self.always.iter().map(|&p| (p, 0)).collect();
        for &(_, _, lit) in hits {
            for &(p, k) in &self.opens[lit as usize] {
                match seen.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, bits)) => *bits |= 1 << k,
                    None => seen.push((p, 1 << k)),
                }
            }
        }
        let mut open: SmallVec<[u32; 8]> = seen
            .into_iter()
            .filter(|&(p, bits)| {
                let needs = self.needs[p as usize];
                bits & needs == needs && fits(p) && self.close_enough(p, hits)
            })
            .map(|(p, _)| p)
            .collect();
        open.sort_unstable();
        open
    }

    /// Whether one literal of each of `p`'s clauses lies within a span no
    /// longer than its longest match. A match contains one of each, so
    /// taking the leftmost of those as `start`, every one ends by
    /// `start + window`.
    fn close_enough(&self, p: u32, hits: &[(u32, u32, u32)]) -> bool {
        let needs = self.needs[p as usize];
        let Some(window) = self.window[p as usize] else {
            return true;
        };
        if needs == 0 {
            return true;
        }
        let clauses = |lit: u32| {
            self.opens[lit as usize]
                .iter()
                .filter(|&&(q, _)| q == p)
                .fold(0u8, |bits, &(_, k)| bits | 1 << k)
        };
        hits.iter().any(|&(start, _, lit)| {
            clauses(lit) != 0 && {
                let end = start.saturating_add(window);
                let got = hits
                    .iter()
                    .filter(|&&(s, e, _)| s >= start && e <= end)
                    .fold(0u8, |bits, &(_, _, l)| bits | clauses(l));
                got & needs == needs
            }
        })
    }
}

/// Literal sets every match of `hir` contains at least one literal of
/// each (a conjunction of disjunctions); empty when nothing is required.
fn required(hir: &Hir) -> Vec<Vec<String>> {
    match hir.kind() {
        // Always UTF-8 (the parser's default rejects patterns that can
        // match anything else); a literal that is not requires nothing.
        HirKind::Literal(lit) => match std::str::from_utf8(&lit.0) {
            Ok(s) => vec![vec![s.to_owned()]],
            Err(_) => Vec::new(),
        },
        HirKind::Class(Class::Unicode(class)) => {
            let chars: u32 = class
                .ranges()
                .iter()
                .map(|r| r.end() as u32 - r.start() as u32 + 1)
                .sum();
            if chars == 0 || chars > MAX_CLASS_CHARS {
                return Vec::new();
            }
            let set = class
                .ranges()
                .iter()
                .flat_map(|r| r.start()..=r.end())
                .map(|c| c.to_string())
                .collect();
            vec![set]
        }
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => required(&r.sub),
        HirKind::Concat(subs) => subs.iter().flat_map(required).collect(),
        HirKind::Alternation(subs) => {
            // A match goes through one branch: the union of one clause per
            // branch (its most selective) is required.
            let mut union = Vec::new();
            for sub in subs {
                let Some(best) = required(sub).into_iter().max_by_key(|c| selectivity(c)) else {
                    return Vec::new();
                };
                union.extend(best);
            }
            union.sort();
            union.dedup();
            vec![union]
        }
        _ => Vec::new(),
    }
}

/// How rarely a clause is satisfied, roughly: longer shortest literal
/// first (`发票` is rarer than `的`), then fewer literals.
fn selectivity(clause: &[String]) -> (usize, std::cmp::Reverse<usize>) {
    let shortest = clause.iter().map(String::len).min().unwrap_or(0);
    (shortest, std::cmp::Reverse(clause.len()))
}

/// Building the matcher failed; the loader validates everything it checks,
/// so this only happens for libraries built by hand.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the keyword automaton: {0}")]
    Automaton(String),
    #[error("cannot compile the patterns: {0}")]
    Regex(#[from] regex::Error),
    #[error("cannot parse a pattern: {0}")]
    Syntax(Box<regex_syntax::Error>),
}

impl Matcher {
    /// Compiles every intent of `lib`.
    pub fn new(lib: &Library) -> Result<Matcher, BuildError> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut patterns: Vec<(Arc<str>, Vec<Entry>)> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut intents = Vec::with_capacity(lib.intents.len());
        let mut regex_src = Vec::new();
        let mut regex_owner = Vec::new();
        let mut cue_index: HashMap<String, u32> = HashMap::new();
        let mut cue_texts: Vec<String> = Vec::new();

        for (i, intent) in lib.intents.iter().enumerate() {
            let mut add = |text: &str, weight: f32, exclude: bool| {
                let norm = normalize(text);
                if norm.is_empty() {
                    return;
                }
                let slot = *index.entry(norm.clone()).or_insert_with(|| {
                    texts.push(norm);
                    patterns.push((Arc::from(text), Vec::new()));
                    patterns.len() - 1
                });
                let entries = &mut patterns[slot].1;
                if !entries
                    .iter()
                    .any(|e| e.intent == i as u32 && e.exclude == exclude)
                {
                    entries.push(Entry {
                        intent: i as u32,
                        weight,
                        exclude,
                    });
                }
            };
            for k in &intent.keywords {
                let chars = normalize(&k.text).chars().count();
                add(
                    &k.text,
                    k.weight.unwrap_or_else(|| default_weight(chars)),
                    false,
                );
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
                replies: intent
                    .replies
                    .iter()
                    .map(|r| Arc::from(r.text.as_str()))
                    .collect(),
                cues: Cues::new(&intent.replies, &mut cue_index, &mut cue_texts),
                general: intent
                    .replies
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_general())
                    .map(|(n, _)| n)
                    .collect(),
                priority: intent.priority,
            });
        }
        // Distinct keyword texts; a text only excluded is not one.
        let keywords = patterns
            .iter()
            .filter(|(_, entries)| entries.iter().any(|e| !e.exclude))
            .count();
        // The libraries' texts (keywords and exclusions) come first in
        // `texts`, the patterns' gate literals after them. (Slicing by the
        // keyword count missed the negated forms among the last texts.)
        let library_texts = patterns.len();
        let (mut gates, literals) = Gates::new(&regex_src)?;
        let mut slot_of: HashMap<String, usize> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        let slots: Vec<usize> = literals
            .into_iter()
            .map(|lit| {
                *slot_of.entry(lit.clone()).or_insert_with(|| {
                    texts.push(lit);
                    patterns.push((Arc::from(""), Vec::new()));
                    texts.len() - 1
                })
            })
            .collect();
        gates.place(&slots, texts.len());
        // From the keywords that start with a negator (不满意) to the
        // keyword they negate (满意), and to its forms with a degree word
        // (很满意: 不是很满意 -> 不满意). Few keywords start with one, so this
        // looks up a handful of strings, not every keyword times every
        // negator.
        let mut negated_forms = HashMap::new();
        for (q, text) in texts[..library_texts].iter().enumerate() {
            for (n, neg) in NEGATORS.iter().enumerate() {
                let Some(rest) = text.strip_prefix(neg).filter(|r| !r.is_empty()) else {
                    continue;
                };
                let plain = index.get(rest).copied();
                let degree = ['很', '太'].map(|d| index.get(&format!("{d}{rest}")).copied());
                for p in std::iter::once(plain).chain(degree).flatten() {
                    negated_forms.entry((p as u32, n as u8)).or_insert(q as u32);
                }
            }
        }
        let ac = Automaton::new(&texts)?;
        let regex_list = regex_src
            .iter()
            .map(|p| Regex::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        let cue_words = CueWords {
            chars: cue_texts.iter().map(|t| t.chars().count() as u32).collect(),
            ac: Automaton::new(&cue_texts)?,
        };
        Ok(Matcher {
            ac,
            cue_words,
            patterns,
            keywords,
            intents,
            regex_list,
            regex_owner,
            gates,
            negated_forms,
        })
    }

    pub fn intent_count(&self) -> usize {
        self.intents.len()
    }

    pub fn keyword_count(&self) -> usize {
        self.keywords
    }

    /// Heap bytes of the keyword automaton.
    pub fn automaton_bytes(&self) -> usize {
        self.ac.heap_bytes()
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
        self.rank_normalized(&norm, &bracket_tokens(&norm), &mut ())
    }

    /// [`Matcher::rank`]'s steps for `text`, with the normalised text they
    /// refer to (see [`Step`]).
    pub fn explain(&self, text: &str) -> (String, Vec<Step>) {
        let norm = normalize(text);
        let mut steps = Vec::new();
        self.rank_normalized(&norm, &bracket_tokens(&norm), &mut steps);
        (norm, steps)
    }

    /// One overlapping scan of `norm`: the keyword and exclusion hits
    /// outside bracketed tokens, and the gate literals anywhere (the
    /// patterns run on the whole text), as (start, end, pattern).
    fn scan(&self, norm: &str, tokens: &[(u32, u32)]) -> (Spans, Spans) {
        // On the stack for a typical message (three hits, a literal or
        // two); a long one spills to the heap.
        let mut hits = Spans::new();
        let mut literals = Spans::new();
        for hit in self.ac.hits(norm) {
            let (s, e, p) = hit;
            if self.gates.wants(p) {
                literals.push(hit);
            }
            // Text inside a bracketed token is data, not words.
            if !self.patterns[p as usize].1.is_empty()
                && !tokens.iter().any(|&(ts, te)| s < te && ts < e)
            {
                hits.push(hit);
            }
        }
        (hits, literals)
    }

    /// [`Matcher::rank`] of a normalised text whose bracketed tokens are
    /// `tokens` (found once by the caller: `suggest` needs them again).
    fn rank_normalized<T: Tracer>(
        &self,
        norm: &str,
        tokens: &[(u32, u32)],
        t: &mut T,
    ) -> Vec<Ranked> {
        let content = content_units(norm, 0, norm.len(), tokens);
        if content == 0 {
            t.step(|| Step::NoWords);
            return Vec::new();
        }
        // Overlapping search reports every keyword at every position.
        let (hits, literals) = self.scan(norm, tokens);
        if T::ON {
            for (s, e, p) in self.ac.hits(norm) {
                if !self.patterns[p as usize].1.is_empty()
                    && tokens.iter().any(|&(ts, te)| s < te && ts < e)
                {
                    t.step(|| Step::InToken {
                        text: norm[s as usize..e as usize].to_string(),
                    });
                }
            }
        }
        // A keyword hit strictly inside a longer keyword hit is swallowed by
        // it. Only keywords swallow: an exclusion such as `售后退货` must not
        // hide the keyword `退货` from the intents it does not exclude.
        let is_keyword = |p: u32| self.patterns[p as usize].1.iter().any(|e| !e.exclude);
        let swallowed: SmallVec<[bool; 16]> = hits
            .iter()
            .map(|&(s, e, _)| {
                hits.iter().any(|&(s2, e2, p2)| {
                    s2 <= s && e <= e2 && (e2 - s2) > (e - s) && is_keyword(p2)
                })
            })
            .collect();

        // Exclusion hits as (intent, start, end); an exclusion that ends
        // the message vetoes its intent outright.
        let end = content_end(norm);
        let mut vetoes: SmallVec<[(u32, u32, u32); 4]> = SmallVec::new();
        let mut acc: Vec<Acc> = Vec::with_capacity(8);
        let written = |p: u32| self.patterns[p as usize].0.to_string();
        let id = |i: u32| self.intents[i as usize].id.to_string();
        for &(s, e, p) in &hits {
            for entry in &self.patterns[p as usize].1 {
                if !entry.exclude {
                    continue;
                }
                if asks_about_finished(norm, s as usize, e as usize) {
                    t.step(|| Step::ExclusionAsked {
                        exclusion: written(p),
                        intent: id(entry.intent),
                    });
                    continue;
                }
                t.step(|| Step::Exclusion {
                    exclusion: written(p),
                    intent: id(entry.intent),
                    at_end: e as usize >= end,
                });
                if e as usize >= end {
                    Acc::of(&mut acc, entry.intent).vetoed = true;
                } else {
                    vetoes.push((entry.intent, s, e));
                }
            }
        }
        let touched = |intent: u32, s: u32, e: u32| {
            vetoes
                .iter()
                .any(|&(i, vs, ve)| i == intent && near(norm, (vs, ve), (s, e)))
        };
        // Per intent: evidence so far, hit spans.
        let credit = |acc: &mut Vec<Acc>, t: &mut T, p: u32, s: u32, e: u32| {
            for entry in &self.patterns[p as usize].1 {
                if entry.exclude {
                    continue;
                }
                if !vetoes.is_empty() && touched(entry.intent, s, e) {
                    t.step(|| Step::Vetoed {
                        hit: norm[s as usize..e as usize].to_string(),
                        intent: id(entry.intent),
                    });
                    continue;
                }
                t.step(|| Step::Keyword {
                    keyword: written(p),
                    intent: id(entry.intent),
                    weight: entry.weight,
                });
                let a = Acc::of(acc, entry.intent);
                if !a.matched.contains(&p) {
                    a.matched.push(p);
                    a.miss *= 1.0 - entry.weight;
                }
                a.spans.push((s, e));
            }
        };
        for (&(s, e, p), &inside) in hits.iter().zip(&swallowed) {
            if inside || !is_keyword(p) {
                if T::ON && inside && is_keyword(p) {
                    t.step(|| Step::Swallowed {
                        keyword: written(p),
                        intents: self.patterns[p as usize]
                            .1
                            .iter()
                            .filter(|e| !e.exclude)
                            .map(|e| id(e.intent))
                            .collect(),
                        by: hits
                            .iter()
                            .filter(|&&(s2, e2, p2)| {
                                s2 <= s && e <= e2 && (e2 - s2) > (e - s) && is_keyword(p2)
                            })
                            .max_by_key(|&&(s2, e2, _)| e2 - s2)
                            .map(|&(_, _, p2)| written(p2))
                            .unwrap_or_default(),
                    });
                }
                continue;
            }
            match negation(norm, s as usize, e as usize) {
                None => credit(&mut acc, t, p, s, e),
                // `不太满意` counts as the keyword `不满意`; `不满意` itself
                // is a hit of its own that swallowed `满意`.
                Some((start, n)) => {
                    let canonical = NEGATORS
                        .iter()
                        .position(|neg| neg.len() == 3 && norm[start..].starts_with(neg))
                        .map(|c| c as u8);
                    let form = self
                        .negated_forms
                        .get(&(p, n))
                        .or_else(|| canonical.and_then(|c| self.negated_forms.get(&(p, c))));
                    t.step(|| Step::Negated {
                        keyword: written(p),
                        negator: norm[start..s as usize].to_string(),
                        counted_as: form.map(|&q| written(q)),
                    });
                    if let Some(&q) = form {
                        credit(&mut acc, t, q, start as u32, e);
                    }
                }
            }
        }
        if !self.regex_list.is_empty() {
            for i in self.gates.open(norm, &literals) {
                let Some(m) = self.regex_list[i as usize].find(norm) else {
                    continue;
                };
                let owner = self.regex_owner[i as usize];
                let (s, e) = (m.start() as u32, m.end() as u32);
                if !vetoes.is_empty() && touched(owner, s, e) {
                    t.step(|| Step::Vetoed {
                        hit: norm[s as usize..e as usize].to_string(),
                        intent: id(owner),
                    });
                    continue;
                }
                t.step(|| Step::Pattern {
                    matched: norm[s as usize..e as usize].to_string(),
                    intent: id(owner),
                });
                let a = Acc::of(&mut acc, owner);
                if a.pattern.is_none() {
                    a.pattern = Some((s, e));
                    a.miss *= 1.0 - PATTERN_WEIGHT;
                }
                a.spans.push((s, e));
            }
        }

        let mut ranked: Vec<Ranked> = acc
            .into_iter()
            .filter_map(|mut a| {
                let intent = &self.intents[a.intent as usize];
                if a.vetoed {
                    t.step(|| Step::Score {
                        intent: id(a.intent),
                        priority: intent.priority,
                        evidence: 0.0,
                        coverage: 0.0,
                        score: 0.0,
                        verdict: "vetoed: an exclusion ends the message".to_string(),
                    });
                    return None;
                }
                let evidence = 1.0 - a.miss;
                let covered = covered_units(norm, &mut a.spans, tokens);
                let coverage = (covered as f32 / content as f32).min(1.0);
                let score = intent.priority
                    * evidence
                    * (COVERAGE_FLOOR + (1.0 - COVERAGE_FLOOR) * coverage);
                t.step(|| Step::Score {
                    intent: id(a.intent),
                    priority: intent.priority,
                    evidence,
                    coverage,
                    // As a suggestion's score is rounded (to 0.001 here).
                    score: (score.min(1.0) * 1000.0).round() / 1000.0,
                    verdict: if score >= MIN_SCORE {
                        "suggested".to_string()
                    } else {
                        format!("under the minimum score {MIN_SCORE:.2}")
                    },
                });
                (score >= MIN_SCORE).then(|| Ranked {
                    intent: a.intent as usize,
                    score: (score.min(1.0) * 1000.0).round() / 1000.0,
                    matched: a.matched,
                    pattern: a.pattern,
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
        // Empty, so no allocation, unless the message holds a token.
        let tokens = bracket_tokens(&norm);
        let mut ranked = self.rank_normalized(&norm, &tokens, &mut ());
        ranked.truncate(top);
        // One scan for the cue words, when a suggested intent has any.
        let mut found = Found::new();
        if ranked
            .iter()
            .any(|r| !self.intents[r.intent].cues.is_empty())
        {
            for (s, e, w) in self.cue_words.ac.hits(&norm) {
                let (s, e) = (s as usize, e as usize);
                // A cue after a negator of wish (不要, 不想, 不用, 不需要, 别)
                // names what the buyer does not want (不要换货，直接退款): it
                // does not count. After 没/没有/不/无 it reports a state the
                // reply is about (没有赠品, 没有签收) and counts, as does a
                // cue that is the negated form itself (不合适). The keywords'
                // exceptions (questions, 还没) apply as well.
                let unwanted =
                    negation(&norm, s, e).is_some_and(|(_, n)| WISH_NEGATORS.contains(&n));
                if outside(&tokens, s, e) && !found.contains(&w) && !unwanted {
                    found.push(w);
                }
            }
        }
        ranked
            .into_iter()
            .map(|r| {
                let intent = &self.intents[r.intent];
                let reply = intent
                    .reply(&self.cue_words, &found, &norm, &tokens, seed)
                    .map(|t| fill.apply_shared(t))
                    .unwrap_or_else(|| Arc::from(""));
                Suggestion {
                    stage: intent.stage,
                    intent: intent.id.clone(),
                    score: (r.score * 100.0).round() / 100.0,
                    reply,
                    matched: self.matched_texts(&norm, &r),
                }
            })
            .collect()
    }
}

impl Matcher {
    /// What made `r` rank, for the agent to see: its keywords as the
    /// library spells them, then the text its pattern matched (as
    /// normalised), which no keyword names.
    fn matched_texts(&self, norm: &str, r: &Ranked) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(r.matched.len() + 1);
        out.extend(
            r.matched
                .iter()
                .map(|&p| self.patterns[p as usize].0.clone()),
        );
        if let Some((s, e)) = r.pattern {
            let text = norm[s as usize..e as usize].trim();
            if !out.iter().any(|k| &**k == text) {
                out.push(Arc::from(text));
            }
        }
        out
    }
}

/// Byte offset where the content of `norm` ends: after its last
/// character that is not punctuation or white space.
fn content_end(norm: &str) -> usize {
    norm.trim_end_matches(|c: char| !is_content(c)).len()
}

/// Whether the exclusion at `s..e` is a finished state asked about:
/// it ends in 了 and a question follows (`到账了吗`, `收到货了没`).
fn asks_about_finished(norm: &str, s: usize, e: usize) -> bool {
    norm[s..e].ends_with('了') && {
        let rest = norm[e..].trim_start();
        QUESTION_AFTER.iter().any(|q| rest.starts_with(q))
    }
}

/// Whether spans `a` and `b` (byte ranges) overlap or lie at most
/// [`EXCLUDE_REACH`] characters apart.
fn near(norm: &str, a: (u32, u32), b: (u32, u32)) -> bool {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    first.1 >= second.0
        || norm[first.1 as usize..second.0 as usize]
            .chars()
            .nth(EXCLUDE_REACH)
            .is_none()
}

/// The negator of a keyword hit starting at byte `s`, as (its byte start,
/// its index in [`NEGATORS`]), or `None` when the hit is not negated (see
/// the module documentation).
fn negation(norm: &str, s: usize, e: usize) -> Option<(usize, u8)> {
    let mut head = &norm[..s];
    // Most hits follow no negator or filler: answer those from the one
    // character before them (this runs for every keyword hit).
    if !matches!(
        head.chars().next_back(),
        Some(
            '要' | '用'
                | '想'
                | '有'
                | '不'
                | '没'
                | '别'
                | '无'
                | '么'
                | '太'
                | '很'
                | '大'
                | '是'
        )
    ) {
        return None;
    }
    // A degree word (不太满意, 不怎么好), then 是 before a degree word
    // (不是很满意; 不是很好 where the keyword is 很好). 是 alone is no
    // filler: 不是纯棉 is still about cotton.
    let mut degree = norm[s..].starts_with(['很', '太']);
    if let Some(f) = NEGATION_FILLERS.iter().find(|f| head.ends_with(*f)) {
        head = &head[..head.len() - f.len()];
        degree = true;
    }
    if degree && head.ends_with('是') {
        head = &head[..head.len() - '是'.len_utf8()];
    }
    let (n, neg) = NEGATORS
        .iter()
        .enumerate()
        .find(|(_, neg)| head.ends_with(*neg))?;
    let start = head.len() - neg.len();
    let before = &norm[..start];
    let prev = before.chars().next_back();
    // 退不退, 要不要, 有没有: the same character both sides is a question,
    // and so is 有没 (有没货, 有没备件), short for 有没有.
    let next = norm[start..].chars().nth(1);
    if prev.is_some() && prev == next || prev == Some('有') && neg.starts_with('没') {
        return None;
    }
    if neg.starts_with('别') && prev.is_some_and(|c| BIE_WORDS.contains(c)) {
        return None;
    }
    if PENDING.iter().any(|p| before.ends_with(p)) {
        return None;
    }
    // 不防水吗, 不加厚会不会薄: asking about the negated form is a
    // question about the keyword, so the keyword still counts.
    let clause = norm[e..]
        .split(|c: char| c != '?' && !is_content(c))
        .next()
        .unwrap_or("");
    if clause.contains(['吗', '么', '嘛', '?']) || has_a_not_a(clause) {
        return None;
    }
    Some((start, n as u8))
}

/// Whether `s` holds an A-不-A or A-没-A question (`会不会`, `有没有`).
fn has_a_not_a(s: &str) -> bool {
    let mut last = ['\0'; 3];
    s.chars().any(|c| {
        last = [last[1], last[2], c];
        (last[1] == '不' || last[1] == '没') && last[0] == last[2]
    })
}

struct Acc {
    intent: u32,
    /// Π(1 - w) over matched keywords and patterns.
    miss: f32,
    matched: Hits,
    spans: SmallVec<[(u32, u32); 4]>,
    vetoed: bool,
    /// See [`Ranked::pattern`].
    pattern: Option<(u32, u32)>,
}

impl Acc {
    /// The accumulator of `intent`, added on its first hit. A message hits
    /// a handful of intents, so a linear scan beats a map.
    fn of(acc: &mut Vec<Acc>, intent: u32) -> &mut Acc {
        match acc.iter().position(|a| a.intent == intent) {
            Some(i) => &mut acc[i],
            None => {
                acc.push(Acc {
                    intent,
                    miss: 1.0,
                    matched: Hits::new(),
                    spans: SmallVec::new(),
                    vetoed: false,
                    pattern: None,
                });
                acc.last_mut().expect("just pushed")
            }
        }
    }
}

/// Full-width punctuation that normalisation keeps (it has no half-width
/// form in the ASCII block).
const CJK_PUNCTUATION: [char; 21] = [
    '。', '，', '、', '！', '？', '～', '…', '：', '；', '“', '”', '‘', '’', '（', '）', '【',
    '】', '《', '》', '·', '￥',
];

/// Characters that carry meaning: not white space or punctuation.
fn is_content(c: char) -> bool {
    // Most characters of a buyer message are ideographs: answer those
    // without the look-ups (this runs for every character, twice).
    if ('\u{4E00}'..='\u{9FFF}').contains(&c) {
        return true;
    }
    !(c.is_whitespace() || c.is_ascii_punctuation() || CJK_PUNCTUATION.contains(&c))
}

/// Byte ranges of the bracketed tokens of `s`, in order: `[`, one to
/// [`TOKEN_MAX_CHARS`] characters with no bracket among them, `]`.
fn bracket_tokens(s: &str) -> Vec<(u32, u32)> {
    let mut tokens = Vec::new();
    let mut at = 0;
    while let Some(off) = s[at..].find('[') {
        let start = at + off;
        at = start + 1;
        for (n, (i, c)) in s[at..].char_indices().enumerate() {
            if c == ']' && n > 0 {
                at += i + 1;
                tokens.push((start as u32, at as u32));
                break;
            }
            if c == '[' || c == ']' || n == TOKEN_MAX_CHARS {
                break;
            }
        }
    }
    tokens
}

/// Content units of `s[from..to]` (byte offsets on character boundaries):
/// every content character counts one, except that a run of ASCII digits
/// counts once, at its first digit (also when the run starts before `from`,
/// it is then already counted), and a bracketed token of `tokens` counts
/// once, at its `[`.
fn content_units(s: &str, from: usize, to: usize, tokens: &[(u32, u32)]) -> usize {
    // Over bytes rather than chars: this counts every character of every
    // message, and most are ideographs (lead byte 0xE4-0xE9: U+4000-U+9FFF,
    // all content), which need no decoding to count.
    let bytes = s.as_bytes();
    // A multi-byte character has no ASCII byte, so the byte before `from`
    // is an ASCII digit exactly when the character before it is.
    let mut prev_digit = from > 0 && bytes[from - 1].is_ascii_digit();
    let mut next = tokens.iter().position(|&(_, e)| e as usize > from);
    let mut n = 0;
    let mut i = from;
    while i < to {
        if let Some(t) = next {
            let (ts, te) = (tokens[t].0 as usize, tokens[t].1 as usize);
            if i >= ts {
                if i == ts {
                    n += 1;
                }
                prev_digit = false;
                if te > to {
                    break;
                }
                i = te;
                next = (t + 1 < tokens.len()).then_some(t + 1);
                continue;
            }
        }
        let b = bytes[i];
        if b < 0x80 {
            let digit = b.is_ascii_digit();
            if !(digit && prev_digit) && is_content(b as char) {
                n += 1;
            }
            prev_digit = digit;
            i += 1;
            continue;
        }
        prev_digit = false;
        if (0xE4..=0xE9).contains(&b) {
            n += 1;
            i += 3;
            continue;
        }
        let c = s[i..]
            .chars()
            .next()
            .expect("`i` is on a character boundary");
        if is_content(c) {
            n += 1;
        }
        i += c.len_utf8();
    }
    n
}

/// Content units covered by the union of `spans` (byte ranges).
fn covered_units(s: &str, spans: &mut [(u32, u32)], tokens: &[(u32, u32)]) -> usize {
    spans.sort_unstable();
    let mut total = 0;
    let mut cur_end = 0u32;
    for &(start, end) in spans.iter() {
        let from = start.max(cur_end);
        if from < end {
            total += content_units(s, from as usize, end as usize, tokens);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phrases::{Fill, Intent, Keyword, Reply, Templates};
    use crate::politeness::PolitenessRules;

    /// (id, keywords, patterns, exclusions)
    type Spec<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

    fn matcher(specs: &[Spec]) -> Matcher {
        let intents = specs
            .iter()
            .map(|&(id, keywords, patterns, exclude)| Intent {
                id: id.to_string(),
                stage: Stage::InSale,
                keywords: keywords
                    .iter()
                    .map(|k| Keyword {
                        text: k.to_string(),
                        weight: None,
                    })
                    .collect(),
                patterns: patterns.iter().map(|p| p.to_string()).collect(),
                exclude: exclude.iter().map(|e| e.to_string()).collect(),
                replies: vec!["亲，好的呢".into(), "亲，收到".into()],
                priority: 1.0,
            })
            .collect();
        let lib = Library {
            intents,
            templates: Templates::default(),
            politeness: PolitenessRules::default(),
        };
        Matcher::new(&lib).expect("test library compiles")
    }

    /// `kefu check` reports this count as the library's keywords: a text
    /// two intents share counts once, an exclusion not at all (it counted
    /// as a keyword before: 2,377 "keywords" for 2,258).
    #[test]
    fn keyword_count_counts_keyword_texts_only() {
        let m = matcher(&[
            ("in_sale.a", &["发货", "快递"], &[], &["发货地"]),
            ("in_sale.b", &["快递", "物流"], &["顺丰"], &["退款"]),
        ]);
        assert_eq!(m.keyword_count(), 3);
    }

    /// A keyword's negated form is found wherever the texts stand: after an
    /// earlier intent's exclusions too (`61c1b74` cut the lookup at the
    /// keyword count, which missed the last texts; no shipped library
    /// line changed, this library did).
    #[test]
    fn negated_forms_are_found_after_exclusions() {
        let m = matcher(&[
            ("in_sale.c", &["退款"], &[], &["钱", "到账了", "已到账"]),
            ("in_sale.d", &["满意", "不满意"], &[], &[]),
        ]);
        let s = scores(&m, "不太满意");
        assert_eq!(
            s.first().map(|(id, _)| id.as_str()),
            Some("in_sale.d"),
            "{s:?}"
        );
    }

    /// What `--explain` reports of the steps a shop asks about: a negated
    /// keyword without a negated form, an exclusion ending the message, a
    /// keyword inside a longer one, a pattern, a score under the minimum.
    #[test]
    fn explain_names_why_a_keyword_did_not_count() {
        let m = matcher(&[
            (
                "in_sale.a",
                &["满意", "地址", "退款", "退款到账"],
                &[],
                &["不变"],
            ),
            ("in_sale.b", &["好"], &["改.{0,2}地址"], &[]),
        ]);
        let steps = |text: &str| m.explain(text).1;
        assert!(steps("不满意").contains(&Step::Negated {
            keyword: "满意".into(),
            negator: "不".into(),
            counted_as: None,
        }));
        let s = steps("地址不变");
        assert!(s.contains(&Step::Exclusion {
            exclusion: "不变".into(),
            intent: "in_sale.a".into(),
            at_end: true,
        }));
        assert!(s
            .iter()
            .any(|s| matches!(s, Step::Score { intent, verdict, .. }
            if intent == "in_sale.a" && verdict.starts_with("vetoed"))));
        assert!(steps("退款到账").contains(&Step::Swallowed {
            keyword: "退款".into(),
            intents: vec!["in_sale.a".into()],
            by: "退款到账".into(),
        }));
        let s = steps("帮我改下地址");
        assert!(s.contains(&Step::Pattern {
            matched: "改下地址".into(),
            intent: "in_sale.b".into(),
        }));
        // a one-character keyword in a long message: scored, not suggested
        let s = steps("好的那我明天再来问问看看情况怎么样吧");
        assert!(
            s.iter()
                .any(|s| matches!(s, Step::Score { intent, verdict, .. }
            if intent == "in_sale.b" && verdict.starts_with("under the minimum"))),
            "{s:#?}"
        );
        assert_eq!(steps(""), vec![Step::NoWords]);
        assert_eq!(steps("？？ !"), vec![Step::NoWords]);
        // a data token is content, but holds no words to match
        assert!(steps("？？ [订单x]").is_empty());
        assert!(steps("[退款]要退款").contains(&Step::InToken {
            text: "退款".into()
        }));
        // each step is reported once, however often its hit repeats
        let s = steps(&"好".repeat(500));
        assert_eq!(
            s.iter()
                .filter(|s| matches!(s, Step::Keyword { .. }))
                .count(),
            1
        );

        // an exclusion inside the message vetoes the hits next to it
        let m = matcher(&[
            ("in_sale.c", &["什么时候到", "退款"], &[], &["钱", "到账了"]),
            ("in_sale.d", &["满意", "不满意"], &[], &[]),
        ]);
        let steps = |text: &str| m.explain(text).1;
        let s = steps("钱什么时候到呀");
        assert!(s.contains(&Step::Exclusion {
            exclusion: "钱".into(),
            intent: "in_sale.c".into(),
            at_end: false,
        }));
        assert!(s.contains(&Step::Vetoed {
            hit: "什么时候到".into(),
            intent: "in_sale.c".into(),
        }));
        // a finished state asked about does not veto
        assert!(steps("退款到账了吗").contains(&Step::ExclusionAsked {
            exclusion: "到账了".into(),
            intent: "in_sale.c".into(),
        }));
        // a degree word between: counted as the negated form
        assert!(steps("不太满意").contains(&Step::Negated {
            keyword: "满意".into(),
            negator: "不太".into(),
            counted_as: Some("不满意".into()),
        }));
    }

    fn scores(m: &Matcher, text: &str) -> Vec<(String, f32)> {
        m.rank(text)
            .iter()
            .map(|r| (m.intent_id(r.intent).to_string(), r.score))
            .collect()
    }

    #[test]
    fn a_number_counts_as_one_character() {
        let m = matcher(&[("in_sale.shipping_time", &["发货"], &[], &[])]);
        // 发货 covers 2 of 3 units whatever the length of the order number.
        let long = scores(&m, "3392817465021 发货");
        let short = scores(&m, "3 发货");
        assert_eq!(long, short);
        // Letters still count one each: a word is not data.
        let word = scores(&m, "abcdefghijk 发货");
        assert!(word.is_empty() || word[0].1 < long[0].1, "{word:?}");
    }

    #[test]
    fn a_pattern_covers_what_it_matched() {
        let m = matcher(&[("pre_sale.size_advice", &[], &[r"\d{3}\s*\d{2,3}\s*kg"], &[])]);
        let whole = scores(&m, "175 70kg");
        assert_eq!(
            whole,
            [("pre_sale.size_advice".to_string(), PATTERN_WEIGHT)]
        );
        let part = scores(&m, "175 70kg 想问一下这款衣服");
        assert!(part[0].1 < whole[0].1, "{part:?}");
    }

    #[test]
    fn a_longer_keyword_swallows_a_shorter_one_inside_it() {
        let m = matcher(&[
            ("in_sale.shipping_time", &["发货"], &[], &[]),
            ("in_sale.courier", &["发货地"], &[], &[]),
        ]);
        let got = scores(&m, "发货地是哪里");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "in_sale.courier");
    }

    #[test]
    fn exclusions_veto_the_hits_they_touch_and_hide_no_keyword() {
        let m = matcher(&[
            (
                "after_sale.return_exchange",
                &["退货", "七天无理由退货"],
                &[],
                &[],
            ),
            ("after_sale.warranty_repair", &["售后"], &[], &["售后退货"]),
            ("pre_sale.greeting", &["亲"], &[], &["退货"]),
            ("after_sale.quality_issue", &["坏了"], &[r"是坏的"], &["券"]),
        ]);
        let ids = |text: &str| -> Vec<String> {
            scores(&m, text).into_iter().map(|(id, _)| id).collect()
        };
        // The exclusion 售后退货 vetoes the repair intent but does not
        // swallow the keyword 退货 of the return intent.
        assert_eq!(ids("售后退货"), ["after_sale.return_exchange"]);
        // 退货 lies inside the longer keyword 七天无理由退货 and ends the
        // message: it vetoes the greeting everywhere.
        let got = ids("亲 七天无理由退货");
        assert!(!got.iter().any(|id| id == "pre_sale.greeting"), "{got:?}");
        // Touching (within EXCLUDE_REACH characters) vetoes keywords and
        // patterns alike; further away it does not.
        assert!(ids("券坏了呀").is_empty());
        assert!(ids("券呢是坏的呀").is_empty());
        assert_eq!(
            ids("用了一张券买的，收到坏了"),
            ["after_sale.quality_issue"]
        );
    }

    #[test]
    fn a_finished_state_asked_about_does_not_veto() {
        let m = matcher(&[("after_sale.refund", &["到账"], &[], &["到账了"])]);
        assert!(scores(&m, "钱到账了").is_empty());
        assert!(scores(&m, "钱到账了，谢谢").is_empty());
        for asked in ["钱到账了吗", "到账了没", "到账了是吗?"] {
            assert_eq!(scores(&m, asked).len(), 1, "{asked}");
        }
    }

    #[test]
    fn a_negated_keyword_counts_only_as_its_negated_form() {
        let m = matcher(&[
            ("pre_sale.closing", &["满意", "很好"], &[], &[]),
            ("after_sale.complaint", &["不满意"], &[], &[]),
            ("after_sale.return_exchange", &["退货"], &[], &[]),
            ("in_sale.shipping_time", &["发货"], &[], &[]),
            ("pre_sale.product_info", &["纯棉"], &[], &[]),
        ]);
        let top = |text: &str| scores(&m, text).first().map(|(id, _)| id.clone());
        let cases: &[(&str, Option<&str>)] = &[
            ("满意", Some("pre_sale.closing")),
            ("不是很满意", Some("after_sale.complaint")),
            ("不太满意", Some("after_sale.complaint")),
            ("不怎么满意", Some("after_sale.complaint")),
            ("不是很好", None),
            ("不要退货", None),
            ("不用退货", None),
            ("别退货", None),
            // questions and pending things keep the keyword
            ("退不退货", Some("after_sale.return_exchange")),
            ("不退货吗", Some("after_sale.return_exchange")),
            ("还不发货", Some("in_sale.shipping_time")),
            ("怎么没发货", Some("in_sale.shipping_time")),
            // 是 alone is no filler; 别 inside a word is no negator
            ("不是纯棉", Some("pre_sale.product_info")),
            ("特别满意", Some("pre_sale.closing")),
        ];
        for &(text, want) in cases {
            assert_eq!(top(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn matched_shows_the_text_a_pattern_matched() {
        let m = matcher(&[("pre_sale.size_advice", &["尺码"], &[r"\d{2}码"], &[])]);
        let got = m.suggest("尺码，42码可以吗", 3, &Fill::default());
        let matched: Vec<&str> = got[0].matched.iter().map(|t| &**t).collect();
        assert_eq!(matched, ["尺码", "42码"]);
    }

    #[test]
    fn a_bracketed_token_is_one_unit_of_data() {
        let m = matcher(&[
            ("in_sale.shipping_time", &["发货"], &[], &[]),
            ("in_sale.address_change", &["地址"], &[], &[]),
        ]);
        // A picture or a masked value counts like a number: one unit.
        assert_eq!(scores(&m, "[图片] 发货"), scores(&m, "3 发货"));
        assert_eq!(scores(&m, "[微笑][图片] 发货"), scores(&m, "3 4 发货"));
        // No keyword inside a token counts: [地址x] is an address.
        assert!(m.rank("[地址x]").is_empty());
        let ids =
            |t: &str| -> Vec<String> { scores(&m, t).into_iter().map(|(id, _)| id).collect() };
        assert_eq!(ids("[地址x] 发货"), ["in_sale.shipping_time"]);
        // Unclosed, empty, too long or holding another bracket: ordinary text.
        for text in [
            "[地址 发货",
            "地址] 发货",
            "[] 地址 发货",
            "[这是一段超过十二个字的很长的地址说明文字] 发货",
            "[地址:[图片]] 发货",
        ] {
            assert!(
                ids(text).contains(&"in_sale.address_change".to_string()),
                "{text}: {:?}",
                ids(text)
            );
        }
    }

    #[test]
    fn nothing_under_the_minimum_score() {
        let m = matcher(&[("pre_sale.greeting", &["亲"], &[], &[])]);
        // A one-character keyword (weight 0.3) in a long message stays silent.
        assert!(m.rank("亲我想问一下这个东西到底怎么样啊").is_empty());
        assert!(m.rank("").is_empty());
        assert!(m.rank("。。。").is_empty());
    }

    /// (pattern, text, does the pattern run on it?)
    const GATE_CASES: &[(&str, &str, bool)] = &[
        // Prefix and suffix literals both present: runs.
        ("(改|换|修改).{0,4}(地址|电话)", "我想改一下地址", true),
        // Prefix alone, or suffix alone: a match is impossible, skipped.
        ("(改|换|修改).{0,4}(地址|电话)", "我想改一下", false),
        ("(改|换|修改).{0,4}(地址|电话)", "地址是哪里", false),
        // Both, but further apart than any match can stretch: skipped.
        (
            "(改|换|修改).{0,4}(地址|电话)",
            "我想改一下我上个月填写的那个地址",
            false,
        ),
        // Close enough, in either order (the gate does not check order).
        ("(改|换|修改).{0,4}(地址|电话)", "地址改", true),
        // Unbounded patterns are not windowed.
        ("(改|换).*地址", "我想改一下我上个月填写的那个地址", true),
        // Only the suffix side is finite (`\d+` has too many prefixes).
        (r"\d+\s*(元|块)", "便宜10块", true),
        (r"\d+\s*(元|块)", "便宜点", false),
        // Neither side is finite: runs on everything.
        (r"\w{2,}", "。。。", true),
        // Small classes are spelled out, so they gate too.
        (r"^[嗯哦 ,.!~]*(好|行)[嗯哦 ,.!~]*$", "随便什么话", false),
        (r"^[嗯哦 ,.!~]*(好|行)[嗯哦 ,.!~]*$", "嗯嗯好", true),
        // Anchors do not hide the literals next to them.
        ("^(在|亲)[呀啊 ]*$", "在啊在", true),
        ("^(在|亲)[呀啊 ]*$", "你好", false),
        // Anchored: the message must begin (end) the way a match does.
        ("^(在|亲)[呀啊 ]*$", "在吗在吗", false),
        ("^(在|亲)[呀啊 ]*$", "我在等亲", false),
        ("^(在|亲)[呀啊 ]*$", "亲在吗", false),
        ("^(在|亲)[呀啊 ]*$", "亲亲啊", true),
        ("^[嗯哦 ,.!~]*(好|行)[嗯哦 ,.!~]*$", "我觉得还行", false),
        ("^[嗯哦 ,.!~]*(好|行)[嗯哦 ,.!~]*$", "嗯好的行", true),
        ("(好|行)[嗯哦 ]*$", "我觉得还行", true),
        ("(好|行)[嗯哦 ]*$", "行不行呢", false),
    ];

    /// A matcher of one intent (keyword 退货) with `replies`.
    fn with_replies(replies: Vec<Reply>) -> Matcher {
        let lib = Library {
            intents: vec![Intent {
                id: "after_sale.return".into(),
                stage: Stage::AfterSale,
                keywords: vec![Keyword {
                    text: "退货".into(),
                    weight: Some(0.9),
                }],
                patterns: Vec::new(),
                exclude: Vec::new(),
                replies,
                priority: 1.0,
            }],
            templates: Templates::default(),
            politeness: PolitenessRules::default(),
        };
        Matcher::new(&lib).expect("test library compiles")
    }

    fn cued(text: &str, when: &[&str]) -> Reply {
        Reply {
            text: text.into(),
            when: when.iter().map(|w| w.to_string()).collect(),
        }
    }

    fn reply_to(m: &Matcher, text: &str) -> String {
        let s = m.suggest(text, 1, &Fill::default());
        s.first().map(|s| s.reply.to_string()).unwrap_or_default()
    }

    /// The reply whose cues cover most of the message wins (most cue
    /// characters, then most cues, then the first written); a message that
    /// names no cue gets a general reply, the same one every time.
    #[test]
    fn the_reply_is_chosen_by_the_cues_in_the_message() {
        let m = with_replies(vec![
            "general A".into(),
            cued("address", &["地址", "寄到哪"]),
            cued("fee", &["运费"]),
            cued("insurance", &["运费险"]),
            cued("height", &["身高#", "#kg"]),
            "general B".into(),
            cued("fee again", &["邮费"]),
            cued("postage", &["邮费"]),
        ]);
        let cases = [
            ("退货地址是哪里", "address"),
            // 寄到哪 (3) + 地址 (2) beat 运费 (2).
            ("退货运费 地址寄到哪", "address"),
            ("退货运费谁出", "fee"),
            // The longer cue says more.
            ("退货有运费险吗", "insurance"),
            ("運費險退货", "insurance"),
            // `#` is any digit; full-width digits are normalised first.
            ("身高170退货", "height"),
            ("退货 65KG", "height"),
            ("退货 ６５ｋｇ", "height"),
            ("退货 kg", "general"),
            ("身高多少退货", "general"),
            // A tie goes to the first written.
            ("退货邮费", "fee again"),
            // Inside a bracketed token a cue is data, not words.
            ("退货 [地址x]", "general"),
            ("[地址x] 退货地址", "address"),
            // A negated cue names what the buyer does not want, as a
            // negated keyword does (the negator list and its exceptions
            // are the keywords').
            ("退货不要运费险", "general"),
            ("退货，不用寄到哪", "general"),
            ("退货不要运费险，地址发我", "address"),
            // Still asked: a question about the negated form, a thing
            // that has not happened yet, a state reported (没有运费险: the
            // reply about the insurance is the one that answers).
            ("退货没有运费险吗", "insurance"),
            ("退货为什么没地址", "address"),
            ("退货没有运费险", "insurance"),
            ("退货别寄到哪", "general"),
        ];
        for (text, want) in cases {
            let got = reply_to(&m, text);
            assert!(got.starts_with(want), "{text}: want {want}, got {got}");
        }
        // General: deterministic, and both general variants are used.
        let mut seen = HashSet::new();
        for n in 0..40 {
            let text = format!("我要退货{n}次");
            let got = reply_to(&m, &text);
            assert!(got.starts_with("general"), "{text}: {got}");
            assert_eq!(got, reply_to(&m, &text), "{text}: not deterministic");
            seen.insert(got);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    /// A library built in code with cued replies only still answers (the
    /// loader refuses it, but a `Matcher` must not panic on it).
    #[test]
    fn without_a_general_reply_any_reply_is_used() {
        let m = with_replies(vec![cued("fee", &["运费"]), cued("address", &["地址"])]);
        assert_eq!(reply_to(&m, "退货运费"), "fee");
        assert!(!reply_to(&m, "我要退货").is_empty());
    }

    /// The character-by-character count `content_units` replaced: the
    /// reference it must agree with.
    fn content_units_by_char(s: &str, from: usize, to: usize, tokens: &[(u32, u32)]) -> usize {
        let mut prev_digit = s[..from]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_digit());
        let mut next = tokens.iter().position(|&(_, e)| e as usize > from);
        let mut n = 0;
        for (i, c) in s[from..to].char_indices() {
            let i = from + i;
            if let Some(t) = next {
                let (ts, te) = (tokens[t].0 as usize, tokens[t].1 as usize);
                if i >= ts {
                    if i == ts {
                        n += 1;
                    }
                    if i + c.len_utf8() >= te {
                        next = (t + 1 < tokens.len()).then_some(t + 1);
                    }
                    prev_digit = false;
                    continue;
                }
            }
            let digit = c.is_ascii_digit();
            if is_content(c) && !(digit && prev_digit) {
                n += 1;
            }
            prev_digit = digit;
        }
        n
    }

    #[test]
    fn content_units_agree_with_the_char_by_char_count() {
        let mut texts: Vec<String> = [
            "",
            "亲，在吗？",
            "订单号123456789，[图片] 还没到 12 3",
            "[表情][表情]好的",
            "尺码xl 175cm 70kg",
            "a[b]c [很长很长很长很长很长很长的括号] ]x[",
            "龍眼 㐀 𠀀 ! ~ … ￥99.5",
            "123[abc]456",
            "\u{b}\t\r\n 一 二",
        ]
        .map(String::from)
        .to_vec();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in ["jddc_buyer_messages.txt", "ecd_buyer_messages.txt"] {
            if let Ok(t) = std::fs::read_to_string(dir.join("../shared/corpus").join(name)) {
                texts.extend(t.lines().take(3000).map(String::from));
            }
        }
        for text in &texts {
            let norm = normalize(text);
            let tokens = bracket_tokens(&norm);
            let bounds: Vec<usize> = norm
                .char_indices()
                .map(|(i, _)| i)
                .chain([norm.len()])
                .collect();
            // Every span that starts and ends on characters 0, 1, 2, 5, ...
            // apart, as `covered_units` asks, and the whole text.
            for (a, &from) in bounds.iter().enumerate() {
                for d in [0, 1, 2, 5, 13, bounds.len()] {
                    let to = bounds[(a + d).min(bounds.len() - 1)];
                    assert_eq!(
                        content_units(&norm, from, to, &tokens),
                        content_units_by_char(&norm, from, to, &tokens),
                        "{norm:?} [{from}, {to})"
                    );
                }
            }
        }
    }

    impl Matcher {
        /// The patterns the gates open for `norm`.
        fn opened(&self, norm: &str) -> Vec<u32> {
            self.gates.open(norm, &self.scan(norm, &[]).1).to_vec()
        }
    }

    #[test]
    fn gates_open_a_pattern_only_when_its_literals_are_there() {
        for &(pattern, text, runs) in GATE_CASES {
            let m = matcher(&[("in_sale.test", &[], &[pattern], &[])]);
            let opened = m.opened(&normalize(text));
            assert_eq!(opened == [0], runs, "{pattern} on {text}: {opened:?}");
        }
    }

    /// The automaton reports every occurrence of every text, overlapping
    /// and nested ones and repeats of one text included, the way the
    /// scoring expects: checked against a naive search, over the shipped
    /// keywords and the corpus when `../shared` is there.
    #[test]
    fn the_automaton_finds_every_occurrence() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = Library::load_dir(&dir.join("phrases")).expect("shipped libraries load");
        let mut texts: Vec<String> = lib
            .intents
            .iter()
            .flat_map(|i| i.keywords.iter().map(|k| normalize(&k.text)))
            .collect();
        texts.sort();
        texts.dedup();
        let ac = Automaton::new(&texts).unwrap();
        let index: HashMap<&str, u32> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let longest = texts.iter().map(|t| t.chars().count()).max().unwrap();
        let mut messages = vec![
            "哈哈哈哈".to_string(),
            "退货退款退货退款".to_string(),
            "七天无理由退货吗".to_string(),
            String::new(),
        ];
        if let Ok(t) = std::fs::read_to_string(dir.join("../shared/corpus/jddc_buyer_messages.txt"))
        {
            messages.extend(t.lines().map(normalize));
        }
        for msg in &messages {
            let bounds: Vec<usize> = msg
                .char_indices()
                .map(|(i, _)| i)
                .chain([msg.len()])
                .collect();
            let mut want = Vec::new();
            for (a, &s) in bounds.iter().enumerate() {
                for &e in bounds.iter().skip(a + 1).take(longest) {
                    if let Some(&p) = index.get(&msg[s..e]) {
                        want.push((s as u32, e as u32, p));
                    }
                }
            }
            let mut got: Vec<_> = ac.hits(msg).collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "{msg}");
        }
        assert_eq!(Automaton::new(&[]).unwrap().hits("退货").count(), 0);
    }

    /// The gates may skip a pattern only when it cannot match: every
    /// pattern of the shipped libraries that matches a message must have
    /// been opened for it. Messages: the corpus when `../shared` is there,
    /// and texts built from the patterns' own literals either way.
    #[test]
    fn gates_never_skip_a_pattern_that_matches() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = Library::load_dir(&dir.join("phrases")).expect("shipped libraries load");
        let m = Matcher::new(&lib).expect("shipped libraries compile");
        let mut texts: Vec<String> = Vec::new();
        for name in ["jddc_buyer_messages.txt", "ecd_buyer_messages.txt"] {
            if let Ok(t) = std::fs::read_to_string(dir.join("../shared/corpus").join(name)) {
                texts.extend(t.lines().map(String::from));
            }
        }
        // Without the corpus: every pair of a keyword and a reply stands in
        // for real messages, plus messages made to match the patterns.
        for i in &lib.intents {
            for k in i.keywords.iter().take(5) {
                texts.push(format!("亲，{}吗？我的地址写错了，差了10块", k.text));
            }
        }
        texts.extend(
            [
                "比我上次买的便宜了好多",
                "能改一下收货地址吗",
                "几天能到",
                "发顺丰可以吗",
                "175 70kg穿什么码",
                "嗯嗯好的",
                "不用了谢谢",
            ]
            .map(String::from),
        );
        let mut matched = 0;
        for text in &texts {
            let norm = normalize(text);
            let opened = m.opened(&norm);
            for (i, re) in m.regex_list.iter().enumerate() {
                if re.is_match(&norm) {
                    matched += 1;
                    assert!(
                        opened.contains(&(i as u32)),
                        "pattern {} matches {text:?} but was not opened",
                        re.as_str()
                    );
                }
            }
        }
        assert!(
            matched > 10,
            "the sample must exercise the patterns: {matched}"
        );
    }
}
