//! Phrase libraries: the YAML files a shop edits, loaded and validated.
//!
//! A phrase directory holds one library file per stage of a sale (any
//! `*.yaml` with a top-level `stage:`), plus two special files:
//! `templates.yaml` (auto-greeting and holding replies) and
//! `politeness.yaml` (rules for agent drafts). The format is documented for
//! shop owners in `phrases/README.md`.
//!
//! Loading never stops at the first problem: a shop owner fixing a file
//! wants the whole list, each with file, line and column, in one go.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::normalize::normalize;
use crate::politeness::PolitenessRules;
use crate::yaml;

/// The three stages of a sale, in the order an order lives through them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    PreSale,
    InSale,
    AfterSale,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::PreSale, Stage::InSale, Stage::AfterSale];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreSale => "pre_sale",
            Stage::InSale => "in_sale",
            Stage::AfterSale => "after_sale",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The Chinese name agents know the stage by.
    pub fn label(self) -> &'static str {
        match self {
            Stage::PreSale => "售前",
            Stage::InSale => "售中",
            Stage::AfterSale => "售后",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Placeholders a reply may use; anything else in braces is a typo.
pub const PLACEHOLDERS: [&str; 3] = ["shop", "agent", "buyer"];

/// A keyword with its weight (how strongly it alone points at the intent).
#[derive(Debug, Clone, PartialEq)]
pub struct Keyword {
    pub text: String,
    /// `None` means "derive from the keyword's length" (see the matcher).
    pub weight: Option<f32>,
}

/// One reply variant of an intent.
///
/// An intent covers several sub-questions (退货 or 换货, 包邮 or 讲价), and a
/// reply that answers one of them is wrong for the others; `when` says which
/// messages a reply is written for, so the matcher shows the one that
/// answers what was asked (see `Matcher::suggest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    /// Cue words: the reply fits a message holding one of them (normalised
    /// like keywords; `#` stands for any digit, so `#kg` finds `70kg`).
    /// Empty for a general reply, one that fits any message of the intent.
    pub when: Vec<String>,
}

impl Reply {
    /// A reply without cues, for any message of its intent.
    pub fn general(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            when: Vec::new(),
        }
    }

    pub fn is_general(&self) -> bool {
        self.when.is_empty()
    }
}

impl From<&str> for Reply {
    fn from(text: &str) -> Reply {
        Reply::general(text)
    }
}

/// One intent of one stage, as loaded and validated.
#[derive(Debug, Clone)]
pub struct Intent {
    pub id: String,
    pub stage: Stage,
    pub keywords: Vec<Keyword>,
    pub patterns: Vec<String>,
    pub exclude: Vec<String>,
    pub replies: Vec<Reply>,
    /// Multiplies the intent's score; below 1 for "filler" intents such as a
    /// greeting, which should lose to a real request in the same message.
    pub priority: f32,
}

/// Auto-greeting and holding-reply templates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    /// Sent by the bot when a buyer opens a chat.
    pub greeting: Vec<String>,
    /// Sent by the bot once per round when the buyer waits too long.
    pub holding: Vec<String>,
    /// Sent by the bot when no agent of the shop is online.
    #[serde(default)]
    pub offline: Vec<String>,
    /// Sent by the bot when an agent hands the conversation to a colleague
    /// (转接); without one, a built-in line (`hub::TRANSFER_LINE`).
    #[serde(default)]
    pub transfer: Vec<String>,
}

/// Everything loaded from a phrase directory.
#[derive(Debug, Clone)]
pub struct Library {
    pub intents: Vec<Intent>,
    pub templates: Templates,
    pub politeness: PolitenessRules,
}

impl Library {
    /// Loads and validates every file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<Library, LoadErrors> {
        LoadedDir::load(dir).map(|l| l.library)
    }

    pub fn intent(&self, id: &str) -> Option<&Intent> {
        self.intents.iter().find(|i| i.id == id)
    }

    /// The ids of [`REQUIRED_INTENTS`] this library does not hold, in the
    /// list's order. A library that loads may still lack some: `kefu check`
    /// fails on it, `kefu serve` serves it with a warning (a shop trying a
    /// first, small library still gets suggestions for what it wrote).
    pub fn missing_required(&self) -> Vec<&'static str> {
        let have: std::collections::HashSet<&str> =
            self.intents.iter().map(|i| i.id.as_str()).collect();
        REQUIRED_INTENTS
            .iter()
            .copied()
            .filter(|id| !have.contains(id))
            .collect()
    }
}

/// The intent ids every library must hold, with exactly these names: the
/// project's taxonomy (`spec/intents.md` in the team's shared folder; the
/// labelled corpus and the reports' stages use them, and the matcher gives
/// four of them a role of their own). A library may add more.
pub const REQUIRED_INTENTS: [&str; 29] = [
    "pre_sale.greeting",
    "pre_sale.product_info",
    "pre_sale.authenticity",
    "pre_sale.size_advice",
    "pre_sale.stock",
    "pre_sale.price_bargain",
    "pre_sale.promotion",
    "pre_sale.recommend",
    "pre_sale.how_to_buy",
    "pre_sale.closing",
    "pre_sale.human_agent",
    "in_sale.payment",
    "in_sale.order_status",
    "in_sale.order_change",
    "in_sale.address_change",
    "in_sale.shipping_time",
    "in_sale.courier",
    "in_sale.logistics",
    "in_sale.delivery_issue",
    "in_sale.invoice",
    "in_sale.installation",
    "after_sale.return_exchange",
    "after_sale.refund",
    "after_sale.quality_issue",
    "after_sale.wrong_item",
    "after_sale.missing_item",
    "after_sale.complaint",
    "after_sale.warranty_repair",
    "after_sale.usage_help",
];

/// One YAML file of a phrase directory that loaded: its name, what it
/// held, and its exact bytes (so the service can keep a copy of the
/// libraries it serves, see `kefu serve`'s last-good copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedFile {
    /// The file name within the directory (`pre_sale.yaml`).
    pub name: String,
    /// The stage of a stage library; `None` for `templates.yaml` and
    /// `politeness.yaml`.
    pub stage: Option<Stage>,
    /// Intents the file holds (0 for the special files).
    pub intents: usize,
    /// The file as read.
    pub bytes: Vec<u8>,
}

