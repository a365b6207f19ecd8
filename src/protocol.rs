//! The WebSocket JSON messages (`docs/PROTOCOL.md` is the reference).
//!
//! Every frame is one UTF-8 JSON object with a `type`. Client messages are
//! parsed into [`ClientMsg`]; a frame that does not parse is classified into
//! an [`ErrorCode`] so the client learns *what* is wrong (not JSON, no type,
//! unknown type, missing field) and the connection stays usable.
//!
//! Server messages are plain `serde_json::Value`-free structs that borrow
//! their text, serialised once per frame.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::events::Rating;
use crate::matcher::Suggestion;
use crate::politeness::Issue;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Agent,
}

/// `{"type":"hello",...}`: the first message of every connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Hello {
    pub role: Role,
    pub shop: String,
    /// Buyer id (role `buyer`).
    #[serde(default)]
    pub buyer: Option<String>,
    /// The secret of a buyer's earlier `welcome`, to rejoin that conversation.
    #[serde(default)]
    pub resume: Option<String>,
    /// Agent id (role `agent`).
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Hello(Hello),
    /// Buyer: a chat message.
    Message {
        text: String,
    },
    /// Agent: a reply in one of their conversations.
    Reply {
        conversation: String,
        text: String,
        #[serde(default)]
        intent: Option<String>,
    },
    /// Agent: check a draft for negative or curt phrasing.
    Lint {
        text: String,
    },
    /// Buyer: rate the service. Parsed as a string so an unknown level gets
    /// its own error code instead of a generic one.
    Rate {
        score: String,
    },
    /// Agent: hand one of their conversations to a colleague (转接).
    Transfer {
        conversation: String,
        to: String,
        /// A word for the colleague (at most [`MAX_NOTE_CHARS`]).
        #[serde(default)]
        note: Option<String>,
    },
}

/// The types a client may send, for error messages.
pub const CLIENT_TYPES: [&str; 6] = ["hello", "message", "reply", "lint", "rate", "transfer"];

/// Characters a transfer's `note` may have: a line for the colleague
/// ("买家问退货运费，已核实订单"), not a second chat.
pub const MAX_NOTE_CHARS: usize = 200;

/// Machine-readable error codes of `{"type":"error"}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// The object has no string `type`.
    MissingType,
    /// `type` is not one of [`CLIENT_TYPES`].
    UnknownType,
    /// A known type with missing or mistyped fields.
    BadMessage,
    /// Anything but `hello` before a successful `hello`.
    HelloFirst,
    /// A second `hello` on the same connection.
    AlreadyHello,
    /// No `hello` within the handshake time.
    HelloTimeout,
    /// The message type is not for this role (a buyer sending `reply`).
    WrongRole,
    /// Unknown agent or wrong/missing token (the socket is closed).
    BadToken,
    /// Too many failed sign-ins for this account lately: refused without
    /// checking the token, with `retry_after` seconds (the socket is
    /// closed).
    TooManyAttempts,
    /// The shop is not served here (the socket is closed).
    UnknownShop,
    /// Someone else holds this buyer's conversation and the resume secret
    /// was missing or wrong (the socket is closed).
    BuyerTaken,
    /// A new buyer's hello while the shop holds
    /// `limits.max_open_conversations` open conversations (the socket is
    /// closed with 1013, try again later).
    ShopBusy,
    /// An id (shop, buyer, agent) is empty, too long or has control characters.
    BadId,
    EmptyText,
    TextTooLong,
    /// A text with a control character other than tab and line breaks.
    ControlCharacters,
    BinaryNotSupported,
    RateLimited,
    /// The conversation does not exist or is not assigned to this agent.
    UnknownConversation,
    /// A transfer to an agent id the shop does not have.
    UnknownAgent,
    /// A transfer to a colleague who is not connected.
    AgentOffline,
    /// A transfer to oneself.
    SelfTransfer,
    BadScore,
    AlreadyRated,
    /// A newer connection took over this session (the socket is closed).
    Replaced,
    /// A buyer's hello on a place kept for staff: the server is at its
    /// connection limit (the socket is closed with 1013, try again later).
    ServerBusy,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::HelloFirst => "hello_first",
            ErrorCode::AlreadyHello => "already_hello",
            ErrorCode::HelloTimeout => "hello_timeout",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::UnknownShop => "unknown_shop",
            ErrorCode::BuyerTaken => "buyer_taken",
            ErrorCode::ShopBusy => "shop_busy",
            ErrorCode::BadId => "bad_id",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::ControlCharacters => "control_characters",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownConversation => "unknown_conversation",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::AgentOffline => "agent_offline",
            ErrorCode::SelfTransfer => "self_transfer",
            ErrorCode::BadScore => "bad_score",
            ErrorCode::AlreadyRated => "already_rated",
            ErrorCode::Replaced => "replaced",
            ErrorCode::ServerBusy => "server_busy",
        }
    }
}

