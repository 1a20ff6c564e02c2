//! The web UI: the files of `assets/`, embedded in the binary with rust-embed and served by
//! the coordinator. All the data the pages show comes from the JSON API (`/v2/…`).

use bytes::Bytes;
use rust_embed::RustEmbed;

use crate::net::server::{self, Body};

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// The asset at `path` ("" is the page itself), if there is one.
pub(super) fn asset(path: &str) -> Option<hyper::Response<Body>> {
    let path = if path.is_empty() { "index.html" } else { path };
    let file = Assets::get(path)?;
    Some(server::bytes(content_type(path), Bytes::from(file.data.into_owned())))
}
