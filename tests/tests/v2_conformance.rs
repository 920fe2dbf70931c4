//! etcd v2 HTTP+JSON conformance: every scenario sends the same request
//! sequence to etcd 3.4 (`--enable-v2`) and to keel-store and compares the
//! responses after normalising indexes (relative to each server's index
//! before the scenario), ports, ids and expiration times.
//!
//! Run: `cargo test -p keel-tests --test v2_conformance`
//! (`KEEL_CONFORMANCE_PEER=etcd` compares etcd with itself.)

use std::time::Duration;

use keel_tests::http::{HttpStream, Req};
use keel_tests::norm;
use keel_tests::pair::{Cmp, Pair};
use nix::sys::signal::Signal;
use serde_json::Value;

fn get(t: &str) -> Req {
    Req::get(t)
}
fn put(t: &str, form: &str) -> Req {
    Req::put(t, form)
}
fn del(t: &str) -> Req {
    Req::delete(t)
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn basic_endpoints() {
    let mut p = Pair::start("basic_endpoints");

    // /version: shape (keys and types) plus an etcd-like version on keel.
    let (e, k) = p.step_cmp(get("/version"), Cmp::shape());
    let _ = e;
    if let Some(v) = k.json() {
        let server = v.get("etcdserver").and_then(Value::as_str).unwrap_or("");
        let parts: Vec<u64> = server.split('.').filter_map(|x| x.parse().ok()).collect();
        if parts.len() != 3 || parts[0] != 3 || parts[1] < 4 {
            p.fail(format!(
                "/version: keel etcdserver {server:?} is not an etcd-like 3.4+ version"
            ));
        }
        let cluster = v.get("etcdcluster").and_then(Value::as_str).unwrap_or("");
        let cparts: Vec<&str> = cluster.split('.').collect();
        if cparts.len() != 3 || cparts[0] != "3" || cparts[2] != "0" {
            p.fail(format!(
                "/version: keel etcdcluster {cluster:?} is not of the form 3.N.0"
            ));
        }
    }
    p.step(get("/health"));
    p.step(get("/v2/members"));
    p.step(get("/v2/members/leader"));
    p.step(get("/v2/machines"));
    p.step(Req::head("/v2/machines"));
    p.step_cmp(get("/v2/stats/self"), Cmp::shape());
    p.step_cmp(get("/v2/stats/store"), Cmp::shape());
    p.step_cmp(get("/v2/stats/leader"), Cmp::shape());
    // stats/self and members: ids must be lowercase hex without leading zeros.
    let mut msgs = Vec::new();
    for side in p.sides() {
        let r = side.send(&get("/v2/stats/self"));
        if let Some(v) = r.json() {
            let id = v.get("id").and_then(Value::as_str).unwrap_or("");
            if !norm::is_hex_id(id) {
                msgs.push(format!(
                    "{}: /v2/stats/self id={id:?} is not a hex id",
                    side.name()
                ));
            }
        }
    }
    for m in msgs {
        p.fail(m);
    }
    p.finish();
}

#[test]
fn members_api_errors() {
    let mut p = Pair::start("members_api_errors");
    // Adding a member with an existing peer URL: 409 conflict.
    let body_e = format!(r#"{{"peerURLs":["{}"]}}"#, p.etcd.server.peer_url());
    let body_k = format!(r#"{{"peerURLs":["{}"]}}"#, p.keel.server.peer_url());
    let e = p.etcd.send(
        &Req::new("POST", "/v2/members").raw_body(body_e.into_bytes(), Some("application/json")),
    );
    let k = p.keel.send(
        &Req::new("POST", "/v2/members").raw_body(body_k.into_bytes(), Some("application/json")),
    );
    p.compare(
        &Req::new("POST", "/v2/members  (own peer URL)"),
        &e,
        &k,
        &Cmp::default(),
    );
    // Bad JSON: the message is Go's decoder text; compare status and shape.
    p.step_cmp(
        Req::new("POST", "/v2/members").raw_body(b"garbage".to_vec(), Some("application/json")),
        Cmp::shape(),
    );
    p.step(del("/v2/members/1234"));
    p.step(del("/v2/members/zz"));
    p.step(Req::new("PATCH", "/v2/members"));
    p.finish();
}

#[test]
fn set_get_head() {
    let mut p = Pair::start("set_get_head");
    p.step(put("/v2/keys/message", "value=Hello")); // i+1, 201
    p.step(put("/v2/keys/message", "value=Hello+world")); // i+2, 200 + prevNode
    p.step(get("/v2/keys/message"));
    let (e, k) = p.step(Req::head("/v2/keys/message"));
    // HEAD: headers only, Content-Length of the JSON a GET would return.
    let mut msgs = Vec::new();
    for (side, r) in [(&p.etcd, &e), (&p.keel, &k)] {
        let g = side.send(&get("/v2/keys/message"));
        let cl = r.header("content-length").map(str::to_string);
        if cl.as_deref() != Some(g.body.len().to_string().as_str()) || !r.body.is_empty() {
            msgs.push(format!(
                "{}: HEAD /v2/keys/message content-length {cl:?} (body {} bytes) but GET body is {} bytes",
                side.name(),
                r.body.len(),
                g.body.len()
            ));
        }
    }
    for m in msgs {
        p.fail(m);
    }
    p.step(Req::head("/v2/keys/missing"));
    p.step(get("/v2/keys/missing"));
    p.step(get("/v2/keys/message?quorum=true"));
    p.step(get(
        "/v2/keys/message?quorum=false&recursive=false&sorted=false",
    ));
    p.step(put(
        "/v2/keys/message?noValueOnSuccess=true",
        "value=Hello+again",
    )); // i+3
    p.step(get("/v2/keys/message"));
    // Empty value and value from the query string.
    p.step(put("/v2/keys/empty", "value=")); // i+4
    p.step(Req::put_empty("/v2/keys/noval")); // i+5
    p.step(Req::put_empty("/v2/keys/qval?value=fromquery")); // i+6
    p.step(get("/v2/keys/qval"));
    // Nested path creates parents implicitly.
    p.step(put("/v2/keys/a/b/c", "value=deep")); // i+7
    p.step(get("/v2/keys/a"));
    p.step(get("/v2/keys/a?recursive=true"));
    p.step(get("/v2/keys/a/b/c/"));
    p.step(get("/v2/keys"));
    p.step(get("/v2/keys/"));
    p.step(get("/v2/keys/?recursive=true&sorted=true"));
    p.finish();
}

#[test]
fn create_update_prev_exist() {
    let mut p = Pair::start("create_update_prev_exist");
    p.step(put("/v2/keys/message", "value=Hello")); // i+1
    p.step(put("/v2/keys/message?prevExist=false", "value=x")); // 105
    p.step(put("/v2/keys/newkey?prevExist=false", "value=new")); // i+2 create
    p.step(put("/v2/keys/nokey?prevExist=true", "value=x")); // 100
    p.step(put("/v2/keys/newkey?prevExist=true", "value=updated")); // i+3 update
    p.step(put(
        "/v2/keys/newkey?prevExist=true&noValueOnSuccess=true",
        "value=u2",
    )); // i+4
    p.step(put(
        "/v2/keys/c2?prevExist=false&noValueOnSuccess=true",
        "value=c",
    )); // i+5
    p.step(get("/v2/keys/newkey"));
    // prevExist with boolean spellings accepted by Go's ParseBool.
    p.step(put("/v2/keys/newkey?prevExist=T", "value=t")); // i+6
    p.step(put("/v2/keys/newkey?prevExist=0", "value=f")); // 105
    p.step(put("/v2/keys/newkey?prevExist=TRUE", "value=t2")); // i+7
    // Directories via prevExist.
    p.step(put("/v2/keys/d?dir=true&prevExist=false", "")); // i+8 create dir
    p.step(put("/v2/keys/d?dir=true&prevExist=false", "")); // 105
    p.step(put("/v2/keys/d?prevExist=true", "value=v")); // update dir with value: 102
    p.step(put("/v2/keys/d?prevExist=true&dir=true", "")); // dir update (no ttl)
    p.step(put("/v2/keys/nodir?prevExist=true&dir=true", "")); // 100
    p.step(put(
        "/v2/keys/newkey?prevExist=false&prevValue=t2",
        "value=z",
    )); // create wins: 105
    p.step(put("/v2/keys/k3?prevExist=true&prevValue=x", "value=z")); // 100
    p.step(get("/v2/keys/?recursive=true"));
    p.finish();
}

#[test]
fn compare_and_swap() {
    let mut p = Pair::start("compare_and_swap");
    p.step(put("/v2/keys/foo", "value=one")); // i+1
    p.step(put("/v2/keys/foo?prevValue=two", "value=three")); // 101 [two != one]
    p.step(put("/v2/keys/foo?prevIndex={i+1000}", "value=three")); // 101 [x != i+1]
    p.step(put(
        "/v2/keys/foo?prevValue=two&prevIndex={i+1000}",
        "value=three",
    ));
    p.step(put(
        "/v2/keys/foo?prevValue=one&prevIndex={i+1000}",
        "value=three",
    )); // value ok, index not
    p.step(put(
        "/v2/keys/foo?prevValue=two&prevIndex={i+1}",
        "value=three",
    )); // index ok, value not
    p.step(put("/v2/keys/foo?prevValue=one", "value=two")); // i+2 CAS
    p.step(put("/v2/keys/foo?prevIndex={i+2}", "value=three")); // i+3 CAS
    p.step(put(
        "/v2/keys/foo?prevIndex={i+3}&prevValue=three",
        "value=four",
    )); // i+4
    p.step(put(
        "/v2/keys/foo?prevIndex={i+4}&prevExist=true",
        "value=five",
    )); // i+5 CAS
    p.step(put(
        "/v2/keys/foo?prevValue=five&noValueOnSuccess=true",
        "value=six",
    )); // i+6
    p.step(put("/v2/keys/foo?prevIndex=0", "value=seven")); // prevIndex 0 = unset: set, i+7
    p.step(put("/v2/keys/nokey2?prevValue=one", "value=two")); // 100
    p.step(put("/v2/keys/nokey2?prevIndex={i+1}", "value=two")); // 100
    p.step(put("/v2/keys/cdir?dir=true", "")); // i+8
    p.step(put("/v2/keys/cdir?prevValue=x", "value=y")); // 102
    p.step(put("/v2/keys/cdir?prevIndex={i+8}", "value=y")); // 102
    p.step(put("/v2/keys/?prevValue=x", "value=y")); // root
    p.step(put("/v2/keys/foo?prevValue=seven&ttl=100", "value=eight")); // CAS with ttl
    p.step(get("/v2/keys/foo"));
    // Numeric values: the cause shows values, not indexes.
    p.step(put("/v2/keys/num", "value=1"));
    p.step(put("/v2/keys/num?prevValue=9", "value=2"));
    p.finish();
}

#[test]
fn compare_and_delete() {
    let mut p = Pair::start("compare_and_delete");
    p.step(put("/v2/keys/foo", "value=three")); // i+1
    p.step(del("/v2/keys/foo?prevValue=one")); // 101
    p.step(del("/v2/keys/foo?prevIndex={i+1000}")); // 101
    p.step(del("/v2/keys/foo?prevIndex={i+1000}&prevValue=one")); // 101 both
    p.step(del("/v2/keys/foo?prevIndex={i+1}")); // i+2 compareAndDelete
    p.step(get("/v2/keys/foo")); // 100
    p.step(put("/v2/keys/bar", "value=b")); // i+3
    p.step(del("/v2/keys/bar?prevValue=b")); // i+4
    p.step(del("/v2/keys/bar?prevValue=b")); // 100
    p.step(del("/v2/keys/nokey?prevIndex={i+1}")); // 100
    p.step(put("/v2/keys/ddir?dir=true", "")); // i+5
    p.step(del("/v2/keys/ddir?prevValue=x")); // 102
    p.step(del("/v2/keys/ddir?prevIndex={i+5}&dir=true")); // 102
    p.step(del("/v2/keys/?prevValue=x")); // root
    p.step(del("/v2/keys/ddir?prevValue=")); // 201
    p.finish();
}

#[test]
fn directories() {
    let mut p = Pair::start("directories");
    p.step(put("/v2/keys/dir", "dir=true")); // i+1
    p.step(put("/v2/keys/dir", "value=v")); // 102
    p.step(put("/v2/keys/dir?dir=true", "")); // dir over existing dir: 102
    p.step(put("/v2/keys/dir/a", "value=1")); // i+2
    p.step(put("/v2/keys/dir/sub/b", "value=2")); // i+3
    p.step(put("/v2/keys/dir/_hidden", "value=h")); // i+4
    p.step(put("/v2/keys/dir/sub/_h2", "value=h2")); // i+5
    p.step(put("/v2/keys/dir/_hdir/x", "value=x")); // i+6
    p.step(get("/v2/keys/dir"));
    p.step(get("/v2/keys/dir?sorted=true"));
    p.step(get("/v2/keys/dir?recursive=true"));
    p.step(get("/v2/keys/dir?recursive=true&sorted=true"));
    p.step(get("/v2/keys/dir?recursive=true&sorted=true&quorum=true"));
    p.step(get("/v2/keys/dir/_hidden"));
    p.step(get("/v2/keys/dir/_hdir"));
    p.step(get("/v2/keys/dir/_hdir?recursive=true"));
    p.step(get("/v2/keys/dir/sub?recursive=true"));
    p.step(get("/v2/keys/dir/a/child")); // 104
    p.step(put("/v2/keys/dir/a/child", "value=x")); // 104
    p.step(del("/v2/keys/dir/a/child")); // 104
    p.step(Req::post("/v2/keys/dir/a", "value=x")); // POST under a file: 104
    p.step(del("/v2/keys/dir")); // 102
    p.step(del("/v2/keys/dir?dir=true")); // 108
    p.step(del("/v2/keys/dir?dir=false")); // 102
    p.step(del("/v2/keys/dir?recursive=false&dir=true")); // 108
    // A file can be replaced by a dir (set semantics) ...
    p.step(put("/v2/keys/f", "value=file")); // i+7
    p.step(put("/v2/keys/f?dir=true", "")); // i+8, prevNode = file
    p.step(get("/v2/keys/f"));
    // ... and a file can be deleted with dir=true.
    p.step(put("/v2/keys/g", "value=file")); // i+9
    p.step(del("/v2/keys/g?dir=true")); // i+10
    p.step(del("/v2/keys/dir?recursive=true")); // i+11
    p.step(get("/v2/keys/dir")); // 100
    p.step(get("/v2/keys/dir/a")); // 100
    p.step(put("/v2/keys/emptydir", "dir=true")); // i+12
    p.step(get("/v2/keys/emptydir"));
    p.step(get("/v2/keys/emptydir?recursive=true"));
    p.step(del("/v2/keys/emptydir?dir=true")); // i+13
    p.step(put("/v2/keys/rdir/x", "value=1")); // i+14
    p.step(del("/v2/keys/rdir?recursive=true&dir=false")); // recursive implies dir: i+15
    // Root is read only.
    p.step(put("/v2/keys/", "value=x"));
    p.step(put("/v2/keys", "value=x"));
    p.step(del("/v2/keys/"));
    p.step(del("/v2/keys/?recursive=true"));
    p.step(del("/v2/keys/?dir=true"));
    p.step(put("/v2/keys/?dir=true", ""));
    p.step(get("/v2/keys/"));
    p.step(get("/v2/keys/?recursive=true"));
    p.step(get("/v2/keys/f?recursive=true&sorted=true"));
    p.finish();
}

#[test]
fn in_order_keys() {
    let mut p = Pair::start("in_order_keys");
    p.step(Req::post("/v2/keys/queue", "value=Job1")); // i+1
    p.step(Req::post("/v2/keys/queue", "value=Job2")); // i+2
    p.step(get("/v2/keys/queue?recursive=true&sorted=true"));
    p.step(get("/v2/keys/queue?sorted=true"));
    p.step(get("/v2/keys/queue"));
    p.step(Req::post("/v2/keys/queue?ttl=100", "value=Job3")); // with ttl
    p.step(Req::post(
        "/v2/keys/queue?noValueOnSuccess=true",
        "value=Job4",
    ));
    p.step(Req::post("/v2/keys/queue?dir=true", "")); // in-order dir
    p.step(Req::new("POST", "/v2/keys/queue")); // no body: empty value
    p.step(get("/v2/keys/queue?recursive=true&sorted=true"));
    p.step(put("/v2/keys/file", "value=f"));
    p.step(Req::post("/v2/keys/file", "value=x")); // POST onto a file
    p.step(Req::post("/v2/keys/", "value=atroot")); // POST at the root
    p.step(Req::post("/v2/keys/_lock/q", "value=l")); // hidden parent
    p.step(get("/v2/keys/_lock/q?recursive=true&sorted=true"));
    p.step(Req::post("/v2/keys/queue?prevExist=false", "value=x"));
    p.finish();
}

#[test]
fn parameter_errors() {
    let mut p = Pair::start("parameter_errors");
    p.step(put("/v2/keys/foo", "value=one"));
    for t in [
        "/v2/keys/foo?ttl=abc",
        "/v2/keys/foo?ttl=-1",
        "/v2/keys/foo?ttl=1.5",
        "/v2/keys/foo?ttl=99999999999999999999",
        "/v2/keys/foo?prevIndex=abc",
        "/v2/keys/foo?prevIndex=-1",
        "/v2/keys/foo?wait=true",
        "/v2/keys/foo?prevValue=",
        "/v2/keys/foo?prevExist=maybe",
        "/v2/keys/foo?dir=maybe",
        "/v2/keys/foo?noValueOnSuccess=x",
        "/v2/keys/foo?refresh=x",
        "/v2/keys/foo?refresh=true&ttl=5",
        "/v2/keys/foo?refresh=true",
        "/v2/keys/foo?refresh=true&ttl=",
        "/v2/keys/foo?recursive=x",
        "/v2/keys/foo?sorted=x",
        "/v2/keys/foo?stream=x",
        "/v2/keys/foo?quorum=x",
        "/v2/keys/foo?wait=x",
        "/v2/keys/foo?waitIndex=x",
        "/v2/keys/foo?ttl=abc&prevIndex=abc",
        "/v2/keys/foo?dir=x&prevExist=x",
        "/v2/keys/foo?value=%zz",
    ] {
        p.step(put(t, "value=x"));
    }
    p.step(Req::put_empty("/v2/keys/foo?refresh=true"));
    p.step(Req::put_empty("/v2/keys/foo?refresh=true&ttl=abc"));
    for t in [
        "/v2/keys/foo?recursive=maybe",
        "/v2/keys/foo?sorted=maybe",
        "/v2/keys/foo?quorum=maybe",
        "/v2/keys/foo?wait=maybe",
        "/v2/keys/foo?stream=maybe",
        "/v2/keys/foo?wait=true&waitIndex=abc",
        "/v2/keys/foo?wait=true&waitIndex=-5",
        "/v2/keys/foo?recursive=",
        "/v2/keys/foo?recursive",
        "/v2/keys/foo?recursive=TRUE&sorted=1&quorum=F",
        "/v2/keys/foo?prevIndex=abc",
        "/v2/keys/foo?ttl=abc",
        "/v2/keys/foo?dir=maybe",
    ] {
        p.step(get(t));
    }
    for t in [
        "/v2/keys/foo?wait=true",
        "/v2/keys/foo?recursive=x",
        "/v2/keys/foo?prevIndex=x",
        "/v2/keys/foo?dir=x",
    ] {
        p.step(del(t));
    }
    p.step(Req::post("/v2/keys/foo?wait=true", "value=x"));
    p.step(Req::post("/v2/keys/foo?ttl=x", "value=x"));
    p.step(get("/v2/keys/foo"));
    p.finish();
}

#[test]
fn methods_and_fallbacks() {
    let mut p = Pair::start("methods_and_fallbacks");
    p.step(put("/v2/keys/foo", "value=x"));
    p.step(Req::new("PATCH", "/v2/keys/foo").form("value=x"));
    p.step(Req::new("TRACE", "/v2/keys/foo"));
    p.step(Req::new("OPTIONS", "/v2/keys/foo"));
    p.step(Req::new("OPTIONS", "/v2/keys/"));
    p.step(Req::new("PATCH", "/v2/keys/"));
    p.step(get("/v2/nothing"));
    p.step(get("/v2/keysfoo"));
    p.step(get("/v2/stats/nothing"));
    p.step(get("/v2"));
    p.step(get("/v3nothing"));
    p.step(Req::new("POST", "/v2/stats/self"));
    p.step(Req::new("DELETE", "/v2/stats/store"));
    p.step(Req::new("PUT", "/v2/members/leader"));
    p.step(Req::new("POST", "/v2/machines"));
    p.step(Req::new("PUT", "/version"));
    p.step(Req::new("POST", "/health"));
    p.step(Req::new("HEAD", "/v2/keys/foo"));
    // CORS headers on a regular answer with an Origin header.
    p.step(get("/v2/keys/foo").header("Origin", "http://example.invalid"));
    p.finish();
}

#[test]
fn ttl_and_refresh() {
    let mut p = Pair::start("ttl_and_refresh");
    p.step(put("/v2/keys/ttlkey?ttl=5", "value=temp")); // i+1
    p.step(get("/v2/keys/ttlkey"));
    p.step(put(
        "/v2/keys/ttlkey?ttl=10&refresh=true&prevExist=true",
        "",
    )); // i+2 update
    p.step(get("/v2/keys/ttlkey"));
    p.step(put("/v2/keys/ttlkey?ttl=20&refresh=true", "")); // refresh without prevExist, i+3
    p.step(put(
        "/v2/keys/ttlkey?ttl=20&refresh=true&prevValue=temp",
        "",
    )); // refresh CAS, i+4
    p.step(put(
        "/v2/keys/ttlkey?ttl=20&refresh=true&prevValue=nope",
        "",
    )); // 101
    p.step(put(
        "/v2/keys/missing?ttl=20&refresh=true&prevExist=true",
        "",
    )); // 100
    p.step(put("/v2/keys/missing2?ttl=20&refresh=true", "")); // refresh of missing key
    p.step(put("/v2/keys/ttlkey2?ttl=100", "value=a"));
    p.step(put("/v2/keys/ttlkey2?ttl=&prevExist=true", "value=a")); // removes TTL
    p.step(get("/v2/keys/ttlkey2"));
    p.step(put("/v2/keys/ttlkey3?ttl=100", "value=a"));
    p.step(put("/v2/keys/ttlkey3", "value=b")); // plain set drops the TTL
    p.step(put("/v2/keys/tdir?ttl=30", "dir=true"));
    p.step(put("/v2/keys/tdir?ttl=60&dir=true&prevExist=true", ""));
    p.step(put("/v2/keys/tdir/child", "value=c"));
    p.step(get("/v2/keys/tdir?recursive=true"));
    p.step(put("/v2/keys/tdir?ttl=&dir=true&prevExist=true", "")); // dir TTL removed
    p.step(get("/v2/keys/tdir"));
    p.step(put("/v2/keys/cttl?ttl=50&prevExist=false", "value=c"));
    p.step(get("/v2/keys/?sorted=true"));

    // A refresh does not notify watchers: the next event seen is the set.
    p.step(put("/v2/keys/rw?ttl=100", "value=r"));
    let mut w = p.watch(get("/v2/keys/rw?wait=true"));
    p.step(put("/v2/keys/rw?ttl=200&refresh=true&prevExist=true", ""));
    p.step(put("/v2/keys/rw", "value=after-refresh"));
    p.watch_event(&mut w, EVENT_TIMEOUT);
    p.watch_end(&mut w, EVENT_TIMEOUT);

    // ttl=0: expiration = now; the key is removed by the next expiry sweep.
    p.step(put("/v2/keys/zero?ttl=0", "value=z"));
    let mut msgs = Vec::new();
    for side in p.sides() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while side.send(&get("/v2/keys/zero")).status != 404 {
            if std::time::Instant::now() >= deadline {
                msgs.push(format!(
                    "{}: /zero (ttl=0) still present after 10 s",
                    side.name()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for m in msgs {
        p.fail(m);
    }
    p.step(get("/v2/keys/zero"));
    p.finish();
}

#[test]
fn ttl_expiry_with_watchers() {
    let mut p = Pair::start("ttl_expiry_with_watchers");
    p.step(put("/v2/keys/short?ttl=2", "value=gone-soon")); // i+1
    let mut w = p.watch(get("/v2/keys/short?wait=true"));
    p.watch_event(&mut w, Duration::from_secs(15)); // expire, i+2
    p.watch_end(&mut w, EVENT_TIMEOUT);
    p.step(get("/v2/keys/short")); // 100, index i+2
    // Replay of the expire event from history.
    p.step(get("/v2/keys/short?wait=true&waitIndex={i+2}"));

    // An expiring directory notifies watchers of keys inside it and
    // recursive watchers above it.
    p.step(put("/v2/keys/edir?ttl=2", "dir=true")); // i+3
    p.step(put("/v2/keys/edir/k", "value=v")); // i+4
    let mut inner = p.watch(get("/v2/keys/edir/k?wait=true"));
    let mut rec = p.watch(get("/v2/keys/edir?wait=true&recursive=true"));
    p.watch_event(&mut inner, Duration::from_secs(15)); // expire of /edir, i+5
    p.watch_event(&mut rec, Duration::from_secs(15));
    p.step(get("/v2/keys/edir"));
    p.step(get("/v2/keys/edir/k"));
    p.step(get("/v2/keys/?recursive=true"));
    p.finish();
}

#[test]
fn watch_long_poll() {
    let mut p = Pair::start("watch_long_poll");
    p.step(put("/v2/keys/wfoo", "value=v1")); // i+1
    // Current watch: head arrives first, event after the write.
    let mut w = p.watch(get("/v2/keys/wfoo?wait=true"));
    p.step(put("/v2/keys/wfoo", "value=v2")); // i+2
    p.watch_event(&mut w, EVENT_TIMEOUT);
    p.watch_end(&mut w, EVENT_TIMEOUT);
    // waitIndex in the past: replay.
    p.step(get("/v2/keys/wfoo?wait=true&waitIndex={i+1}"));
    p.step(get("/v2/keys/wfoo?wait=true&waitIndex={i+2}"));
    p.step(get("/v2/keys/wfoo?wait=true&waitIndex=1"));
    // waitIndex in the future: blocks until that index is reached.
    let mut w = p.watch(get("/v2/keys/wfoo?wait=true&waitIndex={i+4}"));
    p.step(put("/v2/keys/wfoo", "value=v3")); // i+3 (before waitIndex)
    p.step(put("/v2/keys/wfoo", "value=v4")); // i+4
    p.watch_event(&mut w, EVENT_TIMEOUT);
    // Watch on a key that does not exist yet.
    let mut w = p.watch(get("/v2/keys/later?wait=true"));
    p.step(put("/v2/keys/later?prevExist=false", "value=now")); // i+5
    p.watch_event(&mut w, EVENT_TIMEOUT);
    // Recursive watch on a directory.
    let mut w = p.watch(get("/v2/keys/wdir?wait=true&recursive=true"));
    p.step(put("/v2/keys/wdir/sub/k", "value=x")); // i+6
    p.watch_event(&mut w, EVENT_TIMEOUT);
    // Non-recursive watch on a directory does not see a child change.
    let mut w = p.watch(get("/v2/keys/wdir?wait=true"));
    p.step(put("/v2/keys/wdir/sub/k2", "value=y")); // i+7
    p.step(put("/v2/keys/wdir?dir=true&prevExist=true&ttl=100", "")); // i+8 touches the dir
    p.watch_event(&mut w, EVENT_TIMEOUT);
    // Hidden keys are not reported to recursive watchers of a parent.
    let mut w = p.watch(get("/v2/keys/wdir?wait=true&recursive=true"));
    p.step(put("/v2/keys/wdir/_hidden", "value=h")); // i+9
    p.step(put("/v2/keys/wdir/visible", "value=v")); // i+10
    p.watch_event(&mut w, EVENT_TIMEOUT);
    // ... but the hidden key itself can be watched.
    let mut w = p.watch(get("/v2/keys/wdir/_hidden?wait=true"));
    p.step(put("/v2/keys/wdir/_hidden", "value=h2")); // i+11
    p.watch_event(&mut w, EVENT_TIMEOUT);
    // Two watchers on the same key both get the event.
    let mut w1 = p.watch(get("/v2/keys/two?wait=true"));
    let mut w2 = p.watch(get("/v2/keys/two?wait=true"));
    p.step(put("/v2/keys/two", "value=both")); // i+12
    p.watch_event(&mut w1, EVENT_TIMEOUT);
    p.watch_event(&mut w2, EVENT_TIMEOUT);
    // Watcher on a key whose parent dir is deleted.
    let mut w = p.watch(get("/v2/keys/wdir/sub/k?wait=true"));
    p.step(del("/v2/keys/wdir?recursive=true")); // i+13
    p.watch_event(&mut w, EVENT_TIMEOUT);
    p.watch_end(&mut w, EVENT_TIMEOUT);
    // Replay with recursive + waitIndex picks the first matching event.
    p.step(get(
        "/v2/keys/wdir?wait=true&recursive=true&waitIndex={i+7}",
    ));
    p.step(get(
        "/v2/keys/wdir/sub?wait=true&recursive=true&waitIndex={i+1}",
    ));
    // Watches for each action.
    let mut w = p.watch(get(
        "/v2/keys/acts?wait=true&recursive=true&waitIndex={i+14}",
    ));
    p.step(put("/v2/keys/acts/a?prevExist=false", "value=1")); // i+14 create
    p.watch_event(&mut w, EVENT_TIMEOUT);
    for (i, (req, _)) in [
        (put("/v2/keys/acts/a?prevExist=true", "value=2"), "update"),
        (
            put("/v2/keys/acts/a?prevValue=2", "value=3"),
            "compareAndSwap",
        ),
        (del("/v2/keys/acts/a?prevValue=3"), "compareAndDelete"),
        (Req::post("/v2/keys/acts/q", "value=j"), "create"),
        (del("/v2/keys/acts?recursive=true"), "delete"),
    ]
    .into_iter()
    .enumerate()
    {
        p.step(req);
        p.step(get(&format!(
            "/v2/keys/acts?wait=true&recursive=true&waitIndex={{i+{}}}",
            15 + i
        )));
    }
    // Watch with quorum/sorted extras is accepted.
    let mut w = p.watch(get(
        "/v2/keys/x?wait=true&quorum=true&sorted=true&recursive=false",
    ));
    p.step(put("/v2/keys/x", "value=1"));
    p.watch_event(&mut w, EVENT_TIMEOUT);
    p.finish();
}

#[test]
fn watch_stream() {
    let mut p = Pair::start("watch_stream");
    p.step(put("/v2/keys/other", "value=o")); // i+1
    let mut w = p.watch(get("/v2/keys/sfoo?wait=true&stream=true"));
    p.step(put("/v2/keys/sfoo", "value=1"));
    p.step(put("/v2/keys/sfoo", "value=2"));
    p.step(put("/v2/keys/other", "value=ignored"));
    p.step(del("/v2/keys/sfoo"));
    p.step(put("/v2/keys/sfoo", "value=sentinel"));
    // set, set, delete, delete (etcd delivers deletes twice), set.
    for _ in 0..5 {
        p.watch_event(&mut w, EVENT_TIMEOUT);
    }
    drop(w);
    // Recursive stream with waitIndex replay followed by live events.
    let mut w = p.watch(get(
        "/v2/keys/sdir?wait=true&stream=true&recursive=true&waitIndex={i+1}",
    ));
    p.step(put("/v2/keys/sdir/a", "value=1"));
    p.step(put("/v2/keys/sdir/b", "value=2"));
    p.step(del("/v2/keys/sdir?recursive=true"));
    p.step(put("/v2/keys/sdir/c", "value=3"));
    for _ in 0..5 {
        p.watch_event(&mut w, EVENT_TIMEOUT);
    }
    p.finish();
}

#[test]
fn watch_history_window() {
    let mut p = Pair::start("watch_history_window");
    p.step(put("/v2/keys/wfoo", "value=v1")); // i+1
    // 1100 more writes; each side in its own thread.
    let writes = 1100u64;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let hs: Vec<_> = p
            .sides()
            .into_iter()
            .map(|side| {
                s.spawn(move || {
                    for n in 0..writes {
                        let r =
                            side.send(&put(&format!("/v2/keys/bulk/k{n}"), &format!("value={n}")));
                        if !(200..300).contains(&r.status) {
                            return Err(format!(
                                "{}: bulk write {n} failed:\n{}",
                                side.name(),
                                r.render()
                            ));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    for r in results {
        if let Err(e) = r {
            p.fail(e);
        }
    }
    // Now at i+1101; history holds i+102 ..= i+1101.
    p.step(get("/v2/keys/wfoo?wait=true&waitIndex={i+1}")); // 401 [i+102/i+1]
    p.step(get("/v2/keys/wfoo?wait=true&waitIndex={i+101}")); // 401
    p.step(get(
        "/v2/keys/bulk?wait=true&recursive=true&waitIndex={i+102}",
    )); // oldest kept event
    p.step(get("/v2/keys/bulk/k500?wait=true&waitIndex={i+200}")); // first match at i+502
    p.step(get(
        "/v2/keys/bulk?wait=true&recursive=true&waitIndex={i+1101}",
    ));
    p.step(get("/v2/keys/wfoo?wait=true&waitIndex=abc"));
    p.step(get("/v2/keys/bulk/k5"));
    // A watcher from the oldest retained index still blocks when nothing matches.
    let mut w = p.watch(get("/v2/keys/wfoo?wait=true&waitIndex={i+102}"));
    p.step(put("/v2/keys/wfoo", "value=v2"));
    p.watch_event(&mut w, EVENT_TIMEOUT);
    p.step_cmp(get("/v2/stats/store"), Cmp::shape());
    p.finish();
}

#[test]
fn restart_persistence() {
    let mut p = Pair::start("restart_persistence");
    p.step(put("/v2/keys/p/a", "value=1")); // i+1
    p.step(put("/v2/keys/p/b?ttl=1000", "value=2")); // i+2
    p.step(Req::post("/v2/keys/p/q", "value=job")); // i+3
    p.step(put("/v2/keys/p/d?dir=true", "")); // i+4
    p.step(del("/v2/keys/p/a")); // i+5
    p.step(put("/v2/keys/p/c", "value=3")); // i+6
    // SIGKILL, restart on the same data dir and ports.
    p.restart_both(Signal::SIGKILL);
    p.step(get("/v2/keys/p?recursive=true&sorted=true"));
    p.step(get("/v2/keys/p/b"));
    p.step(get("/v2/keys/p/c?quorum=true"));
    p.step(put("/v2/keys/p/e", "value=after-restart")); // i+7
    p.step(get("/v2/keys/p/c?wait=true&waitIndex={i+6}")); // history replay across restart
    // Graceful stop (SIGTERM) and restart.
    p.restart_both(Signal::SIGTERM);
    p.step(get("/v2/keys/p?recursive=true&sorted=true"));
    p.step(put("/v2/keys/p/f", "value=after-second-restart"));
    p.step(get("/v2/members"));
    p.finish();
}

#[test]
fn value_encoding() {
    let mut p = Pair::start("value_encoding");
    for (k, form) in [
        ("plus", "value=a+b"),
        ("pct", "value=a%2Bb%20c"),
        ("utf8", "value=%E2%9C%93%20caf%C3%A9"),
        ("nul", "value=a%00b"),
        ("newline", "value=line1%0Aline2%0D%0A"),
        ("badutf8", "value=%FF%FE"),
        ("html", "value=%3Cb%3E%26%3C%2Fb%3E"),
        (
            "json",
            "value=%7B%22semaphore%22%3A1%2C%22max%22%3A1%2C%22holders%22%3Anull%7D",
        ),
        ("quote", "value=%22%5C"),
        ("ctrl", "value=%01%1F%7F"),
        ("u2028", "value=%E2%80%A8"),
        ("empty", "value="),
        ("novalue", "other=1"),
    ] {
        p.step(put(&format!("/v2/keys/enc/{k}"), form));
        p.step(get(&format!("/v2/keys/enc/{k}")));
    }
    // Raw body bytes compared exactly for one value with HTML characters:
    // both servers' JSON must at least decode to the same string.
    p.step(get("/v2/keys/enc?recursive=true&sorted=true"));
    p.finish();
}

#[test]
fn keep_alive_connection() {
    let mut p = Pair::start("keep_alive_connection");
    // Several requests on one persistent connection, as Go and Python
    // clients send them; every response must be complete and framed right.
    let reqs = [
        put("/v2/keys/ka", "value=1"),
        get("/v2/keys/ka"),
        Req::head("/v2/keys/ka"),
        get("/v2/keys/missing"),
        Req::head("/v2/keys/missing"),
        Req::new("PATCH", "/v2/keys/ka"),
        put("/v2/keys/ka?prevExist=false", "value=2"),
        get("/v2/keys/ka?wait=true&waitIndex={i+1}"),
        get("/v2/nothing"),
        get("/version"),
        Req::post("/v2/keys/kq", "value=x"),
        Req::new("PUT", "/v2/keys/big").form(&format!("value={}", "x".repeat(100_000))),
        get("/v2/keys/big"),
        del("/v2/keys/ka"),
        get("/v2/keys/?recursive=true&sorted=true"),
    ];
    let mut streams: Vec<Option<HttpStream>> = vec![None, None];
    for req in reqs {
        let req = req.keep_alive();
        let mut got = Vec::new();
        for (i, side) in [&p.etcd, &p.keel].into_iter().enumerate() {
            let r = side.req(&req);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let resp = match streams[i].as_mut() {
                Some(st) => st.send_next(side.server.addr(), &r, deadline),
                None => HttpStream::open(side.server.addr(), &r, deadline).and_then(|mut st| {
                    let resp = st.read_all(deadline);
                    streams[i] = Some(st);
                    resp
                }),
            };
            got.push(resp.unwrap_or_else(|e| {
                streams[i] = None; // reconnect next time
                keel_tests::pair::transport_error(&format!("on the kept-alive connection: {e}"))
            }));
        }
        let desc = format!("{}  [keep-alive]", req.describe());
        let mut shown = req.clone();
        shown.target = desc;
        p.compare(&shown, &got[0], &got[1], &Cmp::default());
    }
    // Expect: 100-continue (curl sends it for bodies above 1 KiB).
    p.step(
        put("/v2/keys/cont", &format!("value={}", "c".repeat(2000)))
            .header("Expect", "100-continue"),
    );
    p.finish();
}
