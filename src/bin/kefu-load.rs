//! `kefu-load`: load generator for `kefu serve` and for `kefu-relay`.
//!
//! N buyers and M agents connect over loopback and speak kefu's protocol.
//! Buyer messages follow an **open-loop** schedule: message `i` is due at
//! `start + i/rate`, whatever the server is doing, so a stalled server
//! cannot slow the generator down and hide its own stall (coordinated
//! omission). Each message carries a marker `#k<buyer>.<seq>.<due>.<sent>`
//! (nanoseconds on the generator's clock), and the agent that receives the
//! `buyer_message` computes two latencies:
//!
//! - from the **actual send** (the frame handed to the socket): the service
//!   time plus the transport, the figure the targets speak of;
//! - from the **due time** on the schedule: what a buyer would see, including
//!   any backlog when the server (or the generator) falls behind. It also
//!   includes the generator's own timer slack and wake-up (a p50 of 50-70
//!   µs between due and send on a 2-core machine), so it is an upper bound.
//!
//! The schedule runs on a plain thread that writes each message to its
//! buyer's socket itself. A socket the server stopped reading until it is
//! full (megabytes on loopback, thousands of messages per buyer) would hold
//! up the whole schedule, not just that buyer; the due-time latency counts
//! such a wait, so nothing is hidden, and the runs here never come near it.
//!
//! Other modes:
//!
//! - `--max`: a closed loop instead of the schedule (a fixed number of
//!   messages in flight; each delivery makes the next buyer in turn send
//!   one), to find the maximum throughput;
//! - `--idle-connections N`: N greeted buyers from 127.0.0.1..K (client
//!   sockets bound before connecting, so ephemeral ports do not run out),
//!   held for `--hold` seconds while the server's memory is sampled;
//! - `--clocks N`: N buyers each connect, send one message and leave, so N
//!   response clocks run at once on the server; agents never answer and
//!   time every nudge and breach.
//!
//! With `--server-pid` the server's RSS and CPU time are read from `/proc`,
//! and the machine's total from `/proc/stat`, so each run says how much CPU
//! other processes took while it measured.
//!
//! Agents are `a1..aM` with token `<token-prefix><i>`, so the server is
//! started with `--agent-token SHOP:a<i>:<token-prefix><i>` for each agent.
//!
//! The human summary goes to stderr; one JSON line for scripts to stdout.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The allocator `kefu serve` uses (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Ws = WebSocketStream<TcpStream>;
type BuyerSink = futures_util::stream::SplitSink<Ws, Message>;
type BuyerStream = futures_util::stream::SplitStream<Ws>;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Target {
    /// `kefu serve`: buyer messages come with suggestions.
    Kefu,
    /// `kefu-relay`: the bare relay.
    Relay,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Kefu => "kefu",
            Target::Relay => "relay",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kefu-load",
    // A later flag wins, so scripts can append to common flags.
    args_override_self = true,
    about = "Load generator for kefu serve and kefu-relay (loopback): latency, throughput, errors, memory per idle connection"
)]
struct Args {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Which server is under test (labels the results).
    #[arg(long, value_enum, default_value_t = Target::Kefu)]
    mode: Target,
    /// Buyer connections.
    #[arg(long, default_value_t = 200)]
    buyers: usize,
    /// Agent connections (a1..aM).
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Shop every buyer and agent belongs to.
    #[arg(long, default_value = "s1")]
    shop: String,
    /// Agent aI's token is this prefix followed by I.
    #[arg(long, default_value = "tok-")]
    token_prefix: String,
    /// AGENT:TOKEN, repeatable: overrides the token of that agent.
    #[arg(long = "agent-token", value_name = "AGENT:TOKEN")]
    agent_tokens: Vec<String>,
    /// Buyer messages per second across all buyers (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Closed loop instead: --inflight messages are kept in flight; each
    /// delivery to an agent makes the next buyer (round robin) send one.
    /// Measures the maximum throughput.
    #[arg(long)]
    max: bool,
    /// Messages in flight in --max mode. Keep it below agents x the server's
    /// outbound queue (1,024 by default), or agents get dropped as slow readers.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Seconds of sending (the first --warmup of them are not measured).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start whose messages are sent but not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait after sending for the last deliveries.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Agents answer each buyer message after this delay (0: at once).
    #[arg(long, default_value_t = 0)]
    reply_delay_ms: u64,
    /// Buyer texts, one per line (default: a built-in hand-written list).
    #[arg(long)]
    messages: Option<PathBuf>,
    /// Open this many idle (greeted) buyer connections and hold them instead
    /// of sending messages.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Clock mode: this many buyers each connect, send one message and
    /// leave, so as many response clocks run at once on the server; agents
    /// never answer and measure how late each nudge and breach arrives.
    #[arg(long)]
    clocks: Option<usize>,
    /// The server's --nudge-secs (clock mode).
    #[arg(long, default_value_t = 20.0)]
    nudge_secs: f64,
    /// The server's --target-secs (clock mode).
    #[arg(long, default_value_t = 30.0)]
    target_secs: f64,
    /// Seconds to hold idle connections.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Seconds between memory samples while holding.
    #[arg(long, default_value_t = 5.0)]
    sample_secs: f64,
    /// Spread client sockets over 127.0.0.1..127.0.0.K (loopback targets).
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// PID of the server: its RSS and CPU time are sampled from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of the generator's runtime (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Buyer ids are <prefix><i>; default unique per run, so runs against
    /// one server never claim each other's buyers.
    #[arg(long)]
    buyer_prefix: Option<String>,
    /// Write every measured buyer message to FILE as `sent_us,latency_us`,
    /// the send time on CLOCK_MONOTONIC (the clock `perf record -k mono`
    /// stamps events with), so latency spikes can be lined up with what the
    /// machine did at that moment (`perf sched timehist`).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
}

