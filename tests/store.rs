//! The SQLite event log: nothing recorded is lost on close, old schemas are
//! upgraded, newer ones refused, and a report from an exported file equals
//! the report from the log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kefu::events::{self, Event, Kind, Rating};
use kefu::report::{self, GroupBy, ReportOptions};
use kefu::store::{self, Query, Reader, Store, StoreHandle, StoreOptions, DB_FILE, SCHEMA_VERSION};
use rusqlite::Connection;

/// A child process gets a copy of every descriptor this test process has
/// open at the fork, the data directories' locks included (they are
/// closed only at its exec). A test that closes a store and locks the
/// directory again (a reopen, a prune) could meet the copy held by another
/// test's child for that moment and be refused as "beside a running
/// service" (seen once in CI). So children are started only while no such
/// test runs: those hold [`no_children`], [`kefu_cli`] takes the write side.
static CHILDREN: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn no_children() -> std::sync::RwLockReadGuard<'static, ()> {
    CHILDREN.read().unwrap_or_else(|e| e.into_inner())
}

/// Runs the `kefu` binary with `args` (never the caller's KEFU_DATA).
fn kefu_cli(args: &[&str]) -> std::process::Output {
    let child = {
        let _started = CHILDREN.write().unwrap_or_else(|e| e.into_inner());
        Command::new(env!("CARGO_BIN_EXE_kefu"))
            .args(args)
            .env_remove("KEFU_DATA")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    child.wait_with_output().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(path: &Path) -> Vec<Event> {
    let f = std::fs::File::open(path).unwrap();
    events::read_jsonl(std::io::BufReader::new(f), |b| {
        panic!("{}: {b}", path.display())
    })
    .unwrap()
}

/// Event `i` of a made-up stream: every kind and every optional field.
fn event(i: usize) -> Event {
    let kind = Kind::ALL[i % Kind::ALL.len()];
    let mut e = Event::new(
        1_795_140_000_000 + i as i64,
        &format!("s{}", i % 3),
        &format!("c{}", i % 101),
        &format!("b{}", i % 101),
        kind,
    );
    if matches!(
        kind,
        Kind::Agent | Kind::Assign | Kind::Nudge | Kind::Breach
    ) {
        e.agent = Some(format!("a{}", i % 7).into());
    }
    if matches!(kind, Kind::Buyer | Kind::Agent | Kind::Bot) {
        e.text = Some(format!("亲，第{i}条消息").into());
    }
    if kind == Kind::Agent && i.is_multiple_of(2) {
        e.intent = Some("shipping_time".into());
    }
    if kind == Kind::Buyer && i.is_multiple_of(2) {
        e.stage = Some("in_sale".into());
    }
    if kind == Kind::Rating {
        e.score = Some(Rating::ALL[i % Rating::ALL.len()]);
    }
    if kind == Kind::Bot {
        e.note = Some("greeting".into());
    }
    e
}

#[test]
fn everything_recorded_is_read_back_after_close() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Four recorders at once, as the service's connections would.
    const N: usize = 20_000;
    std::thread::scope(|s| {
        for t in 0..4 {
            let h = store.handle();
            s.spawn(move || {
                for i in (t..N).step_by(4) {
                    h.record(event(i));
                }
            });
        }
    });
    assert_eq!(store.handle().dropped(), 0);
    store.close().unwrap();

    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.count().unwrap(), N as u64);
    // Read back in time order: exactly the events written.
    let back = reader.events(&Query::default()).unwrap();
    let want: Vec<Event> = (0..N).map(event).collect();
    assert!(back == want, "events differ after a round trip");
    // The WAL was folded back on close.
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
}

#[test]
fn reopening_appends_and_queries_filter_by_time_and_shop() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let store = Store::open(dir.path()).unwrap();
        let h = store.handle();
        for i in round * 100..(round + 1) * 100 {
            h.record(event(i));
        }
        store.close().unwrap();
    }
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.count().unwrap(), 200);
    let q = Query {
        from_ms: Some(1_795_140_000_050),
        to_ms: Some(1_795_140_000_150),
        shop: Some("s1".into()),
    };
    let got = reader.events(&q).unwrap();
    let want: Vec<Event> = (50..150).map(event).filter(|e| &*e.shop == "s1").collect();
    assert_eq!(got, want);
}

