//! The command line where flags and `KEFU_*` variables meet, and
//! `kefu eval`'s warnings: run through the built binary, since the
//! environment of a child process is the only safe place to set a variable
//! in a multithreaded test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `kefu args` with `env` and no other `KEFU_*` variable; returns
/// stdout, stderr and the exit code.
fn kefu(args: &[&str], env: &[(&str, &str)]) -> (String, String, Option<i32>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEFU_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code(),
    )
}

fn shipped_phrases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("phrases")
}

/// A shop name with a comma comes through a flag whole (it was split into
/// `s1:小熊` and `官方`, "not SHOP:NAME"); the variable still takes
/// comma-separated entries. `--target-secs 0` stops `kefu serve` after the
/// names are read and before anything listens.
#[test]
fn serve_list_flags_keep_commas_and_variables_split() {
    let stop = ["--agent-token", "s1:a1:t", "--target-secs", "0"];
    /// Flags, variables, what the error is about, what it must not be about.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 4] = [
        (
            &["--shop-name", "s1:小熊,官方"],
            &[],
            "--target-secs",
            "SHOP:NAME",
        ),
        (
            &[],
            &[("KEFU_SHOP_NAMES", "s1:小熊,官方")],
            "`官方` is not SHOP:NAME",
            "--target-secs",
        ),
        (
            &[],
            &[("KEFU_SHOP_NAMES", "s1:小熊,s2:官方")],
            "--target-secs",
            "SHOP:NAME",
        ),
        (
            &[],
            &[("KEFU_SUPERVISOR_TOKENS", "s1:boss,nocolon")],
            "is not SHOP:TOKEN",
            "--target-secs",
        ),
    ];
    for (flags, env, says, not) in cases {
        let mut args = vec!["serve"];
        args.extend_from_slice(&stop);
        args.extend_from_slice(flags);
        let (_, err, code) = kefu(&args, env);
        assert_eq!(code, Some(2), "{flags:?} {env:?}: {err}");
        assert!(err.contains(says), "{flags:?} {env:?}: {err}");
        assert!(!err.contains(not), "{flags:?} {env:?}: {err}");
    }
}

/// Settings are named as the operator sets them, not by internal names
/// ("nudge: ..." and "target: ..." before).
#[test]
fn serve_names_the_clock_settings() {
    let cases: [(&[&str], &str); 2] = [
        (
            &["--nudge-secs", "40"],
            "--nudge-secs (clock.nudge_secs): the nudge (40 s) must come after 0 s and before \
             the response target (30 s",
        ),
        (
            &["--target-secs", "0"],
            "--target-secs (clock.target_secs): the response target must be more than 0",
        ),
    ];
    for (flags, says) in cases {
        let mut args = vec!["serve", "--agent-token", "s1:a1:t"];
        args.extend_from_slice(flags);
        let (_, err, code) = kefu(&args, &[]);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

/// A bad value from a `KEFU_*` variable is blamed on the variable, not
/// only on the flag the reader never typed; a bad flag stays the flag's.
#[test]
fn a_bad_value_names_the_variable_it_came_from() {
    // (arguments, variables, what stderr says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["serve"],
            &[("KEFU_TARGET_SECS", "abc")],
            "invalid value 'abc' for '--target-secs <N>, from KEFU_TARGET_SECS'",
        ),
        (
            &["serve", "--target-secs", "x"],
            &[("KEFU_TARGET_SECS", "abc")],
            "invalid value 'x' for '--target-secs <N>'",
        ),
        (
            &["serve", "--target-secs=x"],
            &[("KEFU_TARGET_SECS", "abc")],
            "invalid value 'x' for '--target-secs <N>'",
        ),
        (&["report"], &[("KEFU_TZ", "+25:00")], "from KEFU_TZ"),
        // two levels down
        (
            &["events", "export", "--data", "/nonexistent"],
            &[("KEFU_TZ", "+25:00")],
            "from KEFU_TZ",
        ),
        // values kefu serve checks itself, after clap
        (
            &["serve"],
            &[("KEFU_TZ", "+25:00")],
            "invalid settings for kefu serve (--tz is set by KEFU_TZ): --tz:",
        ),
        (
            &["serve"],
            &[("KEFU_NUDGE_SECS", "40")],
            "(--nudge-secs is set by KEFU_NUDGE_SECS)",
        ),
        (
            &["serve", "--tz", "+25:00"],
            &[("KEFU_TZ", "+08:00")],
            "invalid settings for kefu serve: --tz:",
        ),
        // typed under its alias: the flag's own value, not the variable's
        (
            &["report", "--window", "25:00-26:00"],
            &[("KEFU_SERVICE_WINDOW", "08:00-23:00")],
            "invalid value '25:00-26:00' for '--service-window <HH:MM-HH:MM>':",
        ),
    ];
    for (args, env, says) in cases {
        let (_, err, code) = kefu(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(says), "{args:?} {env:?}: {err}");
    }
}

