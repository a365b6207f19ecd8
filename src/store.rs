//! Durable event log: SQLite (WAL) in a data directory, written by one
//! thread with group commit.
//!
//! Why a writer thread: SQLite calls block, and the service's tasks must
//! not. [`StoreHandle::record`] only puts the event on a bounded queue
//! (`try_send`, never waits); the writer takes events off the queue and
//! commits them together, once [`COMMIT_WINDOW`] has passed since the oldest
//! uncommitted event was recorded or [`COMMIT_BATCH`] events are waiting
//! (looked at every 5 ms), whichever comes first. So a `kill -9` loses at
//! most the events recorded in the last commit window (50 ms) while the
//! writer keeps up; `close()` (the SIGTERM path) commits everything queued
//! before it returns.
//!
//! **When the writer falls behind** (disk stalls, a burst beyond what SQLite
//! can take, or a peak that leaves the writer, at a lower priority, no
//! core) the queue fills. Past three quarters of [`QUEUE_CAPACITY`],
//! clients' connections wait before their next frame
//! ([`StoreHandle::wait_for_room`], for as long as the writer keeps taking
//! events) until the writer has taken the queue below half: a peak slows
//! buyers and agents down rather than losing events from the log. A full queue still makes
//! `record` *drop* the event rather than block or grow memory without
//! bound. Every drop is counted ([`StoreHandle::dropped`])
//! and logged with `tracing::warn!` (the first, then at most once a second
//! with the running count). The same happens to events recorded after
//! `close()`. A commit that fails is retried twice, 100 ms apart; if it
//! still fails its events are counted as dropped and logged as an error,
//! and the next [`StoreHandle::flush`] fails with
//! [`StoreError::NotCommitted`].
//!
//! Errors are typed ([`StoreError`]): a damaged file (SQLite's
//! `SQLITE_CORRUPT`, `SQLITE_NOTADB`) is [`StoreError::Damaged`], which
//! `kefu serve` answers by moving the file aside and starting on a new log
//! ([`Store::open_or_set_aside`]); a file SQLite cannot reach or write
//! (full disk, permissions) is [`StoreError::Storage`], whose message says
//! what to check. The log is created 0600 and a data directory 0700 (Unix;
//! existing ones keep their mode).
//!
//! Durability: `journal_mode=WAL`, `synchronous=NORMAL`: a commit survives
//! the process being killed; a power cut may lose the last commits (the
//! database stays consistent). The WAL is folded back into the database
//! by a second thread at the lowest priority (`Checkpointer`), not by the
//! writer, whose checkpoints delayed buyer messages under load. The schema
//! is versioned with SQLite's `user_version` and upgraded on open (see
//! [`MIGRATIONS`]).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::events::{Event, Kind, Rating};
use crate::report::{self, RecordFields, Records, Report, ReportOptions};
use crate::room::Room;
use insert::{Insert, Value};

mod insert;

/// The database file inside the data directory.
pub const DB_FILE: &str = "events.db";
/// Longest an event waits for its commit while the writer keeps up.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(50);
/// Commit as soon as this many events wait, even within the window.
pub const COMMIT_BATCH: usize = 1000;
/// Events the queue holds before `record` starts dropping them.
pub const QUEUE_CAPACITY: usize = 65_536;
/// While gathering a commit, the writer looks at the queue this often (so
/// a full batch, a flush or a shutdown waits at most this long).
const GATHER_STEP: Duration = Duration::from_millis(5);
/// Most windows of `within` a frame waits for room in the queue while the
/// writer commits but does not catch up ([`StoreHandle::wait_for_room`]).
pub const MAX_WAIT_WINDOWS: u32 = 6;
/// How often the checkpointer folds the WAL back into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL pages (4 KiB each) past which the writer checkpoints itself while
/// the checkpointer runs: the fallback for when it gets too little CPU (a
/// sustained peak). It bounds the WAL at about 40 MB plus what commits add
/// while a starved checkpointer pass holds SQLite's checkpoint lock (the
/// writer's attempt is then skipped until the next commit).
pub const WRITER_CHECKPOINT_PAGES: i64 = 10_000;
/// A checkpointer pass running longer than this is starved (the cores are
/// busy): the writer interrupts it, so that its own checkpoint, which a
/// pass in progress makes SQLite skip, can run and start the WAL over.
const CHECKPOINT_STARVED: Duration = Duration::from_secs(1);
/// The writer's threshold without a checkpointer (SQLite's default).
const SQLITE_CHECKPOINT_PAGES: i64 = 1_000;
/// Size the WAL file is cut back to after a checkpoint that emptied it
/// (SQLite's `journal_size_limit`). Above the usual high-water mark (17-44
/// MB measured), so it only trims what an unusually long peak left.
const WAL_SIZE_LIMIT: i64 = 64 << 20;
/// Bytes of WAL not yet folded into the database past which the
/// checkpoints are called behind ([`StoreHandle::checkpoints_behind`]):
/// twice the file's usual cap. Measured high-water marks are 17-44 MB at
/// up to the maximum throughput and 48-67 MB at 1.4 times it for 10 s, so
/// this is not a peak: it is a reader holding an old snapshot (a long
/// report or export), a disk that cannot keep up, or a peak so long that
/// the fallback keeps losing to starved passes. The disk fills meanwhile.
pub const WAL_BEHIND_LIMIT: u64 = 128 << 20;

/// Schema migrations: `MIGRATIONS[n]` takes a database from version `n` to
/// `n + 1` (SQLite's `user_version`; 0 is an empty file). Never edit a
/// released step; append one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first layout.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        shop TEXT NOT NULL,
        conversation TEXT NOT NULL,
        buyer TEXT NOT NULL,
        kind TEXT NOT NULL,
        agent TEXT,
        text TEXT,
        intent TEXT,
        score TEXT
    );
    CREATE INDEX events_ts ON events (ts_ms);",
    // 2: the stage a buyer message was ranked in, a free-form note (bot
    // greeting or holding reply), and an index to read whole conversations
    // for a report window.
    "ALTER TABLE events ADD COLUMN stage TEXT;
    ALTER TABLE events ADD COLUMN note TEXT;
    CREATE INDEX events_conversation ON events (shop, conversation, ts_ms);",
    // 3: no index by conversation. Conversation ids are random, so every
    // event went to a random leaf of it: with 4,000 open conversations that
    // cost 20 µs of CPU and 50 µs of disk wait per event, eight times the
    // insert itself (docs/benchmarks-history.md, "What changed"), and
    // reports do not need it (they scan row-id ranges, see
    // `Reader::read_for_report`).
    "DROP INDEX IF EXISTS events_conversation;",
];

/// The version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How the writer batches; [`Default`] is the documented policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub commit_window: Duration,
    pub commit_batch: usize,
    pub queue_capacity: usize,
    /// How often the checkpointer thread runs ([`CHECKPOINT_EVERY`]).
    pub checkpoint_every: Duration,
    /// WAL pages past which the writer checkpoints itself
    /// ([`WRITER_CHECKPOINT_PAGES`]).
    pub writer_checkpoint_pages: i64,
    /// Bytes of WAL not yet checkpointed past which the checkpoints are
    /// behind ([`WAL_BEHIND_LIMIT`]).
    pub wal_behind_limit: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            commit_window: COMMIT_WINDOW,
            commit_batch: COMMIT_BATCH,
            queue_capacity: QUEUE_CAPACITY,
            checkpoint_every: CHECKPOINT_EVERY,
            writer_checkpoint_pages: WRITER_CHECKPOINT_PAGES,
            wal_behind_limit: WAL_BEHIND_LIMIT,
        }
    }
}

/// What to do about a damaged log, for readers (reports, export): the
/// service itself sets a log found damaged at start aside
/// ([`Store::open_or_set_aside`]).
const DAMAGED_HELP: &str = "the event log file is damaged: reports and exports that read the \
    damaged part fail (a running service still records new events). To get back what can be \
    read, stop kefu serve and follow \"A damaged event log\" in docs/REPORTS.md (move events.db, \
    events.db-wal and events.db-shm aside together, salvage them with sqlite3 into a new data \
    directory, then report from it or import its export)";

/// What to check when SQLite cannot read or write the files at all.
const STORAGE_HELP: &str = "check the data directory: free disk space (`df -h`), that kefu may \
    write the directory and its events.db, events.db-wal and events.db-shm (owner, mode, a \
    read-only mount), and the disk itself (`dmesg`)";

