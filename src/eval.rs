//! Accuracy of the matcher on a labelled file (`kefu eval`).
//!
//! Each line is `text<TAB>intent<TAB>other acceptable intents` (the last
//! column comma-separated, possibly empty). `none` as the main label means no
//! intent fits: kefu is right on such a line when it suggests nothing.
//! Top-1 counts the best suggestion against the main label or an acceptable
//! one; top-3 counts any of the first three.
//!
//! A label that names no intent of the libraries (a typo, a renamed intent)
//! can never be matched: [`unknown_labels`] lists them so `kefu eval` warns,
//! and such lines still count as misses, so the figures stay those of the
//! whole file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::matcher::Matcher;

/// One labelled line.
#[derive(Debug, Clone)]
pub struct Example {
    pub line: usize,
    pub text: String,
    pub label: String,
    pub also: Vec<String>,
}

/// Parses a labelled TSV file; bad lines are returned as errors with their
/// line number, never skipped silently.
pub fn parse(tsv: &str) -> (Vec<Example>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in tsv.lines().enumerate() {
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let mut cols = raw.split('\t');
        let text = cols.next().unwrap_or("").to_string();
        let label = cols.next().unwrap_or("").trim().to_string();
        if text.trim().is_empty() || label.is_empty() {
            errors.push(format!(
                "line {}: expected text<TAB>intent[<TAB>other intents]",
                i + 1
            ));
            continue;
        }
        let also = cols
            .next()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        out.push(Example {
            line: i + 1,
            text,
            label,
            also,
        });
    }
    (out, errors)
}

/// A label that names no intent, where it is first used and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLabel {
    pub label: String,
    /// 1-based line of its first use.
    pub first_line: usize,
    /// Lines that use it, as main or acceptable label.
    pub lines: usize,
}

/// Labels of `examples` (main and acceptable ones, `none` aside) for which
/// `is_intent` is false, in the order of their first use.
pub fn unknown_labels(examples: &[Example], is_intent: impl Fn(&str) -> bool) -> Vec<UnknownLabel> {
    let mut out: Vec<UnknownLabel> = Vec::new();
    for ex in examples {
        let mut labels: Vec<&str> = std::iter::once(ex.label.as_str())
            .chain(ex.also.iter().map(String::as_str))
            .filter(|l| *l != "none" && !is_intent(l))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        for label in labels {
            match out.iter_mut().find(|u| u.label == label) {
                Some(u) => u.lines += 1,
                None => out.push(UnknownLabel {
                    label: label.to_string(),
                    first_line: ex.line,
                    lines: 1,
                }),
            }
        }
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub n: usize,
    pub top1: usize,
    pub top3: usize,
}

impl Tally {
    fn rate(k: usize, n: usize) -> f64 {
        if n == 0 {
            0.0
        } else {
            k as f64 / n as f64
        }
    }
    pub fn top1_rate(&self) -> f64 {
        Self::rate(self.top1, self.n)
    }
    pub fn top3_rate(&self) -> f64 {
        Self::rate(self.top3, self.n)
    }
}

/// A line kefu got wrong.
#[derive(Debug, Clone)]
pub struct Miss {
    pub example: Example,
    pub got: Vec<(String, f32)>,
}

/// The evaluation result.
#[derive(Debug, Default)]
pub struct Report {
    pub overall: Tally,
    pub per_stage: BTreeMap<String, Tally>,
    /// `none` lines, and how many of them got no suggestion.
    pub none_lines: usize,
    pub none_silent: usize,
    pub misses: Vec<Miss>,
}

/// Runs the matcher over `examples`.
pub fn evaluate(matcher: &Matcher, examples: &[Example]) -> Report {
    let mut r = Report::default();
    for ex in examples {
        let ranked = matcher.rank(&ex.text);
        let got: Vec<(String, f32)> = ranked
            .iter()
            .take(3)
            .map(|x| (matcher.intent_id(x.intent).to_string(), x.score))
            .collect();
        if ex.label == "none" {
            r.none_lines += 1;
            if got.is_empty() {
                r.none_silent += 1;
            } else {
                r.misses.push(Miss {
                    example: ex.clone(),
                    got,
                });
            }
            continue;
        }
        let ok = |id: &str| id == ex.label || ex.also.iter().any(|a| a == id);
        let top1 = got.first().is_some_and(|(id, _)| ok(id));
        let top3 = got.iter().any(|(id, _)| ok(id));
        let stage = ex.label.split('.').next().unwrap_or("?").to_string();
        for t in [&mut r.overall, r.per_stage.entry(stage).or_default()] {
            t.n += 1;
            t.top1 += top1 as usize;
            t.top3 += top3 as usize;
        }
        if !top1 {
            r.misses.push(Miss {
                example: ex.clone(),
                got,
            });
        }
    }
    r
}

impl Report {
    /// Human-readable summary; `misses` adds the lines kefu got wrong.
    pub fn render(&self, misses: bool) -> String {
        let mut s = String::new();
        let o = &self.overall;
        let _ = writeln!(
            s,
            "labelled lines: {}   top-1: {:.3} ({}/{})   top-3: {:.3} ({}/{})",
            o.n,
            o.top1_rate(),
            o.top1,
            o.n,
            o.top3_rate(),
            o.top3,
            o.n
        );
        for (stage, t) in &self.per_stage {
            let _ = writeln!(
                s,
                "  {:<11} lines: {:>4}   top-1: {:.3}   top-3: {:.3}",
                stage,
                t.n,
                t.top1_rate(),
                t.top3_rate()
            );
        }
        let _ = writeln!(
            s,
            "none lines: {}   rightly silent: {:.3} ({}/{})",
            self.none_lines,
            Tally::rate(self.none_silent, self.none_lines),
            self.none_silent,
            self.none_lines
        );
        if misses && !self.misses.is_empty() {
            let _ = writeln!(s, "\nwrong (line: text => expected | got):");
            for m in &self.misses {
                let got: Vec<String> = m.got.iter().map(|(i, sc)| format!("{i} {sc:.2}")).collect();
                let want = if m.example.also.is_empty() {
                    m.example.label.clone()
                } else {
                    format!("{} (or {})", m.example.label, m.example.also.join(","))
                };
                let _ = writeln!(
                    s,
                    "  {}: {} => {} | {}",
                    m.example.line,
                    m.example.text,
                    want,
                    if got.is_empty() {
                        "-".to_string()
                    } else {
                        got.join(", ")
                    }
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_that_name_no_intent_are_listed_once_with_their_first_line() {
        let tsv = "# comment\n\
                   在吗\tpre_sale.greeting\n\
                   hello\tin_sale.nonexistent\tpre_sale.greting\n\
                   发货了吗\tin_sale.nonexistent\n\
                   随便\tnone\n\
                   退款\tafter_sale.refund\tin_sale.nonexistent,in_sale.nonexistent\n";
        let (examples, errors) = parse(tsv);
        assert!(errors.is_empty(), "{errors:?}");
        let known = ["pre_sale.greeting", "after_sale.refund"];
        let got = unknown_labels(&examples, |id| known.contains(&id));
        let want = [("in_sale.nonexistent", 3, 3), ("pre_sale.greting", 3, 1)];
        let got: Vec<(&str, usize, usize)> = got
            .iter()
            .map(|u| (u.label.as_str(), u.first_line, u.lines))
            .collect();
        assert_eq!(got, want);
        // Every label known: nothing to say.
        assert!(unknown_labels(&examples, |_| true).is_empty());
    }
}
