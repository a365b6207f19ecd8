//! What a waiting buyer's suggestions answer: the open round's buyer lines
//! together, not only the newest one.
//!
//! Buyers split one ask over several messages: the question, then the
//! address (`请问什么时候能送到` / `上海市浦东新区`), a question then `？？？`,
//! a question then `谢谢`. Matched alone, the newest line says nothing
//! (`？？？`, an address) or only closes (`谢谢`), and the agent got no
//! suggestion or a goodbye for a question still open. The round's lines
//! are the ones the agent is about to answer: the buyer's lines since the
//! last agent reply (bot and staff-only lines do not end a round; only an
//! agent reply does, as for the response clock).
//!
//! The rule, for a round of more than one line:
//!
//! 1. the newest line is matched alone (`own`), and the round's lines
//!    joined (`joined`): up to [`ROUND_LINES`] lines, newest last, within
//!    [`ROUND_CHARS`] characters, separated by [`SEPARATOR`];
//! 2. if `own`'s top is an ask (an intent not in [`CONTEXT_INTENTS`]) of at
//!    least [`STRONG_SCORE`], the newest line asked something of its own (a
//!    new question in the same round): `own` leads, `joined` fills up the
//!    places left, so an older unanswered ask stays in sight. Otherwise
//!    (nothing, a weak match, or only a greeting or thanks) `joined` leads
//!    and `own` fills up;
//! 3. intents that carry no ask of their own ([`CONTEXT_INTENTS`]) go after
//!    those that do: `几号能发货呀` / `谢谢` joined ranks the thanks first
//!    (two full characters against a weak question), and the agent is to
//!    answer the question;
//! 4. each intent appears once (the leading list's suggestion of it), at
//!    most `top` in all. A suggestion's `score` is the one of the text that
//!    ranked it (the newest line or the joined lines), so in such a round
//!    the list is in the rule's order, not always in score order.
//!
//! A round of one line (by far the most common: the buyer asks, the agent
//! answers) is matched exactly as before, one `Matcher::suggest` of the
//! message: [`suggest`] returns before any joining, counting or second
//! match, and the hub hands over an empty inline [`Earlier`] (no heap
//! allocation).
//!
//! Measured with a rough simulation of this rule on multi-part messages
//! split at their spaces into lines (the review's method): on the 51
//! labelled multi-part dev lines top-1 went 0.608 (newest line alone) ->
//! 0.922 (whole message as one: 0.961); on the 106 multi-part lines of
//! the review's sample 0.481 -> 0.925.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::matcher::{Matcher, Suggestion};
use crate::phrases::Fill;

/// Most buyer lines of a round matched together, the newest included. A
/// split ask is a few short messages sent within seconds (the question,
/// a detail, `？？？`); three cover the question, its detail and a nudge.
/// Older lines of a long unanswered round are more likely an ask of their
/// own, and each line added dilutes the newest line's coverage in the
/// joined text.
pub(crate) const ROUND_LINES: usize = 3;

/// Most characters of the joined lines (separators not counted): older
/// lines are left out once the total would pass it. A buyer line may be up
/// to `limits.max_text_chars` (2,000) long; 300 is several chat messages'
/// worth and keeps the second match of a multi-line round about the cost
/// of one long message. A newest line over it alone is matched alone.
pub(crate) const ROUND_CHARS: usize = 300;

/// Between joined lines: a full stop, which the normaliser keeps and the
/// matcher counts as punctuation (no coverage, no keyword spans it), so a
/// keyword cannot be made of the end of one line and the start of the
/// next, a pattern anchored with `^…$` (a bare greeting) no longer matches
/// a greeting line followed by a question, and one anchored with `$`
/// still sees the end of the newest line.
pub(crate) const SEPARATOR: char = '。';

/// The newest line's top suggestion leads the round when it is an ask
/// scoring at least this. A keyword of two characters (weight 0.6) gets it
/// only when it covers most of the line; a specific keyword of four or
/// more (0.9) or a pattern gets it anywhere. Below it the newest line's
/// match is a weak hint, and the joined lines say more.
pub(crate) const STRONG_SCORE: f32 = 0.5;

/// Intents that say nothing of what the buyer wants: a greeting, thanks
/// or an acknowledgement, a call for a person (`人呢`, in a chat a person
/// is already answering), an order pointed at without an ask (a pasted
/// order number). In a round of several lines they give way to the lines
/// that ask. Ids of the required taxonomy (spec/intents.md: a library may
/// not rename or drop them).
pub(crate) const CONTEXT_INTENTS: [&str; 4] = [
    "pre_sale.greeting",
    "pre_sale.closing",
    "pre_sale.human_agent",
    "in_sale.order_status",
];

/// The round's buyer lines before the newest, oldest first: up to
/// [`ROUND_LINES`] − 1 shared texts, inline (no allocation; empty for a
/// round of one line).
pub(crate) type Earlier = SmallVec<[Arc<str>; ROUND_LINES - 1]>;

