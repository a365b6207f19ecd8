//! Settings of `kefu serve`: a YAML file, then environment, then flags.
//!
//! The layers, lowest first:
//!
//! 1. built-in defaults ([`Config::default`]);
//! 2. the config file (`--config FILE` or `KEFU_CONFIG`), see
//!    `kefu.example.yaml` for every key;
//! 3. environment variables `KEFU_*` and command-line flags, which the
//!    binary merges (a flag wins over its variable) into [`Overrides`].
//!
//! Lists (agent and supervisor tokens, shop names) from flags are merged into
//! the file's: a flag entry for the same shop and agent replaces the file's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::clock::ClockSettings;

/// Resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub phrases: PathBuf,
    pub data: PathBuf,
    pub clock: ClockSettings,
    /// How often the phrase directory is checked for changes; `None` turns
    /// hot reload off.
    pub reload_poll: Option<Duration>,
    pub limits: Limits,
    pub shops: BTreeMap<String, ShopConfig>,
    /// How the supervisors' reports count rounds.
    pub reports: ReportSettings,
    /// Browser origins (`https://shop.example`) whose pages may open a
    /// WebSocket besides kefu's own; empty: no origin is checked (see
    /// [`Config::origin_allowed`]).
    pub allowed_origins: Vec<String>,
}

/// Report settings of the service (the CLI's `kefu report` takes the same
/// as flags).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    /// Rounds starting outside this window (shop time) are not counted.
    pub service_window: crate::report::ServiceWindow,
    /// The shops' time zone.
    pub offset: time::UtcOffset,
    /// Satisfaction rate the gold-medal check asks for.
    pub gold_threshold: f64,
}

impl Default for ReportSettings {
    fn default() -> Self {
        let o = crate::report::ReportOptions::default();
        ReportSettings {
            service_window: o.service_window,
            offset: o.offset,
            gold_threshold: o.gold_threshold,
        }
    }
}

/// One shop: display name, agents and supervisors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShopConfig {
    /// Fills `{shop}` in replies; the shop id when unset.
    pub name: Option<String>,
    pub agents: BTreeMap<String, AgentConfig>,
    /// Tokens that open this shop's reports.
    pub supervisors: Vec<String>,
}

/// One agent's credentials.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub token: String,
    /// Fills `{agent}` in replies.
    #[serde(default)]
    pub name: Option<String>,
}

/// The largest `limits.max_frame_bytes` accepted (16 MiB).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// The largest `limits.read_buffer_bytes` accepted (1 MiB).
pub const MAX_READ_BUFFER_BYTES: usize = 1 << 20;

/// Protective limits of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest chat text, in characters.
    pub max_text_chars: usize,
    /// Largest WebSocket frame or message; bigger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Token bucket per connection: sustained messages per second...
    pub rate_per_sec: f64,
    /// ...and the burst allowed on top.
    pub rate_burst: u32,
    /// Frames waiting to be written to one client; a client that lets its
    /// queue fill up is disconnected. A buyer whose message finds an
    /// agent's queue three-quarters full waits for room instead, for as
    /// long as the agent's connection keeps writing (one that writes
    /// nothing for `write_timeout` is disconnected), so a peak slows
    /// buyers down rather than dropping agents.
    pub outbound_queue: usize,
    /// Time to send the HTTP upgrade request after connecting.
    pub handshake_timeout: Duration,
    /// Time to send `hello` after the upgrade.
    pub hello_timeout: Duration,
    /// Ping a client quiet for this long; drop it if the ping is still
    /// unanswered one interval later.
    pub ping_interval: Duration,
    /// Give up a write that has not completed in this time.
    pub write_timeout: Duration,
    /// Open connections at most, staff reserve included (further ones get
    /// a 503).
    pub max_connections: usize,
    /// Places within `max_connections` that only agents (and supervisors'
    /// reports) may keep: at a peak, buyers fill the rest and the shop's
    /// own staff can still sign in to answer them.
    pub staff_reserve: usize,
    /// Keep a disconnected buyer's conversation this long for a resume.
    pub resume_window: Duration,
    /// Bytes of chat text kept per conversation for resumes and moves.
    pub history_bytes: usize,
    /// WebSocket read buffer per connection.
    pub read_buffer_bytes: usize,
    /// Time given to open connections to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How long an agent whose socket dropped keeps their conversations
    /// before they move to colleagues (a page refresh, a network blip); 0
    /// moves them at once.
    pub agent_grace: Duration,
    /// Open conversations per shop at most (away buyers within the resume
    /// window count); a new buyer beyond it is refused (`shop_busy`, close
    /// 1013), resumes still get in. Bounds what buyers, who are not
    /// authenticated, can make the shop hold: `history_bytes` each.
    pub max_open_conversations: usize,
    /// Failed sign-ins allowed per account (an agent of a shop, or a
    /// shop's reports) within `signin_window`, refilling evenly; past
    /// them, sign-ins for that account are refused without checking the
    /// token (`too_many_attempts`, HTTP 429) until one comes back. 0 turns
    /// the throttle off.
    pub signin_failures: u32,
    /// The time the whole sign-in budget takes to refill.
    pub signin_window: Duration,
    /// Budgets kept for ids the configuration does not have (made-up shop
    /// or agent ids are throttled like real ones, so the answers do not
    /// tell which exist); past it the ones nearest to refilled are dropped.
    pub signin_tracked_unknown: usize,
}

/// Default sign-in budget: 10 wrong tokens a minute per account, one back
/// every 6 s (see `server::throttle`).
pub const DEFAULT_SIGNIN_FAILURES: u32 = 10;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 2000,
            max_frame_bytes: 64 * 1024,
            rate_per_sec: 20.0,
            rate_burst: 40,
            outbound_queue: 1024,
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_connections: 50_000,
            staff_reserve: DEFAULT_STAFF_RESERVE,
            resume_window: Duration::from_secs(30 * 60),
            history_bytes: 16 * 1024,
            read_buffer_bytes: 4096,
            shutdown_grace: Duration::from_secs(5),
            agent_grace: Duration::from_secs(10),
            // A large shop on 双11 opens thousands of conversations in the
            // 30 minutes a conversation stays open; 10,000 × 16 KiB of
            // history is 160 MiB per shop at worst (fake buyers sending
            // long messages), about 20 MiB with ordinary chats. A welcome
            // carrying more than 1,024 conversations trims their histories
            // (see `hub::render::FRAME_HISTORY_BUDGET`).
            max_open_conversations: 10_000,
            signin_failures: DEFAULT_SIGNIN_FAILURES,
            signin_window: Duration::from_secs(60),
            // 10,000 × about 40 bytes.
            signin_tracked_unknown: 10_000,
        }
    }
}

