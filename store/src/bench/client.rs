//! A minimal keep-alive HTTP/1.1 client: one TCP connection per [`Conn`],
//! reconnected transparently after an error. Built directly on hyper's
//! connection API so each simulated client really owns exactly one socket
//! (no shared pool), and the per-request overhead stays small.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Errors talking to the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint URL is unusable.
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {err}")]
    Connect {
        /// `host:port` dialled.
        addr: String,
        /// Underlying I/O error.
        err: std::io::Error,
    },
    /// HTTP-level failure (handshake, send, or reading the body).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed (bad path).
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

impl ClientError {
    /// The error and all its causes on one line (for error samples).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            let msg = e.to_string();
            if !s.contains(&msg) {
                s.push_str(": ");
                s.push_str(&msg);
            }
            cur = e.source();
        }
        s
    }
}

/// Where to send requests: parsed from `http://host:port`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` for TCP connect.
    pub addr: String,
    /// Value of the `Host` header.
    pub host_header: String,
}

impl Endpoint {
    /// Parses `http://host[:port]` (a trailing `/` is allowed; https is not
    /// supported).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::Endpoint(url.to_owned(), why);
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("missing http:// scheme")),
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(bad("must not have a path"));
        }
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        let port = uri.port_u16().unwrap_or(80);
        // Brackets for IPv6 literals are kept by `host()`.
        let addr = format!("{host}:{port}");
        Ok(Self {
            host_header: addr.clone(),
            addr,
        })
    }
}

/// A response with its body fully read.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// The `X-Etcd-Index` header, when present and numeric.
    pub etcd_index: Option<u64>,
    /// Response body.
    pub body: Bytes,
}

/// One client: a single keep-alive connection, dialled lazily.
#[derive(Debug)]
pub struct Conn {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// How many times this client (re)connected.
    pub connects: u64,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Conn {
    /// A client for `endpoint`; nothing is dialled until the first request.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            sender: None,
            connects: 0,
        }
    }

    /// Dials now (used to set up all connections before timing starts).
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        if self.sender.is_none() {
            self.sender = Some(self.dial().await?);
        }
        Ok(())
    }

    async fn dial(&mut self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let addr = self.endpoint.addr.clone();
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(err)) => return Err(ClientError::Connect { addr, err }),
            Err(_) => {
                let err = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
                return Err(ClientError::Connect { addr, err });
            }
        };
        // Latency benchmark: never let Nagle hold back small requests.
        stream
            .set_nodelay(true)
            .map_err(|err| ClientError::Connect {
                addr: addr.clone(),
                err,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors
            // surface on the next request instead.
            let _ = conn.await;
        });
        self.connects += 1;
        Ok(sender)
    }

    /// Sends one request and reads the whole response body. On any transport
    /// error the connection is dropped and the next call redials.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        form_body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        let result = self.request_inner(method, path_and_query, form_body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path_and_query: &str,
        form_body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                let s = self.dial().await?;
                self.sender.insert(s)
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.endpoint.host_header);
        let body = match form_body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                b
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body))?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let etcd_index = resp
            .headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Response {
            status,
            etcd_index,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        let e = Endpoint::parse("http://127.0.0.1:2379").expect("valid");
        assert_eq!(e.addr, "127.0.0.1:2379");
        let e = Endpoint::parse("http://localhost/").expect("valid");
        assert_eq!(e.addr, "localhost:80");
        assert!(Endpoint::parse("https://127.0.0.1:2379").is_err());
        assert!(Endpoint::parse("127.0.0.1:2379").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:2379/v2").is_err());
    }
}
