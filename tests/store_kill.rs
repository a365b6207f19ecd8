//! Failure test: `kefu serve` under load from WebSocket clients is killed
//! with SIGKILL, started again on the same data directory and stopped with
//! SIGTERM. The second start brings back every buyer's conversation. Every
//! event the clients saw the service take more than 100 ms before the kill
//! must be in the log (the commit window is 50 ms, see docs/REPORTS.md),
//! and the reports on the log must add up.
//!
//! Loopback only, bounded: 20 buyers and one agent for about 3 seconds.

#![cfg(unix)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kefu::events::Kind;
use kefu::store::{Query, Reader};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BUYERS: usize = 20;
/// Each buyer sends a message this often.
const EVERY: Duration = Duration::from_millis(20);
const LOAD: Duration = Duration::from_secs(3);
/// Events older than this at the kill must have been committed.
const WINDOW_MS: i64 = 100;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const CONFIG: &str = "
clock:
  target_secs: 30
  nudge_secs: 20
  holding_secs: 0
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

/// Starts `kefu serve` on a free loopback port; returns it, its address
/// and its log line about the conversations it restored.
fn serve(dir: &Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kefu"))
        .arg("serve")
        .args(["--config", dir.join("kefu.yaml").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--data", dir.join("data").to_str().unwrap()])
        .args(["--phrases", phrases().to_str().unwrap()])
        .args(["--log", "info"])
        .env_remove("KEFU_DATA")
        .env_remove("KEFU_AGENT_TOKENS")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading the log so the service never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut restored = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Logged before the port opens.
            if line.contains("restored the conversations") {
                restored = line.clone();
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send((addr, std::mem::take(&mut restored)));
                }
            }
        }
    });
    let (addr, restored) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("kefu serve did not say where it listens");
    (child, addr, restored)
}

/// Waits until `GET /healthz` answers `ok`.
fn healthz(addr: &str) {
    use std::io::{Read, Write};
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ =
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kefu\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("kefu serve on {addr} does not answer /healthz");
}

