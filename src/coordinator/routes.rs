//! The coordinator's routes, parsed into [`Route`] before dispatch (and tested without
//! sockets), and the dispatch to their handlers.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::auth::{self, Caller};
use super::state::State;
use super::{accounts, audit, browser, files, names, peers, stats, uploads, web};
use crate::net::server::{self, ApiError, ApiResult, RemoteAddr, ok, read_json};
use crate::proto::*;

/// Small JSON bodies: heartbeats, plans, browser commits.
const SMALL_BODY: usize = 64 * 1024;
/// A batch of segments: at most `LAYOUT_SEGMENTS` entries with their placements and
/// receipts (about 3 MB at 20 shards a segment).
const BATCH_BODY: usize = 8 << 20;
/// Namespace puts and deletes: a value of [`MAX_NAME_VALUE`] in base64, or a thousand keys.
const NAME_BODY: usize = MAX_NAME_VALUE * 4 / 3 + 2 * MAX_NAME_KEY + 1024;

/// Every request the coordinator answers (besides `/healthz`, which the server loop answers).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    Info,
    Stats,
    Heartbeat,
    Peers,
    Exit,
    Audits {
        peer: Option<String>,
        limit: usize,
    },
    Plan,
    Layout(String),
    Segments(String),
    UploadStatus(String),
    Commit(String),
    Files,
    File(String, files::Window),
    Page(String, u32),
    Manifest(String),
    Delete(String),
    BrowserStart,
    BrowserSegment(String, usize),
    BrowserCommit(String),
    SealedSegment(String, u32),
    Account,
    Admin,
    NodeDamage,
    FileDamage(String),
    /// The account's private namespace: put, get, list, delete.
    Names(NameOp),
    /// A file of the web UI ("" is the page itself).
    Asset(String),
}

/// An operation on an account's namespace (`/v2/names/{op}`).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum NameOp {
    Put,
    Get,
    List,
    Delete,
}

/// Who may call a route.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone who can reach the coordinator: the network's public state.
    Public,
    /// A node, with a message signed by its key in the body.
    Node,
    /// An admitted account, with the request signed in its header.
    Account,
    /// The coordinator's operator: a message signed with the coordinator's own key.
    Operator,
}

impl Route {
    /// The route's name in metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Route::Metrics => "/metrics",
            Route::Info => "/v2/info",
            Route::Stats => "/v2/stats",
            Route::Heartbeat => "/v2/heartbeat",
            Route::Peers => "/v2/peers",
            Route::Exit => "/v2/peers/exit",
            Route::Audits { .. } => "/v2/audits",
            Route::Plan => "/v2/uploads",
            Route::Commit(_) => "/v2/uploads/:id/commit",
            Route::Layout(_) => "/v2/uploads/:id/layout",
            Route::Segments(_) => "/v2/uploads/:id/segments",
            Route::UploadStatus(_) => "/v2/uploads/:id",
            Route::Page(..) => "/v2/files/:id/pages/:p",
            Route::Files => "/v2/files",
            Route::File(..) | Route::Delete(_) => "/v2/files/:id",
            Route::Manifest(_) => "/v2/files/:id/manifest",
            Route::BrowserStart => "/v2/browser/uploads",
            Route::BrowserSegment(..) => "/v2/browser/uploads/:id/segments/:i",
            Route::BrowserCommit(_) => "/v2/browser/uploads/:id/commit",
            Route::SealedSegment(..) => "/v2/files/:id/segments/:i",
            Route::Account => "/v2/account",
            Route::NodeDamage => "/v2/peers/damage",
            Route::FileDamage(_) => "/v2/files/:id/damage",
            Route::Admin => "/v2/admin",
            Route::Names(NameOp::Put) => "/v2/names/put",
            Route::Names(NameOp::Get) => "/v2/names/get",
            Route::Names(NameOp::List) => "/v2/names/list",
            Route::Names(NameOp::Delete) => "/v2/names/delete",
            Route::Asset(_) => "/ (web UI)",
        }
    }

    pub(super) fn access(&self) -> Access {
        match self {
            Route::Metrics | Route::Info | Route::Stats | Route::Peers | Route::Audits { .. } | Route::Asset(_) => {
                Access::Public
            }
            Route::Heartbeat | Route::Exit | Route::NodeDamage => Access::Node,
            Route::Admin => Access::Operator,
            _ => Access::Account,
        }
    }
}