#[test]
fn flush_makes_events_visible_while_the_store_runs() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = store.handle();
    for i in 0..10 {
        h.record(event(i));
    }
    h.flush().unwrap();
    assert_eq!(store.reader().count().unwrap(), 10);
    drop(store); // dropping without close() still commits
    assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 10);
}

#[test]
fn a_handle_without_a_store_discards_quietly() {
    let h = StoreHandle::default();
    h.record(event(0));
    assert_eq!(h.dropped(), 0);
    h.flush().unwrap();
}

/// With the writer stuck (another connection holds the write lock) and a
/// queue of 4, recording does not block: what does not fit is dropped and
/// counted, and everything else is written once the lock goes. Nothing is
/// lost without being counted.
#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        queue_capacity: 4,
        commit_batch: 1,
        commit_window: Duration::from_millis(1),
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let h = store.handle();
    let blocker = Connection::open(dir.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    h.record(event(0));
    std::thread::sleep(Duration::from_millis(300)); // the writer is now waiting for the lock
    let start = std::time::Instant::now();
    for i in 1..=100 {
        h.record(event(i));
    }
    assert!(start.elapsed() < Duration::from_secs(1), "record blocked");
    let dropped = h.dropped();
    assert!(dropped >= 90, "only {dropped} dropped with a queue of 4");
    blocker.execute_batch("COMMIT").unwrap();
    store.close().unwrap();
    let stored = Reader::open(dir.path()).unwrap().count().unwrap();
    assert_eq!(stored + dropped, 101);
    // After close, recording is counted as dropped too.
    h.record(event(200));
    assert_eq!(h.dropped(), dropped + 1);
}

/// A peak the writer cannot follow (here: another connection holds the
/// write lock): past three quarters of the queue, a client's connection
/// waits in `wait_for_room` until the writer has taken the queue below
/// half, and nothing is dropped. With room, or without a store, it does
/// not wait at all; a writer stuck for longer than the wait lets the caller
/// go on.
#[tokio::test]
async fn a_buyer_waits_for_room_while_the_writer_is_behind() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let store = common::small_log(dir.path());
    let h = store.handle();
    let long = Duration::from_secs(60);
    assert!(
        h.wait_for_room(long).now_or_never().is_some(),
        "room: no wait"
    );
    assert!(StoreHandle::default()
        .wait_for_room(long)
        .now_or_never()
        .is_some());

    let blocker = Connection::open(dir.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    h.record(event(0));
    std::thread::sleep(Duration::from_millis(300)); // the writer waits for the lock
    for i in 1..=5 {
        h.record(event(i));
    }
    assert!(
        h.wait_for_room(long).now_or_never().is_some(),
        "5 of 8: no wait"
    );
    for i in 6..=7 {
        h.record(event(i));
    }
    let waiter = tokio::spawn({
        let h = h.clone();
        async move { h.wait_for_room(long).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "7 of 8 queued: the buyer waits");
    blocker.execute_batch("COMMIT").unwrap();
    tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("woken once the writer took the queue below half")
        .unwrap();
    assert_eq!(h.dropped(), 0);

    // Stuck for longer than the wait: the caller goes on after it.
    h.flush().unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    h.record(event(8));
    std::thread::sleep(Duration::from_millis(300));
    for i in 9..=15 {
        h.record(event(i));
    }
    let start = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        h.wait_for_room(Duration::from_millis(200)),
    )
    .await
    .expect("a writer that commits nothing is not waited for");
    assert!(start.elapsed() >= Duration::from_millis(200));
    blocker.execute_batch("COMMIT").unwrap();
    store.close().unwrap();
    assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 16);
    assert_eq!(h.dropped(), 0);
}

