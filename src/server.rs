//! The service behind `kefu serve`: HTTP on one port, WebSocket chat at `/ws`.
//!
//! Layout, one concern per submodule:
//!
//! - [`http`](self::http): hyper 1 connection, the router (`/ws`, `/healthz`,
//!   the pages) and the WebSocket upgrade;
//! - [`api`](self::api): the supervisors' JSON reports (`/api/report`);
//! - [`conn`](self::conn): one WebSocket connection: read, rate limit, write,
//!   ping, close;
//! - [`hub`](self::hub): shops, agents and conversations: routing, rounds,
//!   the messages they produce (`hub::render`: the frames that carry
//!   conversations, rendered outside the lock);
//! - [`outbox`](self::outbox): each connection's bounded outbound queue, the
//!   wait for room in an agent's, and the close orders;
//! - [`ask`](self::ask): what a waiting buyer's suggestions answer: the
//!   round's buyer lines together (a question split over several messages);
//! - [`timer`](self::timer): the one task that fires the clock's alarms and
//!   expires abandoned conversations;
//! - [`reload`](self::reload): hot reload of the phrase directory;
//! - [`last_good`](self::last_good): the copy of the last phrase libraries
//!   that loaded, which a start serves when the directory does not load;
//! - [`busy`](self::busy): at the connection limit, the places kept for
//!   staff and the 503 for everyone else;
//! - [`restore`](self::restore): at start, the conversations open when the
//!   service stopped, from the event log;
//! - [`secret`](self::secret): the key behind buyers' resume secrets;
//! - [`throttle`](self::throttle): the budget of failed staff sign-ins
//!   (agents' hellos, supervisors' reports) per account.
//!
//! Shared state lives behind [`App`], a cheap-to-clone handle. The hub is one
//! `std::sync::Mutex`, held only for map updates (never across `.await`);
//! matching runs outside it, and what a change produces (frames to clients,
//! events for the store) is collected while the lock is held and delivered
//! after it is released. Every client has a bounded outbound queue; a
//! client whose queue is full is disconnected, so a reader that stalls never
//! grows our memory or slows anyone else.

mod api;
mod ask;
mod busy;
mod conn;
mod http;
mod hub;
mod last_good;
mod outbox;
mod rate;
mod reload;
mod restore;
mod secret;
mod throttle;
mod timer;

pub use last_good::LAST_GOOD_DIR;
pub use restore::{Restored, RESTART_GRACE};
pub use secret::{KeyError, ResumeKey, KEY_FILE};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

pub use hub::StaffChanges;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{error, info, warn};

use crate::clock::Timebase;
use crate::config::Config;
use crate::events::Event;
use crate::matcher::{BuildError, Matcher};
use crate::phrases::{Library, LoadErrors, LoadedDir, LoadedFile, ProblemKind, Templates};
use crate::politeness::Checker;
use crate::protocol::{PhraseSource, PhraseStatus};
use crate::store::StoreHandle;

/// Bytes of frames a connection gathers before writing them out (it
/// writes at the end of every batch anyway). The buffer grows only as far
/// as a batch needs.
const WRITE_BUFFER: usize = 64 * 1024;

/// Most a connection's write buffer holds: the largest frame the server
/// sends (a welcome with a large backlog) must fit. The same figure as
/// tungstenite's default limit on an incoming message.
const MAX_WRITE_BUFFER: usize = 64 << 20;