/// A phrase directory that loaded: the library and the files it came from.
#[derive(Debug, Clone)]
pub struct LoadedDir {
    pub library: Library,
    /// Every YAML file read, by name.
    pub files: Vec<LoadedFile>,
}

impl LoadedDir {
    /// Loads and validates every file of `dir`, keeping what each file held.
    pub fn load(dir: &Path) -> Result<LoadedDir, LoadErrors> {
        Loader::default().load(dir)
    }

    /// What this load would lose of the libraries in force (`in_force`,
    /// the files of the previous load): a stage library file of theirs that
    /// is gone, or a stage that had intents and would have none. A hot
    /// reload refuses such a change (a stray `rm`, a half-finished sync)
    /// rather than let every suggestion of a stage stop without a word;
    /// removing a library on purpose takes a restart. Empty when nothing is
    /// lost. `dir` is the directory the problems name.
    pub fn losses(&self, in_force: &[LoadedFile], dir: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut reported: Vec<Stage> = Vec::new();
        for old in in_force {
            let Some(stage) = old.stage.filter(|_| old.intents > 0) else {
                continue;
            };
            if self.files.iter().any(|f| f.name == old.name) {
                continue;
            }
            problems.push(Problem {
                file: dir.join(&old.name),
                line: 1,
                column: 1,
                kind: ProblemKind::LibraryFileGone {
                    stage,
                    intents: old.intents,
                },
            });
            reported.push(stage);
        }
        for stage in Stage::ALL {
            let had: usize = in_force
                .iter()
                .filter(|f| f.stage == Some(stage))
                .map(|f| f.intents)
                .sum();
            let has = self
                .library
                .intents
                .iter()
                .filter(|i| i.stage == stage)
                .count();
            if had > 0 && has == 0 && !reported.contains(&stage) {
                // Where the stage was: its first file in force.
                let name = in_force
                    .iter()
                    .find(|f| f.stage == Some(stage) && f.intents > 0)
                    .map_or("", |f| f.name.as_str());
                problems.push(Problem {
                    file: dir.join(name),
                    line: 1,
                    column: 1,
                    kind: ProblemKind::StageEmptied {
                        stage,
                        intents: had,
                    },
                });
            }
        }
        problems
    }
}

/// What is wrong, without where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    Io(String),
    /// The file is not UTF-8; the problem's position is the first bad byte.
    NotUtf8 {
        /// The first byte that is not UTF-8.
        byte: u8,
    },
    /// A hot reload would drop a stage library file of the libraries in
    /// force (see [`LoadedDir::losses`]).
    LibraryFileGone {
        stage: Stage,
        intents: usize,
    },
    /// A hot reload would leave a stage that had `intents` without any.
    StageEmptied {
        stage: Stage,
        intents: usize,
    },
    /// The phrase directory itself cannot be listed (missing, not a
    /// directory, no permission).
    DirUnreadable(String),
    Syntax(String),
    DuplicateId {
        id: String,
        first: String,
    },
    UnknownStage(String),
    IdStageMismatch {
        id: String,
        stage: String,
    },
    BadId(String),
    NoKeywords(String),
    /// An intent's keyword, exclusion or pattern (`what`) is empty.
    EmptyKeyword {
        id: String,
        what: &'static str,
    },
    /// A politeness phrase names a slot (`{name}`) that `slots:` does not
    /// define: it would be matched literally, braces and all, and never.
    UnknownSlot {
        phrase: String,
    },
    /// Rule `rule` (1-based) of politeness list `list` has an empty phrase.
    EmptyRulePhrase {
        list: &'static str,
        rule: usize,
    },
    InvalidRegex {
        id: String,
        pattern: String,
        error: String,
    },
    /// A pattern holds an upper-case letter: messages are lower-cased
    /// before they are matched, so it can never match (`\d+KG重量` passed
    /// the check and matched nothing; found by review).
    UpperCasePattern {
        id: String,
        pattern: String,
        letter: char,
    },
    TooFewReplies {
        id: String,
        count: usize,
    },
    EmptyReply(String),
    /// Every reply of the intent has `when:` cues, so a message naming none
    /// of them would get no fitting reply.
    NoGeneralReply(String),
    /// A reply has `when:` without any cue word (`when: []`).
    NoCues(String),
    /// Template list `key` (`greeting`, `holding`, ...) has a blank entry,
    /// which the bot would send as an empty line.
    EmptyTemplate(&'static str),
    /// A greeting that does not name the shop (`{shop}`): a buyer who opens
    /// a chat is greeted with the shop's name (found by review: passed).
    GreetingWithoutShop,
    UnknownPlaceholder {
        placeholder: String,
    },
    UnclosedPlaceholder,
    BadWeight {
        id: String,
        keyword: String,
    },
    /// An intent's `priority` is not a number in (0, 2]: 0, a negative
    /// or NaN silenced the intent, a huge one let it win over every other
    /// (found by review).
    BadPriority {
        id: String,
        /// As written back (`NaN`, `inf`, `-1`).
        priority: String,
    },
    /// `politeness.yaml` has neither a `negative:` nor a `curt:` list: an
    /// emptied file turned the check off and, accepted, replaced the last
    /// good copy (found by review). Lists written empty are taken: that
    /// turns the check off on purpose.
    NoPolitenessRules,
    /// A politeness phrase stands for more strings than the check takes
    /// (its slots multiplied): one phrase of eleven slots ran the service
    /// out of memory at a reload (found by review).
    TooManyExpansions {
        phrase: String,
        count: u64,
    },
    MissingFile(&'static str),
    NoLibraries,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProblemKind::*;
        match self {
            Io(e) => write!(f, "cannot read file: {e}"),
            NotUtf8 { byte } => write!(
                f,
                "the file is not valid UTF-8 here (byte 0x{byte:02X}); save it with UTF-8 encoding"
            ),
            LibraryFileGone { stage, intents } => write!(
                f,
                "this library file is gone but its {intents} intent(s) of stage {stage} ({}) are \
                 in use: reload refused, the libraries in use stay; put the file back, or restart \
                 kefu serve to remove it on purpose",
                stage.label()
            ),
            StageEmptied { stage, intents } => write!(
                f,
                "stage {stage} ({}) would have no intents left (it has {intents} in use): reload \
                 refused, the libraries in use stay; put its intents back, or restart kefu serve \
                 to remove the stage on purpose",
                stage.label()
            ),
            DirUnreadable(e) => write!(
                f,
                "cannot read the phrase directory: {e}; check the path (--phrases DIR)"
            ),
            Syntax(e) => write!(f, "YAML error: {e}"),
            DuplicateId { id, first } => {
                write!(f, "duplicate intent id `{id}` (first defined at {first}); give each intent its own id")
            }
            UnknownStage(s) => write!(
                f,
                "unknown stage `{s}`; use one of pre_sale, in_sale, after_sale"
            ),
            IdStageMismatch { id, stage } => write!(
                f,
                "intent id `{id}` does not start with this file's stage `{stage}.`"
            ),
            BadId(id) => write!(
                f,
                "intent id `{id}` is not of the form stage.name (lower case letters, digits, _)"
            ),
            NoKeywords(id) => write!(
                f,
                "intent `{id}` has neither keywords nor patterns, so it can never match"
            ),
            EmptyKeyword { id, what } => write!(
                f,
                "intent `{id}` has an empty {what}; write its text or delete the entry"
            ),
            EmptyRulePhrase { list, rule } => write!(
                f,
                "politeness rule {rule} of `{list}` has an empty phrase; write the phrase to \
                 flag or delete the rule"
            ),
            InvalidRegex { id, pattern, error } => {
                write!(f, "intent `{id}`: invalid regex `{pattern}`: {error}")
            }
            UpperCasePattern {
                id,
                pattern,
                letter,
            } => write!(
                f,
                "intent `{id}`: pattern `{pattern}` has the upper-case letter `{letter}`, which \
                 never matches: messages are lower-cased (and full-width letters made \
                 half-width) before matching; write it in lower case"
            ),
            TooFewReplies { id, count } => write!(
                f,
                "intent `{id}` has {count} reply variant(s); give at least two"
            ),
            EmptyReply(id) => write!(f, "intent `{id}` has a reply without text"),
            NoGeneralReply(id) => write!(
                f,
                "intent `{id}` has no general reply (one without `when:`); add one that fits any \
                 message of the intent, for buyers who name none of the cues"
            ),
            NoCues(id) => write!(
                f,
                "intent `{id}` has a reply with an empty `when:`; list its cue words, or write \
                 the reply as plain text to make it general"
            ),
            UnknownSlot { phrase } => write!(
                f,
                "politeness phrase `{phrase}` names a slot that `slots:` does not define; \
                 fix the name or add the slot"
            ),
            EmptyTemplate(key) => write!(
                f,
                "template list `{key}` has an entry without text (the bot would send a blank line): write the message or delete the entry"
            ),
            GreetingWithoutShop => write!(
                f,
                "this greeting does not name the shop: put {{shop}} in every greeting (亲，欢迎光临{{shop}}！…)"
            ),
            UnknownPlaceholder { placeholder } => write!(
                f,
                "unknown placeholder `{{{placeholder}}}`; use {{shop}}, {{agent}} or {{buyer}}"
            ),
            UnclosedPlaceholder => write!(f, "a `{{` without its closing `}}`"),
            BadWeight { id, keyword } => write!(
                f,
                "intent `{id}`: keyword `{keyword}` has a weight outside 0-1"
            ),
            BadPriority { id, priority } => write!(
                f,
                "intent `{id}`: priority {priority} is outside 0-2 (above 0); keep 1.0 for real \
                 requests and lower it (0.5) for greetings and thanks that should give way"
            ),
            NoPolitenessRules => write!(
                f,
                "no politeness rules: the file has neither `negative:` nor `curt:`, which \
                 would turn the check of agents' drafts off; write the rules back (the service \
                 keeps a copy in its data directory, phrases.last-good/politeness.yaml), or \
                 write `negative: []` to turn the check off on purpose"
            ),
            TooManyExpansions { phrase, count } => write!(
                f,
                "politeness phrase `{phrase}` stands for {count} strings (its slots multiplied), \
                 over {MAX_EXPANSIONS}; use fewer slots in one phrase, or split it into rules"
            ),
            MissingFile(name) => write!(f, "missing file `{name}`"),
            NoLibraries => write!(
                f,
                "no stage library found (expected files such as pre_sale.yaml with `stage:`)"
            ),
        }
    }
}