/// Places kept for staff by default: agents who sign in during a peak (a
/// page refresh, a network blip, the next shift) and supervisors' reports;
/// those signed in before the peak hold ordinary places. A few shops'
/// worth of agents, 0.13 % of the default 50,000.
pub const DEFAULT_STAFF_RESERVE: usize = 64;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            phrases: PathBuf::from("phrases"),
            data: PathBuf::from("./data"),
            clock: ClockSettings::default(),
            reload_poll: Some(Duration::from_secs(1)),
            limits: Limits::default(),
            shops: BTreeMap::new(),
            reports: ReportSettings::default(),
            allowed_origins: Vec::new(),
        }
    }
}

/// What the environment and flags set (each `None`/empty: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub phrases: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub target_secs: Option<f64>,
    pub nudge_secs: Option<f64>,
    /// 0 turns the timed holding reply off.
    pub holding_secs: Option<f64>,
    /// `SHOP:AGENT:TOKEN`
    pub agent_tokens: Vec<String>,
    /// `SHOP:TOKEN`
    pub supervisor_tokens: Vec<String>,
    /// `SHOP:NAME`
    pub shop_names: Vec<String>,
    /// `HH:MM-HH:MM`
    pub service_window: Option<String>,
    /// `+08:00`
    pub timezone: Option<String>,
}

/// A setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{setting}: {message}")]
    Invalid { setting: String, message: String },
}

/// The parser quotes the value it could not use (`invalid type: string
/// "…", expected struct AgentConfig`, ``integer `…` ``, ``unknown field
/// `…` ``); under `shops` that value is most likely a token written where a
/// map, a list or a key belongs (`a1: tok-…`, `a1: 1234…`), and the message
/// goes to the terminal and, on a reload, to the log. Every quoted part
/// before ", expected" is hidden; the place (`shops.s1.agents.a1`, file,
/// line, column) and what was expected are enough to fix it.
fn hide_values_under_shops(message: String) -> String {
    if !message.starts_with("shops") {
        return message;
    }
    let (head, tail) = match message.find(", expected") {
        Some(i) => message.split_at(i),
        None => (message.as_str(), ""),
    };
    let mut out = String::with_capacity(message.len());
    let mut chars = head.chars();
    while let Some(c) = chars.next() {
        match c {
            // A Rust string literal (a quote inside is escaped) or a
            // backquoted value (serde never escapes those).
            '"' | '`' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    match d {
                        '\\' if c == '"' && !escaped => escaped = true,
                        d if d == c && !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("(not shown: it may be a token)");
            }
            c => out.push(c),
        }
    }
    out.push_str(tail);
    out
}

/// An entry of `allowed_origins`, as a browser sends `Origin`: a scheme
/// and a host, with a port only when not the scheme's default (a default
/// port is dropped: browsers never send it), lower case. What could never
/// equal the header is refused naming the entry: a path, a trailing slash,
/// a wildcard, user info, a bad port, a host not in ASCII (browsers send
/// its `xn--` form).
fn parse_origin(entry: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        invalid(
            "allowed_origins",
            format!(
                "`{entry}` {why}; write a scheme and a host, with a port if not the default: \
                 https://shop.example or http://127.0.0.1:8080"
            ),
        )
    };
    let lower = entry.trim().to_ascii_lowercase();
    let (scheme, rest, default_port) = if let Some(r) = lower.strip_prefix("https://") {
        ("https", r, 443)
    } else if let Some(r) = lower.strip_prefix("http://") {
        ("http", r, 80)
    } else {
        return Err(bad("does not start with http:// or https://"));
    };
    if !rest.is_ascii() {
        return Err(bad(
            "has a host that is not ASCII (browsers send an international name in its xn-- form)",
        ));
    }
    if rest.is_empty()
        || rest.contains(['/', '*', '?', '#', '@', '\\', '%'])
        || rest.contains(char::is_whitespace)
    {
        return Err(bad(
            "is not an origin (a path, a wildcard, user info or no host)",
        ));
    }
    let authority: hyper::http::uri::Authority = rest
        .parse()
        .map_err(|_| bad("does not hold a valid host and port"))?;
    if authority.host().is_empty() || authority.host().ends_with('.') {
        return Err(bad("does not hold a valid host"));
    }
    let port = match authority.as_str().rsplit_once(':') {
        // `[::1]` alone: the colon is inside the brackets
        Some((_, p)) if !authority.as_str().ends_with(']') => Some(p),
        _ => None,
    };
    match (port, authority.port_u16()) {
        (None, _) => Ok(format!("{scheme}://{}", authority.host())),
        (Some(_), Some(p)) if p == default_port => Ok(format!("{scheme}://{}", authority.host())),
        (Some(_), Some(p)) if p > 0 => Ok(format!("{scheme}://{}:{p}", authority.host())),
        _ => Err(bad("has a port that is not a number from 1 to 65535")),
    }
}

impl Config {
    /// Whether a WebSocket upgrade whose request carries `origin` (its
    /// `Origin` header: `None` when absent, `Some(None)` when present but
    /// not readable) may go on, kefu listening on `own`. With no
    /// `allowed_origins` nothing is checked. Otherwise the origin must be
    /// listed, or be kefu's own address (`http://` and `own`, and for a
    /// loopback address `localhost` with its port; behind a proxy, list
    /// the proxy's origin). The request's `Host` is not
    /// trusted: a page reaching kefu through a rebinding name sends a Host
    /// equal to its own origin. Browsers always send `Origin` on a
    /// WebSocket; a request without one is not a browser's, and is let in
    /// (such a client could send any value).
    pub fn origin_allowed(&self, origin: Option<Option<&str>>, own: SocketAddr) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let origin = match origin {
            None => return true,
            Some(None) => return false,
            Some(Some(o)) => o.trim().to_ascii_lowercase(),
        };
        if self.allowed_origins.contains(&origin) {
            return true;
        }
        let port = own.port();
        let own_origin = match own {
            SocketAddr::V4(a) => format!("http://{}:{port}", a.ip()),
            SocketAddr::V6(a) => format!("http://[{}]:{port}", a.ip()),
        };
        origin == own_origin
            || (own.ip().is_loopback() && origin == format!("http://localhost:{port}"))
    }
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        message: message.into(),
    }
}

impl ReportSettings {
    fn set_window(&mut self, setting: &str, v: Option<&str>) -> Result<(), ConfigError> {
        if let Some(v) = v {
            self.service_window = v.parse().map_err(|e| invalid(setting, format!("{e}")))?;
        }
        Ok(())
    }