/// `kefu suggest --explain` says why a message got what it got: here an
/// exclusion at the end vetoes the only intent a keyword found. With
/// `--jsonl` the steps come as a list, and only when asked for.
#[test]
fn suggest_explain_shows_why() {
    let phrases = shipped_phrases();
    let p = phrases.to_str().unwrap();
    let (out, err, code) = kefu(
        &["suggest", "--explain", "收货地址不变", "--phrases", p],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("no suggestion"), "{out}");
    assert!(
        out.contains(
            "exclusion 地址不变 of in_sale.address_change ends the message: \
             in_sale.address_change is vetoed"
        ) && out.contains("keyword 收货地址 -> in_sale.address_change (weight 0.50)"),
        "{out}"
    );
    let jsonl = |explain: bool| {
        let extra: &[&str] = if explain { &["--explain"] } else { &[] };
        let out = suggest_jsonl(extra, "能开发票吗\n");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    assert!(jsonl(false).get("steps").is_none());
    let with = jsonl(true);
    let steps = with["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["step"] == "score"
            && s["intent"] == "in_sale.invoice"
            && s["verdict"] == "suggested"),
        "{with}"
    );
}

/// A label naming no intent is a typo or a renamed intent: `kefu eval`
/// says so once per label, with the line of its first use, and still
/// counts those lines (as misses).
#[test]
fn eval_warns_about_labels_that_name_no_intent() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("labels.tsv");
    std::fs::write(
        &tsv,
        "在吗\tpre_sale.greeting\n\
         什么时候发货\tin_sale.nonexistent\n\
         发货了吗\tin_sale.nonexistent\tpre_sale.greting\n",
    )
    .unwrap();
    let phrases = shipped_phrases();
    let args = [
        "eval",
        "--quiet",
        "--phrases",
        phrases.to_str().unwrap(),
        tsv.to_str().unwrap(),
    ];
    let (out, err, code) = kefu(&args, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("labelled lines: 3"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0]
            .contains("labels.tsv:2: warning: label `in_sale.nonexistent` (2 line(s) in all)"),
        "{err}"
    );
    assert!(
        warnings[1].contains("labels.tsv:3: warning: label `pre_sale.greting` (1 line(s) in all)"),
        "{err}"
    );
    // A file whose labels all exist: not a word on stderr.
    std::fs::write(&tsv, "在吗\tpre_sale.greeting\n").unwrap();
    let (_, err, code) = kefu(&args, &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
}

