//! The client-facing HTTP server: etcd's v2 keys API (`keys`), the member, machine and
//! stats endpoints, `/version` and `/health` (`info`), all on one listener, HTTP/1.1 with
//! Go-style title-case header names. Every response carries etcd's CORS headers; paths
//! that are not clean are redirected as Go's `ServeMux` does.

pub mod form;
mod h2_authority;
mod info;
mod keys;

use crate::cluster::Cluster;
use crate::engine::Engine;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use h2_authority::AuthorityFix;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use form::{Form, FormError};
pub use info::{ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};

/// Shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    pub v3: crate::v3::api::V3Api,
    pub cluster: Arc<Cluster>,
}

/// The whole client API as one router.
pub fn router(state: AppState) -> Router {
    let gateway = crate::v3::gateway::routes().with_state(state.v3.clone());
    Router::new()
        .merge(keys::routes())
        .merge(info::routes())
        .merge(gateway)
        .fallback(|| async { text_error(StatusCode::NOT_FOUND, "404 page not found") })
        .layer(axum::middleware::map_request(redirect_unclean))
        .layer(axum::middleware::map_response(add_cors))
        .layer(axum::middleware::map_request(preflight))
        .with_state(state)
}

/// Marks a response written by the HTTP server itself (before any handler), which
/// carries no CORS headers in etcd.
#[derive(Debug, Clone, Copy)]
struct ServerLevel;

/// A bad request rejected at the server level, as Go's `net/http` writes it.
fn server_level_error(msg: &str) -> Response<Body> {
    let mut resp = Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONNECTION, "close")
        .body(Body::from(msg.to_string()))
        .unwrap_or_default();
    resp.extensions_mut().insert(ServerLevel);
    resp
}

/// CORS preflight: etcd answers any `OPTIONS` with 200 and the CORS headers only; and
/// Go's server refuses an HTTP/1.1 request without `Host`.
async fn preflight(req: Request<Body>) -> Result<Request<Body>, Response<Body>> {
    if req.version() == axum::http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Err(server_level_error(
            "400 Bad Request: missing required Host header",
        ));
    }
    if req.method() == axum::http::Method::OPTIONS {
        return Err(add_cors(Response::new(Body::empty())).await);
    }
    Ok(req)
}

/// Add etcd's CORS headers and order all headers by name, as Go's server writes them.
async fn add_cors(mut resp: Response<Body>) -> Response<Body> {
    if resp.extensions().get::<ServerLevel>().is_some() {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    let mut all = Vec::new();
    let mut last = None;
    for (k, v) in h.drain() {
        if let Some(k) = k {
            last = Some(k);
        }
        if let Some(k) = &last {
            all.push((k.clone(), v));
        }
    }
    all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (k, v) in all {
        h.append(k, v);
    }
    resp
}

/// Go's `ServeMux` answers a request for an unclean path (`//`, `.`, `..`) with a 301 to
/// the clean one; etcd's handlers sit behind it.
async fn redirect_unclean(req: Request<Body>) -> Result<Request<Body>, Response<Body>> {
    let raw = req.uri().path();
    let Ok(decoded) = form::unescape_path(raw) else {
        return Err(server_level_error("400 Bad Request"));
    };
    let clean = clean_path(&decoded);
    if clean == decoded || req.method() == axum::http::Method::CONNECT {
        return Ok(req);
    }
    let mut location = clean;
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let mut b = Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(header::LOCATION, location.as_str());
    let body = if req.method() == axum::http::Method::GET {
        b = b.header(header::CONTENT_TYPE, "text/html; charset=utf-8");
        format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(&location)
        )
    } else {
        String::new()
    };
    Err(b.body(Body::from(body)).unwrap_or_default())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Go's `cleanPath`: `path.Clean`, keeping a trailing slash.
fn clean_path(p: &str) -> String {
    let mut np = crate::v2::path::clean(p);
    if p.ends_with('/') && np != "/" {
        np.push('/');
    }
    np
}

/// A plain-text error as Go's `http.Error` writes it.
pub(crate) fn text_error(status: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Body::from(format!("{msg}\n")))
        .unwrap_or_default()
}

/// Sends gRPC requests (`content-type: application/grpc…`) to the v3 services and
/// everything else to the HTTP/JSON router, so one client URL serves every API, as etcd's.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub http: Router,
    pub grpc: Router,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for Dispatch {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>,
    >;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        use tower::ServiceExt;
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        let router = if is_grpc {
            self.grpc.clone()
        } else {
            self.http.clone()
        };
        Box::pin(router.oneshot(req.map(Body::new)))
    }
}

/// Serve `service` on `listener` until `shutdown` resolves: HTTP/1.1 (with title-case
/// header names, as Go's server writes them) and HTTP/2 (gRPC, cleartext or over TLS),
/// each connection behind [`AuthorityFix`] so that etcdctl's `:authority: http://…`
/// requests are served as etcd serves them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: Dispatch,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().title_case_headers(true);
            let served = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(AuthorityFix::new(stream)), service)
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls_stream) => {
                        builder
                            .serve_connection(TokioIo::new(AuthorityFix::new(tls_stream)), service)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

pub use keys::now_nanos;
