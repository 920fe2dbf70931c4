//! HTTP GET with a per-request timeout and bounded retries (coreos-cloudinit's
//! `pkg/http_client.go` semantics): network errors and 5xx are retried with exponential
//! backoff; a 4xx is a definite "not found" answer and is never retried.

use std::time::Duration;

/// How long one request may take (coreos-cloudinit: 10 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after the first attempt (coreos-cloudinit: 15).
pub const DEFAULT_MAX_RETRIES: u32 = 15;
/// First backoff (50 ms), doubled after each failure up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Retry policy, set when the client is built so tests can shorten it.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: INITIAL_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: only http and https URLs are fetched")]
    Scheme { url: String },
    #[error("{url}: gave up after {attempts} attempts")]
    GaveUp {
        url: String,
        attempts: u32,
        #[source]
        last: Box<HttpError>,
    },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: request failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// What a GET found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    Found(Vec<u8>),
    /// 4xx: the resource does not exist.
    NotFound(u16),
}

/// A small retrying HTTP client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
    policy: RetryPolicy,
}

impl Client {
    pub fn new(policy: RetryPolicy) -> Result<Client, HttpError> {
        let inner = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(policy.request_timeout)
            .build()
            .map_err(HttpError::Client)?;
        Ok(Client { inner, policy })
    }

    /// GET with retries; `headers` are added to each attempt.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Fetch, HttpError> {
        self.send(reqwest::Method::GET, url, headers).await
    }

    /// PUT with an empty body (the IMDSv2 token request).
    pub async fn put(&self, url: &str, headers: &[(&str, &str)]) -> Result<Fetch, HttpError> {
        self.send(reqwest::Method::PUT, url, headers).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Fetch, HttpError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(HttpError::Scheme { url: url.into() });
        }
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let err = match self.once(method.clone(), url, headers).await {
                Ok(f) => return Ok(f),
                Err(e) => e,
            };
            tracing::debug!(url, attempts, error = %err, "HTTP attempt failed");
            if attempts > self.policy.max_retries {
                return Err(HttpError::GaveUp {
                    url: url.into(),
                    attempts,
                    last: Box::new(err),
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }

    async fn once(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Fetch, HttpError> {
        let mut req = self.inner.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let request_err = |source| HttpError::Request {
            url: url.into(),
            source,
        };
        let resp = req.send().await.map_err(request_err)?;
        let status = resp.status().as_u16();
        if (400..500).contains(&status) {
            return Ok(Fetch::NotFound(status));
        }
        if !resp.status().is_success() {
            return Err(HttpError::Status {
                url: url.into(),
                status,
            });
        }
        let body = resp.bytes().await.map_err(request_err)?;
        Ok(Fetch::Found(body.to_vec()))
    }
}
