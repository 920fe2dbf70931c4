//! Cluster and server information endpoints: `/version`, `/health`, `/v2/members`,
//! `/v2/machines`, `/v2/stats/*`, with etcd 3.4's shapes.

use super::{AppState, text_error};
use crate::cluster::Member;
use crate::engine::MemberError;
use crate::json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, Response, StatusCode, header};
use axum::routing::any;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

/// The etcd server version keel-store reports, so clients pick the right API paths.
pub const ETCD_SERVER_VERSION: &str = "3.4.23";
/// The cluster version reported next to it.
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/version", any(version))
        .route("/health", any(health))
        .route("/v2/members", any(members))
        .route("/v2/members/", any(members))
        .route("/v2/members/{id}", any(member))
        .route("/v2/machines", any(machines))
        .route("/v2/stats/self", any(stats_self))
        .route("/v2/stats/store", any(stats_store))
        .route("/v2/stats/leader", any(stats_leader))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// JSON with Go `json.Marshal` bytes; `line` adds the encoder's newline.
fn json_ok<T: Serialize>(
    status: StatusCode,
    v: &T,
    line: bool,
    cluster_id: Option<u64>,
) -> Response<Body> {
    let body = if line {
        json::to_vec_line(v)
    } else {
        json::to_vec(v)
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(id) = cluster_id {
        b = b.header("x-etcd-cluster-id", format!("{id:x}"));
    }
    b.body(Body::from(body)).unwrap_or_default()
}

#[derive(Serialize)]
struct Versions {
    etcdserver: &'static str,
    etcdcluster: &'static str,
}

async fn version(method: Method) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    json_ok(
        StatusCode::OK,
        &Versions {
            etcdserver: ETCD_SERVER_VERSION,
            etcdcluster: ETCD_CLUSTER_VERSION,
        },
        false,
        None,
    )
}

#[derive(Serialize)]
struct Health {
    health: &'static str,
}

async fn health(State(app): State<AppState>, method: Method) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    // As etcd: unhealthy on a failed WAL, without a leader, or when a linearizable
    // read cannot complete within a second.
    if app.engine.failure().is_some() || app.engine.status().leader == 0 {
        return health_response(StatusCode::SERVICE_UNAVAILABLE, "false");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(1), app.engine.read_index()).await {
        Ok(Ok(())) => health_response(StatusCode::OK, "true"),
        _ => health_response(StatusCode::SERVICE_UNAVAILABLE, "false"),
    }
}

/// etcd writes `/health` without a Content-Type, so Go labels it as text.
fn health_response(status: StatusCode, health: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(json::to_vec(&Health { health })))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct MemberJson<'a> {
    id: String,
    name: &'a str,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "clientURLs")]
    client_urls: &'a [String],
}

impl<'a> From<&'a Member> for MemberJson<'a> {
    fn from(m: &'a Member) -> Self {
        MemberJson {
            id: format!("{:x}", m.id),
            name: &m.name,
            peer_urls: &m.peer_urls,
            client_urls: &m.client_urls,
        }
    }
}

#[derive(Serialize)]
struct MemberCollection<'a> {
    members: Vec<MemberJson<'a>>,
}

#[derive(Serialize)]
struct HttpError<'a> {
    message: &'a str,
}

fn member_error(status: StatusCode, message: &str, cluster_id: u64) -> Response<Body> {
    json_ok(status, &HttpError { message }, false, Some(cluster_id))
}

#[derive(serde::Deserialize)]
struct MemberCreate {
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
}

/// etcd's `types.NewURLs` checks of a peer URL.
fn check_peer_url(u: &str) -> Result<(), String> {
    let Some((scheme, rest)) = u.split_once("://") else {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {u}"
        ));
    };
    if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {u}"
        ));
    }
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    if !path.is_empty() {
        return Err(format!("URL must not contain a path: {u}"));
    }
    if host
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.is_empty())
    {
        return Err(format!(
            r#"URL address does not have the form "host:port": {u}"#
        ));
    }
    Ok(())
}

async fn members(
    State(app): State<AppState>,
    method: Method,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let cid = app.engine.cluster_id();
    match method {
        Method::GET => {
            let members = app.engine.members();
            let mc = MemberCollection {
                members: members.list().map(MemberJson::from).collect(),
            };
            json_ok(StatusCode::OK, &mc, true, Some(cid))
        }
        Method::POST => {
            let req: MemberCreate = match member_body(&headers, &body) {
                Ok(r) => r,
                Err(resp) => return resp(cid),
            };
            match app.engine.add_member(req.peer_urls, false).await {
                Ok(m) => json_ok(StatusCode::CREATED, &MemberJson::from(&m), true, Some(cid)),
                Err(e) => member_change_error(&e, cid),
            }
        }
        Method::DELETE | Method::PUT => member_error(StatusCode::NOT_FOUND, "Not found", cid),
        _ => method_not_allowed("GET, POST, DELETE, PUT"),
    }
}

type ErrorResponse = Box<dyn FnOnce(u64) -> Response<Body> + Send>;

/// The JSON body of a member POST or PUT, checked as etcd checks it.
fn member_body(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<MemberCreate, ErrorResponse> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(Box::new(move |cid| {
            member_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("Bad Content-Type {ct}, accept application/json"),
                cid,
            )
        }));
    }
    let req: MemberCreate = serde_json::from_slice(body).map_err(|e| -> ErrorResponse {
        let msg = e.to_string();
        Box::new(move |cid| member_error(StatusCode::BAD_REQUEST, &msg, cid))
    })?;
    if let Some(msg) = req.peer_urls.iter().find_map(|u| check_peer_url(u).err()) {
        return Err(Box::new(move |cid| {
            member_error(StatusCode::BAD_REQUEST, &msg, cid)
        }));
    }
    Ok(req)
}

