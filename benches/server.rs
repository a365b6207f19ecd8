//! Buyer message → agent `buyer_message` latency on loopback.
//!
//! Starts the real service (matching, clock and the SQLite event log on)
//! on 127.0.0.1:0 in its own 2-worker runtime, connects one agent and
//! `--buyers` buyers with tokio-tungstenite from a separate runtime, and
//! measures, closed loop, the time from handing a buyer's `message` frame
//! to the socket until the agent has parsed the matching `buyer_message`
//! (with its suggestions). The agent answers each message so every round
//! ends, as in a real chat.
//!
//! Run: `cargo bench --bench server` (release build). Options after `--`:
//! `--messages N` (default 20000), `--buyers N` (default 4).
//!
//! Messages are a small hand-written set of typical buyer questions; the
//! phrase libraries are `phrases/` (the fixture set if those do not load).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use kefu::config::{AgentConfig, Config, ShopConfig};
use kefu::server::{self, App};
use kefu::store::Store;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TEXTS: &[&str] = &[
    "在吗",
    "这款有货吗",
    "什么时候发货啊",
    "我想退货，怎么操作",
    "可以便宜点吗",
    "地址写错了能改吗",
    "快递到哪了，三天了还没到",
    "尺码偏大还是偏小",
    "发票怎么开",
    "收到的东西坏了",
    "能用优惠券吗",
    "你好，我昨天拍的那件衣服今天能发出吗？着急穿",
];

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn recv_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = recv(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}

fn main() {
    let messages = arg("--messages", 20_000);
    let buyers = arg("--buyers", 4).max(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let phrases = if kefu::phrases::Library::load_dir(&root.join("phrases")).is_ok() {
        root.join("phrases")
    } else {
        root.join("tests/fixtures/phrases")
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        phrases: phrases.clone(),
        reload_poll: None,
        ..Config::default()
    };
    config.limits.rate_per_sec = 1e6;
    config.limits.rate_burst = 1_000_000;
    config.shops.insert(
        "s1".into(),
        ShopConfig {
            name: Some("小米旗舰店".into()),
            agents: [(
                "a1".to_string(),
                AgentConfig {
                    token: "t1".into(),
                    name: Some("小美".into()),
                },
            )]
            .into(),
            ..ShopConfig::default()
        },
    );
    let store = Store::open(data.path()).unwrap();
    let app = App::new(config, store.handle()).unwrap();

    // The server gets its own runtime, as `kefu serve` does.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = server_rt.spawn(server::run(
        listener,
        app.clone(),
        std::future::pending::<()>(),
    ));

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (hist, elapsed) = client_rt.block_on(async move {
        let url = format!("ws://{addr}/ws");
        let (mut agent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        agent
            .send(Message::text(
                json!({"type":"hello","role":"agent","shop":"s1","agent":"a1","token":"t1"})
                    .to_string(),
            ))
            .await
            .unwrap();
        recv_type(&mut agent, "welcome").await;
        let mut bs = Vec::new();
        let mut convs = Vec::new();
        for i in 0..buyers {
            let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            b.send(Message::text(
                json!({"type":"hello","role":"buyer","shop":"s1","buyer":format!("bench{i}")})
                    .to_string(),
            ))
            .await
            .unwrap();
            let w = recv_type(&mut b, "welcome").await;
            recv_type(&mut b, "reply").await;
            recv_type(&mut agent, "conversation_assigned").await;
            convs.push(w["conversation"].as_str().unwrap().to_string());
            bs.push(b);
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let warmup = 1000.min(messages / 10);
        let start = Instant::now();
        for i in 0..(warmup + messages) {
            let k = i % buyers;
            let text = TEXTS[i % TEXTS.len()];
            let frame = Message::text(json!({"type":"message","text":text}).to_string());
            let t0 = Instant::now();
            bs[k].send(frame).await.unwrap();
            let m = recv_type(&mut agent, "buyer_message").await;
            let took = t0.elapsed();
            assert_eq!(m["conversation"], convs[k].as_str());
            if i >= warmup {
                // Saturating: a stall past the histogram's top (60 ms; a
                // loaded machine during `cargo test --all-targets`) is
                // counted at the top, not a panic that fails the suite.
                hist.saturating_record(took.as_nanos().max(1) as u64);
            }
            // End the round, as an agent would.
            let reply = m["suggestions"][0]["reply"]
                .as_str()
                .unwrap_or("亲，稍等我为您查一下哦～");
            agent
                .send(Message::text(
                    json!({"type":"reply","conversation":convs[k],"text":reply,"intent":null})
                        .to_string(),
                ))
                .await
                .unwrap();
            recv_type(&mut bs[k], "reply").await;
            // The `reply_sent` receipt is not awaited, as a real agent does
            // not await it: the server holds it (up to 20 ms) to ride with
            // the next `buyer_message`, which `recv_type` reads past it.
        }
        (hist, start.elapsed())
    });

    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "server bench: {} messages from {} buyers to 1 agent, phrases {}",
        hist.len(),
        buyers,
        phrases.display()
    );
    println!("buyer message -> agent buyer_message latency (loopback, closed loop):");
    println!(
        "  p50 {:.1} µs   p90 {:.1} µs   p99 {:.1} µs   p99.9 {:.1} µs   max {:.1} µs",
        us(0.50),
        us(0.90),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0
    );
    println!(
        "  {:.0} round trips/s (message, suggestion, reply; the receipt rides with the next suggestion)",
        (hist.len() as f64) / elapsed.as_secs_f64()
    );
    app.shutdown();
    server_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    });
    drop(server_rt);
    store.close().unwrap();
}
