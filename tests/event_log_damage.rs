//! The event log when its file or its disk fails: a damaged file (garbage
//! over a real log made by the store) is found, named and, by the service's
//! open, moved aside for a new log; a flush whose events a failed commit
//! dropped fails, and the restore at start refuses then; open errors from a
//! full or unwritable disk say what to check; the log and its directory are
//! private to the user.

mod common;

use std::path::{Path, PathBuf};

use common::{garble, test_config};
use kefu::events::{Event, Kind};
use kefu::report::ReportOptions;
use kefu::server::{App, ResumeKey};
use kefu::store::{Query, Reader, Store, StoreError, DB_FILE};
use rusqlite::Connection;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A buyer message of conversation `c<i % 50>` at `ts_ms`, with a long
/// text so that the log spans many pages.
fn event(i: usize, ts_ms: i64) -> Event {
    let mut e = Event::new(
        ts_ms,
        "s1",
        &format!("c{}", i % 50),
        &format!("b{}", i % 50),
        Kind::Buyer,
    );
    e.text = Some(format!("第{i}条：这款什么时候发货？能便宜点吗？{}", "亲".repeat(40)).into());
    e
}

/// A real log in `dir` of `n` events from `ts_ms` on (1 ms apart), written
/// by the store and closed (so everything is in `events.db`).
fn make_log(dir: &Path, n: usize, ts_ms: i64) -> PathBuf {
    let store = Store::open(dir).unwrap();
    let h = store.handle();
    for i in 0..n {
        h.record(event(i, ts_ms + i as i64));
    }
    h.flush().unwrap();
    store.close().unwrap();
    let path = dir.join(DB_FILE);
    assert!(std::fs::metadata(&path).unwrap().len() > 100 * 4096);
    path
}

/// The files of `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Garbage over the header: `Store::open` names the damage; the service's
/// open moves the three files aside (bytes untouched) and starts a new,
/// empty log, which it says it did.
#[test]
fn a_log_garbled_at_the_header_is_moved_aside_and_a_new_one_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_log(dir.path(), 2000, 1_795_140_000_000);
    garble(&path, 0, 2);
    let damaged = std::fs::read(&path).unwrap();

    let err = Store::open(dir.path()).err().expect("opened a damaged log");
    assert!(err.is_damaged(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("damaged") && text.contains("docs/REPORTS.md"),
        "{text}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), damaged, "left as it was");

    let store = Store::open_or_set_aside(dir.path()).unwrap();
    let aside = store
        .handle()
        .damaged_log_set_aside()
        .expect("says it set the log aside")
        .to_path_buf();
    let name = aside.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("events.db.damaged-"), "{name}");
    assert_eq!(std::fs::read(&aside).unwrap(), damaged);
    assert!(store.created());
    store.handle().record(event(0, 1_795_140_000_000));
    store.close().unwrap();
    assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 1);

    // A second damage the same second gets a name of its own.
    garble(&path, 0, 2);
    let store = Store::open_or_set_aside(dir.path()).unwrap();
    let second = store
        .handle()
        .damaged_log_set_aside()
        .unwrap()
        .to_path_buf();
    assert_ne!(second, aside);
    store.close().unwrap();
    assert_eq!(named(dir.path(), "events.db.damaged-").len(), 2);

    // An undamaged log is not set aside.
    let store = Store::open_or_set_aside(dir.path()).unwrap();
    assert!(store.handle().damaged_log_set_aside().is_none());
    assert!(!store.created());
}

/// Garbage in the middle: the open does not see it, a read does. A report
/// (old pages) says the log is damaged and where to read what to do, and
/// the restore's read error is the damaged kind, which `kefu serve` sets
/// aside with [`Store::set_aside_and_reopen`].
#[test]
fn a_log_garbled_in_the_middle_fails_reads_as_damaged_and_can_be_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_log(dir.path(), 20_000, 1_795_140_000_000);
    let pages = std::fs::metadata(&path).unwrap().len() / 4096;
    garble(&path, pages / 2, 20);

    let store = Store::open(dir.path()).unwrap();
    let reader = store.reader();
    let err = reader
        .report(&ReportOptions::default())
        .expect_err("a report over damaged pages");
    assert!(err.is_damaged(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("the event log file is damaged") && text.contains("docs/REPORTS.md"),
        "{text}"
    );
    let err = reader.events(&Query::default()).unwrap_err();
    assert!(err.is_damaged(), "{err}");

    let store = store.set_aside_and_reopen(&err).unwrap();
    assert!(store.handle().damaged_log_set_aside().is_some());
    assert_eq!(store.reader().count().unwrap(), 0);
    // Still locked for this process throughout.
    assert!(Store::open(dir.path()).is_err());
    store.close().unwrap();
    assert_eq!(named(dir.path(), "events.db.damaged-").len(), 1);
}

