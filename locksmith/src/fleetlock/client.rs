//! A FleetLock client (strategy `fleet-lock`).

use super::{ClientParams, ErrorBody, PRE_REBOOT, PROTOCOL_HEADER, Request, STEADY_STATE};
use std::time::Duration;

/// Per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FleetLockError {
    #[error("FleetLock base URL {url:?} is not a valid http(s) URL")]
    Url { url: String },
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("FleetLock request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("FleetLock server refused {url}: HTTP {status}, {kind}: {value}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        value: String,
    },
}

#[derive(Debug, Clone)]
pub struct FleetLockClient {
    http: reqwest::Client,
    base: reqwest::Url,
    params: ClientParams,
}

impl FleetLockClient {
    pub fn new(base: String, group: String, id: String) -> Result<FleetLockClient, FleetLockError> {
        let mut with_slash = base.clone();
        if !with_slash.ends_with('/') {
            with_slash.push('/');
        }
        let url = reqwest::Url::parse(&with_slash)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or(FleetLockError::Url { url: base })?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(FleetLockError::Build)?;
        Ok(FleetLockClient {
            http,
            base: url,
            params: ClientParams { id, group },
        })
    }

    async fn post(&self, path: &str) -> Result<(), FleetLockError> {
        let url =
            self.base
                .join(path.trim_start_matches('/'))
                .map_err(|_| FleetLockError::Url {
                    url: self.base.to_string(),
                })?;
        let shown = url.to_string();
        let body = serde_json::to_vec_pretty(&Request {
            client_params: self.params.clone(),
        })
        .expect("a request always serialises");
        let resp = self
            .http
            .post(url)
            .header(PROTOCOL_HEADER, "true")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|source| FleetLockError::Request {
                url: shown.clone(),
                source,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        let err = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            kind: format!("generic_http_{}", status.as_u16()),
            value: String::from_utf8_lossy(&bytes).into_owned(),
        });
        Err(FleetLockError::Refused {
            url: shown,
            status: status.as_u16(),
            kind: err.kind,
            value: err.value,
        })
    }

    /// Takes a slot (recursive).
    pub async fn pre_reboot(&self) -> Result<(), FleetLockError> {
        self.post(PRE_REBOOT).await
    }

    /// Gives the slot back if held.
    pub async fn steady_state(&self) -> Result<(), FleetLockError> {
        self.post(STEADY_STATE).await
    }
}
