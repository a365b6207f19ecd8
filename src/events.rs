//! The event record: what happened in a conversation, and when.
//!
//! The same record is written by the service to the store, exported as JSON
//! lines (`kefu events export`), and read back by the reports, so a shop can
//! compute reports from chat logs it already has. One JSON object per line:
//!
//! ```json
//! {"ts":"2026-11-20T10:00:03.250+08:00","shop":"s1","conversation":"c1","buyer":"b1","kind":"buyer","text":"在吗"}
//! ```
//!
//! Reading is forgiving where it can be and loud where it cannot: unknown
//! fields are ignored (a newer kefu or another tool may add some), but a line
//! that is not JSON, has no usable `ts`, or lacks a field its kind needs is a
//! [`BadLine`] with its line number, handed to the caller to report. Lines
//! may come in any order; the reports sort them.

use std::borrow::Cow;
use std::io::BufRead;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::{format_description, offset};
use time::{OffsetDateTime, UtcOffset};

/// The shop time zone unless told otherwise: China Standard Time.
pub const DEFAULT_OFFSET: UtcOffset = offset!(+8);

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A buyer message.
    Buyer,
    /// An agent reply (`agent`, optionally the suggested `intent` it used).
    Agent,
    /// A bot message: greeting or holding reply (`text`, `note` says which).
    Bot,
    /// The conversation was given to `agent` (first assignment or a move;
    /// `note` says why, `transferred` with the sender's note in `text`).
    Assign,
    /// A satisfaction rating (`score`).
    Rating,
    /// The agent was nudged: the round nears the target.
    Nudge,
    /// The round passed the target.
    Breach,
    /// The service closed the conversation for good (`note`: why:
    /// `expired`, its buyer stayed away past the resume window, `empty`,
    /// its buyer left a conversation nobody chatted in a minute before, or
    /// `secret_lost`, its buyer came back after a restart that changed the
    /// resume key and got a new conversation). A restart brings back the
    /// conversations open when it stopped, and only this event tells a
    /// closed one from an open one whose buyer went quiet (see
    /// `server::restore`).
    Close,
    /// A start of the service brought the conversation back from the log
    /// (`note`: `secret_lost` when its buyer's resume secret can no longer
    /// verify). It is activity for the next start: without it a second
    /// restart within the renewed resume window found nothing of the
    /// conversation in its window and lost it. Reports ignore it.
    Restore,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Buyer,
        Kind::Agent,
        Kind::Bot,
        Kind::Assign,
        Kind::Rating,
        Kind::Nudge,
        Kind::Breach,
        Kind::Close,
        Kind::Restore,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Buyer => "buyer",
            Kind::Agent => "agent",
            Kind::Bot => "bot",
            Kind::Assign => "assign",
            Kind::Rating => "rating",
            Kind::Nudge => "nudge",
            Kind::Breach => "breach",
            Kind::Close => "close",
            Kind::Restore => "restore",
        }
    }
}

/// The five satisfaction levels of the platform, best first (the order is
/// used: see `report`'s tie-break between ratings of the same instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    VerySatisfied,
    Satisfied,
    Neutral,
    Dissatisfied,
    VeryDissatisfied,
}

impl Rating {
    pub const ALL: [Rating; 5] = [
        Rating::VerySatisfied,
        Rating::Satisfied,
        Rating::Neutral,
        Rating::Dissatisfied,
        Rating::VeryDissatisfied,
    ];

    pub fn parse(s: &str) -> Option<Rating> {
        Rating::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rating::VerySatisfied => "very_satisfied",
            Rating::Satisfied => "satisfied",
            Rating::Neutral => "neutral",
            Rating::Dissatisfied => "dissatisfied",
            Rating::VeryDissatisfied => "very_dissatisfied",
        }
    }

    /// Counts towards the satisfaction rate's numerator.
    pub fn is_satisfied(self) -> bool {
        matches!(self, Rating::VerySatisfied | Rating::Satisfied)
    }
}