/// One problem found while loading, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.kind
        )
    }
}

/// Every problem of a phrase directory; loading fails when there is any.
#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<Problem>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the phrase libraries:", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

// ---- raw YAML shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLibrary {
    stage: String,
    #[serde(default)]
    intents: Vec<RawIntent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    id: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    keywords: Vec<RawKeyword>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    replies: Vec<RawReply>,
    #[serde(default)]
    priority: Option<f32>,
}

enum RawReply {
    Plain(String),
    Cued(RawCuedReply),
}

impl<'de> Deserialize<'de> for RawReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = StrOrMap::new("a reply: text (亲，…) or {text: 亲，…, when: [包邮, 运费]}");
        Ok(match d.deserialize_any(v)? {
            Entry::Text(t) => RawReply::Plain(t),
            Entry::Map(m) => RawReply::Cued(m),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCuedReply {
    text: String,
    /// `None` when not written (a general reply written long-hand);
    /// `Some(empty)` is a mistake the loader reports.
    #[serde(default)]
    when: Option<Vec<String>>,
}

enum RawKeyword {
    Plain(String),
    Weighted { text: String, weight: f32 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeighted {
    text: String,
    weight: f32,
}

impl<'de> Deserialize<'de> for RawKeyword {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v =
            StrOrMap::<RawWeighted>::new("a keyword: text (还有货) or {text: 还有货, weight: 0.5}");
        Ok(match d.deserialize_any(v)? {
            Entry::Text(t) => RawKeyword::Plain(t),
            Entry::Map(w) => RawKeyword::Weighted {
                text: w.text,
                weight: w.weight,
            },
        })
    }
}

/// A list entry written as text or as a map.
enum Entry<M> {
    Text(String),
    Map(M),
}

/// Reads a list entry that is text or a map (`{text: …, weight: …}`).
///
/// Why not serde's untagged enum: it reads the entry into a buffer first
/// and then tries each shape, so an error lost both its place and its
/// cause: `{text: 咨询订单, wieght: 0.5}` was reported at the list's first
/// entry as "expected a keyword", the typo never named, and so was an
/// unquoted `- 618` (found by review). Here a map's own error (an unknown
/// field, a missing `text`) comes from the map, where it is written, and a
/// number or a true/false says to quote it.
struct StrOrMap<M> {
    expecting: &'static str,
    map: std::marker::PhantomData<M>,
}

impl<M> StrOrMap<M> {
    fn new(expecting: &'static str) -> Self {
        StrOrMap {
            expecting,
            map: std::marker::PhantomData,
        }
    }

    fn quote<E: serde::de::Error>(&self, v: impl fmt::Display) -> Result<Entry<M>, E> {
        Err(E::custom(format_args!(
            "`{v}` is read as a number or true/false, not as text: write it in quotes (\"{v}\"); \
             expected {}",
            self.expecting
        )))
    }
}

impl<'de, M: Deserialize<'de>> serde::de::Visitor<'de> for StrOrMap<M> {
    type Value = Entry<M>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Entry::Text(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Entry::Text(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.quote(v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.quote(v)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.quote(v)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.quote(v)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        M::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Entry::Map)
    }
}

// ---- loader ----------------------------------------------------------------

const TEMPLATES_FILE: &str = "templates.yaml";
const POLITENESS_FILE: &str = "politeness.yaml";

/// The most strings one politeness phrase may stand for: the largest in
/// the shipped rules stands for 2,160.
pub const MAX_EXPANSIONS: u64 = 10_000;

/// Whether `path`, an entry of a phrase directory, is one of its YAML
/// files: named `*.yaml` or `*.yml`, and not hidden (a name starting with
/// `.`). Hidden names are other tools' files, never libraries: macOS
/// copies (tar, rsync, a USB stick) leave an AppleDouble `._pre_sale.yaml`
/// of binary metadata beside each file, and emacs keeps `.#pre_sale.yaml`
/// (a dangling symlink) while the file is being edited; read as libraries,
/// either made every reload fail and a start fall back to the last-good
/// copy (found by review).
pub(crate) fn is_library_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
    !hidden && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

#[derive(Default)]
struct Loader {
    problems: Vec<Problem>,
}

impl Loader {
    fn load(mut self, dir: &Path) -> Result<LoadedDir, LoadErrors> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_library_file(p))
                .collect(),
            Err(e) => {
                self.at(dir, 1, 1, ProblemKind::DirUnreadable(e.to_string()));
                return Err(LoadErrors(self.problems));
            }
        };
        files.sort();

        let mut intents: Vec<Intent> = Vec::new();
        let mut first_seen: HashMap<String, String> = HashMap::new();
        let mut templates = None;
        let mut politeness = None;
        let mut loaded = Vec::with_capacity(files.len());
        for path in &files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    self.at(path, 1, 1, ProblemKind::Io(e.to_string()));
                    continue;
                }
            };
            let text = match utf8(&bytes) {
                Ok(t) => t,
                Err((line, column, byte)) => {
                    self.at(path, line, column, ProblemKind::NotUtf8 { byte });
                    continue;
                }
            };
            let before = intents.len();
            let mut stage = None;
            match name {
                TEMPLATES_FILE => templates = self.load_templates(path, text),
                POLITENESS_FILE => politeness = self.load_politeness(path, text),
                _ => stage = self.load_library(path, text, &mut intents, &mut first_seen),
            }
            loaded.push(LoadedFile {
                name: name.to_string(),
                stage,
                intents: intents.len() - before,
                bytes,
            });
        }
        if templates.is_none() && !self.has_problem_in(dir, TEMPLATES_FILE) {
            self.at(
                &dir.join(TEMPLATES_FILE),
                1,
                1,
                ProblemKind::MissingFile(TEMPLATES_FILE),
            );
        }
        if politeness.is_none() && !self.has_problem_in(dir, POLITENESS_FILE) {
            self.at(
                &dir.join(POLITENESS_FILE),
                1,
                1,
                ProblemKind::MissingFile(POLITENESS_FILE),
            );
        }
        if intents.is_empty() && self.problems.is_empty() {
            self.at(dir, 1, 1, ProblemKind::NoLibraries);
        }
        if !self.problems.is_empty() {
            return Err(LoadErrors(self.problems));
        }
        Ok(LoadedDir {
            library: Library {
                intents,
                templates: templates.unwrap_or_default(),
                politeness: politeness.unwrap_or_default(),
            },
            files: loaded,
        })
    }

    fn has_problem_in(&self, dir: &Path, name: &str) -> bool {
        let path = dir.join(name);
        self.problems.iter().any(|p| p.file == path)
    }

    fn at(&mut self, file: &Path, line: usize, column: usize, kind: ProblemKind) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            column,
            kind,
        });
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self, path: &Path, text: &str) -> Option<T> {
        match yaml::from_str::<T>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.at(path, e.line, e.column, ProblemKind::Syntax(e.message));
                None
            }
        }
    }

    fn load_templates(&mut self, path: &Path, text: &str) -> Option<Templates> {
        let t: Templates = self.parse(path, text)?;
        let loc = Locator::new(text);
        for s in t
            .greeting
            .iter()
            .chain(&t.holding)
            .chain(&t.offline)
            .chain(&t.transfer)
        {
            self.check_template(path, &loc, 0, s);
        }
        for (key, list) in [
            ("greeting", &t.greeting),
            ("holding", &t.holding),
            ("offline", &t.offline),
            ("transfer", &t.transfer),
        ] {
            if list.iter().any(|s| s.trim().is_empty()) {
                // Where the blank entry is written (`""`, `"  "`), else the key.
                let (line, column) = loc
                    .find_key(key)
                    .and_then(|(l, _)| loc.empty_scalars(loc.section(l - 1)).first().copied())
                    .or_else(|| loc.find_key(key))
                    .unwrap_or((1, 1));
                self.at(path, line, column, ProblemKind::EmptyTemplate(key));
            }
        }
        for g in t.greeting.iter().filter(|g| !g.trim().is_empty()) {
            if !g.contains("{shop}") {
                // Where the entry is written: its first characters (a quoted
                // entry is written as it reads), else the key.
                let head: String = g.chars().take(8).collect();
                let (line, column) = loc
                    .find_after(0, &head)
                    .or_else(|| loc.find_key("greeting"))
                    .unwrap_or((1, 1));
                self.at(path, line, column, ProblemKind::GreetingWithoutShop);
            }
        }
        for (key, list) in [("greeting", &t.greeting), ("holding", &t.holding)] {
            if list.iter().all(|s| s.trim().is_empty()) {
                let (line, column) = loc.find_key(key).unwrap_or((1, 1));
                self.at(
                    path,
                    line,
                    column,
                    ProblemKind::TooFewReplies {
                        id: format!("templates.{key}"),
                        count: 0,
                    },
                );
            }
        }
        Some(t)
    }

    fn load_politeness(&mut self, path: &Path, text: &str) -> Option<PolitenessRules> {
        let rules: PolitenessRules = self.parse(path, text)?;
        let loc = Locator::new(text);
        // An emptied file, not one that turns the check off on purpose
        // (`negative: []`).
        if rules.negative.is_empty()
            && rules.curt.is_empty()
            && loc.find_key("negative").is_none()
            && loc.find_key("curt").is_none()
        {
            self.at(path, 1, 1, ProblemKind::NoPolitenessRules);
            return None;
        }
        // Counted before anything is expanded (`unknown_slots` below
        // expands every phrase).
        let mut too_many = false;
        for phrase in rules.phrases() {
            let count = rules.expansion_count(phrase);
            if count > MAX_EXPANSIONS {
                let (line, column) = loc.find_after(0, phrase).unwrap_or((1, 1));
                let phrase = phrase.to_string();
                self.at(
                    path,
                    line,
                    column,
                    ProblemKind::TooManyExpansions { phrase, count },
                );
                too_many = true;
            }
        }
        if too_many {
            return None;
        }
        for (list, rules) in [("negative", &rules.negative), ("curt", &rules.curt)] {
            let list_at = loc.find_key(list);
            // Each rule has exactly one `phrase:`, so the n-th in the list's
            // section is the n-th rule's.
            let phrases = list_at
                .map(|(line, _)| loc.values_of_key(loc.section(line - 1), "phrase"))
                .unwrap_or_default();
            for (i, rule) in rules.iter().enumerate() {
                if rule.phrase.trim().is_empty() {
                    let (line, column) = phrases.get(i).copied().or(list_at).unwrap_or((1, 1));
                    self.at(
                        path,
                        line,
                        column,
                        ProblemKind::EmptyRulePhrase { list, rule: i + 1 },
                    );
                }
                self.check_template(path, &loc, 0, &rule.rewrite);
            }
        }
        for unknown in rules.unknown_slots() {
            // `phrase: expansion`: report the phrase where it is written.
            let phrase = unknown.split(": ").next().unwrap_or(&unknown).to_string();
            let (line, column) = loc.find_after(0, &phrase).unwrap_or((1, 1));
            self.at(path, line, column, ProblemKind::UnknownSlot { phrase });
        }
        Some(rules)
    }

    fn load_library(
        &mut self,
        path: &Path,
        text: &str,
        intents: &mut Vec<Intent>,
        first_seen: &mut HashMap<String, String>,
    ) -> Option<Stage> {
        let raw = self.parse::<RawLibrary>(path, text)?;
        let loc = Locator::new(text);
        let mut seen_here: HashMap<String, usize> = HashMap::new();
        let Some(stage) = Stage::parse(&raw.stage) else {
            let (line, column) = loc.find_key("stage").unwrap_or((1, 1));
            self.at(path, line, column, ProblemKind::UnknownStage(raw.stage));
            return None;
        };
        for ri in raw.intents {
            // The n-th intent with this id in this file sits on the n-th
            // `id:` line that names it.
            let nth = seen_here.entry(ri.id.clone()).or_insert(0);
            let start = loc.find_id(&ri.id, *nth).unwrap_or(0);
            *nth += 1;
            let (id_line, id_col) = loc.pos_of_line_value(start, &ri.id);
            // The lines under this intent's `key:`, and where an entry of
            // that list with text `v` is written.
            let section = |key: &str| {
                loc.find_key_after(start, key)
                    .map(|(line, column)| (loc.section(line - 1), (line, column)))
            };
            let here = |key: &str, v: &str| {
                section(key)
                    .and_then(|(lines, _)| loc.find_scalar(lines, v))
                    .or_else(|| loc.find_scalar(start..loc.lines.len(), v))
                    .or_else(|| loc.find_after(start, v))
                    .unwrap_or((id_line, id_col))
            };
            // Where the n-th empty entry of `key` is written (`""`), else
            // the key itself.
            let empty_at = |key: &str, n: usize| match section(key) {
                Some((lines, key_at)) => loc.empty_scalars(lines).get(n).copied().unwrap_or(key_at),
                None => (id_line, id_col),
            };

            let valid_id = ri.id.split_once('.').is_some_and(|(s, n)| {
                !s.is_empty()
                    && !n.is_empty()
                    && ri.id.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
                    })
            });
            if !valid_id {
                self.at(path, id_line, id_col, ProblemKind::BadId(ri.id.clone()));
            } else if let Some((s, _)) = ri.id.split_once('.') {
                if Stage::parse(s).is_none() {
                    self.at(
                        path,
                        id_line,
                        id_col,
                        ProblemKind::UnknownStage(s.to_string()),
                    );
                } else if s != stage.as_str() {
                    self.at(
                        path,
                        id_line,
                        id_col,
                        ProblemKind::IdStageMismatch {
                            id: ri.id.clone(),
                            stage: stage.as_str().into(),
                        },
                    );
                }
            }
            let where_ = format!("{}:{}", path.display(), id_line);
            if let Some(first) = first_seen.get(&ri.id) {
                self.at(
                    path,
                    id_line,
                    id_col,
                    ProblemKind::DuplicateId {
                        id: ri.id.clone(),
                        first: first.clone(),
                    },
                );
            } else {
                first_seen.insert(ri.id.clone(), where_);
            }

            let keywords: Vec<Keyword> = ri
                .keywords
                .into_iter()
                .map(|k| match k {
                    RawKeyword::Plain(text) => Keyword { text, weight: None },
                    RawKeyword::Weighted { text, weight } => Keyword {
                        text,
                        weight: Some(weight),
                    },
                })
                .collect();
            let has_text_kw = keywords.iter().any(|k| !k.text.trim().is_empty());
            let has_pattern = ri.patterns.iter().any(|p| !p.trim().is_empty());
            if !has_text_kw && !has_pattern {
                let (line, column) = loc
                    .find_key_after(start, "keywords")
                    .unwrap_or((id_line, id_col));
                self.at(path, line, column, ProblemKind::NoKeywords(ri.id.clone()));
            }
            let mut empties = 0;
            for k in &keywords {
                if k.text.trim().is_empty() {
                    let (line, column) = empty_at("keywords", empties);
                    empties += 1;
                    self.at(
                        path,
                        line,
                        column,
                        ProblemKind::EmptyKeyword {
                            id: ri.id.clone(),
                            what: "keyword",
                        },
                    );
                }
                if let Some(w) = k.weight {
                    if !(0.0..=1.0).contains(&w) || w.is_nan() {
                        let (line, column) = here("keywords", &k.text);
                        self.at(
                            path,
                            line,
                            column,
                            ProblemKind::BadWeight {
                                id: ri.id.clone(),
                                keyword: k.text.clone(),
                            },
                        );
                    }
                }
            }
            for (n, _) in ri
                .exclude
                .iter()
                .filter(|e| e.trim().is_empty())
                .enumerate()
            {
                let (line, column) = empty_at("exclude", n);
                self.at(
                    path,
                    line,
                    column,
                    ProblemKind::EmptyKeyword {
                        id: ri.id.clone(),
                        what: "exclusion",
                    },
                );
            }
            let mut empties = 0;
            for p in &ri.patterns {
                if p.trim().is_empty() {
                    let (line, column) = empty_at("patterns", empties);
                    empties += 1;
                    self.at(
                        path,
                        line,
                        column,
                        ProblemKind::EmptyKeyword {
                            id: ri.id.clone(),
                            what: "pattern",
                        },
                    );
                    continue;
                }
                if let Some(letter) = upper_case_literal(p) {
                    let (line, column) = here("patterns", p);
                    self.at(
                        path,
                        line,
                        column,
                        ProblemKind::UpperCasePattern {
                            id: ri.id.clone(),
                            pattern: p.clone(),
                            letter,
                        },
                    );
                }
                if let Err(e) = regex::Regex::new(p) {
                    let (line, column) = here("patterns", p);
                    self.at(
                        path,
                        line,
                        column,
                        ProblemKind::InvalidRegex {
                            id: ri.id.clone(),
                            pattern: p.clone(),
                            error: e
                                .to_string()
                                .lines()
                                .last()
                                .unwrap_or("")
                                .trim()
                                .to_string(),
                        },
                    );
                }
            }
            let replies_at = loc
                .find_key_after(start, "replies")
                .unwrap_or((id_line, id_col));
            let replies: Vec<(Reply, bool)> = ri
                .replies
                .into_iter()
                .map(|r| match r {
                    RawReply::Plain(text) => (Reply::general(text), false),
                    RawReply::Cued(c) => {
                        let written = c.when.is_some();
                        let when = c.when.unwrap_or_default();
                        (Reply { text: c.text, when }, written)
                    }
                })
                .collect();
            let non_empty = replies
                .iter()
                .filter(|(r, _)| !r.text.trim().is_empty())
                .count();
            if replies.len() != non_empty {
                let (line, column) = replies_at;
                self.at(path, line, column, ProblemKind::EmptyReply(ri.id.clone()));
            }
            if non_empty < 2 {
                let (line, column) = replies_at;
                self.at(
                    path,
                    line,
                    column,
                    ProblemKind::TooFewReplies {
                        id: ri.id.clone(),
                        count: non_empty,
                    },
                );
            }
            if !replies.is_empty() && replies.iter().all(|(r, _)| !r.is_general()) {
                let (line, column) = replies_at;
                self.at(
                    path,
                    line,
                    column,
                    ProblemKind::NoGeneralReply(ri.id.clone()),
                );
            }
            // The n-th `when:` written under `replies:` is the n-th reply
            // that wrote one.
            let replies_section = section("replies").map(|(lines, _)| lines);
            let whens = replies_section
                .clone()
                .map(|lines| loc.values_of_key(lines, "when"))
                .unwrap_or_default();
            for (n, (r, _)) in replies.iter().filter(|(_, written)| *written).enumerate() {
                let when_at = whens.get(n).copied().unwrap_or(replies_at);
                if r.when.is_empty() {
                    let (line, column) = when_at;
                    self.at(path, line, column, ProblemKind::NoCues(ri.id.clone()));
                }
                if r.when.iter().any(|w| normalize(w).is_empty()) {
                    // The first blank scalar from this `when:` on.
                    let end = replies_section.clone().map_or(when_at.0, |l| l.end);
                    let (line, column) = loc
                        .empty_scalars(when_at.0 - 1..end)
                        .first()
                        .copied()
                        .unwrap_or(when_at);
                    self.at(
                        path,
                        line,
                        column,
                        ProblemKind::EmptyKeyword {
                            id: ri.id.clone(),
                            what: "reply cue (when)",
                        },
                    );
                }
            }
            for (r, _) in &replies {
                self.check_template(path, &loc, start, &r.text);
            }
            if let Some(p) = ri.priority.filter(|p| !(*p > 0.0 && *p <= 2.0)) {
                let (line, column) = section("priority").map_or((id_line, id_col), |(_, at)| at);
                self.at(
                    path,
                    line,
                    column,
                    ProblemKind::BadPriority {
                        id: ri.id.clone(),
                        priority: p.to_string(),
                    },
                );
            }
            let replies: Vec<Reply> = replies.into_iter().map(|(r, _)| r).collect();
            intents.push(Intent {
                id: ri.id,
                stage,
                keywords,
                patterns: ri.patterns,
                exclude: ri.exclude,
                replies,
                priority: ri.priority.unwrap_or(1.0),
            });
        }
        Some(stage)
    }

    /// Reports unknown or unclosed `{placeholders}` in a reply text.
    fn check_template(&mut self, path: &Path, loc: &Locator, start: usize, text: &str) {
        if let Err(kind) = check_placeholders(text) {
            let needle = match &kind {
                ProblemKind::UnknownPlaceholder { placeholder } => format!("{{{placeholder}}}"),
                _ => "{".to_string(),
            };
            let (line, column) = loc
                .find_after(start, &needle)
                .or_else(|| loc.find_after(0, &needle))
                .unwrap_or((1, 1));
            self.at(path, line, column, kind);
        }
    }
}

