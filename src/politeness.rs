//! Politeness checker for agent drafts.
//!
//! Shops lose ratings on two habits: negative phrasing (我不能, 不行, 这不是我的
//! 问题) and curt one-word answers (好的, 有货). The rules live in
//! `phrases/politeness.yaml` so a shop can add its own; every rule carries a
//! friendlier rewrite the agent can take with one click.
//!
//! How a draft is read (documented for shops in `phrases/README.md`):
//!
//! - **Phrases with slots.** A phrase may name a slot, `{我}不能`, which
//!   stands for every entry of that slot in `slots:` (我, 我们, 我这边, …), or
//!   list alternatives inline, `{刚才|上面}说过了`. Allow entries and the
//!   `reassure` lists are expanded the same way.
//! - **Negative matches** are found wherever they occur, then dropped when
//!   the text around them gives them another reading:
//!   1. an *allow* entry covers the whole match and is longer (the more
//!      specific reading: `不知道您` over `不知道`, `不退色` over `不退`). A
//!      negative that starts before the allow entry or runs on past it
//!      (`不知道您在说什么`) is not covered and is flagged;
//!   2. its first 不/没 is the middle of an A-不-A question (行不行, 可不可以,
//!      支不支持, 可以不可以): a question, not a refusal. 爱A不A (爱买不买,
//!      爱要不要) is not a question but "take it or leave it";
//!   3. it lies in a *reassurance*: a negator (不会, 不用, …) followed by one
//!      or more bad outcomes (没货, 担心, 让您久等) or negative phrases, as in
//!      不会没货, 不用担心没货, 我不会让您久等, 不会不管您: the match ends
//!      inside that span;
//!   4. its rule is `excusable` (a refusal: 不能退, 不支持) and the draft
//!      apologises, gives a reason or offers another way somewhere outside
//!      the negatives (an `excuses` phrase: 抱歉, 请您谅解, 因为, 您可以):
//!      a refusal with an apology, a reason or an alternative is the polite
//!      form the rewrites ask for.
//!
//!   What is left is reported leftmost-longest, without overlaps.
//! - **Curt**: the draft's content, once fillers are stripped (punctuation of
//!   any width, emoji and other symbols, control and format characters,
//!   white space, and the particles 的/哦/呢/呀/啊/啦/哈/哒/滴/吧), is nothing
//!   but curt phrases, alone or several (好的好的, 嗯嗯嗯, 好的😊, 「收到了」,
//!   好哒, 行吧). A draft of particles only (哦, 哦哦~) is curt when a curt
//!   rule names that particle.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::{Deserialize, Serialize};

use crate::normalize::normalize;

/// One rule: a phrase to flag and what to say instead.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub phrase: String,
    pub rewrite: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// A refusal that is fine once the draft apologises, gives a reason or
    /// offers another way (an `excuses` phrase outside the refusal):
    /// 非常抱歉，定制商品不能退 is what the rewrite asks for, a bare 不能退 is
    /// not. Rudeness (不可能, 爱买不买, blaming the buyer) stays rude however
    /// it is wrapped.
    #[serde(default)]
    pub excusable: bool,
}

/// Reassurance: a negator before a bad outcome is a promise, not a refusal
/// (不会没货, 不用担心, 不会让您久等).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reassure {
    #[serde(default)]
    pub negators: Vec<String>,
    #[serde(default)]
    pub outcomes: Vec<String>,
}

/// The rules of `politeness.yaml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolitenessRules {
    /// Named word lists a phrase can use as `{name}`: `{我}不能` is 我不能,
    /// 我们不能, 我这边不能, ….
    #[serde(default)]
    pub slots: BTreeMap<String, Vec<String>>,
    /// Flagged wherever they appear in a draft, unless the text around gives
    /// them another reading (see the module documentation).
    #[serde(default)]
    pub negative: Vec<Rule>,
    /// Flagged when the draft is nothing but these (after punctuation, emoji
    /// and filler such as 的/哦/呢 are stripped), alone or several.
    #[serde(default)]
    pub curt: Vec<Rule>,
    /// More specific readings that make a negative phrase fine, e.g. 不行的话
    /// ("if it doesn't work"), 没问题, 不退色: an entry hides a negative match
    /// only when it covers all of it and is longer.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub reassure: Reassure,
    /// Apologies, reasons and offers of another way (抱歉, 请您谅解, 因为,
    /// 您可以, 我帮您) that make an `excusable` refusal in the same draft
    /// polite.
    #[serde(default)]
    pub excuses: Vec<String>,
}

