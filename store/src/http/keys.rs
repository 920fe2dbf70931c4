//! `/v2/keys`: parameters parsed as etcd's `parseKeyRequest`, reads served from the state
//! machine, writes proposed to the engine, watches streamed from the watcher hub.

use super::form::Form;
use super::{AppState, text_error};
use crate::engine::command::{Command, Outcome, V2Method, V2Write};
use crate::engine::{Applied, Engine, EngineError};
use crate::json;
use crate::v2::error::code;
use crate::v2::{Action, Event, V2Error, Watcher};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use axum::routing::any;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

const KEYS_PREFIX: &str = "/v2/keys";
/// Go's `ParseForm` reads at most 10 MiB of body.
const MAX_FORM_BODY_BYTES: usize = 10 << 20;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/keys", any(keys))
        .route("/v2/keys/", any(keys))
        .route("/v2/keys/{*key}", any(keys))
}

/// Current wall-clock time in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A parsed `/v2/keys` request (etcd's `etcdserverpb.Request` plus the response flags).
#[derive(Debug, Default)]
struct KeyRequest {
    path: String,
    value: String,
    dir: bool,
    prev_value: String,
    prev_index: u64,
    prev_exist: Option<bool>,
    wait: bool,
    since: u64,
    recursive: bool,
    sorted: bool,
    quorum: bool,
    stream: bool,
    refresh: Option<bool>,
    ttl: Option<u64>,
    no_value_on_success: bool,
}

async fn keys(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    if !matches!(
        method,
        Method::HEAD | Method::GET | Method::PUT | Method::POST | Method::DELETE
    ) {
        let mut resp = text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("HEAD,GET,PUT,POST,DELETE"),
        );
        return resp;
    }
    let cluster_id = format!("{:x}", app.engine.cluster_id());
    let mut resp = match handle(&app, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Ok(v) = HeaderValue::from_str(&cluster_id) {
        resp.headers_mut().insert("x-etcd-cluster-id", v);
    }
    resp
}