/// A refused client message: the code and a sentence saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds to wait before trying again, when the refusal says.
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The refusal of a sign-in whose account has spent its budget of
    /// failures: try again in `retry_after` seconds.
    pub fn too_many_attempts(retry_after: u64) -> Refusal {
        Refusal {
            code: ErrorCode::TooManyAttempts,
            message: format!(
                "这个账号登录失败的次数太多，为保护账号已暂停登录，\
                 请 {retry_after} 秒后再试 (too many failed sign-ins for this account; \
                 try again in {retry_after} s)"
            ),
            retry_after: Some(retry_after),
        }
    }

    /// The `{"type":"error"}` frame for this refusal.
    pub fn to_json(&self) -> String {
        to_json(&ServerMsg::Error {
            code: self.code,
            message: &self.message,
            retry_after: self.retry_after,
        })
    }
}

/// Parses one text frame, classifying failures.
pub fn parse(text: &str) -> Result<ClientMsg, Refusal> {
    if let Some(msg) = parse_hot(text) {
        return Ok(msg);
    }
    match serde_json::from_str::<ClientMsg>(text) {
        Ok(msg) => Ok(msg),
        Err(e) => Err(classify(text, &e)),
    }
}

/// The fields of the frames that come with every buyer message (the
/// buyer's `message`, the agent's `reply`), borrowed from the frame.
#[derive(Deserialize)]
struct Hot<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conversation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    intent: Option<Cow<'a, str>>,
}

/// A well-formed `message` or `reply` in one pass. serde reads an
/// internally tagged enum such as [`ClientMsg`] twice, buffering the whole
/// object before it knows the variant; that was most of the parsing cost.
/// `None` for anything else (other types, missing or mistyped fields, bad
/// JSON), which [`parse`] then reads the general way, errors and all: the
/// two must agree wherever this one answers (tested).
fn parse_hot(text: &str) -> Option<ClientMsg> {
    let hot: Hot = serde_json::from_str(text).ok()?;
    match (&*hot.kind, hot.text, hot.conversation) {
        ("message", Some(text), _) => Some(ClientMsg::Message {
            text: text.into_owned(),
        }),
        ("reply", Some(text), Some(conversation)) => Some(ClientMsg::Reply {
            conversation: conversation.into_owned(),
            text: text.into_owned(),
            intent: hot.intent.map(Cow::into_owned),
        }),
        _ => None,
    }
}

