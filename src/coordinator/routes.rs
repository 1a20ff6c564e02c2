//! The coordinator's routes, parsed into [`Route`] before dispatch (and tested without
//! sockets), and the dispatch to their handlers.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::state::State;
use super::{audit, browser, files, peers, stats, uploads, web};
use crate::net::server::{self, ApiError, ApiResult, ok, read_json};
use crate::proto::*;

/// Small JSON bodies: heartbeats, plans, browser commits.
const SMALL_BODY: usize = 64 * 1024;

/// Every request the coordinator answers (besides `/healthz`, which the server loop answers).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    Stats,
    Heartbeat,
    Peers,
    Exit,
    Audits {
        peer: Option<String>,
        limit: usize,
    },
    Plan,
    Commit(String),
    Files,
    File(String),
    Manifest(String),
    Delete(String),
    BrowserStart,
    BrowserSegment(String, usize),
    BrowserCommit(String),
    SealedSegment(String, u32),
    /// A file of the web UI ("" is the page itself).
    Asset(String),
}

impl Route {
    /// The route of a request, `Err` with the answer for paths that name none.
    pub(super) fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
        let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let index = |i: &str| i.parse::<u32>().map_err(|_| ApiError::bad_request("a segment index is a number"));
        Ok(match (method, p.as_slice()) {
            (&Method::GET, ["metrics"]) => Route::Metrics,
            (&Method::GET, ["v1", "stats"]) => Route::Stats,
            (&Method::POST, ["v1", "heartbeat"]) => Route::Heartbeat,
            (&Method::GET, ["v1", "peers"]) => Route::Peers,
            (&Method::POST, ["v1", "peers", "exit"]) => Route::Exit,
            (&Method::GET, ["v1", "audits"]) => {
                let q = server::parse_query(query);
                let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                Route::Audits { peer: q.get("peer").cloned(), limit }
            }
            (&Method::POST, ["v1", "uploads"]) => Route::Plan,
            (&Method::POST, ["v1", "uploads", id, "commit"]) => Route::Commit(id.to_string()),
            (&Method::GET, ["v1", "files"]) => Route::Files,
            (&Method::GET, ["v1", "files", id]) => Route::File(id.to_string()),
            (&Method::DELETE, ["v1", "files", id]) => Route::Delete(id.to_string()),
            (&Method::GET, ["v1", "files", id, "manifest"]) => Route::Manifest(id.to_string()),
            (&Method::GET, ["v1", "files", id, "segments", i]) => Route::SealedSegment(id.to_string(), index(i)?),
            (&Method::POST, ["v1", "browser", "uploads"]) => Route::BrowserStart,
            (&Method::PUT, ["v1", "browser", "uploads", id, "segments", i]) => {
                Route::BrowserSegment(id.to_string(), index(i)? as usize)
            }
            (&Method::POST, ["v1", "browser", "uploads", id, "commit"]) => Route::BrowserCommit(id.to_string()),
            (&Method::GET, []) => Route::Asset(String::new()),
            (&Method::GET, [file]) if *file != "v1" => Route::Asset(file.to_string()),
            _ => return Err(ApiError::not_found(format!("no route {method} {path}"))),
        })
    }
}

pub(super) async fn route(s: Arc<State>, req: Request<Incoming>) -> ApiResult {
    match Route::parse(req.method(), req.uri().path(), req.uri().query())? {
        Route::Metrics => {
            stats::refresh_gauges(&s);
            Ok(server::metrics_text(&s.metrics))
        }
        Route::Stats => ok(&stats::compute(&s)),
        Route::Heartbeat => peers::heartbeat(&s, read_json(req, SMALL_BODY).await?),
        Route::Peers => ok(&peers::views(&s)),
        Route::Exit => peers::exit(&s, read_json(req, SMALL_BODY).await?),
        Route::Audits { peer, limit } => ok(&audit::history(&s, peer.as_deref(), limit)),
        Route::Plan => ok(&uploads::plan(&s, read_json(req, SMALL_BODY).await?)?),
        Route::Commit(id) => uploads::commit(&s, &id, read_json(req, MAX_JSON_BODY).await?).await,
        Route::Files => ok(&files::list(&s)),
        Route::File(id) => ok(&files::view(&s, &id)?),
        Route::Manifest(id) => files::manifest(&s, &id),
        Route::Delete(id) => {
            let token = req.headers().get(OWNER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            files::delete(&s, &id, &token).await
        }
        Route::BrowserStart => browser::start(&s, read_json(req, SMALL_BODY).await?),
        Route::BrowserSegment(id, i) => browser::put_segment(&s, &id, i, req).await,
        Route::BrowserCommit(id) => browser::commit(&s, &id, read_json(req, SMALL_BODY).await?).await,
        Route::SealedSegment(id, i) => browser::sealed_segment(&s, &id, i).await,
        Route::Asset(path) => web::asset(&path).ok_or_else(|| ApiError::not_found(format!("no page {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    fn parse(m: Method, path: &str) -> Result<Route, ApiError> {
        let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
        Route::parse(&m, path, query)
    }

    #[test]
    fn routes_parse_before_dispatch() {
        assert_eq!(parse(Method::POST, "/v1/uploads/u1/commit").unwrap(), Route::Commit("u1".into()));
        assert_eq!(parse(Method::GET, "/v1/files/f/segments/3").unwrap(), Route::SealedSegment("f".into(), 3));
        assert_eq!(
            parse(Method::PUT, "/v1/browser/uploads/u/segments/0").unwrap(),
            Route::BrowserSegment("u".into(), 0)
        );
        assert_eq!(
            parse(Method::GET, "/v1/audits?peer=p&limit=5").unwrap(),
            Route::Audits { peer: Some("p".into()), limit: 5 }
        );
        assert_eq!(parse(Method::GET, "/v1/audits").unwrap(), Route::Audits { peer: None, limit: 100 });
        assert_eq!(parse(Method::GET, "/").unwrap(), Route::Asset(String::new()));
        assert_eq!(parse(Method::GET, "/app.js").unwrap(), Route::Asset("app.js".into()));
        assert_eq!(parse(Method::GET, "/v1/files/f/segments/x").unwrap_err().status, StatusCode::BAD_REQUEST);
        for (m, p) in [(Method::GET, "/v1"), (Method::POST, "/v1/files"), (Method::GET, "/v1/nope/x/y")] {
            assert_eq!(parse(m, p).unwrap_err().status, StatusCode::NOT_FOUND, "{p}");
        }
    }
}