/// One event. `ts_ms` is Unix milliseconds; on the wire it is the RFC 3339
/// `ts` field with the shop's offset (see `store`/`report` for conversion).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub ts_ms: i64,
    // Ids and texts are shared with the hub's own copies (`Arc`), static
    // words borrowed (`Cow`): the service makes two events per buyer
    // message, and copying each field was a third of its allocations.
    pub shop: Arc<str>,
    pub conversation: Arc<str>,
    pub buyer: Arc<str>,
    pub kind: Kind,
    /// Agent of `agent`, `assign`, `nudge` and `breach` events.
    pub agent: Option<Arc<str>>,
    pub text: Option<Arc<str>>,
    /// Suggested intent an agent reply used; for a buyer message, the
    /// best-ranked intent when the service saw it.
    pub intent: Option<Arc<str>>,
    /// Stage of a buyer message as the service ranked it.
    pub stage: Option<Cow<'static, str>>,
    pub score: Option<Rating>,
    /// Free-form detail, e.g. `greeting` or `holding` for bot events.
    pub note: Option<Cow<'static, str>>,
}

impl Event {
    /// A bare event of `kind`; fill the optional fields as needed.
    pub fn new(ts_ms: i64, shop: &str, conversation: &str, buyer: &str, kind: Kind) -> Event {
        Event::shared(ts_ms, shop.into(), conversation.into(), buyer.into(), kind)
    }

    /// [`Event::new`] with ids the caller already holds as `Arc`s.
    pub fn shared(
        ts_ms: i64,
        shop: Arc<str>,
        conversation: Arc<str>,
        buyer: Arc<str>,
        kind: Kind,
    ) -> Event {
        Event {
            ts_ms,
            shop,
            conversation,
            buyer,
            kind,
            agent: None,
            text: None,
            intent: None,
            stage: None,
            score: None,
            note: None,
        }
    }
}

/// Why one event (one line of a file) is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a valid event object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`ts` {ts:?} is not an RFC 3339 time with an offset such as 2026-11-20T10:00:03.250+08:00 ({reason})")]
    Timestamp { ts: String, reason: String },
    #[error("{} `{kind}` event needs a non-empty `{field}` field", article(kind))]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("not UTF-8 (at byte {at}); the log is UTF-8 JSON lines")]
    NotUtf8 { at: usize },
}

/// "a" or "an" before a kind's name.
fn article(kind: &str) -> &'static str {
    match kind.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// A line of an event file that was skipped, and why.
#[derive(Debug)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub error: EventError,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// The exact shape written by [`Event::to_json`]: milliseconds, always.
const TS_FORMAT: &[BorrowedFormatItem<'static>] = format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory]:[offset_minute]"
);

/// Parses an RFC 3339 time (any offset, `Z` included) to Unix milliseconds;
/// digits past the millisecond are dropped (rounded towards the past).
pub fn parse_ts(ts: &str) -> Result<i64, EventError> {
    let t = OffsetDateTime::parse(ts, &Rfc3339).map_err(|e| EventError::Timestamp {
        ts: ts.to_string(),
        reason: if missing_offset(ts) {
            "its UTC offset is missing".to_string()
        } else {
            e.to_string()
        },
    })?;
    Ok(t.unix_timestamp_nanos().div_euclid(1_000_000) as i64)
}

/// Whether `ts` is an RFC 3339 time but for its missing UTC offset
/// (`2026-11-20T10:00:00`), the commonest slip when one is typed by hand.
pub fn missing_offset(ts: &str) -> bool {
    OffsetDateTime::parse(ts, &Rfc3339).is_err()
        && OffsetDateTime::parse(&format!("{ts}Z"), &Rfc3339).is_ok()
}

/// Formats Unix milliseconds as RFC 3339 in `offset`, e.g.
/// `2026-11-20T10:00:03.250+08:00`.
pub fn format_ts(ts_ms: i64, offset: UtcOffset) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(ts_ms as i128 * 1_000_000) {
        Ok(t) => t
            .to_offset(offset)
            .format(TS_FORMAT)
            .unwrap_or_else(|_| ts_ms.to_string()),
        // Outside the years -9999..=9999: cannot come from a parsed file.
        Err(_) => ts_ms.to_string(),
    }
}