/// `kefu suggest --jsonl` writes each line as the README shows it: `text`
/// then `suggestions`, each suggestion's fields in the documented order,
/// and scores as the server sends them (0.8, not 0.800000011920929: the
/// f32 went through an f64 on its way out).
/// `kefu suggest --jsonl` with the shipped libraries, `extra` flags and
/// `input` on stdin: its standard output (the run must succeed).
fn suggest_jsonl(extra: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kefu"))
        .args(["suggest", "--jsonl", "--phrases"])
        .arg(shipped_phrases())
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn suggest_jsonl_lines_have_the_documented_shape() {
    let text = suggest_jsonl(&[], "这款还有货吗\nqwerty\n");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with(r#"{"text":"这款还有货吗","suggestions":[{"stage":"pre_sale","intent":"pre_sale.stock","score":"#), "{}", lines[0]);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let first = &v["suggestions"][0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5);
    let score = lines[0].split(r#""score":"#).nth(1).unwrap();
    let score = &score[..score.find(',').unwrap()];
    assert!(score.len() <= 5, "score printed as {score}");
    assert_eq!(lines[1], r#"{"text":"qwerty","suggestions":[]}"#);
}

/// A `--log` filter that does not parse stops `kefu serve` with the reason
/// (it used to run without any log line at all, not even where it listens).
#[test]
fn serve_refuses_a_log_filter_it_cannot_read() {
    let (_, err, code) = kefu(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "bogus[[",
            "--agent-token",
            "s1:a1:t",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--log \"bogus[[\" is not a log filter"),
        "{err}"
    );
}

/// Found by review: with the default `max_connections` (50,000) above the
/// process's open-files limit, connections past the limit hung in the
/// listen queue (agents included) instead of being refused. kefu serve now
/// fits the limit to what it may open, and says so.
#[test]
fn serve_fits_max_connections_to_the_open_files_limit() {
    let data = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -n 200 && exec {} serve --listen 127.0.0.1:0 --data {} --phrases {} --agent-token s1:a1:k3J9vQ2mX7pL4wZ8rT6y",
        env!("CARGO_BIN_EXE_kefu"),
        data.path().display(),
        shipped_phrases().display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env_remove("KEFU_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) if line.contains("max_connections") => break Some(line),
            Ok(line) if line.contains("listening") => break None,
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("no warning; stderr: {seen:?}"));
    assert!(line.contains("using 136"), "{line}");
}

/// Found by review: `kefu lint ... | head` panicked when the reader had
/// gone. Each command that writes to standard output, with its read end
/// closed before it writes: an error or a clean end, never a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let phrases = shipped_phrases();
    let p = phrases.to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["lint", "不行，我不能，这不是我的问题", "--phrases", p],
        &["lint", "不行", "--json", "--phrases", p],
        &["check", p],
    ];
    for args in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kefu"))
            .args(*args)
            .env_remove("KEFU_DATA")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Loading the libraries takes milliseconds: the pipe is closed first.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
}

/// `kefu serve` on a broken phrase directory: refused (exit 2, naming
/// file, line and column) on a data directory without a last-good copy;
/// with one (`phrases.last-good/`, which every good load leaves), it
/// starts from the copy and logs each problem at error level. Before, it
/// refused both times: a broken edit that hot reload survived became an
/// outage at the next restart.
#[test]
fn serve_starts_from_the_last_good_copy_when_the_phrases_are_broken() {
    let phrases = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(shipped_phrases()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, phrases.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        phrases.path().join("pre_sale.yaml"),
        "stage: pre_sale\nintents:\n  - id: [oops\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
        "--phrases",
        phrases.path().to_str().unwrap(),
        "--agent-token",
        "s1:a1:k3J9vQ2mX7pL4wZ8rT6y",
    ];
    let (_, err, code) = kefu(&args, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("pre_sale.yaml:3:9: YAML error"), "{err}");

    let copy = data.path().join(kefu::server::LAST_GOOD_DIR);
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(shipped_phrases()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
        }
    }
    let seen = serve_until_listening(&args);
    assert!(
        seen.iter()
            .any(|l| l.contains("ERROR") && l.contains("pre_sale.yaml:3:9: YAML error")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("serving their last good copy")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("required intent")),
        "{seen:#?}"
    );
    // A copy that lacks a required intent is warned about under its own
    // name: it is what runs, and what `kefu check` should be pointed at.
    let in_sale = copy.join("in_sale.yaml");
    let text = std::fs::read_to_string(&in_sale).unwrap();
    std::fs::write(
        &in_sale,
        text.replace("id: in_sale.invoice\n", "id: in_sale.invoice_x\n"),
    )
    .unwrap();
    let seen = serve_until_listening(&args);
    let copy_shown = copy.display().to_string();
    assert!(
        seen.iter().any(|l| l.contains("lack 1 required intent")
            && l.contains("in_sale.invoice")
            && l.contains(&format!("kefu check {copy_shown}"))),
        "{seen:#?}"
    );
    std::fs::write(&in_sale, text).unwrap();

    // The broken file removed (a stray `rm` instead of a fix): the start
    // takes the directory as it is, and says loudly what it did.
    std::fs::remove_file(phrases.path().join("pre_sale.yaml")).unwrap();
    let seen = serve_until_listening(&args);
    assert!(
        seen.iter().any(|l| l.contains("ERROR")
            && l.contains("started without pre_sale.yaml, which the last good copy has")
            && l.contains("pre-sale messages get no suggestions")
            && !l.contains("reload refused")),
        "{seen:#?}"
    );
}