/// A commit that keeps failing (here the table is gone) is retried, then
/// its events are counted as dropped, and the writer goes on: once the
/// table is back, later events are stored.
#[test]
fn a_failing_commit_counts_its_events_as_dropped_and_the_writer_goes_on() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = store.handle();
    h.record(event(0));
    h.flush().unwrap();
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let schema: String = other
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    other.execute_batch("DROP TABLE events").unwrap();
    for i in 1..=40 {
        h.record(event(i));
    }
    // The flush says they were not committed (it used to confirm).
    let err = h.flush().unwrap_err();
    assert!(
        matches!(err, store::StoreError::NotCommitted { events: 40, .. }),
        "{err}"
    );
    assert_eq!(h.dropped(), 40);
    other.execute_batch(&schema).unwrap();
    for i in 41..=45 {
        h.record(event(i));
    }
    h.flush().unwrap();
    assert_eq!(h.dropped(), 40);
    store.close().unwrap();
    assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 5);
}

/// A writer that fell behind (here: another connection held the write
/// lock for longer than the commit window) catches up in full batches: its
/// queued events are all older than the window, and committing them one
/// per transaction would only put it further behind.
#[test]
fn a_backlog_is_committed_in_batches_not_one_by_one() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = store.handle();
    let blocker = Connection::open(dir.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    h.record(event(0));
    std::thread::sleep(Duration::from_millis(100)); // the writer waits for the lock
    for i in 1..=500 {
        h.record(event(i));
    }
    std::thread::sleep(Duration::from_millis(100)); // every queued event is now late
    blocker.execute_batch("COMMIT").unwrap();
    h.flush().unwrap();
    let commits = h.commits();
    assert!(
        (1..=3).contains(&commits),
        "{commits} commits for 501 events"
    );
    assert_eq!(h.dropped(), 0);
    store.close().unwrap();
    assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 501);
}

/// The first schema, as a kefu of that version created it.
const V1: &str = "CREATE TABLE events (
    id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, shop TEXT NOT NULL,
    conversation TEXT NOT NULL, buyer TEXT NOT NULL, kind TEXT NOT NULL,
    agent TEXT, text TEXT, intent TEXT, score TEXT);
  CREATE INDEX events_ts ON events (ts_ms);
  PRAGMA user_version = 1;
  INSERT INTO events (ts_ms, shop, conversation, buyer, kind, agent, text, intent, score) VALUES
    (1795140000000, 's1', 'c1', 'b1', 'buyer', NULL, '在吗', NULL, NULL),
    (1795140010000, 's1', 'c1', 'b1', 'agent', 'a1', '亲，在的', 'greeting', NULL),
    (1795140020000, 's1', 'c1', 'b1', 'rating', NULL, NULL, NULL, 'satisfied');";

#[test]
fn an_old_schema_is_upgraded_on_open_and_keeps_its_events() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    Connection::open(&path).unwrap().execute_batch(V1).unwrap();

    let store = Store::open(dir.path()).unwrap();
    let mut e = Event::new(1_795_140_030_000, "s1", "c1", "b1", Kind::Buyer);
    e.stage = Some("after_sale".into());
    e.note = Some("new column".into());
    store.handle().record(e.clone());
    store.close().unwrap();

    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let back = Reader::open(dir.path())
        .unwrap()
        .events(&Query::default())
        .unwrap();
    assert_eq!(back.len(), 4);
    assert_eq!(back[1].agent.as_deref(), Some("a1"));
    assert_eq!(back[1].intent.as_deref(), Some("greeting"));
    assert_eq!(back[2].score, Some(Rating::Satisfied));
    assert_eq!(
        (back[0].stage.as_deref(), back[0].note.as_deref()),
        (None, None)
    );
    assert_eq!(back[3], e);
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(V1).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = Store::open(dir.path())
        .err()
        .expect("opened a newer schema");
    assert!(err.to_string().contains("upgrade kefu"), "{err}");
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION + 1);
}

#[test]
fn a_missing_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Reader::open(&dir.path().join("nowhere")).unwrap_err();
    assert!(err.to_string().contains("no event log at"), "{err}");
}

fn kefu(args: &[&str]) -> (String, String) {
    let out = kefu_cli(args);
    let (o, e) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "kefu {args:?} failed: {e}");
    (o, e)
}