    fn set_timezone(&mut self, setting: &str, v: Option<&str>) -> Result<(), ConfigError> {
        if let Some(v) = v {
            self.offset =
                crate::report::parse_offset(v).map_err(|e| invalid(setting, format!("{e}")))?;
        }
        Ok(())
    }
}

// ---- file shape --------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    phrases: Option<PathBuf>,
    data: Option<PathBuf>,
    #[serde(default)]
    clock: FileClock,
    #[serde(default)]
    reload: FileReload,
    #[serde(default)]
    limits: FileLimits,
    allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    shops: BTreeMap<String, FileShop>,
    #[serde(default)]
    reports: FileReports,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReports {
    service_window: Option<String>,
    timezone: Option<String>,
    gold_threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClock {
    target_secs: Option<f64>,
    nudge_secs: Option<f64>,
    holding_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReload {
    poll_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_text_chars: Option<usize>,
    rate_per_sec: Option<f64>,
    rate_burst: Option<u32>,
    outbound_queue: Option<usize>,
    handshake_timeout_secs: Option<f64>,
    hello_timeout_secs: Option<f64>,
    ping_interval_secs: Option<f64>,
    write_timeout_secs: Option<f64>,
    max_connections: Option<usize>,
    staff_reserve: Option<usize>,
    resume_window_secs: Option<f64>,
    history_bytes: Option<usize>,
    read_buffer_bytes: Option<usize>,
    shutdown_grace_secs: Option<f64>,
    agent_grace_secs: Option<f64>,
    max_open_conversations: Option<usize>,
    signin_failures: Option<u32>,
    signin_window_secs: Option<f64>,
    signin_tracked_unknown: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShop {
    name: Option<String>,
    #[serde(default)]
    agents: BTreeMap<String, AgentConfig>,
    #[serde(default)]
    supervisors: Vec<String>,
}

fn secs(setting: &str, v: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(invalid(
            setting,
            format!("{v} is not a number of seconds ≥ 0"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Tokens shorter than this are named at startup: the sign-in throttle
/// slows a guesser down (10 guesses a minute per account by default, over
/// 5 million a year), it does not stop one, so a token's length is what
/// keeps an agent's chats safe.
pub const WEAK_TOKEN_CHARS: usize = 16;

impl Config {
    /// Who has a token shorter than [`WEAK_TOKEN_CHARS`]: `shop:agent` for
    /// agents, `shop:supervisor #n` for supervisors (never the token).
    pub fn weak_tokens(&self) -> Vec<String> {
        let weak = |t: &str| t.chars().count() < WEAK_TOKEN_CHARS;
        let mut out = Vec::new();
        for (shop_id, shop) in &self.shops {
            for (agent, a) in &shop.agents {
                if weak(&a.token) {
                    out.push(format!("{shop_id}:{agent}"));
                }
            }
            for (i, t) in shop.supervisors.iter().enumerate() {
                if weak(t) {
                    out.push(format!("{shop_id}:supervisor #{}", i + 1));
                }
            }
        }
        out
    }

    /// Shops that have no agent: their buyers only ever get the offline
    /// reply. Usually a typo: `--shop-name S1:…` or a supervisor token for
    /// `s2` beside agents of `s1` makes a shop of its own (ids are
    /// case-sensitive), and nothing said so (found by review).
    pub fn shops_without_agents(&self) -> Vec<&str> {
        self.shops
            .iter()
            .filter(|(_, s)| s.agents.is_empty())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Reads `file` (if any) and applies `overrides` on top.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let bytes = std::fs::read(path).map_err(|error| ConfigError::Read {
                path: path.to_path_buf(),
                error,
            })?;
            // Where the first bad byte is, as for a phrase file (it said
            // only "stream did not contain valid UTF-8"; found by review).
            let text =
                crate::phrases::utf8(&bytes).map_err(|(line, column, byte)| ConfigError::Yaml {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: format!("byte 0x{byte:02x} is not UTF-8; save the file as UTF-8"),
                })?;
            config.apply_file_text(path, text)?;
        }
        config.apply_overrides(overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies the YAML text of a config file.
    pub fn apply_file_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let f: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            crate::yaml::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.to_path_buf(),
                line: e.line,
                column: e.column,
                message: hide_values_under_shops(e.message),
            })?
        };
        if let Some(l) = f.listen {
            self.listen = parse_listen("listen", &l)?;
        }
        if let Some(p) = f.phrases {
            self.phrases = p;
        }
        if let Some(d) = f.data {
            self.data = d;
        }
        if let Some(v) = f.clock.target_secs {
            self.clock.target = secs("clock.target_secs", v)?;
        }
        if let Some(v) = f.clock.nudge_secs {
            self.clock.nudge = secs("clock.nudge_secs", v)?;
        }
        if let Some(v) = f.clock.holding_secs {
            self.clock.holding = holding("clock.holding_secs", v)?;
        }
        if let Some(ms) = f.reload.poll_ms {
            self.reload_poll = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(origins) = f.allowed_origins {
            self.allowed_origins = origins
                .iter()
                .map(|o| parse_origin(o))
                .collect::<Result<_, _>>()?;
        }
        let l = f.limits;
        let lim = &mut self.limits;
        set(&mut lim.max_text_chars, l.max_text_chars);
        set(&mut lim.rate_per_sec, l.rate_per_sec);
        set(&mut lim.rate_burst, l.rate_burst);
        set(&mut lim.outbound_queue, l.outbound_queue);
        set(&mut lim.max_connections, l.max_connections);
        set(&mut lim.staff_reserve, l.staff_reserve);
        set(&mut lim.history_bytes, l.history_bytes);
        set(&mut lim.read_buffer_bytes, l.read_buffer_bytes);
        set(&mut lim.max_open_conversations, l.max_open_conversations);
        set(&mut lim.signin_failures, l.signin_failures);
        set(&mut lim.signin_tracked_unknown, l.signin_tracked_unknown);
        for (field, value, name) in [
            (
                &mut lim.handshake_timeout,
                l.handshake_timeout_secs,
                "limits.handshake_timeout_secs",
            ),
            (
                &mut lim.hello_timeout,
                l.hello_timeout_secs,
                "limits.hello_timeout_secs",
            ),
            (
                &mut lim.ping_interval,
                l.ping_interval_secs,
                "limits.ping_interval_secs",
            ),
            (
                &mut lim.write_timeout,
                l.write_timeout_secs,
                "limits.write_timeout_secs",
            ),
            (
                &mut lim.resume_window,
                l.resume_window_secs,
                "limits.resume_window_secs",
            ),
            (
                &mut lim.shutdown_grace,
                l.shutdown_grace_secs,
                "limits.shutdown_grace_secs",
            ),
            (
                &mut lim.agent_grace,
                l.agent_grace_secs,
                "limits.agent_grace_secs",
            ),
            (
                &mut lim.signin_window,
                l.signin_window_secs,
                "limits.signin_window_secs",
            ),
        ] {
            if let Some(v) = value {
                *field = secs(name, v)?;
            }
        }
        self.reports.set_window(
            "reports.service_window",
            f.reports.service_window.as_deref(),
        )?;
        self.reports
            .set_timezone("reports.timezone", f.reports.timezone.as_deref())?;
        if let Some(t) = f.reports.gold_threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid(
                    "reports.gold_threshold",
                    format!("{t} is not a rate between 0 and 1"),
                ));
            }
            self.reports.gold_threshold = t;
        }
        for (id, shop) in f.shops {
            let entry = self.shops.entry(id).or_default();
            if shop.name.is_some() {
                entry.name = shop.name;
            }
            entry.agents.extend(shop.agents);
            entry.supervisors.extend(shop.supervisors);
        }
        Ok(())
    }

    /// Applies environment and flag values.
    pub fn apply_overrides(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(l) = &o.listen {
            self.listen = parse_listen("--listen", l)?;
        }
        if let Some(p) = &o.phrases {
            self.phrases = p.clone();
        }
        if let Some(d) = &o.data {
            self.data = d.clone();
        }
        if let Some(v) = o.target_secs {
            self.clock.target = secs("--target-secs", v)?;
        }
        if let Some(v) = o.nudge_secs {
            self.clock.nudge = secs("--nudge-secs", v)?;
        }
        if let Some(v) = o.holding_secs {
            self.clock.holding = holding("--holding-secs", v)?;
        }
        let n = o.agent_tokens.len();
        for (i, spec) in o.agent_tokens.iter().enumerate() {
            let mut parts = spec.splitn(3, ':');
            let (Some(shop), Some(agent), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(invalid(
                    "--agent-token",
                    format!("entry {} of {n} is not SHOP:AGENT:TOKEN{NOT_SHOWN}", i + 1),
                ));
            };
            if check_id("shop id", shop).is_err() || check_id("agent id", agent).is_err() {
                return Err(invalid(
                    "--agent-token",
                    format!("entry {} of {n}: {BAD_IDS}{NOT_SHOWN}", i + 1),
                ));
            }
            let entry = self.shops.entry(shop.to_string()).or_default();
            let agent = entry.agents.entry(agent.to_string()).or_default();
            agent.token = token.to_string();
        }
        let n = o.supervisor_tokens.len();
        for (i, spec) in o.supervisor_tokens.iter().enumerate() {
            let Some((shop, token)) = spec.split_once(':') else {
                return Err(invalid(
                    "--supervisor-token",
                    format!("entry {} of {n} is not SHOP:TOKEN{NOT_SHOWN}", i + 1),
                ));
            };
            if check_id("shop id", shop).is_err() {
                return Err(invalid(
                    "--supervisor-token",
                    format!("entry {} of {n}: {BAD_IDS}{NOT_SHOWN}", i + 1),
                ));
            }
            let entry = self.shops.entry(shop.to_string()).or_default();
            if !entry.supervisors.iter().any(|t| t == token) {
                entry.supervisors.push(token.to_string());
            }
        }
        self.reports
            .set_window("--service-window", o.service_window.as_deref())?;
        self.reports.set_timezone("--tz", o.timezone.as_deref())?;
        for spec in &o.shop_names {
            let Some((shop, name)) = spec.split_once(':') else {
                return Err(invalid("--shop-name", format!("`{spec}` is not SHOP:NAME")));
            };
            self.shops.entry(shop.to_string()).or_default().name = Some(name.to_string());
        }
        Ok(())
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.clock;
        // Named as the operator sets them: the flag (its KEFU_* variable
        // is listed beside it in --help) or the config file's key.
        if c.target.is_zero() {
            return Err(invalid(
                TARGET_SETTING,
                "the response target must be more than 0 seconds",
            ));
        }
        if c.nudge.is_zero() || c.nudge >= c.target {
            return Err(invalid(
                NUDGE_SETTING,
                format!(
                    "the nudge ({} s) must come after 0 s and before the response target \
                     ({} s, {TARGET_SETTING}); lower the nudge or raise the target",
                    c.nudge.as_secs_f64(),
                    c.target.as_secs_f64()
                ),
            ));
        }
        let l = &self.limits;
        // Upper bounds too: a connection may hold a frame this big, and
        // every connection allocates its read buffer at once (a read buffer
        // of 10^12 bytes took 11 GB at the first upgrade; found by review).
        if !(1024..=MAX_FRAME_BYTES).contains(&l.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!("must be between 1024 and {MAX_FRAME_BYTES} (16 MiB)"),
            ));
        }
        // Divided, not multiplied: 2^62 characters overflowed (found by
        // review).
        if l.max_text_chars == 0 || l.max_text_chars > l.max_frame_bytes / 4 {
            return Err(invalid(
                "limits.max_text_chars",
                format!(
                    "must be between 1 and {} (a quarter of limits.max_frame_bytes, {} bytes: \
                     a character takes up to 4)",
                    l.max_frame_bytes / 4,
                    l.max_frame_bytes
                ),
            ));
        }
        if l.rate_per_sec.is_nan() || l.rate_per_sec <= 0.0 || l.rate_burst == 0 {
            return Err(invalid(
                "limits.rate_per_sec / rate_burst",
                "the message rate and burst must be above 0",
            ));
        }
        if l.outbound_queue == 0 || l.max_connections == 0 {
            return Err(invalid(
                "limits",
                "outbound_queue and max_connections must be above 0",
            ));
        }
        if l.staff_reserve >= l.max_connections {
            return Err(invalid(
                "limits.staff_reserve",
                format!(
                    "the staff reserve ({}) must be less than max_connections ({}), \
                     or buyers would have no place at all; lower it (0 turns it off) \
                     or raise max_connections",
                    l.staff_reserve, l.max_connections
                ),
            ));
        }
        if l.ping_interval.is_zero() || l.hello_timeout.is_zero() || l.handshake_timeout.is_zero() {
            return Err(invalid(
                "limits",
                "ping_interval, hello_timeout and handshake_timeout must be above 0",
            ));
        }
        if !(512..=MAX_READ_BUFFER_BYTES).contains(&l.read_buffer_bytes) {
            return Err(invalid(
                "limits.read_buffer_bytes",
                format!(
                    "must be between 512 and {MAX_READ_BUFFER_BYTES} (1 MiB): every connection \
                     allocates it"
                ),
            ));
        }
        if l.max_open_conversations == 0 {
            return Err(invalid(
                "limits.max_open_conversations",
                "must be at least 1 (no shop could take a buyer)",
            ));
        }
        if l.signin_failures > 0 && l.signin_window < Duration::from_secs(1) {
            return Err(invalid(
                "limits.signin_window_secs",
                "must be at least 1 second while limits.signin_failures is above 0 \
                 (signin_failures: 0 turns the sign-in throttle off)",
            ));
        }
        if l.signin_tracked_unknown == 0 {
            return Err(invalid(
                "limits.signin_tracked_unknown",
                "must be at least 1 (made-up ids must be throttled like real ones)",
            ));
        }
        if self.shops.is_empty() {
            return Err(invalid(
                "shops",
                "no shop configured; give at least one --agent-token SHOP:AGENT:TOKEN \
                 (or a `shops:` section in the config file)",
            ));
        }
        for (id, shop) in &self.shops {
            check_id("shop id", id)?;
            for (agent, a) in &shop.agents {
                check_id(&format!("agent id in shop {id}"), agent)?;
                if a.token.is_empty() {
                    return Err(invalid(
                        format!("shop {id}, agent {agent}"),
                        "the token is empty; give every agent a token",
                    ));
                }
            }
            if shop.supervisors.iter().any(|t| t.is_empty()) {
                return Err(invalid(
                    format!("shop {id}, supervisors"),
                    "a supervisor token is empty",
                ));
            }
        }
        Ok(())
    }

    /// The name that fills `{shop}` for `shop`.
    pub fn shop_name<'a>(&'a self, shop: &'a str) -> &'a str {
        self.shops
            .get(shop)
            .and_then(|s| s.name.as_deref())
            .unwrap_or(shop)
    }
}