/// A line as parsed, borrowing from it where no escape forces a copy.
#[derive(Deserialize)]
pub(crate) struct WireIn<'a> {
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    #[serde(borrow)]
    pub shop: Cow<'a, str>,
    #[serde(borrow)]
    pub conversation: Cow<'a, str>,
    #[serde(default, borrow)]
    pub buyer: Cow<'a, str>,
    pub kind: Kind,
    #[serde(default, borrow)]
    pub agent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub intent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub stage: Option<Cow<'a, str>>,
    #[serde(default)]
    pub score: Option<Rating>,
    #[serde(default, borrow)]
    pub note: Option<Cow<'a, str>>,
}

/// One line of a file, checked as UTF-8 already or not.
#[derive(Clone, Copy)]
pub(crate) enum Line<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Line<'a> {
    /// Parses and checks a line: its time in Unix ms and its fields.
    pub(crate) fn parse(self) -> Result<(i64, WireIn<'a>), EventError> {
        let w: WireIn<'a> = match self {
            Line::Str(s) => serde_json::from_str(s)?,
            // The whole line, not only the fields read: serde skips an
            // unknown field's string without checking its bytes.
            Line::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => serde_json::from_str(s)?,
                Err(e) => {
                    return Err(EventError::NotUtf8 {
                        at: e.valid_up_to(),
                    })
                }
            },
        };
        let ts = parse_ts(&w.ts)?;
        check(
            w.kind,
            &w.shop,
            &w.conversation,
            &w.buyer,
            w.agent.as_deref(),
            w.score,
        )?;
        Ok((ts, w))
    }
}

/// The fields the reports rely on (see [`Event::validate`]).
fn check(
    kind: Kind,
    shop: &str,
    conversation: &str,
    buyer: &str,
    agent: Option<&str>,
    score: Option<Rating>,
) -> Result<(), EventError> {
    let missing = |field| {
        Err(EventError::Missing {
            kind: kind.as_str(),
            field,
        })
    };
    if shop.is_empty() {
        return missing("shop");
    }
    if conversation.is_empty() {
        return missing("conversation");
    }
    match kind {
        Kind::Buyer | Kind::Rating if buyer.is_empty() => missing("buyer"),
        Kind::Agent | Kind::Assign if agent.is_none_or(str::is_empty) => missing("agent"),
        Kind::Rating if score.is_none() => missing("score"),
        _ => Ok(()),
    }
}

/// Which fields a reader keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// Everything (export, import).
    All,
    /// What reports read: no `note`, and `text` only for buyer messages
    /// without a `stage` (their stage is ranked from it). A million texts
    /// are most of the allocations of a file.
    Report,
}

#[derive(Serialize)]
struct WireOut<'a> {
    ts: String,
    shop: &'a str,
    conversation: &'a str,
    buyer: &'a str,
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<Rating>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

impl Event {
    /// Parses one JSON line and checks the fields its kind needs.
    pub fn from_json(line: &str) -> Result<Event, EventError> {
        Event::from_json_with(line, Fields::All)
    }

    /// [`Event::from_json`] keeping only `fields`.
    pub fn from_json_with(line: &str, fields: Fields) -> Result<Event, EventError> {
        Event::from_line(Line::Str(line), fields)
    }

    /// Parses one line given as bytes (the parser checks the UTF-8).
    pub fn from_json_bytes(line: &[u8], fields: Fields) -> Result<Event, EventError> {
        Event::from_line(Line::Bytes(line), fields)
    }

    fn from_line(line: Line, fields: Fields) -> Result<Event, EventError> {
        let (ts_ms, w) = line.parse()?;
        let (text, note) = match fields {
            Fields::All => (w.text, w.note),
            Fields::Report => {
                let ranked = w.kind == Kind::Buyer && w.stage.as_deref().is_none_or(str::is_empty);
                (w.text.filter(|_| ranked), None)
            }
        };
        let shared = |s: Option<Cow<str>>| s.map(|s| Arc::from(&*s));
        let own = |s: Option<Cow<str>>| s.map(|s| Cow::Owned(s.into_owned()));
        Ok(Event {
            ts_ms,
            shop: Arc::from(&*w.shop),
            conversation: Arc::from(&*w.conversation),
            buyer: Arc::from(&*w.buyer),
            kind: w.kind,
            agent: shared(w.agent),
            text: shared(text),
            intent: shared(w.intent),
            stage: own(w.stage),
            score: w.score,
            note: own(note),
        })
    }