/// Error opening, reading, writing or closing the store: what failed and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Anything without a kind of its own, in words.
    #[error("event store: {0}")]
    Failed(String),
    /// SQLite says the database file is damaged (`SQLITE_CORRUPT`,
    /// `SQLITE_NOTADB`): a disk fault, a truncated or overwritten file.
    #[error("event store: {what} {}: {detail}; {DAMAGED_HELP}", path.display())]
    Damaged {
        what: String,
        path: PathBuf,
        detail: String,
    },
    /// SQLite cannot read or write the files (`SQLITE_FULL`,
    /// `SQLITE_IOERR`, `SQLITE_CANTOPEN`, `SQLITE_READONLY`): a full disk,
    /// permissions, a read-only mount, a failing disk.
    #[error("event store: {what} {}: {detail}; {STORAGE_HELP}", path.display())]
    Storage {
        what: String,
        path: PathBuf,
        detail: String,
    },
    /// Events recorded before a [`StoreHandle::flush`] were not committed:
    /// their commit failed after its retries and they were dropped.
    #[error(
        "event store: {events} event(s) recorded before the flush were not committed and are \
         lost ({detail}); {STORAGE_HELP}"
    )]
    NotCommitted { events: u64, detail: String },
    /// The store is closed: nothing more is written.
    #[error("event store: the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether SQLite found the database file damaged (see
    /// [`StoreError::Damaged`]).
    pub fn is_damaged(&self) -> bool {
        matches!(self, StoreError::Damaged { .. })
    }

    /// The message without its `event store: ` prefix, to put inside
    /// another one.
    pub fn detail(&self) -> String {
        let s = self.to_string();
        match s.strip_prefix("event store: ") {
            Some(rest) => rest.to_string(),
            None => s,
        }
    }
}

/// The kind of `e`: damaged, storage, or neither.
fn sql_kind(e: &rusqlite::Error) -> Option<bool> {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code()? {
        C::DatabaseCorrupt | C::NotADatabase => Some(true),
        C::DiskFull | C::SystemIoFailure | C::CannotOpen | C::ReadOnly => Some(false),
        _ => None,
    }
}

fn sql_fail(what: &str, path: &Path, e: rusqlite::Error) -> StoreError {
    let (what, path, detail) = (what.to_string(), path.to_path_buf(), e.to_string());
    match sql_kind(&e) {
        Some(true) => StoreError::Damaged { what, path, detail },
        Some(false) => StoreError::Storage { what, path, detail },
        None => StoreError::Failed(format!("{what} {}: {detail}", path.display())),
    }
}

/// The open store; owns the writer thread.
pub struct Store {
    handle: StoreHandle,
    path: PathBuf,
    writer: Option<JoinHandle<Result<(), StoreError>>>,
    options: StoreOptions,
    /// The log was new: SQLite found no schema (a first start, or a file
    /// removed or emptied since the last).
    created: bool,
    /// Held (locked) while the store is open: see [`lock_dir`]. `None`
    /// only while [`Store::set_aside_and_reopen`] hands it on.
    lock: Option<DirLock>,
}

/// The locks that keep a data directory to one process: on `kefu.lock`
/// and on the directory itself. Dropped, both are released.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: std::fs::File,
    _dir: Option<std::fs::File>,
}

/// The lock file in the data directory.
pub const LOCK_FILE: &str = "kefu.lock";

/// Takes the data directory for this process alone. Two services on one
/// log would each restore the other's open conversations and fire their
/// clocks twice (two holding replies, two breaches per round: found by
/// review), and neither would see what the other does after it started.
/// An advisory lock (`flock`) the kernel drops when the process ends,
/// even by `kill -9`; readers (reports, export) do not take it, `kefu events
/// import` does. `refused` words the refusal, given who holds the lock
/// (` (process N)`, or nothing when the file does not say).
///
/// Both `kefu.lock` and the directory itself are locked: `kefu.lock` alone
/// let a second service in once someone deleted the file (a new file, a
/// new lock), while the directory is what holds the log. `kefu.lock` stays
/// for the holder's process id and for older builds, which lock only it.
fn lock_dir(dir: &Path, refused: impl FnOnce(&str) -> String) -> Result<DirLock, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Failed(format!("cannot {what} {}: {e}", path.display()))
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail("open", e))?;
    // Where directories can be opened and locked (Linux, the BSDs, macOS);
    // elsewhere `kefu.lock` alone.
    let dir_file = std::fs::File::open(dir).ok();
    let taken = |f: &std::fs::File| match f.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    };
    let free = taken(&file).map_err(|e| fail("lock", e))?
        && dir_file.as_ref().is_none_or(|d| taken(d).unwrap_or(true));
    if !free {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() {
            String::new()
        } else {
            format!(" (process {holder})")
        };
        return Err(StoreError::Failed(refused(&who)));
    }
    // Who holds it, for the message above; the locks are what count.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(DirLock {
        _file: file,
        _dir: dir_file,
    })
}

// Nearly every message is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Instant, Event),
    /// Commit what is queued, then answer: an error when events recorded
    /// before it were dropped by a failed commit.
    Flush(SyncSender<Result<(), StoreError>>),
    Shutdown,
}

struct Shared {
    tx: SyncSender<Msg>,
    /// Events in the queue (recorded, not yet taken by the writer).
    queued: AtomicUsize,
    capacity: usize,
    /// Freed when the writer takes the queue below half.
    room: Room,
    dropped: AtomicU64,
    /// The last commit failed after its retries (a full disk, a read-only
    /// file): set until a commit succeeds again.
    failing: AtomicBool,
    /// Where the damaged log found at start was moved
    /// ([`Store::open_or_set_aside`]): the log holds nothing from before.
    set_aside: Option<PathBuf>,
    /// Transactions committed.
    commits: AtomicU64,
    /// Milliseconds since `started` of the last drop warning.
    last_warn_ms: AtomicI64,
    started: Instant,
    /// What the checkpointer's last pass left in the WAL.
    lag: Arc<Lag>,
}

/// How far the checkpoints are behind, as the checkpointer's last pass
/// found: written by its thread, read by `/healthz`.
#[derive(Default)]
struct Lag {
    /// Bytes in the WAL not yet copied into the database.
    bytes: AtomicU64,
    /// Set once `bytes` passes the limit, cleared when it is back under
    /// half of it (so a WAL hovering at the limit does not flap).
    behind: AtomicBool,
}

impl Lag {
    /// Notes a pass that left `bytes` in the WAL against `limit`; logs when
    /// the checkpoints fall behind and when they catch up.
    fn note(&self, bytes: u64, limit: u64, path: &Path) {
        self.bytes.store(bytes, Ordering::Relaxed);
        let behind = self.behind.load(Ordering::Relaxed);
        if !behind && bytes >= limit {
            self.behind.store(true, Ordering::Relaxed);
            tracing::warn!(
                path = %path.display(),
                wal_behind_mb = bytes >> 20,
                "the event log's checkpoints are behind: {} MB of its WAL are not yet in the \
                 database, and the WAL file grows until they are. Usual causes: a long report \
                 or export holding an old snapshot (let it finish), a disk that cannot keep up, \
                 or a peak that leaves no CPU; it folds back on its own once that ends, and \
                 /healthz says `event_log_checkpoints: behind` meanwhile",
                bytes >> 20
            );
        } else if behind && bytes < limit / 2 {
            self.behind.store(false, Ordering::Relaxed);
            tracing::info!(
                path = %path.display(),
                wal_behind_mb = bytes >> 20,
                "the event log's checkpoints have caught up"
            );
        }
    }
}

impl Shared {
    /// The state of a log whose queue holds `capacity` events, and the
    /// writer's end of that queue.
    fn new(capacity: usize, set_aside: Option<PathBuf>) -> (Arc<Shared>, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let shared = Arc::new(Shared {
            tx,
            queued: AtomicUsize::new(0),
            capacity: capacity.max(1),
            room: Room::default(),
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            set_aside,
            commits: AtomicU64::new(0),
            last_warn_ms: AtomicI64::new(i64::MIN / 2),
            started: Instant::now(),
            lag: Arc::default(),
        });
        (shared, rx)
    }

    /// More than three quarters of the queue taken: clients' frames wait.
    fn backlogged(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > self.capacity / 4 * 3
    }

    /// The writer took `n` events off the queue.
    fn took(&self, n: usize) {
        if n == 0 {
            return;
        }
        let left = self.queued.fetch_sub(n, Ordering::SeqCst) - n;
        if left <= self.capacity / 2 {
            self.room.freed();
        }
    }

    fn note_dropped(&self, n: u64, why: &str) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        let now = self.started.elapsed().as_millis() as i64;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if (total == n || now - last >= 1000)
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(dropped_total = total, "event log dropped events: {why}");
        }
    }
}

/// Cheap-to-clone handle the service records events through. Never blocks
/// the async runtime. `StoreHandle::default()` is connected to no store and
/// discards what it is given (for a service run without a log).
#[derive(Clone, Default)]
pub struct StoreHandle {
    shared: Option<Arc<Shared>>,
}

