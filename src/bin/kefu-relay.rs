//! `kefu-relay`: the bare WebSocket relay kefu's throughput is compared with.
//!
//! It is the transport's limit: the same tokio runtime, the same
//! tokio-tungstenite settings (TCP_NODELAY, the same read/write buffer and
//! frame sizes, one task per connection reading frames and writing its
//! bounded outbound queue in batches) and just enough of kefu's protocol
//! for `kefu-load` to drive it:
//!
//! - buyer `hello` → `welcome` with a conversation id and one bot `reply`;
//! - agent `hello` (token checked) → `welcome`;
//! - buyer `message` → `buyer_message` to the agent the conversation was
//!   paired with (fewest conversations first, kept for the conversation);
//! - agent `reply` → `reply` from the agent to the buyer.
//!
//! There is no matching, no clock, no event log and no suggestion: whatever
//! kefu costs above this binary is kefu's own work. Loopback only by default.
//!
//! ```text
//! kefu-relay --listen 127.0.0.1:9001 --agent-token s1:a1:tok-1 --agent-token s1:a2:tok-2
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The allocator `kefu serve` uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outbound frames queued per connection before the reader is called slow
/// and dropped (kefu's bound, so both drop slow readers alike).
const OUTBOUND_QUEUE: usize = 256;
/// Largest frame accepted (the protocol's 64 KiB).
const MAX_FRAME: usize = 64 * 1024;
/// Read buffer per connection: small, as kefu's, so idle sockets stay cheap.
const READ_BUFFER: usize = 4 * 1024;
/// Most frames written per flush (kefu's batch).
const BATCH: usize = 64;
/// The WebSocket upgrade must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "kefu-relay",
    about = "Bare WebSocket relay speaking kefu's core protocol: the throughput limit kefu is measured against"
)]
struct Args {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// SHOP:AGENT:TOKEN, repeatable, as for `kefu serve`.
    #[arg(long = "agent-token", value_name = "SHOP:AGENT:TOKEN")]
    agent_tokens: Vec<String>,
}