/// Both fixtures go into a log through the writer; `kefu events export`
/// writes it out; `kefu report --events` on that file equals `kefu report
/// --data` on the log, for the whole log and for a window of one day (where
/// the log is read by conversation, the file filtered in memory), and both
/// equal the library's report on the fixtures themselves.
#[test]
fn export_then_report_from_the_file_equals_report_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut all = load(&fixture("rounds.jsonl"));
    // The fixtures share conversation names; keep them apart.
    all.extend(load(&fixture("ratings.jsonl")).into_iter().map(|mut e| {
        e.conversation = format!("r-{}", e.conversation).into();
        e
    }));
    let store = Store::open(&data).unwrap();
    let h = store.handle();
    for e in &all {
        h.record(e.clone());
    }
    store.close().unwrap();

    let d = data.to_str().unwrap();
    let (jsonl, err) = kefu(&["events", "export", "--data", d]);
    assert!(
        err.contains(&format!("{} event(s) exported", all.len())),
        "{err}"
    );
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    let f = file.to_str().unwrap();
    let exported = load(&file);
    assert_eq!(exported.len(), all.len());

    // The last window starts inside c1's first round (10:00:00, merged with
    // 10:00:05): a log read only by time would see 10:00:05 open a round.
    let windows: [&[&str]; 4] = [
        &[],
        &["--from", "2026-11-20", "--to", "2026-11-20"],
        &["--from", "2026-11-19", "--to", "2026-11-19"],
        &[
            "--from",
            "2026-11-20T10:00:03+08:00",
            "--to",
            "2026-11-20T12:00:00+08:00",
        ],
    ];
    for window in windows {
        for by in ["agent", "day", "stage", "shop"] {
            let run = |source: &str, path: &str| {
                let mut a = vec!["report", "--format", "json", "--by", by, source, path];
                a.extend_from_slice(window);
                kefu(&a).0
            };
            let from_file = run("--events", f);
            let from_log = run("--data", d);
            assert_eq!(from_file, from_log, "window {window:?} by {by}");
        }
    }

    // The library agrees, through the store's reader too.
    let cst = events::DEFAULT_OFFSET;
    let o = ReportOptions {
        by: Some(GroupBy::Agent),
        from_ms: Some(report::parse_bound("2026-11-20", cst, false).unwrap()),
        to_ms: Some(report::parse_bound("2026-11-20", cst, true).unwrap()),
        ..ReportOptions::default()
    };
    let from_reader = Reader::open(&data).unwrap().report(&o).unwrap();
    assert_eq!(from_reader, report::compute(&all, &o));
    // The day's window sees the c1..c5 rounds and the day's ratings.
    assert_eq!(from_reader.total.rounds, 8);
    assert_eq!(from_reader.total.ratings, 9);

    // `kefu events import` of the export gives a log with the same report.
    let data2 = dir.path().join("data2");
    let (_, err) = kefu(&["events", "import", f, "--data", data2.to_str().unwrap()]);
    assert!(
        err.contains(&format!("{} event(s) imported", all.len())),
        "{err}"
    );
    assert_eq!(
        store::Reader::open(&data2).unwrap().report(&o).unwrap(),
        from_reader
    );
}

