//! Politeness checker for agent drafts.
//!
//! Shops lose ratings on two habits: negative phrasing (我不能, 不行, 这不是我们的
//! 问题) and curt one-word answers (好的, 有货). The rules live in
//! `phrases/politeness.yaml` so a shop can add its own; every rule carries a
//! friendlier rewrite the agent can take with one click.

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
}

/// The rules of `politeness.yaml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolitenessRules {
    /// Flagged wherever they appear in a draft.
    #[serde(default)]
    pub negative: Vec<Rule>,
    /// Flagged when they are the whole draft (after punctuation and filler
    /// such as 的/哦/呢 is stripped).
    #[serde(default)]
    pub curt: Vec<Rule>,
    /// Phrases that make a flagged negative fine, e.g. 不行的话 ("if it doesn't
    /// work") or 没问题 contain a negative phrase but are not negative.
    #[serde(default)]
    pub allow: Vec<String>,
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
    /// The flagged phrase as written in the rule.
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

/// The compiled checker; build once per rule set and share.
#[derive(Debug, Clone)]
pub struct Checker {
    rules: PolitenessRules,
    /// Negative phrases and allow-list phrases in one automaton; pattern ids
    /// below `negative_len` are negatives.
    ac: AhoCorasick,
    negative_len: usize,
    curt: Vec<String>,
}

/// Characters that do not change whether a reply is curt.
fn is_filler(c: char) -> bool {
    c.is_ascii_punctuation()
        || c.is_whitespace()
        || "。，、！？～~…：；“”‘’（）【】《》的哦呢呀啊啦哈".contains(c)
}

fn core(text: &str) -> String {
    text.chars().filter(|c| !is_filler(*c)).collect()
}

impl Checker {
    pub fn new(rules: &PolitenessRules) -> Checker {
        let mut pats: Vec<String> = rules
            .negative
            .iter()
            .map(|r| normalize(&r.phrase))
            .collect();
        pats.extend(rules.allow.iter().map(|a| normalize(a)));
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&pats)
            .expect("politeness phrases are plain strings and always compile");
        Checker {
            curt: rules
                .curt
                .iter()
                .map(|r| core(&normalize(&r.phrase)))
                .collect(),
            rules: rules.clone(),
            ac,
            negative_len: rules.negative.len(),
        }
    }

    /// Checks an agent's draft.
    pub fn check(&self, draft: &str) -> Lint {
        let text = normalize(draft);
        let mut issues = Vec::new();
        let c = core(&text);
        if let Some(i) = self.curt.iter().position(|p| !p.is_empty() && *p == c) {
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
        for m in self.ac.find_iter(&text) {
            let id = m.pattern().as_usize();
            if id >= self.negative_len {
                continue; // an allow-listed phrase swallowed this span
            }
            let r = &self.rules.negative[id];
            let start = text[..m.start()].chars().count();
            let end = start + text[m.start()..m.end()].chars().count();
            issues.push(Issue {
                kind: IssueKind::Negative,
                phrase: r.phrase.clone(),
                start,
                end,
                rewrite: r.rewrite.clone(),
                reason: r.reason.clone(),
            });
        }
        Lint {
            ok: issues.is_empty(),
            issues,
        }
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
        };
        PolitenessRules {
            negative: vec![rule("我不能"), rule("不行"), rule("这不是我们的问题")],
            curt: vec![rule("好的"), rule("有货")],
            allow: vec!["不行的话".into()],
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

    #[test]
    fn offsets_are_characters() {
        let checker = Checker::new(&rules());
        let lint = checker.check("亲，我不能");
        assert_eq!((lint.issues[0].start, lint.issues[0].end), (2, 5));
    }
}
