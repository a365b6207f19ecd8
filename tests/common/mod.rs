//! `spawn_app()` and a small WebSocket client for the service's tests.
//!
//! Two transports, same server code: real TCP on 127.0.0.1:0 (`spawn_app`),
//! and in-memory pipes (`spawn_local`) for tests under tokio's paused
//! virtual time, where a packet in flight through the kernel would let the
//! runtime think it is idle and jump the clock ahead.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kefu::config::{AgentConfig, Config, ShopConfig};
use kefu::events::Event;
use kefu::server::{self, App, Restored, ResumeKey};
use kefu::store::{Store, StoreHandle, StoreOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a test waits for an expected frame (real time).
pub const WAIT: Duration = Duration::from_secs(5);
/// The same under paused virtual time, where waiting costs nothing and the
/// clock's alarms come 20-30 virtual seconds after the message.
pub const WAIT_VIRTUAL: Duration = Duration::from_secs(1000);

pub fn fixture_phrases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases")
}

/// Shop `s1` (named 测试旗舰店) with agents a1, a2, a3 (tokens t1, t2, t3;
/// a1 is called 小美), the fixture phrases, no hot reload, and limits
/// generous enough not to get in the way.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        phrases: fixture_phrases(),
        reload_poll: None,
        ..Config::default()
    };
    let mut shop = ShopConfig {
        name: Some("测试旗舰店".into()),
        ..ShopConfig::default()
    };
    for (id, token, name) in [
        ("a1", "t1", Some("小美")),
        ("a2", "t2", None),
        ("a3", "t3", None),
    ] {
        shop.agents.insert(
            id.into(),
            AgentConfig {
                token: token.into(),
                name: name.map(str::to_string),
            },
        );
    }
    c.shops.insert("s1".into(), shop);
    c.shops.insert(
        "s2".into(),
        ShopConfig {
            agents: [(
                "b1".to_string(),
                AgentConfig {
                    token: "u1".into(),
                    name: None,
                },
            )]
            .into(),
            ..ShopConfig::default()
        },
    );
    c.limits.rate_per_sec = 1000.0;
    c.limits.rate_burst = 1000;
    // Conversations move the moment an agent leaves, unless a test says
    // otherwise (the grace period has its own tests).
    c.limits.agent_grace = Duration::ZERO;
    c.validate().unwrap();
    c
}

enum Transport {
    Tcp(SocketAddr),
    Local(mpsc::Sender<DuplexStream>),
}

pub struct TestApp {
    pub app: App,
    transport: Transport,
    task: JoinHandle<()>,
    pub events: mpsc::UnboundedReceiver<Event>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_config()).await
}

/// The service on a real socket, 127.0.0.1:0.
pub async fn spawn_app_with(config: Config) -> TestApp {
    spawn_app_with_store(config, StoreHandle::default()).await
}

/// The service on a real socket, recording events to `store`.
pub async fn spawn_app_with_store(config: Config, store: StoreHandle) -> TestApp {
    serve_tcp(App::new(config, store).unwrap()).await
}

/// An app on data directory `dir` as `kefu serve` makes it: its event
/// log, its resume key, and the conversations open in the log brought
/// back. Close the store after stopping the app.
pub fn app_on_data(config: Config, dir: &Path) -> (App, Store, Restored) {
    let store = Store::open(dir).unwrap();
    let app = App::new(config, store.handle()).unwrap();
    app.attach_reports(store.reader());
    app.set_resume_key(ResumeKey::load_or_create(dir).unwrap());
    let restored = app.restore(&store.reader()).unwrap();
    (app, store, restored)
}

/// [`app_on_data`] served on a real socket.
pub async fn spawn_app_on_data(config: Config, dir: &Path) -> (TestApp, Store, Restored) {
    let (app, store, restored) = app_on_data(config, dir);
    (serve_tcp(app).await, store, restored)
}

/// `app` served on a real socket, 127.0.0.1:0.
pub async fn serve_tcp(app: App) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = app.tap_events().unwrap();
    let task = tokio::spawn({
        let app = app.clone();
        async move {
            server::run(listener, app, std::future::pending::<()>())
                .await
                .unwrap()
        }
    });
    TestApp {
        app,
        transport: Transport::Tcp(addr),
        task,
        events,
    }
}

/// The service over in-memory pipes (for paused virtual time).
pub async fn spawn_local(config: Config) -> TestApp {
    serve_local(App::new(config, StoreHandle::default()).unwrap()).await
}