/// Past 100 000 rows the report read is split over threads by row id; the
/// union must be exactly the events (with only the fields reports read),
/// for the whole log and for a window (whole conversations).
#[test]
fn the_parallel_report_read_returns_every_event_once() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Event> = (0..150_000).map(event).collect();
    store::import(dir.path(), &all).unwrap();
    let slim = |e: &Event| {
        let mut e = e.clone();
        e.note = None;
        if !(e.kind == Kind::Buyer && e.stage.is_none()) {
            e.text = None;
        }
        e
    };
    let key = |e: &Event| (e.ts_ms, e.conversation.clone());
    let reader = Reader::open(dir.path()).unwrap();

    let mut got = reader.events_for_report(&Query::default()).unwrap();
    got.sort_by_key(key);
    let want: Vec<Event> = all.iter().map(slim).collect();
    assert!(got == want, "whole log differs");

    // Window: the event times are 1_795_140_000_000 + i; conversations are
    // i % 101, so a window of 50 ms touches 50 conversations.
    let q = Query {
        from_ms: Some(1_795_140_000_000 + 120_000),
        to_ms: Some(1_795_140_000_000 + 120_050),
        shop: None,
    };
    let touched: std::collections::HashSet<(std::sync::Arc<str>, std::sync::Arc<str>)> = all
        .iter()
        .filter(|e| (q.from_ms.unwrap()..q.to_ms.unwrap()).contains(&e.ts_ms))
        .map(|e| (e.shop.clone(), e.conversation.clone()))
        .collect();
    let want: Vec<Event> = all
        .iter()
        .filter(|e| touched.contains(&(e.shop.clone(), e.conversation.clone())))
        .map(slim)
        .collect();
    let mut got = reader.events_for_report(&q).unwrap();
    got.sort_by_key(key);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "window differs");

    // The compact records read in parallel give the report of the events.
    for by in [GroupBy::Agent, GroupBy::Shop, GroupBy::Stage] {
        let o = ReportOptions {
            by: Some(by),
            ..ReportOptions::default()
        };
        assert_eq!(
            reader.report(&o).unwrap(),
            report::compute(&all, &o),
            "{by:?}"
        );
    }
}

/// One service per data directory: a second store on it is refused with a
/// message naming the holder, also once `kefu.lock` was deleted, and the
/// directory is free again once the first store is closed.
#[test]
fn a_data_directory_serves_one_store_at_a_time() {
    let _no_children = no_children();
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path())
        .err()
        .expect("a second store opened");
    let msg = err.to_string();
    assert!(msg.contains("another kefu serve"), "{msg}");
    assert!(
        msg.contains(&format!("process {}", std::process::id())),
        "{msg}"
    );
    // Readers (reports, export) do not need the lock.
    assert_eq!(first.reader().count().unwrap(), 0);
    // Deleting kefu.lock does not let a second store in: the directory
    // itself is locked too (it used to: a new file, a new lock).
    std::fs::remove_file(dir.path().join(store::LOCK_FILE)).unwrap();
    let err = Store::open(dir.path())
        .err()
        .expect("a second store opened once kefu.lock was deleted");
    assert!(err.to_string().contains("another kefu serve"), "{err}");
    first.close().unwrap();
    Store::open(dir.path()).unwrap().close().unwrap();
}

/// Found by review: `kefu events import` of a file with bad lines imported
/// the good ones and exited 0, so fixing the file and importing it again
/// doubled every event of the first attempt; and it wrote into the log of a
/// running service. Now a bad line means nothing is imported (unless
/// `--skip-bad`), and a running service's directory is refused.
#[test]
fn import_is_all_or_nothing_and_not_beside_a_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.jsonl");
    let good = |c: &str| {
        format!(
            r#"{{"ts":"2026-11-20T10:00:00+08:00","shop":"s1","conversation":"{c}","buyer":"b1","kind":"buyer","text":"在吗"}}"#
        )
    };
    std::fs::write(&file, format!("{}\nnot json\n{}\n", good("c1"), good("c2"))).unwrap();
    let f = file.to_str().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let count =
        |d: &Path| store::Reader::open(d).map_or(0, |r| r.events(&Query::default()).unwrap().len());

    let run = kefu_cli;
    let out = run(&["events", "import", f, "--data", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("{f}:2: bad line")), "{err}");
    assert!(err.contains("1 bad line(s), nothing imported"), "{err}");
    assert!(err.contains("--skip-bad"), "{err}");
    assert_eq!(count(&data), 0);

    let (_, err) = kefu(&["events", "import", f, "--data", d, "--skip-bad"]);
    assert!(err.contains("2 event(s) imported"), "{err}");
    assert_eq!(count(&data), 2);

    // Beside a running service: refused, nothing written.
    let store = Store::open(&data).unwrap();
    std::fs::write(&file, format!("{}\n", good("c3"))).unwrap();
    let out = run(&["events", "import", f, "--data", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("a kefu serve is using it"), "{err}");
    store.close().unwrap();
    assert_eq!(count(&data), 2);
    let (_, err) = kefu(&["events", "import", f, "--data", d]);
    assert!(err.contains("1 event(s) imported"), "{err}");
    assert_eq!(count(&data), 3);
}