/// Whether `s` carries an ask: not one of [`CONTEXT_INTENTS`].
fn is_ask(s: &Suggestion) -> bool {
    !CONTEXT_INTENTS.contains(&&*s.intent)
}

/// The round's lines joined for matching: the newest line and, before it,
/// as many of `earlier` (oldest first) as fit [`ROUND_CHARS`] counted from
/// the newest back, separated by [`SEPARATOR`]. `None` when no earlier
/// line fits (the newest is matched alone).
pub(crate) fn join(earlier: &[Arc<str>], newest: &str) -> Option<String> {
    if earlier.is_empty() {
        return None;
    }
    let mut chars = newest.chars().count();
    let mut bytes = newest.len();
    let mut keep = 0;
    for line in earlier.iter().rev().take(ROUND_LINES - 1) {
        chars += line.chars().count();
        if chars > ROUND_CHARS {
            break;
        }
        bytes += line.len() + SEPARATOR.len_utf8();
        keep += 1;
    }
    if keep == 0 {
        return None;
    }
    let mut text = String::with_capacity(bytes);
    for line in &earlier[earlier.len() - keep..] {
        text.push_str(line);
        text.push(SEPARATOR);
    }
    text.push_str(newest);
    Some(text)
}

/// The best `top` suggestions for a round whose newest buyer line is
/// `newest` and whose earlier lines are `earlier` (oldest first): see the
/// module documentation for the rule. With no earlier line, exactly
/// `matcher.suggest(newest, top, fill)`.
pub(crate) fn suggest(
    matcher: &Matcher,
    earlier: &[Arc<str>],
    newest: &str,
    top: usize,
    fill: &Fill,
) -> Vec<Suggestion> {
    let own = matcher.suggest(newest, top, fill);
    let Some(text) = join(earlier, newest) else {
        return own;
    };
    let joined = matcher.suggest(&text, top, fill);
    let own_leads = own
        .first()
        .is_some_and(|s| is_ask(s) && s.score >= STRONG_SCORE);
    let (lead, rest) = if own_leads {
        (own, joined)
    } else {
        (joined, own)
    };
    merge(lead, rest, top)
}

