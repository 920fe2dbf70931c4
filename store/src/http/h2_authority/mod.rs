//! Lets HTTP/2 requests whose `:authority` is a whole URL reach the server.
//!
//! etcdctl 3.4 (gRPC-Go underneath) dials a second connection for `endpoint status`,
//! `endpoint hashkv`, `defrag` and `move-leader`; when the endpoint was written as a URL
//! (`--endpoints=http://127.0.0.1:2379`), that connection's requests carry
//! `:authority: http://127.0.0.1:2379`. Go's HTTP/2 server takes that, and so does etcd;
//! the `h2` crate under hyper refuses it as a malformed authority and resets the stream
//! with PROTOCOL_ERROR, so the command fails. [`AuthorityFix`] sits between the accepted
//! stream (TCP or TLS) and hyper and hands hyper `:authority: 127.0.0.1:2379` instead.
//!
//! How the client→server bytes flow (the server→client direction is not touched):
//! - `filter` looks at the first bytes. Anything but the HTTP/2 client preface
//!   (HTTP/1.1) passes untouched from the first byte on, at the cost of one comparison.
//! - For HTTP/2 it follows the frames. Frames other than HEADERS and CONTINUATION pass in
//!   place after a look at their 9-byte head. A header block (HEADERS and its
//!   CONTINUATIONs) is held until complete and decoded with `hpack`, whose decoder keeps
//!   the client's dynamic table (the one the server's decoder also keeps). A block is
//!   passed on byte for byte unless its `:authority` has a scheme; such a block is
//!   re-encoded with the bare authority, as indexed static entries and literals without
//!   indexing (no Huffman), and re-framed with its END_STREAM and priority (padding
//!   dropped), in frames of at most 16 KiB.
//! - From the first re-encoded block on, the server's dynamic table no longer matches the
//!   client's (the rewritten block did not add the entries the client's did), so every
//!   later block on that connection is re-encoded the same way; such blocks never
//!   reference the server's table, so nothing can go out of step.
//! - `huffman` decodes Huffman-coded strings (RFC 7541 Appendix B).
//!
//! Limits: the client's dynamic table may not exceed the protocol's default 4096 bytes,
//! which is what `serve` advertises (hyper's default); a block that cannot be decoded,
//! that is interleaved with other frames, or that exceeds 1 MiB makes the filter step
//! aside for the rest of the connection, passing bytes as they come, so hyper reports
//! the problem exactly as it would without this layer.

mod filter;
mod hpack;
mod huffman;