/// What a client may send (the subset of kefu's protocol the relay speaks).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Incoming {
    Hello {
        role: String,
        shop: String,
        buyer: Option<String>,
        agent: Option<String>,
        token: Option<String>,
    },
    Message {
        text: String,
    },
    Reply {
        conversation: String,
        text: String,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    Welcome {
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<&'a str>,
    },
    Reply {
        from: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<&'a str>,
        text: &'a str,
        at: u64,
    },
    BuyerMessage {
        conversation: &'a str,
        buyer: &'a str,
        text: &'a str,
        at: u64,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
}

fn frame(out: &Outgoing<'_>) -> Utf8Bytes {
    serde_json::to_string(out)
        .expect("plain structs serialise")
        .into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Outbox = mpsc::Sender<Utf8Bytes>;

struct AgentSlot {
    id: Arc<str>,
    conn: u64,
    tx: Outbox,
    open: usize,
}

struct Conversation {
    buyer_tx: Outbox,
}

#[derive(Default)]
struct State {
    tokens: HashMap<(String, String), String>,
    shops: Mutex<HashMap<String, Vec<AgentSlot>>>,
    conversations: Mutex<HashMap<Arc<str>, Conversation>>,
    next_id: AtomicU64,
}

impl State {
    /// Pairs a conversation with the shop's agent that has the fewest.
    fn pair(&self, shop: &str) -> Option<(Arc<str>, Outbox)> {
        let mut shops = self.shops.lock().unwrap();
        let slot = shops.get_mut(shop)?.iter_mut().min_by_key(|a| a.open)?;
        slot.open += 1;
        Some((slot.id.clone(), slot.tx.clone()))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // No transparent huge pages, as `kefu serve` (see `no_transparent_huge_pages`
    // in src/cmd/serve.rs): the same memory settings on both sides.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let mut state = State::default();
    for spec in &args.agent_tokens {
        let mut parts = spec.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(shop), Some(agent), Some(token)) if !shop.is_empty() && !agent.is_empty() => {
                state
                    .tokens
                    .insert((shop.to_string(), agent.to_string()), token.to_string());
            }
            _ => anyhow::bail!("--agent-token {spec:?}: expected SHOP:AGENT:TOKEN"),
        }
    }
    let state = Arc::new(state);
    // The same runtime kefu serve builds: the multi-threaded scheduler with
    // one worker per available core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("kefu-relay listening on ws://{}/ws", listener.local_addr()?);
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let state = state.clone();
                        tokio::spawn(async move {
                            if let Err(e) = connection(stream, state).await {
                                log_connection_error(&e);
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("kefu-relay: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        Ok(())
    })
}

fn log_connection_error(e: &anyhow::Error) {
    if std::env::var_os("KEFU_RELAY_DEBUG").is_some() {
        eprintln!("kefu-relay: connection: {e:#}");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // As kefu serve: a batch reaches the socket in one write at its flush.
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(64 * 1024 + 4 * MAX_FRAME)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

async fn connection(stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == "/ws" {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("not found: the WebSocket is at /ws".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    };
    let mut ws = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(ws_config())),
    )
    .await
    .context("handshake timed out")??;

    // One task per connection, as kefu: it reads frames and writes its own
    // bounded queue, which other connections fill.
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(OUTBOUND_QUEUE);
    let mut role = Role::Fresh;
    let result = loop {
        tokio::select! {
            biased;
            Some(first) = rx.recv() => {
                let r = async {
                    ws.feed(Message::Text(first)).await?;
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(frame) => ws.feed(Message::Text(frame)).await?,
                            Err(_) => break,
                        }
                    }
                    ws.flush().await
                }
                .await;
                if let Err(e) = r {
                    break Err(e.into());
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if handle(&state, &mut role, &tx, &text) == Flow::Close {
                        // Say why before closing.
                        while let Ok(frame) = rx.try_recv() {
                            let _ = ws.feed(Message::Text(frame)).await;
                        }
                        let _ = ws.close(None).await;
                        break Ok(());
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    offer(&tx, error_frame("binary", "frames must be JSON text"));
                }
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e.into()),
            },
        }
    };
    leave(&state, role);
    result
}

/// Who the connection is, once it said hello.
enum Role {
    Fresh,
    Buyer {
        conversation: Arc<str>,
        shop: String,
        buyer: Arc<str>,
        /// The paired agent's name and queue, cached: the message path
        /// takes no lock.
        paired: Option<(Arc<str>, Outbox)>,
    },
    Agent {
        shop: String,
        conn: u64,
        agent: Arc<str>,
    },
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Close,
}

fn error_frame(code: &str, message: &str) -> Utf8Bytes {
    frame(&Outgoing::Error { code, message })
}

/// Queues `frame` for a peer; a peer whose queue is full is a slow reader
/// and misses it.
fn offer(tx: &Outbox, frame: Utf8Bytes) -> bool {
    tx.try_send(frame).is_ok()
}

fn handle(state: &State, role: &mut Role, tx: &Outbox, text: &str) -> Flow {
    let msg = match serde_json::from_str::<Incoming>(text) {
        Ok(m) => m,
        Err(_) => {
            offer(tx, error_frame("bad_json", "frame is not a known message"));
            return Flow::Continue;
        }
    };
    match (role, msg) {
        (
            role @ Role::Fresh,
            Incoming::Hello {
                role: who,
                shop,
                buyer,
                agent,
                token,
            },
        ) => match (who.as_str(), buyer, agent) {
            ("buyer", Some(buyer), _) => {
                let id = state.next_id.fetch_add(1, Ordering::Relaxed);
                let conversation: Arc<str> = format!("c{id}").into();
                let paired = state.pair(&shop);
                state.conversations.lock().unwrap().insert(
                    conversation.clone(),
                    Conversation {
                        buyer_tx: tx.clone(),
                    },
                );
                offer(
                    tx,
                    frame(&Outgoing::Welcome {
                        conversation: Some(&conversation),
                        agent: None,
                    }),
                );
                offer(
                    tx,
                    frame(&Outgoing::Reply {
                        from: "bot",
                        agent: None,
                        text: "亲，您好，欢迎光临本店，请问有什么可以帮您？",
                        at: now_ms(),
                    }),
                );
                *role = Role::Buyer {
                    conversation,
                    shop,
                    buyer: buyer.into(),
                    paired,
                };
                Flow::Continue
            }
            ("agent", _, Some(agent)) => {
                let known = state.tokens.get(&(shop.clone(), agent.clone()));
                if known.is_none() || known != token.as_ref() {
                    offer(tx, error_frame("unauthorized", "wrong or missing token"));
                    return Flow::Close;
                }
                let conn = state.next_id.fetch_add(1, Ordering::Relaxed);
                let agent: Arc<str> = agent.into();
                offer(
                    tx,
                    frame(&Outgoing::Welcome {
                        conversation: None,
                        agent: Some(&agent),
                    }),
                );
                state
                    .shops
                    .lock()
                    .unwrap()
                    .entry(shop.clone())
                    .or_default()
                    .push(AgentSlot {
                        id: agent.clone(),
                        conn,
                        tx: tx.clone(),
                        open: 0,
                    });
                *role = Role::Agent { shop, conn, agent };
                Flow::Continue
            }
            _ => {
                offer(
                    tx,
                    error_frame("bad_hello", "hello needs role buyer+buyer or agent+agent"),
                );
                Flow::Continue
            }
        },
        (Role::Fresh, _) => {
            offer(tx, error_frame("hello_first", "send hello first"));
            Flow::Continue
        }
        (
            Role::Buyer {
                conversation,
                shop,
                buyer,
                paired,
            },
            Incoming::Message { text },
        ) => {
            let out = frame(&Outgoing::BuyerMessage {
                conversation,
                buyer,
                text: &text,
                at: now_ms(),
            });
            let delivered = paired.as_ref().is_some_and(|(_, t)| offer(t, out.clone()));
            if !delivered {
                // Agent gone, none yet, or its queue full: pair again, once.
                *paired = state.pair(shop);
                if !paired.as_ref().is_some_and(|(_, t)| offer(t, out)) {
                    offer(
                        tx,
                        error_frame("no_agent", "no agent could take the message"),
                    );
                }
            }
            Flow::Continue
        }
        (Role::Agent { agent, .. }, Incoming::Reply { conversation, text }) => {
            let buyer_tx = {
                let convs = state.conversations.lock().unwrap();
                convs.get(conversation.as_str()).map(|c| c.buyer_tx.clone())
            };
            match buyer_tx {
                Some(buyer_tx) => {
                    offer(
                        &buyer_tx,
                        frame(&Outgoing::Reply {
                            from: "agent",
                            agent: Some(agent),
                            text: &text,
                            at: now_ms(),
                        }),
                    );
                }
                None => {
                    offer(
                        tx,
                        error_frame("unknown_conversation", "no such conversation"),
                    );
                }
            }
            Flow::Continue
        }
        (Role::Buyer { .. }, _) => {
            offer(tx, error_frame("unexpected", "buyers send message"));
            Flow::Continue
        }
        (Role::Agent { .. }, _) => {
            offer(tx, error_frame("unexpected", "agents send reply"));
            Flow::Continue
        }
    }
}

/// Forgets a connection that ended.
fn leave(state: &State, role: Role) {
    match role {
        Role::Fresh => {}
        Role::Buyer {
            conversation,
            shop,
            paired,
            ..
        } => {
            state.conversations.lock().unwrap().remove(&conversation);
            if let Some((agent, _)) = paired {
                let mut shops = state.shops.lock().unwrap();
                if let Some(slot) = shops
                    .get_mut(&shop)
                    .and_then(|v| v.iter_mut().find(|a| a.id == agent))
                {
                    slot.open = slot.open.saturating_sub(1);
                }
            }
        }
        Role::Agent { shop, conn, .. } => {
            let mut shops = state.shops.lock().unwrap();
            if let Some(agents) = shops.get_mut(&shop) {
                agents.retain(|a| a.conn != conn);
            }
        }
    }
}