/// `lead`, then the intents of `rest` it lacks, asks before
/// [`CONTEXT_INTENTS`] (stable), at most `top`.
fn merge(lead: Vec<Suggestion>, rest: Vec<Suggestion>, top: usize) -> Vec<Suggestion> {
    let mut all = lead;
    for s in rest {
        if !all.iter().any(|a| a.intent == s.intent) {
            all.push(s);
        }
    }
    // Stable: each group keeps its order.
    all.sort_by_key(|s| !is_ask(s));
    all.truncate(top);
    all
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;

    use super::*;
    use crate::phrases::{Library, Stage};

    fn lines(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|&s| Arc::from(s)).collect()
    }

    #[test]
    fn join_keeps_the_newest_lines_within_the_caps() {
        let long = "很".repeat(ROUND_CHARS);
        let half = "好".repeat(ROUND_CHARS / 2);
        let cases: &[(&[&str], &str, Option<String>)] = &[
            // One line: nothing to join.
            (&[], "在吗", None),
            (&["你好"], "几号发货", Some("你好。几号发货".into())),
            (
                &["这双鞋", "42码的"],
                "还有吗",
                Some("这双鞋。42码的。还有吗".into()),
            ),
            // More earlier lines than the cap: the newest ones.
            (&["一", "二", "三", "四"], "五", Some("三。四。五".into())),
            // A newest line at the cap alone: matched alone.
            (&["你好"], &long, None),
            // An earlier line that would pass the cap ends the lines kept,
            // even if an older, shorter one would fit.
            (&["早", &long], "几号发货", None),
            (
                &[&long, &half],
                "几号发货",
                Some(format!("{half}。几号发货")),
            ),
        ];
        for (earlier, newest, want) in cases {
            assert_eq!(
                join(&lines(earlier), newest),
                *want,
                "{earlier:?} + {newest}"
            );
        }
    }

    #[test]
    fn characters_not_bytes_count() {
        // 150 ideographs are 450 bytes: the two lines fit 300 characters.
        let a = "问".repeat(150);
        let b = "答".repeat(150);
        assert!(join(&lines(&[&a]), &b).is_some());
        assert!(join(&lines(&[&a]), &format!("{b}!")).is_none());
    }

    fn s(intent: &str, score: f32) -> Suggestion {
        Suggestion {
            stage: Stage::PreSale,
            intent: Arc::from(intent),
            score,
            reply: Arc::from(""),
            matched: Vec::new(),
        }
    }

    fn ids(v: &[Suggestion]) -> Vec<&str> {
        v.iter().map(|s| &*s.intent).collect()
    }

    #[test]
    fn merge_puts_asks_first_and_each_intent_once() {
        /// (intent, score) of a list.
        type List<'a> = &'a [(&'a str, f32)];
        let cases: &[(List, List, &[&str])] = &[
            (&[("a.x", 0.9)], &[("a.y", 0.5)], &["a.x", "a.y"]),
            // The leading list's copy of an intent stays.
            (
                &[("a.x", 0.9)],
                &[("a.y", 0.5), ("a.x", 0.4)],
                &["a.x", "a.y"],
            ),
            // Context intents after asks, each group in order.
            (
                &[("pre_sale.closing", 0.45), ("a.x", 0.4)],
                &[("pre_sale.closing", 0.7)],
                &["a.x", "pre_sale.closing"],
            ),
            (
                &[("pre_sale.greeting", 0.5), ("in_sale.order_status", 0.4)],
                &[("a.y", 0.3), ("a.z", 0.3), ("a.w", 0.3)],
                &["a.y", "a.z", "a.w"],
            ),
            // Nothing but context: kept as it is.
            (
                &[("pre_sale.greeting", 0.5)],
                &[("pre_sale.closing", 0.6)],
                &["pre_sale.greeting", "pre_sale.closing"],
            ),
            (&[], &[], &[]),
        ];
        for (lead, rest, want) in cases {
            let lead: Vec<_> = lead.iter().map(|&(i, x)| s(i, x)).collect();
            let rest: Vec<_> = rest.iter().map(|&(i, x)| s(i, x)).collect();
            assert_eq!(ids(&merge(lead, rest, 3)), *want);
        }
    }

    /// The shipped libraries, compiled once.
    fn shipped() -> &'static Matcher {
        static M: OnceLock<Matcher> = OnceLock::new();
        M.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases");
            let lib = Library::load_dir(&dir).expect("shipped libraries load");
            Matcher::new(&lib).expect("shipped libraries compile")
        })
    }

    /// With the shipped libraries, rounds as buyers split them rank the
    /// ask; the newest line alone does not (checked, so the table keeps
    /// testing the joining). Invented messages.
    #[test]
    fn split_asks_rank_the_ask() {
        let fill = Fill {
            shop: "本店",
            agent: "",
            buyer: "",
        };
        let m = shipped();
        let cases: &[(&[&str], &str, &str)] = &[
            // A question, then an address.
            (
                &["请问什么时候能送到"],
                "上海市浦东新区",
                "in_sale.logistics",
            ),
            // A question, then a nudge.
            (&["我拍错颜色了"], "？？？", "in_sale.order_change"),
            // A question, then thanks or an acknowledgement.
            (&["几号能发货呀"], "谢谢", "in_sale.shipping_time"),
            (
                &["退货地址发我一下"],
                "好的谢谢",
                "after_sale.return_exchange",
            ),
            // A greeting, a question, a nudge.
            (&["你好", "请问今天能发货吗"], "？", "in_sale.shipping_time"),
            // A question, then the order number.
            (
                &["收到的杯子裂了"],
                "订单号 2024112400123",
                "after_sale.quality_issue",
            ),
        ];
        for (earlier, newest, want) in cases {
            let alone = m.suggest(newest, 3, &fill);
            assert_ne!(
                alone.first().map(|s| &*s.intent),
                Some(*want),
                "{newest} alone already ranks {want}"
            );
            let got = suggest(m, &lines(earlier), newest, 3, &fill);
            assert_eq!(
                got.first().map(|s| &*s.intent),
                Some(*want),
                "{earlier:?} + {newest}: {:?}",
                ids(&got)
            );
        }
    }

    /// A newest line that asks something of its own leads, and the older
    /// ask stays among the suggestions; a greeting before a question never
    /// leads.
    #[test]
    fn a_new_question_leads_and_the_older_one_follows() {
        let fill = Fill {
            shop: "本店",
            agent: "",
            buyer: "",
        };
        let m = shipped();
        let cases: &[(&[&str], &str, &[&str])] = &[
            (
                &["这件有货吗"],
                "能开发票吗",
                &["in_sale.invoice", "pre_sale.stock"],
            ),
            (&["你好"], "请问今天能发货吗", &["in_sale.shipping_time"]),
            (&["在吗"], "我要退货", &["after_sale.return_exchange"]),
        ];
        for (earlier, newest, want) in cases {
            let got = suggest(m, &lines(earlier), newest, 3, &fill);
            assert_eq!(
                &ids(&got)[..want.len().min(got.len())],
                *want,
                "{earlier:?} + {newest}: {:?}",
                ids(&got)
            );
        }
    }

    #[test]
    fn one_line_is_matched_as_before() {
        let fill = Fill {
            shop: "本店",
            agent: "",
            buyer: "",
        };
        let m = shipped();
        for text in ["你好，我要退货", "谢谢", "订单号 2024112400123", "？？？"] {
            assert_eq!(suggest(m, &[], text, 3, &fill), m.suggest(text, 3, &fill));
        }
    }
}
