//! The console's static files, compiled into the binary: htmx (from its npm package,
//! committed under `api/assets/htmx` with its licence) and the console's stylesheet.
//! Nothing is fetched at run time, by the server or the browser.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AppState;

const HTMX: &[u8] = include_bytes!("../../assets/htmx/htmx.min.js");
const HTMX_LICENSE: &[u8] = include_bytes!("../../assets/htmx/LICENSE");
const CSS: &[u8] = include_bytes!("../../assets/console.css");

/// htmx's version, in the asset's URL so a new one is never served from a stale cache.
pub const HTMX_PATH: &str = "/console/assets/htmx-2.0.11.min.js";
pub const CSS_PATH: &str = "/console/assets/console.css";

fn asset(content_type: &'static str, body: &'static [u8]) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            HTMX_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", HTMX) }),
        )
        .route(
            "/console/assets/htmx-LICENSE.txt",
            get(|| async { asset("text/plain; charset=utf-8", HTMX_LICENSE) }),
        )
        .route(
            CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
}
