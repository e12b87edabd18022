//! The web console at `/console`: static files compiled into the binary (`console/` at
//! the repository root), served with a strict Content-Security-Policy. The pages act only
//! through the documented API (HTTP and the WebSocket protocol) with the credentials the
//! user types in; this module holds no rule and sees no credential.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{Code, Error};

/// Every file of the console: name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
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

/// The console's routes (none when `http.console` is false: `/console` is then 404).
pub(super) fn routes<S: Clone + Send + Sync + 'static>(enabled: bool) -> Router<S> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|headers: HeaderMap| async move { file("index.html", &headers) }))
        .route(
            "/console/{file}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move { file(&name, &headers) }),
        )
}

/// A strong validator of a file's bytes (FNV-1a, 64 bits): reloads answer 304.
fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

fn file(name: &str, headers: &HeaderMap) -> Response {
    let Some((_, content_type, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return Error::new(Code::NotFound, format!("the console has no file {name:?}")).into_response();
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
        for (name, content_type, _) in FILES {
            let response = file(name, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], *content_type);
            assert!(response.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        assert_eq!(file("../Cargo.toml", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_matching_etag_answers_not_modified() {
        let tag = etag(FILES[0].2);
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).expect("tag"));
        assert_eq!(file(FILES[0].0, &headers).status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn the_index_loads_no_inline_script_and_nothing_from_elsewhere() {
        let html = std::str::from_utf8(FILES[0].2).expect("utf8");
        assert!(!html.contains("<script>"), "inline scripts are refused by the CSP");
        assert!(!html.contains("http://") && !html.contains("https://"), "no CDN");
    }
}
