//! HTTP on the service's port: the router and the WebSocket upgrade.
//!
//! hyper serves HTTP/1.1 (so the same port can serve pages and JSON), and
//! `GET /ws` upgrades to a WebSocket handled by tokio-tungstenite. Routes:
//!
//! | method | path       | answer                                 |
//! |--------|------------|----------------------------------------|
//! | GET    | `/ws`      | 101 and the chat protocol              |
//! | GET, HEAD | `/healthz` | 200 `ok` or `degraded`, with lines on what needs the operator (see [`health`]) |
//! | other  | `/ws`, `/healthz`, `/api/report` | 405                |
//! | GET, HEAD | `/`, `/buyer`, `/reports`, `/static/*` | the embedded pages ([`crate::web`]) |
//! | GET    | `/api/report` | a supervisor's report (JSON, see [`super::api`]) |
//! | any    | anything else | 404                                 |
//!
//! On a place of the staff reserve ([`super::busy`]) the buyer demo page
//! answers 503, and every answer closes the connection after it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::busy::{self, Place};
use super::{conn, App};

/// Held by every task serving a connection: counts against the connection
/// limit, and lets shutdown wait until the last one is gone.
#[derive(Clone)]
pub(crate) struct ConnGuard {
    _permit: Arc<OwnedSemaphorePermit>,
    _drain: mpsc::Sender<()>,
    place: Place,
}

impl ConnGuard {
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        place: Place,
        drain: mpsc::Sender<()>,
    ) -> ConnGuard {
        ConnGuard {
            _permit: Arc::new(permit),
            _drain: drain,
            place,
        }
    }
}

pub(crate) type Body = Full<Bytes>;