impl PolitenessRules {
    /// `phrase` cut at its braces: the text before each brace with the
    /// alternatives the brace stands for (a slot's entries, `|`-separated
    /// alternatives and slots, or the brace as written when it is neither),
    /// then the text after the last. What [`PolitenessRules::expand`]
    /// multiplies out and [`PolitenessRules::expansion_count`] counts.
    fn pieces<'a>(&'a self, phrase: &'a str) -> (Vec<(&'a str, Vec<&'a str>)>, &'a str) {
        let mut pieces = Vec::new();
        let mut rest = phrase;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                break;
            };
            let body = &rest[open + 1..close];
            let alts: Vec<&str> = if let Some(list) = self.slots.get(body) {
                list.iter().map(String::as_str).collect()
            } else if body.contains('|') {
                body.split('|')
                    .flat_map(|a| match self.slots.get(a) {
                        Some(list) => list.iter().map(String::as_str).collect(),
                        None => vec![a],
                    })
                    .collect()
            } else {
                vec![&rest[open..=close]]
            };
            pieces.push((&rest[..open], alts));
            rest = &rest[close + 1..];
        }
        (pieces, rest)
    }

    /// Every concrete string `phrase` stands for, normalised: slots and
    /// inline alternatives expanded. Braces that name no slot and hold no
    /// `|` are kept as written.
    pub fn expand(&self, phrase: &str) -> Vec<String> {
        let (pieces, tail) = self.pieces(phrase);
        let mut out = vec![String::new()];
        for (head, alts) in pieces {
            out = out
                .iter()
                .flat_map(|s| alts.iter().map(move |a| format!("{s}{head}{a}")))
                .collect();
        }
        let mut out: Vec<String> = out
            .iter()
            .map(|s| normalize(&format!("{s}{tail}")))
            .collect();
        out.sort();
        out.dedup();
        out.retain(|s| !s.is_empty());
        out
    }

    /// How many strings [`PolitenessRules::expand`] makes of `phrase` (the
    /// alternatives of its braces multiplied, saturating), without making
    /// them: a phrase of eleven nine-word slots stands for 9^11.
    pub fn expansion_count(&self, phrase: &str) -> u64 {
        self.pieces(phrase).0.iter().fold(1u64, |n, (_, alts)| {
            n.saturating_mul(alts.len().max(1) as u64)
        })
    }

    /// Every phrase the rules write: rules' phrases, allow entries,
    /// reassure lists and excuses.
    pub fn phrases(&self) -> impl Iterator<Item = &str> {
        self.negative
            .iter()
            .chain(&self.curt)
            .map(|r| r.phrase.as_str())
            .chain(self.allow.iter().map(String::as_str))
            .chain(self.reassure.negators.iter().map(String::as_str))
            .chain(self.reassure.outcomes.iter().map(String::as_str))
            .chain(self.excuses.iter().map(String::as_str))
    }

    /// `{name}` references in phrases, allow entries and reassure lists that
    /// name no slot (a typo would otherwise be matched literally).
    pub fn unknown_slots(&self) -> Vec<String> {
        let mut unknown = Vec::new();
        for p in self.phrases() {
            for e in self.expand(p) {
                if e.contains('{') || e.contains('}') {
                    unknown.push(format!("{p}: {e}"));
                }
            }
        }
        unknown
    }
}

/// Kind of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    Negative,
    Curt,
}

/// One finding in a draft.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    pub kind: IssueKind,
    /// The flagged phrase: for a negative the rule's phrase with its slots
    /// filled as found (`我们不能` for `{我}不能`), for a curt draft the rule's
    /// phrase.
    pub phrase: String,
    /// Character offsets in the normalised draft, end exclusive.
    pub start: usize,
    pub end: usize,
    pub rewrite: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The verdict on a draft.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lint {
    pub ok: bool,
    pub issues: Vec<Issue>,
}

/// What a pattern of the automaton stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pat {
    /// Negative rule `n`.
    Negative(usize),
    Allow,
    Negator,
    Outcome,
    Excuse,
}

/// The compiled checker; build once per rule set and share.
#[derive(Debug, Clone)]
pub struct Checker {
    rules: PolitenessRules,
    /// Every expanded negative, allow, negator and outcome phrase.
    ac: AhoCorasick,
    /// What each pattern of `ac` is, and its text.
    pats: Vec<(Pat, String)>,
    /// Curt phrases with fillers stripped, with their rule, longest first.
    curt: Vec<(Vec<char>, usize)>,
    /// Curt phrases made only of particles (哦), kept as written, for drafts
    /// that hold nothing else.
    curt_particles: Vec<(Vec<char>, usize)>,
}