/// The first upper-case letter `pattern` matches literally that no
/// normalised message can hold, if any (one in
/// a class such as `[A-Za-z]`, an escape such as `\D` or a pattern that
/// does not parse is not looked at).
fn upper_case_literal(pattern: &str) -> Option<char> {
    use regex_syntax::hir::{Hir, HirKind};
    fn walk(h: &Hir) -> Option<char> {
        match h.kind() {
            // Only what normalising lower-cases: ASCII letters and their
            // full-width forms (a `Ω` or a `Ⅱ` stays as typed in a message
            // and matches; found by review).
            HirKind::Literal(lit) => std::str::from_utf8(&lit.0)
                .ok()?
                .chars()
                .find(|c| c.is_ascii_uppercase() || ('Ａ'..='Ｚ').contains(c)),
            HirKind::Repetition(r) => walk(&r.sub),
            HirKind::Capture(c) => walk(&c.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().find_map(walk),
            HirKind::Empty | HirKind::Class(_) | HirKind::Look(_) => None,
        }
    }
    walk(&regex_syntax::parse(pattern).ok()?)
}

/// `bytes` as text, or the line, column and value of the first byte that
/// is not UTF-8 (for a file's error message).
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, (usize, usize, u8)> {
    std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = position_of(bytes, e.valid_up_to());
        (line, column, bytes[e.valid_up_to()])
    })
}

