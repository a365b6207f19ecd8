//! At the connection limit: the staff reserve, and the 503 past it.

mod common;

use std::time::Duration;

use common::*;
use kefu::config::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

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