/// `app` served over in-memory pipes (for paused virtual time).
pub async fn serve_local(app: App) -> TestApp {
    let events = app.tap_events().unwrap();
    let (tx, rx) = mpsc::channel::<DuplexStream>(16);
    let incoming = futures_util::stream::unfold(rx, |mut rx| async move {
        let io = rx.recv().await?;
        Some((Ok((io, "pipe".to_string())), rx))
    });
    let task = tokio::spawn({
        let app = app.clone();
        async move {
            server::run_incoming(incoming, app, std::future::pending::<()>())
                .await
                .unwrap()
        }
    });
    TestApp {
        app,
        transport: Transport::Local(tx),
        task,
        events,
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl TestApp {
    pub fn addr(&self) -> SocketAddr {
        match &self.transport {
            Transport::Tcp(a) => *a,
            Transport::Local(_) => panic!("a local app has no address"),
        }
    }

    /// A raw transport to the server.
    pub async fn io(&self) -> Box<dyn Io> {
        match &self.transport {
            Transport::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                Box::new(s)
            }
            Transport::Local(tx) => {
                let (client, server) = tokio::io::duplex(256 * 1024);
                tx.send(server).await.unwrap();
                Box::new(client)
            }
        }
    }

    /// A WebSocket client on `/ws` that has not said hello.
    pub async fn connect(&self) -> Client {
        let io = self.io().await;
        let (ws, resp) = tokio_tungstenite::client_async("ws://kefu.test/ws", io)
            .await
            .expect("websocket handshake");
        assert_eq!(resp.status(), 101);
        let wait = match self.transport {
            Transport::Tcp(_) => WAIT,
            Transport::Local(_) => WAIT_VIRTUAL,
        };
        Client {
            ws,
            wait,
            colleagues: false,
        }
    }

    /// A buyer of shop s1 after hello; returns the client, the welcome and
    /// the greeting.
    pub async fn buyer(&self, buyer: &str) -> (Client, Value, Value) {
        self.buyer_of("s1", buyer).await
    }

    pub async fn buyer_of(&self, shop: &str, buyer: &str) -> (Client, Value, Value) {
        let mut c = self.connect().await;
        c.send(json!({"type":"hello","role":"buyer","shop":shop,"buyer":buyer}))
            .await;
        let welcome = c.recv_type("welcome").await;
        let greeting = c.recv_type("reply").await;
        (c, welcome, greeting)
    }

    /// Buyers b0..b`n` of shop s1 after hello, each conversation seen
    /// assigned to `agent` (the only agent online) before the next buyer.
    pub async fn buyers_assigned(&self, agent: &mut Client, n: usize) -> Vec<Client> {
        let mut buyers = Vec::with_capacity(n);
        for i in 0..n {
            let (b, _, _) = self.buyer(&format!("b{i}")).await;
            agent.recv_type("conversation_assigned").await;
            buyers.push(b);
        }
        buyers
    }

    /// Agent `agent` of shop s1 (token t<N> for a<N>) after hello.
    pub async fn agent(&self, agent: &str) -> (Client, Value) {
        let token = format!("t{}", &agent[1..]);
        let mut c = self.connect().await;
        c.send(json!({"type":"hello","role":"agent","shop":"s1","agent":agent,"token":token}))
            .await;
        let welcome = c.recv_type("welcome").await;
        (c, welcome)
    }

    /// Every event recorded so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Orders shutdown and waits for the server to return.
    pub async fn stop(self) {
        self.app.shutdown();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

pub struct Client {
    pub ws: WebSocketStream<Box<dyn Io>>,
    wait: Duration,
    /// Whether `colleague` frames (an agent of the shop came or went) are
    /// read: most tests connect agents one after the other and would each
    /// have to step over them, so they are skipped unless asked for.
    colleagues: bool,
}

/// A `colleague` frame (serialised by the server with `type` first).
fn is_colleague(m: &Message) -> bool {
    matches!(m, Message::Text(t) if t.as_str().starts_with(r#"{"type":"colleague""#))
}

impl Client {
    /// Reads `colleague` frames from now on instead of skipping them.
    pub fn keep_colleague_frames(&mut self) {
        self.colleagues = true;
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next data or close frame (pings and pongs skipped), or `None`
    /// when the stream ends; panics after [`WAIT`] ([`WAIT_VIRTUAL`]).
    pub async fn next_frame(&mut self) -> Option<Message> {
        let next = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(m)) if !self.colleagues && is_colleague(&m) => continue,
                    Some(Ok(m)) => return Some(m),
                    Some(Err(_)) | None => return None,
                }
            }
        };
        tokio::time::timeout(self.wait, next)
            .await
            .expect("no frame in time")
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("server sends JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be of `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "expected a `{ty}` frame, got {v}");
        v
    }

    /// Frames until one of `ty` (others skipped), for tests that do not care
    /// about everything in between.
    pub async fn recv_until(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// The next frame must be an error with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv_type("error").await;
        assert_eq!(v["code"], code, "{v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error frames explain themselves: {v}"
        );
        v
    }

    /// Reads to the close frame (text frames before it are returned too).
    pub async fn expect_close(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut before = Vec::new();
        loop {
            match self.next_frame().await {
                Some(Message::Close(frame)) => return (before, frame),
                Some(Message::Text(t)) => before.push(serde_json::from_str(t.as_str()).unwrap()),
                Some(other) => panic!("unexpected frame {other:?}"),
                None => return (before, None),
            }
        }
    }

    /// No text frame arrives within `d` (virtual time in paused tests).
    pub async fn expect_silence(&mut self, d: Duration) {
        let r = tokio::time::timeout(d, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(m)) if !self.colleagues && is_colleague(&m) => continue,
                    other => return other,
                }
            }
        })
        .await;
        if let Ok(frame) = r {
            panic!("expected silence, got {frame:?}");
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read the server's close reply so the socket shuts down cleanly.
        let wait = self.wait;
        let _ = tokio::time::timeout(wait, async { while self.ws.next().await.is_some() {} }).await;
    }
}

pub fn close_code(frame: &Option<CloseFrame>) -> Option<CloseCode> {
    frame.as_ref().map(|f| f.code)
}

/// Writes `pages` pages of bytes that are no SQLite page over `path` from
/// page `at` on (0 is the header): a damaged event log.
pub fn garble(path: &Path, at: u64, pages: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at * 4096)).unwrap();
    let junk: Vec<u8> = (0..pages * 4096)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    f.write_all(&junk).unwrap();
}

/// An event log in `dir` whose queue holds 8 events, each committed on its
/// own: small enough for a test to fill while another connection holds the
/// write lock and the writer waits for it.
pub fn small_log(dir: &Path) -> Store {
    let opts = StoreOptions {
        queue_capacity: 8,
        commit_batch: 1,
        commit_window: Duration::from_millis(1),
        ..StoreOptions::default()
    };
    Store::open_with(dir, opts).unwrap()
}
