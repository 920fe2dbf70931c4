//! A tiny raw HTTP/1.1 client over `std::net::TcpStream`.
//!
//! The conformance tests need byte-level control that higher level clients
//! hide: request targets that are sent exactly as written (`//`, `..`,
//! invalid percent escapes), bodies without or with a wrong `Content-Type`,
//! responses whose headers arrive long before their (chunked) body, and
//! reading a `stream=true` watch line by line.  Every blocking operation takes
//! a deadline, so nothing here can hang a test.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

/// Default time allowed for one ordinary request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// A request to send. The target (path + query) is written verbatim.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub body: Option<Vec<u8>>,
    /// `Content-Type` sent with a body. `None` sends no `Content-Type` header.
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Send no `Host` header (to provoke a protocol error).
    pub no_host: bool,
    /// Send `Connection: keep-alive` instead of `Connection: close`.
    pub keep_alive: bool,
}

pub const FORM: &str = "application/x-www-form-urlencoded";

impl Req {
    pub fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_string(),
            target: target.to_string(),
            body: None,
            content_type: None,
            headers: Vec::new(),
            no_host: false,
            keep_alive: false,
        }
    }
    pub fn get(target: &str) -> Req {
        Req::new("GET", target)
    }
    pub fn head(target: &str) -> Req {
        Req::new("HEAD", target)
    }
    pub fn delete(target: &str) -> Req {
        Req::new("DELETE", target)
    }
    /// PUT with an `application/x-www-form-urlencoded` body (like `curl -d`).
    pub fn put(target: &str, form: &str) -> Req {
        Req::new("PUT", target).form(form)
    }
    /// PUT without any body.
    pub fn put_empty(target: &str) -> Req {
        Req::new("PUT", target)
    }
    pub fn post(target: &str, form: &str) -> Req {
        Req::new("POST", target).form(form)
    }
    pub fn form(mut self, form: &str) -> Req {
        self.body = Some(form.as_bytes().to_vec());
        self.content_type = Some(FORM.to_string());
        self
    }
    /// A raw body with an arbitrary (or no) content type.
    pub fn raw_body(mut self, body: Vec<u8>, content_type: Option<&str>) -> Req {
        self.body = Some(body);
        self.content_type = content_type.map(str::to_string);
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn keep_alive(mut self) -> Req {
        self.keep_alive = true;
        self
    }
    pub fn without_host(mut self) -> Req {
        self.no_host = true;
        self
    }

    /// The request exactly as it goes on the wire.
    pub fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        if !self.no_host {
            out.push_str(&format!("Host: {addr}\r\n"));
        }
        out.push_str("User-Agent: keel-tests\r\nAccept: */*\r\n");
        out.push_str(if self.keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        });
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(body) = &self.body {
            if let Some(ct) = &self.content_type {
                out.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }

    /// Short human readable description (body abbreviated).
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.method, abbreviate(&self.target, 200));
        if let Some(b) = &self.body {
            let ct = self.content_type.as_deref().unwrap_or("<no content-type>");
            s.push_str(&format!(
                "  [body {} bytes, {}: {}]",
                b.len(),
                ct,
                abbreviate(&String::from_utf8_lossy(b), 120)
            ));
        }
        s
    }

    /// Value of a query parameter (first occurrence, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k == name {
                return Some(v.to_string());
            }
        }
        None
    }
    /// Value of a form/query parameter, looking at the body as well.
    pub fn param(&self, name: &str) -> Option<String> {
        if let (Some(body), Some(ct)) = (&self.body, &self.content_type)
            && ct == FORM
        {
            let b = String::from_utf8_lossy(body);
            for kv in b.split('&') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                if k == name {
                    return Some(v.to_string());
                }
            }
        }
        self.query_param(name)
    }
    /// Whether a boolean parameter is set to a Go-`ParseBool` true value.
    pub fn flag(&self, name: &str) -> bool {
        matches!(
            self.param(name).as_deref(),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True")
        )
    }
}

pub fn abbreviate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}…({} chars)", s.chars().count())
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the head of the response arrived.
    pub received_at: SystemTime,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
    /// `X-Etcd-Index` as a number.
    pub fn etcd_index(&self) -> Option<u64> {
        self.header("x-etcd-index")?.trim().parse().ok()
    }
    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
    /// Multi-line rendering for failure messages.
    pub fn render(&self) -> String {
        let mut s = format!("HTTP {} {}\n", self.status, self.reason);
        for (n, v) in &self.headers {
            if n == "date" {
                continue;
            }
            s.push_str(&format!("  {n}: {}\n", abbreviate(v, 200)));
        }
        s.push_str(&format!("  body: {}", abbreviate(&self.text(), 1500)));
        s
    }
}

/// Outcome of a request that may legitimately fail at the transport level.
#[derive(Debug)]
pub enum Outcome {
    Response(Resp),
    /// The connection was closed or reset without (complete) response.
    Closed(String),
}

impl Outcome {
    pub fn render(&self) -> String {
        match self {
            Outcome::Response(r) => r.render(),
            Outcome::Closed(e) => format!("<no HTTP response: {e}>"),
        }
    }
}