impl StoreHandle {
    /// Queues `event` for the writer thread; when the queue is full or the
    /// store closed, drops it (counted and logged, see the module docs).
    pub fn record(&self, event: Event) {
        let Some(shared) = &self.shared else { return };
        // Counted before it can be taken, so the count never goes below 0.
        shared.queued.fetch_add(1, Ordering::SeqCst);
        let sent = shared.tx.try_send(Msg::Event(Instant::now(), event));
        if sent.is_err() {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.note_dropped(1, "the writer is behind and the queue is full")
            }
            Err(TrySendError::Disconnected(_)) => shared.note_dropped(1, "the store is closed"),
        }
    }

    /// Whether the queue is more than three quarters full: a caller that
    /// would wait in [`StoreHandle::wait_for_room`] (a load, not a lock).
    pub fn backlogged(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.backlogged())
    }

    /// Waits while the queue is more than three quarters full, until the
    /// writer has taken it below half; at once when it is not. For the
    /// tasks that bring the load (clients' connections): waiting before the
    /// next frame slows them down instead of the log dropping events. The
    /// wait goes on while the writer commits: every `within` it looks
    /// whether a commit succeeded since, and goes on (what does not fit is
    /// then dropped and counted) once none did, or after
    /// [`MAX_WAIT_WINDOWS`] windows in all: a stuck disk, or a writer that
    /// never catches up, must not stop the chat.
    ///
    /// Why not a plain `within`: at a sustained peak the writer, at a lower
    /// priority than the workers, is behind for longer than that while
    /// still writing, and waiters that gave up after 10 s all came back at
    /// once: 5,068-8,244 events dropped in a minute at 1.4 times the
    /// maximum with 16,000 buyers (BENCHMARKS.md, "A minute beyond the
    /// maximum").
    pub async fn wait_for_room(&self, within: Duration) {
        let Some(shared) = &self.shared else { return };
        if !shared.backlogged() {
            return;
        }
        let room = || (!shared.backlogged()).then_some(());
        let commits = || shared.commits.load(Ordering::Relaxed);
        // Given up or not, the caller goes on.
        let _ = shared
            .room
            .while_progressing(room, within, commits, MAX_WAIT_WINDOWS)
            .await;
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Whether the last commit failed after its retries (and none has
    /// succeeded since): the log is losing what it is given.
    pub fn failing(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.failing.load(Ordering::Relaxed))
    }

    /// Where the log found damaged at this start was moved aside (see
    /// [`Store::open_or_set_aside`]); `None` when it was not.
    pub fn damaged_log_set_aside(&self) -> Option<&Path> {
        self.shared.as_ref().and_then(|s| s.set_aside.as_deref())
    }

    /// While the checkpoints are behind (see [`WAL_BEHIND_LIMIT`]): the bytes
    /// of WAL not yet folded into the database, as the checkpointer's last
    /// pass found. `None` while they keep up, and without a checkpointer
    /// thread (the writer then checkpoints every 1,000 pages itself).
    pub fn checkpoints_behind(&self) -> Option<u64> {
        let lag = &self.shared.as_ref()?.lag;
        lag.behind
            .load(Ordering::Relaxed)
            .then(|| lag.bytes.load(Ordering::Relaxed))
    }

    /// Transactions the writer has committed so far: with the events
    /// written, how well commits are batched.
    pub fn commits(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.commits.load(Ordering::Relaxed))
    }

    /// Blocks until everything recorded before the call is committed. Not
    /// for async code: call it from `spawn_blocking`.
    ///
    /// Fails with [`StoreError::NotCommitted`] when a commit of events
    /// recorded before the call (and after the previous flush) failed after
    /// its retries, so they were dropped: "committed" must not be said of
    /// events that are not in the log (found by review: a start on a full
    /// disk said it restored 30 conversations and logged none of their
    /// `restore` events). Events the full queue dropped at `record` are not
    /// counted here (see [`StoreHandle::dropped`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let (ack, done) = mpsc::sync_channel(1);
        shared
            .tx
            .send(Msg::Flush(ack))
            .map_err(|_| StoreError::Closed)?;
        done.recv().map_err(|_| StoreError::Closed)?
    }
}

/// Opens `path` read-write with the pragmas every connection uses, creating
/// it only when `create`.
fn connect(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| sql_fail("cannot open", path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| sql_fail("cannot configure", path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| sql_fail("cannot switch to WAL mode", path, e))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| sql_fail("cannot configure", path, e))?;
    Ok(conn)
}

/// Brings the schema of `conn` to [`SCHEMA_VERSION`]; returns the version
/// it found. A database from a newer kefu is refused, not touched.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| sql_fail("cannot read the schema version of", path, e))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Failed(format!(
            "{} has schema version {found}, newer than this kefu's {SCHEMA_VERSION}: upgrade kefu",
            path.display()
        )));
    }
    for (v, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn
            .transaction()
            .map_err(|e| sql_fail("cannot upgrade", path, e))?;
        tx.execute_batch(step)
            .and_then(|()| tx.pragma_update(None, "user_version", v as i64 + 1))
            .and_then(|()| tx.commit())
            .map_err(|e| {
                let what = format!("cannot upgrade the schema (version {v} to {}) of", v + 1);
                sql_fail(&what, path, e)
            })?;
    }
    // One line, not one per step (found by review: a new log said
    // "upgraded" three times).
    if found == 0 {
        tracing::info!(path = %path.display(), version = SCHEMA_VERSION, "event log created");
    } else if found < SCHEMA_VERSION {
        tracing::info!(path = %path.display(), from = found, to = SCHEMA_VERSION, "event log schema upgraded");
    }
    Ok(found)
}

/// Rows written per `INSERT` statement.
///
/// Why: one execution per event paid SQLite's per-statement work (opening
/// the table and index cursors, finding the last row id, halting and
/// resetting the statement) once per event; at peak that was a third of
/// the writer's time, and the writer shares the cores with the message
/// path. 32 rows of 11 values stay far under SQLite's 32,766-parameter
/// limit.
const ROWS_PER_INSERT: usize = 32;
/// Values bound per row.
const VALUES_PER_ROW: usize = 11;

/// `INSERT` of `rows` events.
fn insert_sql(rows: usize) -> String {
    let row = "(?,?,?,?,?,?,?,?,?,?,?)";
    let mut sql = format!("INSERT INTO events ({COLUMNS}) VALUES {row}");
    for _ in 1..rows {
        sql.push(',');
        sql.push_str(row);
    }
    sql
}

/// `e`'s values in [`COLUMNS`] order.
fn row_values(e: &Event) -> [Value<'_>; VALUES_PER_ROW] {
    [
        Value::Int(e.ts_ms),
        Value::Text(Some(&e.shop)),
        Value::Text(Some(&e.conversation)),
        Value::Text(Some(&e.buyer)),
        Value::Text(Some(e.kind.as_str())),
        Value::Text(e.agent.as_deref()),
        Value::Text(e.text.as_deref()),
        Value::Text(e.intent.as_deref()),
        Value::Text(e.stage.as_deref()),
        Value::Text(e.score.map(Rating::as_str)),
        Value::Text(e.note.as_deref()),
    ]
}

/// The inserts of one connection, prepared on first use and kept from
/// commit to commit (as rusqlite's statement cache kept them before): the
/// writer prepares the 32-row statement once, not at every commit.
struct Inserts<'c> {
    conn: &'c Connection,
    many: Option<Insert<'c>>,
    one: Option<Insert<'c>>,
}

impl<'c> Inserts<'c> {
    fn new(conn: &'c Connection) -> Inserts<'c> {
        Inserts {
            conn,
            many: None,
            one: None,
        }
    }

    /// Writes `events` in one transaction, in order: full statements of
    /// [`ROWS_PER_INSERT`] rows, then the rest one row at a time.
    fn write(&mut self, events: &[Event]) -> rusqlite::Result<usize> {
        static MANY: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));
        static ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));
        // The connection's only writer, so no transaction is open already.
        let tx = self.conn.unchecked_transaction()?;
        let mut chunks = events.chunks_exact(ROWS_PER_INSERT);
        if chunks.len() > 0 {
            let many = prepared(&mut self.many, self.conn, &MANY)?;
            for chunk in chunks.by_ref() {
                many.run(chunk.iter().flat_map(row_values))?;
            }
        }
        if !chunks.remainder().is_empty() {
            let one = prepared(&mut self.one, self.conn, &ONE)?;
            for e in chunks.remainder() {
                one.run(row_values(e))?;
            }
        }
        tx.commit()?;
        Ok(events.len())
    }
}

/// The statement in `slot`, prepared from `sql` if it is not there yet (a
/// failed preparation is tried again at the next commit).
fn prepared<'s, 'c>(
    slot: &'s mut Option<Insert<'c>>,
    conn: &'c Connection,
    sql: &str,
) -> rusqlite::Result<&'s mut Insert<'c>> {
    if slot.is_none() {
        *slot = Some(Insert::new(conn, sql)?);
    }
    Ok(slot.as_mut().expect("prepared above"))
}

/// [`Inserts::write`] with statements prepared for this call only.
fn insert_all(conn: &Connection, events: &[Event]) -> rusqlite::Result<usize> {
    Inserts::new(conn).write(events)
}