use filter::Filter;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose client→server HTTP/2 header blocks are fixed up as described in
/// the module docs; transparent otherwise.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    filter: Filter,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            filter: Filter::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let pending = this.filter.output();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.filter.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.filter.is_opaque() || buf.remaining() == 0 {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Read straight into the caller's buffer; the filter says how much of it
            // stays there and what (if anything) replaces the rest.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == start {
                // The client closed its side: let go of anything held.
                this.filter.finish();
                if this.filter.output().is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let keep = this.filter.feed(&buf.filled()[start..]);
            buf.set_filled(start + keep);
            let pending = this.filter.output();
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            this.filter.consume(n);
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            // All of it is held (an incomplete header block): read on.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! hyper itself, behind the adapter, is the judge of the rewritten bytes.

    use super::filter::tests::{
        TYPE_DATA, TYPE_PING, TYPE_SETTINGS, dynamic_table_blocks, frame, opening,
    };
    use super::hpack::test_encode as enc;
    use super::hpack::{Decoder, Field};
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const TYPE_HEADERS: u8 = 0x1;
    const TYPE_RST_STREAM: u8 = 0x3;
    const TYPE_CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;

    /// hyper-util's auto server answering every request with its authority and the
    /// values of `x-a` and `x-b`.
    async fn echo_server<S>(io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            let authority = req
                .uri()
                .authority()
                .map_or_else(|| "-".to_string(), ToString::to_string);
            let body = format!("{authority} {} {}", header("x-a"), header("x-b"));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(io), svc).await;
    }

    /// How a stream ended, as the client saw it.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// `:status` and body.
        Response(String, String),
        /// RST_STREAM with this error code.
        Reset(u32),
    }

    async fn read_frame(io: &mut DuplexStream) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.expect("frame head");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await.expect("frame payload");
        (head[3], head[4], stream, payload)
    }

    /// Read the server's frames until every stream in `streams` has ended.
    async fn outcomes(io: &mut DuplexStream, streams: &[u32]) -> BTreeMap<u32, Outcome> {
        let mut decoder = Decoder::new(4096, 1 << 20);
        let mut status = BTreeMap::new();
        let mut bodies: BTreeMap<u32, String> = BTreeMap::new();
        let mut done = BTreeMap::new();
        let read_all = async {
            while streams.iter().any(|s| !done.contains_key(s)) {
                let (frame_type, flags, stream, payload) = read_frame(io).await;
                let ended = flags & END_STREAM != 0;
                match frame_type {
                    TYPE_HEADERS => {
                        assert_eq!(flags & (PADDED | PRIORITY), 0);
                        let fields: Vec<Field> = decoder.decode(&payload).expect("response");
                        let code = fields.iter().find(|f| f.name.as_ref() == b":status");
                        if let Some(code) = code {
                            let code = String::from_utf8_lossy(&code.value).into_owned();
                            status.insert(stream, code);
                        }
                    }
                    TYPE_DATA => bodies
                        .entry(stream)
                        .or_default()
                        .push_str(&String::from_utf8_lossy(&payload)),
                    TYPE_RST_STREAM => {
                        let code = u32::from_be_bytes(payload[..4].try_into().expect("code"));
                        done.insert(stream, Outcome::Reset(code));
                        continue;
                    }
                    _ => continue,
                }
                if ended && (frame_type == TYPE_HEADERS || frame_type == TYPE_DATA) {
                    let s = status.get(&stream).cloned().unwrap_or_default();
                    let body = bodies.remove(&stream).unwrap_or_default();
                    done.insert(stream, Outcome::Response(s, body));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .expect("server answered every stream");
        done
    }

    /// Four requests sharing the client's dynamic table (see `dynamic_table_blocks`),
    /// then one with a bad authority split over padded, prioritised HEADERS and two
    /// CONTINUATIONs.
    fn client_bytes() -> Vec<u8> {
        let mut input = opening();
        for (stream, b) in dynamic_table_blocks() {
            input.extend(frame(TYPE_HEADERS, END_HEADERS | END_STREAM, stream, &b));
        }
        let mut block = Vec::new();
        enc::indexed(&mut block, 2);
        enc::indexed(&mut block, 6);
        enc::indexed(&mut block, 4);
        enc::incremental(&mut block, Some(1), "", "http://127.0.0.1:2379/", true);
        enc::indexed(&mut block, 65); // x-a: one (the new authority is now 62)
        let (part1, part2) = block.split_at(4);
        let mut payload = vec![2];
        payload.extend_from_slice(&[0, 0, 0, 0, 200]);
        payload.extend_from_slice(part1);
        payload.extend_from_slice(&[0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            END_STREAM | PADDED | PRIORITY,
            9,
            &payload,
        ));
        let (c1, c2) = part2.split_at(3);
        input.extend(frame(TYPE_CONTINUATION, 0, 9, c1));
        input.extend(frame(TYPE_CONTINUATION, END_HEADERS, 9, c2));
        input.extend(frame(TYPE_PING, 0, 0, &[9; 8]));
        input
    }

    #[tokio::test]
    async fn hyper_serves_rewritten_requests() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(echo_server(AuthorityFix::new(server)));
        // Dribble the bytes in small writes so reads split frames everywhere.
        for chunk in client_bytes().chunks(7) {
            client.write_all(chunk).await.expect("write");
        }
        let got = outcomes(&mut client, &[1, 3, 5, 7, 9]).await;
        let ok = |body: &str| Outcome::Response("200".to_string(), body.to_string());
        assert_eq!(got[&1], ok("127.0.0.1:2379 one -"));
        assert_eq!(got[&3], ok("127.0.0.1:2379 one -"));
        assert_eq!(got[&5], ok("127.0.0.1:2379 - two"));
        assert_eq!(got[&7], ok("127.0.0.1:2379 one two"));
        assert_eq!(got[&9], ok("127.0.0.1:2379 one -"));
    }

    /// The problem this module exists for: without it, hyper resets the stream.
    #[tokio::test]
    async fn without_the_fix_hyper_resets_the_stream() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(echo_server(server));
        client.write_all(&client_bytes()).await.expect("write");
        let got = outcomes(&mut client, &[1, 3, 5]).await;
        assert!(matches!(got[&1], Outcome::Response(..)));
        assert!(matches!(got[&3], Outcome::Response(..)));
        const PROTOCOL_ERROR: u32 = 0x1;
        assert_eq!(got[&5], Outcome::Reset(PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn http1_is_untouched() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(echo_server(AuthorityFix::new(server)));
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nx-a: 1\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            while !String::from_utf8_lossy(&got).ends_with("- 1 -") {
                let n = client.read(&mut buf).await.expect("read");
                assert!(
                    n > 0,
                    "connection closed: {}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("response");
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test]
    async fn settings_from_the_server_pass_back() {
        // The server→client direction is untouched: the first frame hyper writes is
        // its SETTINGS.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(echo_server(AuthorityFix::new(server)));
        client.write_all(&opening()).await.expect("write");
        let (frame_type, ..) =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut client))
                .await
                .expect("settings");
        assert_eq!(frame_type, TYPE_SETTINGS);
    }
}