/// The 1-based line and column (in characters, as every other position
/// here) of byte `offset` of `bytes`, whose bytes before it are UTF-8.
fn position_of(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = std::str::from_utf8(&bytes[..offset]).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// Checks that every `{...}` in `text` names a known placeholder.
pub fn check_placeholders(text: &str) -> Result<(), ProblemKind> {
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(ProblemKind::UnclosedPlaceholder);
        };
        let name = &after[..j];
        if !PLACEHOLDERS.contains(&name) {
            return Err(ProblemKind::UnknownPlaceholder {
                placeholder: name.to_string(),
            });
        }
        rest = &after[j + 1..];
    }
    Ok(())
}

/// Values that fill the placeholders of a reply.
#[derive(Debug, Clone, Default)]
pub struct Fill<'a> {
    pub shop: &'a str,
    pub agent: &'a str,
    pub buyer: &'a str,
}

impl Fill<'_> {
    /// Replaces `{shop}`, `{agent}` and `{buyer}` in `template`.
    ///
    /// An empty value drops the placeholder, so a reply written for a named
    /// agent still reads naturally when no name is known. One pass over the
    /// template: a value is never searched again, so a shop whose name
    /// holds `{agent}` keeps it, and a suggestion costs one allocation.
    pub fn apply(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + self.shop.len() + self.agent.len());
        let mut rest = template;
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let (value, name) = [
                (self.shop, "{shop}"),
                (self.agent, "{agent}"),
                (self.buyer, "{buyer}"),
            ]
            .into_iter()
            .find(|(_, name)| rest.starts_with(name))
            .unwrap_or(("{", "{"));
            out.push_str(value);
            rest = &rest[name.len()..];
        }
        out.push_str(rest);
        out
    }

    /// [`Fill::apply`] for a shared template: the template itself (no
    /// copy) when it has no placeholder, as most replies do.
    pub fn apply_shared(&self, template: &Arc<str>) -> Arc<str> {
        if template.contains('{') {
            Arc::from(self.apply(template))
        } else {
            template.clone()
        }
    }
}