/// The clock settings as an operator knows them, for messages about a value
/// that may have come from either place.
const TARGET_SETTING: &str = "--target-secs (clock.target_secs)";
const NUDGE_SETTING: &str = "--nudge-secs (clock.nudge_secs)";

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn holding(setting: &str, v: f64) -> Result<Option<Duration>, ConfigError> {
    let d = secs(setting, v)?;
    Ok((!d.is_zero()).then_some(d))
}

fn parse_listen(setting: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        invalid(
            setting,
            format!("`{s}` is not an address such as 127.0.0.1:8080 or [::1]:8080"),
        )
    })
}

/// Shop and agent ids: what reports and URLs can carry without escaping.
/// The Hangul fillers count as letters (`Lo`) but show as blank space, so
/// they are refused too ([`has_hidden_chars`]): `a1` and `a1\u{3164}` would
/// be two agents who look the same.
pub fn check_id(what: &str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
        && !has_hidden_chars(id);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            format!(
                "`{id}` must be 1-64 letters, digits, `_`, `-`, `.` or `@` (no blank or \
                 invisible characters)"
            ),
        ))
    }
}

/// Whether `id` holds a character that shows as nothing, or as blank space,
/// on an agent's screen, so that two ids that look alike would be different
/// ids: control and format characters (zero-width spaces, direction marks),
/// line and paragraph separators, any whitespace (ordinary, no-break,
/// ideographic U+3000), Unicode's default-ignorable code points (Hangul
/// fillers U+115F U+1160 U+3164 U+FFA0, the combining grapheme joiner
/// U+034F, variation selectors U+FE00-FE0F and U+E0100-E01EF, Mongolian
/// and Khmer ones, tags, soft hyphen), and the blank fillers outside that
/// list: the braille blank U+2800 and the Khitan filler U+16FE4.
///
/// Except inside an emoji: the emoji presentation selector U+FE0F right
/// after an emoji (`❤️`, which phone keyboards insert) or in a keycap
/// (`1️⃣`), and the zero-width joiner U+200D between two emoji (`👩‍💻`). Such
/// nicknames are ordinary, and refusing them left their buyers without
/// service (found by review). What remains: `❤小店` and `❤️小店` look alike
/// and are two ids.
pub fn has_hidden_chars(id: &str) -> bool {
    static HIDDEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{White_Space}\p{Default_Ignorable_Code_Point}\x{2800}\x{16FE4}]",
        )
        .expect("a valid class")
    });
    static EMOJI: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        // Skin tones (U+1F3FB-1F3FF) may stand before a joiner too.
        regex::Regex::new(r"^[\p{Extended_Pictographic}\x{1F3FB}-\x{1F3FF}]$")
            .expect("a valid class")
    });
    if !HIDDEN.is_match(id) {
        return false;
    }
    let chars: Vec<char> = id.chars().collect();
    let emoji = |c: Option<&char>| c.is_some_and(|c| EMOJI.is_match(c.encode_utf8(&mut [0; 4])));
    chars.iter().enumerate().any(|(i, &c)| {
        let prev = i.checked_sub(1).and_then(|p| chars.get(p));
        let next = chars.get(i + 1);
        let in_emoji = match c {
            '\u{FE0F}' => {
                emoji(prev)
                    || (prev.is_some_and(|p| matches!(p, '0'..='9' | '#' | '*'))
                        && next == Some(&'\u{20E3}'))
            }
            '\u{200D}' => (emoji(prev) || prev == Some(&'\u{FE0F}')) && emoji(next),
            _ => false,
        };
        !in_emoji && HIDDEN.is_match(c.encode_utf8(&mut [0; 4]))
    })
}