const DAY_MS: i64 = 86_400_000;

/// A conversation of `shop` starting at `at`: assignment, a round answered
/// in 20 s, one answered in 40 s (a breach), a rating 200 s after `at`
/// (its newest event).
fn chat(shop: &str, conversation: &str, at: i64) -> Vec<Event> {
    let buyer = format!("b-{conversation}");
    let ev = |ms: i64, kind: Kind| Event::new(at + ms, shop, conversation, &buyer, kind);
    let mut assign = ev(0, Kind::Assign);
    assign.agent = Some("a1".into());
    let mut out = vec![assign];
    for (ask, reply) in [(1_000, 21_000), (60_000, 100_000)] {
        let mut b = ev(ask, Kind::Buyer);
        b.text = Some("什么时候发货".into());
        b.stage = Some("in_sale".into());
        let mut a = ev(reply, Kind::Agent);
        a.agent = Some("a1".into());
        a.text = Some("亲，今天发出哦".into());
        out.extend([b, a]);
    }
    let mut r = ev(200_000, Kind::Rating);
    r.score = Some(Rating::Satisfied);
    out.push(r);
    out
}

/// The log the prune tests start from, and the cutoff they mostly use:
/// 2025-10-11 in UTC+8 (shop, conversation, start).
fn prune_log() -> (Vec<Event>, i64) {
    let day0 = report::parse_bound("2025-10-01", events::DEFAULT_OFFSET, false).unwrap();
    let cutoff = day0 + 10 * DAY_MS;
    let chats = [
        ("s1", "c-old", day0 + 3_600_000),
        // The same conversation id in two shops: two conversations.
        ("s1", "c-same", day0 + 2 * DAY_MS),
        ("s2", "c-same", day0 + 12 * DAY_MS),
        ("s2", "c-old", day0 + DAY_MS),
        // Its first round before the cutoff, the second after it.
        ("s1", "c-cross", cutoff - 30_000),
        ("s1", "c-new", day0 + 12 * DAY_MS),
        // Newest event (the rating) at the cutoff exactly: kept.
        ("s2", "c-edge", cutoff - 200_000),
        // Newest event a millisecond before it: deleted.
        ("s2", "c-just-before", cutoff - 200_001),
    ];
    let all = chats
        .iter()
        .flat_map(|&(shop, c, at)| chat(shop, c, at))
        .collect();
    (all, cutoff)
}

/// The JSON of reports over windows from `from` on, as a supervisor or
/// `kefu report --format json` would get them.
fn reports_from(reader: &Reader, from: i64, shop: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for to in [None, Some(from + 3 * DAY_MS)] {
        for by in [
            None,
            Some(GroupBy::Agent),
            Some(GroupBy::Day),
            Some(GroupBy::Shop),
        ] {
            let o = ReportOptions {
                from_ms: Some(from),
                to_ms: to,
                shop: shop.map(String::from),
                by,
                // The cutoff is at midnight: count the rounds around it.
                service_window: report::ServiceWindow::ALL_DAY,
                ..ReportOptions::default()
            };
            out.push(serde_json::to_string(&reader.report(&o).unwrap()).unwrap());
        }
    }
    out
}

