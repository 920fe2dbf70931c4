//! The FleetLock server (`keel-locksmith fleetlock-server`), backed by the store's
//! semaphore: Zincati nodes, Flatcar's FleetLock locksmith and Keel daemons share slots.
//!
//! A FleetLock client has no heartbeat, so its slot's lease (the group's TTL) is a
//! deadline: a client that takes a slot and never reports `steady-state` frees it after
//! the TTL, recorded as a reclaim.
//!
//! Errors (`kind`, HTTP status): `invalid_protocol_header` 400, `invalid_client_identity`
//! 400 (bad JSON, empty id, bad group), `failed_lock_semaphore_full` 409, `group_paused`
//! 409, `store_unavailable` 503, `not_found` 404, `method_not_allowed` 405.

use super::{ErrorBody, PROTOCOL_HEADER, Request, locksmith_group, valid_group};
use crate::records::EventKind;
use crate::store::{Group, LockRequest, StoreError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

#[derive(Clone)]
struct Shared {
    client: etcd_client::Client,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

fn error(status: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    let body = ErrorBody {
        kind: kind.to_string(),
        value: value.into(),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).expect("an error body always serialises"),
    )
        .into_response()
}

/// Checks the header and body; returns the request or the error response.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Request, Box<Response>> {
    let ok = headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !ok {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_protocol_header",
            "missing or wrong 'fleet-lock-protocol' header: FleetLock requests must carry 'fleet-lock-protocol: true'",
        )));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client_identity",
            format!("body is not {{\"client_params\":{{\"id\":…,\"group\":…}}}}: {e}"),
        ))
    })?;
    if req.client_params.id.is_empty() {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client_identity",
            "client_params.id must not be empty",
        )));
    }
    if !valid_group(&req.client_params.group) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client_identity",
            format!(
                "client_params.group {:?} must be one or more ASCII letters, digits, '.' or '-'",
                req.client_params.group
            ),
        )));
    }
    Ok(req)
}

fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Semaphore { .. } if e.is_full() => error(
            StatusCode::CONFLICT,
            "failed_lock_semaphore_full",
            format!("semaphore currently full, all slots are locked already ({e})"),
        ),
        StoreError::Paused { .. } => error(StatusCode::CONFLICT, "group_paused", e.to_string()),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            crate::error_chain(e),
        ),
    }
}

fn group_for(shared: &Shared, req: &Request) -> Group {
    Group::new(
        shared.client.clone(),
        locksmith_group(&req.client_params.group),
        &format!("fleetlock:{}", req.client_params.id),
    )
}

async fn pre_reboot(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match parse(&headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let group = group_for(&shared, &req);
    let lock = LockRequest {
        id: req.client_params.id.clone(),
        reason: "FleetLock pre-reboot".into(),
        leased: true,
        ..LockRequest::default()
    };
    match group.lock(&lock).await {
        Ok(grant) => {
            tracing::info!(id = %lock.id, group = %req.client_params.group, new = grant.new, "FleetLock slot granted");
            StatusCode::OK.into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn steady_state(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match parse(&headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let group = group_for(&shared, &req);
    match group
        .unlock(
            &req.client_params.id,
            EventKind::Released,
            "FleetLock steady-state",
        )
        .await
    {
        Ok(()) => {
            tracing::info!(id = %req.client_params.id, group = %req.client_params.group, "FleetLock slot released");
            StatusCode::OK.into_response()
        }
        Err(e) if e.is_not_holder() => StatusCode::OK.into_response(),
        Err(e) => store_error(&e),
    }
}

/// The FleetLock routes.
pub fn router(client: etcd_client::Client) -> Router {
    let method_not_allowed = || async {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "FleetLock endpoints accept POST only",
        )
    };
    Router::new()
        .route(
            super::PRE_REBOOT,
            post(pre_reboot).fallback(method_not_allowed),
        )
        .route(
            super::STEADY_STATE,
            post(steady_state).fallback(method_not_allowed),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown path; FleetLock serves POST /v1/pre-reboot and /v1/steady-state",
            )
        })
        .with_state(Shared { client })
}

/// Serves FleetLock on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: etcd_client::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(client))
        .with_graceful_shutdown(shutdown)
        .await
}