impl Store {
    /// Opens (creating, upgrading) the log in `dir` and starts the writer.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// [`Store::open`] with another batching policy (tests, tuning).
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let lock = Store::lock(dir)?;
        Store::start(open_db(dir)?, options, lock, None)
    }

    /// [`Store::open`] as `kefu serve` opens the log: when SQLite finds the
    /// file damaged ([`StoreError::Damaged`]: truncated, overwritten, a
    /// disk fault), it is moved aside with its `-wal` and `-shm` files to
    /// `events.db.damaged-<UTC time>` (never deleted), an error says what
    /// happened and how to salvage it, and a new, empty log is opened:
    /// the shop's chat must come up first (found by review: a damaged file
    /// stopped every chat until someone guessed to move it).
    /// [`StoreHandle::damaged_log_set_aside`] says so until the next start.
    /// Every other error (permissions, a full disk, a newer schema, another
    /// service) refuses, as [`Store::open`] does.
    pub fn open_or_set_aside(dir: &Path) -> Result<Store, StoreError> {
        let lock = Store::lock(dir)?;
        let options = StoreOptions::default();
        match open_db(dir) {
            Ok(db) => Store::start(db, options, lock, None),
            Err(e) if e.is_damaged() => {
                let aside = set_aside(dir, &e)?;
                Store::start(open_db(dir)?, options, lock, Some(aside))
            }
            Err(e) => Err(e),
        }
    }

    /// What [`Store::open_or_set_aside`] does, for a log found damaged
    /// after it opened (by `cause`, an error reading it: the restore at
    /// start reads the last conversations). Stops the writer (nothing must
    /// have been recorded), moves the files aside and opens a new log,
    /// keeping the directory locked throughout.
    pub fn set_aside_and_reopen(mut self, cause: &StoreError) -> Result<Store, StoreError> {
        let lock = self.lock.take().expect("held while the store is open");
        if let Err(e) = self.shutdown() {
            tracing::warn!("closing the damaged event log: {e}");
        }
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let aside = set_aside(&dir, cause)?;
        Store::start(open_db(&dir)?, self.options, lock, Some(aside))
    }

    /// Creates `dir` if needed and takes it for this process.
    fn lock(dir: &Path) -> Result<DirLock, StoreError> {
        create_data_dir(dir)?;
        // Before the database: a second service must not even migrate it.
        lock_dir(dir, |who| {
            format!(
                "another kefu serve is using the data directory {}{who}: stop it first, \
                 or give this one another --data (two services on one log would both \
                 restore and time the same conversations)",
                dir.display()
            )
        })
    }

    /// Starts the writer on the database `open_db` opened.
    fn start(
        (path, conn, found): (PathBuf, Connection, i64),
        options: StoreOptions,
        lock: DirLock,
        set_aside: Option<PathBuf>,
    ) -> Result<Store, StoreError> {
        let (shared, rx) = Shared::new(options.queue_capacity, set_aside);
        let writer_shared = shared.clone();
        let writer_path = path.clone();
        let writer = std::thread::Builder::new()
            .name("kefu-event-log".into())
            .spawn(move || write_loop(conn, rx, &writer_shared, &writer_path, options))
            .map_err(|e| StoreError::Failed(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            handle: StoreHandle {
                shared: Some(shared),
            },
            path,
            writer: Some(writer),
            options,
            created: found == 0,
            lock: Some(lock),
        })
    }

    /// Whether the log was new at this open: no schema in it (a first
    /// start, a log set aside, or one removed or emptied since the last).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the log (on its own connection, beside the writer).
    pub fn reader(&self) -> Reader {
        Reader {
            path: self.path.clone(),
        }
    }

    /// Writes everything queued and stops the writer thread. Blocks (call
    /// it after the service stopped, or from `spawn_blocking`).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        if let Some(shared) = &self.handle.shared {
            // Blocking send: the queue may be full, and this must get in.
            let _ = shared.tx.send(Msg::Shutdown);
        }
        let result = writer
            .join()
            .map_err(|_| StoreError::Failed("the writer thread panicked".into()))?;
        let dropped = self.handle.dropped();
        if dropped > 0 {
            tracing::error!(
                dropped,
                "event log closed; events were dropped while it ran"
            );
        }
        result
    }
}

impl Drop for Store {
    /// A store dropped without `close()` still commits what is queued.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("{e}");
        }
    }
}

/// What the writer gathered for its next commit.
#[derive(Default)]
struct Pending {
    batch: Vec<Event>,
    /// Events taken off the queue since the last [`Shared::took`].
    taken: usize,
    acks: Vec<SyncSender<Result<(), StoreError>>>,
    /// Events dropped by failed commits since the last acks were sent, and
    /// the last failure: what those acks must report.
    lost: u64,
    lost_why: String,
    /// When the oldest event of `batch` was recorded.
    oldest: Option<Instant>,
}

impl Pending {
    /// Takes one message; `true` when it asks the writer to stop.
    fn take(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Event(at, e) => {
                self.oldest.get_or_insert(at);
                self.batch.push(e);
                self.taken += 1;
                false
            }
            Msg::Flush(ack) => {
                self.acks.push(ack);
                false
            }
            Msg::Shutdown => true,
        }
    }
}

