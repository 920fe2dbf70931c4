//! etcd's gRPC gateway: the v3 API as JSON over HTTP/1.1 (`POST /v3/kv/range`, …), with
//! the proto3 JSON mapping (base64 bytes, 64-bit integers as strings, zero values left
//! out) that grpc-gateway uses, under both `/v3/` and `/v3beta/` (etcd 3.4 serves both).
//! Errors are `{"error","message","code"}` with grpc-gateway's HTTP status for the code.
//! `/v3/watch` and `/v3/lease/keepalive` stream newline-delimited `{"result":…}` objects.

use super::api::V3Api;
use super::error::V3Error;
use super::grpc::WatchSession;
use super::pb::etcdserverpb as pb;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, Response, StatusCode, header};
use axum::routing::any;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

pub fn routes() -> Router<V3Api> {
    Router::new()
        .route("/v3/{*rpc}", any(gateway))
        .route("/v3beta/{*rpc}", any(gateway))
}

fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct GatewayError<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

fn error(status: &Status) -> Response<Body> {
    let body = serde_json::to_vec(&GatewayError {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    })
    .unwrap_or_default();
    Response::builder()
        .status(http_status(status.code()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn json<T: Serialize>(v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(body) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header("grpc-metadata-content-type", "application/grpc")
            .body(Body::from(body))
            .unwrap_or_default(),
        Err(e) => error(&Status::internal(e.to_string())),
    }
}

fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: Serialize>(r: Result<T, V3Error>) -> Response<Body> {
    match r {
        Ok(v) => json(&v),
        Err(e) => error(&Status::from(e)),
    }
}

async fn gateway(
    State(api): State<V3Api>,
    method: Method,
    Path(rpc): Path<String>,
    body: Bytes,
) -> Response<Body> {
    if method != Method::POST {
        let mut resp =
            super::super::http::text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    match dispatch(&api, &rpc, &body).await {
        Ok(resp) => resp,
        Err(status) => error(&status),
    }
}

async fn dispatch(api: &V3Api, rpc: &str, body: &Bytes) -> Result<Response<Body>, Status> {
    Ok(match rpc {
        "kv/range" => reply(api.range(&parse::<pb::RangeRequest>(body)?).await),
        "kv/put" => reply(api.put(&parse::<pb::PutRequest>(body)?).await),
        "kv/deleterange" => reply(
            api.delete_range(&parse::<pb::DeleteRangeRequest>(body)?)
                .await,
        ),
        "kv/txn" => reply(api.txn(&parse::<pb::TxnRequest>(body)?).await),
        "kv/compaction" => reply(api.compact(&parse::<pb::CompactionRequest>(body)?).await),
        "lease/grant" => reply(
            api.lease_grant(&parse::<pb::LeaseGrantRequest>(body)?)
                .await,
        ),
        "lease/revoke" | "kv/lease/revoke" => reply(
            api.lease_revoke(&parse::<pb::LeaseRevokeRequest>(body)?)
                .await,
        ),
        "lease/timetolive" | "kv/lease/timetolive" => {
            json(&api.lease_time_to_live(&parse::<pb::LeaseTimeToLiveRequest>(body)?))
        }
        "lease/leases" | "kv/lease/leases" => json(&api.lease_leases()),
        "lease/keepalive" => keep_alive(api, body).await?,
        "watch" => watch(api, body)?,
        "cluster/member/list" => json(&api.member_list()),
        "maintenance/status" => json(&api.status()),
        "maintenance/alarm" => reply(api.alarm(&parse::<pb::AlarmRequest>(body)?).await),
        "maintenance/hash" => reply(api.hash_kv(&parse::<pb::HashKvRequest>(body)?)),
        "maintenance/defragment" => json(&pb::DefragmentResponse { header: None }),
        _ => {
            return Err(Status::unimplemented(format!(
                "unknown gateway method /v3/{rpc}"
            )));
        }
    })
}

/// A sequence of JSON request objects in one body.
fn requests<T: DeserializeOwned>(body: &Bytes) -> Result<Vec<T>, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[derive(Serialize)]
struct StreamResult<T> {
    result: T,
}

fn line<T: Serialize>(v: &T) -> Bytes {
    let mut b = serde_json::to_vec(&StreamResult { result: v }).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn streaming(body: Body) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("grpc-metadata-content-type", "application/grpc")
        .body(body)
        .unwrap_or_default()
}

async fn keep_alive(api: &V3Api, body: &Bytes) -> Result<Response<Body>, Status> {
    let reqs: Vec<pb::LeaseKeepAliveRequest> = requests(body)?;
    let mut chunks: Vec<Result<Bytes, std::convert::Infallible>> = Vec::new();
    for r in &reqs {
        let (header, ttl) = api.lease_keep_alive(r.id).await?;
        chunks.push(Ok(line(&pb::LeaseKeepAliveResponse {
            header,
            id: r.id,
            ttl,
        })));
    }
    Ok(streaming(Body::from_stream(tokio_stream::iter(chunks))))
}

fn watch(api: &V3Api, body: &Bytes) -> Result<Response<Body>, Status> {
    let reqs: Vec<pb::WatchRequest> = requests(body)?;
    let (out, rx) = tokio::sync::mpsc::unbounded_channel();
    let session = WatchSession::new(api.clone(), out);
    let inbound = tokio_stream::iter(reqs.into_iter().map(Ok));
    tokio::spawn(session.run(inbound));
    let stream = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        |r| {
            Ok::<_, std::convert::Infallible>(match r {
                Ok(resp) => line(&resp),
                Err(status) => Bytes::from(
                    serde_json::to_vec(&GatewayError {
                        error: status.message(),
                        message: status.message(),
                        code: status.code() as i32,
                    })
                    .unwrap_or_default(),
                ),
            })
        },
    );
    Ok(streaming(Body::from_stream(stream)))
}