impl Route {
    /// The route of a request, `Err` with the answer for paths that name none.
    pub(super) fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
        let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let index = |i: &str| i.parse::<u32>().map_err(|_| ApiError::bad_request("a segment index is a number"));
        Ok(match (method, p.as_slice()) {
            (&Method::GET, ["metrics"]) => Route::Metrics,
            (&Method::GET, ["v2", "info"]) => Route::Info,
            (&Method::GET, ["v2", "stats"]) => Route::Stats,
            (&Method::GET, ["v2", "account"]) => Route::Account,
            (&Method::POST, ["v2", "admin"]) => Route::Admin,
            (&Method::POST, ["v2", "heartbeat"]) => Route::Heartbeat,
            (&Method::GET, ["v2", "peers"]) => Route::Peers,
            (&Method::POST, ["v2", "peers", "exit"]) => Route::Exit,
            (&Method::POST, ["v2", "peers", "damage"]) => Route::NodeDamage,
            (&Method::POST, ["v2", "files", id, "damage"]) => Route::FileDamage(id.to_string()),
            (&Method::GET, ["v2", "audits"]) => {
                let q = server::parse_query(query);
                let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                Route::Audits { peer: q.get("peer").cloned(), limit }
            }
            (&Method::POST, ["v2", "names", op]) => Route::Names(match *op {
                "put" => NameOp::Put,
                "get" => NameOp::Get,
                "list" => NameOp::List,
                "delete" => NameOp::Delete,
                _ => return Err(ApiError::not_found(format!("no route {method} {path}"))),
            }),
            (&Method::POST, ["v2", "uploads"]) => Route::Plan,
            (&Method::POST, ["v2", "uploads", id, "commit"]) => Route::Commit(id.to_string()),
            (&Method::POST, ["v2", "uploads", id, "layout"]) => Route::Layout(id.to_string()),
            (&Method::POST, ["v2", "uploads", id, "segments"]) => Route::Segments(id.to_string()),
            (&Method::GET, ["v2", "uploads", id]) => Route::UploadStatus(id.to_string()),
            (&Method::GET, ["v2", "files", id, "pages", p]) => Route::Page(id.to_string(), index(p)?),
            (&Method::GET, ["v2", "files"]) => Route::Files,
            (&Method::GET, ["v2", "files", id]) => {
                let q = server::parse_query(query);
                let number = |k: &str, default: u32| q.get(k).map_or(Ok(default), |v| index(v));
                let totals = match q.get("totals").map(|v| v.as_str()) {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!("totals must be true or false, not {other:?}")));
                    }
                };
                let w = files::Window { first: number("first", 0)?, count: number("count", VIEW_SEGMENTS)?, totals };
                Route::File(id.to_string(), w)
            }
            (&Method::DELETE, ["v2", "files", id]) => Route::Delete(id.to_string()),
            (&Method::GET, ["v2", "files", id, "manifest"]) => Route::Manifest(id.to_string()),
            (&Method::GET, ["v2", "files", id, "segments", i]) => Route::SealedSegment(id.to_string(), index(i)?),
            (&Method::POST, ["v2", "browser", "uploads"]) => Route::BrowserStart,
            (&Method::PUT, ["v2", "browser", "uploads", id, "segments", i]) => {
                Route::BrowserSegment(id.to_string(), index(i)? as usize)
            }
            (&Method::POST, ["v2", "browser", "uploads", id, "commit"]) => Route::BrowserCommit(id.to_string()),
            (&Method::GET, []) => Route::Asset(String::new()),
            (&Method::GET, [file]) if *file != "v2" => Route::Asset(file.to_string()),
            _ => return Err(ApiError::not_found(format!("no route {method} {path}"))),
        })
    }
}

/// The metrics label of a request: its route's, or `other`.
pub(super) fn label(method: &Method, path: &str) -> &'static str {
    Route::parse(method, path, None).map_or("other", |r| r.label())
}

pub(super) async fn route(s: Arc<State>, req: Request<Incoming>) -> ApiResult {
    let route = Route::parse(req.method(), req.uri().path(), req.uri().query())?;
    let remote = req.extensions().get::<RemoteAddr>().map(|r| r.0.ip());
    match route.access() {
        Access::Public => public(&s, route),
        Access::Node => match route {
            Route::Heartbeat => peers::heartbeat(&s, read_json(req, SMALL_BODY).await?, remote).await,
            // Read at the bound a report can need, from anyone: the signature is inside.
            Route::NodeDamage => peers::damage(&s, read_json(req, DAMAGE_BODY).await?),
            _ => peers::exit(&s, read_json(req, SMALL_BODY).await?),
        },
        Access::Operator => accounts::admin(&s, read_json(req, SMALL_BODY).await?).await,
        Access::Account => {
            let (parts, body) = req.into_parts();
            let caller = auth::authenticate(&s, &parts, remote)?;
            match route {
                Route::Plan | Route::BrowserStart => s.limits.plan(&caller.id, remote)?,
                Route::Layout(_) | Route::Segments(_) => s.limits.upload_step(&caller.id)?,
                _ => {}
            }
            for_account(&s, &caller, route, body).await
        }
    }
}

fn public(s: &State, route: Route) -> ApiResult {
    match route {
        Route::Metrics => {
            stats::refresh_gauges(s);
            Ok(server::metrics_text(&s.metrics))
        }
        Route::Info => ok(&accounts::info(s)),
        Route::Stats => ok(&stats::compute(s)),
        Route::Peers => ok(&peers::views(s)),
        Route::Audits { peer, limit } => ok(&audit::history(s, peer.as_deref(), limit)),
        Route::Asset(path) => web::asset(&path).ok_or_else(|| ApiError::not_found(format!("no page {path}"))),
        other => Err(ApiError::internal(Misrouted(other))),
    }
}

