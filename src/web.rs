//! The browser pages, built into the binary.
//!
//! The sources live in `web/` as plain HTML, CSS and JavaScript (no build
//! step, nothing fetched from the internet) and are embedded with
//! `include_bytes!`, so `kefu serve` is one file to deploy and the pages
//! always match the protocol of the binary that serves them. `docs/WEB.md`
//! describes the pages.
//!
//! The HTTP side of the server calls [`asset`] for every `GET` (and `HEAD`)
//! it does not handle itself (`/ws`, `/api/...`) and answers 404 on `None`.

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Pages by URL path.
const PAGES: &[(&str, Asset)] = &[
    (
        "/",
        Asset {
            content_type: HTML,
            body: include_bytes!("../web/index.html"),
        },
    ),
    (
        "/buyer",
        Asset {
            content_type: HTML,
            body: include_bytes!("../web/buyer.html"),
        },
    ),
    (
        "/reports",
        Asset {
            content_type: HTML,
            body: include_bytes!("../web/reports.html"),
        },
    ),
];

/// Style sheets, scripts and images under `/static/`, by file name.
const STATIC: &[(&str, Asset)] = &[
    (
        "kefu.css",
        Asset {
            content_type: CSS,
            body: include_bytes!("../web/kefu.css"),
        },
    ),
    (
        "common.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/common.js"),
        },
    ),
    (
        "workbench.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/workbench.js"),
        },
    ),
    (
        "buyer.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/buyer.js"),
        },
    ),
    (
        "reports.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/reports.js"),
        },
    ),
    (
        "favicon.svg",
        Asset {
            content_type: SVG,
            body: include_bytes!("../web/favicon.svg"),
        },
    ),
];

/// The embedded file served at `path` (the URL path without query string),
/// if any: `/`, `/buyer`, `/reports` (or with `.html`; a trailing slash is
/// redirected, see [`slash_redirect`])
/// and `/static/<file>`. Lookup is an exact match against a fixed table, so
/// no path can reach anything but these files.
pub fn asset(path: &str) -> Option<Asset> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if let Some(file) = path.strip_prefix("/static/") {
        return find(STATIC, file);
    }
    if path == "/favicon.ico" {
        return find(STATIC, "favicon.svg");
    }
    let page = match path {
        "/" | "/index.html" => "/",
        // `/buyer/`: the pages link their files relative to themselves (so
        // they work under a proxy's sub-path), which from `/buyer/` would
        // be `/buyer/static/…`; the router redirects it ([`slash_redirect`]).
        p if p.ends_with('/') => return None,
        p => match p.strip_suffix(".html").unwrap_or(p) {
            "/" => return None, // "/.html"
            p => p,
        },
    };
    find(PAGES, page)
}

/// Where a page asked for with a trailing slash (`/buyer/`) lives, as a
/// `Location` relative to the request (`../buyer`, with the query), so the
/// redirect also stays under a proxy's sub-path (`/kefu/buyer/` →
/// `/kefu/buyer`). `None` for every other path.
pub fn slash_redirect(path: &str, query: Option<&str>) -> Option<String> {
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty())?;
    if trimmed.ends_with('/') || trimmed.starts_with("/static/") || asset(trimmed).is_none() {
        return None;
    }
    let name = trimmed.rsplit('/').next().unwrap_or(trimmed);
    Some(match query {
        Some(q) => format!("../{name}?{q}"),
        None => format!("../{name}"),
    })
}

fn find(table: &[(&str, Asset)], key: &str) -> Option<Asset> {
    table.iter().find(|(k, _)| *k == key).map(|(_, a)| *a)
}

/// Every URL path [`asset`] answers, for tests and listings.
pub fn paths() -> impl Iterator<Item = String> {
    PAGES
        .iter()
        .map(|(p, _)| p.to_string())
        .chain(STATIC.iter().map(|(f, _)| format!("/static/{f}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        // (path, expected content type, a string the body must contain)
        let cases: &[(&str, &str, &str)] = &[
            ("/", HTML, "客服工作台"),
            ("/index.html", HTML, "客服工作台"),
            ("/buyer", HTML, "买家演示"),
            ("/buyer.html", HTML, "买家演示"),
            ("/reports", HTML, "客服数据报表"),
            ("/reports?x=1", HTML, "客服数据报表"),
            ("/static/kefu.css", CSS, "Noto Sans CJK SC"),
            ("/static/common.js", JS, "function connect"),
            ("/static/workbench.js", JS, "\"lint\""),
            ("/static/buyer.js", JS, "resume"),
            ("/static/reports.js", JS, "/api/report"),
            ("/static/favicon.svg", SVG, "<svg"),
            ("/favicon.ico", SVG, "<svg"),
        ];
        for (path, ct, needle) in cases {
            let a = asset(path).unwrap_or_else(|| panic!("no asset for {path}"));
            assert_eq!(a.content_type, *ct, "{path}");
            let body = std::str::from_utf8(a.body).expect("assets are UTF-8");
            assert!(body.contains(needle), "{path} lacks {needle:?}");
        }
    }

    #[test]
    fn unknown_paths_are_none() {
        for path in [
            "",
            "/nope",
            "/static/",
            "/static/../src/lib.rs",
            "/static/kefu.css/",
            "/web/index.html",
            "/ws",
            "/api/report",
            "//",
            "/buyer/",
            "/reports.html/",
        ] {
            assert!(asset(path).is_none(), "{path:?} should not be served");
        }
    }

    /// A page with a trailing slash is redirected beside itself, relative,
    /// so a proxy's sub-path is kept; nothing else is.
    #[test]
    fn trailing_slashes_redirect_relative() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("/buyer/", None, Some("../buyer")),
            ("/buyer/", Some("shop=s1"), Some("../buyer?shop=s1")),
            ("/reports/", None, Some("../reports")),
            ("/reports.html/", None, Some("../reports.html")),
            ("/", None, None),
            ("//", None, None),
            ("/buyer//", None, None),
            ("/nope/", None, None),
            ("/static/kefu.css/", None, None),
            ("/buyer", None, None),
        ];
        for &(path, query, want) in cases {
            assert_eq!(
                slash_redirect(path, query).as_deref(),
                want,
                "{path} {query:?}"
            );
        }
    }

    /// Every file a page links to must be embedded, and nothing may be
    /// loaded from another host (the pages must work offline).
    #[test]
    fn pages_link_only_embedded_local_files() {
        let link = regex::Regex::new(r#"(?:src|href)="([^"]+)""#).unwrap();
        for page in ["/", "/buyer", "/reports"] {
            let html = std::str::from_utf8(asset(page).unwrap().body).unwrap();
            let mut n = 0;
            for cap in link.captures_iter(html) {
                let url = &cap[1];
                // Relative to the page, so a proxy may serve kefu under a
                // sub-path (`/kefu/`): no leading `/`, no scheme or host.
                assert!(
                    url.starts_with("static/") && !url.contains(".."),
                    "{page} links to {url}"
                );
                assert!(
                    asset(&format!("/{url}")).is_some(),
                    "{page} links to {url}, which is not embedded"
                );
                n += 1;
            }
            assert!(n >= 3, "{page}: expected the css and scripts to be linked");
        }
        for p in paths() {
            let body = std::str::from_utf8(asset(&p).unwrap().body).unwrap();
            // The SVG namespace is a name, not something loaded.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(!body.contains("http://"), "{p} refers to http://");
            assert!(!body.contains("https://"), "{p} refers to https://");
        }
    }
}
