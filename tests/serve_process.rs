//! `kefu serve` as a process, as an operator runs it.
//!
//! The event log's disk fills while it runs: the
//! service keeps serving the chat, and `/healthz` says what monitors must
//! see: `degraded` and `event_log: failing` while commits fail, the count
//! of events lost (kept once the disk has room again), and `ok` again after
//! the next commit that succeeds. Found by review: the page said `ok`
//! throughout while the log dropped every event.
//!
//! A full disk is made for the service alone with `RLIMIT_FSIZE` (no file
//! of the process may grow past the limit: writes fail with `EFBIG` as on
//! a full file system) and given room again by raising the limit from
//! outside with `prlimit`.
//!
//! SIGHUP (an SSH hang-up, `systemctl reload`) reloads the phrase
//! libraries and the service goes on; it used to end it without closing
//! the event log.
//!
//! The event log damaged at the header or in the pages of the last events:
//! the start moves it aside, says so at ERROR with what to do, serves on a
//! new log and `/healthz` says `degraded` until the next restart. A start
//! on a full disk says what to check; a log emptied in a used directory is
//! warned about.
//!
//! The service turns transparent huge pages off for itself.
//!
//! Linux only; loopback, one buyer, bounded.

#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::garble;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = "
reload:
  poll_ms: 0
limits:
  rate_per_sec: 10000
  rate_burst: 10000
shops:
  s1:
    name: 测试旗舰店
    agents:
      a1:
        token: t1
";

/// The largest file the service may write at first: room for the
/// database, its WAL's first commits, the resume key and the last-good
/// copy of the test libraries, not for 100 messages of 6 KB.
const FSIZE: u64 = 256 * 1024;