/// Finds out why a frame did not parse (only on the error path, so the
/// second parse costs nothing in normal operation).
fn classify(text: &str, err: &serde_json::Error) -> Refusal {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return Refusal::new(
                ErrorCode::BadJson,
                format!("the frame is not valid JSON ({err}); send one JSON object per frame"),
            )
        }
    };
    let Some(obj) = value.as_object() else {
        return Refusal::new(
            ErrorCode::BadJson,
            "the frame is JSON but not an object; send {\"type\":...}",
        );
    };
    let Some(ty) = obj.get("type").and_then(|t| t.as_str()) else {
        return Refusal::new(
            ErrorCode::MissingType,
            "the object has no string field `type`",
        );
    };
    if !CLIENT_TYPES.contains(&ty) {
        return Refusal::new(
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{}`; use one of {}",
                truncate(ty, 40),
                CLIENT_TYPES.join(", ")
            ),
        );
    }
    // serde_json's data errors name the field ("missing field `text`").
    let mut detail = err.to_string();
    if let Some(i) = detail.find(" at line ") {
        detail.truncate(i);
    }
    Refusal::new(
        ErrorCode::BadMessage,
        format!("bad `{ty}` message: {detail}"),
    )
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Who wrote a line of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    Buyer,
    Agent,
    Bot,
    /// The service, for staff only: a transfer's record (`note`
    /// `transferred`: `agent` handed the conversation to `to`, `text` the
    /// sender's note, empty when they wrote none). Agents see it wherever
    /// history travels; the buyer never does (see `Conv::buyer_lines`).
    System,
}

/// One line of a conversation's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line<'a> {
    pub from: Author,
    /// The agent's id: in lines for agents only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<&'a str>,
    /// The agent's display name: in lines for the buyer, when the shop
    /// configured one (see [`ServerMsg::Reply`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<&'a str>,
    /// The receiving agent of a transfer's `system` line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    pub text: &'a str,
    pub at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'a str>,
}

/// A conversation as an agent sees it when it is given to them.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationView<'a> {
    pub conversation: &'a str,
    pub buyer: &'a str,
    /// Whether the buyer is connected right now.
    pub online: bool,
    /// Start of the waiting round (unix ms), if the buyer waits for a reply.
    pub waiting_since: Option<i64>,
    pub deadline: Option<i64>,
    pub history: Vec<Line<'a>>,
    /// Suggestions for the latest buyer message while the buyer waits.
    pub suggestions: &'a [Suggestion],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rated: Option<Rating>,
}

/// Another agent of the shop, as the transfer control lists them.
#[derive(Debug, Clone, Serialize)]
pub struct Colleague<'a> {
    pub agent: &'a str,
    /// The display name, `null` when the shop set none.
    pub name: Option<&'a str>,
    pub online: bool,
    /// Taken off the shop's staff (a settings reload): drop them from the
    /// list. Sent only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// Clock settings an agent's page needs for its countdown.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClockView {
    pub target_ms: u64,
    pub nudge_ms: u64,
}

/// Where the phrase libraries in use were loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhraseSource {
    /// The phrase directory (`--phrases`).
    #[default]
    Directory,
    /// The copy of the last libraries that loaded, in the data directory:
    /// the directory did not load when the service started.
    LastGood,
}

/// The phrase libraries in use and the state of the files on disk, in an
/// agent's `welcome` (`phrases`).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PhraseStatus {
    /// Whether the files on disk are what is in use; `false` when they have
    /// problems (a broken edit, a removed library) and older libraries serve.
    pub ok: bool,
    pub source: PhraseSource,
    /// When the libraries in use went into use (unix ms).
    pub since: i64,
    /// Their files, by name.
    pub files: Vec<String>,
    pub intents: usize,
    /// What is wrong with the files on disk (`file:line:column: message`);
    /// empty when `ok`.
    pub problems: Vec<String>,
}

/// A message from the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    /// To a buyer after `hello`.
    #[serde(rename = "welcome")]
    BuyerWelcome {
        role: Role,
        conversation: &'a str,
        shop: &'a str,
        shop_name: &'a str,
        /// Present this in a later `hello` to rejoin the conversation.
        resume: &'a str,
        resumed: bool,
        history: Vec<Line<'a>>,
        /// Messages of the buyer the conversation has taken so far (refused
        /// ones not counted): the messages a page sent since its previous
        /// welcome that arrived are the first `received` − that welcome's
        /// `received` of them.
        received: u64,
        /// The longest `text` the server takes, in characters
        /// (`limits.max_text_chars`): the page's counter and its check
        /// before sending follow the shop's setting, not a copy of the
        /// default (found by review).
        max_text_chars: usize,
        /// The buyer's rating, once given: a page reloaded after rating
        /// must not offer the rating again.
        #[serde(skip_serializing_if = "Option::is_none")]
        rated: Option<Rating>,
    },
    /// To an agent after `hello`.
    #[serde(rename = "welcome")]
    AgentWelcome {
        role: Role,
        agent: &'a str,
        shop: &'a str,
        shop_name: &'a str,
        clock: ClockView,
        /// The shop's other agents: whom a conversation can be handed to.
        colleagues: Vec<Colleague<'a>>,
        conversations: Vec<ConversationView<'a>>,
        /// The phrase libraries in use and any problem with the files on disk.
        phrases: &'a PhraseStatus,
        /// The longest reply or draft the server takes, in characters
        /// (`limits.max_text_chars`), for the page's counter and checks.
        max_text_chars: usize,
        /// The server's clock (Unix ms) when the frame was sent: the page
        /// learns its clock's offset from it before any stamped frame.
        now: i64,
    },
    /// To a buyer: a bot or agent message. An agent's message carries the
    /// agent's display name if the shop configured one, never the agent's
    /// id: the id is half of the agent's sign-in, and a buyer who knows it
    /// can spend the agent's sign-in budget (found by review).
    Reply {
        conversation: &'a str,
        from: Author,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_name: Option<&'a str>,
        text: &'a str,
        at: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<&'a str>,
    },
    /// To the owning agent: a buyer message with its suggestions.
    BuyerMessage {
        conversation: &'a str,
        buyer: &'a str,
        text: &'a str,
        at: i64,
        waiting_since: i64,
        deadline: i64,
        suggestions: &'a [Suggestion],
    },
    /// To the owning agent: what the bot told the buyer.
    BotReply {
        conversation: &'a str,
        text: &'a str,
        at: i64,
        note: &'a str,
    },
    /// To the agent: their reply was delivered (or stored for an absent buyer).
    ReplySent {
        conversation: &'a str,
        at: i64,
        /// The round this reply ended, in ms (null when no buyer waited).
        response_ms: Option<i64>,
        delivered: bool,
    },
    Nudge {
        conversation: &'a str,
        buyer: &'a str,
        waiting_since: i64,
        deadline: i64,
        at: i64,
    },
    Breach {
        conversation: &'a str,
        buyer: &'a str,
        waiting_since: i64,
        deadline: i64,
        at: i64,
    },
    /// To an agent: a conversation is now theirs (new buyer, moved from an
    /// agent who left, or waiting while no agent was online).
    ConversationAssigned {
        reason: &'a str,
        /// A transfer's sender and their note for the receiver.
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<&'a str>,
        #[serde(flatten)]
        view: ConversationView<'a>,
        /// The server's clock (Unix ms) when the frame was sent.
        now: i64,
    },
    /// To the agent who handed a conversation on: it is no longer theirs.
    ConversationTransferred {
        conversation: &'a str,
        to: &'a str,
        at: i64,
    },
    /// To the other agents of the shop: a colleague came online or left.
    Colleague(Colleague<'a>),
    /// To an agent: several conversations are now theirs at once (moved
    /// from an agent who left, or buyers who waited while nobody was
    /// online), in one frame rather than one each: a move of hundreds must
    /// not overflow the agent's outbound queue and get them dropped.
    ConversationsAssigned {
        reason: &'a str,
        conversations: Vec<ConversationView<'a>>,
    },
    /// To an agent: the buyer left for good and the conversation is over.
    ConversationClosed {
        conversation: &'a str,
        /// Why: `expired` (the buyer stayed away past the resume window),
        /// `empty` (the buyer left a conversation nobody chatted in and was
        /// not back within a minute) or `secret_lost` (after a new resume
        /// key, the buyer came back without a secret that could verify and
        /// got a new conversation).
        reason: &'static str,
    },
    /// To an agent: the buyer connected or disconnected.
    Presence { conversation: &'a str, online: bool },
    LintResult {
        text: &'a str,
        ok: bool,
        issues: &'a [Issue],
    },
    /// To the buyer (no `conversation`) and to the agent.
    Rated {
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<&'a str>,
        score: Rating,
    },
    /// To agents after the phrase libraries changed on disk.
    Reload {
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        intents: Option<usize>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        errors: &'a [String],
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        /// Seconds to wait before trying again (`too_many_attempts`).
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

/// Serialises a server message. Our types always serialise.
pub fn to_json(msg: &ServerMsg<'_>) -> String {
    serde_json::to_string(msg).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialise a server message");
        r#"{"type":"error","code":"internal","message":"internal error"}"#.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_good_messages() {
        let cases: &[(&str, ClientMsg)] = &[
            (
                r#"{"type":"hello","role":"buyer","shop":"s1","buyer":"b1"}"#,
                ClientMsg::Hello(Hello {
                    role: Role::Buyer,
                    shop: "s1".into(),
                    buyer: Some("b1".into()),
                    resume: None,
                    agent: None,
                    token: None,
                }),
            ),
            (
                r#"{"type":"message","text":"在吗"}"#,
                ClientMsg::Message {
                    text: "在吗".into(),
                },
            ),
            (
                r#"{"type":"reply","conversation":"c1","text":"亲，在的","intent":null}"#,
                ClientMsg::Reply {
                    conversation: "c1".into(),
                    text: "亲，在的".into(),
                    intent: None,
                },
            ),
            (
                r#"{"type":"rate","score":"satisfied"}"#,
                ClientMsg::Rate {
                    score: "satisfied".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse(text).unwrap(), want, "{text}");
        }
    }

    /// Wherever the one-pass reading answers, the general one agrees; and
    /// it answers for the frames it is there for.
    #[test]
    fn the_hot_path_agrees_with_the_general_one() {
        let cases: &[(&str, bool)] = &[
            (r#"{"type":"message","text":"在吗"}"#, true),
            (r#"{"text":"在吗？\n\"急\"","type":"message"}"#, true),
            (r#"{"type":"message","text":"x","extra":[1,{"a":2}]}"#, true),
            (r#"{"type":"message","text":"x","conversation":"c1"}"#, true),
            (
                r#"{"type":"reply","conversation":"c1","text":"亲，在的"}"#,
                true,
            ),
            (
                r#"{"type":"reply","conversation":"c1","text":"亲","intent":"greeting"}"#,
                true,
            ),
            (
                r#"{"type":"reply","conversation":"c1","text":"亲","intent":null}"#,
                true,
            ),
            // The general way: errors, other types, odd shapes.
            (r#"{"type":"message"}"#, false),
            (r#"{"type":"message","text":5}"#, false),
            (r#"{"type":"message","text":null}"#, false),
            (r#"{"type":"message","text":"x","text":"y"}"#, false),
            (r#"{"type":"reply","text":"亲"}"#, false),
            (r#"{"type":"reply","conversation":7,"text":"亲"}"#, false),
            (r#"{"type":"message","text":"x","conversation":5}"#, false),
            (r#"{"type":"rate","score":"satisfied"}"#, false),
            (r#"{"type":"lint","text":"不行"}"#, false),
            (
                r#"{"type":"hello","role":"buyer","shop":"s1","buyer":"b1"}"#,
                false,
            ),
            (r#"{"type":5,"text":"x"}"#, false),
            (r#"["message"]"#, false),
            (r#"{"type":"message","text":"x""#, false),
        ];
        for (text, hot) in cases {
            let general =
                serde_json::from_str::<ClientMsg>(text).map_err(|e| classify(text, &e).to_json());
            match parse_hot(text) {
                Some(msg) => {
                    assert!(*hot, "{text}: not meant for the hot path");
                    assert_eq!(Ok(msg), general, "{text}");
                }
                None => assert!(!*hot, "{text}: meant for the hot path"),
            }
            assert_eq!(
                parse(text).map_err(|r| r.to_json()),
                general,
                "{text}: parse as the general way"
            );
        }
    }

    #[test]
    fn classify_bad_frames() {
        let cases: &[(&str, ErrorCode)] = &[
            ("not json", ErrorCode::BadJson),
            ("{\"type\":", ErrorCode::BadJson),
            ("[1,2]", ErrorCode::BadJson),
            ("{}", ErrorCode::MissingType),
            ("{\"type\":7}", ErrorCode::MissingType),
            ("{\"type\":\"dance\"}", ErrorCode::UnknownType),
            ("{\"type\":\"message\"}", ErrorCode::BadMessage),
            ("{\"type\":\"message\",\"text\":5}", ErrorCode::BadMessage),
            (
                "{\"type\":\"hello\",\"role\":\"boss\",\"shop\":\"s1\"}",
                ErrorCode::BadMessage,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err().code, *want, "{text}");
        }
        let e = parse("{\"type\":\"message\"}").unwrap_err();
        assert!(e.message.contains("missing field `text`"), "{}", e.message);
    }

    #[test]
    fn server_messages_serialise_as_documented() {
        let m = ServerMsg::Error {
            code: ErrorCode::HelloFirst,
            message: "say hello first",
            retry_after: None,
        };
        assert_eq!(
            to_json(&m),
            r#"{"type":"error","code":"hello_first","message":"say hello first"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&Refusal::too_many_attempts(42).to_json()).unwrap();
        assert_eq!(v["code"], "too_many_attempts");
        assert_eq!(v["retry_after"], 42);
        assert!(v["message"].as_str().unwrap().contains("42 秒"), "{v}");
        let m = ServerMsg::Reply {
            conversation: "c1",
            from: Author::Bot,
            agent_name: None,
            text: "亲",
            at: 5,
            note: Some("greeting"),
        };
        assert_eq!(
            to_json(&m),
            r#"{"type":"reply","conversation":"c1","from":"bot","text":"亲","at":5,"note":"greeting"}"#
        );
        let m = ServerMsg::Reload {
            ok: true,
            intents: Some(3),
            errors: &[],
        };
        assert_eq!(to_json(&m), r#"{"type":"reload","ok":true,"intents":3}"#);
    }
}
