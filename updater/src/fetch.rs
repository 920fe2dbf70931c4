//! Where a payload comes from: a local file or an HTTP(S) URL read with Range requests.
//! Every network read has a stall timeout; a server that ignores the Range, sends a wrong
//! Content-Length, more or fewer bytes than asked is an error (the installer then retries
//! from the last verified chunk).

use futures_util::StreamExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A read that makes no progress for this long fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: cannot {op}")]
    Io {
        what: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: request failed")]
    Request {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: HTTP {status} for bytes {start}-{end}")]
    Status {
        what: String,
        status: u16,
        start: u64,
        end: u64,
    },
    #[error("{what}: the server ignored the Range request (HTTP 200 for bytes {start}-)")]
    IgnoredRange { what: String, start: u64 },
    #[error("{what}: Content-Length {got} for a range of {expected} bytes")]
    ContentLength {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: no data for {0:?}", .timeout)]
    Stalled { what: String, timeout: Duration },
    #[error("{what}: the body ended after {got} of {expected} bytes")]
    Short {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: cannot tell the payload's size (no Content-Range total)")]
    NoLength { what: String },
}

/// A payload source.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Http {
        client: reqwest::Client,
        url: String,
        stall: Duration,
    },
}

type ByteStream = Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads `[start, start + len)` sequentially.
pub struct RangeReader {
    what: String,
    inner: Inner,
    remaining: u64,
    stall: Duration,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("what", &self.what)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

enum Inner {
    File(tokio::fs::File),
    Http {
        stream: ByteStream,
        buffered: bytes::Bytes,
    },
}

impl Source {
    /// `http://…`/`https://…` is a URL, anything else a file path.
    pub fn parse(s: &str, stall: Duration) -> Result<Source, FetchError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(15))
                .build()
                .map_err(|source| FetchError::Request {
                    what: s.to_string(),
                    source,
                })?;
            Ok(Source::Http {
                client,
                url: s.to_string(),
                stall,
            })
        } else {
            Ok(Source::File(PathBuf::from(s)))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Http { url, .. } => url.clone(),
        }
    }

    /// Total size of the payload.
    pub async fn total_len(&self) -> Result<u64, FetchError> {
        match self {
            Source::File(p) => tokio::fs::metadata(p)
                .await
                .map(|m| m.len())
                .map_err(|source| FetchError::Io {
                    what: self.name(),
                    op: "stat",
                    source,
                }),
            Source::Http { client, url, stall } => {
                let resp = tokio::time::timeout(
                    *stall,
                    client
                        .get(url)
                        .header(reqwest::header::RANGE, "bytes=0-0")
                        .send(),
                )
                .await
                .map_err(|_| FetchError::Stalled {
                    what: url.clone(),
                    timeout: *stall,
                })?
                .map_err(|source| FetchError::Request {
                    what: url.clone(),
                    source,
                })?;
                let status = resp.status().as_u16();
                if status == 200 {
                    return resp
                        .content_length()
                        .ok_or(FetchError::NoLength { what: url.clone() });
                }
                if status != 206 {
                    return Err(FetchError::Status {
                        what: url.clone(),
                        status,
                        start: 0,
                        end: 0,
                    });
                }
                resp.headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit_once('/'))
                    .and_then(|(_, total)| total.parse().ok())
                    .ok_or(FetchError::NoLength { what: url.clone() })
            }
        }
    }

    /// Opens `[start, start + len)`.
    pub async fn open(&self, start: u64, len: u64) -> Result<RangeReader, FetchError> {
        let what = self.name();
        match self {
            Source::File(p) => {
                let io = |op| {
                    let what = what.clone();
                    move |source| FetchError::Io { what, op, source }
                };
                let mut f = tokio::fs::File::open(p).await.map_err(io("open"))?;
                f.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(io("seek"))?;
                Ok(RangeReader {
                    what,
                    inner: Inner::File(f),
                    remaining: len,
                    stall: STALL_TIMEOUT,
                })
            }
            Source::Http { client, url, stall } => {
                let end = start + len - 1;
                let resp = tokio::time::timeout(
                    *stall,
                    client
                        .get(url)
                        .header(reqwest::header::RANGE, format!("bytes={start}-{end}"))
                        .send(),
                )
                .await
                .map_err(|_| FetchError::Stalled {
                    what: what.clone(),
                    timeout: *stall,
                })?
                .map_err(|source| FetchError::Request {
                    what: what.clone(),
                    source,
                })?;
                let status = resp.status().as_u16();
                if status == 200 && start > 0 {
                    return Err(FetchError::IgnoredRange { what, start });
                }
                if status != 206 && status != 200 {
                    return Err(FetchError::Status {
                        what,
                        status,
                        start,
                        end,
                    });
                }
                if status == 206
                    && let Some(got) = resp.content_length()
                    && got != len
                {
                    return Err(FetchError::ContentLength {
                        what,
                        expected: len,
                        got,
                    });
                }
                Ok(RangeReader {
                    what,
                    inner: Inner::Http {
                        stream: Box::pin(resp.bytes_stream()),
                        buffered: bytes::Bytes::new(),
                    },
                    remaining: len,
                    stall: *stall,
                })
            }
        }
    }

    /// Reads a small range whole.
    pub async fn read(&self, start: u64, len: u64) -> Result<Vec<u8>, FetchError> {
        let mut buf = vec![0u8; len as usize];
        if len > 0 {
            self.open(start, len).await?.read_exact(&mut buf).await?;
        }
        Ok(buf)
    }
}

impl RangeReader {
    /// Fills `buf` from the range.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FetchError> {
        let want = buf.len() as u64;
        if want > self.remaining {
            return Err(FetchError::Short {
                what: self.what.clone(),
                expected: want,
                got: self.remaining,
            });
        }
        let mut filled = 0usize;
        while filled < buf.len() {
            let n = match &mut self.inner {
                Inner::File(f) => {
                    let n = f
                        .read(&mut buf[filled..])
                        .await
                        .map_err(|source| FetchError::Io {
                            what: self.what.clone(),
                            op: "read",
                            source,
                        })?;
                    if n == 0 {
                        return Err(FetchError::Short {
                            what: self.what.clone(),
                            expected: want,
                            got: filled as u64,
                        });
                    }
                    n
                }
                Inner::Http { stream, buffered } => {
                    if buffered.is_empty() {
                        let next = tokio::time::timeout(self.stall, stream.next())
                            .await
                            .map_err(|_| FetchError::Stalled {
                                what: self.what.clone(),
                                timeout: self.stall,
                            })?;
                        match next {
                            Some(Ok(b)) => *buffered = b,
                            Some(Err(source)) => {
                                return Err(FetchError::Request {
                                    what: self.what.clone(),
                                    source,
                                });
                            }
                            None => {
                                return Err(FetchError::Short {
                                    what: self.what.clone(),
                                    expected: want,
                                    got: filled as u64,
                                });
                            }
                        }
                    }
                    let n = buffered.len().min(buf.len() - filled);
                    buf[filled..filled + n].copy_from_slice(&buffered.split_to(n));
                    n
                }
            };
            filled += n;
        }
        self.remaining -= want;
        Ok(())
    }
}
