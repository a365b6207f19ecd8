//! The supervisors' reports over HTTP: `GET /api/report`.
//!
//! `?shop=S&by=agent|day|stage|shop` with either `last=1d|7d|30d` or
//! `from=YYYY-MM-DD&to=YYYY-MM-DD` (shop time, both days included), and the
//! header `Authorization: Bearer <supervisor token of that shop>`. A
//! supervisor sees their own shop only: the token is checked against the
//! shop named in the query and the report is filtered to it. The answer is
//! the JSON of `kefu report --format json` plus the chart fields
//! (`response_histogram`, `rounds_by_hour`) the reports page draws.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

use super::http::Body;
use super::App;
use crate::report::{self, GroupBy, ReportOptions};

/// Answers one `/api/report` request.
pub(crate) async fn report<B>(req: Request<B>, app: App) -> Response<Body> {
    match answer(&req, &app).await {
        Ok(json) => {
            let mut r = json_response(StatusCode::OK, json);
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err((status, message)) => {
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

fn bad(message: impl Into<String>) -> Failure {
    (StatusCode::BAD_REQUEST, message.into())
}

async fn answer<B>(req: &Request<B>, app: &App) -> Result<String, Failure> {
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
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "send the supervisor token as `Authorization: Bearer <token>`".to_string(),
        ))?;
    let config = app.config();
    let allowed = config.shops.get(shop.as_str()).is_some_and(|s| {
        s.supervisors
            .iter()
            .any(|t| super::hub::ct_eq(t.as_bytes(), token.as_bytes()))
    });
    if !allowed {
        // Same answer for an unknown shop and a wrong token: nothing to
        // learn about which shops exist.
        return Err((
            StatusCode::FORBIDDEN,
            "unknown shop or wrong supervisor token".to_string(),
        ));
    }
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
            let (f, t) = report::last_days(last, now, offset).map_err(|e| bad(e.to_string()))?;
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