/// Send a request and read the whole response.
pub fn send(addr: SocketAddr, req: &Req, timeout: Duration) -> io::Result<Resp> {
    let deadline = Instant::now() + timeout;
    let mut s = HttpStream::open(addr, req, deadline)?;
    s.read_head(deadline)?;
    s.read_all(deadline)
}

/// Like [`send`] but a transport failure is returned as a value.
pub fn try_send(addr: SocketAddr, req: &Req, timeout: Duration) -> Outcome {
    match send(addr, req, timeout) {
        Ok(r) => Outcome::Response(r),
        Err(e) => Outcome::Closed(e.to_string()),
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline exceeded"));
    }
    Ok((deadline - now).max(Duration::from_millis(1)))
}

#[derive(Debug, Clone, Copy)]
enum BodyKind {
    None,
    Length(usize),
    /// Inside a chunk with this many bytes left (0 = expect a size line).
    Chunked {
        left: usize,
        done: bool,
    },
    UntilEof,
}

/// Response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub received_at: SystemTime,
}

/// An open connection whose response can be read incrementally.
#[derive(Debug)]
pub struct HttpStream {
    sock: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    head: Option<Head>,
    body: BodyKind,
    is_head_request: bool,
    /// Decoded body bytes not yet handed out by `next_line`.
    pending: Vec<u8>,
    /// Error from writing the request (the server may have answered anyway).
    pub write_error: Option<String>,
}

impl HttpStream {
    /// Connect and write the request. A write error (server closed early) is
    /// remembered, not returned: the server may still have sent a response.
    pub fn open(addr: SocketAddr, req: &Req, deadline: Instant) -> io::Result<HttpStream> {
        let sock = TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
        sock.set_nodelay(true).ok();
        let mut s = HttpStream {
            sock,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            head: None,
            body: BodyKind::None,
            is_head_request: req.method.eq_ignore_ascii_case("HEAD"),
            pending: Vec::new(),
            write_error: None,
        };
        let bytes = req.to_bytes(addr);
        s.write_all_deadline(&bytes, deadline);
        Ok(s)
    }

    /// Send another request on the same (keep-alive) connection after the
    /// previous response was read completely, and read its response.
    pub fn send_next(
        &mut self,
        addr: SocketAddr,
        req: &Req,
        deadline: Instant,
    ) -> io::Result<Resp> {
        self.head = None;
        self.body = BodyKind::None;
        self.pending.clear();
        self.is_head_request = req.method.eq_ignore_ascii_case("HEAD");
        let bytes = req.to_bytes(addr);
        self.write_all_deadline(&bytes, deadline);
        self.read_head(deadline)?;
        self.read_all(deadline)
    }

    /// Connect and write only a prefix of a request (for slow-client tests).
    pub fn open_partial(
        addr: SocketAddr,
        bytes: &[u8],
        deadline: Instant,
    ) -> io::Result<HttpStream> {
        let sock = TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
        let mut s = HttpStream {
            sock,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            head: None,
            body: BodyKind::None,
            is_head_request: false,
            pending: Vec::new(),
            write_error: None,
        };
        s.write_all_deadline(bytes, deadline);
        Ok(s)
    }

    pub fn write_more(&mut self, bytes: &[u8], deadline: Instant) {
        self.write_all_deadline(bytes, deadline);
    }

    fn write_all_deadline(&mut self, bytes: &[u8], deadline: Instant) {
        let mut off = 0;
        while off < bytes.len() {
            let rem = match remaining(deadline) {
                Ok(r) => r,
                Err(e) => {
                    self.write_error = Some(e.to_string());
                    return;
                }
            };
            self.sock.set_write_timeout(Some(rem)).ok();
            match self.sock.write(&bytes[off..]) {
                Ok(0) => {
                    self.write_error = Some("write returned 0".into());
                    return;
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.write_error = Some(e.to_string());
                    return;
                }
            }
        }
        self.sock.flush().ok();
    }

    /// Close our sending side (signals EOF to the server).
    pub fn shutdown_write(&self) {
        self.sock.shutdown(Shutdown::Write).ok();
    }

