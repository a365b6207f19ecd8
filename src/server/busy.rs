//! At the connection limit: the places kept for staff, and the 503 given
//! to whoever finds no place at all.
//!
//! `limits.max_connections` is split in two pools: the general one
//! (`max_connections - staff_reserve`), which anyone may take, and the
//! staff reserve, taken only once the general pool is full. Who is staff
//! is known only later (an agent's `hello`, a supervisor's token), so a
//! connection on a reserve place is served on condition: a WebSocket whose
//! hello is a buyer's is refused (`server_busy`, close 1013), and of plain
//! HTTP only what staff and monitoring need is answered (see
//! [`reserve_serves`]).
//!
//! Past both pools the socket gets a fixed `503 Service Unavailable` and
//! is closed cleanly: written, shut down for writing, and what the client
//! sent read and discarded until it closes too. Dropping a socket with its
//! request unread makes the kernel send a reset, and a client that gets
//! the reset before reading sees "connection reset" rather than the answer.
//! The refusals are bounded ([`REFUSALS_IN_FLIGHT`], each at most
//! [`REFUSAL_TIME`]) so a flood cannot make them grow our memory or our
//! open files; past that bound, sockets are dropped unanswered as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::warn;

use super::http::Body;

/// Which pool a connection's place comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    General,
    /// Kept for staff: see the module documentation.
    Reserve,
}

/// Seconds a refused client is asked to wait (`Retry-After`). Long enough
/// that a crowd retrying together does not come back at once; the pages
/// retry on their own schedule (0.5 s doubling to 10 s).
pub(crate) const RETRY_AFTER_SECS: u64 = 10;

/// Refusals answered at the same time; beyond this, sockets are dropped
/// unanswered. Each holds an open file for up to [`REFUSAL_TIME`], within
/// the spare files `kefu serve` keeps beyond `max_connections` (64).
pub(crate) const REFUSALS_IN_FLIGHT: usize = 16;

/// Longest a refusal may take, answer and draining included.
pub(crate) const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// Most bytes of a refused client's request read (and discarded) before
/// closing: a request head is at most 16 KiB here.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// What a refused client reads, and what a page asked for on a reserve
/// place gets: a person may read it (a browser shows the body), a program
/// reads the status and `Retry-After`.
pub(crate) const BUSY_TEXT: &str = "亲，现在咨询的人太多啦，请您稍等片刻再试哦～\n\
     server busy: at its connection limit; try again in a few seconds\n";

/// The whole 503 answer past both pools, bytes on the wire.
fn busy_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Retry-After: {RETRY_AFTER_SECS}\r\n\
         Cache-Control: no-store\r\n\
         Connection: close\r\n\
         \r\n\
         {BUSY_TEXT}",
        BUSY_TEXT.len()
    )
    .into_bytes()
}

/// The same answer through hyper, for a page asked for on a reserve place.
pub(crate) fn busy_page() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(BUSY_TEXT.as_bytes())));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether a plain HTTP request is answered on a reserve place: the health
/// check (a monitor must not take a full server for a dead one), the
/// supervisors' reports (their token is checked there) and the staff pages
/// with their files (an agent who reloads the workbench at the peak must
/// get it back to sign in). The buyer demo page is not: it gets a 503.
pub(crate) fn reserve_serves(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let buyer = path.trim_end_matches('/').trim_end_matches(".html") == "/buyer"
        || path == "/static/buyer.js";
    !buyer
}

/// Answers sockets that found no place, within a fixed bound, and keeps
/// the count for a log line at most once a second.
pub(crate) struct Refusals {
    in_flight: Arc<Semaphore>,
    /// Answered and dropped since the last log line...
    answered: u64,
    dropped: u64,
    /// ...and since the start.
    answered_total: u64,
    dropped_total: u64,
    last_log: Option<Instant>,
    limit: usize,
}

impl Refusals {
    /// `limit` is `max_connections`, for the log line.
    pub(crate) fn new(limit: usize) -> Refusals {
        Refusals::with_bound(limit, REFUSALS_IN_FLIGHT)
    }

    fn with_bound(limit: usize, bound: usize) -> Refusals {
        Refusals {
            in_flight: Arc::new(Semaphore::new(bound)),
            answered: 0,
            dropped: 0,
            answered_total: 0,
            dropped_total: 0,
            last_log: None,
            limit,
        }
    }