/// `store::prune` deletes exactly the conversations whose newest event is
/// before the cutoff (of the shop given), each whole, and keeps every other
/// conversation whole, including one crossing the cutoff and one whose
/// newest event is at it; a dry run gives the same counts and changes
/// nothing; reports over windows from the cutoff on give the same JSON
/// after the prune as before it.
#[test]
fn prune_deletes_whole_conversations_older_than_the_cutoff() {
    let _no_children = no_children();
    let (all, cutoff) = prune_log();
    let start = all.iter().map(|e| e.ts_ms).min().unwrap();
    let end = all.iter().map(|e| e.ts_ms).max().unwrap();
    let old_everywhere: &[(&str, &str)] = &[
        ("s1", "c-old"),
        ("s1", "c-same"),
        ("s2", "c-old"),
        ("s2", "c-just-before"),
    ];
    type Case<'a> = (Option<&'a str>, i64, &'a [(&'a str, &'a str)]);
    let cases: [Case; 6] = [
        (None, cutoff, old_everywhere),
        (Some("s1"), cutoff, &[("s1", "c-old"), ("s1", "c-same")]),
        (
            Some("s2"),
            cutoff,
            &[("s2", "c-old"), ("s2", "c-just-before")],
        ),
        (Some("s3"), cutoff, &[]),
        (None, start, &[]),
        (
            None,
            end + 1,
            &[
                ("s1", "c-old"),
                ("s1", "c-same"),
                ("s2", "c-same"),
                ("s2", "c-old"),
                ("s1", "c-cross"),
                ("s1", "c-new"),
                ("s2", "c-edge"),
                ("s2", "c-just-before"),
            ],
        ),
    ];
    for (shop, before, gone) in cases {
        let case = format!("shop {shop:?}, cutoff {before}");
        let dir = tempfile::tempdir().unwrap();
        store::import(dir.path(), &all).unwrap();
        let reader = Reader::open(dir.path()).unwrap();
        let logged = reader.events(&Query::default()).unwrap();
        let reports = reports_from(&reader, before, shop);
        let goes = |e: &Event| gone.contains(&(&*e.shop, &*e.conversation));
        let kept: Vec<Event> = logged.iter().filter(|e| !goes(e)).cloned().collect();
        let want = store::PruneOutcome {
            events: (logged.len() - kept.len()) as u64,
            conversations: gone.len() as u64,
            remaining: kept.len() as u64,
        };

        let dry = store::prune(dir.path(), before, shop, true).unwrap();
        assert_eq!(dry, want, "{case}: dry run");
        assert_eq!(
            reader.events(&Query::default()).unwrap(),
            logged,
            "{case}: the dry run changed the log"
        );

        let done = store::prune(dir.path(), before, shop, false).unwrap();
        assert_eq!(done, want, "{case}");
        assert_eq!(reader.events(&Query::default()).unwrap(), kept, "{case}");
        assert_eq!(reports_from(&reader, before, shop), reports, "{case}");
        // The WAL is folded back into the database.
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0, "{case}");
    }
    // The reports compared above are not empty: from the cutoff on they
    // count c-cross's second round, c-same's and c-new's.
    let dir = tempfile::tempdir().unwrap();
    store::import(dir.path(), &all).unwrap();
    let report = reports_from(&Reader::open(dir.path()).unwrap(), cutoff, None);
    assert!(report[0].contains(r#""rounds":5,"#), "{}", report[0]);
}

/// A prune is refused beside a running service (naming it, saying how to
/// go on) and changes nothing; a dry run, which only reads, is not. A
/// cutoff later than a day ago is refused whatever the directory.
#[test]
fn prune_refuses_a_running_service_and_a_recent_cutoff() {
    let _no_children = no_children();
    let (all, cutoff) = prune_log();
    let dir = tempfile::tempdir().unwrap();
    store::import(dir.path(), &all).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = store::prune(dir.path(), cutoff, None, false)
        .expect_err("pruned beside a running service")
        .to_string();
    assert!(err.contains("a kefu serve is using it"), "{err}");
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("stop it, prune, then start it again"), "{err}");
    let dry = store::prune(dir.path(), cutoff, None, true).unwrap();
    assert_eq!((dry.events, dry.conversations), (24, 4));
    assert_eq!(store.reader().count().unwrap(), all.len() as u64);
    store.close().unwrap();
    let done = store::prune(dir.path(), cutoff, None, false).unwrap();
    assert_eq!(done, dry);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day_ago = now - store::PRUNE_MIN_AGE.as_millis() as i64;
    for before in [now + DAY_MS, now, day_ago + 60_000] {
        let err = store::prune(dir.path(), before, None, true)
            .expect_err("a recent cutoff was taken")
            .to_string();
        assert!(err.contains("later than a day ago"), "{before}: {err}");
    }
    // A day ago and a minute is allowed.
    let all_gone = store::prune(dir.path(), day_ago - 60_000, None, true).unwrap();
    assert_eq!(all_gone.remaining, 0);

    let err = store::prune(&dir.path().join("nowhere"), cutoff, None, false)
        .expect_err("pruned a missing log")
        .to_string();
    assert!(err.contains("no event log at"), "{err}");
}