/// Starts `kefu serve` with `args`, waits until it listens, stops it;
/// returns what it wrote to standard error before listening.
fn serve_until_listening(args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEFU_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .args(args)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) if line.contains("listening on") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(listening, "did not start ({status}); stderr: {seen:#?}");
    seen
}

/// The child's standard error, line by line, as it comes.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A log for `kefu events prune`, as JSON lines (shop time UTC+8): two
/// conversations wholly before 2025-10-11 (one per shop), one crossing
/// its midnight, one after it; 10 events.
const PRUNE_LOG: &str = r#"{"ts":"2025-10-01T10:00:00+08:00","shop":"s1","conversation":"c-old","buyer":"b1","kind":"buyer","text":"在吗"}
{"ts":"2025-10-01T10:00:20+08:00","shop":"s1","conversation":"c-old","buyer":"b1","kind":"agent","agent":"a1","text":"在的亲"}
{"ts":"2025-10-02T10:00:00+08:00","shop":"s2","conversation":"c-old","buyer":"b2","kind":"buyer","text":"在吗"}
{"ts":"2025-10-02T10:00:20+08:00","shop":"s2","conversation":"c-old","buyer":"b2","kind":"agent","agent":"a2","text":"在的亲"}
{"ts":"2025-10-10T23:59:40+08:00","shop":"s1","conversation":"c-cross","buyer":"b3","kind":"buyer","text":"什么时候发货"}
{"ts":"2025-10-10T23:59:50+08:00","shop":"s1","conversation":"c-cross","buyer":"b3","kind":"agent","agent":"a1","text":"今天发出"}
{"ts":"2025-10-11T00:00:10+08:00","shop":"s1","conversation":"c-cross","buyer":"b3","kind":"rating","score":"satisfied"}
{"ts":"2025-10-12T10:00:00+08:00","shop":"s2","conversation":"c-new","buyer":"b4","kind":"buyer","text":"在吗"}
{"ts":"2025-10-12T10:00:20+08:00","shop":"s2","conversation":"c-new","buyer":"b4","kind":"agent","agent":"a2","text":"在的亲"}
{"ts":"2025-10-12T10:01:00+08:00","shop":"s2","conversation":"c-new","buyer":"b4","kind":"rating","score":"satisfied"}
"#;

/// A data directory holding [`PRUNE_LOG`], filled by `kefu events import`.
fn prune_data() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.jsonl");
    std::fs::write(&file, PRUNE_LOG).unwrap();
    let data = dir.path().join("data").to_str().unwrap().to_string();
    let (_, err, code) = kefu(
        &["events", "import", file.to_str().unwrap(), "--data", &data],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("10 event(s) imported"), "{err}");
    (dir, data)
}

/// Events left in the log of `data`, as `kefu events export` counts them.
fn events_in(data: &str) -> usize {
    let (out, err, code) = kefu(&["events", "export", "--data", data], &[]);
    assert_eq!(code, Some(0), "{err}");
    out.lines().count()
}