    /// A slot to answer one refusal in, if fewer than the bound are under
    /// way (the slot is freed when the answer is done or has timed out).
    fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// Refuses `io`: a 503 in its own task while there is a slot,
    /// otherwise dropped.
    pub(crate) fn refuse<I>(&mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.slot() {
            Some(slot) => {
                self.answered += 1;
                self.answered_total += 1;
                tokio::spawn(async move {
                    answer(io).await;
                    drop(slot);
                });
            }
            None => {
                self.dropped += 1;
                self.dropped_total += 1;
                drop(io);
            }
        }
        self.log(Instant::now());
    }

    /// One warning a second at most, with the counts since the last one.
    fn log(&mut self, now: Instant) {
        if self
            .last_log
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        warn!(
            limit = self.limit,
            answered_503 = self.answered,
            dropped = self.dropped,
            answered_503_total = self.answered_total,
            dropped_total = self.dropped_total,
            "connection limit reached: refusing new connections (answered_503 and dropped count since \
             the last such line; dropped ones found {REFUSALS_IN_FLIGHT} refusals under way). \
             Raise limits.max_connections (and the open-files limit) if this is load, not an attack"
        );
        self.answered = 0;
        self.dropped = 0;
        self.last_log = Some(now);
    }
}

/// Writes the 503, shuts down writing and reads what the client sent until
/// it closes, all within [`REFUSAL_TIME`].
async fn answer<I>(mut io: I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        io.write_all(&busy_response()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 2048];
        let mut read = 0;
        while read < REFUSAL_DRAIN {
            match io.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the bound, refusals are dropped, not queued; a finished one
    /// frees its slot.
    #[tokio::test(start_paused = true)]
    async fn refusals_in_flight_are_bounded() {
        let mut r = Refusals::with_bound(4, 2);
        // Clients that never read nor close: each refusal holds its slot
        // until REFUSAL_TIME.
        let mut clients = Vec::new();
        for _ in 0..5 {
            let (client, server) = tokio::io::duplex(64 * 1024);
            clients.push(client);
            r.refuse(server);
        }
        assert_eq!((r.answered_total, r.dropped_total), (2, 3));
        assert_eq!(r.in_flight.available_permits(), 0);
        // The dropped ones read EOF with no answer at all.
        let mut buf = Vec::new();
        clients[4].read_to_end(&mut buf).await.unwrap();
        assert!(buf.is_empty());
        // The answered ones read the 503; then their refusals wait for the
        // client to close, at most REFUSAL_TIME.
        let mut head = [0u8; 12];
        clients[0].read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 503");
        tokio::time::sleep(REFUSAL_TIME + Duration::from_millis(10)).await;
        assert_eq!(r.in_flight.available_permits(), 2, "timed out and freed");
        let (_client, server) = tokio::io::duplex(64 * 1024);
        r.refuse(server);
        assert_eq!(r.in_flight.available_permits(), 1, "answered again");
    }

    /// A client that reads the answer and closes frees the slot at once.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_when_the_client_closes() {
        let mut r = Refusals::with_bound(4, 1);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost: k\r\n\r\n")
            .await
            .unwrap();
        r.refuse(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(got.contains("\r\nRetry-After: 10\r\n"));
        assert!(got.contains("\r\nConnection: close\r\n"));
        assert!(got.ends_with(BUSY_TEXT));
        drop(client);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(r.in_flight.available_permits(), 1);
    }

    #[test]
    fn the_log_line_comes_once_a_second_with_counts() {
        let mut r = Refusals::with_bound(4, 1);
        let t0 = Instant::now();
        r.answered = 1;
        r.log(t0);
        assert_eq!(r.last_log, Some(t0));
        r.answered = 5;
        r.dropped = 7;
        r.log(t0 + Duration::from_millis(999));
        assert_eq!((r.answered, r.dropped), (5, 7), "not logged yet: kept");
        r.log(t0 + Duration::from_secs(1));
        assert_eq!((r.answered, r.dropped), (0, 0), "logged and reset");
    }

    #[test]
    fn the_protocol_doc_shows_the_503_as_sent() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md"),
        )
        .unwrap();
        let sent = String::from_utf8(busy_response())
            .unwrap()
            .replace("\r\n", "\n");
        assert!(doc.contains(&sent), "docs/PROTOCOL.md should show:\n{sent}");
    }

    #[test]
    fn the_reserve_serves_staff_and_monitors() {
        for p in [
            "/",
            "/index.html",
            "/reports",
            "/static/workbench.js",
            "/healthz",
            "/api/report?shop=s1",
            "/ws",
        ] {
            assert!(reserve_serves(p), "{p}");
        }
        for p in ["/buyer", "/buyer/", "/buyer.html", "/static/buyer.js"] {
            assert!(!reserve_serves(p), "{p}");
        }
    }
}