/// A route dispatched to the wrong access class: a bug, answered as one.
#[derive(Debug, thiserror::Error)]
#[error("route {0:?} reached the wrong handler")]
struct Misrouted(Route);

async fn for_account(s: &State, caller: &Caller, route: Route, body: Incoming) -> ApiResult {
    match route {
        Route::Account => {
            caller.no_body(body).await?;
            ok(&accounts::view(s, caller)?)
        }
        Route::Plan => ok(&uploads::plan(s, caller, caller.json(body, SMALL_BODY).await?).await?),
        Route::Commit(id) => {
            // The upload named in the path first: a body is read only for the caller's own
            // pending upload, and only as large as its plan's segments can need.
            let limit = uploads::commit_body_limit(&uploads::pending(s, caller, &id)?);
            uploads::commit(s, caller, &id, caller.json(body, limit).await?).await
        }
        Route::Layout(id) => ok(&uploads::layout(s, caller, &id, caller.json(body, SMALL_BODY).await?).await?),
        Route::Segments(id) => uploads::segments(s, caller, &id, caller.json(body, BATCH_BODY).await?).await,
        Route::UploadStatus(id) => {
            caller.no_body(body).await?;
            ok(&uploads::status(s, caller, &id)?)
        }
        Route::Page(id, p) => {
            caller.no_body(body).await?;
            files::page(s, &id, p)
        }
        Route::Files => {
            caller.no_body(body).await?;
            ok(&files::list(s, caller)?)
        }
        Route::File(id, w) => {
            caller.no_body(body).await?;
            ok(&files::view(s, caller, &id, w)?)
        }
        Route::Manifest(id) => {
            caller.no_body(body).await?;
            files::manifest(s, &id)
        }
        Route::Delete(id) => files::delete(s, caller, &id, caller.json(body, SMALL_BODY).await?).await,
        Route::BrowserStart => browser::start(s, caller, caller.json(body, SMALL_BODY).await?).await,
        Route::BrowserSegment(id, i) => browser::put_segment(s, caller, &id, i, body).await,
        Route::BrowserCommit(id) => browser::commit(s, caller, &id, caller.json(body, SMALL_BODY).await?).await,
        Route::FileDamage(id) => files::damage(s, &id, caller.json(body, SMALL_BODY).await?),
        Route::Names(op) => {
            s.limits.names(&caller.id)?;
            match op {
                NameOp::Put => ok(&names::put(s, caller, caller.json(body, NAME_BODY).await?)?),
                NameOp::Get => ok(&names::get(s, caller, caller.json(body, SMALL_BODY).await?)?),
                NameOp::List => ok(&names::list(s, caller, caller.json(body, SMALL_BODY).await?)?),
                NameOp::Delete => ok(&names::delete(s, caller, caller.json(body, NAME_BODY).await?)?),
            }
        }
        Route::SealedSegment(id, i) => {
            caller.no_body(body).await?;
            browser::sealed_segment(s, caller, &id, i).await
        }
        other => Err(ApiError::internal(Misrouted(other))),
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
        assert_eq!(parse(Method::POST, "/v2/uploads/u1/commit").unwrap(), Route::Commit("u1".into()));
        assert_eq!(parse(Method::GET, "/v2/files/f/segments/3").unwrap(), Route::SealedSegment("f".into(), 3));
        assert_eq!(
            parse(Method::PUT, "/v2/browser/uploads/u/segments/0").unwrap(),
            Route::BrowserSegment("u".into(), 0)
        );
        assert_eq!(
            parse(Method::GET, "/v2/audits?peer=p&limit=5").unwrap(),
            Route::Audits { peer: Some("p".into()), limit: 5 }
        );
        assert_eq!(parse(Method::GET, "/v2/audits").unwrap(), Route::Audits { peer: None, limit: 100 });
        assert_eq!(parse(Method::POST, "/v2/names/list").unwrap(), Route::Names(NameOp::List));
        assert_eq!(parse(Method::POST, "/v2/names/nope").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(parse(Method::POST, "/v2/names/put").unwrap().access(), Access::Account);
        assert_eq!(parse(Method::GET, "/").unwrap(), Route::Asset(String::new()));
        assert_eq!(parse(Method::GET, "/app.js").unwrap(), Route::Asset("app.js".into()));
        assert_eq!(parse(Method::GET, "/v2/files/f/segments/x").unwrap_err().status, StatusCode::BAD_REQUEST);
        let window = |first, count, totals| Route::File("f".into(), files::Window { first, count, totals });
        assert_eq!(parse(Method::GET, "/v2/files/f").unwrap(), window(0, VIEW_SEGMENTS, true));
        assert_eq!(parse(Method::GET, "/v2/files/f?first=9&count=2&totals=false").unwrap(), window(9, 2, false));
        assert_eq!(parse(Method::GET, "/v2/files/f?totals=maybe").unwrap_err().status, StatusCode::BAD_REQUEST);
        for (m, p) in [(Method::GET, "/v2"), (Method::POST, "/v2/files"), (Method::GET, "/v2/nope/x/y")] {
            assert_eq!(parse(m, p).unwrap_err().status, StatusCode::NOT_FOUND, "{p}");
        }
    }
}