/// Serves HTTP on one accepted connection until it ends or the service
/// shuts down.
pub(crate) async fn serve<I>(io: I, app: App, peer: String, guard: ConnGuard)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let app = app.clone();
        let peer = peer.clone();
        let guard = guard.clone();
        service_fn(move |req: Request<Incoming>| {
            // The one route that waits on I/O (SQLite) answers
            // asynchronously; everything else is answered on the spot.
            let work = if req.uri().path() == "/api/report" && req.method() == Method::GET {
                Either::Left(super::api::report(req, app.clone()))
            } else {
                Either::Right(std::future::ready(route(req, &app, &peer, &guard)))
            };
            let reserve = guard.place == Place::Reserve;
            async move {
                let mut r = work.await;
                if reserve && r.status() != StatusCode::SWITCHING_PROTOCOLS {
                    // A reserve place serves one request (or one WebSocket)
                    // and is given back: a page kept open must not hold a
                    // staff place with an idle keep-alive connection.
                    r.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(r)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config().limits.handshake_timeout)
        // kefu's requests (a WebSocket upgrade, a page, a report) need a
        // few KiB of headers; hyper's default buffer (~400 KiB) let a
        // thousand half-sent requests hold 400 MiB.
        .max_buf_size(MAX_REQUEST_HEAD);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutdown = app.shutdown_rx();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        _ = super::stopping(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(guard);
}

fn route(req: Request<Incoming>, app: &App, peer: &str, guard: &ConnGuard) -> Response<Body> {
    if guard.place == Place::Reserve && !busy::reserve_serves(req.uri().path()) {
        return busy::busy_page();
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(req, app, peer, guard),
        // HEAD too: some load balancers' checks use it (hyper sends no body).
        (&Method::GET | &Method::HEAD, "/healthz") => health(app),
        (_, "/ws" | "/healthz" | "/api/report") => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            r
        }
        (&Method::GET | &Method::HEAD, path) => match crate::web::asset(path) {
            Some(asset) => page(asset, req.method() == Method::HEAD),
            None => match crate::web::slash_redirect(path, req.uri().query()) {
                Some(to) => redirect(&to),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/healthz`: `ok` while the service serves. Still 200 with lines for
/// monitors after the first when something needs the operator but the
/// chat goes on (a load balancer must not take the only instance out):
///
/// ```text
/// degraded
/// event_log: failing
/// events_dropped: 84
/// event_log_checkpoints: behind
/// event_log_wal_behind_mb: 131
/// phrases: stale
/// phrase_problems: 2
/// phrase_source: last_good
/// ```
///
/// The first line is `degraded` while the event log's commits fail (a
/// full disk: reports and the restore after a restart lose what it drops;
/// found by review, the page said `ok` throughout), and from the start to
/// the next restart when the start found the log damaged and moved it
/// aside (`event_log: damaged_log_moved_aside`, `damaged_log:` the name it
/// was given; the log holds nothing from before); `ok` otherwise.
/// `events_dropped` counts every event lost since the start, so it stays
/// after the disk is fixed. `event_log_checkpoints: behind` keeps `ok`:
/// nothing is lost, but the WAL file grows until the cause (a long report,
/// a slow disk) ends; the line goes once the checkpoints have caught up.
/// Stale phrase libraries keep `ok` (older
/// libraries serve). The problems themselves are in the log, agents'
/// `welcome` and `kefu check`, not on this unauthenticated page.
fn health(app: &App) -> Response<Body> {
    let status = app.phrase_status();
    let (dropped, failing, set_aside) = app.event_log_health();
    let degraded = failing || set_aside.is_some();
    let mut body = String::from(if degraded { "degraded\n" } else { "ok\n" });
    if failing {
        body.push_str("event_log: failing\n");
    }
    // Until the next restart: the log holds nothing from before this
    // start, and someone must salvage the old one (the start's ERROR line
    // says how).
    if let Some(aside) = set_aside {
        let name = aside.file_name().map_or_else(
            || aside.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        body.push_str(&format!(
            "event_log: damaged_log_moved_aside\ndamaged_log: {name}\n"
        ));
    }
    if dropped > 0 {
        body.push_str(&format!("events_dropped: {dropped}\n"));
    }
    // Nothing is lost yet, but the WAL file grows on the disk until the
    // cause ends (the log's warning names the usual ones).
    if let Some(bytes) = app.event_log_checkpoints_behind() {
        body.push_str(&format!(
            "event_log_checkpoints: behind\nevent_log_wal_behind_mb: {}\n",
            bytes >> 20
        ));
    }
    if !status.ok {
        let source = match status.source {
            crate::protocol::PhraseSource::Directory => "directory",
            crate::protocol::PhraseSource::LastGood => "last_good",
        };
        body.push_str(&format!(
            "phrases: stale\nphrase_problems: {}\nphrase_source: {source}\n",
            status.problems.len()
        ));
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A page or file of the browser front-end, built into the binary.
fn page(asset: crate::web::Asset, head: bool) -> Response<Body> {
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from_static(asset.body)
    };
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(
        hyper::header::CONTENT_LENGTH,
        HeaderValue::from(asset.body.len()),
    );
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Pages change with the binary, not over time: revalidate each load.
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    // The pages load only their own files and talk only to this server;
    // nothing inline. Another site may not frame the workbench (a click
    // trap over the reply box). 'self' covers the same host's ws:// in
    // current browsers.
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        hyper::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The pages' content security policy (see [`page`]).
pub(crate) const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A permanent redirect to `to`, a relative reference.
fn redirect(to: &str) -> Response<Body> {
    let mut r = text(StatusCode::PERMANENT_REDIRECT, "moved\n");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Whether `key` looks like 16 bytes in base64 (24 characters, the last two
/// `=`), as RFC 6455 asks of a client's key; an empty one was accepted.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Most bytes of a request head (request line and headers) kefu reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Answers the RFC 6455 handshake and hands the upgraded socket to
/// [`conn::serve`] in its own task.
fn upgrade(mut req: Request<Incoming>, app: &App, peer: &str, guard: &ConnGuard) -> Response<Body> {
    // An upgrade is HTTP/1.1 (RFC 6455 4.1); a 1.0 client got a 101 and
    // then a closed socket.
    if req.version() != hyper::Version::HTTP_11 {
        return text(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "a WebSocket upgrade needs HTTP/1.1\n",
        );
    }
    if !has_token(&req, CONNECTION, "upgrade") || !has_token(&req, UPGRADE, "websocket") {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket only\n",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 required\n",
        );
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    // Another site's page may not open the chat where the shop lists the
    // sites that may (`allowed_origins`; see Config::origin_allowed).
    let origin = req.headers().get(ORIGIN).map(|v| v.to_str().ok());
    if !app.config().origin_allowed(origin, app.own_address()) {
        let origin = origin.flatten().unwrap_or("(not readable)").to_string();
        debug!(%peer, %origin, "websocket refused: origin not in allowed_origins");
        return text(
            StatusCode::FORBIDDEN,
            "this page's origin may not open the chat: it is not in kefu's allowed_origins\n",
        );
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    if !is_websocket_key(key.as_bytes()) {
        return text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455 4.1)\n",
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let app = app.clone();
    let peer = peer.to_string();
    let guard = guard.clone();
    let staff_only = guard.place == Place::Reserve;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = app.shared.ws_config;
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                conn::serve(ws, app, peer, staff_only).await;
            }
            Err(e) => debug!(%peer, error = %e, "websocket upgrade failed"),
        }
        drop(guard);
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    r
}
