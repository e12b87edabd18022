//! Pages streamhub serves: the web console at `/console` (`console/` at the repository
//! root) and the example chat at `/chat` (`examples/chat/`). Static files compiled into the
//! binary, served with a strict Content-Security-Policy. The pages act only through the
//! documented API (HTTP and the WebSocket protocol) with the credentials the user gives
//! them; this module holds no rule and sees no credential.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::request::Routes;

use crate::error::{Code, Error};

/// One page set: where it is served, and its files (name, content type, bytes; the first
/// is the index).
pub(super) struct Site {
    pub prefix: &'static str,
    pub files: &'static [(&'static str, &'static str, &'static [u8])],
}

pub(super) const CONSOLE: Site = Site { prefix: "/console", files: CONSOLE_FILES };
pub(super) const CHAT: Site = Site { prefix: "/chat", files: CHAT_FILES };

const CHAT_FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("../../examples/chat/index.html")),
    ("chat.js", "text/javascript; charset=utf-8", include_bytes!("../../examples/chat/chat.js")),
    ("chat.css", "text/css; charset=utf-8", include_bytes!("../../examples/chat/chat.css")),
];

const CONSOLE_FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("../../console/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../../console/api.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_bytes!("../../console/charts.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../console/style.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../console/favicon.svg")),
];

/// Scripts, styles and images only from this node; API calls and the WebSocket only to
/// it; no frames, no plugins, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `routes` with a site's routes (none when it is not `enabled`: its paths are then 404).
pub(super) fn routes(routes: Routes, site: &'static Site, enabled: bool) -> Routes {
    if !enabled {
        return routes;
    }
    let prefix = site.prefix;
    routes
        .route(prefix, get(move || async move { Redirect::permanent(&format!("{prefix}/")) }))
        .route(
            &format!("{prefix}/"),
            get(move |headers: HeaderMap| async move { file(site, site.files[0].0, &headers) }),
        )
        .route(
            &format!("{prefix}/{{file}}"),
            get(move |Path(name): Path<String>, headers: HeaderMap| async move { file(site, &name, &headers) }),
        )
}

/// A strong validator of a file's bytes (FNV-1a, 64 bits): reloads answer 304.
fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

fn file(site: &Site, name: &str, headers: &HeaderMap) -> Response {
    let Some((_, content_type, bytes)) = site.files.iter().find(|(n, _, _)| *n == name) else {
        return Error::new(Code::NotFound, format!("{} has no file {name:?}", site.prefix)).into_response();
    };
    let tag = etag(bytes);
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { (StatusCode::OK, *bytes).into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated on every load (a new binary serves new files at once), cheap with the tag.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_and_unknown_names_are_404() {
        for site in [&CONSOLE, &CHAT] {
            for (name, content_type, _) in site.files {
                let response = file(site, name, &HeaderMap::new());
                assert_eq!(response.status(), StatusCode::OK, "{name}");
                assert_eq!(response.headers()[header::CONTENT_TYPE], *content_type);
                assert!(response.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            }
            assert_eq!(file(site, "../Cargo.toml", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        }
    }

    #[test]
    fn a_matching_etag_answers_not_modified() {
        let tag = etag(CONSOLE.files[0].2);
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).expect("tag"));
        assert_eq!(file(&CONSOLE, CONSOLE.files[0].0, &headers).status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn the_index_loads_no_inline_script_and_nothing_from_elsewhere() {
        for site in [&CONSOLE, &CHAT] {
            let html = std::str::from_utf8(site.files[0].2).expect("utf8");
            assert!(!html.contains("<script>"), "inline scripts are refused by the CSP");
            assert!(!html.contains("http://") && !html.contains("https://"), "no CDN");
        }
    }
}