/// A match in character offsets.
#[derive(Debug, Clone, Copy)]
struct Span {
    pat: usize,
    start: usize,
    end: usize,
}

impl Span {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Characters that do not change whether a reply is curt: white space,
/// punctuation of any width, symbols (emoji, pictographs, dingbats, their
/// skin tones), control and format characters (ZWJ, BOM), combining marks
/// (emoji variation selectors, keycaps) and the particles 的/哦/呢/….
pub fn is_filler(c: char) -> bool {
    is_particle(c) || is_mark(c)
}

/// The sentence-final particles a curt reply hides behind: 好的呢, 好哒 and
/// 好滴 (cute spellings of 好的), 行吧. On its own a particle is not content,
/// but a draft made of nothing else (哦, 哦哦) is itself curt when a curt rule
/// names it.
fn is_particle(c: char) -> bool {
    "的哦呢呀啊啦哈喔噢哟嘛哒滴吧".contains(c)
}

/// Punctuation, symbols, control, format and combining characters, white
/// space: never words.
fn is_mark(c: char) -> bool {
    static CLASS: OnceLock<Vec<(char, char)>> = OnceLock::new();
    let ranges = CLASS.get_or_init(|| {
        use regex_syntax::hir::{Class, HirKind};
        let hir =
            regex_syntax::parse(r"[\p{P}\p{S}\p{C}\p{M}\p{Z}\s]").expect("a fixed Unicode class");
        match hir.kind() {
            HirKind::Class(Class::Unicode(class)) => class
                .ranges()
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect(),
            other => unreachable!("not a Unicode class: {other:?}"),
        }
    });
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn core(text: &str) -> Vec<char> {
    text.chars().filter(|c| !is_filler(*c)).collect()
}

/// The particles of a text that has no other content (哦哦~ is 哦哦).
fn particles(text: &str) -> Vec<char> {
    text.chars().filter(|c| !is_mark(*c)).collect()
}

/// Whether the `不`/`没` at `p` is the middle of an A-不-A question: 行不行,
/// 支不支持, 可以不可以, 有没有; not a repeated refusal (不行不行, where the
/// first A has its own 不), nor the dismissive 爱A不A idiom (爱买不买, 爱要不要:
/// "take it or leave it"), which asks nothing.
fn a_not_a(chars: &[char], p: usize) -> bool {
    (1..=2).any(|n| {
        p >= n
            && p + 1 + n <= chars.len()
            && chars[p - n..p] == chars[p + 1..p + 1 + n]
            && (p == n || !matches!(chars[p - n - 1], c if c == chars[p] || c == '爱'))
    })
}

impl Checker {
    pub fn new(rules: &PolitenessRules) -> Checker {
        let mut pats: Vec<(Pat, String)> = Vec::new();
        for (i, r) in rules.negative.iter().enumerate() {
            pats.extend(
                rules
                    .expand(&r.phrase)
                    .into_iter()
                    .map(|p| (Pat::Negative(i), p)),
            );
        }
        for (kind, list) in [
            (Pat::Allow, &rules.allow),
            (Pat::Negator, &rules.reassure.negators),
            (Pat::Outcome, &rules.reassure.outcomes),
            (Pat::Excuse, &rules.excuses),
        ] {
            for a in list {
                pats.extend(rules.expand(a).into_iter().map(|p| (kind, p)));
            }
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(pats.iter().map(|(_, p)| p))
            .expect("politeness phrases are plain strings and always compile");
        let mut curt = Vec::new();
        let mut curt_particles = Vec::new();
        for (i, r) in rules.curt.iter().enumerate() {
            let phrase = normalize(&r.phrase);
            let c = core(&phrase);
            if !c.is_empty() {
                curt.push((c, i));
            } else {
                let p = particles(&phrase);
                if !p.is_empty() {
                    curt_particles.push((p, i));
                }
            }
        }
        // Longest first, then in the file's order (好的 before 好).
        for list in [&mut curt, &mut curt_particles] {
            list.sort_by(|a: &(Vec<char>, usize), b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        Checker {
            rules: rules.clone(),
            ac,
            pats,
            curt,
            curt_particles,
        }
    }

    /// The curt rule a draft's content consists of, if it is nothing but
    /// curt phrases: the rule of the first one (longest first). A draft
    /// with no content but particles (哦, 哦哦~) is read by its particles.
    fn curt_rule(&self, text: &str) -> Option<usize> {
        let (c, list) = match core(text) {
            c if c.is_empty() => (particles(text), &self.curt_particles),
            c => (c, &self.curt),
        };
        if c.is_empty() {
            return None;
        }
        // ends[i]: whether c[i..] splits into curt phrases.
        let mut ends = vec![false; c.len() + 1];
        ends[c.len()] = true;
        let fits = |i: usize, p: &[char]| c[i..].starts_with(p);
        for i in (0..c.len()).rev() {
            ends[i] = list.iter().any(|(p, _)| fits(i, p) && ends[i + p.len()]);
        }
        if !ends[0] {
            return None;
        }
        list.iter()
            .find(|(p, _)| fits(0, p) && ends[p.len()])
            .map(|(_, r)| *r)
    }

    /// Checks an agent's draft.
    pub fn check(&self, draft: &str) -> Lint {
        let text = normalize(draft);
        let mut issues = self.negatives(&text);
        // A negative draft is reported for that: 不行不行 is not the curt
        // 不 + 行 + 不 + 行.
        if issues.is_empty() {
            if let Some(i) = self.curt_rule(&text) {
                let r = &self.rules.curt[i];
                issues.push(Issue {
                    kind: IssueKind::Curt,
                    phrase: r.phrase.clone(),
                    start: 0,
                    end: text.chars().count(),
                    rewrite: r.rewrite.clone(),
                    reason: r.reason.clone(),
                });
            }
        }
        Lint {
            ok: issues.is_empty(),
            issues,
        }
    }

    /// The negative findings in a normalised draft, in order.
    fn negatives(&self, text: &str) -> Vec<Issue> {
        let mut issues = Vec::new();
        // Character offset of each byte offset that starts a character.
        let mut char_at = vec![0usize; text.len() + 1];
        let mut n = 0;
        for (b, ch) in text.char_indices() {
            char_at[b] = n;
            n += 1;
            char_at[b + ch.len_utf8()] = n;
        }
        let chars: Vec<char> = text.chars().collect();
        let spans: Vec<Span> = self
            .ac
            .find_overlapping_iter(text)
            .map(|m| Span {
                pat: m.pattern().as_usize(),
                start: char_at[m.start()],
                end: char_at[m.end()],
            })
            .collect();
        let of = |kind: Pat| {
            spans
                .iter()
                .filter(move |s| self.pats[s.pat].0 == kind)
                .copied()
        };
        // Reassurances: a negator followed by a chain of outcomes; a
        // negative phrase is an outcome too (不会不管您, 不会不退: a double
        // negation is a promise).
        let outcome = |s: &Span| matches!(self.pats[s.pat].0, Pat::Outcome | Pat::Negative(_));
        let mut reassured: Vec<(usize, usize)> = Vec::new();
        for neg in of(Pat::Negator) {
            let mut end = neg.end;
            while let Some(next) = spans
                .iter()
                .filter(|o| o.start == end && outcome(o))
                .map(|o| o.end)
                .max()
            {
                end = next;
            }
            if end > neg.end {
                reassured.push((neg.start, end));
            }
        }
        let allows: Vec<Span> = of(Pat::Allow).collect();
        // An excuse counts only outside every negative match: the 帮您 of
        // 没法帮您 is the refusal itself, not an offer of help.
        let excused = of(Pat::Excuse).any(|e| {
            !spans.iter().any(|n| {
                matches!(self.pats[n.pat].0, Pat::Negative(_)) && n.start < e.end && e.start < n.end
            })
        });
        let mut found: Vec<Span> = spans
            .iter()
            .filter(|s| matches!(self.pats[s.pat].0, Pat::Negative(_)))
            .filter(|n| {
                !allows
                    .iter()
                    .any(|a| a.start <= n.start && a.end >= n.end && a.len() > n.len())
            })
            .filter(|n| {
                let first_not = (n.start..n.end).find(|&p| matches!(chars[p], '不' | '没'));
                !first_not.is_some_and(|p| a_not_a(&chars, p))
            })
            .filter(|n| !reassured.iter().any(|&(s, e)| n.end > s && n.end <= e))
            .filter(|n| {
                !(excused
                    && matches!(self.pats[n.pat].0, Pat::Negative(i) if self.rules.negative[i].excusable))
            })
            .copied()
            .collect();
        // Leftmost-longest, without overlaps.
        found.sort_by(|a, b| a.start.cmp(&b.start).then(b.len().cmp(&a.len())));
        let mut pos = 0;
        for n in found {
            if n.start < pos {
                continue;
            }
            pos = n.end;
            let Pat::Negative(i) = self.pats[n.pat].0 else {
                unreachable!("only negatives are kept");
            };
            let r = &self.rules.negative[i];
            issues.push(Issue {
                kind: IssueKind::Negative,
                phrase: self.pats[n.pat].1.clone(),
                start: n.start,
                end: n.end,
                rewrite: r.rewrite.clone(),
                reason: r.reason.clone(),
            });
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> PolitenessRules {
        let rule = |p: &str| Rule {
            phrase: p.into(),
            rewrite: format!("instead of {p}"),
            reason: None,
            excusable: false,
        };
        PolitenessRules {
            negative: vec![rule("我不能"), rule("不行"), rule("这不是我们的问题")],
            curt: vec![rule("好的"), rule("有货")],
            allow: vec!["不行的话".into()],
            ..PolitenessRules::default()
        }
    }

    #[test]
    fn table() {
        let checker = Checker::new(&rules());
        // (draft, expected kinds in order)
        let cases: &[(&str, &[IssueKind])] = &[
            ("好的", &[IssueKind::Curt]),
            ("好的。", &[IssueKind::Curt]),
            ("好的呢~", &[IssueKind::Curt]),
            ("有货！", &[IssueKind::Curt]),
            ("好的亲，已经为您备注好啦，今天就给您发出哦", &[]),
            ("我不能改地址", &[IssueKind::Negative]),
            ("这个不行", &[IssueKind::Negative]),
            ("不行的话您再联系我们", &[]),
            (
                "这不是我们的问题，不行",
                &[IssueKind::Negative, IssueKind::Negative],
            ),
            ("亲，非常抱歉给您带来不便", &[]),
        ];
        for (draft, want) in cases {
            let lint = checker.check(draft);
            let kinds: Vec<IssueKind> = lint.issues.iter().map(|i| i.kind).collect();
            assert_eq!(&kinds, want, "draft {draft:?}");
            assert_eq!(lint.ok, want.is_empty());
        }
    }

    /// The checker's own readings, independent of the shipped rules: an
    /// apology excuses an excusable refusal only; 爱A不A is no question; a
    /// draft of particles only is curt when a curt rule names the particle;
    /// 哒/滴/吧 hide nothing (好哒 is 好的).
    #[test]
    fn excuses_particles_and_ai_a_bu_a() {
        let rule = |p: &str, excusable: bool| Rule {
            phrase: p.into(),
            rewrite: format!("instead of {p}"),
            reason: None,
            excusable,
        };
        let rules = PolitenessRules {
            negative: vec![
                rule("不能退", true),
                rule("爱买不买", false),
                rule("没法帮", true),
            ],
            curt: vec![rule("好的", false), rule("哦", false), rule("行", false)],
            excuses: vec!["抱歉".into(), "帮您".into()],
            ..PolitenessRules::default()
        };
        let checker = Checker::new(&rules);
        let cases: &[(&str, &[&str])] = &[
            ("不能退", &["不能退"]),
            ("非常抱歉，定制商品不能退", &[]),
            ("爱买不买", &["爱买不买"]),
            ("抱歉，爱买不买", &["爱买不买"]),
            // An excuse inside the refusal itself excuses nothing.
            ("没法帮您", &["没法帮"]),
            ("没法帮您改，我帮您问问", &[]),
            ("哦", &["哦"]),
            ("哦哦~", &["哦"]),
            ("呢", &[]),
            ("~", &[]),
            ("好哒", &["好的"]),
            ("好滴！", &["好的"]),
            ("行吧", &["行"]),
            ("哦，好的亲，马上为您处理", &[]),
        ];
        for (draft, want) in cases {
            let lint = checker.check(draft);
            let got: Vec<&str> = lint.issues.iter().map(|i| i.phrase.as_str()).collect();
            assert_eq!(&got, want, "draft {draft:?}");
        }
    }

    #[test]
    fn offsets_are_characters() {
        let checker = Checker::new(&rules());
        let lint = checker.check("亲，我不能");
        assert_eq!((lint.issues[0].start, lint.issues[0].end), (2, 5));
    }
}
