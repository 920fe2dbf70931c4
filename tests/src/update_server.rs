//! An update server for booted-VM tests: Omaha (`POST /v1/update/`, every request body
//! recorded) offering one payload, and the payload itself with HTTP Range support.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Shared {
    payload: Vec<u8>,
    name: String,
    version: String,
    /// Base URL of `/payload/` as the guest reaches it.
    base: String,
    requests: Mutex<Vec<String>>,
    /// First byte of every payload request (0 without a Range header).
    ranges: Mutex<Vec<u64>>,
    /// Payload bytes handed to connections so far.
    sent: AtomicU64,
    /// Payload bytes per second per request; 0 = unlimited.
    rate: AtomicU64,
}

/// A running server (stops when dropped).
#[derive(Debug)]
pub struct UpdateServer {
    pub port: u16,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl UpdateServer {
    /// Serves `payload` (file name `name`) as `version`; `guest_base` is how the guest
    /// reaches this server (e.g. `http://10.0.2.100:8080`).
    pub fn start(payload: Vec<u8>, name: &str, version: &str, guest_base: &str) -> UpdateServer {
        let shared = Arc::new(Shared {
            payload,
            name: name.into(),
            version: version.into(),
            base: format!("{guest_base}/payload/"),
            requests: Mutex::default(),
            ranges: Mutex::default(),
            sent: AtomicU64::new(0),
            rate: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let app = axum::Router::new()
            .route("/v1/update/", axum::routing::post(omaha))
            .route("/payload/{name}", axum::routing::get(payload_get))
            .with_state(shared.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        runtime.spawn(async move { axum::serve(listener, app).await });
        UpdateServer {
            port,
            shared,
            _runtime: runtime,
        }
    }

    /// Every Omaha request body so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Limits payload transfers to `bytes_per_second` each (0 = unlimited); applies to
    /// transfers already under way.
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.shared.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// Payload bytes sent so far (over every request).
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// The first byte asked for by each payload request so far, in order.
    pub fn ranges(&self) -> Vec<u64> {
        self.shared
            .ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Omaha `event` elements seen, as `(eventtype, eventresult)`.
    pub fn events(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for body in self.requests() {
            let Ok(doc) = roxmltree::Document::parse(&body) else {
                continue;
            };
            for e in doc.descendants().filter(|n| n.has_tag_name("event")) {
                let num = |a| e.attribute(a).and_then(|v| v.parse().ok()).unwrap_or(0);
                out.push((num("eventtype"), num("eventresult")));
            }
        }
        out
    }
}

async fn omaha(State(s): State<Arc<Shared>>, body: String) -> String {
    let check = body.contains("<updatecheck");
    let current = body.contains(&format!("version=\"{}\"", s.version));
    s.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(body);
    if check && !current {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><response protocol="3.0" server="keel-tests"><daystart elapsed_seconds="0"></daystart><app appid="keel" status="ok"><ping status="ok"></ping><updatecheck status="ok"><urls><url codebase="{}"></url></urls><manifest version="{}"><packages><package name="{}" hash="" size="{}" required="true"></package></packages><actions><action event="postinstall" sha256="" DisablePayloadBackoff="true"></action></actions></manifest></updatecheck></app></response>"#,
            s.base,
            s.version,
            s.name,
            s.payload.len()
        )
    } else if check {
        r#"<?xml version="1.0" encoding="UTF-8"?><response protocol="3.0"><app status="ok"><updatecheck status="noupdate"></updatecheck></app></response>"#.into()
    } else {
        r#"<?xml version="1.0" encoding="UTF-8"?><response protocol="3.0"><app status="ok"><event status="ok"></event></app></response>"#.into()
    }
}

async fn payload_get(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if name != s.name {
        return StatusCode::NOT_FOUND.into_response();
    }
    let total = s.payload.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let start: u64 = a.parse().ok()?;
            let end: u64 = if b.is_empty() {
                total - 1
            } else {
                b.parse().ok()?
            };
            (start <= end && start < total).then_some((start, end.min(total - 1)))
        });
    let (a, b) = range.unwrap_or((0, total.saturating_sub(1)));
    s.ranges.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    let builder = match range {
        Some(_) => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{total}")),
        None => Response::builder(),
    };
    builder
        .header(header::CONTENT_LENGTH, b - a + 1)
        .body(Body::from_stream(throttled(s.clone(), a, b + 1)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `payload[from..to]` in 64 KiB pieces, paced by the server's current rate.
fn throttled(
    s: Arc<Shared>,
    from: u64,
    to: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    const PIECE: u64 = 64 << 10;
    futures_util::stream::unfold(from, move |at| {
        let s = s.clone();
        async move {
            if at >= to {
                return None;
            }
            let end = (at + PIECE).min(to);
            let rate = s.rate.load(Ordering::SeqCst);
            if rate > 0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(
                    (end - at) as f64 / rate as f64,
                ))
                .await;
            }
            s.sent.fetch_add(end - at, Ordering::SeqCst);
            let piece = bytes::Bytes::copy_from_slice(&s.payload[at as usize..end as usize]);
            Some((Ok(piece), end))
        }
    })
}