/// `kefu events prune --before 2025-10-11` on an imported log: what it
/// says on stderr, its exit code, and what is left. The cutoff is the
/// start of the day in the shop's time zone (`--tz`): at UTC it falls
/// after the crossing conversation's last event.
#[test]
fn events_prune_deletes_old_conversations_and_says_how_many() {
    let cases: [(&[&str], &[&str], usize); 5] = [
        (
            &["--dry-run"],
            &["dry run: 4 event(s) of 2 conversation(s) with no event since \
               2025-10-11T00:00:00.000+08:00 would be deleted, 6 event(s) would remain; \
               nothing changed"],
            10,
        ),
        (
            &[],
            &["4 event(s) of 2 conversation(s) with no event since 2025-10-11T00:00:00.000+08:00 \
               deleted from", ", 6 event(s) remain"],
            6,
        ),
        (
            &["--shop", "s2"],
            &["2 event(s) of 1 conversation(s) of shop `s2` with no event since", "8 event(s) remain"],
            8,
        ),
        (
            &["--tz", "+00:00"],
            &["7 event(s) of 3 conversation(s) with no event since 2025-10-11T00:00:00.000+00:00", "3 event(s) remain"],
            3,
        ),
        (
            &["--vacuum"],
            &["4 event(s) of 2 conversation(s)", "vacuumed: the log went from"],
            6,
        ),
    ];
    for (flags, says, left) in cases {
        let (_dir, data) = prune_data();
        let mut args = vec!["events", "prune", "--before", "2025-10-11", "--data", &data];
        args.extend_from_slice(flags);
        let (out, err, code) = kefu(&args, &[]);
        assert_eq!(code, Some(0), "{flags:?}: {err}");
        assert_eq!(out, "", "{flags:?}");
        for s in says {
            assert!(err.contains(s), "{flags:?}: {err}");
        }
        assert_eq!(events_in(&data), left, "{flags:?}");
    }
}

/// What `kefu events prune` refuses, with exit code 2, the log untouched:
/// a cutoff less than a day back (today, the future), a date that does not
/// exist, a dry run asked to vacuum, a directory without a log, and one a
/// running service holds.
#[test]
fn events_prune_refuses_recent_cutoffs_missing_logs_and_a_running_service() {
    let (dir, data) = prune_data();
    let today = time::OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+8))
        .date()
        .to_string();
    let nowhere = dir.path().join("nowhere").to_str().unwrap().to_string();
    let cases: [(&str, &str, &[&str], &str); 5] = [
        (&today, &data, &[], "is later than a day ago"),
        ("2999-01-01", &data, &[], "give a date at least a day back"),
        (
            "2025-10-32",
            &data,
            &[],
            "the date 2025-10-32 does not exist",
        ),
        (
            "2025-10-11",
            &data,
            &["--dry-run", "--vacuum"],
            "cannot be used with",
        ),
        ("2025-10-11", &nowhere, &[], "no event log at"),
    ];
    for (before, data, flags, says) in cases {
        let mut args = vec!["events", "prune", "--before", before, "--data", data];
        args.extend_from_slice(flags);
        let (_, err, code) = kefu(&args, &[]);
        assert_eq!(code, Some(2), "{before} {flags:?}: {err}");
        assert!(err.contains(says), "{before} {flags:?}: {err}");
    }
    assert!(
        !Path::new(&nowhere).exists(),
        "a missing directory was created"
    );

    let store = kefu::store::Store::open(Path::new(&data)).unwrap();
    let args = ["events", "prune", "--before", "2025-10-11", "--data", &data];
    let (_, err, code) = kefu(&args, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "a kefu serve is using it (process {}); stop it, prune, then start it again",
            std::process::id()
        )),
        "{err}"
    );
    assert!(
        err.contains("restores the conversations open in the last 30 minutes"),
        "{err}"
    );
    store.close().unwrap();
    assert_eq!(events_in(&data), 10);
}

/// `kefu report` reads the response target as `kefu serve` does, so one
/// KEFU_TARGET_SECS serves both (found by review: 7.5 was refused, 0 taken).
#[test]
fn report_takes_the_response_target_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, "").unwrap();
    let events = events.to_str().unwrap();
    type Case<'a> = (
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        Option<i32>,
        &'a str,
    );
    let cases: [Case; 5] = [
        (&["--target-secs", "7.5"], &[], Some(0), ""),
        (&[], &[("KEFU_TARGET_SECS", "7.5")], Some(0), ""),
        (&["--target-secs", "0"], &[], Some(2), "more than 0 seconds"),
        (
            &["--target-secs", "-5"],
            &[],
            Some(2),
            "more than 0 seconds",
        ),
        (
            &["--target-secs", "半分钟"],
            &[],
            Some(2),
            "such as 30 or 7.5",
        ),
    ];
    for (flags, env, code, says) in cases {
        let mut args = vec!["report", "--events", events, "--format", "json"];
        args.extend_from_slice(flags);
        let (_, err, got) = kefu(&args, env);
        assert_eq!(got, code, "{flags:?} {env:?}: {err}");
        assert!(err.contains(says), "{flags:?} {env:?}: {err}");
    }
}