/// Niceness of the writer thread: the log is background work. Its commits
/// come in bursts (a 50 ms window's events at once); on a small machine a
/// burst at the workers' priority takes a core from the message path for
/// milliseconds, which showed as the p99 of buyer-message latency. At a
/// lower priority the scheduler runs the workers first, and the writer
/// still gets every idle cycle (the queue absorbs the wait).
const WRITER_NICE: i32 = 10;

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority only reads its
    // arguments. On Linux PRIO_PROCESS with a thread id sets that thread's
    // nice value alone.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WRITER_NICE)
    };
    if r != 0 {
        tracing::debug!(
            "event log writer keeps normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Folds the WAL back into the database from a thread and connection of
/// its own, at the lowest priority there is (`SCHED_IDLE` on Linux).
///
/// Why: left to SQLite, the writer checkpoints itself every 1,000 WAL pages
/// (about once a second at 22,000 buyer messages a second), copying them
/// into the database and syncing it on the writer's thread, at the
/// workers' expense on a small machine. With no checkpoint at all during a
/// 10 s run the buyer-message p99 at half the maximum throughput was lower
/// by about a quarter (BENCHMARKS.md, "What limits each figure"). Here a
/// `PASSIVE` checkpoint, which never waits for the writer or a reader,
/// runs on what CPU the rest leaves; while it runs, the writer's own
/// checkpoint is skipped and the WAL cannot start over. The writer's own
/// checkpoint, at [`WRITER_CHECKPOINT_PAGES`], is the fallback when the
/// checkpointer gets too little CPU, and SQLite's default when there is no
/// checkpointer.
///
/// Durability: a commit is in the WAL when it returns, so a killed process
/// loses nothing committed. With `synchronous=NORMAL` the WAL is synced at
/// checkpoints, so what a power cut may lose is bounded by the fallback
/// threshold instead of SQLite's 1,000 pages while the checkpointer lags.
///
/// Each pass reports what it could not fold back (a reader's old snapshot
/// stops it short): past [`WAL_BEHIND_LIMIT`] the checkpoints are behind,
/// said once in the log and by `/healthz` until a pass catches up.
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    /// Stops a pass in progress: a starved one, or at close.
    interrupt: rusqlite::InterruptHandle,
    /// When the pass in progress began, in ms since `epoch`; 0: none.
    pass_began: Arc<AtomicU64>,
    epoch: Instant,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// A running checkpointer for the database at `path`, or `None` (logged)
    /// when its thread or connection cannot start: the writer then
    /// checkpoints alone, at SQLite's default.
    fn start(path: &Path, options: &StoreOptions, lag: Arc<Lag>) -> Option<Checkpointer> {
        let (every, limit) = (options.checkpoint_every, options.wal_behind_limit);
        let (stop, stopped) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        let path = path.to_path_buf();
        let pass_began = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let began = pass_began.clone();
        let thread = std::thread::Builder::new()
            .name("kefu-checkpoint".into())
            .spawn(move || {
                // Opened at the writer's priority: the writer waits for it.
                let conn = match connect(&path, false) {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(
                            "no checkpointer thread ({e}): the event log writer checkpoints itself"
                        );
                        return;
                    }
                };
                if ready.send(conn.get_interrupt_handle()).is_ok() {
                    idle_priority();
                    let pass = Pass {
                        conn: &conn,
                        path: &path,
                        began: (&began, epoch),
                        lag: (&lag, limit),
                    };
                    pass.repeat(&stopped, every);
                }
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                tracing::warn!(
                    "no checkpointer thread ({e}): the event log writer checkpoints itself"
                );
                return None;
            }
        };
        // The connection opens at once, or the thread has ended (and said why).
        let Ok(interrupt) = started.recv() else {
            let _ = thread.join();
            return None;
        };
        Some(Checkpointer {
            stop: Some(stop),
            interrupt,
            pass_began,
            epoch,
            thread: Some(thread),
        })
    }

    /// Interrupts a pass that has run for [`CHECKPOINT_STARVED`]; the
    /// writer calls it after each commit.
    fn unstick(&self) {
        let began = self.pass_began.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        if began != 0 && now.saturating_sub(began) >= CHECKPOINT_STARVED.as_millis() as u64 {
            self.interrupt.interrupt();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // A closed channel ends the loop; an interrupt ends a pass in progress
        // (SQLite keeps what it copied; the close's checkpoint does the rest).
        drop(self.stop.take());
        self.interrupt.interrupt();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The checkpointer thread's side: its connection, where it reports.
struct Pass<'a> {
    conn: &'a Connection,
    path: &'a Path,
    /// When the pass in progress began, for the writer's `unstick`.
    began: (&'a AtomicU64, Instant),
    /// Where each pass reports what it left, and the limit for "behind".
    lag: (&'a Lag, u64),
}

impl Pass<'_> {
    /// A pass every `every` until `stopped` closes.
    fn repeat(&self, stopped: &Receiver<()>, every: Duration) {
        let (began, epoch) = self.began;
        let (lag, limit) = self.lag;
        // SQLite's page size for this file (4 KiB unless set otherwise).
        let page: u64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
            .map_or(4096, |p| p.max(512) as u64);
        let mut failing = false;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
            // Never 0 while a pass runs (0 says none does).
            let now = (epoch.elapsed().as_millis() as u64).max(1);
            began.store(now, Ordering::Relaxed);
            // (busy, pages in the WAL, pages of it now in the database).
            // The counts are -1 when the pass did not run (SQLite's
            // checkpoint lock held by the writer's own checkpoint, whose
            // result says nothing here) or the file is not in WAL mode.
            let pass = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
            began.store(0, Ordering::Relaxed);
            match pass {
                Ok((log, done)) => {
                    failing = false;
                    if log >= 0 && done >= 0 {
                        let left = (log - done).max(0) as u64;
                        lag.note(left * page, limit, self.path);
                    }
                }
                // Interrupted by a close: nothing failed.
                Err(_) if matches!(stopped.try_recv(), Err(TryRecvError::Disconnected)) => return,
                // Interrupted by the writer, starved: its own checkpoint runs.
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::OperationInterrupted => {}
                // Once per failing spell: the writer's own checkpoint covers it.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(path = %self.path.display(), "background checkpoint failed: {e}");
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(
            "event log checkpointer keeps the writer's priority (its checkpoints may then delay messages): {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_priority() {}

fn write_loop(
    conn: Connection,
    rx: Receiver<Msg>,
    shared: &Shared,
    path: &Path,
    options: StoreOptions,
) -> Result<(), StoreError> {
    lower_priority();
    let checkpointer = Checkpointer::start(path, &options, shared.lag.clone());
    let writer_pages = match checkpointer {
        Some(_) => options.writer_checkpoint_pages,
        None => SQLITE_CHECKPOINT_PAGES,
    };
    for (pragma, value) in [
        ("wal_autocheckpoint", writer_pages),
        ("journal_size_limit", WAL_SIZE_LIMIT),
    ] {
        if let Err(e) = conn.pragma_update(None, pragma, value) {
            tracing::warn!(path = %path.display(), "cannot set {pragma}: {e}");
        }
    }
    let mut p = Pending {
        batch: Vec::with_capacity(options.commit_batch),
        ..Pending::default()
    };
    let mut inserts = Inserts::new(&conn);
    let mut stop = false;
    while !stop {
        // Wait for the first message, then gather until the window closes,
        // the batch is full or someone waits for a flush.
        p.oldest = None;
        match rx.recv() {
            Ok(msg) => stop = p.take(msg),
            Err(_) => stop = true,
        }
        // Take what is queued, then sleep in steps until the window
        // closes, rather than wait on the queue: a writer blocked in `recv`
        // is woken (a futex call on the sender's side, a context switch on
        // ours) by every event. Draining before looking at the clock
        // matters when the writer is behind: its oldest event is then
        // older than the window already, and it must commit the backlog in
        // full batches, not one event per commit (which only puts it
        // further behind).
        loop {
            while !stop && p.acks.is_empty() && p.batch.len() < options.commit_batch {
                match rx.try_recv() {
                    Ok(msg) => stop = p.take(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => stop = true,
                }
            }
            shared.took(std::mem::take(&mut p.taken));
            if stop || !p.acks.is_empty() || p.batch.len() >= options.commit_batch {
                break;
            }
            let Some(at) = p.oldest else { break };
            let left = (at + options.commit_window).saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(GATHER_STEP));
        }
        if stop {
            // Everything already queued goes in the last commit.
            while let Ok(msg) = rx.try_recv() {
                p.take(msg);
            }
            shared.took(std::mem::take(&mut p.taken));
        }
        if let Some(why) = commit(&mut inserts, &mut p.batch, shared, path) {
            p.lost += why.0;
            p.lost_why = why.1;
        }
        if let Some(checkpointer) = &checkpointer {
            checkpointer.unstick();
        }
        if !p.acks.is_empty() {
            for ack in p.acks.drain(..) {
                let _ = ack.send(if p.lost == 0 {
                    Ok(())
                } else {
                    Err(StoreError::NotCommitted {
                        events: p.lost,
                        detail: format!("the commit failed: {}", p.lost_why),
                    })
                });
            }
            p.lost = 0;
        }
    }
    drop(inserts);
    drop(checkpointer);
    // Fold the WAL back into the database so the directory is one file.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(path = %path.display(), "checkpoint on close failed: {e}");
    }
    conn.close()
        .map_err(|(_, e)| StoreError::Failed(format!("cannot close {}: {e}", path.display())))
}

/// Commits `batch` (emptying it), retrying twice before giving up; when
/// it gives up, returns how many events were dropped and why.
fn commit(
    inserts: &mut Inserts,
    batch: &mut Vec<Event>,
    shared: &Shared,
    path: &Path,
) -> Option<(u64, String)> {
    if batch.is_empty() {
        return None;
    }
    let mut why = String::new();
    for attempt in 1..=3 {
        match inserts.write(batch) {
            Ok(_) => {
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared.failing.store(false, Ordering::Relaxed);
                batch.clear();
                return None;
            }
            Err(e) if attempt < 3 => {
                tracing::warn!(path = %path.display(), attempt, "event log commit failed, retrying: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let hint = match sql_kind(&e) {
                    Some(true) => format!("; {DAMAGED_HELP}"),
                    Some(false) => format!("; {STORAGE_HELP}"),
                    None => String::new(),
                };
                tracing::error!(path = %path.display(), events = batch.len(), "event log commit failed, events lost: {e}{hint}");
                why = e.to_string();
            }
        }
    }
    let n = batch.len() as u64;
    shared.failing.store(true, Ordering::Relaxed);
    shared.note_dropped(n, "a commit failed");
    batch.clear();
    Some((n, why))
}

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Unix ms, inclusive.
    pub from_ms: Option<i64>,
    /// Unix ms, exclusive.
    pub to_ms: Option<i64>,
    pub shop: Option<String>,
}

impl Query {
    /// The report's statement over a row-id range `?4..?5`: with a window,
    /// only the conversations with an event in it (found with the time
    /// index), every event of theirs.
    fn report_sql(&self) -> String {
        let filter = if self.from_ms.is_none() && self.to_ms.is_none() {
            "?1 IS NULL AND ?2 IS NULL AND (?3 IS NULL OR shop = ?3)".to_string()
        } else {
            format!(
                "(shop, conversation) IN (
                 SELECT DISTINCT shop, conversation FROM events WHERE {})",
                self.filter()
            )
        };
        format!("SELECT {REPORT_COLUMNS} FROM events WHERE id >= ?4 AND id < ?5 AND {filter}")
    }

    /// The WHERE clause of the query over `?1` (from), `?2` (to) and `?3`
    /// (shop), naming only the bounds that are set: the catch-all form
    /// `(?1 IS NULL OR ts_ms >= ?1)` keeps SQLite from using the time index
    /// at all. `?3` always appears, so the statement takes all three
    /// parameters.
    fn filter(&self) -> String {
        let mut parts = Vec::new();
        if self.from_ms.is_some() {
            parts.push("ts_ms >= ?1");
        }
        if self.to_ms.is_some() {
            parts.push("ts_ms < ?2");
        }
        if self.shop.is_some() {
            parts.push("shop = ?3");
        } else {
            parts.push("?3 IS NULL");
        }
        parts.join(" AND ")
    }
}

/// Reads the log of a data directory; opens a connection per call, so it
/// is cheap to keep and to clone, and reads beside a running writer (WAL).
#[derive(Debug, Clone)]
pub struct Reader {
    path: PathBuf,
}

const COLUMNS: &str =
    "ts_ms, shop, conversation, buyer, kind, agent, text, intent, stage, score, note";
/// What a report reads: the text only where a stage must be ranked from it,
/// no note (a million texts are most of the bytes of a log).
const REPORT_COLUMNS: &str = "ts_ms, shop, conversation, buyer, kind, agent,
    CASE WHEN kind = 'buyer' AND (stage IS NULL OR stage = '') THEN text END,
    intent, stage, score, NULL";

/// Columns 4 and 9 of a row: the kind and the rating.
fn kind_and_score(row: &rusqlite::Row) -> rusqlite::Result<(Kind, Option<Rating>)> {
    let bad = |col: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(
            col,
            rusqlite::types::Type::Text,
            format!("{what} is not known to this kefu").into(),
        )
    };
    let kind = row.get_ref(4)?.as_str()?;
    let kind = Kind::parse(kind).ok_or_else(|| bad(4, format!("event kind {kind:?}")))?;
    let score = match row.get_ref(9)?.as_str_or_null()? {
        Some(s) => Some(Rating::parse(s).ok_or_else(|| bad(9, format!("rating {s:?}")))?),
        None => None,
    };
    Ok((kind, score))
}

fn row_event(row: &rusqlite::Row) -> rusqlite::Result<Event> {
    let (kind, score) = kind_and_score(row)?;
    Ok(Event {
        ts_ms: row.get(0)?,
        shop: row.get(1)?,
        conversation: row.get(2)?,
        buyer: row.get(3)?,
        kind,
        agent: row.get(5)?,
        text: row.get(6)?,
        intent: row.get(7)?,
        stage: row.get(8)?,
        score,
        note: row.get(10)?,
    })
}

impl Reader {
    /// A reader of the log in `dir`, which must exist.
    pub fn open(dir: &Path) -> Result<Reader, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Failed(format!(
                "no event log at {}: `kefu serve --data {}` creates one, `kefu events import` fills one",
                path.display(),
                dir.display()
            )));
        }
        Ok(Reader { path })
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let mut conn = connect(&self.path, false)?;
        migrate(&mut conn, &self.path)?;
        Ok(conn)
    }

    /// Calls `f` with every event of `q`, in time order (ties in the order
    /// they were written). Streams: memory does not grow with the log.
    pub fn for_each(
        &self,
        q: &Query,
        mut f: impl FnMut(Event) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let conn = self.connect()?;
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} ORDER BY ts_ms, id",
            q.filter()
        );
        self.stream(&conn, &sql, params![q.from_ms, q.to_ms, q.shop], &mut f)
    }

    fn stream(
        &self,
        conn: &Connection,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        f: &mut dyn FnMut(Event) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let mut stmt = conn
            .prepare(sql)
            .map_err(|e| sql_fail("cannot read", &self.path, e))?;
        let mut rows = stmt
            .query(params)
            .map_err(|e| sql_fail("cannot read", &self.path, e))?;
        let mut n = 0;
        while let Some(row) = rows
            .next()
            .map_err(|e| sql_fail("cannot read", &self.path, e))?
        {
            let ev =
                row_event(row).map_err(|e| sql_fail("cannot read an event of", &self.path, e))?;
            f(ev).map_err(|e| StoreError::Failed(format!("cannot write an event out: {e}")))?;
            n += 1;
        }
        Ok(n)
    }

    /// Every event of `q`, in time order.
    pub fn events(&self, q: &Query) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        self.for_each(q, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// What a report over `q`'s window needs: every event (any time) of
    /// every conversation with an event in the window, so rounds that began
    /// before the window or were answered after it are judged as a report
    /// over the whole log would judge them. In no particular order (the
    /// report sorts), and without what reports do not read: `note`, and
    /// `text` except of buyer messages without a `stage`.
    pub fn events_for_report(&self, q: &Query) -> Result<Vec<Event>, StoreError> {
        let parts = self.read_for_report(q, Vec::new, |out: &mut Vec<Event>, row| {
            out.push(row_event(row)?);
            Ok(())
        })?;
        let mut events: Vec<Event> = Vec::new();
        for part in parts {
            if events.is_empty() {
                events = part;
            } else {
                events.extend(part);
            }
        }
        Ok(events)
    }

    /// The events of [`Reader::events_for_report`] in the reports' compact
    /// form (names stored once each): what [`Reader::report`] computes on.
    pub fn records(&self, q: &Query) -> Result<Records<'static>, StoreError> {
        let parts = self.read_for_report(q, Records::new, |out: &mut Records<'static>, row| {
            let str_at = |i: usize| -> rusqlite::Result<&str> { Ok(row.get_ref(i)?.as_str()?) };
            let opt_at = |i: usize| -> rusqlite::Result<Option<&str>> {
                Ok(row.get_ref(i)?.as_str_or_null()?)
            };
            let (kind, score) = kind_and_score(row)?;
            out.push_copied(RecordFields {
                ts_ms: row.get(0)?,
                shop: Cow::Borrowed(str_at(1)?),
                conversation: Cow::Borrowed(str_at(2)?),
                buyer: Cow::Borrowed(str_at(3)?),
                kind,
                agent: opt_at(5)?.map(Cow::Borrowed),
                text: opt_at(6)?.map(Cow::Borrowed),
                intent: opt_at(7)?.is_some_and(|s| !s.is_empty()),
                stage: opt_at(8)?.map(Cow::Borrowed),
                score,
            });
            Ok(())
        })?;
        Ok(Records::concat(parts))
    }

    /// Reads the report's rows on every core, each thread a range of row
    /// ids on its own connection: rows are only ever appended, so the
    /// ranges up to the largest id seen at the start are one consistent set.
    /// ([`prune`] deletes, but only whole conversations with nothing from
    /// its cutoff on: a report over a window from the cutoff on reads none
    /// of them, and an earlier window changes with the prune anyway.)
    fn read_for_report<T: Send>(
        &self,
        q: &Query,
        make: impl Fn() -> T + Sync,
        push: impl Fn(&mut T, &rusqlite::Row) -> rusqlite::Result<()> + Sync,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.connect()?;
        let (lo, hi): (Option<i64>, Option<i64>) = conn
            .query_row("SELECT min(id), max(id) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| sql_fail("cannot read", &self.path, e))?;
        drop(conn);
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(Vec::new());
        };
        let sql = q.report_sql();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let threads = if hi - lo < 100_000 { 1 } else { threads as i64 };
        let span = (hi - lo + threads) / threads;
        let read = |from: i64, to: i64| -> Result<T, StoreError> {
            let conn = connect(&self.path, false)?;
            let fail = |e| sql_fail("cannot read", &self.path, e);
            let mut stmt = conn.prepare(&sql).map_err(fail)?;
            let mut rows = stmt
                .query(params![q.from_ms, q.to_ms, q.shop, from, to])
                .map_err(fail)?;
            let mut out = make();
            while let Some(row) = rows.next().map_err(fail)? {
                push(&mut out, row)
                    .map_err(|e| sql_fail("cannot read an event of", &self.path, e))?;
            }
            Ok(out)
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let from = lo + k * span;
                    let to = (from + span).min(hi + 1);
                    let read = &read;
                    s.spawn(move || read(from, to))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StoreError::Failed("a reader thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    /// The report of `opts` over the log (window and shop from `opts`).
    pub fn report(&self, opts: &ReportOptions) -> Result<Report, StoreError> {
        let q = Query {
            from_ms: opts.from_ms,
            to_ms: opts.to_ms,
            shop: opts.shop.clone(),
        };
        Ok(report::compute_records(&self.records(&q)?, opts))
    }

    /// Number of events in the log.
    pub fn count(&self) -> Result<u64, StoreError> {
        let conn = self.connect()?;
        conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .optional()
            .map_err(|e| sql_fail("cannot count the events of", &self.path, e))
            .map(|n| n.unwrap_or(0))
    }

    /// The time of the log's latest event (`None`: an empty log), from the
    /// time index: one step, whatever the size of the log.
    pub fn last_ms(&self) -> Result<Option<i64>, StoreError> {
        let conn = self.connect()?;
        conn.query_row("SELECT max(ts_ms) FROM events", [], |r| r.get(0))
            .map_err(|e| sql_fail("cannot read", &self.path, e))
    }
}

/// Creates the data directory `dir` and its missing parents, readable by
/// this user alone on Unix (0700: the log holds every buyer's messages).
/// A directory that exists keeps its mode: an operator may have chosen it.
pub fn create_data_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            // `create` says so of a file, or a symbolic link to nowhere.
            "something that is not a directory (a file, or a symbolic link to a \
             missing directory) has that name: remove it or give another --data"
        } else {
            "check the permissions of its parent directory"
        };
        StoreError::Failed(format!(
            "cannot create the data directory {}: {e}; {hint}",
            dir.display()
        ))
    })
}