/// A commit that fails after its retries drops its events, and the flush
/// after them says so (it used to confirm): typed, with the count.
#[test]
fn a_flush_after_a_failed_commit_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = store.handle();
    h.record(event(0, 1_795_140_000_000));
    h.flush().unwrap();
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER full BEFORE INSERT ON events
             BEGIN SELECT RAISE(FAIL, 'database or disk is full (test)'); END;",
        )
        .unwrap();
    for i in 1..=3 {
        h.record(event(i, 1_795_140_000_000));
    }
    match h.flush() {
        Err(StoreError::NotCommitted { events: 3, detail }) => {
            assert!(detail.contains("disk is full (test)"), "{detail}")
        }
        other => panic!("flush after a failed commit: {other:?}"),
    }
    // Reported once: the next flush with nothing lost succeeds.
    h.flush().unwrap();
    other.execute_batch("DROP TRIGGER full").unwrap();
    h.record(event(4, 1_795_140_000_000));
    h.flush().unwrap();
    store.close().unwrap();
    assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 2);
}

/// The restore at start commits its `restore` events before the port
/// opens; when that commit fails the start refuses (it said "restored"
/// and logged none, so the next restart lost the conversations).
#[test]
fn the_restore_refuses_when_its_restore_events_are_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 60_000;
    let store = Store::open(dir.path()).unwrap();
    for i in 0..3 {
        store.handle().record(event(i, t0));
    }
    store.close().unwrap();

    let store = Store::open(dir.path()).unwrap();
    Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER full BEFORE INSERT ON events
             BEGIN SELECT RAISE(FAIL, 'database or disk is full (test)'); END;",
        )
        .unwrap();
    let app = App::new(test_config(), store.handle()).unwrap();
    app.set_resume_key(ResumeKey::load_or_create(dir.path()).unwrap());
    let err = app.restore(&store.reader()).unwrap_err().to_string();
    assert!(
        err.contains("cannot record the `restore` events of the 3 conversation(s)")
            && err.contains("not starting")
            && err.contains("disk is full (test)")
            && err.contains("free disk space"),
        "{err}"
    );
}

/// Opening where SQLite cannot open or write the file says what to check
/// (here `events.db` is a directory: SQLITE_CANTOPEN).
#[test]
fn an_open_that_cannot_reach_the_file_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(DB_FILE)).unwrap();
    let err = Store::open(dir.path()).err().expect("opened a directory");
    assert!(matches!(err, StoreError::Storage { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("free disk space") && text.contains("events.db-wal"),
        "{text}"
    );
}

/// The directory kefu creates is 0700 and the log 0600 (its WAL and SHM
/// follow); a directory and a log that exist keep their modes.
#[cfg(unix)]
#[test]
fn the_log_and_a_new_data_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("a/data");
    let store = Store::open(&dir).unwrap();
    store.handle().record(event(0, 1_795_140_000_000));
    store.handle().flush().unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&top.path().join("a")), 0o700);
    for f in [DB_FILE, "events.db-wal", "events.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    store.close().unwrap();

    let open = top.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(open.join(DB_FILE), b"").unwrap();
    std::fs::set_permissions(open.join(DB_FILE), std::fs::Permissions::from_mode(0o640)).unwrap();
    Store::open(&open).unwrap().close().unwrap();
    assert_eq!(mode(&open), 0o750);
    assert_eq!(mode(&open.join(DB_FILE)), 0o640);
}

/// A data directory named by a symbolic link to nowhere says so (it said
/// only "File exists (os error 17)", found by review).
#[cfg(unix)]
#[test]
fn a_data_directory_that_is_a_dangling_link_says_so() {
    let top = tempfile::tempdir().unwrap();
    let data = top.path().join("data");
    std::os::unix::fs::symlink(top.path().join("missing"), &data).unwrap();
    let err = Store::open(&data)
        .err()
        .expect("opened through a dangling link");
    let text = err.to_string();
    assert!(
        text.contains("cannot create the data directory") && text.contains("symbolic link"),
        "{text}"
    );
}
