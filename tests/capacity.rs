//! At the connection limit: the staff reserve, the 503 past it, and what a
//! client that stops reading sees when it is closed.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use kefu::config::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// max_connections 4, of which 2 are kept for staff.
fn tight() -> Config {
    let mut config = test_config();
    config.limits.max_connections = 4;
    config.limits.staff_reserve = 2;
    config.validate().unwrap();
    config
}

/// Waits (real time, bounded) until the free places are `want`: a place
/// comes back when the server's task for the connection ends, a little
/// after the client sees the close.
async fn wait_places(t: &TestApp, want: (usize, usize)) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while t.app.free_places() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "free places {:?}, expected {want:?}",
            t.app.free_places()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One raw HTTP/1.1 request; the whole answer, read until the server
/// closes (which it must, in time).
async fn raw_get(t: &TestApp, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: kefu\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the server answers and closes")
        .expect("a clean close, not a reset");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn at_the_limit_staff_get_in_and_everyone_else_hears_why() {
    let t = spawn_app_with(tight()).await;
    assert_eq!(t.app.free_places(), (2, 2));
    let (b1, _, _) = t.buyer("b1").await;
    let (_b2, _, _) = t.buyer("b2").await;
    wait_places(&t, (0, 2)).await;

    // On a reserve place, plain HTTP: the health check answers, the buyer
    // page does not, and neither keeps the place.
    let health = raw_get(&t, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.contains("connection: close\r\n"), "{health}");
    let page = raw_get(&t, "/buyer").await;
    assert!(page.starts_with("HTTP/1.1 503 "), "{page}");
    assert!(page.contains("retry-after: 10\r\n"), "{page}");
    wait_places(&t, (0, 2)).await;

    // A buyer's WebSocket lands on a reserve place: refused at its hello.
    let mut c = t.connect().await;
    c.send(json!({"type":"hello","role":"buyer","shop":"s1","buyer":"b3"}))
        .await;
    let (frames, close) = c.expect_close().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "server_busy", "{frames:?}");
    assert!(frames[0]["message"].as_str().unwrap().starts_with("亲"));
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Again, "1013: try again later");
    assert_eq!(close.reason.as_str(), "server_busy");
    wait_places(&t, (0, 2)).await;

    // Agents sign in on the reserve, the first with the buyers who waited.
    let (_a1, welcome) = t.agent("a1").await;
    assert_eq!(welcome["conversations"].as_array().unwrap().len(), 2);
    let (_a2, _) = t.agent("a2").await;
    wait_places(&t, (0, 0)).await;

    // Past both pools: a 503 that says so, then a clean close.
    for path in ["/ws", "/healthz"] {
        let busy = raw_get(&t, path).await;
        assert!(
            busy.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{busy}"
        );
        assert!(busy.contains("\r\nRetry-After: 10\r\n"), "{busy}");
        assert!(busy.contains("\r\nConnection: close\r\n"), "{busy}");
        assert!(busy.contains("亲，"), "{busy}");
    }

    // A buyer leaves: the next one gets in again.
    b1.close().await;
    wait_places(&t, (1, 0)).await;
    let (_b4, welcome, _) = t.buyer("b4").await;
    assert_eq!(welcome["resumed"], false);
    t.stop().await;
}

#[test]
fn the_reserve_must_leave_room_for_buyers() {
    let mut config = test_config();
    config.limits.max_connections = 64;
    config.limits.staff_reserve = 64;
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.starts_with(
            "limits.staff_reserve: the staff reserve (64) must be less than max_connections (64)"
        ),
        "{err}"
    );
    config.limits.staff_reserve = 0;
    config.validate().unwrap();
}