    /// Checks that the fields the reports rely on are there: every event
    /// needs `shop` and `conversation`; buyer messages and ratings a
    /// `buyer` (ratings are vetted per buyer); agent replies and
    /// assignments an `agent`; ratings a `score`.
    pub fn validate(&self) -> Result<(), EventError> {
        check(
            self.kind,
            &self.shop,
            &self.conversation,
            &self.buyer,
            self.agent.as_deref(),
            self.score,
        )
    }

    /// One JSON line (without the newline), `ts` in `offset`.
    pub fn to_json(&self, offset: UtcOffset) -> String {
        let w = WireOut {
            ts: format_ts(self.ts_ms, offset),
            shop: &self.shop,
            conversation: &self.conversation,
            buyer: &self.buyer,
            kind: self.kind,
            agent: self.agent.as_deref(),
            intent: self.intent.as_deref(),
            stage: self.stage.as_deref(),
            score: self.score,
            note: self.note.as_deref(),
            text: self.text.as_deref(),
        };
        // Serialising plain strings and enums into a String cannot fail.
        serde_json::to_string(&w).unwrap_or_default()
    }
}

/// Reads JSON lines, handing every unusable line to `bad` with its number
/// and going on with the next. Blank lines are skipped. Fails only when the
/// reader itself fails (including text that is not UTF-8).
pub fn read_jsonl<R: BufRead>(
    reader: R,
    mut bad: impl FnMut(BadLine),
) -> std::io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| std::io::Error::new(e.kind(), format!("line {}: {e}", i + 1)))?;
        // A byte-order mark (files saved by Windows tools) is not part of
        // the first line.
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        match Event::from_json(line) {
            Ok(ev) => events.push(ev),
            Err(error) => bad(BadLine { line: i + 1, error }),
        }
    }
    Ok(events)
}

/// Calls `f` with the 0-based index and text of every non-blank line of
/// `bytes` (lines separated by `\n`, no final newline; a `\r` before the
/// `\n` dropped); returns the number of lines. Checking the UTF-8 of the
/// whole chunk at once is cheaper than the parser checking every string; a
/// chunk with bad bytes goes line by line.
pub(crate) fn each_line<'a>(bytes: &'a [u8], mut f: impl FnMut(usize, Line<'a>)) -> usize {
    let mut lines = 0;
    if let Ok(text) = std::str::from_utf8(bytes) {
        for (i, raw) in text.split('\n').enumerate() {
            lines += 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if !raw.trim().is_empty() {
                f(i, Line::Str(raw));
            }
        }
    } else {
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            lines += 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if !raw.iter().all(u8::is_ascii_whitespace) {
                f(i, Line::Bytes(raw));
            }
        }
    }
    lines
}

/// Cuts `bytes` at line ends into about one piece per core, runs `work` on
/// each piece (lines numbered from 1 within it) on its own thread, and
/// hands the bad lines to `bad` renumbered for the whole file, in order.
/// Returns the pieces' results in file order.
pub(crate) fn parse_parallel<'a, R: Send>(
    bytes: &'a [u8],
    work: impl Fn(&'a [u8]) -> (R, Vec<BadLine>, usize) + Sync,
    mut bad: impl FnMut(BadLine),
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    // A byte-order mark (files saved by Windows tools) is not part of the
    // first line; stripped here so every reader of whole files agrees
    // (`kefu report --events` once lost the first event of such a file).
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut cuts = vec![0];
    for k in 1..threads {
        let at = (bytes.len() * k / threads).max(*cuts.last().unwrap_or(&0));
        match bytes[at..].iter().position(|&b| b == b'\n') {
            Some(p) => cuts.push(at + p + 1),
            None => break,
        }
    }
    cuts.push(bytes.len() + 1);
    let chunks: Vec<&'a [u8]> = cuts
        .windows(2)
        .map(|w| &bytes[w[0]..(w[1] - 1).min(bytes.len())])
        .collect();
    let results: Vec<(R, Vec<BadLine>, usize)> = if chunks.len() == 1 {
        vec![work(chunks[0])]
    } else {
        let work = &work;
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks.iter().map(|&c| s.spawn(move || work(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("parser thread panicked"))
                .collect()
        })
    };
    let mut out = Vec::with_capacity(results.len());
    let mut offset = 0;
    for (r, bads, lines) in results {
        for mut b in bads {
            b.line += offset;
            bad(b);
        }
        offset += lines;
        out.push(r);
    }
    out
}

