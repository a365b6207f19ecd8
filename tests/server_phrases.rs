//! The phrase libraries across edits and restarts: the last-good copy in
//! the data directory that a start falls back to, the status agents'
//! `welcome` and `/healthz` report, and reloads that would lose a stage
//! library.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{serve_tcp, test_config, Client, TestApp};
use kefu::config::Config;
use kefu::protocol::PhraseSource;
use kefu::server::{App, ServerError, LAST_GOOD_DIR};
use kefu::store::StoreHandle;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A copy of the fixture phrases in a temp dir, to edit.
fn phrase_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::fixture_phrases()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn config_on(phrases: &Path, reload: bool) -> Config {
    let mut config = test_config();
    config.phrases = phrases.to_path_buf();
    config.reload_poll = reload.then(|| Duration::from_millis(50));
    config
}

/// A syntax error on line 3, column 9 of `pre_sale.yaml`.
const BROKEN: &str = "stage: pre_sale\nintents:\n  - id: [oops\n";

async fn healthz(t: &TestApp) -> String {
    let mut s = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kefu\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(buf.starts_with("HTTP/1.1 200 OK\r\n"), "{buf}");
    buf.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The first suggestion agent `a` (the only one online) gets for a new
/// buyer's "有货吗" (pre-sale).
async fn stock_suggestion(t: &TestApp, a: &mut Client, buyer: &str) -> Value {
    let (mut b, _, _) = t.buyer(buyer).await;
    a.recv_type("conversation_assigned").await;
    b.send(json!({"type":"message","text":"有货吗"})).await;
    let m = a.recv_type("buyer_message").await;
    m["suggestions"][0]["intent"].clone()
}

/// A start whose phrase directory does not load serves the last libraries
/// that loaded (kept in the data directory by the start before), and says
/// so: the log, every agent's `welcome`, `/healthz`. A fixed edit reloads
/// as usual and clears the status. Before, the start refused (exit 2): a
/// broken edit that hot reload survived became an outage at the restart.
#[tokio::test]
async fn a_broken_directory_at_start_serves_the_last_good_copy_until_fixed() {
    let phrases = phrase_dir();
    let data = tempfile::tempdir().unwrap();
    // A start that loads keeps a copy.
    let first = App::open(
        config_on(phrases.path(), false),
        StoreHandle::default(),
        data.path(),
    )
    .unwrap();
    assert!(first.phrase_status().ok);
    drop(first);
    assert!(data
        .path()
        .join(LAST_GOOD_DIR)
        .join("pre_sale.yaml")
        .is_file());

    // A broken edit, then a restart.
    let path = phrases.path().join("pre_sale.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, BROKEN).unwrap();
    let app = App::open(
        config_on(phrases.path(), true),
        StoreHandle::default(),
        data.path(),
    )
    .expect("starts from the last-good copy");
    let t = serve_tcp(app).await;

    let (mut a, welcome) = t.agent("a1").await;
    let status = &welcome["phrases"];
    assert_eq!(status["ok"], false, "{welcome}");
    assert_eq!(status["source"], "last_good");
    assert_eq!(status["intents"], 5);
    let problem = status["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("pre_sale.yaml:3:9: YAML error"),
        "{problem}"
    );
    assert_eq!(
        stock_suggestion(&t, &mut a, "b1").await,
        "pre_sale.stock",
        "the last good library serves"
    );
    let health = healthz(&t).await;
    assert!(health.starts_with("ok\n"), "{health}");
    assert!(health.contains("phrases: stale\n"), "{health}");
    assert!(health.contains("phrase_source: last_good\n"), "{health}");
    // The copy is not replaced by a directory that does not load.
    assert_ne!(
        std::fs::read_to_string(data.path().join(LAST_GOOD_DIR).join("pre_sale.yaml")).unwrap(),
        BROKEN
    );

    // The fix reloads and clears the status.
    std::fs::write(&path, good.replace("有货, ", "有货, 囤货, ")).unwrap();
    let r = a.recv_until("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    let (_a3, welcome) = t.agent("a3").await;
    let status = &welcome["phrases"];
    assert_eq!(status["ok"], true, "{welcome}");
    assert_eq!(status["source"], "directory");
    assert_eq!(status["problems"], json!([]));
    assert_eq!(healthz(&t).await, "ok\n");
    let copy =
        std::fs::read_to_string(data.path().join(LAST_GOOD_DIR).join("pre_sale.yaml")).unwrap();
    assert!(copy.contains("囤货"), "a good reload renews the copy");
    t.stop().await;
}

/// With no last-good copy (a first start), a broken directory is refused,
/// naming file, line and column; so is a broken copy beside a broken
/// directory.
#[tokio::test]
async fn a_broken_directory_without_a_good_copy_is_refused() {
    let phrases = phrase_dir();
    std::fs::write(phrases.path().join("pre_sale.yaml"), BROKEN).unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = config_on(phrases.path(), false);
    match App::open(config.clone(), StoreHandle::default(), data.path()) {
        Err(e @ ServerError::Phrases { .. }) => {
            assert!(e.to_string().contains("pre_sale.yaml:3:9: "), "{e}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a first start with broken phrases must be refused"),
    }
    assert!(!data.path().join(LAST_GOOD_DIR).exists());

    let copy = data.path().join(LAST_GOOD_DIR);
    std::fs::create_dir(&copy).unwrap();
    std::fs::write(copy.join("pre_sale.yaml"), "stage: nowhere\n").unwrap();
    match App::open(config, StoreHandle::default(), data.path()) {
        Err(e @ ServerError::PhrasesAndLastGood { .. }) => {
            let text = e.to_string();
            assert!(text.contains("pre_sale.yaml:3:9: "), "{text}");
            assert!(text.contains("unknown stage `nowhere`"), "{text}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a broken copy must not serve"),
    }
}

/// A broken edit while serving is reported to agents who sign in later
/// too, and to `/healthz`; before, only the agents online at the moment
/// heard of it.
#[tokio::test]
async fn a_refused_reload_stays_in_the_status_for_later_agents() {
    let phrases = phrase_dir();
    let data = tempfile::tempdir().unwrap();
    let app = App::open(
        config_on(phrases.path(), true),
        StoreHandle::default(),
        data.path(),
    )
    .unwrap();
    let t = serve_tcp(app).await;
    let (mut a, welcome) = t.agent("a1").await;
    assert_eq!(welcome["phrases"]["ok"], true, "{welcome}");
    assert_eq!(welcome["phrases"]["source"], "directory");
    assert_eq!(healthz(&t).await, "ok\n");

    std::fs::write(phrases.path().join("pre_sale.yaml"), BROKEN).unwrap();
    let r = a.recv_until("reload").await;
    assert_eq!(r["ok"], false, "{r}");
    let (_a3, welcome) = t.agent("a3").await;
    let status = &welcome["phrases"];
    assert_eq!(status["ok"], false, "{welcome}");
    assert_eq!(
        status["source"], "directory",
        "the libraries loaded at start"
    );
    assert!(
        status["problems"][0]
            .as_str()
            .unwrap()
            .contains("pre_sale.yaml:3:9: "),
        "{status}"
    );
    let health = healthz(&t).await;
    assert!(
        health.contains("phrases: stale\nphrase_problems: 1\n"),
        "{health}"
    );
    t.stop().await;
}

/// Deleting a stage library while serving (a stray `rm`, a half-finished
/// sync) is a refused reload naming the file: the old libraries stay and
/// still match. Before, it was `ok: true` with fewer intents and every
/// pre-sale suggestion stopped.
#[tokio::test]
async fn deleting_a_stage_file_is_refused_and_the_old_library_still_matches() {
    let phrases = phrase_dir();
    let data = tempfile::tempdir().unwrap();
    let app = App::open(
        config_on(phrases.path(), true),
        StoreHandle::default(),
        data.path(),
    )
    .unwrap();
    let t = serve_tcp(app).await;
    let (mut a, _) = t.agent("a1").await;

    let path = phrases.path().join("pre_sale.yaml");
    let good = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = a.recv_until("reload").await;
    assert_eq!(r["ok"], false, "{r}");
    let err = r["errors"][0].as_str().unwrap();
    assert!(err.contains("pre_sale.yaml:1:1: "), "{err}");
    assert!(err.contains("stage pre_sale"), "{err}");
    assert_eq!(
        stock_suggestion(&t, &mut a, "b1").await,
        "pre_sale.stock",
        "the old library still matches"
    );
    let (_a3, welcome) = t.agent("a3").await;
    assert_eq!(welcome["phrases"]["ok"], false, "{welcome}");
    assert!(
        data.path()
            .join(LAST_GOOD_DIR)
            .join("pre_sale.yaml")
            .is_file(),
        "the copy keeps the file"
    );

    // Putting it back is a good reload.
    std::fs::write(&path, good).unwrap();
    let r = a.recv_until("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["intents"], 5);
    assert_eq!(healthz(&t).await, "ok\n");
    t.stop().await;
}

/// Other tools' hidden files beside the libraries are not libraries: a
/// macOS AppleDouble `._pre_sale.yaml` (binary, not UTF-8) and emacs'
/// lock `.#pre_sale.yaml` (a dangling symlink while the file is edited)
/// neither stop a start from loading the directory nor fail a reload, and
/// the last-good copy holds only the libraries. Before, each made every
/// reload fail (`not valid UTF-8`, `cannot read file`) and a start fall
/// back to the copy.
#[tokio::test]
async fn hidden_files_in_the_phrase_directory_are_not_libraries() {
    let phrases = phrase_dir();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        phrases.path().join("._pre_sale.yaml"),
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe",
    )
    .unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        "tester@host.1234:1795400000",
        phrases.path().join(".#pre_sale.yaml"),
    )
    .unwrap();
    let app = App::open(
        config_on(phrases.path(), true),
        StoreHandle::default(),
        data.path(),
    )
    .expect("the directory loads");
    let status = app.phrase_status();
    assert!(status.ok, "{:?}", status.problems);
    assert_eq!(
        status.source,
        PhraseSource::Directory,
        "not the last-good copy"
    );
    let mut copied: Vec<String> = std::fs::read_dir(data.path().join(LAST_GOOD_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    copied.sort();
    assert!(copied.iter().all(|n| !n.starts_with('.')), "{copied:?}");
    assert!(copied.contains(&"pre_sale.yaml".to_string()), "{copied:?}");

    let t = serve_tcp(app).await;
    let (mut a, welcome) = t.agent("a1").await;
    assert_eq!(welcome["phrases"]["ok"], true, "{welcome}");
    // An edit while the hidden files are there reloads.
    let path = phrases.path().join("pre_sale.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("有货, ", "有货, 囤货, ")).unwrap();
    let r = a.recv_until("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(healthz(&t).await, "ok\n");
    t.stop().await;
}

/// A stage library removed (a stray `rm`, or on purpose) and then a
/// restart: the start serves without it, as a removal on purpose needs,
/// but says what happened where agents and monitors look (the `welcome`'s
/// `phrases`, `/healthz`), and keeps the copy before it as
/// `phrases.last-good.old` to copy the file back from. Before, everything
/// said `ok`, the copy was replaced without the file, and the one log line
/// said a reload was refused. The next start without the file takes the
/// removal as meant.
#[tokio::test]
async fn a_start_without_a_stage_library_says_so_and_keeps_the_copy_before() {
    let phrases = phrase_dir();
    let data = tempfile::tempdir().unwrap();
    let open = |reload| {
        App::open(
            config_on(phrases.path(), reload),
            StoreHandle::default(),
            data.path(),
        )
        .unwrap()
    };
    assert!(open(false).phrase_status().ok);
    let path = phrases.path().join("pre_sale.yaml");
    let good = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let t = serve_tcp(open(false)).await;
    let (_a, welcome) = t.agent("a1").await;
    let status = &welcome["phrases"];
    assert_eq!(status["ok"], false, "{welcome}");
    assert_eq!(status["source"], "directory");
    let problem = status["problems"][0].as_str().unwrap();
    assert!(
        problem
            .contains("pre_sale.yaml: started without pre_sale.yaml, which the last good copy has"),
        "{problem}"
    );
    assert!(
        problem.contains("pre-sale messages get no suggestions; restore the file"),
        "{problem}"
    );
    assert!(!problem.contains("reload refused"), "{problem}");
    let health = healthz(&t).await;
    assert!(
        health.contains("phrases: stale\nphrase_problems: 1\n"),
        "{health}"
    );
    let old = data.path().join(format!("{LAST_GOOD_DIR}.old"));
    assert!(problem.contains(&old.display().to_string()), "{problem}");
    assert_eq!(std::fs::read(old.join("pre_sale.yaml")).unwrap(), good);
    assert!(!data
        .path()
        .join(LAST_GOOD_DIR)
        .join("pre_sale.yaml")
        .exists());
    t.stop().await;

    // A second start without it: removed on purpose, nothing to say.
    let t = serve_tcp(open(true)).await;
    let (mut a, welcome) = t.agent("a1").await;
    assert_eq!(welcome["phrases"]["ok"], true, "{welcome}");
    assert_eq!(healthz(&t).await, "ok\n");
    // Copied back from the kept copy, it reloads.
    std::fs::copy(old.join("pre_sale.yaml"), &path).unwrap();
    let r = a.recv_until("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["intents"], 5);
    t.stop().await;
}

/// A damaged `phrases.last-good` (emptied by hand) beside an intact
/// `phrases.last-good.old`: a start whose directory does not load serves
/// the `.old` copy. Before, it refused (exit 2): only the first copy that
/// existed was tried.
#[tokio::test]
async fn a_damaged_last_good_copy_falls_back_on_the_old_one() {
    let phrases = phrase_dir();
    let data = tempfile::tempdir().unwrap();
    drop(
        App::open(
            config_on(phrases.path(), false),
            StoreHandle::default(),
            data.path(),
        )
        .unwrap(),
    );
    let copy = data.path().join(LAST_GOOD_DIR);
    std::fs::rename(&copy, data.path().join(format!("{LAST_GOOD_DIR}.old"))).unwrap();
    std::fs::create_dir(&copy).unwrap();
    std::fs::write(phrases.path().join("pre_sale.yaml"), BROKEN).unwrap();
    let app = App::open(
        config_on(phrases.path(), false),
        StoreHandle::default(),
        data.path(),
    )
    .expect("serves the .old copy");
    let status = app.phrase_status();
    assert_eq!(status.source, PhraseSource::LastGood);
    assert_eq!(status.intents, 5);
    assert!(!status.ok);
}