fn set_fsize(pid: Option<u32>, bytes: u64) -> std::io::Result<()> {
    let lim = libc::rlimit64 {
        rlim_cur: bytes,
        rlim_max: libc::RLIM64_INFINITY,
    };
    let pid = pid.map_or(0, |p| p as libc::pid_t);
    // SAFETY: prlimit64 only reads `lim`; a null old limit is allowed.
    if unsafe { libc::prlimit64(pid, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `kefu serve` on `phrases`, its files limited to `fsize` bytes
/// when given; returns it, its address and its log so far.
fn serve(dir: &Path, phrases: &Path, fsize: Option<u64>) -> (Kefu, String, Log) {
    std::fs::write(dir.join("kefu.yaml"), CONFIG).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
    cmd.arg("serve")
        .args(["--config", dir.join("kefu.yaml").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--data", dir.join("data").to_str().unwrap()])
        .args(["--phrases", phrases.to_str().unwrap()])
        .args(["--log", "info"])
        .env_remove("KEFU_DATA")
        .env_remove("KEFU_AGENT_TOKENS")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls: signal
    // and prlimit64. A file over the limit then fails with EFBIG instead of
    // killing the process with SIGXFSZ.
    if let Some(bytes) = fsize {
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                set_fsize(None, bytes)
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Log::default();
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.0.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("kefu serve did not say where it listens");
    (Kefu(child), addr, log)
}

/// A `kefu serve` this test started: killed when the test ends, however it
/// ends (a failed assertion left services running).
struct Kefu(Child);

impl std::ops::Deref for Kefu {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kefu {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Kefu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The service's log lines, as they come.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Waits (at most 10 s) for a line with `needle`.
    fn wait_for(&self, needle: &str) -> String {
        for _ in 0..100 {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no log line with {needle:?}: {:?}", self.0.lock().unwrap());
    }
}

/// `GET /healthz`: the status line and the body.
fn healthz(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kefu\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Polls `/healthz` until `want` holds of its body (at most 10 s).
fn healthz_until(addr: &str, want: impl Fn(&str) -> bool) -> String {
    let mut body = String::new();
    for _ in 0..100 {
        let (status, b) = healthz(addr);
        assert_eq!(status, "HTTP/1.1 200 OK", "{b}");
        body = b;
        if want(&body) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/healthz never got there; last: {body:?}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

async fn agent(addr: &str) -> Ws {
    let (mut agent, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    agent
        .send(Message::text(
            json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":"t1"})
                .to_string(),
        ))
        .await
        .unwrap();
    next_of(&mut agent, "welcome").await;
    agent
}

fn dropped(body: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix("events_dropped: "))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_in_healthz_and_the_chat_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let phrases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    let (mut child, addr, _) = serve(dir.path(), &phrases, Some(FSIZE));
    let (status, body) = healthz(&addr);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    let mut agent = agent(&addr).await;
    let (mut buyer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    buyer
        .send(Message::text(
            json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b1"}).to_string(),
        ))
        .await
        .unwrap();
    next_of(&mut buyer, "welcome").await;

    // Messages of 6 KB until the page says so: far past what the files
    // may grow by. (A commit can still fit now and then, after a
    // checkpoint starts the WAL over, so the page is read as they go.) The
    // chat goes on: every one reaches the agent.
    let text = "满".repeat(2000);
    let mut body = String::new();
    for _ in 0..300 {
        buyer
            .send(Message::text(
                json!({"type":"message","text":text}).to_string(),
            ))
            .await
            .unwrap();
        next_of(&mut agent, "buyer_message").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        body = healthz(&addr).1;
        if body.starts_with("degraded\n") {
            break;
        }
    }
    assert!(body.starts_with("degraded\n"), "{body}");
    assert!(body.contains("\nevent_log: failing\n"), "{body}");
    let lost = dropped(&body);
    assert!(lost > 0, "{body}");

    // Room again: the next commit succeeds and the page says `ok`, with
    // what was lost meanwhile.
    set_fsize(Some(child.id()), libc::RLIM64_INFINITY).unwrap();
    buyer
        .send(Message::text(
            json!({"type":"message","text":"还在吗"}).to_string(),
        ))
        .await
        .unwrap();
    next_of(&mut agent, "buyer_message").await;
    let body = healthz_until(&addr, |b| b.starts_with("ok\n"));
    assert!(!body.contains("event_log:"), "{body}");
    assert!(dropped(&body) >= lost, "{body}");

    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

/// SIGHUP reloads the libraries (polling is off here, so only the signal
/// can) and the service goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_phrase_libraries_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let phrases = dir.path().join("phrases");
    std::fs::create_dir(&phrases).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    for f in std::fs::read_dir(&fixtures).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, phrases.join(f.file_name().unwrap())).unwrap();
    }
    let (mut child, addr, log) = serve(dir.path(), &phrases, None);
    let mut agent = agent(&addr).await;
    // An edit nothing polls for.
    let file = phrases.join("pre_sale.yaml");
    let edited = std::fs::read_to_string(&file).unwrap() + "\n# edited\n";
    std::fs::write(&file, edited).unwrap();
    for _ in 0..2 {
        // SAFETY: kill only sends a signal.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
        let reload = next_of(&mut agent, "reload").await;
        assert_eq!(reload["ok"], true, "{reload}");
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(healthz(&addr).1, "ok\n");
    log.wait_for("SIGHUP received");

    // A refused sign-in is logged with who it claimed to be, never the
    // token (found by review: the line named neither shop nor agent).
    let (mut stranger, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    stranger
        .send(Message::text(
            json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":"wrong-token-x"})
                .to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_of(&mut stranger, "error").await["code"], "bad_token");
    let line = log.wait_for("hello refused");
    assert!(
        line.contains("shop=\"s1\"") && line.contains("id=\"a1\""),
        "{line}"
    );
    assert!(!line.contains("wrong-token-x"), "{line}");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// The service runs without transparent huge pages (a fault on one
/// stalled a worker for milliseconds under load; see
/// `no_transparent_huge_pages` in src/cmd/serve.rs). The kernel says so in
/// `THP_enabled` (Linux 5.0 and later; older kernels skip the check).
#[test]
fn the_service_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    let (child, _addr, _log) = serve(dir.path(), &fixtures, None);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) else {
        eprintln!("this kernel does not report THP_enabled: skipped");
        stop(child);
        return;
    };
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    stop(child);
}

/// SIGHUP also reads the settings again: an agent added to the file signs
/// in, one whose token changed is signed out, and a file that does not
/// load keeps the running staff (the error names the file and line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_staff_from_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    let (child, addr, log) = serve(dir.path(), &fixtures, None);
    let mut a1 = agent(&addr).await;
    // SAFETY: kill only sends a signal.
    let hup = || unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let hello = |agent: &'static str, token: &'static str| {
        let addr = addr.clone();
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                .await
                .unwrap();
            ws.send(Message::text(
                json!({"type":"hello","role":"agent","shop":"s1","agent":agent,"token":token})
                    .to_string(),
            ))
            .await
            .unwrap();
            let first = ws.next().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
            v
        }
    };
    assert_eq!(
        hello("a2", "t2-long-enough-token").await["code"],
        "bad_token"
    );

    let file = dir.path().join("kefu.yaml");
    let edited = CONFIG.replace(
        "        token: t1\n",
        "        token: t1-rotated\n      a2:\n        token: t2-long-enough-token\n",
    );
    assert_ne!(edited, CONFIG);
    std::fs::write(&file, &edited).unwrap();
    hup();
    let line = log.wait_for("staff reloaded");
    assert!(line.contains("s1:a2") && line.contains("s1:a1"), "{line}");
    assert_eq!(next_of(&mut a1, "error").await["code"], "bad_token");
    assert_eq!(hello("a2", "t2-long-enough-token").await["type"], "welcome");
    assert_eq!(hello("a1", "t1-rotated").await["type"], "welcome");
    // Only the staff changed: nothing is said to wait for a restart.
    assert!(
        !log.0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("only at a restart")),
        "{:?}",
        log.0.lock().unwrap()
    );

    // Broken YAML: the staff in force stay, the log says where.
    std::fs::write(&file, "shops: [\n").unwrap();
    hup();
    let line = log.wait_for("settings not reloaded");
    assert!(line.contains("kefu.yaml"), "{line}");
    assert_eq!(hello("a2", "t2-long-enough-token").await["type"], "welcome");

    // A limit changed: named as waiting for a restart.
    std::fs::write(
        &file,
        edited.replace("rate_per_sec: 10000", "rate_per_sec: 9000"),
    )
    .unwrap();
    hup();
    let line = log.wait_for("only at a restart");
    assert!(line.contains("limits"), "{line}");
    stop(child);
}

/// Stops `child` with SIGTERM and waits for it.
fn stop(mut child: Kefu) {
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// A real log made by the store: `n` buyer messages of 20 conversations,
/// 10 ms apart and ending now (all within the resume window, so the
/// restore at start reads every page), with texts long enough to fill
/// many pages.
fn make_log(data: &Path, n: usize) -> std::path::PathBuf {
    use kefu::events::{Event, Kind};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let store = kefu::store::Store::open(data).unwrap();
    let h = store.handle();
    for i in 0..n {
        let c = i % 20;
        let mut e = Event::new(
            now - (n - i) as i64 * 10,
            "s1",
            &format!("c{c}"),
            &format!("b{c}"),
            Kind::Buyer,
        );
        e.text = Some(format!("第{i}条：什么时候发货？{}", "亲".repeat(60)).into());
        h.record(e);
    }
    store.close().unwrap();
    data.join(kefu::store::DB_FILE)
}

/// A damaged log, found at open (garbage over the header) or by the
/// restore (garbage over the pages of the last events), no longer stops
/// the service (found by review: exit 2, "database disk image is
/// malformed", nothing said what to do): the start moves it aside, says so
/// at ERROR with what to do, serves the chat on a new log, and `/healthz`
/// says `degraded` until the next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_moved_aside_and_the_chat_starts() {
    let phrases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    for header in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let path = make_log(&data, 3000);
        let pages = std::fs::metadata(&path).unwrap().len() / 4096;
        if header {
            garble(&path, 0, 2);
        } else {
            garble(&path, pages / 2, 20);
        }
        let damaged = std::fs::read(&path).unwrap();
        let (child, addr, logged) = serve(dir.path(), &phrases, None);
        let body = healthz(&addr).1;
        let aside: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with("events.db.damaged-") && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
            .collect();
        assert_eq!(aside.len(), 1, "header {header}: {aside:?}");
        assert_eq!(
            body,
            format!(
                "degraded\nevent_log: damaged_log_moved_aside\ndamaged_log: {}\n",
                aside[0]
            ),
            "header {header}"
        );
        assert_eq!(std::fs::read(data.join(&aside[0])).unwrap(), damaged);
        let log = logged.0.lock().unwrap().join("\n");
        let error = log
            .lines()
            .find(|l| l.contains("ERROR") && l.contains("the event log is damaged"))
            .unwrap_or_else(|| panic!("header {header}: no ERROR line in\n{log}"));
        // Found at open, or by the restore's read.
        let found = if header {
            "trying to switch to WAL mode"
        } else {
            "trying to read"
        };
        for want in [
            aside[0].as_str(),
            found,
            "docs/REPORTS.md",
            ".dump",
            "kefu events import",
            "not restored",
        ] {
            assert!(
                error.contains(want),
                "header {header}: {want:?} not in {error}"
            );
        }
        // The chat works on the new log.
        let _agent = agent(&addr).await;
        stop(child);
        // The next start has an undamaged log: `ok`.
        let (child, addr, _) = serve(dir.path(), &phrases, None);
        assert_eq!(healthz(&addr).1, "ok\n");
        stop(child);
    }
}

/// A log emptied (or removed) in a directory a service used before is
/// said at start: it starts as new, which used to be silent.
#[test]
fn a_lost_log_is_warned_about_at_start() {
    let phrases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    let dir = tempfile::tempdir().unwrap();
    let warning = "the event log is new but this data directory was used before";
    let (child, _, logged) = serve(dir.path(), &phrases, None);
    stop(child);
    assert!(
        !logged.0.lock().unwrap().iter().any(|l| l.contains(warning)),
        "not at a first start"
    );
    std::fs::write(dir.path().join("data/events.db"), b"").unwrap();
    let (child, _, logged) = serve(dir.path(), &phrases, None);
    stop(child);
    let log = logged.0.lock().unwrap().join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(warning) && l.contains("backup")),
        "{log}"
    );
}

/// A library without every id of the project's taxonomy is served (a
/// shop's first small library works) with a warning naming what it lacks;
/// the shipped libraries start without one.
#[test]
fn a_library_lacking_required_intents_is_served_with_a_warning() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, logged) = serve(dir.path(), &fixture, None);
    let line = logged.wait_for("required intent");
    assert!(
        line.contains("WARN")
            && line.contains("after_sale.usage_help")
            && !line.contains("pre_sale.greeting"),
        "{line}"
    );
    let (status, _) = healthz(&addr);
    assert!(status.contains("200"), "{status}");
    stop(child);

    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases");
    let dir = tempfile::tempdir().unwrap();
    let (child, _, logged) = serve(dir.path(), &shipped, None);
    stop(child);
    let log = logged.0.lock().unwrap().join("\n");
    assert!(!log.contains("required intent"), "{log}");
}

/// Starting on a full disk (here: no file of the process may grow past 1
/// byte) says what to check besides SQLite's "disk I/O error" (found by
/// review), and refuses.
#[test]
fn a_start_on_a_full_disk_says_what_to_check() {
    let phrases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kefu.yaml"), CONFIG).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
    cmd.arg("serve")
        .args(["--config", dir.path().join("kefu.yaml").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--data", dir.path().join("data").to_str().unwrap()])
        .args(["--phrases", phrases.to_str().unwrap()])
        .env_remove("KEFU_DATA")
        .env_remove("KEFU_AGENT_TOKENS");
    // SAFETY: between fork and exec only async-signal-safe calls (see
    // `serve`).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            set_fsize(None, 1)
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot open the event log")
            && stderr.contains("free disk space")
            && stderr.contains("events.db-wal"),
        "{stderr}"
    );
}
