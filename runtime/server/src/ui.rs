//! The `/ui` page: plain HTML, CSS and JavaScript with the vendored uPlot
//! (1.6.32, MIT; runtime/server/ui/vendor/uplot), embedded in the binary.
//! The files hold no data and need no token; the page reads the admin API
//! with the admin token the user gives it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

const FILES: [(&str, &str, &str); 5] = [
    ("", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../ui/app.css")),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../ui/vendor/uplot/uPlot.min.css"),
    ),
];

/// The file at `/ui/{rest}`, if there is one.
pub(crate) fn file(rest: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, body) = FILES.iter().find(|(name, _, _)| *name == rest)?;
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Only its own files and the admin API; no inline script, no framing.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(r)
}
