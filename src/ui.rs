//! The operator console at `/ui`: hand-written ES modules and CSS under
//! `ui/`, embedded in the binary at compile time (no build step, no CDN).
//!
//! Every path under `/ui` answers the same page (the console routes in the
//! browser, so every page has a URL that can be linked and reloaded), except
//! `/ui/assets/{version}/{file}`: the scripts and styles. `{version}` is a
//! hash of every asset, so they are cached for good and a new binary's
//! console is fetched afresh. The console calls the public API with the
//! token its user gives it: these routes need none.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::api::error::problem;

/// What the console's pages may load: their own scripts, styles and API,
/// nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("form.js", JS),
    asset!("live.js", JS),
    asset!("pages/overview.js", JS),
    asset!("pages/resources.js", JS),
    asset!("pages/resource.js", JS),
    asset!("pages/operation.js", JS),
    asset!("pages/forms.js", JS),
    asset!("pages/jobs.js", JS),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// A hash of every asset: their URLs' version.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    for asset in ASSETS {
        hash.update(asset.name.as_bytes());
        hash.update([0]);
        hash.update(asset.body);
    }
    hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
});

/// The page every console URL answers, pointing at this build's assets.
static SHELL: LazyLock<String> = LazyLock::new(|| {
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/index.html"))
        .replace("{{ASSETS}}", &format!("/ui/assets/{}", *VERSION))
});

/// The console's routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(shell))
        .route("/ui/", get(shell))
        .route("/ui/assets/{version}/{*file}", get(asset))
        .route("/ui/{*page}", get(shell))
}

fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

async fn shell() -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SHELL.as_str(),
    )
        .into_response();
    secure(&mut response);
    response
}

async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return problem(
            StatusCode::NOT_FOUND,
            Some("no such file under /ui/assets".into()),
            Vec::new(),
        );
    };
    // An old page's URL gets today's file, not to be kept.
    let cache = if version == *VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        asset.body,
    )
        .into_response();
    secure(&mut response);
    response
}
