//! The HTTP side of the service: the embedded pages and the supervisors'
//! report API, against the real server with a real event log.

mod common;

use bytes::Bytes;
use common::{spawn_app_with_store, test_config, TestApp, WAIT};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use kefu::report::ServiceWindow;
use kefu::store::Store;
use serde_json::{json, Value};

/// The service with a SQLite log in `dir` and supervisor token `boss` for
/// shop s1 (and `other` for s2).
async fn spawn(dir: &std::path::Path) -> (TestApp, Store) {
    let mut config = test_config();
    config.shops.get_mut("s1").unwrap().supervisors = vec!["boss".into()];
    config.shops.get_mut("s2").unwrap().supervisors = vec!["other".into()];
    // Count rounds at any hour, so the test does not depend on the clock.
    config.reports.service_window = ServiceWindow::ALL_DAY;
    let store = Store::open(dir).unwrap();
    let t = spawn_app_with_store(config, store.handle()).await;
    t.app.attach_reports(store.reader());
    (t, store)
}

/// GET `path` with an optional bearer token: the response, body read.
async fn fetch(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (hyper::http::response::Parts, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "127.0.0.1");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = tokio::time::timeout(
        WAIT,
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("answer in time")
    .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8(body.to_vec()).unwrap())
}

/// A response header as text ("" when missing).
fn header(parts: &hyper::http::response::Parts, name: &str) -> String {
    parts
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GET `path` with an optional bearer token: status, content type, body.
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String, String) {
    let (parts, body) = fetch(addr, path, token).await;
    let ctype = header(&parts, "content-type");
    (parts.status, ctype, body)
}

