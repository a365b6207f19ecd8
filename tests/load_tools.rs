//! The benchmark tools still speak the protocol: `kefu-load` drives
//! `kefu-relay` and the real `kefu serve` for a short, light run, and every
//! message must reach an agent and every agent reply its buyer. Nothing here
//! checks speed (that is `scripts/bench.sh`); only that the tools measure
//! something real. Loopback only, port 0, a few seconds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, reads its stderr until a line contains `ws://ADDR/ws`, and
/// returns the process and that URL.
fn start(mut cmd: Command) -> (Server, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(at) = line.find("ws://") {
                    let url: String = line[at..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != ')')
                        .collect();
                    let _ = tx.send(url);
                    sent = true;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server prints its WebSocket URL");
    (server, url)
}

fn tokens(agents: usize) -> Vec<String> {
    (1..=agents)
        .flat_map(|i| ["--agent-token".to_string(), format!("s1:a{i}:tok-{i}")])
        .collect()
}

/// Runs `kefu-load` with `args` and returns its JSON line.
fn load(url: &str, pid: u32, args: &[&str]) -> serde_json::Value {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kefu-load"))
        .args([
            "--url",
            url,
            "--server-pid",
            &pid.to_string(),
            "--source-ips",
            "1",
        ])
        .args(args)
        .output()
        .expect("kefu-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kefu-load failed: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "bounded run");
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("JSON line ({e}): {line}\n{stderr}"))
}

fn check_open_loop(v: &serde_json::Value, buyers: u64) {
    let sent = v["sent"].as_u64().unwrap();
    assert!(
        sent >= 150,
        "about 200 messages scheduled, {sent} sent: {v}"
    );
    assert_eq!(
        v["delivered"], v["sent"],
        "every message reached an agent: {v}"
    );
    assert_eq!(
        v["agent_replies"], v["sent"],
        "every reply reached its buyer: {v}"
    );
    assert_eq!(
        v["bot_replies"].as_u64(),
        Some(buyers),
        "one greeting per buyer: {v}"
    );
    assert_eq!(v["error_frames"], 0, "{v}");
    assert_eq!(v["disconnects"], 0, "{v}");
    assert_eq!(v["unmarked"], 0, "{v}");
    let n = v["latency_from_send"]["n"].as_u64().unwrap();
    assert_eq!(
        n,
        v["delivered_window"].as_u64().unwrap(),
        "one sample per measured delivery: {v}"
    );
    let p50 = v["latency_from_send"]["p50_us"].as_f64().unwrap();
    let due_p50 = v["latency_from_due"]["p50_us"].as_f64().unwrap();
    assert!(
        p50 > 0.0 && due_p50 >= p50,
        "latency from the schedule includes the send: {v}"
    );
    assert!(
        v["server_rss_kib"].as_u64().unwrap() > 0,
        "server sampled from /proc: {v}"
    );
}

/// Now on CLOCK_MONOTONIC, µs: the clock `--trace` stamps sends with.
fn monotonic_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// `--trace` wrote one line per measured message, in order of sending,
/// stamped on the monotonic clock within the run, with the latencies the
/// histogram counted.
fn check_trace(path: &std::path::Path, v: &serde_json::Value, before: f64, after: f64) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sent_us,latency_us"));
    let rows: Vec<(f64, f64)> = lines
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap_or_else(|| panic!("{l}"));
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(
        rows.len() as u64,
        v["latency_from_send"]["n"].as_u64().unwrap(),
        "one line per measured message: {v}"
    );
    assert!(
        rows.windows(2).all(|w| w[0].0 <= w[1].0),
        "in order of sending"
    );
    for &(sent, latency) in &rows {
        assert!(
            before < sent && sent + latency < after,
            "{sent} not within {before}..{after}"
        );
        assert!(latency > 0.0);
    }
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let hist_max = v["latency_from_send"]["max_us"].as_f64().unwrap();
    assert!(
        (max - hist_max).abs() <= hist_max * 0.01 + 1.0,
        "the trace's largest latency {max} is the histogram's {hist_max}"
    );
}

#[test]
fn load_drives_the_relay() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu-relay"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(tokens(2));
    let (server, url) = start(cmd);
    let pid = server.0.id();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    let before = monotonic_us();
    let v = load(
        &url,
        pid,
        &[
            "--mode",
            "relay",
            "--buyers",
            "20",
            "--agents",
            "2",
            "--rate",
            "100",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--trace",
            trace.to_str().unwrap(),
        ],
    );
    let after = monotonic_us();
    check_open_loop(&v, 20);
    check_trace(&trace, &v, before, after);

    let idle = load(
        &url,
        pid,
        &[
            "--mode",
            "relay",
            // Enough that the allocator (mimalloc reserves ahead) must
            // take new pages: with 50 the RSS sometimes did not move.
            "--idle-connections",
            "400",
            "--agents",
            "1",
            "--hold",
            "0.5",
        ],
    );
    assert_eq!(idle["connected"], 400, "{idle}");
    assert_eq!(idle["alive_at_end"], 400, "{idle}");
    assert!(idle["bytes_per_conn"].as_f64().unwrap() > 0.0, "{idle}");
}

#[test]
fn load_drives_kefu_serve() {
    let data = tempfile::tempdir().unwrap();
    let phrases = concat!(env!("CARGO_MANIFEST_DIR"), "/phrases");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log",
        "info",
        "--phrases",
        phrases,
    ])
    .arg("--data")
    .arg(data.path())
    .args(tokens(2));
    let (server, url) = start(cmd);
    let pid = server.0.id();
    // 10 messages/s over 20 buyers and 2 agents stays far under kefu's
    // default rate limit of 20 messages/s per connection.
    let v = load(
        &url,
        pid,
        &[
            "--mode",
            "kefu",
            "--buyers",
            "20",
            "--agents",
            "2",
            "--rate",
            "10",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    assert!(v["sent"].as_u64().unwrap() >= 15, "{v}");
    assert_eq!(
        v["delivered"], v["sent"],
        "every message reached an agent: {v}"
    );
    assert_eq!(v["agent_replies"], v["sent"], "{v}");
    assert_eq!(v["error_frames"], 0, "{v}");
    assert_eq!(
        v["unmarked"], 0,
        "kefu passes the buyer's text through: {v}"
    );
}