/// Creates the log file `path` empty, readable by this user alone on Unix
/// (0600), unless it exists (whose mode is left alone). SQLite gives the
/// `-wal` and `-shm` files it creates the database file's mode, so they
/// follow; left to SQLite, the file would be 0644 under the usual umask,
/// every buyer's messages readable by every user of the machine.
fn create_private_db(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Failed(format!(
            "cannot create {}: {e}; {STORAGE_HELP}",
            path.display()
        ))),
    }
}

/// Opens the log of the data directory `dir` (which exists) for writing
/// and brings the schema up to date; with the path, the connection and
/// the schema version found (0: a new log).
fn open_db(dir: &Path) -> Result<(PathBuf, Connection, i64), StoreError> {
    let path = dir.join(DB_FILE);
    create_private_db(&path)?;
    let mut conn = connect(&path, true)?;
    let found = migrate(&mut conn, &path)?;
    Ok((path, conn, found))
}

/// The name a damaged log is moved to: `events.db.damaged-<UTC time>`,
/// with a `-2`, `-3`… when that is taken. SQLite finds the `-wal` beside
/// it under that name plus `-wal`, so tools reading the moved file see the
/// events its WAL held too.
fn aside_name(dir: &Path) -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "unknown-time".to_string());
    let base = format!("{DB_FILE}.damaged-{stamp}");
    let taken = |name: &str| {
        ["", "-wal", "-shm"]
            .iter()
            .any(|s| dir.join(format!("{name}{s}")).symlink_metadata().is_ok())
    };
    let mut name = base.clone();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    dir.join(name)
}