/// A token flag's or variable's entry is never quoted in an error: it
/// holds a token, and a piece of one when a token held a comma (the
/// variables separate entries with commas).
const NOT_SHOWN: &str = " (not shown: it holds a token; in KEFU_AGENT_TOKENS and \
    KEFU_SUPERVISOR_TOKENS commas separate entries, so a token there cannot hold one)";

const BAD_IDS: &str = "the shop or agent id is not 1-64 letters, digits, `_`, `-`, `.` or `@`";

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: impl FnOnce(&mut Overrides)) -> Overrides {
        let mut o = Overrides::default();
        f(&mut o);
        o
    }

    /// A shop id mistyped in a name or supervisor flag makes a shop
    /// without agents: named at start.
    #[test]
    fn shops_without_agents_are_named() {
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            // (agent tokens, supervisor tokens, shop names, shops without agents)
            (&["s1:a1:t1"], &["s1:boss"], &["s1:小熊"], &[]),
            (&["s1:a1:t1"], &[], &["S1:小熊"], &["S1"]),
            (&["s1:a1:t1"], &["s2:boss"], &[], &["s2"]),
            (&[], &[], &["s1:小熊"], &["s1"]),
        ];
        for &(agents, bosses, names, want) in cases {
            let o = flags(|o| {
                o.agent_tokens = agents.iter().map(|s| s.to_string()).collect();
                o.supervisor_tokens = bosses.iter().map(|s| s.to_string()).collect();
                o.shop_names = names.iter().map(|s| s.to_string()).collect();
            });
            let c = Config::load(None, &o).unwrap();
            assert_eq!(
                c.shops_without_agents(),
                want,
                "{agents:?} {bosses:?} {names:?}"
            );
        }
    }

    /// Shop and agent ids: the Hangul fillers are letters to Rust
    /// (`is_alphanumeric`) but blank on screen, so `a1\u{3164}` would be a
    /// second agent who looks like `a1`.
    #[test]
    fn config_ids_refuse_blank_letters() {
        for (id, ok) in [
            ("a1", true),
            ("小美", true),
            ("tmall.shop-01@x_y", true),
            ("a1\u{3164}", false),
            ("a1\u{115f}", false),
            ("a1\u{1160}", false),
            ("a1\u{ffa0}", false),
            ("a1 ", false),
            ("a1\u{3000}", false),
            ("a1\u{200b}", false),
            ("a1\u{fe0f}", false),
            ("", false),
        ] {
            assert_eq!(check_id("agent id", id).is_ok(), ok, "{id:?}");
        }
    }

    #[test]
    fn one_command_line_makes_a_shop() {
        let o = flags(|o| {
            o.agent_tokens = vec!["s1:a1:t:with:colons".into(), "s1:a2:t2".into()];
            o.shop_names = vec!["s1:小米旗舰店".into()];
            o.supervisor_tokens = vec!["s1:boss".into()];
            o.target_secs = Some(10.0);
            o.nudge_secs = Some(5.5);
            o.holding_secs = Some(0.0);
        });
        let c = Config::load(None, &o).unwrap();
        let s1 = &c.shops["s1"];
        assert_eq!(s1.agents["a1"].token, "t:with:colons");
        assert_eq!(s1.agents["a2"].token, "t2");
        assert_eq!(s1.supervisors, vec!["boss".to_string()]);
        assert_eq!(c.shop_name("s1"), "小米旗舰店");
        assert_eq!(c.clock.target, Duration::from_secs(10));
        assert_eq!(c.clock.nudge, Duration::from_millis(5500));
        assert_eq!(c.clock.holding, None);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn flags_win_over_the_file() {
        let yaml = "listen: 127.0.0.1:9000\nclock:\n  target_secs: 40\n  nudge_secs: 25\n\
                    shops:\n  s1:\n    name: 文件店\n    agents:\n      a1: {token: filetok, name: 小美}\n";
        let mut c = Config::default();
        c.apply_file_text(Path::new("k.yaml"), yaml).unwrap();
        assert_eq!(c.clock.target, Duration::from_secs(40));
        c.apply_overrides(&flags(|o| {
            o.listen = Some("127.0.0.1:9100".into());
            o.target_secs = Some(50.0);
            o.agent_tokens = vec!["s1:a1:flagtok".into()];
        }))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.clock.target, Duration::from_secs(50));
        assert_eq!(c.clock.nudge, Duration::from_secs(25), "file value kept");
        assert_eq!(c.shops["s1"].agents["a1"].token, "flagtok");
        assert_eq!(c.shops["s1"].agents["a1"].name.as_deref(), Some("小美"));
        assert_eq!(c.shop_name("s1"), "文件店");
    }

    #[test]
    fn bad_settings_are_explained() {
        let cases: &[(&str, Overrides, &str)] = &[
            ("no shop", Overrides::default(), "no shop configured"),
            (
                "token without agent",
                flags(|o| o.agent_tokens = vec!["s1:secret".into()]),
                "is not SHOP:AGENT:TOKEN",
            ),
            (
                "nudge after target",
                flags(|o| {
                    o.agent_tokens = vec!["s1:a1:t".into()];
                    o.nudge_secs = Some(30.0);
                }),
                "--nudge-secs (clock.nudge_secs): the nudge (30 s) must come after 0 s and \
                 before the response target (30 s, --target-secs (clock.target_secs))",
            ),
            (
                "nudge after the default target",
                flags(|o| {
                    o.agent_tokens = vec!["s1:a1:t".into()];
                    o.nudge_secs = Some(40.0);
                }),
                "--nudge-secs (clock.nudge_secs): the nudge (40 s)",
            ),
            (
                "zero target",
                flags(|o| {
                    o.agent_tokens = vec!["s1:a1:t".into()];
                    o.target_secs = Some(0.0);
                }),
                "--target-secs (clock.target_secs): the response target must be more than 0",
            ),
            (
                "bad address",
                flags(|o| {
                    o.agent_tokens = vec!["s1:a1:t".into()];
                    o.listen = Some("localhost".into());
                }),
                "is not an address",
            ),
            (
                "bad shop id",
                flags(|o| o.agent_tokens = vec!["s 1:a1:t".into()]),
                "entry 1 of 1: the shop or agent id is not 1-64 letters",
            ),
            (
                "empty token",
                flags(|o| o.agent_tokens = vec!["s1:a1:".into()]),
                "the token is empty",
            ),
            (
                "negative seconds",
                flags(|o| {
                    o.agent_tokens = vec!["s1:a1:t".into()];
                    o.target_secs = Some(-1.0);
                }),
                "is not a number of seconds",
            ),
        ];
        for (name, o, want) in cases {
            let err = Config::load(None, o).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(!err.contains("secret"), "{name}: token leaked: {err}");
        }
    }

    #[test]
    fn the_staff_reserve_is_read_and_checked() {
        let mut c = Config::default();
        assert_eq!(c.limits.staff_reserve, DEFAULT_STAFF_RESERVE);
        c.apply_file_text(
            Path::new("k.yaml"),
            "limits:\n  max_connections: 100\n  staff_reserve: 8\n",
        )
        .unwrap();
        c.apply_overrides(&flags(|o| o.agent_tokens = vec!["s1:a1:t".into()]))
            .unwrap();
        c.validate().unwrap();
        assert_eq!((c.limits.max_connections, c.limits.staff_reserve), (100, 8));
        c.limits.staff_reserve = 100;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("limits.staff_reserve: the staff reserve (100) must be less than"),
            "{err}"
        );
    }

    /// `allowed_origins` entries are origins as browsers send them; what
    /// could never equal an `Origin` header is refused, naming the entry.
    #[test]
    fn allowed_origins_are_read_and_checked() {
        let read = |yaml: &str| {
            let mut c = Config::default();
            c.apply_file_text(Path::new("k.yaml"), yaml)
                .map(|()| c.allowed_origins)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            read(
                "allowed_origins: [https://Shop.example, 'http://127.0.0.1:8080', \
                 'https://m.shop.example:443', 'http://[::1]:9000', 'https://shop.example:8443']\n"
            ),
            Ok(vec![
                "https://shop.example".to_string(),
                "http://127.0.0.1:8080".to_string(),
                // a default port is dropped: browsers never send it
                "https://m.shop.example".to_string(),
                "http://[::1]:9000".to_string(),
                "https://shop.example:8443".to_string(),
            ])
        );
        assert_eq!(read("listen: 127.0.0.1:1\n"), Ok(Vec::new()));
        for bad in [
            "shop.example",
            "https://",
            "https://shop.example/",
            "https://shop.example/chat",
            "https://*.shop.example",
            "ws://shop.example",
            "https://shop.example:",
            "https://shop.example:abc",
            "https://shop.example:8443:1",
            "https://shop.example:0",
            "https://shop.example:70000",
            "https://shop.example%2f",
            "https://evil@shop.example",
            "https://店.example",
            "https://shop.example.",
        ] {
            let err = read(&format!("allowed_origins: ['{bad}']\n")).unwrap_err();
            assert!(
                err.starts_with(&format!("allowed_origins: `{bad}`")),
                "{bad}: {err}"
            );
        }

        let own: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut c = Config::default();
        assert!(c.origin_allowed(Some(Some("https://evil.example")), own));
        c.allowed_origins = vec!["https://shop.example".into()];
        // (Origin header: absent, unreadable or a value; allowed)
        let cases = [
            (Some(Some("https://shop.example")), true),
            (Some(Some(" HTTPS://SHOP.EXAMPLE ")), true),
            (Some(Some("https://evil.example")), false),
            (Some(Some("http://shop.example")), false),
            // kefu's own pages, by its own address only: a rebinding name
            // (evil.example resolving to 127.0.0.1) is not kefu's
            (Some(Some("http://127.0.0.1:8080")), true),
            (Some(Some("http://localhost:8080")), true),
            (Some(Some("https://127.0.0.1:8080")), false),
            (Some(Some("http://127.0.0.1:8081")), false),
            (Some(Some("http://evil.example:8080")), false),
            (Some(Some("null")), false),
            (Some(None), false),
            (None, true),
        ];
        for (origin, want) in cases {
            assert_eq!(c.origin_allowed(origin, own), want, "{origin:?}");
        }
        // localhost is kefu's only where it listens on loopback
        let public: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        assert!(c.origin_allowed(Some(Some("http://10.0.0.5:8080")), public));
        assert!(!c.origin_allowed(Some(Some("http://localhost:8080")), public));
    }

    /// A config file that is not UTF-8 is reported with the place of its
    /// first bad byte.
    #[test]
    fn a_config_file_that_is_not_utf8_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kefu.yaml");
        std::fs::write(
            &path,
            b"listen: 127.0.0.1:1\nshops:\n  s1: {name: \"\xb5\xea\"}\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        let want = format!("{}:3:15: byte 0xb5 is not UTF-8", path.display());
        assert!(err.starts_with(&want), "{err}");
    }

    /// Limits that would take the machine's memory or overflow are
    /// refused, each naming the setting (found by review: a read buffer of
    /// 10^12 bytes took 11 GB at the first connection; 2^62 characters
    /// overflowed the text limit's check).
    #[test]
    fn limits_have_upper_bounds() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "read_buffer_bytes: 1000000000000",
                Some("limits.read_buffer_bytes: must be between 512 and 1048576"),
            ),
            ("read_buffer_bytes: 1048576", None),
            (
                "read_buffer_bytes: 100",
                Some("limits.read_buffer_bytes: must be between 512"),
            ),
            (
                "max_text_chars: 4611686018427387904",
                Some("limits.max_text_chars: must be between 1 and 16384"),
            ),
            ("max_text_chars: 16384", None),
            (
                "max_text_chars: 16385",
                Some("limits.max_text_chars: must be between 1 and 16384"),
            ),
            (
                "max_text_chars: 0",
                Some("limits.max_text_chars: must be between 1 and 16384"),
            ),
        ];
        for &(line, want) in cases {
            let mut c = Config::default();
            c.apply_file_text(Path::new("k.yaml"), &format!("limits:\n  {line}\n"))
                .unwrap();
            c.apply_overrides(&flags(|o| o.agent_tokens = vec!["s1:a1:t".into()]))
                .unwrap();
            let got = c.validate().err().map(|e| e.to_string());
            match (want, got) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.starts_with(want), "{line}: {got}"),
                (want, got) => panic!("{line}: wanted {want:?}, got {got:?}"),
            }
        }
        // Not a file setting; a caller of the library may still set it.
        let mut c = Config::default();
        c.apply_overrides(&flags(|o| o.agent_tokens = vec!["s1:a1:t".into()]))
            .unwrap();
        c.limits.max_frame_bytes = 1 << 40;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("limits.max_frame_bytes: must be between 1024 and 16777216"),
            "{err}"
        );
    }

    #[test]
    fn yaml_errors_have_file_line_and_column() {
        let mut c = Config::default();
        let err = c
            .apply_file_text(
                Path::new("kefu.yaml"),
                "listen: 127.0.0.1:1\nclok:\n  target_secs: 3\n",
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kefu.yaml:2:"), "{err}");
        assert!(err.contains("clok"), "{err}");
    }

    /// A token written where the file wants a map or a list must not be
    /// printed back (the message reaches the log on a reload); the place
    /// is. Other settings keep the value, which helps to spot the typo.
    #[test]
    fn yaml_errors_under_shops_do_not_quote_tokens() {
        const HIDDEN: &str = "(not shown: it may be a token)";
        let cases: &[(&str, &str, &str)] = &[
            (
                "shops:\n  s1:\n    agents:\n      a1: secret-token-abc\n",
                "kefu.yaml:4:11: shops.s1.agents.a1: invalid type: string (not shown: it may be a token), expected struct AgentConfig",
                "secret-token-abc",
            ),
            (
                "shops:\n  s1:\n    supervisors: sup-secret-xyz\n",
                "kefu.yaml:3:18: shops.s1.supervisors: invalid type: string (not shown: it may be a token), expected a sequence",
                "sup-secret-xyz",
            ),
            (
                "shops:\n  s1:\n    supervisors: 'q\"uo\\te\" tail'\n",
                "kefu.yaml:3:18: shops.s1.supervisors: invalid type: string (not shown: it may be a token), expected a sequence",
                "tail",
            ),
            // An all-digit token, also in hex (shown in decimal), a bool,
            // a number too large for any integer type.
            ("shops:\n  s1:\n    agents:\n      a1: 1234567890123456\n", HIDDEN, "1234567890123456"),
            ("shops:\n  s1:\n    agents:\n      a1: 0x1234abcdef\n", HIDDEN, "78193085935"),
            ("shops:\n  s1:\n    agents:\n      a1: true\n", HIDDEN, "true`"),
            ("shops:\n  s1:\n    supervisors: 98765432109876543210\n", HIDDEN, "98765432109876543210"),
            // A token written as a key.
            ("shops:\n  s1:\n    agents:\n      a1:\n        tok-secret-abc:\n", HIDDEN, "tok-secret-abc"),
            ("shops:\n  s1:\n    agents:\n      a1: {token: x, tok-secret-def}\n", HIDDEN, "tok-secret-def"),
        ];
        for &(yaml, want, secret) in cases {
            let err = Config::default()
                .apply_file_text(Path::new("kefu.yaml"), yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{yaml}: {err}");
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("shops.s1"), "the place stays: {err}");
        }
        // Outside `shops` the value stays: it helps to spot the typo.
        let err = Config::default()
            .apply_file_text(Path::new("kefu.yaml"), "clock:\n  target_secs: soon\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"soon\""), "{err}");
    }

    /// A token with a comma in KEFU_AGENT_TOKENS splits into entries whose
    /// pieces must not be printed either (as a shop id, say).
    #[test]
    fn flag_entries_with_bad_ids_are_not_quoted() {
        for (agents, bosses, secret) in [
            (vec!["s1:a1:abc", "def:ghi"], vec![], "def"),
            (vec!["s1:a1:abc", "de/f:gh:ij"], vec![], "de/f"),
            (vec!["s1:a1:abc", "s1:b a:xyz"], vec![], "b a"),
            (vec![], vec!["bo ss:tok"], "bo ss"),
        ] {
            let o = flags(|o| {
                o.agent_tokens = agents.iter().map(|s| s.to_string()).collect();
                o.supervisor_tokens = bosses.iter().map(|s| s.to_string()).collect();
            });
            let mut c = Config::default();
            let err = c
                .apply_overrides(&o)
                .and_then(|_| c.validate())
                .unwrap_err()
                .to_string();
            assert!(!err.contains(secret), "{err}");
        }
    }

    /// The cap on a shop's open conversations comes from the YAML file
    /// and must leave room for at least one.
    #[test]
    fn the_open_conversation_cap_is_read_and_checked() {
        let cases: &[(&str, Result<usize, &str>)] = &[
            ("", Ok(10_000)),
            ("limits:\n  max_open_conversations: 50\n", Ok(50)),
            (
                "limits:\n  max_open_conversations: 0\n",
                Err("limits.max_open_conversations: must be at least 1"),
            ),
        ];
        for (yaml, want) in cases {
            let mut c = Config::default();
            c.apply_file_text(Path::new("kefu.yaml"), yaml).unwrap();
            c.shops.insert("s1".into(), ShopConfig::default());
            let got = c
                .validate()
                .map(|()| c.limits.max_open_conversations)
                .map_err(|e| e.to_string());
            match (got, want) {
                (Ok(n), Ok(w)) => assert_eq!(n, *w, "{yaml}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{yaml}: {e}"),
                (got, want) => panic!("{yaml}: {got:?}, want {want:?}"),
            }
        }
    }

    /// The sign-in throttle's settings: defaults, file keys, 0 turning it
    /// off, and what cannot work.
    #[test]
    fn the_signin_throttle_is_read_and_checked() {
        // (failures, window in seconds, tracked unknown ids), or the error.
        type Want = Result<(u32, u64, usize), &'static str>;
        let cases: &[(&str, Want)] = &[
            ("", Ok((10, 60, 10_000))),
            (
                "limits:\n  signin_failures: 5\n  signin_window_secs: 300\n  \
                 signin_tracked_unknown: 100\n",
                Ok((5, 300, 100)),
            ),
            ("limits:\n  signin_failures: 0\n", Ok((0, 60, 10_000))),
            (
                "limits:\n  signin_failures: 0\n  signin_window_secs: 0\n",
                Ok((0, 0, 10_000)),
            ),
            (
                "limits:\n  signin_window_secs: 0.5\n",
                Err("limits.signin_window_secs: must be at least 1 second"),
            ),
            (
                "limits:\n  signin_tracked_unknown: 0\n",
                Err("limits.signin_tracked_unknown: must be at least 1"),
            ),
            (
                "limits:\n  signin_window_secs: -1\n",
                Err("limits.signin_window_secs: -1 is not a number of seconds"),
            ),
            ("limits:\n  signin_failures: -1\n", Err("kefu.yaml:2:")),
        ];
        for (yaml, want) in cases {
            let mut c = Config::default();
            c.shops.insert("s1".into(), ShopConfig::default());
            let got = c
                .apply_file_text(Path::new("kefu.yaml"), yaml)
                .and_then(|()| c.validate())
                .map(|()| {
                    let l = &c.limits;
                    (
                        l.signin_failures,
                        l.signin_window.as_secs(),
                        l.signin_tracked_unknown,
                    )
                })
                .map_err(|e| e.to_string());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{yaml}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{yaml}: {e}"),
                (got, want) => panic!("{yaml}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kefu.example.yaml");
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert!(!c.shops.is_empty());
        assert!(c.listen.ip().is_loopback());
    }

    #[test]
    fn short_tokens_are_named_never_shown() {
        let mut c = Config::default();
        let mut shop = ShopConfig::default();
        for (id, token) in [("a1", "change-me"), ("a2", "k3J9vQ2mX7pL4wZ8rT6y")] {
            shop.agents.insert(
                id.into(),
                AgentConfig {
                    token: token.into(),
                    name: None,
                },
            );
        }
        shop.supervisors = vec!["boss".into(), "N5dR8tW2qZ7xK4mB9cV3".into()];
        c.shops.insert("s1".into(), shop);
        let weak = c.weak_tokens();
        assert_eq!(weak, ["s1:a1", "s1:supervisor #1"]);
        assert!(weak
            .iter()
            .all(|w| !w.contains("change-me") && !w.contains("boss")));
    }
}