/// Hand-written buyer messages across the three stages (售前, 售中, 售后).
const BUILTIN_MESSAGES: &[&str] = &[
    "在吗？",
    "你好，请问这款还有货吗",
    "这个颜色有没有现货，今天能发吗",
    "身高165体重110斤穿什么码合适",
    "请问是正品吗，有没有防伪码",
    "两件一起买能便宜一点吗",
    "店铺有满减活动吗，优惠券在哪里领",
    "这个材质是纯棉的吗？会不会起球",
    "可以开发票吗，要专票",
    "支持七天无理由退换吗",
    "这个尺寸是多少，有详细的尺码表吗",
    "手机充电器适配苹果15吗",
    "下单了什么时候发货呀",
    "我昨天拍的怎么还没发货",
    "能帮我改一下收货地址吗，写错了",
    "快递发的哪家，能发顺丰吗",
    "物流三天没动了，帮我查一下",
    "显示已签收但是我没收到",
    "能不能帮我备注一下送货上门",
    "订单拍错颜色了，还没发货能换吗",
    "我想退货，怎么操作",
    "收到的衣服有线头，能换一件吗",
    "鞋子偏小，可以换大一码吗",
    "退款申请了三天了还没处理",
    "东西坏了，屏幕有划痕",
    "发错货了，我要的是黑色的",
    "少发了一件，只收到一个",
    "退货运费谁出？有运费险吗",
    "保修期多久，坏了去哪里修",
    "安装师傅什么时候上门",
    "亲，赠品没有收到哦",
    "价格怎么降了，能退差价吗",
    "我是老客户了，有没有会员价",
    "预售的什么时候能发啊，等好久了",
    "这个能用花呗分期吗",
    "包装破了，里面的东西没事吧",
    "好评返现还有吗",
    "客服怎么不回消息",
    "谢谢，收到了很满意",
    "这个怎么用，说明书看不懂",
];

/// Agent answers (polite shop register).
const AGENT_REPLIES: &[&str] = &[
    "亲，您好，这边已经帮您查看了，请您稍等一下哦",
    "亲，您的订单已经在加急处理了，今天会为您发出的呢",
    "非常抱歉给您带来不便，这边马上为您登记处理，请您放心",
    "亲，可以的哦，您直接申请，我们收到后第一时间为您处理",
];

/// One message to send: who, which sequence number, and when it was due.
#[derive(Clone, Copy)]
struct Cmd {
    seq: u64,
    /// Due time in ns since the generator's epoch; `None`: now.
    due_ns: Option<u64>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    /// Deliveries whose due time lies in the measured window.
    delivered_window: AtomicU64,
    sent_window: AtomicU64,
    /// `buyer_message` frames whose text had no marker.
    unparsed: AtomicU64,
    agent_replies: AtomicU64,
    bot_replies: AtomicU64,
    error_frames: AtomicU64,
    disconnects: AtomicU64,
    connect_failures: AtomicU64,
    /// Due messages whose buyer was gone.
    unsent: AtomicU64,
}

struct Shared {
    epoch: Instant,
    /// `epoch` on CLOCK_MONOTONIC, ns (for `--trace`).
    epoch_mono_ns: u64,
    /// `--trace`: agents keep (sent, latency) of every measured message.
    trace: bool,
    c: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Set when the measured part ends: closes are expected from now on.
    stopping: AtomicBool,
    record_from_ns: AtomicU64,
    record_until_ns: AtomicU64,
    closed_loop: bool,
    /// Clock mode: (nudge, target) in ns; agents do not answer.
    clocks: Option<(u64, u64)>,
    nudges: AtomicU64,
    breaches: AtomicU64,
    next_seq: AtomicU64,
    next_buyer: AtomicU64,
    buyers: OnceLock<Vec<mpsc::UnboundedSender<Cmd>>>,
    texts: Vec<String>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn error(&self, what: &str) {
        self.c.error_frames.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_default() += 1;
    }

    /// Closed loop: the next buyer in turn sends a message now.
    fn kick(&self) {
        let Some(buyers) = self.buyers.get() else {
            return;
        };
        let next = self.next_buyer.fetch_add(1, Ordering::Relaxed) as usize % buyers.len();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if buyers[next].send(Cmd { seq, due_ns: None }).is_err() {
            self.c.unsent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one buyer send that went out (`ok`) or failed; false when the
    /// buyer's connection is gone.
    fn count_send(&self, ok: bool, due_ns: u64) -> bool {
        if !ok {
            if !self.stopping.load(Ordering::Relaxed) {
                self.c.disconnects.fetch_add(1, Ordering::Relaxed);
                self.error("buyer_send_failed");
            }
            return false;
        }
        self.c.sent.fetch_add(1, Ordering::Relaxed);
        if self.in_window(due_ns) {
            self.c.sent_window.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn in_window(&self, due_ns: u64) -> bool {
        due_ns >= self.record_from_ns.load(Ordering::Relaxed)
            && due_ns < self.record_until_ns.load(Ordering::Relaxed)
    }
}

/// The fields of a server frame the generator looks at.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    conversation: Option<String>,
    text: Option<String>,
    from: Option<String>,
    code: Option<String>,
    /// Unix ms; on a nudge or breach, when the server had it due.
    at: Option<i64>,
}

struct AgentOutcome {
    from_send: Histogram<u64>,
    /// `--trace`: (sent, latency) in ns since the epoch, per message.
    samples: Vec<(u64, u64)>,
    from_due: Histogram<u64>,
    /// Clock mode: how late nudges and breaches arrived, counted from the
    /// buyer's send (upper bound) and from the `buyer_message` arrival at
    /// the agent (lower bound): the server started the round in between.
    nudge_late: Histogram<u64>,
    breach_late: Histogram<u64>,
    nudge_late_lo: Histogram<u64>,
    breach_late_lo: Histogram<u64>,
    /// From the alarm's own `at` (the server's due time, whole ms): at most
    /// 1 ms too high, as `at` is truncated to the millisecond.
    nudge_late_at: Histogram<u64>,
    breach_late_at: Histogram<u64>,
    types: HashMap<String, u64>,
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static bounds are valid")
}

/// Server's resident memory (KiB) and CPU time (clock ticks) from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    rss_kib: u64,
    cpu_ticks: u64,
}

/// USER_HZ: the unit of /proc/PID/stat times; 100 on every Linux ABI we run.
const TICKS_PER_SEC: f64 = 100.0;

fn proc_sample(pid: &str) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib,
        cpu_ticks: utime + stime,
    })
}

/// CPU time of the whole machine that was busy (not idle or iowait), in
/// clock ticks, from /proc/stat: with the server's and the generator's own
/// share subtracted it says how much other processes disturbed a run.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

struct Target0 {
    addr: SocketAddr,
    url: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target0> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url {url:?}: only ws:// URLs (loopback) are supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = hostport.parse().with_context(|| {
        format!("--url {url:?}: host must be an IP:PORT such as 127.0.0.1:8080")
    })?;
    Ok(Target0 {
        addr,
        url: url.to_string(),
    })
}

