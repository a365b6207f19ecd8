//! The event record: what happened in a conversation, and when.
//!
//! The same record is written by the service to the store, exported as JSON
//! lines (`kefu events export`), and read back by the reports, so a shop can
//! compute reports from chat logs it already has. One JSON object per line:
//!
//! ```json
//! {"ts":"2026-11-20T10:00:03.250+08:00","shop":"s1","conversation":"c1","buyer":"b1","kind":"buyer","text":"在吗"}
//! ```

use serde::{Deserialize, Serialize};

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
    /// The conversation was given to `agent` (first assignment or a move).
    Assign,
    /// A satisfaction rating (`score`).
    Rating,
    /// The agent was nudged: the round nears the target.
    Nudge,
    /// The round passed the target.
    Breach,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Buyer => "buyer",
            Kind::Agent => "agent",
            Kind::Bot => "bot",
            Kind::Assign => "assign",
            Kind::Rating => "rating",
            Kind::Nudge => "nudge",
            Kind::Breach => "breach",
        }
    }
}

/// The five satisfaction levels of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    VerySatisfied,
    Satisfied,
    Neutral,
    Dissatisfied,
    VeryDissatisfied,
}

impl Rating {
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
    pub shop: String,
    pub conversation: String,
    pub buyer: String,
    pub kind: Kind,
    /// Agent of `agent`, `assign`, `nudge` and `breach` events.
    pub agent: Option<String>,
    pub text: Option<String>,
    /// Suggested intent an agent reply used; for a buyer message, the
    /// best-ranked intent when the service saw it.
    pub intent: Option<String>,
    /// Stage of a buyer message as the service ranked it.
    pub stage: Option<String>,
    pub score: Option<Rating>,
    /// Free-form detail, e.g. `greeting` or `holding` for bot events.
    pub note: Option<String>,
}

impl Event {
    /// A bare event of `kind`; fill the optional fields as needed.
    pub fn new(ts_ms: i64, shop: &str, conversation: &str, buyer: &str, kind: Kind) -> Event {
        Event {
            ts_ms,
            shop: shop.to_string(),
            conversation: conversation.to_string(),
            buyer: buyer.to_string(),
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