/// Finds the position of things in a YAML file's text.
///
/// serde_yaml reports positions for syntax errors only; for problems found
/// after parsing (a duplicate id, a bad regex) we look the offending value up
/// in the text, starting from the line of its intent's `id:`.
struct Locator<'a> {
    lines: Vec<&'a str>,
    /// The 0-based lines holding `id: <id>` (quoted or not), by id, in
    /// order: indexed once, because looking each intent's id up by a scan
    /// of the file made loading quadratic in the number of intents (5,000
    /// intents took 3.6 s in a release build).
    ids: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        let lines: Vec<&'a str> = text.lines().collect();
        let mut ids: HashMap<&'a str, Vec<usize>> = HashMap::new();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            if let Some(v) = t.strip_prefix("id:") {
                let v = v.trim();
                let v = v.split(" #").next().unwrap_or(v).trim();
                ids.entry(v.trim_matches(|c| c == '"' || c == '\''))
                    .or_default()
                    .push(i);
            }
        }
        Locator { lines, ids }
    }

    /// 0-based index of the `nth` line holding `id: <id>` (quoted or not).
    fn find_id(&self, id: &str, nth: usize) -> Option<usize> {
        self.ids.get(id).and_then(|lines| lines.get(nth)).copied()
    }

    /// 1-based position of `value` on line `idx`, or the line's start.
    fn pos_of_line_value(&self, idx: usize, value: &str) -> (usize, usize) {
        let line = self.lines.get(idx).copied().unwrap_or("");
        let col = line
            .find(value)
            .map(|b| line[..b].chars().count() + 1)
            .unwrap_or(1);
        (idx + 1, col)
    }

    /// First occurrence of `needle` at or after line `start` (1-based).
    fn find_after(&self, start: usize, needle: &str) -> Option<(usize, usize)> {
        if needle.is_empty() {
            return None;
        }
        let first = needle.lines().next().unwrap_or(needle);
        self.lines
            .iter()
            .enumerate()
            .skip(start)
            .find_map(|(i, l)| l.find(first).map(|b| (i + 1, l[..b].chars().count() + 1)))
    }

    fn find_key(&self, key: &str) -> Option<(usize, usize)> {
        self.find_key_after(0, key)
    }

    /// 0-based lines that belong to the key on line `key_idx`: its own line
    /// and the lines under it (indented deeper, or a block sequence's `- `
    /// items at the key's own indent), blank and comment lines included.
    fn section(&self, key_idx: usize) -> Range<usize> {
        let Some(line) = self.lines.get(key_idx) else {
            return key_idx..key_idx;
        };
        let key_indent = {
            let t = line.trim_start_matches(' ');
            let item = t.strip_prefix('-').map(|r| r.trim_start_matches(' '));
            line.len() - item.unwrap_or(t).len()
        };
        let end = (key_idx + 1..self.lines.len())
            .find(|&j| {
                let l = self.lines[j];
                let t = l.trim_start_matches(' ');
                if t.is_empty() || t.starts_with('#') {
                    return false;
                }
                let indent = l.len() - t.len();
                let item = t == "-" || t.starts_with("- ");
                indent < key_indent || (indent == key_indent && !item)
            })
            .unwrap_or(self.lines.len());
        key_idx..end
    }

    /// First place in `lines` where `value` is written as a whole YAML
    /// scalar, plain or quoted: `在不` in `{text: 在不, weight: 7}` but not in
    /// `{text: 在不在, ...}` nor in the key `text:`.
    fn find_scalar(&self, lines: Range<usize>, value: &str) -> Option<(usize, usize)> {
        if value.is_empty() {
            return None;
        }
        let lines = lines.start..lines.end.min(self.lines.len());
        lines.into_iter().find_map(|i| {
            let l = self.lines[i];
            l.match_indices(value)
                .find(|(b, _)| is_whole_scalar(l, *b, value.len()))
                .map(|(b, _)| (i + 1, l[..b].chars().count() + 1))
        })
    }

    /// Every empty or blank quoted scalar (`""`, `' '`) in `lines`, in
    /// order: where the empty entries of a list are written.
    fn empty_scalars(&self, lines: Range<usize>) -> Vec<(usize, usize)> {
        let lines = lines.start..lines.end.min(self.lines.len());
        let mut out = Vec::new();
        for i in lines {
            let l = self.lines[i];
            for (b, q) in l.char_indices().filter(|(_, c)| *c == '"' || *c == '\'') {
                let rest = &l[b + 1..];
                let inner = rest.len() - rest.trim_start_matches(' ').len();
                if rest[inner..].starts_with(q) && opens_scalar(&l[..b]) {
                    out.push((i + 1, l[..b].chars().count() + 1));
                }
            }
        }
        out
    }

    /// Where the value of every `key:` in `lines` starts (block `key: v` or
    /// flow `{key: v}`), in order.
    fn values_of_key(&self, lines: Range<usize>, key: &str) -> Vec<(usize, usize)> {
        let pat = format!("{key}:");
        let lines = lines.start..lines.end.min(self.lines.len());
        let mut out = Vec::new();
        for i in lines {
            let l = self.lines[i];
            for (b, _) in l.match_indices(&pat) {
                if opens_scalar(&l[..b]) {
                    let after = b + pat.len();
                    let value = after + (l.len() - after - l[after..].trim_start().len());
                    out.push((i + 1, l[..value].chars().count() + 1));
                }
            }
        }
        out
    }

    fn find_key_after(&self, start: usize, key: &str) -> Option<(usize, usize)> {
        let pat = format!("{key}:");
        self.lines
            .iter()
            .enumerate()
            .skip(start)
            .find_map(|(i, l)| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with(&pat)
                    .then(|| (i + 1, l.find(&pat).map(|b| b + 1).unwrap_or(1)))
            })
    }
}

