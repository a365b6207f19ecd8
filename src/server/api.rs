//! The supervisors' reports over HTTP: `GET /api/report`.
//!
//! `?shop=S&by=agent|day|stage|shop` with either `last=1d|7d|30d` or
//! `from=YYYY-MM-DD&to=YYYY-MM-DD` (shop time, both days included), and the
//! header `Authorization: Bearer <supervisor token of that shop>`. A
//! supervisor sees their own shop only: the token is checked against the
//! shop named in the query and the report is filtered to it. The answer is
//! the JSON of `kefu report --format json` plus the chart fields
//! (`response_histogram`, `rounds_by_hour`) the reports page draws.
//!
//! Wrong tokens spend the shop's budget of failed sign-ins (see
//! [`super::throttle`]; a made-up shop id has one too): while it is spent
//! the answer is 429 with `Retry-After`, whatever the token.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};

use super::http::Body;
use super::throttle::{Account, Locked, Outcome};
use super::App;
use crate::report::{self, GroupBy, ReportOptions};

/// Answers one `/api/report` request.
pub(crate) async fn report<B>(req: Request<B>, app: App) -> Response<Body> {
    match answer(&req, &app).await {
        Err(Refused::Locked(locked)) => too_many_attempts(locked.retry_after),
        Ok(json) => {
            let mut r = json_response(StatusCode::OK, json);
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            // The shop's UTC offset, so the page picks dates in the shop's
            // days, not the supervisor's computer's (found by review).
            if let Ok(v) = HeaderValue::from_str(&utc_offset(app.config().reports.offset)) {
                r.headers_mut().insert(UTC_OFFSET_HEADER, v);
            }
            r
        }
        Err(Refused::Failure((status, message))) => {
            let body = serde_json::json!({ "error": message }).to_string();
            let mut r = json_response(status, body);
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            r
        }
    }
}

/// The header naming the offset reports use: `+08:00`.
pub const UTC_OFFSET_HEADER: &str = "x-kefu-utc-offset";

fn utc_offset(o: time::UtcOffset) -> String {
    let m = o.whole_minutes();
    let sign = if m < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)
}

/// The answer while the shop's budget of failed sign-ins is spent.
fn too_many_attempts(retry_after: u64) -> Response<Body> {
    let body = serde_json::json!({
        "error": format!(
            "too many failed sign-ins for this shop's reports; try again in {retry_after} s"
        ),
        "retry_after": retry_after,
    })
    .to_string();
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, body);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

type Failure = (StatusCode, String);

/// Why there is no report.
enum Refused {
    /// The shop's budget of failed sign-ins is spent.
    Locked(Locked),
    Failure(Failure),
}

impl From<Failure> for Refused {
    fn from(f: Failure) -> Refused {
        Refused::Failure(f)
    }
}

fn bad(message: impl Into<String>) -> Failure {
    (StatusCode::BAD_REQUEST, message.into())
}

async fn answer<B>(req: &Request<B>, app: &App) -> Result<String, Refused> {
    let (shop, query) = authorize(req, app)?;
    Ok(build(shop, query, app).await?)
}

/// The shop asked for, once the supervisor token is checked (against the
/// shop's budget of failed sign-ins first), and the query.
fn authorize<B>(req: &Request<B>, app: &App) -> Result<(String, HashMap<String, String>), Refused> {
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let shop = query
        .get("shop")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("give the shop: ?shop=s1"))?;
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "send the supervisor token as `Authorization: Bearer <token>`".to_string(),
        ))?;
    // A made-up shop id is throttled as a real one is: the answers do not
    // tell which shops exist.
    let ticket = app
        .begin_signin(Account::Reports(shop.clone()), app.shop_known(shop))
        .map_err(Refused::Locked)?;
    let allowed = app.supervisor_token(shop, token);
    app.end_signin(
        ticket,
        if allowed {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    );
    if !allowed {
        // Same answer for an unknown shop and a wrong token: nothing to
        // learn about which shops exist.
        return Err(Refused::Failure((
            StatusCode::FORBIDDEN,
            "unknown shop or wrong supervisor token".to_string(),
        )));
    }
    Ok((shop.clone(), query))
}

/// The report of `shop` asked for by `query`.
async fn build(shop: String, query: HashMap<String, String>, app: &App) -> Result<String, Failure> {
    let shop = &shop;
    let config = app.config();
    let Some(reader) = app.reports().cloned() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "this service keeps no event log to report from".to_string(),
        ));
    };

    let settings = &config.reports;
    let offset = settings.offset;
    let now = app.timebase().now_ms();
    let (from_ms, to_ms) = match (query.get("last"), query.get("from"), query.get("to")) {
        (Some(last), None, None) => {
            let (f, t) = report::last_days(last, now, offset).map_err(|_| {
                bad(format!(
                    "last={last:?}: give a number of days such as 7d or 30d"
                ))
            })?;
            (Some(f), Some(t))
        }
        (None, from, to) => (
            from.map(|f| report::parse_bound(f, offset, false))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            to.map(|t| report::parse_bound(t, offset, true))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
        ),
        _ => return Err(bad("give either last=7d or from=/to=, not both")),
    };
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f >= t {
            return Err(bad("from must come before to"));
        }
    }
    let by = query
        .get("by")
        .filter(|b| !b.is_empty())
        .map(|b| b.parse::<GroupBy>())
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let opts = ReportOptions {
        from_ms,
        to_ms,
        shop: Some(shop.clone()),
        by,
        offset,
        service_window: settings.service_window,
        target_ms: config.clock.target.as_millis() as i64,
        gold_threshold: settings.gold_threshold,
        now_ms: Some(now),
        // Buyer messages logged without a stage (imported chat logs) are
        // ranked for `by=stage` as `kefu report --phrases` ranks them.
        matcher: Some(app.phrases().matcher.clone()),
        charts: true,
        ..ReportOptions::default()
    };
    // Reading SQLite and computing is blocking work: keep it off the
    // runtime's worker threads.
    let report = tokio::task::spawn_blocking(move || reader.report(&opts))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            tracing::warn!(error = %e, "report failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })?;
    serde_json::to_string(&report).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The credentials of a `Bearer` authorization; the scheme's name is
/// case-insensitive (RFC 9110 11.1: `bearer x` was refused, found by review).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest)
}

#[cfg(test)]
mod tests {
    /// (Authorization value, credentials): the scheme in any case.
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let cases = [
            ("Bearer boss", Some("boss")),
            ("bearer boss", Some("boss")),
            ("BEARER boss", Some("boss")),
            ("Basic Ym9zcw==", None),
            ("Bearerboss", None),
            ("boss", None),
            ("Bearer ", Some("")),
        ];
        for (value, want) in cases {
            assert_eq!(super::bearer(value), want, "{value:?}");
        }
    }

    #[test]
    fn utc_offsets_are_written_as_the_page_reads_them() {
        for (h, m, want) in [
            (8, 0, "+08:00"),
            (0, 0, "+00:00"),
            (-5, -30, "-05:30"),
            (14, 0, "+14:00"),
        ] {
            let o = time::UtcOffset::from_hms(h, m, 0).unwrap();
            assert_eq!(super::utc_offset(o), want);
        }
    }
}