/// Like [`read_jsonl`] over a whole file in memory, parsed on every core
/// (the file is cut at line ends): `kefu report --events` over a million
/// lines is mostly JSON parsing. Events come back in file order, bad lines
/// in line order, and a line that is not UTF-8 is a bad line, not a failure.
pub fn parse_jsonl_bytes(bytes: &[u8], fields: Fields, bad: impl FnMut(BadLine)) -> Vec<Event> {
    let parts = parse_parallel(
        bytes,
        |chunk| {
            let mut events = Vec::with_capacity(chunk.len() / 128);
            let mut bad = Vec::new();
            let lines = each_line(chunk, |i, line| match Event::from_line(line, fields) {
                Ok(ev) => events.push(ev),
                Err(error) => bad.push(BadLine { line: i + 1, error }),
            });
            (events, bad, lines)
        },
        bad,
    );
    // Grow the first piece's vector rather than copy every event once more.
    let total = parts.iter().map(Vec::len).sum::<usize>();
    let mut events: Vec<Event> = Vec::new();
    for part in parts {
        if events.is_empty() {
            events = part;
            events.reserve(total - events.len());
        } else {
            events.extend(part);
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut ev = Event::new(1_795_140_003_250, "s1", "c1", "b1", Kind::Agent);
        ev.agent = Some("a1".into());
        ev.intent = Some("shipping_time".into());
        ev.text = Some("亲，今天下单\"明天\"发货哦".into());
        let line = ev.to_json(DEFAULT_OFFSET);
        assert!(
            line.starts_with(r#"{"ts":"2026-11-20T10:00:03.250+08:00","shop":"s1""#),
            "{line}"
        );
        assert_eq!(Event::from_json(&line).unwrap(), ev);
        // A report keeps an agent reply's text out of memory; a buyer
        // message's only when it has no stage to go by.
        let slim = Event::from_json_with(&line, Fields::Report).unwrap();
        assert_eq!(
            (slim.text, slim.intent.as_deref()),
            (None, Some("shipping_time"))
        );
        let mut b = Event::new(0, "s1", "c1", "b1", Kind::Buyer);
        b.text = Some("在吗".into());
        b.note = Some("x".into());
        let slim = Event::from_json_with(&b.to_json(DEFAULT_OFFSET), Fields::Report).unwrap();
        assert_eq!((slim.text.as_deref(), slim.note), (Some("在吗"), None));
        b.stage = Some("pre_sale".into());
        let slim = Event::from_json_with(&b.to_json(DEFAULT_OFFSET), Fields::Report).unwrap();
        assert_eq!(slim.text, None);
    }

    #[test]
    fn parses_other_offsets_and_drops_sub_millisecond_digits() {
        let cases = [
            ("2026-11-20T02:00:03.250Z", 1_795_140_003_250),
            ("2026-11-20T10:00:03.250+08:00", 1_795_140_003_250),
            ("2026-11-19T21:00:03.2509-05:00", 1_795_140_003_250),
            ("2026-11-20T10:00:03+08:00", 1_795_140_003_000),
        ];
        for (ts, want) in cases {
            assert_eq!(parse_ts(ts).unwrap(), want, "{ts}");
        }
        assert!(parse_ts("2026-11-20 10:00:03").is_err());
        // A time without its offset is told so, naming the field.
        let cases = [
            ("2026-11-20T10:00:00", true, "its UTC offset is missing"),
            ("2026-11-20T10:00:00.250", true, "its UTC offset is missing"),
            ("2026-11-20T25:00:00+08:00", false, "hour"),
            (
                "2026-11-20 10:00:00",
                true,
                "`ts` \"2026-11-20 10:00:00\" is not",
            ),
            (
                "yesterday",
                false,
                "`ts` \"yesterday\" is not an RFC 3339 time",
            ),
        ];
        for (ts, missing, says) in cases {
            assert_eq!(missing_offset(ts), missing, "{ts}");
            let err = parse_ts(ts).unwrap_err().to_string();
            assert!(err.contains(says), "{ts}: {err}");
        }
        assert_eq!(
            format_ts(0, offset!(-05:30)),
            "1969-12-31T18:30:00.000-05:30"
        );
    }

    #[test]
    fn parallel_parse_keeps_order_and_line_numbers() {
        let good = |i: usize| Event::new(i as i64 * 1000, "s1", &format!("c{i}"), "b", Kind::Bot);
        let mut text = Vec::new();
        let mut want = Vec::new();
        let mut want_bad = Vec::new();
        for i in 0..1000 {
            match i % 97 {
                5 => {
                    text.extend_from_slice(b"{not json");
                    want_bad.push(i + 1);
                }
                6 => text.extend_from_slice(b"   "),
                7 => {
                    text.extend_from_slice(b"\xff\xfe");
                    want_bad.push(i + 1);
                }
                _ => {
                    text.extend_from_slice(good(i).to_json(DEFAULT_OFFSET).as_bytes());
                    want.push(good(i));
                }
            }
            text.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
        }
        let mut bad = Vec::new();
        let got = parse_jsonl_bytes(&text, Fields::All, |b| bad.push(b.line));
        assert_eq!(got, want);
        assert_eq!(bad, want_bad);
        // The streaming reader agrees on the valid-UTF-8 part.
        let cut = text.iter().position(|&b| b == 0xff).unwrap();
        let mut bad2 = Vec::new();
        let streamed = read_jsonl(&text[..cut], |b| bad2.push(b.line)).unwrap();
        assert_eq!(streamed[..], got[..streamed.len()]);
        assert!(parse_jsonl_bytes(b"", Fields::All, |_| panic!()).is_empty());
    }

    #[test]
    fn rejects_events_missing_what_their_kind_needs() {
        let cases = [
            (
                r#"{"ts":"2026-11-20T10:00:00+08:00","shop":"s1","conversation":"c1","kind":"agent"}"#,
                "agent",
            ),
            (
                r#"{"ts":"2026-11-20T10:00:00+08:00","shop":"s1","conversation":"c1","kind":"assign","agent":""}"#,
                "agent",
            ),
            (
                r#"{"ts":"2026-11-20T10:00:00+08:00","shop":"s1","conversation":"c1","kind":"buyer"}"#,
                "buyer",
            ),
            (
                r#"{"ts":"2026-11-20T10:00:00+08:00","shop":"s1","conversation":"c1","buyer":"b1","kind":"rating"}"#,
                "score",
            ),
            (
                r#"{"ts":"2026-11-20T10:00:00+08:00","shop":"","conversation":"c1","buyer":"b1","kind":"bot"}"#,
                "shop",
            ),
        ];
        for (line, field) in cases {
            match Event::from_json(line) {
                Err(EventError::Missing { field: f, .. }) => assert_eq!(f, field, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        // The messages read as English: "an `agent` event", "a `buyer` event".
        let said = |line: &str| Event::from_json(line).unwrap_err().to_string();
        let messages = [
            (
                cases[0].0,
                "an `agent` event needs a non-empty `agent` field",
            ),
            (
                cases[1].0,
                "an `assign` event needs a non-empty `agent` field",
            ),
            (
                cases[2].0,
                "a `buyer` event needs a non-empty `buyer` field",
            ),
            (
                cases[3].0,
                "a `rating` event needs a non-empty `score` field",
            ),
        ];
        for (line, want) in messages {
            assert_eq!(said(line), want, "{line}");
        }
        let unknown_kind =
            r#"{"ts":"2026-11-20T10:00:00+08:00","shop":"s1","conversation":"c1","kind":"wave"}"#;
        assert!(matches!(
            Event::from_json(unknown_kind),
            Err(EventError::Json(_))
        ));
    }
}