async fn handle(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Body>, V2Error> {
    let body_is_form = matches!(*method, Method::PUT | Method::POST | Method::PATCH)
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|ct| {
                ct.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
    let body = if body_is_form {
        let limited = http_body_util::Limited::new(body, MAX_FORM_BODY_BYTES + 1);
        match limited.collect().await {
            Ok(c) => Some(c.to_bytes()),
            Err(_) => return Err(V2Error::request(code::INVALID_FORM, "http: POST too large")),
        }
    } else {
        None
    };
    if body.as_ref().is_some_and(|b| b.len() > MAX_FORM_BODY_BYTES) {
        return Err(V2Error::request(code::INVALID_FORM, "http: POST too large"));
    }
    let req = parse_key_request(method, uri, body.as_deref())?;

    match *method {
        Method::GET | Method::HEAD if req.wait && !req.quorum && *method == Method::GET => {
            watch(app, &req)
        }
        Method::GET | Method::HEAD => {
            if req.quorum {
                // etcd's QGET: a read that is linearizable through Raft.
                app.engine
                    .read_index()
                    .await
                    .map_err(|e| engine_error(&e))?;
            }
            let state = app.engine.read();
            // Listings always come out in key order: one valid order for `sorted=false`.
            let event = state.v2.get(&req.path, req.recursive, now_nanos())?;
            Ok(event_response(
                &event,
                state.applied_index,
                state.term,
                false,
            ))
        }
        _ => {
            // Like etcd, v2 values are bounded only by the 10 MiB form limit above;
            // `--max-request-bytes` applies to v3 requests.
            let now = now_nanos();
            let write = V2Write {
                method: match *method {
                    Method::POST => V2Method::Post,
                    Method::DELETE => V2Method::Delete,
                    _ => V2Method::Put,
                },
                path: req.path.clone(),
                value: req.value.clone(),
                dir: req.dir,
                prev_value: req.prev_value.clone(),
                prev_index: req.prev_index,
                prev_exist: req.prev_exist,
                recursive: req.recursive,
                refresh: req.refresh == Some(true),
                expiration: req
                    .ttl
                    .map(|t| now.saturating_add((t as i64).saturating_mul(1_000_000_000))),
                now,
            };
            let applied = propose(&app.engine, Command::V2(write)).await?;
            match applied.outcome {
                Outcome::V2(result) => {
                    let event = (*result)?;
                    Ok(event_response(
                        &event,
                        applied.index,
                        applied.term,
                        req.no_value_on_success,
                    ))
                }
                Outcome::Synced { .. } | Outcome::V3(_) | Outcome::Done => {
                    Err(V2Error::new(code::RAFT_INTERNAL, "unexpected outcome", 0))
                }
            }
        }
    }
}

async fn propose(engine: &Engine, cmd: Command) -> Result<Applied, V2Error> {
    engine.propose(cmd).await.map_err(|e| engine_error(&e))
}

/// etcd's v2 answer when Raft cannot serve: 300 Raft Internal Error (HTTP 500), or 301
/// during a leader election.
fn engine_error(e: &EngineError) -> V2Error {
    match e {
        EngineError::NoLeader => V2Error::new(code::LEADER_ELECT, e.to_string(), 0),
        _ => V2Error::new(code::RAFT_INTERNAL, e.to_string(), 0),
    }
}

fn parse_key_request(
    method: &Method,
    uri: &Uri,
    body: Option<&[u8]>,
) -> Result<KeyRequest, V2Error> {
    let invalid = |c: u32, cause: &str| V2Error::request(c, cause);
    let form = Form::parse(uri.query().unwrap_or(""), body)
        .map_err(|e| invalid(code::INVALID_FORM, &e.0))?;
    let raw = uri.path();
    let Some(rest) = raw.strip_prefix(KEYS_PREFIX) else {
        return Err(invalid(code::INVALID_FORM, "incorrect key prefix"));
    };
    let path = super::form::unescape_path(rest).map_err(|e| invalid(code::INVALID_FORM, &e.0))?;
    let mut r = KeyRequest {
        path,
        ..KeyRequest::default()
    };
    r.prev_index = form
        .uint("prevIndex")
        .map_err(|_| invalid(code::INDEX_NAN, r#"invalid value for "prevIndex""#))?;
    r.since = form
        .uint("waitIndex")
        .map_err(|_| invalid(code::INDEX_NAN, r#"invalid value for "waitIndex""#))?;
    let flag = |name: &str| {
        form.bool(name)
            .map_err(|_| invalid(code::INVALID_FIELD, &format!("invalid value for {name:?}")))
    };
    r.recursive = flag("recursive")?;
    r.sorted = flag("sorted")?;
    r.wait = flag("wait")?;
    r.dir = flag("dir")?;
    r.quorum = flag("quorum")?;
    r.stream = flag("stream")?;
    if r.wait && *method != Method::GET {
        return Err(invalid(
            code::INVALID_FIELD,
            r#""wait" can only be used with GET requests"#,
        ));
    }
    r.prev_value = form.get("prevValue").unwrap_or("").to_string();
    if form.has("prevValue") && r.prev_value.is_empty() {
        return Err(invalid(
            code::PREV_VALUE_REQUIRED,
            r#""prevValue" cannot be empty"#,
        ));
    }
    r.no_value_on_success = flag("noValueOnSuccess")?;
    if form.get("ttl").is_some_and(|t| !t.is_empty()) {
        r.ttl = Some(
            form.uint("ttl")
                .map_err(|_| invalid(code::TTL_NAN, r#"invalid value for "ttl""#))?,
        );
    }
    if form.has("prevExist") {
        r.prev_exist = Some(
            form.bool("prevExist")
                .map_err(|_| invalid(code::INVALID_FIELD, "invalid value for prevExist"))?,
        );
    }
    if form.has("refresh") {
        let refresh = form
            .bool("refresh")
            .map_err(|_| invalid(code::INVALID_FIELD, "invalid value for refresh"))?;
        r.refresh = Some(refresh);
        if refresh {
            if form.get("value").is_some_and(|v| !v.is_empty()) {
                return Err(invalid(
                    code::REFRESH_VALUE,
                    "A value was provided on a refresh",
                ));
            }
            if r.ttl.is_none() {
                return Err(invalid(code::REFRESH_TTL_REQUIRED, "No TTL value set"));
            }
        }
    }
    r.value = form.get("value").unwrap_or("").to_string();
    Ok(r)
}

fn raft_headers(
    b: axum::http::response::Builder,
    etcd_index: u64,
    raft_index: u64,
    term: u64,
) -> axum::http::response::Builder {
    b.header(header::CONTENT_TYPE, "application/json")
        .header("x-etcd-index", etcd_index)
        .header("x-raft-index", raft_index)
        .header("x-raft-term", term)
}

fn event_response(
    event: &Event,
    raft_index: u64,
    term: u64,
    no_value_on_success: bool,
) -> Response<Body> {
    let status = if event.is_created() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let trimmed;
    let shown = if no_value_on_success
        && matches!(
            event.action,
            Action::Set | Action::CompareAndSwap | Action::Create | Action::Update
        ) {
        trimmed = Event {
            node: None,
            prev_node: None,
            ..event.clone()
        };
        &trimmed
    } else {
        event
    };
    let body = json::to_vec_line(shown);
    raft_headers(
        Response::builder().status(status),
        event.etcd_index,
        raft_index,
        term,
    )
    .header(header::CONTENT_LENGTH, body.len())
    .body(Body::from(body))
    .unwrap_or_default()
}

pub(super) fn error_response(e: &V2Error) -> Response<Body> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-etcd-index", e.index)
        .body(Body::from(json::to_vec_line(e)))
        .unwrap_or_default()
}

/// Unregisters a parked watcher when its response stream ends or the client leaves.
struct WatchGuard {
    engine: Engine,
    key: String,
    id: u64,
    registered: bool,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if self.registered {
            self.engine.write().v2.hub.remove(&self.key, self.id);
        }
    }
}

fn watch(app: &AppState, req: &KeyRequest) -> Result<Response<Body>, V2Error> {
    let (watcher, raft_index, term): (Watcher, u64, u64) = {
        let mut state = app.engine.write();
        let w = state
            .v2
            .watch(&req.path, req.recursive, req.stream, req.since)?;
        (w, state.applied_index, state.term)
    };
    let guard = WatchGuard {
        engine: app.engine.clone(),
        key: watcher.key.clone(),
        id: watcher.id,
        registered: watcher.registered,
    };
    let start_index = watcher.start_index;
    let stream = req.stream;
    let events = futures_util::stream::unfold(
        (watcher.events, guard, false),
        move |(mut rx, guard, done)| async move {
            if done {
                return None;
            }
            let e = rx.recv().await?;
            let chunk = Bytes::from(json::to_vec_line(e.as_ref()));
            Some((Ok::<_, Infallible>(chunk), (rx, guard, !stream)))
        },
    );
    Ok(raft_headers(
        Response::builder().status(StatusCode::OK),
        start_index,
        raft_index,
        term,
    )
    .body(Body::from_stream(events))
    .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, uri: &str, body: Option<&str>) -> Result<KeyRequest, V2Error> {
        parse_key_request(&method, &uri.parse().unwrap(), body.map(str::as_bytes))
    }

    #[test]
    fn parameter_errors_match_etcd() {
        let e = parse(Method::PUT, "/v2/keys/foo?ttl=abc", None).unwrap_err();
        assert_eq!(
            (e.error_code, e.cause.as_str(), e.index),
            (202, r#"invalid value for "ttl""#, 0)
        );
        let e = parse(Method::PUT, "/v2/keys/foo?wait=true", None).unwrap_err();
        assert_eq!(e.cause, r#""wait" can only be used with GET requests"#);
        let e = parse(Method::PUT, "/v2/keys/foo?prevValue=", None).unwrap_err();
        assert_eq!(e.error_code, 201);
        let e = parse(Method::GET, "/v2/keys/foo?recursive=maybe", None).unwrap_err();
        assert_eq!(e.cause, r#"invalid value for "recursive""#);
        let e = parse(
            Method::PUT,
            "/v2/keys/foo?refresh=true&ttl=5",
            Some("value=x"),
        )
        .unwrap_err();
        assert_eq!(e.error_code, 211);
        let e = parse(Method::PUT, "/v2/keys/foo?refresh=true", None).unwrap_err();
        assert_eq!(e.error_code, 212);
        let r = parse(Method::PUT, "/v2/keys/a%2Fb?ttl=", Some("value=1")).unwrap();
        assert_eq!(
            (r.path.as_str(), r.ttl, r.value.as_str()),
            ("/a/b", None, "1")
        );
    }
}