#[tokio::test]
async fn pages_are_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _store) = spawn(dir.path()).await;
    let addr = s.addr();
    for (path, ctype, needle) in [
        ("/", "text/html", "<html"),
        ("/buyer", "text/html", "<html"),
        ("/reports", "text/html", "<html"),
        ("/static/kefu.css", "text/css", "{"),
        ("/static/workbench.js", "javascript", "WebSocket"),
    ] {
        let (status, ct, body) = get(addr, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(ct.contains(ctype), "{path}: {ct}");
        assert!(body.contains(needle), "{path}");
    }
    // Every page and file: nothing inline or foreign runs, no framing.
    for path in ["/", "/buyer", "/reports", "/static/workbench.js"] {
        let (parts, _) = fetch(addr, path, None).await;
        assert_eq!(parts.status, StatusCode::OK);
        let names = [
            "content-security-policy",
            "x-frame-options",
            "x-content-type-options",
        ];
        let v: Vec<String> = names.iter().map(|n| header(&parts, n)).collect();
        assert!(v[0].contains("default-src 'self'"), "{path}: {v:?}");
        assert!(v[0].contains("frame-ancestors 'none'"), "{path}: {v:?}");
        assert_eq!(v[1], "DENY", "{path}");
        assert_eq!(v[2], "nosniff", "{path}");
    }
    let (status, _, _) = get(addr, "/static/../Cargo.toml", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(addr, "/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn supervisor_report_counts_a_round_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let (s, store) = spawn(dir.path()).await;
    let addr = s.addr();
    let (mut agent, _) = s.agent("a1").await;
    let (mut buyer, welcome, _greeting) = s.buyer("b1").await;
    let conv = welcome["conversation"].as_str().unwrap().to_string();
    buyer
        .send(json!({"type": "message", "text": "请问什么时候发货"}))
        .await;
    agent.recv_until("buyer_message").await;
    agent
        .send(json!({"type": "reply", "conversation": conv, "text": "亲，48小时内为您发出哦", "intent": "in_sale.shipping_time"}))
        .await;
    buyer.recv_until("reply").await;
    // Let the writer thread commit what the service recorded.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let handle = store.handle();
    tokio::task::spawn_blocking(move || handle.flush().unwrap())
        .await
        .unwrap();

    // Refusals: no token, wrong token, another shop's token, no shop.
    let path = "/api/report?shop=s1&last=1d&by=agent";
    assert_eq!(get(addr, path, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(addr, path, Some("nope")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        get(addr, path, Some("other")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(addr, "/api/report?shop=zz&last=1d", Some("boss"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(addr, "/api/report?last=1d", Some("boss")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, _, body) = get(
        addr,
        "/api/report?shop=s1&last=1d&by=nonsense",
        Some("boss"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // An HTTP answer names the query parameter, not the CLI's flag.
    let (status, _, body) = get(addr, "/api/report?shop=s1&last=0d", Some("boss")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]
            .as_str()
            .is_some_and(|e| e.contains("last=\"0d\"") && !e.contains("--last")),
        "{body}"
    );

    // The supervisor of s1 sees the round, answered by a1 with a suggestion.
    let (status, ctype, body) = get(addr, path, Some("boss")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(ctype.starts_with("application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["rounds"], 1, "{v:#}");
    assert_eq!(v["total"]["answered"], 1, "{v:#}");
    assert_eq!(v["total"]["within_30s_rate"], 1.0, "{v:#}");
    assert_eq!(v["total"]["suggestion_use_rate"], 1.0, "{v:#}");
    assert_eq!(v["groups"][0]["key"], "a1", "{v:#}");
    // s2's supervisor sees nothing of s1.
    let (status, _, body) = get(addr, "/api/report?shop=s2&last=1d", Some("other")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"]["rounds"], 0, "{v:#}");
    s.stop().await;
}

/// Wrong supervisor tokens spend the shop's budget of failed sign-ins (10
/// a minute): the 11th request gets 429 with `Retry-After`, even with the
/// right token; a made-up shop is throttled alike, another shop is not.
#[tokio::test]
async fn wrong_supervisor_tokens_run_into_429() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _store) = spawn(dir.path()).await;
    let addr = s.addr();
    let path = "/api/report?shop=s1&last=1d";
    for shop in ["s1", "zz"] {
        let path = format!("/api/report?shop={shop}&last=1d");
        for i in 0..10 {
            let (status, _, body) = get(addr, &path, Some(&format!("guess{i}"))).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{shop} guess {i}: {body}");
        }
        let (parts, body) = fetch(addr, &path, Some("boss")).await;
        assert_eq!(
            parts.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{shop}: {body}"
        );
        let wait: u64 = header(&parts, "retry-after").parse().unwrap();
        assert!((1..=6).contains(&wait), "{shop}: Retry-After {wait}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["retry_after"], wait, "{v}");
        assert!(v["error"].as_str().unwrap().contains("too many"), "{v}");
    }
    // No token is no guess: still 401, not 429.
    assert_eq!(get(addr, path, None).await.0, StatusCode::UNAUTHORIZED);
    // s2's supervisor is not held up by s1's lockout.
    let (status, _, body) = get(addr, "/api/report?shop=s2&last=1d", Some("other")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.stop().await;
}

/// Buyer messages logged without a stage (imported chat logs) are ranked
/// for `by=stage` as `kefu report --phrases` ranks them (the API put them
/// under `unknown`); a window that ends before it starts is refused, as the
/// CLI refuses it.
#[tokio::test]
async fn supervisor_report_ranks_messages_without_a_stage() {
    use kefu::events::{Event, Kind};
    let dir = tempfile::tempdir().unwrap();
    let (s, store) = spawn(dir.path()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let handle = store.handle();
    let mut buyer = Event::new(now - 60_000, "s1", "imported-1", "bx", Kind::Buyer);
    buyer.text = Some("请问什么时候发货".into());
    let mut agent = Event::new(now - 48_000, "s1", "imported-1", "bx", Kind::Agent);
    agent.agent = Some("a1".into());
    handle.record(buyer);
    handle.record(agent);
    tokio::task::spawn_blocking(move || handle.flush().unwrap())
        .await
        .unwrap();

    let (status, _, body) = get(
        s.addr(),
        "/api/report?shop=s1&last=1d&by=stage",
        Some("boss"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["in_sale"], "{v:#}");

    let (status, _, body) = get(
        s.addr(),
        "/api/report?shop=s1&from=2026-11-22&to=2026-11-20",
        Some("boss"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("from must come before to"), "{body}");
    s.stop().await;
}

/// Raw bytes to the server; what it answers, up to the end of the status
/// line (or whatever came before it closed, or 5 s).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while !out.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Found by review: hyper's default read buffer let a half-sent request
/// head of ~400 KiB sit in memory per connection; an upgrade over HTTP/1.0
/// got a 101 and then a closed socket.
#[tokio::test]
async fn oversized_heads_and_http10_upgrades_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _store) = spawn(dir.path()).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let answer = raw_exchange(s.addr(), big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let http10 =
        "GET /ws HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = raw_exchange(s.addr(), http10.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.0 505"), "{answer:?}");
    // A key that is not 16 bytes in base64 (an empty one got a 101).
    for key in [
        "",
        "abc",
        "dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBub25j!Q==",
    ] {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        let answer = raw_exchange(s.addr(), req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{key:?}: {answer:?}");
    }
    // A normal page still loads.
    assert_eq!(get(s.addr(), "/", None).await.0, StatusCode::OK);
    s.stop().await;
}

/// With `allowed_origins` set, a WebSocket opened by another site's page
/// is refused (403) before the handshake; kefu's own pages (same origin as
/// the `Host`), the listed sites and clients that send no `Origin` (not a
/// browser) go on. Without the setting nothing is checked.
#[tokio::test]
async fn allowed_origins_keep_other_sites_pages_out() {
    use common::spawn_app_with;
    let upgrade = |host: &str, origin: Option<&str>| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{}\r\n",
            origin
                .map(|o| format!("Origin: {o}\r\n"))
                .unwrap_or_default()
        )
    };
    let mut config = test_config();
    config.allowed_origins = vec!["https://shop.example".into()];
    let s = spawn_app_with(config).await;
    let host = s.addr().to_string();
    let own = format!("http://{host}");
    let rebound = format!("evil.example:{}", s.addr().port());
    let rebound_origin = format!("http://{rebound}");
    // (Host, Origin, status line start)
    let cases: [(&str, Option<&str>, &str); 7] = [
        (&host, Some("https://evil.example"), "HTTP/1.1 403"),
        (&host, Some("http://shop.example"), "HTTP/1.1 403"),
        (&host, Some("https://shop.example"), "HTTP/1.1 101"),
        (&host, Some("HTTPS://SHOP.EXAMPLE"), "HTTP/1.1 101"),
        (&host, Some(&own), "HTTP/1.1 101"),
        (&host, None, "HTTP/1.1 101"),
        // a page reaching kefu through a rebinding name sends a Host equal
        // to its own origin: not kefu's own page
        (&rebound, Some(&rebound_origin), "HTTP/1.1 403"),
    ];
    for (host, origin, want) in cases {
        let answer = raw_exchange(s.addr(), upgrade(host, origin).as_bytes()).await;
        assert!(answer.starts_with(want), "{host} {origin:?}: {answer:?}");
    }
    // an Origin that is not readable text is refused, not taken as absent
    let mut unreadable = upgrade(&host, Some("https://shop.example")).into_bytes();
    let at = unreadable.windows(7).position(|w| w == b"example").unwrap();
    unreadable[at] = 0xff;
    let answer = raw_exchange(s.addr(), &unreadable).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer:?}");
    // A buyer of the listed site really chats (the check lets the
    // handshake through, not only the status line).
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{host}/ws"),
    )
    .map(|mut r| {
        r.headers_mut()
            .insert("Origin", "https://shop.example".parse().unwrap());
        r
    })
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"type": "hello", "role": "buyer", "shop": "s1", "buyer": "b1"}).to_string(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["type"], "welcome", "{first}");
    s.stop().await;

    // Without the setting, any origin goes on.
    let s = spawn_app_with(test_config()).await;
    let answer = raw_exchange(
        s.addr(),
        upgrade(&s.addr().to_string(), Some("https://evil.example")).as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer:?}");
    s.stop().await;
}

/// A settings reload replaces the supervisors' tokens: the old one is
/// refused at once, the new one lets its holder in.
#[tokio::test]
async fn a_settings_reload_replaces_supervisor_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _store) = spawn(dir.path()).await;
    let addr = s.addr();
    let path = "/api/report?shop=s1&last=1d";
    assert_eq!(get(addr, path, Some("boss")).await.0, StatusCode::OK);
    let mut config = test_config();
    config.shops.get_mut("s1").unwrap().supervisors = vec!["boss-2026".into()];
    config.shops.get_mut("s2").unwrap().supervisors = vec!["other".into()];
    s.app.reload_staff(&config);
    assert_eq!(get(addr, path, Some("boss")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(addr, path, Some("boss-2026")).await.0, StatusCode::OK);
}

/// `/healthz` stays `ok` but says so while the event log's checkpoints are
/// behind (a long report's snapshot pins the WAL), and stops once they
/// have caught up.
#[tokio::test]
async fn healthz_says_while_the_event_log_checkpoints_are_behind() {
    let dir = tempfile::tempdir().unwrap();
    let opts = kefu::store::StoreOptions {
        checkpoint_every: std::time::Duration::from_millis(20),
        wal_behind_limit: 64 * 1024,
        ..Default::default()
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let s = spawn_app_with_store(test_config(), store.handle()).await;
    let addr = s.addr();
    let health = || async move { get(addr, "/healthz", None).await.2 };
    assert_eq!(health().await, "ok\n");
    // A report's read transaction, its snapshot taken before the writes.
    let reader = rusqlite::Connection::open(dir.path().join(kefu::store::DB_FILE)).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM events;")
        .unwrap();
    let h = store.handle();
    for i in 0..2000 {
        let e = kefu::events::Event::new(
            1_795_140_000_000 + i,
            "s1",
            &format!("c{}", i % 50),
            &format!("b{}", i % 50),
            kefu::events::Kind::Buyer,
        );
        h.record(e);
    }
    tokio::task::spawn_blocking(move || h.flush())
        .await
        .unwrap()
        .unwrap();
    let until = |want: bool| async move {
        for _ in 0..3000 {
            let body = health().await;
            if body.contains("event_log_checkpoints: behind") == want {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        health().await
    };
    let body = until(true).await;
    assert!(
        body.starts_with("ok\nevent_log_checkpoints: behind\nevent_log_wal_behind_mb: "),
        "{body}"
    );
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(until(false).await, "ok\n");
    drop(reader);
    s.stop().await;
    store.close().unwrap();
}