    /// Read more bytes into the buffer. Ok(false) on EOF.
    fn fill(&mut self, deadline: Instant) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut tmp = [0u8; 64 * 1024];
        loop {
            self.sock.set_read_timeout(Some(remaining(deadline)?))?;
            match self.sock.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "timed out waiting for data",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A CRLF (or LF) terminated line; consumed only when complete.
    fn read_line(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if !self.fill(deadline)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a line",
                ));
            }
        }
    }

    /// Read the status line and headers (can be retried after a timeout).
    pub fn read_head(&mut self, deadline: Instant) -> io::Result<&Head> {
        if self.head.is_none() {
            // Parse without consuming until the whole head is there.
            loop {
                let data = &self.buf[self.pos..];
                let end = find_head_end(data);
                if let Some((end, sep)) = end {
                    let text = String::from_utf8_lossy(&data[..end]).into_owned();
                    self.pos += end + sep;
                    let head = parse_head(&text)?;
                    if head.status == 100 {
                        // 100 Continue: skip and read the real head.
                        continue;
                    }
                    self.body = body_kind(&head, self.is_head_request);
                    self.head = Some(head);
                    break;
                }
                if !self.fill(deadline)? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed before a complete response head ({} bytes received{})",
                            self.buf.len() - self.pos,
                            self.write_error
                                .as_ref()
                                .map(|e| format!("; write error: {e}"))
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        Ok(self.head.as_ref().expect("head"))
    }

    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Next piece of decoded body data; `None` at the end of the body.
    pub fn read_body_some(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        if self.head.is_none() {
            self.read_head(deadline)?;
        }
        loop {
            match self.body {
                BodyKind::None => return Ok(None),
                BodyKind::Length(0) => {
                    self.body = BodyKind::None;
                    return Ok(None);
                }
                BodyKind::Length(left) => {
                    if self.pos == self.buf.len() && !self.fill(deadline)? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("connection closed with {left} body bytes missing"),
                        ));
                    }
                    let n = left.min(self.buf.len() - self.pos);
                    let out = self.buf[self.pos..self.pos + n].to_vec();
                    self.pos += n;
                    self.body = BodyKind::Length(left - n);
                    return Ok(Some(out));
                }
                BodyKind::UntilEof => {
                    if self.pos == self.buf.len() && !self.fill(deadline)? {
                        self.body = BodyKind::None;
                        return Ok(None);
                    }
                    let out = self.buf[self.pos..].to_vec();
                    self.pos = self.buf.len();
                    return Ok(Some(out));
                }
                BodyKind::Chunked { done: true, .. } => return Ok(None),
                BodyKind::Chunked { left: 0, .. } => {
                    let line = self.read_line(deadline)?;
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let size_str = line.split(';').next().unwrap_or("").trim();
                    if size_str.is_empty() {
                        // The CRLF that terminates the previous chunk's data.
                        continue;
                    }
                    let size = usize::from_str_radix(size_str, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size line {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers until an empty line; tolerate EOF.
                        loop {
                            match self.read_line(deadline) {
                                Ok(l) if l.is_empty() => break,
                                Ok(_) => continue,
                                Err(_) => break,
                            }
                        }
                        self.body = BodyKind::Chunked {
                            left: 0,
                            done: true,
                        };
                        return Ok(None);
                    }
                    self.body = BodyKind::Chunked {
                        left: size,
                        done: false,
                    };
                }
                BodyKind::Chunked { left, .. } => {
                    if self.pos == self.buf.len() && !self.fill(deadline)? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed inside a chunk",
                        ));
                    }
                    let n = left.min(self.buf.len() - self.pos);
                    let out = self.buf[self.pos..self.pos + n].to_vec();
                    self.pos += n;
                    self.body = BodyKind::Chunked {
                        left: left - n,
                        done: false,
                    };
                    return Ok(Some(out));
                }
            }
        }
    }

    /// Read the rest of the body and build a [`Resp`].
    pub fn read_all(&mut self, deadline: Instant) -> io::Result<Resp> {
        let head = self.read_head(deadline)?.clone();
        let mut body = std::mem::take(&mut self.pending);
        while let Some(piece) = self.read_body_some(deadline)? {
            body.extend_from_slice(&piece);
        }
        Ok(Resp {
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
            received_at: head.received_at,
        })
    }

    /// Next `\n`-terminated line of the body (without the newline).
    /// `Ok(None)` when the body ended (a trailing unterminated fragment is
    /// returned first).
    pub fn next_line(&mut self, deadline: Instant) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            match self.read_body_some(deadline)? {
                Some(p) => self.pending.extend_from_slice(&p),
                None => {
                    if self.pending.is_empty() {
                        return Ok(None);
                    }
                    let line = std::mem::take(&mut self.pending);
                    return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
                }
            }
        }
    }

    /// Next non-empty body line.
    pub fn next_nonempty_line(&mut self, deadline: Instant) -> io::Result<Option<String>> {
        loop {
            match self.next_line(deadline)? {
                Some(l) if l.trim().is_empty() => continue,
                other => return Ok(other),
            }
        }
    }
}

fn find_head_end(data: &[u8]) -> Option<(usize, usize)> {
    for i in 0..data.len() {
        if data[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
        if data[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
    }
    None
}

fn parse_head(text: &str) -> io::Result<Head> {
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        ));
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        )
    })?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Head {
        status,
        reason,
        headers,
        received_at: SystemTime::now(),
    })
}

fn body_kind(head: &Head, is_head_request: bool) -> BodyKind {
    if is_head_request
        || head.status == 204
        || head.status == 304
        || (100..200).contains(&head.status)
    {
        return BodyKind::None;
    }
    let get = |n: &str| {
        head.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return BodyKind::Chunked {
            left: 0,
            done: false,
        };
    }
    if let Some(n) = get("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        return BodyKind::Length(n);
    }
    BodyKind::UntilEof
}

/// Percent-encode a string for use in a form body or query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decode a form/query value (`+` is a space, `%XX` escapes).
pub fn urldecode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |x: Option<&u8>| x.and_then(|x| (*x as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