fn client_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn connect(
    target: &Target0,
    source: Option<Ipv4Addr>,
    read_buffer: usize,
) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .with_context(|| format!("binding source address {ip}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        target.url.as_str(),
        stream,
        Some(client_config(read_buffer)),
    )
    .await
    .context("WebSocket handshake")?;
    Ok(ws)
}

/// Sends `hello` and waits for `welcome`; returns the conversation id (buyers).
async fn hello(ws: &mut Ws, hello: serde_json::Value) -> anyhow::Result<Option<String>> {
    ws.send(Message::text(hello.to_string())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no welcome within 15 s")?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let f: Frame = serde_json::from_str(&t).context("welcome is not JSON")?;
                match f.kind.as_str() {
                    "welcome" => return Ok(f.conversation),
                    "error" => bail!("hello refused: {}", t.as_str()),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(c))) => bail!("closed before welcome: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before welcome"),
        }
    }
}

fn source_ip(i: usize, count: u8, target: &Target0) -> Option<Ipv4Addr> {
    if count <= 1 || !target.addr.ip().is_loopback() {
        return None;
    }
    Some(Ipv4Addr::new(127, 0, 0, 1 + (i % count as usize) as u8))
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Now on CLOCK_MONOTONIC, ns: what `Instant` reads on Linux, and what
/// `perf record -k mono` stamps events with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `--trace`: one `sent_us,latency_us` line per measured message, in
/// order of sending; `sent_us` on CLOCK_MONOTONIC.
fn write_trace(path: &Path, samples: &mut [(u64, u64)], epoch_mono_ns: u64) -> anyhow::Result<()> {
    use std::io::Write;
    samples.sort_unstable();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "sent_us,latency_us")?;
    for &(sent, latency) in samples.iter() {
        writeln!(
            w,
            "{:.3},{:.3}",
            (epoch_mono_ns + sent) as f64 / 1e3,
            latency as f64 / 1e3
        )?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn marker(text: &str) -> Option<(usize, u64, u64, u64)> {
    let at = text.rfind("#k")?;
    let mut it = text[at + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let buyer = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let due = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((buyer, seq, due, sent))
}

/// Writes what `out` holds (cancel-safe: a reply leaves `out` only once
/// the connection took it) and reads the next frame, whichever is ready;
/// a write that waits does not stop the reading. A failed write ends the
/// stream (`None`), as a closed connection does.
///
/// Why: an agent that wrote inline stopped reading while a send waited,
/// which a browser does not do. At a peak beyond the maximum, a server
/// that is behind reads agents' replies late: the agent's send waited, the
/// agent stopped reading, and the server's writes to it stalled in turn
/// until its write timeout dropped the agent. One task, not a writer task
/// of its own: that costs a wake-up per reply, 6 % more of a core for the
/// generator at 22,300 messages a second, which the server's latency paid.
fn agent_io<'a>(
    ws: &'a mut Ws,
    out: &'a mut VecDeque<Message>,
    unflushed: &'a mut bool,
) -> impl std::future::Future<Output = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>> + 'a
{
    std::future::poll_fn(move |cx| {
        use std::task::Poll;
        while !out.is_empty() {
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => break,
            }
            let m = out.pop_front().expect("not empty");
            if ws.start_send_unpin(m).is_err() {
                return Poll::Ready(None);
            }
            *unflushed = true;
        }
        if *unflushed && out.is_empty() {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => *unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        ws.poll_next_unpin(cx)
    })
}

async fn agent_task(
    mut ws: Ws,
    shared: Arc<Shared>,
    reply_delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> AgentOutcome {
    let mut out: VecDeque<Message> = VecDeque::new();
    let mut unflushed = false;
    let mut from_send = new_hist();
    let mut from_due = new_hist();
    let mut samples = Vec::new();
    let mut nudge_late = new_hist();
    let mut breach_late = new_hist();
    let mut nudge_late_lo = new_hist();
    let mut breach_late_lo = new_hist();
    let mut nudge_late_at = new_hist();
    let mut breach_late_at = new_hist();
    // Clock mode: when each conversation's message was sent and arrived.
    let mut opened: HashMap<String, (u64, u64)> = HashMap::new();
    let mut types: HashMap<String, u64> = HashMap::new();
    let mut pending: VecDeque<(tokio::time::Instant, String)> = VecDeque::new();
    let mut replies = 0usize;
    loop {
        let next_due = pending.front().map(|p| p.0);
        tokio::select! {
            msg = agent_io(&mut ws, &mut out, &mut unflushed) => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        if !shared.stopping.load(Ordering::Relaxed) {
                            shared.c.disconnects.fetch_add(1, Ordering::Relaxed);
                            shared.error("agent_disconnected");
                        }
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                let now = shared.now_ns();
                let Ok(f) = serde_json::from_str::<Frame>(&text) else {
                    shared.error("unparsable_frame");
                    continue;
                };
                match f.kind.as_str() {
                    "buyer_message" => {
                        let Some((_buyer, _seq, due, sent)) = f.text.as_deref().and_then(marker) else {
                            shared.c.unparsed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        shared.c.delivered.fetch_add(1, Ordering::Relaxed);
                        if shared.in_window(due) {
                            shared.c.delivered_window.fetch_add(1, Ordering::Relaxed);
                            let _ = from_send.record(now.saturating_sub(sent).max(1));
                            let _ = from_due.record(now.saturating_sub(due).max(1));
                            if shared.trace {
                                samples.push((sent, now.saturating_sub(sent)));
                            }
                        }
                        if shared.closed_loop && !shared.stopping.load(Ordering::Relaxed) {
                            shared.kick();
                        }
                        if shared.clocks.is_some() {
                            if let Some(conv) = f.conversation {
                                opened.insert(conv, (sent, now));
                            }
                            continue;
                        }
                        if let Some(conv) = f.conversation {
                            let reply = json!({
                                "type": "reply",
                                "conversation": conv,
                                "text": AGENT_REPLIES[replies % AGENT_REPLIES.len()],
                                "intent": null,
                            })
                            .to_string();
                            replies += 1;
                            if reply_delay.is_zero() {
                                out.push_back(Message::text(reply));
                            } else {
                                pending.push_back((tokio::time::Instant::now() + reply_delay, reply));
                            }
                        }
                    }
                    kind @ ("nudge" | "breach") if shared.clocks.is_some() => {
                        let (nudge, target) = shared.clocks.unwrap_or_default();
                        let sent = f.conversation.as_ref().and_then(|c| opened.get(c));
                        if let Some(at) = f.at {
                            let late_ns = unix_ns().saturating_sub(at.max(0) as u64 * 1_000_000).max(1);
                            let h = if kind == "nudge" { &mut nudge_late_at } else { &mut breach_late_at };
                            let _ = h.record(late_ns);
                        }
                        match (kind, sent) {
                            ("nudge", Some(&(sent, arrived))) => {
                                shared.nudges.fetch_add(1, Ordering::Relaxed);
                                let _ = nudge_late.record(now.saturating_sub(sent + nudge).max(1));
                                let _ = nudge_late_lo.record(now.saturating_sub(arrived + nudge).max(1));
                            }
                            (_, Some(&(sent, arrived))) => {
                                shared.breaches.fetch_add(1, Ordering::Relaxed);
                                let _ = breach_late.record(now.saturating_sub(sent + target).max(1));
                                let _ = breach_late_lo.record(now.saturating_sub(arrived + target).max(1));
                            }
                            (_, None) => shared.error("alarm_for_unknown_conversation"),
                        }
                    }
                    "error" => shared.error(&format!(
                        "agent_error:{}",
                        f.code.as_deref().unwrap_or("?")
                    )),
                    other => *types.entry(other.to_string()).or_default() += 1,
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)), if next_due.is_some() => {
                let now = tokio::time::Instant::now();
                while pending.front().is_some_and(|p| p.0 <= now) {
                    let (_, reply) = pending.pop_front().unwrap();
                    out.push_back(Message::text(reply));
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Answer what is still pending, so no round is left open on the server,
    // reading (and dropping) what comes meanwhile, as during the run. Writing
    // without reading, after a peak left thousands of replies here and the
    // server's writes to this agent waiting, held both sides' writes until
    // the server dropped the agent (10 s later, as not reading) and logged
    // it. Each reply brings its receipt, so the loop sees its last write
    // through; a few seconds at most.
    out.extend(pending.drain(..).map(|(_, reply)| Message::text(reply)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !out.is_empty() || unflushed {
        match tokio::time::timeout_at(deadline, agent_io(&mut ws, &mut out, &mut unflushed)).await {
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    // Bounded too: replies left at the deadline may hold the server's
    // writes, and with them its reply to the close.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    AgentOutcome {
        from_send,
        samples,
        from_due,
        nudge_late,
        breach_late,
        nudge_late_lo,
        breach_late_lo,
        nudge_late_at,
        breach_late_at,
        types,
    }
}

async fn buyer_task(
    mut ws: Ws,
    index: usize,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let sent = shared.now_ns();
                let frame = buyer_frame(&shared, index, &cmd, sent);
                let ok = ws.send(frame).await.is_ok();
                if !shared.count_send(ok, cmd.due_ns.unwrap_or(sent)) {
                    break;
                }
            }
            msg = ws.next() => if !on_buyer_frame(&shared, msg) { break },
            _ = shutdown.changed() => break,
        }
    }
    let _ = ws.close(None).await;
}

/// An open-loop buyer's connection: the scheduler thread holds its sending
/// half and writes itself; this task only reads.
async fn buyer_reader(
    mut stream: BuyerStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            msg = stream.next() => if !on_buyer_frame(&shared, msg) { break },
            _ = shutdown.changed() => break,
        }
    }
}

/// Counts what the server sent a buyer; false when the connection is over.
fn on_buyer_frame(
    shared: &Shared,
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> bool {
    let text = match msg {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
            if !shared.stopping.load(Ordering::Relaxed) {
                shared.c.disconnects.fetch_add(1, Ordering::Relaxed);
                shared.error("buyer_disconnected");
            }
            return false;
        }
        Some(Ok(_)) => return true,
    };
    match serde_json::from_str::<Frame>(&text) {
        Ok(f) if f.kind == "reply" => {
            if f.from.as_deref() == Some("agent") {
                shared.c.agent_replies.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.c.bot_replies.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(f) if f.kind == "error" => {
            shared.error(&format!("buyer_error:{}", f.code.as_deref().unwrap_or("?")));
        }
        Ok(_) => {}
        Err(_) => shared.error("unparsable_frame"),
    }
    true
}

/// Buyer `index`'s message for `cmd`: a corpus text with the marker the
/// agents read the send and due times back from.
fn buyer_frame(shared: &Shared, index: usize, cmd: &Cmd, sent: u64) -> Message {
    let due = cmd.due_ns.unwrap_or(sent);
    let texts = &shared.texts;
    let body = &texts[(index.wrapping_mul(7919) + cmd.seq as usize) % texts.len()];
    let text = format!("{body} #k{index}.{}.{due}.{sent}", cmd.seq);
    Message::text(json!({"type": "message", "text": text}).to_string())
}

fn agent_token(args: &Args, i: usize) -> String {
    let name = format!("a{i}");
    for spec in &args.agent_tokens {
        if let Some((agent, token)) = spec.split_once(':') {
            if agent == name {
                return token.to_string();
            }
        }
    }
    format!("{}{i}", args.token_prefix)
}

fn load_texts(args: &Args) -> anyhow::Result<Vec<String>> {
    let Some(path) = &args.messages else {
        return Ok(BUILTIN_MESSAGES.iter().map(|s| s.to_string()).collect());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let texts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().take(400).collect())
        .collect();
    if texts.is_empty() {
        bail!("{}: no messages", path.display());
    }
    Ok(texts)
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn lat_json(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "n": h.len(),
        "p50_us": pct(h, 0.50),
        "p99_us": pct(h, 0.99),
        "p999_us": pct(h, 0.999),
        "max_us": h.max() as f64 / 1000.0,
        "mean_us": h.mean() / 1000.0,
        // Nagle's delayed-ACK stall is 40 ms: count anything that long.
        "n_ge_40ms": h.count_between(40_000_000, h.max().max(40_000_000)),
    })
}

fn lat_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
        pct(h, 0.50),
        pct(h, 0.99),
        pct(h, 0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // No transparent huge pages, as the servers it measures: a stall in
    // the generator's own memory would be charged to the server.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kefu-load: error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = rt.block_on(run(args));
    // Idle sockets may still be closing; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok((human, line)) => {
            eprintln!("{human}");
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kefu-load: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

struct Conns {
    agents: Vec<tokio::task::JoinHandle<AgentOutcome>>,
    buyers: Vec<tokio::task::JoinHandle<()>>,
    buyer_txs: Vec<mpsc::UnboundedSender<Cmd>>,
    /// When the scheduler thread sends (`scheduler_sends`): each buyer's
    /// sending half (`None`: it failed to connect).
    sinks: Vec<Option<BuyerSink>>,
}

async fn open_connections(
    args: &Args,
    target: &Arc<Target0>,
    shared: &Arc<Shared>,
    (agent_count, buyers): (usize, usize),
    shutdown: &watch::Receiver<bool>,
    scheduler_sends: bool,
) -> anyhow::Result<Conns> {
    let mut agents = Vec::new();
    for i in 1..=agent_count {
        let mut ws = connect(target, source_ip(i, args.source_ips, target), 64 * 1024)
            .await
            .with_context(|| format!("agent a{i}"))?;
        hello(
            &mut ws,
            json!({"type":"hello","role":"agent","shop":args.shop,"agent":format!("a{i}"),"token":agent_token(args, i)}),
        )
        .await
        .with_context(|| format!("agent a{i}"))?;
        agents.push(tokio::spawn(agent_task(
            ws,
            shared.clone(),
            Duration::from_millis(args.reply_delay_ms),
            shutdown.clone(),
        )));
    }

    let prefix = args.buyer_prefix.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("L{}x{}-b", std::process::id(), secs % 1_000_000)
    });
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut pending = Vec::with_capacity(buyers);
    for i in 0..buyers {
        let gate = gate.clone();
        let target = target.clone();
        let shared = shared.clone();
        let hello_frame =
            json!({"type":"hello","role":"buyer","shop":args.shop,"buyer":format!("{prefix}{i}")});
        let source = source_ip(i, args.source_ips, &target);
        pending.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let result = async {
                let mut ws = connect(&target, source, 4 * 1024).await?;
                hello(&mut ws, hello_frame).await?;
                anyhow::Ok(ws)
            }
            .await;
            match result {
                Ok(ws) => Some(ws),
                Err(e) => {
                    let n = shared.c.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if n < 5 {
                        eprintln!("kefu-load: buyer {i}: {e:#}");
                    }
                    None
                }
            }
        }));
    }
    let mut buyer_tasks = Vec::with_capacity(buyers);
    let mut buyer_txs = Vec::with_capacity(buyers);
    let mut sinks = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut held = None;
        match p.await {
            Ok(Some(ws)) if scheduler_sends => {
                let (sink, stream) = ws.split();
                held = Some(sink);
                let task = buyer_reader(stream, shared.clone(), shutdown.clone());
                buyer_tasks.push(tokio::spawn(task));
            }
            Ok(Some(ws)) => {
                let task = buyer_task(ws, i, shared.clone(), rx, shutdown.clone());
                buyer_tasks.push(tokio::spawn(task));
            }
            _ => {}
        }
        // A buyer that failed keeps a closed channel (and no sink): its
        // messages count as unsent.
        buyer_txs.push(tx);
        if scheduler_sends {
            sinks.push(held);
        }
    }
    Ok(Conns {
        agents,
        buyers: buyer_tasks,
        buyer_txs,
        sinks,
    })
}

async fn run(args: Args) -> anyhow::Result<(String, String)> {
    let target = Arc::new(parse_url(&args.url)?);
    let pid = args.server_pid.map(|p| p.to_string());
    let server = |label: &str| -> Option<ProcSample> {
        let s = pid.as_deref().and_then(proc_sample);
        if pid.is_some() && s.is_none() {
            eprintln!("kefu-load: cannot read /proc for the server ({label})");
        }
        s
    };
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        epoch_mono_ns: monotonic_ns(),
        trace: args.trace.is_some(),
        c: Counters::default(),
        errors: Mutex::new(BTreeMap::new()),
        stopping: AtomicBool::new(false),
        record_from_ns: AtomicU64::new(u64::MAX),
        record_until_ns: AtomicU64::new(0),
        closed_loop: args.max,
        clocks: args.clocks.map(|_| {
            (
                (args.nudge_secs * 1e9) as u64,
                (args.target_secs * 1e9) as u64,
            )
        }),
        nudges: AtomicU64::new(0),
        breaches: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
        next_buyer: AtomicU64::new(0),
        buyers: OnceLock::new(),
        texts: load_texts(&args)?,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    if let Some(n) = args.clocks {
        return clocks(
            &args,
            &target,
            &shared,
            n,
            &shutdown_tx,
            &shutdown_rx,
            &server,
        )
        .await;
    }
    if let Some(n) = args.idle_connections {
        return idle(
            &args,
            &target,
            &shared,
            n,
            &shutdown_tx,
            &shutdown_rx,
            &server,
        )
        .await;
    }
    if args.buyers == 0 || args.agents == 0 {
        bail!("--buyers and --agents must be at least 1");
    }
    if !args.max && (args.rate.is_nan() || args.rate <= 0.0) {
        bail!("--rate must be positive (or use --max)");
    }
    if args.warmup >= args.duration {
        bail!("--warmup must be shorter than --duration");
    }

    let setup = Instant::now();
    let mut conns = open_connections(
        &args,
        &target,
        &shared,
        (args.agents, args.buyers),
        &shutdown_rx,
        !args.max,
    )
    .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let connected = conns.buyers.len();
    if connected == 0 {
        bail!("no buyer could connect");
    }
    shared.buyers.set(conns.buyer_txs.clone()).ok();
    // Let greetings and assignment settle before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start_ns = shared.now_ns() + 50_000_000;
    let from_ns = start_ns + (args.warmup * 1e9) as u64;
    let until_ns = start_ns + (args.duration * 1e9) as u64;
    shared.record_from_ns.store(from_ns, Ordering::Relaxed);
    shared.record_until_ns.store(until_ns, Ordering::Relaxed);
    let at = |ns: u64| tokio::time::Instant::from_std(shared.epoch + Duration::from_nanos(ns));

    let scheduler = if args.max {
        tokio::time::sleep_until(at(start_ns)).await;
        for _ in 0..args.inflight.max(1) {
            shared.kick();
        }
        None
    } else {
        // A plain thread: std::thread::sleep has µs resolution where tokio's
        // timer has 1 ms, and a late tick would be charged to the server.
        // It writes each message itself rather than waking the buyer's
        // task: a hand-over through a channel costs the generator a worker
        // wake-up per message (more context switches on the two cores the
        // server under test shares), and the send time is taken just
        // before the write either way.
        let shared = shared.clone();
        let mut sinks = std::mem::take(&mut conns.sinks);
        let rate = args.rate;
        Some(std::thread::spawn(move || {
            let interval = 1e9 / rate;
            let n = sinks.len();
            for i in 0u64.. {
                let due = start_ns + (i as f64 * interval) as u64;
                if due >= until_ns {
                    break;
                }
                let now = shared.now_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                let index = i as usize % n;
                let Some(sink) = &mut sinks[index] else {
                    shared.c.unsent.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let cmd = Cmd {
                    seq: i,
                    due_ns: Some(due),
                };
                let sent = shared.now_ns();
                let frame = buyer_frame(&shared, index, &cmd, sent);
                // The socket stays registered with the runtime's reactor,
                // which wakes this thread when a full socket can take more.
                let ok = futures_executor::block_on(sink.send(frame)).is_ok();
                if !shared.count_send(ok, due) {
                    sinks[index] = None;
                }
            }
            sinks
        }))
    };

    tokio::time::sleep_until(at(from_ns)).await;
    let a_server = server("window start");
    let a_self = proc_sample("self");
    let a_busy = machine_busy_ticks();
    let a_delivered = shared.c.delivered.load(Ordering::Relaxed);
    let a_time = Instant::now();
    tokio::time::sleep_until(at(until_ns)).await;
    let b_server = server("window end");
    let b_self = proc_sample("self");
    let b_busy = machine_busy_ticks();
    let b_delivered = shared.c.delivered.load(Ordering::Relaxed);
    let window_s = a_time.elapsed().as_secs_f64();
    if args.max {
        shared.stopping.store(true, Ordering::Relaxed);
    }
    let mut sinks = Vec::new();
    if let Some(s) = scheduler {
        if let Ok(Ok(back)) = tokio::task::spawn_blocking(move || s.join()).await {
            sinks = back;
        }
    }

    // Drain: wait for the deliveries still in flight.
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < drain_until
        && shared.c.delivered.load(Ordering::Relaxed) < shared.c.sent.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the last agent replies reach their buyers.
    tokio::time::sleep(Duration::from_millis(100 + args.reply_delay_ms)).await;
    shared.stopping.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    // The scheduler's sending halves: close them as the buyer tasks close
    // their own.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for sink in sinks.iter_mut().flatten() {
            let _ = sink.close().await;
        }
    })
    .await;

    let mut from_send = new_hist();
    let mut from_due = new_hist();
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples = Vec::new();
    for a in conns.agents {
        if let Ok(o) = a.await {
            from_send.add(o.from_send).ok();
            samples.extend(o.samples);
            from_due.add(o.from_due).ok();
            for (k, v) in o.types {
                *types.entry(k).or_default() += v;
            }
        }
    }
    for b in conns.buyers {
        let _ = tokio::time::timeout(Duration::from_secs(2), b).await;
    }
    if let Some(path) = &args.trace {
        write_trace(path, &mut samples, shared.epoch_mono_ns)?;
    }

    let c = &shared.c;
    let sent = c.sent.load(Ordering::Relaxed);
    let delivered = c.delivered.load(Ordering::Relaxed);
    let sent_window = c.sent_window.load(Ordering::Relaxed);
    let delivered_window = c.delivered_window.load(Ordering::Relaxed);
    let throughput = (b_delivered - a_delivered) as f64 / window_s;
    let errors = shared.errors.lock().unwrap().clone();
    let missing = sent.saturating_sub(delivered);

    let (server_cpu_us_per_msg, server_cpu_pct, server_rss) = match (a_server, b_server) {
        (Some(a), Some(b)) => {
            let cpu_s = (b.cpu_ticks - a.cpu_ticks) as f64 / TICKS_PER_SEC;
            let msgs = (b_delivered - a_delivered).max(1) as f64;
            (
                Some(cpu_s * 1e6 / msgs),
                Some(100.0 * cpu_s / window_s),
                Some(b.rss_kib),
            )
        }
        _ => (None, None, None),
    };
    let gen_cpu_pct = match (a_self, b_self) {
        (Some(a), Some(b)) => {
            Some(100.0 * (b.cpu_ticks - a.cpu_ticks) as f64 / TICKS_PER_SEC / window_s)
        }
        _ => None,
    };
    // Everything else the machine ran during the window, in % of one core.
    let other_cpu_pct = match (a_busy, b_busy, gen_cpu_pct, server_cpu_pct) {
        (Some(a), Some(b), Some(g), Some(s)) => {
            Some((100.0 * (b - a) as f64 / TICKS_PER_SEC / window_s - g - s).max(0.0))
        }
        _ => None,
    };

    let load = if args.max {
        format!("closed loop (max, {} in flight)", args.inflight)
    } else {
        format!("open loop {} msg/s", args.rate)
    };
    let mut human = format!(
        "kefu-load: target={} {load}, {} buyers ({} connected in {setup_s:.1} s), {} agents, \
         {} s ({} s warm-up), reply delay {} ms, {} texts\n",
        args.mode.as_str(),
        args.buyers,
        connected,
        args.agents,
        args.duration,
        args.warmup,
        args.reply_delay_ms,
        shared.texts.len(),
    );
    human += &format!(
        "  sent {sent}, delivered {delivered}, missing {missing}; measured window: sent {sent_window}, \
         delivered {delivered_window}\n  throughput {throughput:.0} buyer messages/s delivered \
         ({window_s:.1} s window)\n"
    );
    human += &format!(
        "  latency buyer send -> agent buyer_message (µs): {}\n",
        lat_line(&from_send)
    );
    human += &format!(
        "  latency from scheduled time            (µs): {}\n",
        lat_line(&from_due)
    );
    human += &format!(
        "  buyers got {} agent replies, {} bot replies; other agent frames {:?}\n",
        c.agent_replies.load(Ordering::Relaxed),
        c.bot_replies.load(Ordering::Relaxed),
        types
    );
    human += &format!(
        "  errors: {} error frames/events {:?}, {} disconnects, {} connect failures, {} unsent, {} unmarked deliveries\n",
        c.error_frames.load(Ordering::Relaxed),
        errors,
        c.disconnects.load(Ordering::Relaxed),
        c.connect_failures.load(Ordering::Relaxed),
        c.unsent.load(Ordering::Relaxed),
        c.unparsed.load(Ordering::Relaxed),
    );
    if let (Some(cpu), Some(pct), Some(rss)) = (server_cpu_us_per_msg, server_cpu_pct, server_rss) {
        human += &format!(
            "  server: {cpu:.1} µs CPU per buyer message (incl. its reply), {pct:.0}% of one core, RSS {rss} KiB\n"
        );
    }
    if let Some(g) = gen_cpu_pct {
        human += &format!("  generator: {g:.0}% of one core\n");
    }
    if let Some(o) = other_cpu_pct {
        human +=
            &format!("  other processes on the machine: {o:.0}% of one core during the window\n");
    }
    let line = json!({
        "target": args.mode.as_str(),
        "kind": if args.max { "max" } else { "open" },
        "rate_offered": if args.max { None } else { Some(args.rate) },
        "inflight": if args.max { Some(args.inflight) } else { None },
        "buyers": args.buyers,
        "buyers_connected": connected,
        "agents": args.agents,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "reply_delay_ms": args.reply_delay_ms,
        "sent": sent,
        "delivered": delivered,
        "missing": missing,
        "sent_window": sent_window,
        "delivered_window": delivered_window,
        "throughput_mps": throughput,
        "latency_from_send": lat_json(&from_send),
        "latency_from_due": lat_json(&from_due),
        "agent_replies": c.agent_replies.load(Ordering::Relaxed),
        "bot_replies": c.bot_replies.load(Ordering::Relaxed),
        "other_agent_frames": types,
        "error_frames": c.error_frames.load(Ordering::Relaxed),
        "errors": errors,
        "disconnects": c.disconnects.load(Ordering::Relaxed),
        "connect_failures": c.connect_failures.load(Ordering::Relaxed),
        "unsent": c.unsent.load(Ordering::Relaxed),
        "unmarked": c.unparsed.load(Ordering::Relaxed),
        "server_cpu_us_per_msg": server_cpu_us_per_msg,
        "server_cpu_pct": server_cpu_pct,
        "server_rss_kib": server_rss,
        "generator_cpu_pct": gen_cpu_pct,
        "other_cpu_pct": other_cpu_pct,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    Ok((human, line.to_string()))
}

async fn idle(
    args: &Args,
    target: &Arc<Target0>,
    shared: &Arc<Shared>,
    n: usize,
    shutdown_tx: &watch::Sender<bool>,
    shutdown_rx: &watch::Receiver<bool>,
    server: &dyn Fn(&str) -> Option<ProcSample>,
) -> anyhow::Result<(String, String)> {
    // Agents first (if any), then the baseline, then the idle buyers.
    let agents =
        open_connections(args, target, shared, (args.agents, 0), shutdown_rx, false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server("before");

    let setup = Instant::now();
    let conns = open_connections(args, target, shared, (0, n), shutdown_rx, false).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let connected = conns.buyers.len();
    // Let greetings flush and allocator caches settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = server("after opening");

    let mut samples: Vec<u64> = opened.iter().map(|s| s.rss_kib).collect();
    let hold_until = Instant::now() + Duration::from_secs_f64(args.hold);
    while Instant::now() < hold_until {
        let left = hold_until - Instant::now();
        tokio::time::sleep(left.min(Duration::from_secs_f64(args.sample_secs.max(0.1)))).await;
        if let Some(s) = server("hold") {
            samples.push(s.rss_kib);
        }
    }
    let end = server("end of hold");
    let alive = connected as u64 - shared.c.disconnects.load(Ordering::Relaxed);
    shared.stopping.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    for b in conns.buyers {
        let _ = tokio::time::timeout(Duration::from_secs(2), b).await;
    }
    for a in agents.agents {
        let _ = a.await;
    }

    let per_conn = match (before, opened) {
        (Some(b), Some(o)) if connected > 0 => {
            Some((o.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let (rss_min, rss_max) = (samples.iter().min().copied(), samples.iter().max().copied());
    let errors = shared.errors.lock().unwrap().clone();
    let mut human = format!(
        "kefu-load: target={} idle: {n} buyer connections ({connected} open in {setup_s:.1} s, \
         {} failed) from {} source addresses, held {} s; {} still open at the end\n",
        args.mode.as_str(),
        shared.c.connect_failures.load(Ordering::Relaxed),
        args.source_ips,
        args.hold,
        alive,
    );
    if let (Some(b), Some(o), Some(e)) = (before, opened, end) {
        human += &format!(
            "  server RSS: {} KiB before, {} KiB with the connections, {} KiB at the end \
             (min {} / max {} over the hold)\n  => {:.0} bytes per idle connection\n",
            b.rss_kib,
            o.rss_kib,
            e.rss_kib,
            rss_min.unwrap_or(0),
            rss_max.unwrap_or(0),
            per_conn.unwrap_or(0.0)
        );
    }
    human += &format!(
        "  {} greetings/bot replies, errors {:?}\n",
        shared.c.bot_replies.load(Ordering::Relaxed),
        errors
    );
    let line = json!({
        "target": args.mode.as_str(),
        "kind": "idle",
        "connections": n,
        "connected": connected,
        "connect_failures": shared.c.connect_failures.load(Ordering::Relaxed),
        "open_s": setup_s,
        "hold_s": args.hold,
        "alive_at_end": alive,
        "source_ips": args.source_ips,
        "rss_before_kib": before.map(|s| s.rss_kib),
        "rss_open_kib": opened.map(|s| s.rss_kib),
        "rss_end_kib": end.map(|s| s.rss_kib),
        "rss_min_kib": rss_min,
        "rss_max_kib": rss_max,
        "rss_samples_kib": samples,
        "sample_secs": args.sample_secs,
        "bytes_per_conn": per_conn,
        "bot_replies": shared.c.bot_replies.load(Ordering::Relaxed),
        "errors": errors,
    });
    Ok((human, line.to_string()))
}

/// One buyer of the clock mode: hello, one message, goodbye.
async fn one_round(
    target: &Target0,
    source: Option<Ipv4Addr>,
    hello_frame: serde_json::Value,
    index: usize,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut ws = connect(target, source, 4 * 1024).await?;
    hello(&mut ws, hello_frame).await?;
    let sent = shared.now_ns();
    let texts = &shared.texts;
    let body = &texts[index % texts.len()];
    let text = format!("{body} #k{index}.{index}.{sent}.{sent}");
    ws.send(Message::text(
        json!({"type": "message", "text": text}).to_string(),
    ))
    .await?;
    shared.c.sent.fetch_add(1, Ordering::Relaxed);
    // Leave cleanly: close, then read until the server's close arrives.
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

async fn clocks(
    args: &Args,
    target: &Arc<Target0>,
    shared: &Arc<Shared>,
    n: usize,
    shutdown_tx: &watch::Sender<bool>,
    shutdown_rx: &watch::Receiver<bool>,
    server: &dyn Fn(&str) -> Option<ProcSample>,
) -> anyhow::Result<(String, String)> {
    if args.agents == 0 {
        bail!("clock mode needs --agents >= 1 (they receive the nudges)");
    }
    shared.record_from_ns.store(0, Ordering::Relaxed);
    shared.record_until_ns.store(u64::MAX, Ordering::Relaxed);
    let agents =
        open_connections(args, target, shared, (args.agents, 0), shutdown_rx, false).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server("before");
    let prefix = args.buyer_prefix.clone().unwrap_or_else(|| {
        format!(
            "C{}x{}-b",
            std::process::id(),
            shared.epoch.elapsed().as_nanos() % 1_000_000
        )
    });

    // Buyers come and go, connect_concurrency at a time.
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let target = target.clone();
        let shared = shared.clone();
        let source = source_ip(i, args.source_ips, &target);
        let hello_frame =
            json!({"type":"hello","role":"buyer","shop":args.shop,"buyer":format!("{prefix}{i}")});
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = one_round(&target, source, hello_frame, i, &shared).await {
                let k = shared.c.connect_failures.fetch_add(1, Ordering::Relaxed);
                if k < 5 {
                    eprintln!("kefu-load: buyer {i}: {e:#}");
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let open_s = start.elapsed().as_secs_f64();
    // Zero: every round was running at once.
    let nudged_early = shared.nudges.load(Ordering::Relaxed);
    let sent = shared.c.sent.load(Ordering::Relaxed);
    eprintln!(
        "kefu-load: {sent} rounds started in {open_s:.1} s ({nudged_early} nudged already); waiting for the alarms"
    );
    // Peak memory: every round open, none answered.
    let opened = server("rounds open");

    // Wait for every breach (the last alarm of a round), bounded.
    let deadline = Instant::now() + Duration::from_secs_f64(args.target_secs + 10.0);
    while Instant::now() < deadline
        && (shared.breaches.load(Ordering::Relaxed) < sent
            || shared.nudges.load(Ordering::Relaxed) < sent)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = server("end");
    shared.stopping.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    let mut nudge_late = new_hist();
    let mut breach_late = new_hist();
    let mut nudge_late_lo = new_hist();
    let mut breach_late_lo = new_hist();
    let mut nudge_late_at = new_hist();
    let mut breach_late_at = new_hist();
    let mut delivered = new_hist();
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    for a in agents.agents {
        if let Ok(o) = a.await {
            nudge_late.add(o.nudge_late).ok();
            breach_late.add(o.breach_late).ok();
            nudge_late_lo.add(o.nudge_late_lo).ok();
            breach_late_lo.add(o.breach_late_lo).ok();
            nudge_late_at.add(o.nudge_late_at).ok();
            breach_late_at.add(o.breach_late_at).ok();
            delivered.add(o.from_send).ok();
            for (k, v) in o.types {
                *types.entry(k).or_default() += v;
            }
        }
    }
    let nudges = shared.nudges.load(Ordering::Relaxed);
    let breaches = shared.breaches.load(Ordering::Relaxed);
    let errors = shared.errors.lock().unwrap().clone();
    let per_round = match (before, opened) {
        (Some(b), Some(o)) if sent > 0 => {
            Some((o.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / sent as f64)
        }
        _ => None,
    };
    let mut human = format!(
        "kefu-load: target={} clocks: {sent} of {n} rounds started in {open_s:.1} s by buyers who then left \
         ({} failed), {} agents; nudge at {} s, breach at {} s\n",
        args.mode.as_str(),
        shared.c.connect_failures.load(Ordering::Relaxed),
        args.agents,
        args.nudge_secs,
        args.target_secs,
    );
    human += &format!("  nudges {nudges}/{sent}, breaches {breaches}/{sent}; lateness in µs:\n");
    human += &format!(
        "    nudge,  from its own `at`:    {}\n",
        lat_line(&nudge_late_at)
    );
    human += &format!(
        "    breach, from its own `at`:    {}\n",
        lat_line(&breach_late_at)
    );
    human += &format!(
        "    nudge,  from message sent:    {}\n",
        lat_line(&nudge_late)
    );
    human += &format!(
        "    nudge,  from message arrival: {}\n",
        lat_line(&nudge_late_lo)
    );
    human += &format!(
        "    breach, from message sent:    {}\n",
        lat_line(&breach_late)
    );
    human += &format!(
        "    breach, from message arrival: {}\n",
        lat_line(&breach_late_lo)
    );
    human += &format!(
        "  (alarm arrival at the agent - (round start + nudge/target); the round starts between the\n   \
         buyer's send and the buyer_message's arrival, so those two rows bound the truth; `at` is the\n   \
         server's due time in whole ms, so that row is at most 1 ms high; the message itself took: {})\n",
        lat_line(&delivered)
    );
    if let (Some(b), Some(o), Some(e)) = (before, opened, end) {
        human += &format!(
            "  server RSS: {} KiB before, {} KiB with every round open ({:.0} bytes per waiting conversation), {} KiB at the end\n",
            b.rss_kib,
            o.rss_kib,
            per_round.unwrap_or(0.0),
            e.rss_kib
        );
    }
    human += &format!("  other agent frames {types:?}, errors {errors:?}\n");
    let line = json!({
        "target": args.mode.as_str(),
        "kind": "clocks",
        "rounds": n,
        "started": sent,
        "open_s": open_s,
        "nudged_before_all_open": nudged_early,
        "agents": args.agents,
        "nudge_secs": args.nudge_secs,
        "target_secs": args.target_secs,
        "nudges": nudges,
        "breaches": breaches,
        "nudge_lateness": lat_json(&nudge_late),
        "breach_lateness": lat_json(&breach_late),
        "nudge_lateness_from_arrival": lat_json(&nudge_late_lo),
        "breach_lateness_from_arrival": lat_json(&breach_late_lo),
        "nudge_lateness_from_at": lat_json(&nudge_late_at),
        "breach_lateness_from_at": lat_json(&breach_late_at),
        "buyer_message_latency": lat_json(&delivered),
        "rss_before_kib": before.map(|s| s.rss_kib),
        "rss_open_kib": opened.map(|s| s.rss_kib),
        "rss_end_kib": end.map(|s| s.rss_kib),
        "bytes_per_waiting_conversation": per_round,
        "connect_failures": shared.c.connect_failures.load(Ordering::Relaxed),
        "errors": errors,
        "other_agent_frames": types,
    });
    Ok((human, line.to_string()))
}