/// etcd's statuses for refused membership changes.
fn member_change_error(e: &MemberError, cid: u64) -> Response<Body> {
    match e {
        MemberError::PeerUrlExists => {
            member_error(StatusCode::CONFLICT, "membership: peerURL exists", cid)
        }
        MemberError::NotFound(id) => member_error(
            StatusCode::NOT_FOUND,
            &format!("No such member: {id:x}"),
            cid,
        ),
        MemberError::NotLearner | MemberError::Engine(_) => {
            member_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), cid)
        }
    }
}

async fn member(
    State(app): State<AppState>,
    method: Method,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let cid = app.engine.cluster_id();
    match (method, id.as_str()) {
        (Method::GET, "leader") => {
            let leader = app.engine.status().leader;
            match app.engine.members().get(leader) {
                Some(m) => json_ok(StatusCode::OK, &MemberJson::from(m), true, Some(cid)),
                None => member_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "During leader election",
                    cid,
                ),
            }
        }
        (Method::GET, _) => member_error(StatusCode::NOT_FOUND, "Not found", cid),
        (method @ (Method::DELETE | Method::PUT), _) => {
            let Ok(n) = u64::from_str_radix(&id, 16) else {
                return member_error(StatusCode::NOT_FOUND, &format!("No such member: {id}"), cid);
            };
            let result = if method == Method::DELETE {
                app.engine.remove_member(n).await
            } else {
                match member_body(&headers, &body) {
                    Ok(req) => app.engine.update_member(n, req.peer_urls).await,
                    Err(resp) => return resp(cid),
                }
            };
            match result {
                Ok(()) => Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .header("x-etcd-cluster-id", format!("{cid:x}"))
                    .body(Body::empty())
                    .unwrap_or_default(),
                Err(e) => member_change_error(&e, cid),
            }
        }
        (Method::POST, _) => member_error(StatusCode::NOT_FOUND, "Not found", cid),
        _ => method_not_allowed("GET, POST, DELETE, PUT"),
    }
}

async fn machines(State(app): State<AppState>, method: Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let members = app.engine.members();
    let urls: Vec<&str> = members
        .list()
        .flat_map(|m| m.client_urls.iter().map(String::as_str))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(urls.join(", ")))
        .unwrap_or_default()
}

fn rfc3339(t: SystemTime) -> String {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    json::rfc3339_nano(nanos)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaderInfo {
    leader: String,
    uptime: String,
    start_time: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SelfStats {
    name: String,
    id: String,
    state: &'static str,
    start_time: String,
    leader_info: LeaderInfo,
    recv_append_request_cnt: u64,
    send_append_request_cnt: u64,
}

async fn stats_self(State(app): State<AppState>, method: Method) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let c = &app.cluster;
    let id = format!("{:x}", c.local.id);
    let status = app.engine.status();
    let s = SelfStats {
        name: c.local.name.clone(),
        id: id.clone(),
        state: if app.engine.is_leader() {
            "StateLeader"
        } else {
            "StateFollower"
        },
        start_time: rfc3339(c.start_time),
        leader_info: LeaderInfo {
            leader: format!("{:x}", status.leader),
            uptime: json::go_duration(c.start_time.elapsed().unwrap_or_default()),
            start_time: rfc3339(c.start_time),
        },
        recv_append_request_cnt: 0,
        send_append_request_cnt: 0,
    };
    json_ok(StatusCode::OK, &s, false, None)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoreStats {
    gets_success: u64,
    gets_fail: u64,
    sets_success: u64,
    sets_fail: u64,
    delete_success: u64,
    delete_fail: u64,
    update_success: u64,
    update_fail: u64,
    create_success: u64,
    create_fail: u64,
    compare_and_swap_success: u64,
    compare_and_swap_fail: u64,
    compare_and_delete_success: u64,
    compare_and_delete_fail: u64,
    expire_count: u64,
    watchers: u64,
}

async fn stats_store(State(app): State<AppState>, method: Method) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let state = app.engine.read();
    let s = &state.v2.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let out = StoreStats {
        gets_success: l(&s.gets_success),
        gets_fail: l(&s.gets_fail),
        sets_success: l(&s.sets_success),
        sets_fail: l(&s.sets_fail),
        delete_success: l(&s.delete_success),
        delete_fail: l(&s.delete_fail),
        update_success: l(&s.update_success),
        update_fail: l(&s.update_fail),
        create_success: l(&s.create_success),
        create_fail: l(&s.create_fail),
        compare_and_swap_success: l(&s.compare_and_swap_success),
        compare_and_swap_fail: l(&s.compare_and_swap_fail),
        compare_and_delete_success: l(&s.compare_and_delete_success),
        compare_and_delete_fail: l(&s.compare_and_delete_fail),
        expire_count: l(&s.expire_count),
        watchers: state.v2.hub.count() as u64,
    };
    json_ok(StatusCode::OK, &out, false, None)
}

#[derive(Serialize)]
struct LeaderStats {
    leader: String,
    followers: serde_json::Map<String, serde_json::Value>,
}

async fn stats_leader(State(app): State<AppState>, method: Method) -> Response<Body> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let s = LeaderStats {
        leader: format!("{:x}", app.engine.status().leader),
        followers: serde_json::Map::new(),
    };
    json_ok(StatusCode::OK, &s, false, None)
}