/// Suggestions sent with each buyer message.
pub const SUGGESTIONS: usize = 3;

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot load the phrase libraries in {dir}: {errors}\n(run `kefu check {dir}` for the list)")]
    Phrases { dir: String, errors: LoadErrors },
    #[error("cannot load the phrase libraries in {dir}: {errors}\nnor their last good copy in {copy}: {copy_errors}\n(run `kefu check {dir}` for the list; fix the files, or move the copy aside to see only the directory's problems)")]
    PhrasesAndLastGood {
        dir: String,
        errors: LoadErrors,
        copy: String,
        copy_errors: LoadErrors,
    },
    #[error("cannot build the matcher: {0}")]
    Matcher(#[from] BuildError),
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

/// The compiled phrase libraries: built once per (re)load and shared.
#[derive(Debug)]
pub struct Phrases {
    /// Shared with the reports (`by=stage` ranks messages logged without a
    /// stage).
    pub matcher: Arc<Matcher>,
    pub checker: Checker,
    pub templates: Templates,
}

impl Phrases {
    pub fn from_library(lib: &Library) -> Result<Phrases, BuildError> {
        Ok(Phrases {
            matcher: Arc::new(Matcher::new(lib)?),
            checker: Checker::new(&lib.politeness),
            templates: lib.templates.clone(),
        })
    }

    /// Loads `dir`; on failure, every problem as `file:line:column: message`.
    pub fn load(dir: &std::path::Path) -> Result<Phrases, Vec<String>> {
        let lib = Library::load_dir(dir)
            .map_err(|e| e.0.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
        Phrases::from_library(&lib).map_err(|e| vec![format!("{}: {e}", dir.display())])
    }
}

/// Cheap-to-clone handle on the running service's shared state.
#[derive(Clone)]
pub struct App {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    hub: Mutex<hub::Hub>,
    phrases: RwLock<Arc<Phrases>>,
    store: StoreHandle,
    tap: OnceLock<mpsc::UnboundedSender<Event>>,
    /// The address [`run`] listens on (`listen` with port 0 resolved):
    /// kefu's own pages' origin for `allowed_origins`.
    bound: OnceLock<std::net::SocketAddr>,
    timebase: Timebase,
    /// Wakes the timer task when a deadline earlier than its sleep appears.
    timer: Notify,
    shutdown: watch::Sender<bool>,
    /// Set (before `shutdown` changes) once shutdown is ordered: what the
    /// connection loops read on their hot path. Reading the watch itself
    /// takes its lock, which every connection shares.
    stopping: AtomicBool,
    next_conn: AtomicU64,
    ws_config: WebSocketConfig,
    /// Places anyone may take: `max_connections - staff_reserve`.
    connections: Arc<Semaphore>,
    /// Places kept for staff, taken once `connections` is full.
    staff_places: Arc<Semaphore>,
    /// The phrase directory as it was loaded, for the reload watcher.
    loaded_fingerprint: Mutex<Option<reload::Fingerprint>>,
    /// The libraries in use and the state of the files on disk, for
    /// agents' welcomes and `/healthz`.
    library: RwLock<Arc<PhraseStatus>>,
    /// The files of the libraries in use (without their bytes), for the
    /// reload's check that nothing in use is lost.
    in_force: Mutex<Vec<LoadedFile>>,
    /// The data directory that keeps the last-good copy of the libraries
    /// ([`last_good`]); `None` keeps none.
    last_good: Option<PathBuf>,
    /// Reads the event log for the supervisors' reports (`/api/report`).
    reports: OnceLock<crate::store::Reader>,
    /// Failed staff sign-ins per account. Its own lock, never held with
    /// the hub's nor across `.await`.
    signins: Mutex<throttle::SignIns>,
    /// Each shop's supervisor tokens, by shop id (every shop of the
    /// settings, with or without supervisors): `/api/report` checks them
    /// here, and a settings reload replaces them.
    supervisors: RwLock<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Logs the ids of the project's taxonomy the libraries lack: served all
/// the same (buyers asking for those get no suggestion, or another
/// intent's), but `kefu check` fails on them, so a supervisor should know.
pub(crate) fn warn_missing_required(dir: &Path, library: &Library) {
    let missing = library.missing_required();
    if !missing.is_empty() {
        warn!(
            dir = %dir.display(),
            missing = %missing.join(", "),
            "the phrase libraries lack {} required intent(s); buyers asking for them get no \
             matching suggestion: add them (see `kefu check {}`)",
            missing.len(),
            dir.display()
        );
    }
}

/// The supervisor tokens of every shop of `config`.
fn supervisors_of(config: &Config) -> std::collections::BTreeMap<String, Vec<String>> {
    config
        .shops
        .iter()
        .map(|(id, s)| (id.clone(), s.supervisors.clone()))
        .collect()
}

impl App {
    /// Loads the phrase libraries of `config.phrases` and builds the state.
    /// Events go to `store`. Keeps no last-good copy (see [`App::open`]).
    pub fn new(config: Config, store: StoreHandle) -> Result<App, ServerError> {
        App::start(config, store, None)
    }

    /// [`App::new`] as `kefu serve` starts: the libraries that load (at
    /// start and at every good reload) are copied to data directory `data`
    /// ([`LAST_GOOD_DIR`]), and when `config.phrases` does not load, the
    /// service starts from that copy, logs the problems and reports them
    /// (agents' `welcome`, `/healthz`) until a fixed edit reloads. Without
    /// a copy (a first start) it refuses, as [`App::new`] does.
    pub fn open(config: Config, store: StoreHandle, data: &Path) -> Result<App, ServerError> {
        App::start(config, store, Some(data))
    }

    fn start(config: Config, store: StoreHandle, data: Option<&Path>) -> Result<App, ServerError> {
        // Taken before loading: an edit racing the load shows up as a change.
        let fingerprint = reload::fingerprint(&config.phrases);
        // `served`: the directory the libraries in use came from.
        let (loaded, source, problems, served) = match LoadedDir::load(&config.phrases) {
            Ok(loaded) => (
                loaded,
                PhraseSource::Directory,
                Vec::new(),
                config.phrases.clone(),
            ),
            Err(errors) => {
                let dir = config.phrases.display().to_string();
                let Some(found) = data.and_then(last_good::load) else {
                    return Err(ServerError::Phrases { dir, errors });
                };
                let (copy, loaded) =
                    found.map_err(|(copy, copy_errors)| ServerError::PhrasesAndLastGood {
                        dir: dir.clone(),
                        errors: errors.clone(),
                        copy: copy.display().to_string(),
                        copy_errors,
                    })?;
                for p in &errors.0 {
                    error!(dir = %dir, "phrase library problem: {p}");
                }
                error!(
                    dir = %dir,
                    copy = %copy.display(),
                    problems = errors.0.len(),
                    "the phrase libraries do not load: serving their last good copy; fix the files \
                     (run `kefu check {dir}`) and they reload as usual"
                );
                let problems = errors.0.iter().map(ToString::to_string).collect();
                (loaded, PhraseSource::LastGood, problems, copy)
            }
        };
        warn_missing_required(&served, &loaded.library);
        let phrases = Phrases::from_library(&loaded.library)?;
        let mut problems = problems;
        if let (Some(data), PhraseSource::Directory) = (data, source) {
            problems = Self::keep_copy(data, &loaded, &config.phrases);
        }
        let app = App::assemble(config, phrases, store, data.map(Path::to_path_buf));
        app.libraries_in_use(loaded.files, source);
        if !problems.is_empty() {
            app.phrase_problems(problems);
        }
        *app.shared
            .loaded_fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = fingerprint;
        Ok(app)
    }

    /// Makes `loaded`, the phrase directory `dir` as a start loaded it, the
    /// last-good copy of data directory `data`. Returns the problems to
    /// report when it lacks a stage library the copy has.
    ///
    /// A reload refuses to lose a stage library; a start takes what the
    /// directory holds (that is how a library is removed on purpose). But a
    /// stray `rm` that a reload refused must not go unnoticed at the next
    /// deploy or crash (found by review: the start served without the
    /// stage, said `ok` everywhere, replaced the copy, and logged a line
    /// saying the reload was refused). So each loss is logged at error
    /// level saying what the start did, the copy before is kept as
    /// `phrases.last-good.old` to copy the file back from, and the loss is
    /// in the phrase status (agents' `welcome`, `/healthz`: `phrases:
    /// stale`) until a good reload or the next start: agents whose stage
    /// gets no suggestions, and whoever watches `/healthz`, hear of it
    /// where the log is read by nobody; after a removal on purpose the
    /// notice lasts this run only (the next start's copy lacks the file
    /// too).
    fn keep_copy(data: &Path, loaded: &LoadedDir, dir: &Path) -> Vec<String> {
        let lost = match last_good::load(data) {
            Some(Ok((_, copy))) => loaded.losses(&copy.files, dir),
            _ => Vec::new(),
        };
        let saved = if lost.is_empty() {
            last_good::save(data, &loaded.files).map(|()| None)
        } else {
            last_good::save_keeping_previous(data, &loaded.files)
        };
        let kept = match saved {
            Ok(kept) => kept,
            Err(e) => {
                warn!(data = %data.display(), "cannot keep a copy of the phrase libraries: {e}");
                None
            }
        };
        let mut problems = Vec::new();
        for p in &lost {
            let (stage, intents, what) = match &p.kind {
                ProblemKind::LibraryFileGone { stage, intents } => {
                    let name = p.file.file_name().unwrap_or_default().to_string_lossy();
                    (*stage, *intents, format!("started without {name}"))
                }
                ProblemKind::StageEmptied { stage, intents } => (
                    *stage,
                    *intents,
                    format!("started with no intent of stage {stage}"),
                ),
                _ => continue,
            };
            let from = match &kept {
                Some(old) => format!(" (the copy before this start is in {})", old.display()),
                None => String::new(),
            };
            let text = format!(
                "{}: {what}, which the last good copy has ({intents} intent(s) of stage {stage}, \
                 {}): {} messages get no suggestions; restore the file{from} or, if it was \
                 removed on purpose, ignore this",
                p.file.display(),
                stage.label(),
                stage.as_str().replace('_', "-"),
            );
            error!("{text}");
            problems.push(text);
        }
        problems
    }

    /// Builds the state around already compiled phrases.
    pub fn with_phrases(config: Config, phrases: Phrases, store: StoreHandle) -> App {
        App::assemble(config, phrases, store, None)
    }

    fn assemble(
        config: Config,
        phrases: Phrases,
        store: StoreHandle,
        last_good: Option<PathBuf>,
    ) -> App {
        let l = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(l.read_buffer_bytes)
            // Frames written in one batch reach the socket in one write at
            // the batch's flush. With 0 (eager writes, which we had) every
            // frame was a system call of its own, batch or not.
            .write_buffer_size(WRITE_BUFFER)
            // tungstenite refuses any single frame larger than this cap,
            // and a welcome carrying a large backlog (hundreds of waiting
            // buyers with long chats) is megabytes: a cap of a few hundred
            // KiB dropped the agent as they signed in, and the next one.
            // The cap still bounds what a client that does not read can
            // make us hold (pongs to its pings, which share the message
            // rate limit, see `conn`).
            .max_write_buffer_size(MAX_WRITE_BUFFER)
            .max_frame_size(Some(l.max_frame_bytes))
            .max_message_size(Some(l.max_frame_bytes));
        let hub = hub::Hub::new(&config);
        // `validate` keeps the reserve below the limit; a config built in
        // code that skips it still never exceeds `max_connections`.
        let reserve = l.staff_reserve.min(l.max_connections);
        let connections = Arc::new(Semaphore::new(l.max_connections - reserve));
        let staff_places = Arc::new(Semaphore::new(reserve));
        let (shutdown, _) = watch::channel(false);
        let timebase = Timebase::new();
        let library = PhraseStatus {
            ok: true,
            source: PhraseSource::Directory,
            since: timebase.now_ms(),
            files: Vec::new(),
            intents: phrases.matcher.intent_count(),
            problems: Vec::new(),
        };
        App {
            shared: Arc::new(Shared {
                hub: Mutex::new(hub),
                phrases: RwLock::new(Arc::new(phrases)),
                store,
                tap: OnceLock::new(),
                bound: OnceLock::new(),
                timebase,
                timer: Notify::new(),
                shutdown,
                stopping: AtomicBool::new(false),
                next_conn: AtomicU64::new(1),
                ws_config,
                connections,
                staff_places,
                loaded_fingerprint: Mutex::new(None),
                library: RwLock::new(Arc::new(library)),
                in_force: Mutex::new(Vec::new()),
                last_good,
                reports: OnceLock::new(),
                signins: Mutex::new(throttle::SignIns::new(&config.limits)),
                supervisors: RwLock::new(supervisors_of(&config)),
                config,
            }),
        }
    }

    /// The address kefu's own pages are served from: where [`run`] listens,
    /// else (connections fed in by a test) the configured `listen`.
    pub(crate) fn own_address(&self) -> std::net::SocketAddr {
        self.shared
            .bound
            .get()
            .copied()
            .unwrap_or(self.shared.config.listen)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The phrase libraries in force (a reload swaps them).
    pub fn phrases(&self) -> Arc<Phrases> {
        self.shared
            .phrases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A copy of every event recorded from now on (for tests and live views;
    /// only the first call gets one).
    pub fn tap_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.tap.set(tx).ok().map(|_| rx)
    }

    /// Lets supervisors read reports from this event log over HTTP
    /// (`GET /api/report`); without it that endpoint answers 503.
    pub fn attach_reports(&self, reader: crate::store::Reader) {
        let _ = self.shared.reports.set(reader);
    }

    /// Makes resume secrets follow `key` (see [`ResumeKey`]), the data
    /// directory's, so that they verify after a restart: call it before
    /// serving, or conversations opened meanwhile keep their old secret.
    pub fn set_resume_key(&self, key: ResumeKey) {
        self.hub().set_resume_key(key);
    }

    fn reports(&self) -> Option<&crate::store::Reader> {
        self.shared.reports.get()
    }

    /// Asks a running [`run`] to stop, as its shutdown future would.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.shutdown.send_replace(true);
    }

    /// Whether shutdown has been ordered: a load, no lock.
    fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Numbers for health checks and tests.
    pub fn stats(&self) -> Stats {
        let hub = self.hub();
        hub.stats()
    }

    /// Places free now: general ones, then those of the staff reserve
    /// (`limits.staff_reserve`). For monitoring and tests.
    pub fn free_places(&self) -> (usize, usize) {
        let s = &self.shared;
        (
            s.connections.available_permits(),
            s.staff_places.available_permits(),
        )
    }

    /// Starts a staff sign-in for `account` (`known`: the configuration
    /// has it); `Err` while its budget of failures is spent, and then the
    /// token must not be checked. End it with [`App::end_signin`].
    fn begin_signin(
        &self,
        account: throttle::Account,
        known: bool,
    ) -> Result<throttle::Ticket, throttle::Locked> {
        self.signins()
            .begin(account, known, tokio::time::Instant::now())
    }

    /// Ends a sign-in [`App::begin_signin`] let through.
    fn end_signin(&self, ticket: throttle::Ticket, outcome: throttle::Outcome) {
        self.signins()
            .end(ticket, outcome, tokio::time::Instant::now())
    }

    fn signins(&self) -> MutexGuard<'_, throttle::SignIns> {
        self.shared
            .signins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn hub(&self) -> MutexGuard<'_, hub::Hub> {
        // A panic while holding the lock leaves maps that are still
        // consistent enough to serve; keep going rather than poison everyone.
        self.shared.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the hub needs to know besides its own maps, for one change.
    fn ctx<'a>(&'a self, phrases: &'a Phrases) -> hub::Ctx<'a> {
        hub::Ctx {
            config: self.config(),
            tb: self.timebase(),
            phrases,
            library: &self.shared.library,
        }
    }

    fn timebase(&self) -> Timebase {
        self.shared.timebase
    }

    /// A place for a new connection: a general one while there is one, else
    /// one of the staff reserve; `None` when both are full.
    fn take_place(&self) -> Option<(tokio::sync::OwnedSemaphorePermit, busy::Place)> {
        let s = &self.shared;
        if let Ok(p) = s.connections.clone().try_acquire_owned() {
            return Some((p, busy::Place::General));
        }
        s.staff_places
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| (p, busy::Place::Reserve))
    }

    fn next_conn_id(&self) -> u64 {
        self.shared.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }

    /// Takes the staff of `config` (SIGHUP, after the settings file was
    /// read again): agents added, tokens changed, agents removed (signed
    /// out if online), supervisors' tokens; see [`hub::Hub::reload_staff`].
    /// Everything else in `config` is ignored: the rest of the settings
    /// are read only at start.
    pub fn reload_staff(&self, config: &Config) -> StaffChanges {
        let mut fx = hub::Effects::default();
        let phrases = self.phrases();
        let ctx = self.ctx(&phrases);
        let now = tokio::time::Instant::now();
        let changes = self.hub().reload_staff(config, &ctx, now, &mut fx);
        *self
            .shared
            .supervisors
            .write()
            .unwrap_or_else(|e| e.into_inner()) = supervisors_of(config);
        self.apply(fx);
        changes
    }

    /// Whether `shop` is a shop of the settings.
    pub(crate) fn shop_known(&self, shop: &str) -> bool {
        self.shared
            .supervisors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(shop)
    }

    /// Whether `token` is one of `shop`'s supervisors' (compared in
    /// constant time).
    pub(crate) fn supervisor_token(&self, shop: &str, token: &str) -> bool {
        self.shared
            .supervisors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(shop)
            .is_some_and(|tokens| {
                tokens
                    .iter()
                    .any(|t| hub::ct_eq(t.as_bytes(), token.as_bytes()))
            })
    }

    /// Reads the phrase directory again now, as the watcher does when the
    /// files change: what SIGHUP asks of the service (`systemctl reload`),
    /// and what a service with polling turned off (`reload.poll_ms: 0`)
    /// has instead.
    pub async fn reload_phrases(&self) {
        reload::reload(self).await;
    }

    /// Events the log dropped since the start, whether its commits fail
    /// now, and where a log found damaged at this start was moved aside
    /// (for `/healthz`).
    pub fn event_log_health(&self) -> (u64, bool, Option<&Path>) {
        let store = &self.shared.store;
        (
            store.dropped(),
            store.failing(),
            store.damaged_log_set_aside(),
        )
    }

    /// Bytes of the event log's WAL not yet in its database while its
    /// checkpoints are behind (for `/healthz`; see
    /// [`crate::store::WAL_BEHIND_LIMIT`]).
    pub fn event_log_checkpoints_behind(&self) -> Option<u64> {
        self.shared.store.checkpoints_behind()
    }

    fn record(&self, event: Event) {
        if let Some(tap) = self.shared.tap.get() {
            let _ = tap.send(event.clone());
        }
        self.shared.store.record(event);
    }

    /// Whether the event log is behind: the next frame waits.
    fn log_backlogged(&self) -> bool {
        self.shared.store.backlogged()
    }

    /// Before a client's next frame while the event log is behind: see
    /// [`StoreHandle::wait_for_room`].
    /// The wait ends when the server starts to stop: the log's writer may
    /// still be taking events slowly, and a connection must not hold the
    /// shutdown's grace up for it.
    async fn wait_for_log_room(&self, within: std::time::Duration) {
        let mut stop = self.shutdown_rx();
        tokio::select! {
            () = self.shared.store.wait_for_room(within) => {}
            () = stopping(&mut stop) => {}
        }
    }

    /// Delivers what a hub change produced, after the lock is released.
    fn apply(&self, fx: hub::Effects) {
        // Events first: the log holds a fact before anyone can react to it.
        for e in fx.events {
            self.record(e);
        }
        for (out, frame, deferred) in fx.sends {
            out.enqueue(outbox::Queued { frame, deferred });
        }
        for (out, order) in fx.closes {
            out.close(order);
        }
        if fx.wake_timer {
            self.shared.timer.notify_one();
        }
        if let Some(b) = fx.shop_busy {
            warn!(
                shop = %b.shop,
                refused = b.refused,
                cap = b.cap,
                "shop at its open-conversation cap (limits.max_open_conversations): new buyers \
                 refused with shop_busy since the last such line (at most one a minute); raise \
                 the cap if the shop really has this many buyers"
            );
        }
    }

    fn set_phrases(&self, phrases: Phrases) {
        *self
            .shared
            .phrases
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(phrases);
    }

    /// The phrase libraries in use and any problem with the files on disk
    /// (what agents' `welcome` and `/healthz` report).
    pub fn phrase_status(&self) -> Arc<PhraseStatus> {
        self.shared
            .library
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that the libraries of `files` (from `source`) went into use
    /// now, with no problem on disk. Call after [`App::set_phrases`].
    fn libraries_in_use(&self, mut files: Vec<LoadedFile>, source: PhraseSource) {
        let status = PhraseStatus {
            ok: true,
            source,
            since: self.timebase().now_ms(),
            files: files.iter().map(|f| f.name.clone()).collect(),
            intents: self.phrases().matcher.intent_count(),
            problems: Vec::new(),
        };
        for f in &mut files {
            f.bytes = Vec::new();
        }
        *self
            .shared
            .in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = files;
        *self
            .shared
            .library
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(status);
    }

    /// Records what is wrong with the files on disk; the libraries in use stay.
    fn phrase_problems(&self, problems: Vec<String>) {
        let mut status = (*self.phrase_status()).clone();
        status.ok = false;
        status.problems = problems;
        *self
            .shared
            .library
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(status);
    }

    /// The files of the libraries in use, without their bytes.
    fn files_in_force(&self) -> Vec<LoadedFile> {
        self.shared
            .in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Counts of the hub's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub conversations: usize,
    pub waiting: usize,
    pub agents_online: usize,
    pub buyers_online: usize,
    /// New buyers refused since the start because their shop was at
    /// `limits.max_open_conversations` (`shop_busy`).
    pub refused_shop_busy: u64,
}

/// Serves `listener` until `shutdown` completes (or [`App::shutdown`]), then
/// closes every connection (WebSocket close 1001), waits up to
/// `limits.shutdown_grace` for them to finish, and returns. The caller
/// closes the store afterwards.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let local = listener.local_addr()?;
    let _ = app.shared.bound.set(local);
    info!("listening on http://{local} (WebSocket at ws://{local}/ws)");
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let item = listener.accept().await.map(|(stream, peer)| {
            // Chat frames are small and latency matters: no Nagle delay.
            if let Err(e) = stream.set_nodelay(true) {
                warn!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            (stream, peer.to_string())
        });
        Some((item, listener))
    });
    run_incoming(incoming, app, shutdown).await
}

/// [`run`] over any stream of connections (tests feed in-memory pipes, which
/// work under paused virtual time).
pub async fn run_incoming<S, I>(
    incoming: S,
    app: App,
    shutdown: impl Future,
) -> Result<(), ServerError>
where
    S: Stream<Item = std::io::Result<(I, String)>>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut background = vec![tokio::spawn(timer::run(app.clone()))];
    if let Some(every) = app.config().reload_poll {
        background.push(tokio::spawn(reload::watch(app.clone(), every)));
    }
    let mut stop = app.shutdown_rx();
    let mut refusals = busy::Refusals::new(app.config().limits.max_connections);
    tokio::pin!(incoming);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = stopping(&mut stop) => break,
            item = incoming.next() => match item {
                None => break,
                Some(Ok((io, peer))) => {
                    let Some((permit, place)) = app.take_place() else {
                        refusals.refuse(io);
                        continue;
                    };
                    let guard = http::ConnGuard::new(permit, place, drain_tx.clone());
                    tokio::spawn(http::serve(io, app.clone(), peer, guard));
                }
                Some(Err(e)) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    info!("shutting down: closing connections");
    app.shutdown();
    drop(drain_tx);
    let grace = app.config().limits.shutdown_grace;
    if tokio::time::timeout(grace, drain_rx.recv()).await.is_err() {
        warn!(
            ?grace,
            "connections still open after the grace period; stopping anyway"
        );
    }
    for task in background {
        let _ = task.await;
    }
    info!("stopped");
    Ok(())
}

/// Completes once shutdown is ordered (or the App is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in a
    // caller's `select!`.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Completes on Ctrl-C or SIGTERM.
///
/// The handlers are registered when this is called, not when the future is
/// first polled: a SIGTERM that arrives between binding the port and the
/// first poll of the accept loop must still shut down gracefully (and flush
/// the event log) rather than kill the process. Call it inside the runtime,
/// before binding.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("Ctrl-C received"),
                },
                (term, int) => {
                    let e = term.err().or(int.err()).map(|e| e.to_string());
                    warn!(error = ?e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                    if tokio::signal::ctrl_c().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        info!("Ctrl-C received");
    }
}