/// Whether a scalar may start right after `before` (the text in front of
/// it on its line): at the line's start, after `- `, `key: `, `[`, `{` or `,`.
fn opens_scalar(before: &str) -> bool {
    let trimmed = before.trim_end_matches(' ');
    let spaced = trimmed.len() < before.len();
    match trimmed.chars().last() {
        None => true,
        Some('[' | '{' | ',') => true,
        Some('-' | ':' | '?') => spaced,
        _ => false,
    }
}

/// Whether the `len` bytes at `b` of `line` are a whole scalar: quoted
/// (`"在不"`, `'在不'`) or plain, starting where a scalar may start and
/// followed by the end of the line, a comment, or `,` `]` `}`.
fn is_whole_scalar(line: &str, b: usize, len: usize) -> bool {
    let before = &line[..b];
    let after = &line[b + len..];
    if let Some(q) = before.chars().last().filter(|c| *c == '"' || *c == '\'') {
        return opens_scalar(&before[..before.len() - 1]) && after.starts_with(q);
    }
    if !opens_scalar(before) {
        return false;
    }
    let rest = after.trim_start_matches(' ');
    rest.is_empty()
        || rest.starts_with([',', ']', '}'])
        || (rest.starts_with('#') && rest.len() < after.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a letter matched as written is an upper-case literal: not one
    /// in a class, an escape or under `(?i)`.
    #[test]
    fn upper_case_literals_in_patterns() {
        let cases = [
            (r"\d+KG重量", Some('K')),
            (r"(买|卖)iPhone", Some('P')),
            (r"\d+kg", None),
            (r"[A-Za-z]+\D\W\S\B", None),
            (r"(?i)kg|KG", None),
            (r"\p{Han}+", None),
            (r"(未闭合", None),
            (r"\d+Ω", None),
            (r"第Ⅱ代", None),
            (r"ＸＬ码", Some('Ｘ')),
        ];
        for (pattern, want) in cases {
            assert_eq!(upper_case_literal(pattern), want, "{pattern}");
        }
    }

    #[test]
    fn placeholders() {
        let cases: &[(&str, bool)] = &[
            ("亲，欢迎光临{shop}", true),
            ("我是{agent}，{buyer}您好", true),
            ("没有占位符", true),
            ("{shopname}", false),
            ("{shop", false),
            ("{}", false),
        ];
        for (text, ok) in cases {
            assert_eq!(check_placeholders(text).is_ok(), *ok, "{text}");
        }
    }

    #[test]
    fn fill() {
        let f = Fill {
            shop: "小米旗舰店",
            agent: "小美",
            buyer: "",
        };
        let cases: &[(&str, &str)] = &[
            (
                "欢迎光临{shop}，我是{agent}{buyer}",
                "欢迎光临小米旗舰店，我是小美",
            ),
            ("{shop}{shop}", "小米旗舰店小米旗舰店"),
            ("亲，马上为您查询", "亲，马上为您查询"),
            ("", ""),
            // Not a placeholder: kept as written.
            ("{x}{shop", "{x}{shop"),
            ("{{agent}}", "{小美}"),
            ("末尾{", "末尾{"),
        ];
        for (template, want) in cases {
            assert_eq!(f.apply(template), *want, "{template}");
        }
        // A value is not filled again.
        let odd = Fill {
            shop: "{agent}店",
            agent: "小美",
            buyer: "",
        };
        assert_eq!(odd.apply("{shop}的{agent}"), "{agent}店的小美");
        // Shared: filled when it has a placeholder, the same string if not.
        let filled = f.apply_shared(&Arc::from("您好，{shop}为您服务"));
        assert_eq!(&*filled, "您好，小米旗舰店为您服务");
        let plain: Arc<str> = Arc::from("亲，马上为您查询");
        assert!(Arc::ptr_eq(&f.apply_shared(&plain), &plain));
    }
}
