//! Malformed and hostile input against the v2 API: odd paths, broken form
//! bodies, bad parameter values, oversized keys/values, slow and broken
//! clients. For each request the response is compared with etcd's where
//! etcd gives a defined answer, and a concurrent client must still be served
//! while the bad connection is open and afterwards.
//!
//! Run: `cargo test -p keel-tests --test v2_bad_input`

use std::time::{Duration, Instant};

use keel_tests::http::{HttpStream, Outcome, Req, Resp, urlencode};
use keel_tests::pair::{Cmp, Pair, Side, transport_error};

/// How strictly keel's answer must match etcd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// etcd gives a defined answer: keel must give the same.
    Same,
    /// etcd's answer is an artefact of Go/cmux (e.g. a reset connection):
    /// keel may differ (recorded as a note) but must stay healthy.
    Lenient,
}

const BAD_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /v2/keys/` on a fresh connection must succeed.
fn probe(side: &Side) -> Result<(), String> {
    let r = side.send_timeout(&Req::get("/v2/keys/"), Duration::from_secs(10));
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!(
            "{}: probe GET /v2/keys/ failed: {}",
            side.name(),
            r.render()
        ))
    }
}

/// Send `req` on its own connection; while that connection is open, another
/// client must be served; then read the answer.
fn send_with_probe(side: &Side, req: &Req) -> (Outcome, Result<(), String>) {
    let r = side.req(req);
    let deadline = Instant::now() + BAD_TIMEOUT;
    let mut st = match HttpStream::open(side.server.addr(), &r, deadline) {
        Ok(s) => s,
        Err(e) => return (Outcome::Closed(format!("connect: {e}")), probe(side)),
    };
    let during = probe(side);
    let out = match st.read_all(deadline) {
        Ok(resp) => Outcome::Response(resp),
        Err(e) => Outcome::Closed(e.to_string()),
    };
    let after = probe(side);
    (out, during.and(after))
}

fn as_resp(o: &Outcome) -> Resp {
    match o {
        Outcome::Response(r) => r.clone(),
        Outcome::Closed(e) => transport_error(e),
    }
}

/// Run one bad request on both servers and compare.
fn bad(p: &mut Pair, req: Req, expect: Expect) -> (Outcome, Outcome) {
    bad_cmp(p, req, expect, Cmp::default())
}

fn bad_cmp(p: &mut Pair, req: Req, expect: Expect, cmp: Cmp) -> (Outcome, Outcome) {
    let (oe, pe) = send_with_probe(&p.etcd, &req);
    let (ok, pk) = send_with_probe(&p.keel, &req);
    for r in [pe, pk] {
        if let Err(e) = r {
            p.fail(format!("after/while `{}`: {e}", req.describe()));
        }
    }
    let (re, rk) = (as_resp(&oe), as_resp(&ok));
    match expect {
        Expect::Same => {
            p.compare(&req, &re, &rk, &cmp);
        }
        Expect::Lenient => {
            if let Outcome::Response(r) = &ok
                && r.status >= 500
            {
                p.fail(format!(
                    "`{}`: keel answered with a server error:\n{}",
                    req.describe(),
                    r.render()
                ));
            }
            p.compare_lenient(&req, &re, &rk, &cmp);
        }
    }
    (oe, ok)
}

#[test]
fn malformed_paths() {
    let mut p = Pair::start("malformed_paths");
    p.setup(Req::put("/v2/keys/a", "value=1"));
    p.setup(Req::put("/v2/keys/b", "value=2"));
    // Go's ServeMux answers unclean paths with 301 to the cleaned path.
    for t in [
        "/v2/keys//a",
        "/v2/keys/a//",
        "/v2/keys//",
        "/v2/keys/x/../b",
        "/v2/keys/./a",
        "/v2/keys/.",
        "/v2/keys/..",
        "/v2/keys/a/..",
        "/v2/../version",
        "//v2/keys/a",
        "/v2/keys//a?recursive=true",
    ] {
        bad(&mut p, Req::get(t), Expect::Same);
    }
    bad(&mut p, Req::put("/v2/keys//c", "value=3"), Expect::Same);
    bad(&mut p, Req::delete("/v2/keys/x/../a"), Expect::Same);
    bad(&mut p, Req::get("/v2/keys/c"), Expect::Same); // not created by the redirected PUT
    // Percent-escapes in the key.
    for (put_t, get_t) in [
        ("/v2/keys/sp%20ace", "/v2/keys/sp%20ace"),
        ("/v2/keys/sl%2Fash", "/v2/keys/sl/ash"),
        ("/v2/keys/q%3Fmark", "/v2/keys/q%3Fmark"),
        ("/v2/keys/hash%23tag", "/v2/keys/hash%23tag"),
        ("/v2/keys/pl+us", "/v2/keys/pl+us"),
        ("/v2/keys/pct%25", "/v2/keys/pct%25"),
        ("/v2/keys/%E2%9C%93", "/v2/keys/%E2%9C%93"),
        ("/v2/keys/amp%26x%3D1", "/v2/keys/amp%26x%3D1"),
        ("/v2/keys/trail/", "/v2/keys/trail"),
        ("/v2/keys/UPPER", "/v2/keys/upper"),
        ("/v2/keys/dot.key", "/v2/keys/dot.key"),
        ("/v2/keys/enc%2E%2E", "/v2/keys/enc.."),
    ] {
        bad(&mut p, Req::put(put_t, "value=v"), Expect::Same);
        bad(&mut p, Req::get(get_t), Expect::Same);
    }
    bad(
        &mut p,
        Req::get("/v2/keys/?recursive=true&sorted=true"),
        Expect::Same,
    );
    // Invalid escapes: Go rejects the request line with a plain 400.
    bad(&mut p, Req::get("/v2/keys/bad%zz"), Expect::Same);
    bad(&mut p, Req::put("/v2/keys/bad%", "value=1"), Expect::Same);
    bad(&mut p, Req::get("/v2/keys/%2e%2e/a"), Expect::Same);
    bad(&mut p, Req::get("/v2/keys/nul%00byte"), Expect::Same);
    // Long keys: 4000 bytes work on etcd; longer request lines are reset by
    // etcd's cmux (it sniffs only the first 4 KiB) — keel may accept them.
    let k4000 = "k".repeat(4000);
    bad(
        &mut p,
        Req::put(&format!("/v2/keys/{k4000}"), "value=long"),
        Expect::Same,
    );
    bad(&mut p, Req::get(&format!("/v2/keys/{k4000}")), Expect::Same);
    let k8000 = "k".repeat(8000);
    bad(
        &mut p,
        Req::put(&format!("/v2/keys/{k8000}"), "value=longer"),
        Expect::Lenient,
    );
    let k1m = "k".repeat(1_100_000);
    bad(
        &mut p,
        Req::get(&format!("/v2/keys/{k1m}")),
        Expect::Lenient,
    );
    let deep = "d/".repeat(500);
    bad(
        &mut p,
        Req::put(&format!("/v2/keys/{deep}leaf"), "value=deep"),
        Expect::Same,
    );
    bad(
        &mut p,
        Req::get(&format!("/v2/keys/{deep}leaf")),
        Expect::Same,
    );
    p.finish();
}

#[test]
fn bad_bodies() {
    let mut p = Pair::start("bad_bodies");
    let form = Some("application/x-www-form-urlencoded");
    let raw =
        |t: &str, body: &[u8], ct: Option<&str>| Req::new("PUT", t).raw_body(body.to_vec(), ct);
    // Unparsable form bodies and queries: 210 with Go's parse error as cause.
    bad(&mut p, raw("/v2/keys/f", b"value=%zz", form), Expect::Same);
    bad(&mut p, raw("/v2/keys/f", b"value=%", form), Expect::Same);
    bad(
        &mut p,
        raw("/v2/keys/f", b"%zz=1&value=1", form),
        Expect::Same,
    );
    bad(
        &mut p,
        raw("/v2/keys/f", b"value=a;b=c", form),
        Expect::Same,
    );
    bad(&mut p, Req::put_empty("/v2/keys/f?value=%zz"), Expect::Same);
    bad(&mut p, Req::put_empty("/v2/keys/f?a=1;b=2"), Expect::Same);
    bad(&mut p, Req::get("/v2/keys/f?recursive=%zz"), Expect::Same);
    bad(&mut p, Req::delete("/v2/keys/f?x=%"), Expect::Same);
    // Bodies that are not forms are ignored (the value is empty).
    bad(
        &mut p,
        raw("/v2/keys/plain", b"value=ignored", Some("text/plain")),
        Expect::Same,
    );
    bad(
        &mut p,
        raw(
            "/v2/keys/json",
            br#"{"value":"x"}"#,
            Some("application/json"),
        ),
        Expect::Same,
    );
    bad(
        &mut p,
        raw("/v2/keys/noct", b"value=ignored", None),
        Expect::Same,
    );
    bad(
        &mut p,
        raw(
            "/v2/keys/charset",
            b"value=cs",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
        ),
        Expect::Same,
    );
    bad(
        &mut p,
        raw(
            "/v2/keys/upperct",
            b"value=uc",
            Some("Application/X-WWW-Form-Urlencoded"),
        ),
        Expect::Same,
    );
    bad(
        &mut p,
        raw("/v2/keys/binary", &[0xff, 0xfe, 0x00, 0x01], form),
        Expect::Same,
    );
    bad(&mut p, raw("/v2/keys/noeq", b"value", form), Expect::Same);
    bad(
        &mut p,
        raw("/v2/keys/amps", b"&&&value=a&&", form),
        Expect::Same,
    );
    // Duplicates: first value wins; the body wins over the query string.
    bad(
        &mut p,
        raw("/v2/keys/dup", b"value=first&value=second", form),
        Expect::Same,
    );
    bad(
        &mut p,
        raw("/v2/keys/both?value=query", b"value=body", form),
        Expect::Same,
    );
    bad(
        &mut p,
        raw(
            "/v2/keys/both2?prevExist=false",
            b"prevExist=true&value=b",
            form,
        ),
        Expect::Same,
    );
    bad(
        &mut p,
        Req::get("/v2/keys/?recursive=true&sorted=true"),
        Expect::Same,
    );
    // A chunked request body.
    let chunked = Req::new("PUT", "/v2/keys/chunked")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Transfer-Encoding", "chunked");
    let mut outs = Vec::new();
    for side in p.sides() {
        let mut bytes = side.req(&chunked).to_bytes(side.server.addr());
        bytes.extend_from_slice(b"6\r\nvalue=\r\n7\r\nchunked\r\n0\r\n\r\n");
        let deadline = Instant::now() + BAD_TIMEOUT;
        let out = HttpStream::open_partial(side.server.addr(), &bytes, deadline)
            .and_then(|mut s| s.read_all(deadline))
            .unwrap_or_else(|e| transport_error(&e.to_string()));
        outs.push(out);
    }
    p.compare(
        &Req::new("PUT", "/v2/keys/chunked  [chunked body value=chunked]"),
        &outs[0],
        &outs[1],
        &Cmp::default(),
    );
    bad(&mut p, Req::get("/v2/keys/chunked"), Expect::Same);
    // Members API with broken JSON bodies.
    bad_cmp(
        &mut p,
        Req::new("POST", "/v2/members")
            .raw_body(b"{\"peerURLs\":".to_vec(), Some("application/json")),
        Expect::Same,
        Cmp::shape(),
    );
    bad(
        &mut p,
        Req::new("POST", "/v2/members").raw_body(
            b"{\"peerURLs\":[\"not a url\"]}".to_vec(),
            Some("application/json"),
        ),
        Expect::Same,
    );
    bad(
        &mut p,
        Req::new("POST", "/v2/members").raw_body(b"{\"peerURLs\":[]}".to_vec(), Some("text/plain")),
        Expect::Same,
    );
    p.finish();
}

#[test]
fn bad_parameter_values() {
    let mut p = Pair::start("bad_parameter_values");
    p.setup(Req::put("/v2/keys/k", "value=1"));
    for q in [
        "ttl=%2B5",
        "ttl=05",
        "ttl=0x10",
        "ttl=%205",
        "ttl=5%20",
        "ttl=1e3",
        "ttl=18446744073709551616",
        "ttl=",
        "prevIndex=%2B1",
        "prevIndex=18446744073709551615",
        "prevIndex=18446744073709551616",
        "prevIndex=",
        "prevExist=",
        "prevExist=yes",
        "prevExist=tRUE",
        "dir=",
        "dir=1&value=x",
        "noValueOnSuccess=1",
        "noValueOnSuccess=",
        "refresh=",
        "refresh=0",
        "value=q&ttl=abc&prevIndex=x",
    ] {
        bad(
            &mut p,
            Req::put(&format!("/v2/keys/k?{q}"), "value=2"),
            Expect::Same,
        );
    }
    for q in [
        "recursive=yes",
        "recursive=1",
        "recursive=t",
        "sorted=T",
        "quorum=True",
        "quorum=",
        "wait=",
        "wait=false&waitIndex=abc",
        "wait=true&waitIndex=",
        "wait=true&waitIndex=0&stream=x",
        "stream=true",
        "stream=true&wait=false",
        "waitIndex=5",
        "unknown=1",
        "recursive=true&recursive=x",
        "recursive=x&recursive=true",
    ] {
        bad(&mut p, Req::get(&format!("/v2/keys/k?{q}")), Expect::Same);
    }
    for q in [
        "dir=yes",
        "recursive=",
        "prevIndex=-1",
        "prevValue=",
        "ttl=5",
    ] {
        bad(
            &mut p,
            Req::delete(&format!("/v2/keys/nokey?{q}")),
            Expect::Same,
        );
    }
    bad(&mut p, Req::get("/v2/keys/k"), Expect::Same);
    p.finish();
}

#[test]
fn oversized_values() {
    let mut p = Pair::start("oversized_values");
    // 1 MiB and 2 MiB values: etcd's v2 API accepts both (the 1.5 MiB
    // --max-request-bytes limit applies to v3 requests only).
    for (name, size) in [("v1m", 1024 * 1024), ("v2m", 2 * 1024 * 1024)] {
        let body = format!("value={}", "v".repeat(size));
        bad(
            &mut p,
            Req::put(&format!("/v2/keys/{name}"), &body),
            Expect::Same,
        );
        bad(&mut p, Req::get(&format!("/v2/keys/{name}")), Expect::Same);
    }
    // A value that needs escaping, 600 KiB of '%41'.
    let body = format!("value={}", "%41".repeat(600 * 1024));
    bad(&mut p, Req::put("/v2/keys/escaped", &body), Expect::Same);
    // Above Go's 10 MB form limit: 210 "http: POST too large".
    let body = format!("value={}", "v".repeat(11_000_000));
    bad(&mut p, Req::put("/v2/keys/v11m", &body), Expect::Same);
    bad(&mut p, Req::get("/v2/keys/v11m"), Expect::Same);
    // Many small parameters.
    let mut many = String::from("value=m");
    for i in 0..5000 {
        many.push_str(&format!("&p{i}={i}"));
    }
    bad(&mut p, Req::put("/v2/keys/many", &many), Expect::Same);
    bad(&mut p, Req::get("/v2/keys/?sorted=true"), Expect::Same);
    // A large header.
    bad(
        &mut p,
        Req::get("/v2/keys/many").header("X-Big", &"b".repeat(100_000)),
        Expect::Lenient,
    );
    // A large value in the query string of a short request line is still
    // limited by the request-line sniffing of etcd's cmux (lenient).
    let q = urlencode(&"q".repeat(10_000));
    bad(
        &mut p,
        Req::put_empty(&format!("/v2/keys/qbig?value={q}")),
        Expect::Lenient,
    );
    p.finish();
}

#[test]
fn slow_and_broken_clients() {
    let mut p = Pair::start("slow_and_broken_clients");
    p.setup(Req::put("/v2/keys/k", "value=1"));
    let mut outs = Vec::new();
    let mut msgs = Vec::new();
    for side in p.sides() {
        let addr = side.server.addr();
        let deadline = Instant::now() + BAD_TIMEOUT;
        // 1. Request head sent only partially; others are still served.
        let partial_head =
            HttpStream::open_partial(addr, b"GET /v2/keys/k HTTP/1.1\r\nHost: x\r\n", deadline);
        // 2. Body shorter than Content-Length.
        let partial_body = HttpStream::open_partial(
            addr,
            b"PUT /v2/keys/short HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nvalue=only",
            deadline,
        );
        // 3. Not HTTP at all.
        let garbage = HttpStream::open_partial(addr, b"HELLO THERE\r\n\r\n", deadline);
        // 4. Many idle connections.
        let idle: Vec<_> = (0..50)
            .map(|_| std::net::TcpStream::connect(addr))
            .collect();
        // 5. Watches whose clients go away.
        let watches: Vec<_> = (0..5)
            .map(|_| HttpStream::open(addr, &Req::get("/v2/keys/k?wait=true"), deadline))
            .collect();
        if let Err(e) = probe(side) {
            msgs.push(format!("while slow/broken clients are connected: {e}"));
        }
        // Complete the partial head: the request is then answered.
        let mut head_out = String::new();
        if let Ok(mut s) = partial_head {
            s.write_more(b"\r\n", deadline);
            head_out = match s.read_all(deadline) {
                Ok(r) => format!("{}", r.status),
                Err(e) => format!("error {e}"),
            };
        }
        // Abandon the short body: close our write side, the server must cope.
        let mut body_out = String::from("-");
        if let Ok(mut s) = partial_body {
            s.shutdown_write();
            body_out = match s.read_all(Instant::now() + Duration::from_secs(10)) {
                Ok(r) => format!("{}", r.status),
                Err(_) => "closed".into(),
            };
        }
        let garbage_out =
            match garbage.and_then(|mut s| s.read_all(Instant::now() + Duration::from_secs(10))) {
                Ok(r) => format!("{}", r.status),
                Err(_) => "closed".into(),
            };
        drop(idle);
        drop(watches);
        if let Err(e) = probe(side) {
            msgs.push(format!("after slow/broken clients went away: {e}"));
        }
        // The short PUT must not have been applied.
        let r = side.send(&Req::get("/v2/keys/short"));
        outs.push((head_out, body_out, garbage_out, r.status));
        // Watchers of vanished clients are removed (stats/store "watchers").
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let w = side
                .send(&Req::get("/v2/stats/store"))
                .json()
                .and_then(|v| v.get("watchers").and_then(serde_json::Value::as_u64));
            match w {
                Some(0) | None => break,
                Some(n) if Instant::now() >= deadline => {
                    msgs.push(format!(
                        "{}: {n} watchers still registered 10 s after their clients closed",
                        side.name()
                    ));
                    break;
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    for m in msgs {
        p.fail(m);
    }
    let (e, k) = (&outs[0], &outs[1]);
    if e.0 != k.0 {
        p.fail(format!(
            "completed partial request head: etcd {} vs keel {}",
            e.0, k.0
        ));
    }
    if e.3 != k.3 {
        p.fail(format!(
            "GET of a key whose PUT body was cut short: etcd {} vs keel {}",
            e.3, k.3
        ));
    }
    if e.1 != k.1 || e.2 != k.2 {
        p.note(format!(
            "short body: etcd {} keel {}; non-HTTP bytes: etcd {} keel {}",
            e.1, k.1, e.2, k.2
        ));
    }
    // Requests without Host header / HTTP/1.0.
    bad(
        &mut p,
        Req::get("/v2/keys/k").without_host(),
        Expect::Lenient,
    );
    let mut outs = Vec::new();
    for side in p.sides() {
        let deadline = Instant::now() + BAD_TIMEOUT;
        let out = HttpStream::open_partial(
            side.server.addr(),
            b"GET /v2/keys/k HTTP/1.0\r\n\r\n",
            deadline,
        )
        .and_then(|mut s| s.read_all(deadline))
        .unwrap_or_else(|e| transport_error(&e.to_string()));
        outs.push(out);
    }
    p.compare(
        &Req::get("/v2/keys/k  [HTTP/1.0, no Host]"),
        &outs[0],
        &outs[1],
        &Cmp::default(),
    );
    p.finish();
}