/// A buyer that stops reading while its agent writes to it, with a small
/// receive buffer so its socket fills quickly; `pause` after the server
/// dropped it (the agent sees it go offline), it reads everything.
/// Returns the text frames read and how the stream ended.
async fn stop_reading_then_read(write_timeout: Duration, pause: Duration) -> (usize, Ending) {
    let mut config = test_config();
    config.limits.outbound_queue = 64;
    config.limits.write_timeout = write_timeout;
    let t = spawn_app_with(config).await;
    let (mut agent, _) = t.agent("a1").await;

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(t.addr()).await.unwrap();
    let (mut buyer, _) = tokio_tungstenite::client_async("ws://kefu.test/ws", stream)
        .await
        .unwrap();
    buyer
        .send(Message::text(
            json!({"type":"hello","role":"buyer","shop":"s1","buyer":"slow"}).to_string(),
        ))
        .await
        .unwrap();
    let conv = agent.recv_type("conversation_assigned").await["conversation"]
        .as_str()
        .unwrap()
        .to_string();

    // The buyer reads nothing from here on.
    let text = "亲".repeat(2000);
    // In bursts: a receipt may wait 20 ms for company, one per reply
    // would take seconds.
    let mut sent = 0;
    'writing: loop {
        assert!(sent < 5000, "the buyer was never dropped");
        for _ in 0..16 {
            agent
                .send(json!({"type":"reply","conversation":conv,"text":text}))
                .await;
        }
        sent += 16;
        let mut receipts = 0;
        while receipts < 16 {
            let v = agent.recv().await;
            match v["type"].as_str() {
                Some("reply_sent") => receipts += 1,
                Some("presence") if v["online"] == false => break 'writing,
                _ => {}
            }
        }
    }
    // The scenario, not an assertion: the client stays away this long.
    tokio::time::sleep(pause).await;

    let mut texts = 0;
    let close = tokio::time::timeout(WAIT * 2, async {
        loop {
            match buyer.next().await {
                Some(Ok(Message::Text(_))) => texts += 1,
                Some(Ok(Message::Close(Some(f)))) => {
                    break Ending::Close(f.code, f.reason.as_str().to_string());
                }
                Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(_)) => {}
                // tungstenite's word for the end of the TCP stream (FIN)
                // before any close frame; a reset is an I/O error.
                Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    break Ending::Eof;
                }
                Some(Err(e)) => break Ending::Error(e.to_string()),
                None => break Ending::Error("the stream ended after a close".into()),
            }
        }
    })
    .await
    .expect("the stream ends");
    t.stop().await;
    (texts, close)
}

#[derive(Debug, PartialEq)]
enum Ending {
    Close(CloseCode, String),
    /// The TCP stream ended (FIN) with no close frame.
    Eof,
    Error(String),
}

/// Back within `write_timeout_secs`: the frames written so far, then the
/// 1008 close frame. (Before, the close frame got one second behind the
/// unread bytes, and a client back after that read the stream's end.)
#[tokio::test]
async fn a_slow_reader_back_in_time_reads_the_1008() {
    let (texts, end) =
        stop_reading_then_read(Duration::from_secs(4), Duration::from_millis(1500)).await;
    assert!(texts > 0);
    assert_eq!(
        end,
        Ending::Close(CloseCode::Policy, "too slow: outbound queue full".into())
    );
}

/// Back after `write_timeout_secs`: what had reached the socket, then the
/// end of the stream, without a close frame.
#[tokio::test]
async fn a_slow_reader_back_too_late_reads_the_end_of_the_stream() {
    let (texts, end) =
        stop_reading_then_read(Duration::from_millis(300), Duration::from_millis(1200)).await;
    assert!(texts > 0);
    assert_eq!(end, Ending::Eof, "a clean end, not a reset");
}

/// A write stuck for `write_timeout_secs` (the queue never filled: only a
/// few frames, more than the pipe holds) closes the same way, with its own
/// reason; it used to drop the socket without a close frame. Paused time,
/// in-memory pipes (256 KiB).
#[tokio::test(start_paused = true)]
async fn a_write_stuck_for_the_write_timeout_closes_with_1008() {
    let t = spawn_local(test_config()).await;
    let (mut agent, _) = t.agent("a1").await;
    let (mut buyer, _, _) = t.buyer("slow").await;
    let conv = agent.recv_type("conversation_assigned").await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    // 60 replies of 6 KB: more than the pipe holds, far less than the
    // queue (1,024 frames).
    let text = "亲".repeat(2000);
    for _ in 0..60 {
        agent
            .send(json!({"type":"reply","conversation":conv,"text":text}))
            .await;
    }
    let started = tokio::time::Instant::now();
    loop {
        let v = agent.recv().await;
        if v["type"] == "presence" && v["online"] == false {
            break;
        }
    }
    assert!(started.elapsed() >= test_config().limits.write_timeout);
    let (frames, close) = buyer.expect_close().await;
    assert!(!frames.is_empty());
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "too slow: a write timed out");
    t.stop().await;
}