fn phrases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, hello: Value) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text(hello.to_string())).await.unwrap();
    ws
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// What the clients saw the service take: (text, server time).
#[derive(Default)]
struct Seen {
    buyer: Vec<(String, i64)>,
    agent: Vec<(String, i64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_at_most_the_commit_window() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kefu.yaml"), CONFIG).unwrap();
    let (mut child, addr, restored) = serve(dir.path());
    assert!(restored.contains("conversations=0"), "{restored}");
    let seen = Arc::new(Mutex::new(Seen::default()));

    // The agent answers every buyer message and notes what was taken.
    let mut agent = connect(
        &addr,
        json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":"t1"}),
    )
    .await;
    let agent_seen = seen.clone();
    let agent_task = tokio::spawn(async move {
        let mut pending: HashMap<String, VecDeque<String>> = HashMap::new();
        let mut n = 0;
        while let Some(v) = next_json(&mut agent).await {
            match v["type"].as_str() {
                Some("buyer_message") => {
                    let conv = v["conversation"].as_str().unwrap_or("").to_string();
                    let text = v["text"].as_str().unwrap_or("").to_string();
                    agent_seen
                        .lock()
                        .unwrap()
                        .buyer
                        .push((text, v["at"].as_i64().unwrap_or(0)));
                    n += 1;
                    let reply = format!("亲，收到您的第{n}条消息");
                    pending
                        .entry(conv.clone())
                        .or_default()
                        .push_back(reply.clone());
                    let frame = json!({"type":"reply","conversation":conv,"text":reply,"intent":"pre_sale.stock"});
                    if agent.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                Some("reply_sent") => {
                    let conv = v["conversation"].as_str().unwrap_or("");
                    if let Some(text) = pending.get_mut(conv).and_then(VecDeque::pop_front) {
                        agent_seen
                            .lock()
                            .unwrap()
                            .agent
                            .push((text, v["at"].as_i64().unwrap_or(0)));
                    }
                }
                _ => {}
            }
        }
    });

    let mut buyers = Vec::new();
    for b in 0..BUYERS {
        let addr = addr.clone();
        buyers.push(tokio::spawn(async move {
            let mut ws = connect(&addr, json!({"type":"hello","role":"buyer","shop":"s1","buyer":format!("b{b}")})).await;
            let mut tick = tokio::time::interval(EVERY);
            for n in 0.. {
                tokio::select! {
                    _ = tick.tick() => {
                        let m = json!({"type":"message","text":format!("买家{b}的第{n}条：这款有货吗")});
                        if ws.send(Message::text(m.to_string())).await.is_err() {
                            break;
                        }
                    }
                    frame = ws.next() => if frame.is_none_or(|f| f.is_err()) { break },
                }
            }
        }));
    }

    tokio::time::sleep(LOAD).await;
    let killed_at = now_ms();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for b in buyers {
        let _ = b.await;
    }
    let _ = agent_task.await;

    // Start again on the same log, then stop gracefully. The service only
    // starts listening for SIGTERM once its accept loop has polled its
    // shutdown future, so a SIGTERM right at start-up kills it like a
    // SIGKILL: wait until it answers and has had time to go idle.
    // Every buyer's conversation is back, though the service was killed.
    let (child, addr, restored) = serve(dir.path());
    assert!(
        restored.contains(&format!("conversations={BUYERS} ")),
        "{restored}"
    );
    healthz(&addr);
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kefu serve did not stop cleanly after SIGTERM: {:?}",
        out.status
    );

    let log = Reader::open(&dir.path().join("data"))
        .unwrap()
        .events(&Query::default())
        .unwrap();
    let texts = |kind: Kind| -> HashSet<&str> {
        log.iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.text.as_deref())
            .collect()
    };
    let (logged_buyer, logged_agent) = (texts(Kind::Buyer), texts(Kind::Agent));
    let seen = seen.lock().unwrap();
    assert!(
        seen.buyer.len() > 500,
        "too little load: {} buyer messages",
        seen.buyer.len()
    );
    let mut late = 0;
    for (what, taken, logged) in [
        ("buyer", &seen.buyer, &logged_buyer),
        ("agent", &seen.agent, &logged_agent),
    ] {
        for (text, at) in taken.iter() {
            if logged.contains(text.as_str()) {
                continue;
            }
            assert!(
                *at >= killed_at - WINDOW_MS,
                "{what} event {text:?} taken {} ms before the kill is not in the log",
                killed_at - at
            );
            late += 1;
        }
    }
    println!(
        "seen {} buyer messages and {} replies; log holds {} events; lost within the last {WINDOW_MS} ms: {late}",
        seen.buyer.len(),
        seen.agent.len(),
        log.len()
    );

    // The reports add up: the groups sum to the total, and the report of
    // the log equals the report of its export.
    let data = dir.path().join("data");
    let report = |args: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_kefu"))
            .args(["report", "--format", "json", "--window", "00:00-24:00"])
            .args(args)
            .env_remove("KEFU_DATA")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let by_agent = report(&["--data", data.to_str().unwrap(), "--by", "agent"]);
    let total = &by_agent["total"];
    assert!(total["rounds"].as_u64().unwrap() > 0);
    for field in ["rounds", "answered", "breaches", "ratings"] {
        let sum: u64 = by_agent["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g[field].as_u64().unwrap())
            .sum();
        assert_eq!(sum, total[field].as_u64().unwrap(), "{field}");
    }
    assert!(total["answered"].as_u64() <= total["rounds"].as_u64());
    let export = Command::new(env!("CARGO_BIN_EXE_kefu"))
        .args(["events", "export", "--data", data.to_str().unwrap()])
        .env_remove("KEFU_DATA")
        .output()
        .unwrap();
    assert!(export.status.success());
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    // A file's report counts undecided rounds as unanswered, the log's
    // leaves them out; the rounds answered are the same.
    let from_file = report(&["--events", file.to_str().unwrap(), "--by", "agent"]);
    assert_eq!(from_file["total"]["answered"], total["answered"]);
}
