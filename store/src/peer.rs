//! Peer traffic: Raft messages between members over their peer URLs.
//!
//! A connection starts with an 8-byte kind. `KEELRAFT` is followed by the sender's
//! cluster id, its member id and the receiver's member id (u64 little-endian each),
//! then by frames of `length u32 LE` + a protobuf-encoded `raftpb.Message`, one way,
//! for as long as the connection lives. `KEELMEMB` asks for the membership: the answer
//! is one frame holding it (how a member started with `--initial-cluster-state
//! existing` learns its id, as etcd's joining member reads `/members` from a peer).
//!
//! Over `https://` peer URLs both directions run TLS with etcd's peer flags: the
//! listener presents `--peer-cert-file` (and, with `--peer-client-cert-auth`, requires a
//! certificate signed by `--peer-trusted-ca-file`); the sender verifies the peer against
//! that CA and presents the same certificate.
//!
//! Each destination member has a sender task with a bounded queue; Raft tolerates lost
//! messages, so a full queue or a broken connection drops them and reports the member
//! unreachable (and a snapshot as failed) to the engine.

use crate::cluster::Members;
use crate::engine::Engine;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// TLS towards and from peers.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    pub fn new(files: &crate::tls::TlsFiles) -> Result<PeerTls, crate::tls::TlsError> {
        Ok(PeerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(crate::tls::server_config(files)?),
            connector: tokio_rustls::TlsConnector::from(crate::tls::peer_client_config(files)?),
        })
    }
}

trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerStream for T {}
type Stream = Box<dyn PeerStream>;

const RAFT_MAGIC: &[u8; 8] = b"KEELRAFT";
const MEMBERS_MAGIC: &[u8; 8] = b"KEELMEMB";
/// Largest frame accepted (a snapshot of a large store travels in one message).
const MAX_FRAME: usize = 1 << 30;
/// Messages queued per destination before new ones are dropped.
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of peer traffic.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{0:?} is not an http://host:port peer URL")]
    BadUrl(String),
}

/// `http(s)://host:port` → (TLS?, `host:port`, host).
pub fn url_addr(url: &str) -> Result<(bool, String, String), PeerError> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (
            false,
            url.strip_prefix("http://")
                .ok_or_else(|| PeerError::BadUrl(url.to_string()))?,
        ),
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    let Some((host, _)) = hostport.rsplit_once(':') else {
        return Err(PeerError::BadUrl(url.to_string()));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((tls, hostport.to_string(), host))
}

/// Open a connection to a peer URL (TLS for https).
async fn dial(url: &str, tls: Option<&PeerTls>) -> Result<Stream, PeerError> {
    let (https, addr, host) = url_addr(url)?;
    let io = |source| PeerError::Io {
        addr: addr.clone(),
        source,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    let _ = tcp.set_nodelay(true);
    if !https {
        return Ok(Box::new(tcp));
    }
    let tls = tls.ok_or_else(|| PeerError::Protocol {
        addr: addr.clone(),
        reason:
            "an https peer URL needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
                .into(),
    })?;
    let name =
        rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| PeerError::Protocol {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, tcp))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    Ok(Box::new(stream))
}

/// Accept peer connections until the task is dropped; with `tls`, only over TLS.
pub async fn serve(listener: TcpListener, engine: Engine, tls: Option<PeerTls>) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream: Stream = match tls {
                None => Box::new(stream),
                Some(tls) => match tls.acceptor.accept(stream).await {
                    Ok(s) => Box::new(s),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "peer TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = receive(stream, addr, engine).await {
                tracing::debug!(%addr, error = %e, "peer connection closed");
            }
        });
    }
}