/// Moves the damaged log of `dir` and its `-wal` and `-shm` files aside
/// (renamed, never deleted; see [`Store::open_or_set_aside`]) and says so
/// at ERROR, with what to do; returns where the database file went. The
/// caller holds the directory's lock and has no connection to the files.
fn set_aside(dir: &Path, cause: &StoreError) -> Result<PathBuf, StoreError> {
    let path = dir.join(DB_FILE);
    let aside = aside_name(dir);
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if !suffix.is_empty() && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Failed(format!(
                    "the event log {} is damaged ({}), and moving it aside failed: cannot \
                     rename {} to {}: {e}; move events.db, events.db-wal and events.db-shm \
                     out of {} yourself (together, keeping them) and start again",
                    path.display(),
                    damage(cause),
                    from.display(),
                    to.display(),
                    dir.display()
                )))
            }
        }
    }
    let aside_s = aside.display();
    tracing::error!(
        damaged = %path.display(),
        moved_to = %aside.display(),
        "the event log is damaged ({}): it was moved aside to {aside_s} with its -wal and -shm \
         files (nothing was deleted) and the service starts with a new, empty log, so the \
         conversations open before the stop are not restored and reports over earlier days \
         read nothing until the old events are put back. /healthz says `degraded` until the \
         next restart. To salvage what can be read (see \"A damaged event log\" in \
         docs/REPORTS.md): `mkdir recovered && sqlite3 {aside_s} .recover | sqlite3 \
         recovered/events.db` where sqlite3 has .recover (Debian's and Ubuntu's sqlite3 \
         packages lack it: there `sqlite3 {aside_s} .dump | sed '$s/^ROLLBACK; -- due to \
         errors$/COMMIT;/' | sqlite3 recovered/events.db && sqlite3 recovered/events.db \
         'PRAGMA user_version={SCHEMA_VERSION}'`); then `kefu report --data recovered`, or, \
         with kefu serve stopped, `kefu events export --data recovered > old.jsonl` and \
         `kefu events import old.jsonl --data {}` to put them back",
        damage(cause),
        dir.display()
    );
    Ok(aside)
}

/// SQLite's words for the damage `cause` found, and where.
fn damage(cause: &StoreError) -> String {
    match cause {
        StoreError::Damaged { what, detail, .. } => format!(
            "SQLite: {detail}, found trying to {}",
            what.trim_start_matches("cannot ")
        ),
        other => other.detail(),
    }
}

/// Appends `events` to the log in `dir` in one transaction (for `kefu
/// events import`; not for a running service, which records through its
/// handle). Creates and upgrades the log as [`Store::open`] does.
pub fn import(dir: &Path, events: &[Event]) -> Result<usize, StoreError> {
    create_data_dir(dir)?;
    // Not beside a running service (found by review): it would not see the
    // imported events, and its own writer shares the file.
    let _lock = lock_dir(dir, |who| {
        format!(
            "cannot import into {}: a kefu serve is using it{who}; stop it, import, then \
             start it again",
            dir.display()
        )
    })?;
    let (path, conn, _) = open_db(dir)?;
    insert_all(&conn, events).map_err(|e| sql_fail("cannot import into", &path, e))
}

/// How old the newest event of a conversation must be at least before
/// [`prune`] may delete it: a conversation of the last day may still be
/// open (the service restores the last 30 minutes at start), and a shop
/// prunes old months, not today.
pub const PRUNE_MIN_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// What [`prune`] deleted, or would delete with `dry_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Events deleted (or that would be).
    pub events: u64,
    /// Conversations (shop and conversation id) those events belonged to.
    pub conversations: u64,
    /// Events left in the log afterwards.
    pub remaining: u64,
}

/// The conversations [`prune`] keeps, into `temp.keep`: every one with an
/// event at or after the cutoff `?1` (of shop `?2` when given), found
/// through the time index.
///
/// Why a table of its own, with a key: SQLite ran `(shop, conversation)
/// NOT IN (SELECT …)` by reading the subquery's rows again for every old
/// event (measured on a 2.5-million-event log: 20,000 old events against
/// 1.25 million kept ones took 105 s, so a prune of a real log never
/// finished). With the kept conversations in a keyed table each old event
/// costs one lookup.
fn prune_keep_sql(shop: bool) -> &'static str {
    if shop {
        "INSERT OR IGNORE INTO temp.keep
         SELECT shop, conversation FROM events WHERE ts_ms >= ?1 AND shop = ?2"
    } else {
        "INSERT OR IGNORE INTO temp.keep
         SELECT shop, conversation FROM events WHERE ts_ms >= ?1 AND ?2 IS NULL"
    }
}

/// The events [`prune`] deletes: `?1` the cutoff, `?2` the shop (NULL for
/// every shop): the old ones, by the time index, of conversations not in
/// `temp.keep` ([`prune_keep_sql`]).
fn prune_filter(shop: bool) -> &'static str {
    if shop {
        "ts_ms < ?1 AND shop = ?2 AND NOT EXISTS (
         SELECT 1 FROM temp.keep k WHERE k.shop = events.shop AND k.conversation = events.conversation)"
    } else {
        "ts_ms < ?1 AND ?2 IS NULL AND NOT EXISTS (
         SELECT 1 FROM temp.keep k WHERE k.shop = events.shop AND k.conversation = events.conversation)"
    }
}

/// The table [`prune_keep_sql`] fills.
const PRUNE_KEEP_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS keep (
    shop TEXT NOT NULL, conversation TEXT NOT NULL,
    PRIMARY KEY (shop, conversation)) WITHOUT ROWID;
    DELETE FROM temp.keep;";

/// Deletes every event of each conversation whose newest event is before
/// `before_ms` (Unix ms), of shop `shop` only when given, in one
/// transaction; then folds the WAL back into the database. With `dry_run`,
/// counts the same and changes nothing.
///
/// Why whole conversations by their newest event: a report over a window
/// reads every event of every conversation with an event in it (rounds
/// crossing the window's edges are judged on the whole conversation). A
/// conversation with any event at or after the cutoff is kept whole, so a
/// report over any window from the cutoff on gives exactly what it gave
/// before; a conversation deleted had nothing from the cutoff on, so no
/// such report read it. Reports over earlier windows need an export taken
/// before (`kefu events export --to`).
///
/// Refused: a cutoff less than [`PRUNE_MIN_AGE`] ago (it could take open
/// conversations), a directory without a log, and (unless `dry_run`, which
/// only reads) a directory a running service holds: its writer shares the
/// file and it keeps open conversations in memory. Deleted pages are reused
/// by new events; [`vacuum`] gives them back to the disk.
pub fn prune(
    dir: &Path,
    before_ms: i64,
    shop: Option<&str>,
    dry_run: bool,
) -> Result<PruneOutcome, StoreError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let latest = now_ms - PRUNE_MIN_AGE.as_millis() as i64;
    if before_ms > latest {
        return Err(StoreError::Failed(format!(
            "will not prune up to {}: that is later than a day ago ({}), and conversations \
             of the last day may still be open; give a cutoff at least a day back (prune old \
             months)",
            crate::events::format_ts(before_ms, time::UtcOffset::UTC),
            crate::events::format_ts(latest, time::UtcOffset::UTC)
        )));
    }
    let reader = Reader::open(dir)?;
    let _lock = if dry_run {
        None
    } else {
        Some(lock_dir(dir, |who| {
            format!(
                "cannot prune {}: a kefu serve is using it{who}; stop it, prune, then start it \
                 again (at start it restores the conversations open in the last 30 minutes, so \
                 nothing is lost)",
                dir.display()
            )
        })?)
    };
    let path = reader.path;
    let mut conn = connect(&path, false)?;
    migrate(&mut conn, &path)?;
    let fail = |e| sql_fail("cannot prune", &path, e);
    // Immediate: the write lock from the start, so the counts below are of
    // the rows the delete removes.
    let behavior = if dry_run {
        rusqlite::TransactionBehavior::Deferred
    } else {
        rusqlite::TransactionBehavior::Immediate
    };
    let tx = conn.transaction_with_behavior(behavior).map_err(fail)?;
    let filter = prune_filter(shop.is_some());
    tx.execute_batch(PRUNE_KEEP_TABLE).map_err(fail)?;
    tx.execute(prune_keep_sql(shop.is_some()), params![before_ms, shop])
        .map_err(fail)?;
    let total: i64 = tx
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .map_err(fail)?;
    let (events, conversations): (i64, i64) = tx
        .query_row(
            &format!(
                "SELECT coalesce(sum(n), 0), count(*) FROM (
                 SELECT count(*) AS n FROM events WHERE {filter} GROUP BY shop, conversation)"
            ),
            params![before_ms, shop],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(fail)?;
    let events = if dry_run {
        drop(tx);
        events
    } else {
        let deleted = tx
            .execute(
                &format!("DELETE FROM events WHERE {filter}"),
                params![before_ms, shop],
            )
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        checkpoint(&conn, &path).map_err(|e| {
            StoreError::Failed(format!("{deleted} event(s) deleted, but {}", e.detail()))
        })?;
        deleted as i64
    };
    Ok(PruneOutcome {
        events: events as u64,
        conversations: conversations as u64,
        remaining: (total - events) as u64,
    })
}