/// The WAL is folded back into the database by the checkpointer thread
/// while the store runs, not by the writer, whose own checkpoint waits for
/// `writer_checkpoint_pages` (10,000 by default) as the fallback: with a
/// checkpointer that never comes round the events stay in the WAL and the
/// database file does not grow, unless the writer's threshold is reached.
/// Either way nothing is lost, and `close()` folds everything in.
#[test]
fn the_checkpointer_folds_the_wal_back_while_the_store_runs() {
    let _no_children = no_children();
    let never = Duration::from_secs(3600);
    let default_pages = StoreOptions::default().writer_checkpoint_pages;
    // (checkpointer period, writer's threshold in pages, folded while running)
    for (every, pages, folds) in [
        (Duration::from_millis(20), default_pages, true),
        (never, default_pages, false),
        (never, 10, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            checkpoint_every: every,
            writer_checkpoint_pages: pages,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), opts).unwrap();
        let db = dir.path().join(DB_FILE);
        let size = || std::fs::metadata(&db).unwrap().len();
        let before = size();
        let h = store.handle();
        for i in 0..2000 {
            h.record(event(i));
        }
        h.flush().unwrap();
        // 2,000 events are well over 64 KiB of pages.
        let grown = || size() > before + 64 * 1024;
        let patience = if folds { 30_000 } else { 500 };
        let until = std::time::Instant::now() + Duration::from_millis(patience);
        while !grown() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            grown(),
            folds,
            "checkpoint every {every:?}, writer at {pages} pages: {before} → {} bytes",
            size()
        );
        store.close().unwrap();
        assert!(grown(), "close() folds the WAL in");
        assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 2000);
    }
}

/// The checkpoints are called behind when what the WAL holds beyond the
/// database outgrows `wal_behind_limit`, and no longer once a pass folds
/// it back: a reader holding an old snapshot (a long report) stops every
/// pass short of the frames written after it, so the WAL grows while the
/// writer goes on. Without the reader the passes keep up and nothing is
/// said.
#[test]
fn the_checkpoints_are_behind_while_a_snapshot_pins_the_wal() {
    let _no_children = no_children();
    let limit = 64 * 1024;
    for pinned in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            checkpoint_every: Duration::from_millis(20),
            wal_behind_limit: limit,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), opts).unwrap();
        let h = store.handle();
        // A report's read transaction, its snapshot taken before the writes.
        let reader = Connection::open(dir.path().join(DB_FILE)).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 0);
        if !pinned {
            reader.execute_batch("COMMIT").unwrap();
        }
        // 2,000 events are well over 64 KiB of pages.
        for i in 0..2000 {
            h.record(event(i));
        }
        h.flush().unwrap();
        let until = |want: bool, patience: u64| {
            let end = std::time::Instant::now() + Duration::from_millis(patience);
            while h.checkpoints_behind().is_some() != want && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            h.checkpoints_behind()
        };
        if pinned {
            let behind = until(true, 30_000).expect("the pinned WAL was never called behind");
            assert!(behind >= limit, "{behind} bytes behind, limit {limit}");
            // The report ends: the next passes fold everything back.
            reader.execute_batch("COMMIT").unwrap();
            assert_eq!(
                until(false, 30_000),
                None,
                "still behind after the reader ended"
            );
        } else {
            // Many passes (every 20 ms) in 500 ms; none finds the WAL behind.
            assert_eq!(until(true, 500), None, "behind with no reader holding it");
        }
        drop(reader);
        store.close().unwrap();
        assert_eq!(Reader::open(dir.path()).unwrap().count().unwrap(), 2000);
    }
}