async fn receive(mut stream: Stream, addr: SocketAddr, engine: Engine) -> Result<(), PeerError> {
    let io = |source| PeerError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut kind = [0u8; 8];
    stream.read_exact(&mut kind).await.map_err(io)?;
    if &kind == MEMBERS_MAGIC {
        let members = engine.members();
        let body = postcard::to_allocvec(&members).map_err(|e| PeerError::Protocol {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        stream
            .write_all(&(body.len() as u32).to_le_bytes())
            .await
            .map_err(io)?;
        stream.write_all(&body).await.map_err(io)?;
        return stream.shutdown().await.map_err(io);
    }
    if &kind != RAFT_MAGIC {
        return Err(PeerError::Protocol {
            addr: addr.to_string(),
            reason: "not a keel-store peer".into(),
        });
    }
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).await.map_err(io)?;
    let word = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let (cluster, from, to) = (word(0), word(1), word(2));
    let ours = engine.cluster_id();
    if cluster != 0 && ours != 0 && cluster != ours {
        tracing::warn!(%addr, their_cluster = %format!("{cluster:x}"), our_cluster = %format!("{ours:x}"), "refusing a peer of another cluster");
        return Ok(());
    }
    let local = engine.status().id;
    if to != local {
        tracing::warn!(%addr, from = %format!("{from:x}"), to = %format!("{to:x}"), "refusing messages for another member");
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(PeerError::Protocol {
                addr: addr.to_string(),
                reason: format!("frame of {len} bytes"),
            });
        }
        buf.resize(len, 0);
        stream.read_exact(&mut buf).await.map_err(io)?;
        let msg = Message::parse_from_bytes(&buf).map_err(|e| PeerError::Protocol {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        engine.step(msg);
    }
}

/// Deliver the engine's outgoing messages until the outbox closes. Peer URLs come
/// from the replicated membership, or from `known` (what a joining member learned from
/// the running members) while it has none yet.
pub async fn send_all(
    engine: Engine,
    mut outbox: crate::engine::Outbox,
    known: Members,
    tls: Option<PeerTls>,
) {
    let known = std::sync::Arc::new(known);
    let mut peers: HashMap<u64, mpsc::Sender<Message>> = HashMap::new();
    while let Some(msg) = outbox.recv().await {
        let to = msg.to;
        let tx = peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender(engine.clone(), to, rx, known.clone(), tls.clone()));
            tx
        });
        if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(msg) {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                engine.report_snapshot(to, false);
            }
            engine.report_unreachable(to);
        }
    }
}

/// One destination: connect (again) when needed, write what is queued.
async fn sender(
    engine: Engine,
    to: u64,
    mut rx: mpsc::Receiver<Message>,
    known: std::sync::Arc<Members>,
    tls: Option<PeerTls>,
) {
    let mut conn: Option<BufWriter<Stream>> = None;
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            conn = connect(&engine, to, &known, tls.as_ref()).await;
        }
        let delivered = match conn.as_mut() {
            Some(w) => write_batch(w, &batch).await.is_ok(),
            None => false,
        };
        if !delivered {
            conn = None;
            engine.report_unreachable(to);
        }
        for m in &batch {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                engine.report_snapshot(to, delivered);
            }
        }
    }
}

async fn write_batch(w: &mut BufWriter<Stream>, batch: &[Message]) -> std::io::Result<()> {
    for m in batch {
        let bytes = m
            .write_to_bytes()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        w.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
        w.write_all(&bytes).await?;
    }
    w.flush().await
}

async fn connect(
    engine: &Engine,
    to: u64,
    known: &Members,
    tls: Option<&PeerTls>,
) -> Option<BufWriter<Stream>> {
    let urls = match engine.members().get(to) {
        Some(m) => m.peer_urls.clone(),
        None => known.get(to)?.peer_urls.clone(),
    };
    for url in urls {
        let mut stream = match dial(&url, tls).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%url, error = %e, "cannot reach peer");
                continue;
            }
        };
        let mut hello = Vec::with_capacity(32);
        hello.extend_from_slice(RAFT_MAGIC);
        hello.extend_from_slice(&engine.cluster_id().to_le_bytes());
        hello.extend_from_slice(&engine.status().id.to_le_bytes());
        hello.extend_from_slice(&to.to_le_bytes());
        if stream.write_all(&hello).await.is_ok() && stream.flush().await.is_ok() {
            return Some(BufWriter::with_capacity(64 * 1024, stream));
        }
    }
    None
}

/// Ask the members behind `peer_urls` for the membership; the first answer wins.
pub async fn fetch_members(
    peer_urls: &[String],
    tls: Option<&PeerTls>,
) -> Result<Members, PeerError> {
    let mut last = PeerError::BadUrl(String::new());
    for url in peer_urls {
        match fetch_from(url, tls).await {
            Ok(m) => return Ok(m),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn fetch_from(url: &str, tls: Option<&PeerTls>) -> Result<Members, PeerError> {
    let (_, addr, _) = url_addr(url)?;
    let io = |source| PeerError::Io {
        addr: addr.clone(),
        source,
    };
    let mut stream = dial(url, tls).await?;
    stream.write_all(MEMBERS_MAGIC).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(PeerError::Protocol {
            addr,
            reason: format!("answer of {len} bytes"),
        });
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(io)?;
    postcard::from_bytes(&body).map_err(|e| PeerError::Protocol {
        addr,
        reason: e.to_string(),
    })
}