/// Folds the WAL back into the database file and empties it.
fn checkpoint(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| sql_fail("cannot checkpoint", path, e))
}

/// Rewrites the log of `dir` (SQLite's `VACUUM`) so the pages [`prune`]
/// freed go back to the disk; returns the file's size before and after,
/// in bytes. Needs free disk about the size of the log and takes time (it
/// copies every remaining event). Refuses a directory a running service
/// holds, as [`prune`] does.
pub fn vacuum(dir: &Path) -> Result<(u64, u64), StoreError> {
    let reader = Reader::open(dir)?;
    let _lock = lock_dir(dir, |who| {
        format!(
            "cannot vacuum {}: a kefu serve is using it{who}; stop it, vacuum, then start it \
             again",
            dir.display()
        )
    })?;
    let path = reader.path;
    let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let mut conn = connect(&path, false)?;
    migrate(&mut conn, &path)?;
    checkpoint(&conn, &path)?;
    let before = size();
    conn.execute_batch("VACUUM")
        .map_err(|e| sql_fail("cannot vacuum", &path, e))?;
    checkpoint(&conn, &path)?;
    Ok((before, size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller waiting for room stays while the writer keeps committing
    /// (here once every 3 s, the queue staying past three quarters) for
    /// several windows of `within`, and goes on once a window passes with
    /// no commit, or after `MAX_WAIT_WINDOWS` windows in all.
    #[tokio::test(start_paused = true)]
    async fn a_wait_for_room_lasts_while_the_writer_makes_progress() {
        let (shared, _rx) = Shared::new(8, None);
        shared.queued.store(7, Ordering::SeqCst);
        let h = StoreHandle {
            shared: Some(shared.clone()),
        };
        let within = Duration::from_secs(10);
        let waiter = tokio::spawn(async move { h.wait_for_room(within).await });
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            shared.commits.fetch_add(1, Ordering::Relaxed);
            assert!(!waiter.is_finished(), "gave up while the writer wrote");
        }
        // 30 s in, three windows: the writer stops.
        let stopped = tokio::time::Instant::now();
        tokio::time::timeout(within * 3, waiter)
            .await
            .expect("still waiting after the writer stopped")
            .unwrap();
        let waited = stopped.elapsed();
        assert!(
            waited <= within * 2,
            "went on {waited:?} after the writer stopped"
        );
        // A writer that commits but never catches up: at most six windows.
        let h = StoreHandle {
            shared: Some(shared.clone()),
        };
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move { h.wait_for_room(within).await });
        while !waiter.is_finished() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            shared.commits.fetch_add(1, Ordering::Relaxed);
        }
        let waited = started.elapsed();
        assert!(
            waited >= within * (MAX_WAIT_WINDOWS - 1)
                && waited <= within * MAX_WAIT_WINDOWS + Duration::from_secs(3),
            "waited {waited:?}"
        );
        // Room at any time ends the wait at once.
        shared.queued.store(7, Ordering::SeqCst);
        let h = StoreHandle {
            shared: Some(shared.clone()),
        };
        let waiter = tokio::spawn(async move { h.wait_for_room(within).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        shared.took(4);
        tokio::time::timeout(Duration::from_millis(1), waiter)
            .await
            .expect("room ends the wait")
            .unwrap();
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let values: [&dyn rusqlite::ToSql; 5] = [&1i64, &2i64, &"s1", &0i64, &10i64];
        let n = stmt.parameter_count();
        let rows = stmt
            .query_map(&values[..n], |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// A window is found through the time index, not by reading the log.
    #[test]
    fn windowed_reads_use_the_time_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let windows = [
            (Some(1), Some(2), None),
            (Some(1), None, Some("s1".to_string())),
            (None, Some(2), None),
            // The last resume window, read at every start (`server::restore`).
            (Some(1), None, None),
        ];
        for (from_ms, to_ms, shop) in windows {
            let q = Query {
                from_ms,
                to_ms,
                shop,
            };
            let export = plan(
                &conn,
                &format!(
                    "SELECT {COLUMNS} FROM events WHERE {} ORDER BY ts_ms, id",
                    q.filter()
                ),
            );
            assert!(export.contains("events_ts (ts_ms"), "{q:?}: {export}");
            let report = plan(&conn, &q.report_sql());
            assert!(report.contains("events_ts (ts_ms"), "{q:?}: {report}");
        }
    }

    /// Every batch size goes in whole and in order, optional fields and
    /// all: below, at and across the multi-row statement's size.
    #[test]
    fn batches_of_any_size_round_trip_in_order() {
        let event = |i: usize| {
            let kind = [Kind::Buyer, Kind::Agent, Kind::Rating][i % 3];
            let mut e = Event::new(1_000 + i as i64, "s1", &format!("c{}", i % 7), "b", kind);
            match kind {
                Kind::Buyer => {
                    e.text = Some(format!("第{i}条：什么时候发货？").into());
                    e.intent = i.is_multiple_of(2).then(|| "in_sale.shipping_time".into());
                    e.stage = Some("in_sale".into());
                }
                Kind::Agent => {
                    e.agent = Some("a1".into());
                    e.text = Some("亲，今天就为您发出哦".into());
                    e.note = (i % 4 == 1).then(|| "greeting".into());
                }
                _ => e.score = Some(Rating::Satisfied),
            }
            e
        };
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let mut written = Vec::new();
        // One set of statements for every batch, as the writer keeps them.
        let mut inserts = Inserts::new(&conn);
        for n in [
            0,
            1,
            ROWS_PER_INSERT - 1,
            ROWS_PER_INSERT,
            ROWS_PER_INSERT + 1,
            70,
        ] {
            let batch: Vec<Event> = (written.len()..written.len() + n).map(event).collect();
            assert_eq!(inserts.write(&batch).unwrap(), n);
            written.extend(batch);
        }
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM events ORDER BY id"))
            .unwrap();
        let read: Vec<Event> = stmt
            .query_map([], row_event)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read.len(), written.len());
        assert_eq!(read, written);
    }

    /// Both halves of the prune, the old events and the conversations to
    /// keep, are found through the time index, with or without a shop.
    #[test]
    fn prune_uses_the_time_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        conn.execute_batch(PRUNE_KEEP_TABLE).unwrap();
        for shop in [false, true] {
            let p = plan(&conn, prune_keep_sql(shop));
            assert!(p.contains("events_ts (ts_ms>?)"), "shop {shop}: {p}");
            assert!(!p.contains("SCAN events"), "shop {shop}: {p}");
            let filter = prune_filter(shop);
            for sql in [
                format!("DELETE FROM events WHERE {filter}"),
                format!("SELECT count(*) FROM events WHERE {filter} GROUP BY shop, conversation"),
            ] {
                let p = plan(&conn, &sql);
                assert!(p.contains("events_ts (ts_ms<?)"), "shop {shop}: {p}");
                // One keyed lookup per old event, not a scan of the kept.
                assert!(p.contains("USING PRIMARY KEY"), "shop {shop}: {p}");
                assert!(!p.contains("SCAN"), "shop {shop}: {p}");
            }
        }
    }

    /// No index but the time index: each one costs every insert.
    #[test]
    fn the_log_has_only_the_time_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
            .unwrap();
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["events_ts"]);
    }
}
