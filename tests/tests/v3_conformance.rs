//! etcd v3 gRPC conformance: the same request sequences go through the
//! `etcd-client` crate to Debian's etcd 3.4 and to keel-store, and the
//! responses are compared after normalisation (revisions relative to each
//! server's revision at the start of the scenario, cluster/member ids and raft
//! terms dropped, lease ids named, gRPC errors compared by code and message).
//!
//! Run: `cargo test -p keel-tests --test v3_conformance`
//! (`KEEL_CONFORMANCE_PEER=etcd` compares etcd with itself.)

use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};
use keel_tests::v3::{V3Pair, V3Side, collect_watch, err, res, run, snapshot_hash_ok};
use serde_json::{Value, json};

const WATCH_WAIT: Duration = Duration::from_secs(5);

async fn put(s: &mut V3Side, k: &str, v: &str, o: Option<PutOptions>) -> Value {
    let r = s.client.put(k, v, o).await;
    res(&r, |x| s.norm.put(x))
}

async fn get(s: &mut V3Side, k: &str, o: Option<GetOptions>) -> Value {
    let r = s.client.get(k, o).await;
    res(&r, |x| s.norm.get(x))
}

async fn del(s: &mut V3Side, k: &str, o: Option<DeleteOptions>) -> Value {
    let r = s.client.delete(k, o).await;
    res(&r, |x| s.norm.delete(x))
}

async fn txn(s: &mut V3Side, t: Txn) -> Value {
    let r = s.client.txn(t).await;
    res(&r, |x| s.norm.txn(x))
}

async fn compact(s: &mut V3Side, rev: i64, physical: bool) -> Value {
    let o = physical.then(|| etcd_client::CompactionOptions::new().with_physical());
    let r = s.client.compact(rev, o).await;
    res(&r, |x| s.norm.compact(x))
}

/// Grant a lease; a server-chosen id is registered as `name`.
async fn grant(s: &mut V3Side, name: &str, ttl: i64, id: Option<i64>) -> Value {
    let r = s
        .client
        .lease_grant(ttl, id.map(|i| LeaseGrantOptions::new().with_id(i)))
        .await;
    if let Ok(g) = &r {
        s.norm.name_lease(g.id(), name);
    }
    res(&r, |x| s.norm.grant(x))
}

async fn ttl(s: &mut V3Side, id: i64, keys: bool) -> Value {
    let o = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
    let r = s.client.lease_time_to_live(id, o).await;
    res(&r, |x| s.norm.time_to_live(x))
}

/// Put `pairs` on both servers (not compared).
async fn seed(p: &mut V3Pair, pairs: &[(&str, &str)]) {
    p.both("seed", async |s| {
        for (k, v) in pairs {
            s.client.put(*k, *v, None).await.expect("seed put");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------

#[test]
fn v3_range_put_delete_compact() {
    run(|| async {
        let mut p = V3Pair::start("v3 range/put/delete/compact").await;

        // R+1 .. R+7
        for (k, v) in [
            ("foo", "bar"),
            ("foo", "baz"),
            ("foo0", "0"),
            ("fop", "p"),
            ("a", "zz"),
            ("b", "yy"),
            ("c", "xx"),
        ] {
            p.step(&format!("put {k}={v}"), async |s| put(s, k, v, None).await)
                .await;
        }
        // R+8: a second version of b, R+9: a third of a.
        p.step("put b=ww (prev_kv)", async |s| {
            put(s, "b", "ww", Some(PutOptions::new().with_prev_key())).await
        })
        .await;
        p.step("put a=aa (prev_kv)", async |s| {
            put(s, "a", "aa", Some(PutOptions::new().with_prev_key())).await
        })
        .await;
        p.step("put new key with prev_kv (none)", async |s| {
            put(s, "d", "dd", Some(PutOptions::new().with_prev_key())).await
        })
        .await;

        // --- Range
        p.step("get single", async |s| get(s, "foo", None).await)
            .await;
        p.step("get missing", async |s| get(s, "nope", None).await)
            .await;
        p.step("get range [a,c)", async |s| {
            get(s, "a", Some(GetOptions::new().with_range("c"))).await
        })
        .await;
        p.step("get prefix foo", async |s| {
            get(s, "foo", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        p.step("get from key e", async |s| {
            get(s, "e", Some(GetOptions::new().with_from_key())).await
        })
        .await;
        p.step("get all keys", async |s| {
            get(s, "", Some(GetOptions::new().with_all_keys())).await
        })
        .await;
        p.step("get all, limit 2 (more)", async |s| {
            get(s, "", Some(GetOptions::new().with_all_keys().with_limit(2))).await
        })
        .await;
        p.step("get prefix foo, limit 2 (no more)", async |s| {
            get(
                s,
                "foo",
                Some(GetOptions::new().with_prefix().with_limit(2)),
            )
            .await
        })
        .await;
        p.step("get all, limit 3, sort by value descending", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_limit(3)
                .with_sort(SortTarget::Value, SortOrder::Descend);
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get at old revision R+1", async |s| {
            let o = GetOptions::new().with_revision(s.rel(1));
            get(s, "foo", Some(o)).await
        })
        .await;
        p.step("get prefix at old revision R+3", async |s| {
            let o = GetOptions::new().with_prefix().with_revision(s.rel(3));
            get(s, "foo", Some(o)).await
        })
        .await;
        p.step("get at current revision", async |s| {
            let o = GetOptions::new().with_revision(s.rel(10));
            get(s, "a", Some(o)).await
        })
        .await;
        p.step("get at future revision", async |s| {
            let o = GetOptions::new().with_revision(s.rel(1000));
            get(s, "foo", Some(o)).await
        })
        .await;
        p.step("get at revision current+1", async |s| {
            let o = GetOptions::new().with_revision(s.rel(11));
            get(s, "foo", Some(o)).await
        })
        .await;
        for target in [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ] {
            for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                p.step(&format!("get all sorted {target:?} {order:?}"), async |s| {
                    let o = GetOptions::new().with_all_keys().with_sort(target, order);
                    get(s, "", Some(o)).await
                })
                .await;
            }
        }
        p.step("get sorted by mod descending, limit 2", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Mod, SortOrder::Descend)
                .with_limit(2);
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get serializable", async |s| {
            get(s, "foo", Some(GetOptions::new().with_serializable())).await
        })
        .await;
        p.step("get keys only (prefix)", async |s| {
            get(
                s,
                "foo",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        })
        .await;
        p.step("get count only (all)", async |s| {
            get(
                s,
                "",
                Some(GetOptions::new().with_all_keys().with_count_only()),
            )
            .await
        })
        .await;
        p.step("get count only + limit 1", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_count_only()
                .with_limit(1);
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get min_mod_revision R+7", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_min_mod_revision(s.rel(7));
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get max_mod_revision R+4", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_max_mod_revision(s.rel(4));
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get min_create_revision R+5", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_min_create_revision(s.rel(5));
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get max_create_revision R+3", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_max_create_revision(s.rel(3));
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get min_mod + max_create + limit 1", async |s| {
            let o = GetOptions::new()
                .with_all_keys()
                .with_min_mod_revision(s.rel(2))
                .with_max_create_revision(s.rel(6))
                .with_limit(1);
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get empty key", async |s| get(s, "", None).await)
            .await;
        p.step("get range end before key", async |s| {
            get(s, "c", Some(GetOptions::new().with_range("a"))).await
        })
        .await;

        // --- Put options
        p.step("lease grant 1000 (ttl 600)", async |s| {
            grant(s, "L1000", 600, Some(1000)).await
        })
        .await;
        p.step("put with lease", async |s| {
            put(s, "leased", "v", Some(PutOptions::new().with_lease(1000))).await
        })
        .await;
        p.step("put with missing lease", async |s| {
            put(
                s,
                "leased2",
                "v",
                Some(PutOptions::new().with_lease(999_999)),
            )
            .await
        })
        .await;
        p.step("put ignore_lease keeps the lease", async |s| {
            put(
                s,
                "leased",
                "v2",
                Some(PutOptions::new().with_ignore_lease().with_prev_key()),
            )
            .await
        })
        .await;
        p.step("get leased (lease kept)", async |s| {
            get(s, "leased", None).await
        })
        .await;
        p.step(
            "put ignore_value (empty value) keeps the value",
            async |s| {
                let o = PutOptions::new()
                    .with_ignore_value()
                    .with_prev_key()
                    .with_lease(1000);
                put(s, "leased", "", Some(o)).await
            },
        )
        .await;
        p.step("get leased (value kept)", async |s| {
            get(s, "leased", None).await
        })
        .await;
        p.step("put ignore_value + ignore_lease", async |s| {
            let o = PutOptions::new().with_ignore_value().with_ignore_lease();
            put(s, "leased", "", Some(o)).await
        })
        .await;
        p.step(
            "put ignore_value without lease drops the lease",
            async |s| put(s, "leased", "", Some(PutOptions::new().with_ignore_value())).await,
        )
        .await;
        p.step("get leased (lease dropped)", async |s| {
            get(s, "leased", None).await
        })
        .await;
        p.step("put iv=1", async |s| put(s, "iv", "1", None).await)
            .await;
        p.step("put ignore_value with a value (existing key)", async |s| {
            put(s, "iv", "x", Some(PutOptions::new().with_ignore_value())).await
        })
        .await;
        p.step("put ignore_lease with a lease (existing key)", async |s| {
            let o = PutOptions::new().with_ignore_lease().with_lease(1000);
            put(s, "iv", "v3", Some(o)).await
        })
        .await;
        // Keep the rest of the scenario independent of how those two went.
        p.both("delete iv", async |s| {
            s.client.delete("iv", None).await.expect("delete iv");
        })
        .await;
        p.step("put ignore_value with a value (missing key)", async |s| {
            put(s, "other", "x", Some(PutOptions::new().with_ignore_value())).await
        })
        .await;
        p.step("put ignore_lease with a lease (missing key)", async |s| {
            let o = PutOptions::new().with_ignore_lease().with_lease(1000);
            put(s, "other", "v3", Some(o)).await
        })
        .await;
        p.step("put ignore_lease on a missing key", async |s| {
            put(
                s,
                "missing-il",
                "v",
                Some(PutOptions::new().with_ignore_lease()),
            )
            .await
        })
        .await;
        p.step("put ignore_value on a missing key", async |s| {
            put(
                s,
                "missing-iv",
                "",
                Some(PutOptions::new().with_ignore_value()),
            )
            .await
        })
        .await;
        p.step("put without lease detaches it", async |s| {
            put(s, "leased", "v4", Some(PutOptions::new().with_prev_key())).await
        })
        .await;
        p.step("put empty key", async |s| put(s, "", "v", None).await)
            .await;
        p.step("put 1.6 MiB value (request too large)", async |s| {
            let big = "x".repeat(1_600_000);
            put(s, "big", &big, None).await
        })
        .await;
        p.step("put binary key and value", async |s| {
            let r = s
                .client
                .put(vec![0u8, 0xff, 1], vec![0xfeu8, 0], None)
                .await;
            res(&r, |x| s.norm.put(x))
        })
        .await;
        p.step("get binary key", async |s| {
            let r = s.client.get(vec![0u8, 0xff, 1], None).await;
            res(&r, |x| {
                let kv = &x.kvs()[0];
                json!({"n": x.kvs().len(), "key": kv.key(), "value": kv.value()})
            })
        })
        .await;

        // --- DeleteRange
        p.step("delete single with prev_kv", async |s| {
            del(s, "d", Some(DeleteOptions::new().with_prev_key())).await
        })
        .await;
        p.step("delete missing", async |s| del(s, "d", None).await)
            .await;
        p.step("delete range [a,c) with prev_kv", async |s| {
            del(
                s,
                "a",
                Some(DeleteOptions::new().with_range("c").with_prev_key()),
            )
            .await
        })
        .await;
        p.step("delete prefix foo", async |s| {
            del(s, "foo", Some(DeleteOptions::new().with_prefix())).await
        })
        .await;
        p.step("delete prefix none", async |s| {
            del(
                s,
                "zzz",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
        })
        .await;
        p.step("delete empty key", async |s| del(s, "", None).await)
            .await;
        p.step("get all after deletes", async |s| {
            get(s, "", Some(GetOptions::new().with_all_keys())).await
        })
        .await;
        p.step("get foo at old revision after delete", async |s| {
            let o = GetOptions::new().with_prefix().with_revision(s.rel(4));
            get(s, "foo", Some(o)).await
        })
        .await;
        p.step("put re-creates a deleted key (version 1)", async |s| {
            put(s, "foo", "again", Some(PutOptions::new().with_prev_key())).await
        })
        .await;
        p.step("get foo", async |s| get(s, "foo", None).await).await;

        // --- Compact
        p.step("compact R+5", async |s| compact(s, s.rel(5), false).await)
            .await;
        p.step("get at compacted R+1", async |s| {
            let o = GetOptions::new().with_revision(s.rel(1));
            get(s, "foo", Some(o)).await
        })
        .await;
        p.step("get at R+4 (below compaction)", async |s| {
            let o = GetOptions::new().with_revision(s.rel(4));
            get(s, "", Some(o.with_all_keys())).await
        })
        .await;
        p.step("get at the compaction revision R+5", async |s| {
            let o = GetOptions::new().with_all_keys().with_revision(s.rel(5));
            get(s, "", Some(o)).await
        })
        .await;
        p.step("get at R+6", async |s| {
            let o = GetOptions::new().with_all_keys().with_revision(s.rel(6));
            get(s, "", Some(o)).await
        })
        .await;
        p.step("compact again at R+3 (already compacted)", async |s| {
            compact(s, s.rel(3), false).await
        })
        .await;
        p.step("compact at R+5 again", async |s| {
            compact(s, s.rel(5), false).await
        })
        .await;
        p.step("compact at future revision", async |s| {
            compact(s, s.rel(1000), false).await
        })
        .await;
        p.step("compact physical R+8", async |s| {
            compact(s, s.rel(8), true).await
        })
        .await;
        p.step("get at R+7 after physical compaction", async |s| {
            let o = GetOptions::new().with_revision(s.rel(7));
            get(s, "b", Some(o)).await
        })
        .await;
        p.step("txn with range at compacted revision", async |s| {
            let t = Txn::new().and_then([TxnOp::get(
                "b",
                Some(GetOptions::new().with_revision(s.rel(2))),
            )]);
            txn(s, t).await
        })
        .await;
        p.step("get all at the end", async |s| {
            get(s, "", Some(GetOptions::new().with_all_keys())).await
        })
        .await;
        p.finish();
    });
}

// ---------------------------------------------------------------------------

#[test]
fn v3_txn() {
    run(|| async {
        let mut p = V3Pair::start("v3 txn").await;
        // R+1 t/a=1, R+2 t/b=2, R+3 t/a=11 (version 2), R+4 t/c=3 with lease 77
        p.both("lease 77", async |s| {
            s.client
                .lease_grant(600, Some(LeaseGrantOptions::new().with_id(77)))
                .await
                .expect("grant");
        })
        .await;
        p.both("rebase", async |s| s.rebase().await).await;
        seed(&mut p, &[("t/a", "1"), ("t/b", "2"), ("t/a", "11")]).await;
        p.step("put t/c with lease 77", async |s| {
            put(s, "t/c", "3", Some(PutOptions::new().with_lease(77))).await
        })
        .await;

        let ops = [
            CompareOp::Equal,
            CompareOp::Greater,
            CompareOp::Less,
            CompareOp::NotEqual,
        ];
        for op in ops {
            p.step(&format!("compare value(t/a) {op:?} 11"), async |s| {
                txn(s, Txn::new().when([Compare::value("t/a", op, "11")])).await
            })
            .await;
            p.step(&format!("compare value(t/a) {op:?} 2"), async |s| {
                txn(s, Txn::new().when([Compare::value("t/a", op, "2")])).await
            })
            .await;
            p.step(&format!("compare version(t/a) {op:?} 2"), async |s| {
                txn(s, Txn::new().when([Compare::version("t/a", op, 2)])).await
            })
            .await;
            p.step(&format!("compare create(t/a) {op:?} R+1"), async |s| {
                let c = Compare::create_revision("t/a", op, s.rel(1));
                txn(s, Txn::new().when([c])).await
            })
            .await;
            p.step(&format!("compare mod(t/a) {op:?} R+2"), async |s| {
                let c = Compare::mod_revision("t/a", op, s.rel(2));
                txn(s, Txn::new().when([c])).await
            })
            .await;
            p.step(&format!("compare lease(t/c) {op:?} 77"), async |s| {
                txn(s, Txn::new().when([Compare::lease("t/c", op, 77)])).await
            })
            .await;
            p.step(&format!("compare lease(t/a) {op:?} 0"), async |s| {
                txn(s, Txn::new().when([Compare::lease("t/a", op, 0)])).await
            })
            .await;
            // Missing keys.
            p.step(&format!("missing key: version {op:?} 0"), async |s| {
                txn(s, Txn::new().when([Compare::version("t/none", op, 0)])).await
            })
            .await;
            p.step(&format!("missing key: create {op:?} 0"), async |s| {
                txn(
                    s,
                    Txn::new().when([Compare::create_revision("t/none", op, 0)]),
                )
                .await
            })
            .await;
            p.step(&format!("missing key: mod {op:?} 0"), async |s| {
                txn(s, Txn::new().when([Compare::mod_revision("t/none", op, 0)])).await
            })
            .await;
            p.step(&format!("missing key: value {op:?} \"\""), async |s| {
                txn(s, Txn::new().when([Compare::value("t/none", op, "")])).await
            })
            .await;
            p.step(&format!("missing key: lease {op:?} 0"), async |s| {
                txn(s, Txn::new().when([Compare::lease("t/none", op, 0)])).await
            })
            .await;
            // Range compares: every key in the range must satisfy.
            p.step(&format!("range compare version(t/*) {op:?} 1"), async |s| {
                let c = Compare::version("t/", op, 1).with_prefix();
                txn(s, Txn::new().when([c])).await
            })
            .await;
            p.step(
                &format!("range compare mod([t/b,t/d)) {op:?} R+1"),
                async |s| {
                    let c = Compare::mod_revision("t/b", op, s.rel(1)).with_range("t/d");
                    txn(s, Txn::new().when([c])).await
                },
            )
            .await;
            p.step(
                &format!("range compare value(empty range) {op:?} x"),
                async |s| {
                    let c = Compare::value("u/", op, "x").with_prefix();
                    txn(s, Txn::new().when([c])).await
                },
            )
            .await;
        }
        p.step("several compares, all true", async |s| {
            let t = Txn::new().when([
                Compare::value("t/a", CompareOp::Equal, "11"),
                Compare::version("t/b", CompareOp::Equal, 1),
                Compare::create_revision("t/none", CompareOp::Equal, 0),
            ]);
            txn(s, t).await
        })
        .await;
        p.step("several compares, one false", async |s| {
            let t = Txn::new().when([
                Compare::value("t/a", CompareOp::Equal, "11"),
                Compare::version("t/b", CompareOp::Equal, 7),
            ]);
            txn(s, t).await
        })
        .await;
        p.step("success branch: put/range/delete", async |s| {
            let t = Txn::new()
                .when([Compare::value("t/a", CompareOp::Equal, "11")])
                .and_then([
                    TxnOp::put("t/x", "1", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("t/", Some(GetOptions::new().with_prefix())),
                    TxnOp::delete("t/b", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("t/b", None),
                ])
                .or_else([TxnOp::get("t/a", None)]);
            txn(s, t).await
        })
        .await;
        p.step("failure branch: put/range/delete", async |s| {
            let t = Txn::new()
                .when([Compare::value("t/a", CompareOp::Equal, "nope")])
                .and_then([TxnOp::get("t/a", None)])
                .or_else([
                    TxnOp::put("t/y", "2", None),
                    TxnOp::delete("t/x", None),
                    TxnOp::get("t/", Some(GetOptions::new().with_prefix().with_keys_only())),
                ]);
            txn(s, t).await
        })
        .await;
        p.step("read-only txn keeps the revision", async |s| {
            let t = Txn::new().and_then([TxnOp::get("t/a", None), TxnOp::get("t/y", None)]);
            txn(s, t).await
        })
        .await;
        p.step("empty txn", async |s| txn(s, Txn::new()).await)
            .await;
        p.step("txn delete of a missing key", async |s| {
            txn(s, Txn::new().and_then([TxnOp::delete("t/missing", None)])).await
        })
        .await;
        p.step("nested txn", async |s| {
            let inner_ok = Txn::new()
                .when([Compare::version("t/y", CompareOp::Equal, 1)])
                .and_then([TxnOp::put("t/n1", "inner", None), TxnOp::get("t/n1", None)])
                .or_else([TxnOp::put("t/n2", "inner-else", None)]);
            let inner_fail = Txn::new()
                .when([Compare::version("t/y", CompareOp::Equal, 9)])
                .and_then([TxnOp::put("t/n3", "x", None)])
                .or_else([TxnOp::get(
                    "t/",
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )]);
            let t = Txn::new()
                .when([Compare::value("t/a", CompareOp::Equal, "11")])
                .and_then([
                    TxnOp::put("t/outer", "o", None),
                    TxnOp::txn(inner_ok),
                    TxnOp::txn(inner_fail),
                ]);
            txn(s, t).await
        })
        .await;
        p.step("get t/ after nested txn", async |s| {
            get(s, "t/", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        p.step("128 ops (limit)", async |s| {
            let ops: Vec<TxnOp> = (0..128)
                .map(|i| TxnOp::put(format!("m/{i:03}"), "v", None))
                .collect();
            txn(s, Txn::new().and_then(ops)).await
        })
        .await;
        p.step("129 ops: too many", async |s| {
            let ops: Vec<TxnOp> = (0..129)
                .map(|i| TxnOp::put(format!("m/{i:03}"), "v", None))
                .collect();
            txn(s, Txn::new().and_then(ops)).await
        })
        .await;
        p.step("129 ops in failure branch: too many", async |s| {
            let ops: Vec<TxnOp> = (0..129)
                .map(|i| TxnOp::get(format!("m/{i:03}"), None))
                .collect();
            txn(s, Txn::new().or_else(ops)).await
        })
        .await;
        p.step("duplicate put in txn", async |s| {
            let t =
                Txn::new().and_then([TxnOp::put("t/a", "1", None), TxnOp::put("t/a", "2", None)]);
            txn(s, t).await
        })
        .await;
        p.step("put + delete of the same key in txn", async |s| {
            let t = Txn::new().and_then([TxnOp::put("t/a", "1", None), TxnOp::delete("t/a", None)]);
            txn(s, t).await
        })
        .await;
        p.step("put + delete of a range covering it", async |s| {
            let t = Txn::new().and_then([
                TxnOp::put("t/a", "1", None),
                TxnOp::delete("t/", Some(DeleteOptions::new().with_prefix())),
            ]);
            txn(s, t).await
        })
        .await;
        p.step("two deletes of the same key", async |s| {
            let t = Txn::new().and_then([TxnOp::delete("t/zz", None), TxnOp::delete("t/zz", None)]);
            txn(s, t).await
        })
        .await;
        p.step("same key in success and failure branches", async |s| {
            let t = Txn::new()
                .when([Compare::version("t/a", CompareOp::Equal, 2)])
                .and_then([TxnOp::put("t/a", "s", None)])
                .or_else([TxnOp::put("t/a", "f", None)]);
            txn(s, t).await
        })
        .await;
        p.step("duplicate put across nested txn", async |s| {
            let inner = Txn::new().and_then([TxnOp::put("t/a", "inner", None)]);
            let t = Txn::new().and_then([TxnOp::put("t/a", "outer", None), TxnOp::txn(inner)]);
            txn(s, t).await
        })
        .await;
        p.step("empty key put in txn", async |s| {
            txn(s, Txn::new().and_then([TxnOp::put("", "v", None)])).await
        })
        .await;
        p.step("empty key range in txn", async |s| {
            txn(s, Txn::new().or_else([TxnOp::get("", None)])).await
        })
        .await;
        p.step("empty key delete in txn", async |s| {
            txn(s, Txn::new().and_then([TxnOp::delete("", None)])).await
        })
        .await;
        p.step("compare on empty key", async |s| {
            let t = Txn::new().when([Compare::version("", CompareOp::Equal, 0)]);
            txn(s, t).await
        })
        .await;
        p.step("txn put with missing lease", async |s| {
            let t = Txn::new().and_then([TxnOp::put(
                "t/l",
                "v",
                Some(PutOptions::new().with_lease(5)),
            )]);
            txn(s, t).await
        })
        .await;
        p.step("txn range at future revision", async |s| {
            let o = GetOptions::new().with_revision(s.rel(10_000));
            txn(s, Txn::new().and_then([TxnOp::get("t/a", Some(o))])).await
        })
        .await;
        p.step("create-if-absent idiom (absent)", async |s| {
            let t = Txn::new()
                .when([Compare::create_revision("t/new", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("t/new", "x", None)])
                .or_else([TxnOp::get("t/new", None)]);
            txn(s, t).await
        })
        .await;
        p.step("create-if-absent idiom (present)", async |s| {
            let t = Txn::new()
                .when([Compare::create_revision("t/new", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("t/new", "y", None)])
                .or_else([TxnOp::get("t/new", None)]);
            txn(s, t).await
        })
        .await;
        p.step("get all at the end", async |s| {
            get(s, "t/", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        p.finish();
    });
}

// ---------------------------------------------------------------------------

#[test]
fn v3_leases() {
    run(|| async {
        let mut p = V3Pair::start("v3 leases").await;
        p.step("grant with id 7587, ttl 30", async |s| {
            grant(s, "L7587", 30, Some(7587)).await
        })
        .await;
        p.step("grant the same id again", async |s| {
            grant(s, "dup", 30, Some(7587)).await
        })
        .await;
        p.step("grant without id, ttl 60", async |s| {
            grant(s, "auto1", 60, None).await
        })
        .await;
        p.step(
            "grant without id, ttl 1 (raised to the minimum)",
            async |s| grant(s, "auto-min", 1, None).await,
        )
        .await;
        p.step("grant ttl 0", async |s| {
            grant(s, "auto-zero", 0, None).await
        })
        .await;
        p.step("grant ttl too large", async |s| {
            grant(s, "toolarge", 9_000_000_001, None).await
        })
        .await;
        p.step("grant ttl max (9e9)", async |s| {
            grant(s, "max", 9_000_000_000, None).await
        })
        .await;
        p.step("grant negative id", async |s| {
            grant(s, "neg", 30, Some(-5)).await
        })
        .await;
        p.step("put k1 with lease 7587", async |s| {
            put(s, "l/k1", "v1", Some(PutOptions::new().with_lease(7587))).await
        })
        .await;
        p.step("put k2 with lease 7587", async |s| {
            put(s, "l/k2", "v2", Some(PutOptions::new().with_lease(7587))).await
        })
        .await;
        p.step("put k3 with auto lease", async |s| {
            let id = s.lease("auto1");
            put(s, "l/k3", "v3", Some(PutOptions::new().with_lease(id))).await
        })
        .await;
        p.step("time-to-live with keys", async |s| ttl(s, 7587, true).await)
            .await;
        p.step("time-to-live without keys", async |s| {
            ttl(s, 7587, false).await
        })
        .await;
        p.step("time-to-live of auto lease", async |s| {
            let id = s.lease("auto1");
            ttl(s, id, true).await
        })
        .await;
        p.step("time-to-live of a missing lease", async |s| {
            ttl(s, 424_242, true).await
        })
        .await;
        p.step("leases list", async |s| {
            let r = s.client.leases().await;
            res(&r, |x| s.norm.leases(x))
        })
        .await;
        p.step("keep-alive", async |s| {
            let (mut keeper, mut stream) = match s.client.lease_keep_alive(7587).await {
                Ok(x) => x,
                Err(e) => return err(&e),
            };
            let mut out = vec![json!({"keeper_id": s.norm.lease(keeper.id())})];
            for _ in 0..2 {
                if let Err(e) = keeper.keep_alive().await {
                    out.push(err(&e));
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) => out.push(s.norm.keep_alive(&r)),
                    Ok(None) => out.push(json!("<end>")),
                    Err(e) => out.push(err(&e)),
                }
            }
            json!(out)
        })
        .await;
        p.step("keep-alive of a missing lease", async |s| {
            match s.client.lease_keep_alive(31337).await {
                Ok((k, _)) => json!({"keeper_id": k.id()}),
                Err(e) => err(&e),
            }
        })
        .await;
        p.step("revoke 7587", async |s| {
            let r = s.client.lease_revoke(7587).await;
            res(&r, |x| s.norm.revoke(x))
        })
        .await;
        p.step("keys of the revoked lease are gone", async |s| {
            get(s, "l/", Some(GetOptions::new().with_prefix())).await
        })
        .await;
        p.step("revoke 7587 twice", async |s| {
            let r = s.client.lease_revoke(7587).await;
            res(&r, |x| s.norm.revoke(x))
        })
        .await;
        p.step("put with the revoked lease", async |s| {
            put(s, "l/k9", "v", Some(PutOptions::new().with_lease(7587))).await
        })
        .await;
        p.step("time-to-live of the revoked lease", async |s| {
            ttl(s, 7587, true).await
        })
        .await;
        p.step("leases list after revoke", async |s| {
            let r = s.client.leases().await;
            res(&r, |x| s.norm.leases(x))
        })
        .await;

        // Expiry: a lease with the minimum TTL expires, its keys are deleted and a
        // watcher sees the deletes.
        p.step_for(
            "expiry deletes attached keys (watched)",
            Duration::from_secs(30),
            async |s| {
                let g = match s
                    .client
                    .lease_grant(1, Some(LeaseGrantOptions::new().with_id(4242)))
                    .await
                {
                    Ok(g) => g,
                    Err(e) => return err(&e),
                };
                s.norm.name_lease(g.id(), "L4242");
                for k in ["x/1", "x/2"] {
                    if let Err(e) = s
                        .client
                        .put(k, "v", Some(PutOptions::new().with_lease(4242)))
                        .await
                    {
                        return err(&e);
                    }
                }
                let mut w = match s
                    .client
                    .watch(
                        "x/",
                        Some(WatchOptions::new().with_prefix().with_prev_key()),
                    )
                    .await
                {
                    Ok(w) => w,
                    Err(e) => return err(&e),
                };
                let start = std::time::Instant::now();
                let msgs =
                    collect_watch(&s.norm, &mut w, 2, Duration::from_secs(15), |_| false).await;
                let waited = start.elapsed();
                let after = get(s, "x/", Some(GetOptions::new().with_prefix())).await;
                let t = ttl(s, 4242, true).await;
                json!({
                    "grant_ttl": g.ttl(),
                    "watch": msgs,
                    "expired_within_15s": waited < Duration::from_secs(15),
                    "after": after,
                    "ttl_after": t,
                })
            },
        )
        .await;
        p.finish();
    });
}

// ---------------------------------------------------------------------------

/// Open a watch, check the `created` response, run `writes`, collect
/// `want` events (or until `until` matches).
macro_rules! watch_step {
    ($s:ident, $key:expr, $opts:expr, $want:expr, $writes:block) => {{
        let mut w = match $s.client.watch($key, $opts).await {
            Ok(w) => w,
            Err(e) => return err(&e),
        };
        let created = collect_watch(&$s.norm, &mut w, 0, WATCH_WAIT, |m| m.created()).await;
        $writes
        let events = collect_watch(&$s.norm, &mut w, $want, WATCH_WAIT, |m| m.canceled()).await;
        json!({"created": created, "events": events})
    }};
}

async fn write(s: &mut V3Side, k: &str, v: Option<&str>) {
    match v {
        Some(v) => {
            s.client.put(k, v, None).await.expect("put");
        }
        None => {
            s.client.delete(k, None).await.expect("delete");
        }
    }
}

#[test]
fn v3_watch() {
    run(|| async {
        let mut p = V3Pair::start("v3 watch").await;
        // History: R+1 w/a=1, R+2 w/b=1, R+3 w/a=2, R+4 del w/b, R+5 w/c=1
        seed(&mut p, &[("w/a", "1"), ("w/b", "1"), ("w/a", "2")]).await;
        p.both("delete w/b", async |s| write(s, "w/b", None).await)
            .await;
        seed(&mut p, &[("w/c", "1")]).await;

        p.step("watch single key", async |s| {
            watch_step!(s, "w/a", None, 3, {
                write(s, "w/a", Some("3")).await;
                write(s, "w/other", Some("x")).await;
                write(s, "w/a", Some("4")).await;
                write(s, "w/a", None).await;
            })
        })
        .await;
        p.step("watch prefix with prev_kv", async |s| {
            watch_step!(
                s,
                "w/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
                4,
                {
                    write(s, "w/a", Some("5")).await;
                    write(s, "w/a", Some("6")).await;
                    write(s, "x/out", Some("x")).await;
                    write(s, "w/c", None).await;
                    write(s, "w/d", Some("1")).await;
                }
            )
        })
        .await;
        p.step("watch range [w/a, w/c)", async |s| {
            watch_step!(s, "w/a", Some(WatchOptions::new().with_range("w/c")), 2, {
                write(s, "w/c", Some("2")).await;
                write(s, "w/b", Some("2")).await;
                write(s, "w/a", Some("7")).await;
            })
        })
        .await;
        p.step(
            "watch from history (start_revision R+1, prefix)",
            async |s| {
                let o = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(s.rel(1))
                    .with_prev_key();
                watch_step!(s, "w/", Some(o), 16, {})
            },
        )
        .await;
        p.step(
            "watch from history (start_revision R+3, single key)",
            async |s| {
                let o = WatchOptions::new().with_start_revision(s.rel(3));
                watch_step!(s, "w/a", Some(o), 7, {})
            },
        )
        .await;
        p.step("watch with a future start_revision", async |s| {
            let cur = keel_tests::v3::current_revision(&mut s.client).await;
            let o = WatchOptions::new()
                .with_prefix()
                .with_start_revision(cur + 2);
            watch_step!(s, "w/", Some(o), 1, {
                write(s, "w/f", Some("1")).await;
                write(s, "w/f", Some("2")).await;
            })
        })
        .await;
        p.step("filter NOPUT", async |s| {
            let o = WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut]);
            watch_step!(s, "w/", Some(o), 1, {
                write(s, "w/g", Some("1")).await;
                write(s, "w/g", None).await;
            })
        })
        .await;
        p.step("filter NODELETE", async |s| {
            let o = WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoDelete]);
            watch_step!(s, "w/", Some(o), 2, {
                write(s, "w/h", Some("1")).await;
                write(s, "w/h", None).await;
                write(s, "w/h", Some("2")).await;
            })
        })
        .await;
        p.step("several watchers on one stream, cancel, progress", async |s| {
        let mut w = match s.client.watch("m/a", None).await {
            Ok(w) => w,
            Err(e) => return err(&e),
        };
        let mut out = Vec::new();
        out.push(json!({"created#0": collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| m.created()).await}));
        w.watch("m/", Some(WatchOptions::new().with_prefix())).await.expect("watch 2");
        out.push(json!({"created#1": collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| m.created()).await}));
        w.watch("m/b", Some(WatchOptions::new().with_prev_key())).await.expect("watch 3");
        out.push(json!({"created#2": collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| m.created()).await}));
        write(s, "m/a", Some("1")).await;
        write(s, "m/b", Some("1")).await;
        // m/a matches watchers 0 and 1, m/b matches 1 and 2.
        let mut evs = collect_watch(&s.norm, &mut w, 4, WATCH_WAIT, |_| false).await;
        evs.sort_by_key(|v| v.to_string());
        out.push(json!({"events": evs}));
        // Cancel watcher 1; a write to m/c is then seen by nobody, the
        // following one to m/a only by watcher 0.
        w.cancel(1).await.expect("cancel");
        out.push(json!({"cancel": collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| m.canceled()).await}));
        write(s, "m/c", Some("1")).await;
        write(s, "m/a", Some("2")).await;
        out.push(json!({"after cancel": collect_watch(&s.norm, &mut w, 1, WATCH_WAIT, |_| false).await}));
        // Cancel of an unknown watch id.
        w.cancel(99).await.expect("cancel 99");
        w.request_progress().await.expect("progress");
        out.push(json!({"cancel 99 + progress": collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| !m.canceled() && !m.created() && m.events().is_empty() && m.watch_id() != 99).await}));
        json!(out)
    })
    .await;
        p.step("progress request on an idle stream", async |s| {
            let mut w = match s
                .client
                .watch("idle/", Some(WatchOptions::new().with_prefix()))
                .await
            {
                Ok(w) => w,
                Err(e) => return err(&e),
            };
            let created = collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| m.created()).await;
            w.request_progress().await.expect("progress");
            let progress = collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |_| true).await;
            json!({"created": created, "progress": progress})
        })
        .await;
        p.step("watch with an explicit watch_id", async |s| {
            watch_step!(s, "w/a", Some(WatchOptions::new().with_watch_id(42)), 1, {
                write(s, "w/a", Some("8")).await;
            })
        })
        .await;
        p.step("watch on the empty key", async |s| {
            let mut w = match s.client.watch("", None).await {
                Ok(w) => w,
                Err(e) => return err(&e),
            };
            json!(collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |_| true).await)
        })
        .await;

        // Compaction: a watch from a compacted revision is canceled with the
        // compact revision.
        p.both("compact to current", async |s| {
            let cur = keel_tests::v3::current_revision(&mut s.client).await;
            s.client.compact(cur - 2, None).await.expect("compact");
        })
        .await;
        p.step("watch from a compacted revision", async |s| {
            let o = WatchOptions::new()
                .with_prefix()
                .with_start_revision(s.rel(2));
            let mut w = match s.client.watch("w/", Some(o)).await {
                Ok(w) => w,
                Err(e) => return err(&e),
            };
            json!(collect_watch(&s.norm, &mut w, 0, WATCH_WAIT, |m| m.canceled()).await)
        })
        .await;
        p.step("watch from the compaction revision itself", async |s| {
            let cur = keel_tests::v3::current_revision(&mut s.client).await;
            let o = WatchOptions::new()
                .with_prefix()
                .with_start_revision(cur - 2);
            watch_step!(s, "w/", Some(o), 1, {})
        })
        .await;
        p.finish();
    });
}

// ---------------------------------------------------------------------------

#[test]
fn v3_cluster_maintenance() {
    run(|| async {
        let mut p = V3Pair::start("v3 cluster/maintenance").await;
        seed(&mut p, &[("s/a", "1"), ("s/b", "2")]).await;
        p.step("member list", async |s| {
            let r = s.client.member_list().await;
            res(&r, |x| s.norm.member_list(x))
        })
        .await;
        p.step("status", async |s| {
            let r = s.client.status().await;
            res(&r, |x| s.norm.status(x))
        })
        .await;
        p.step("alarm list", async |s| {
            let r = s
                .client
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await;
            res(&r, |x| s.norm.alarm(x))
        })
        .await;
        p.step("hash kv stable while nothing changes", async |s| {
            let a = s.client.hash_kv(0).await;
            let b = s.client.hash_kv(0).await;
            match (&a, &b) {
                (Ok(a), Ok(b)) => json!({
                    "stable": a.hash() == b.hash(),
                    "header": s.norm.header(a.header()),
                }),
                (Err(e), _) | (_, Err(e)) => err(e),
            }
        })
        .await;
        p.step("hash kv at an old revision is stable", async |s| {
            let rev = s.rel(1);
            let a = s.client.hash_kv(rev).await;
            s.client.put("s/c", "3", None).await.expect("put");
            let b = s.client.hash_kv(rev).await;
            match (&a, &b) {
                (Ok(a), Ok(b)) => json!({"stable": a.hash() == b.hash()}),
                (Err(e), _) | (_, Err(e)) => err(e),
            }
        })
        .await;
        p.step("hash kv at a future revision", async |s| {
            let r = s.client.hash_kv(s.rel(1000)).await;
            res(&r, |_| json!("ok"))
        })
        .await;
        p.step("hash answers", async |s| {
            let r = s.client.hash().await;
            res(&r, |x| json!({"header": s.norm.header(x.header())}))
        })
        .await;
        p.step("defragment", async |s| {
            let r = s.client.defragment().await;
            res(&r, |x| json!({"header": s.norm.header(x.header())}))
        })
        .await;
        p.step_for("snapshot", Duration::from_secs(30), async |s| {
            let mut st = match s.client.snapshot().await {
                Ok(st) => st,
                Err(e) => return err(&e),
            };
            let mut bytes = Vec::new();
            let mut remaining_ok = true;
            let mut last_remaining = u64::MAX;
            loop {
                match st.message().await {
                    Ok(Some(m)) => {
                        bytes.extend_from_slice(m.blob());
                        if m.remaining_bytes() > last_remaining {
                            remaining_ok = false;
                        }
                        last_remaining = m.remaining_bytes();
                    }
                    Ok(None) => break,
                    Err(e) => return err(&e),
                }
            }
            json!({
                "nonempty": bytes.len() > 32,
                "sha256_trailer_ok": snapshot_hash_ok(&bytes),
                "remaining_decreasing": remaining_ok,
                "last_remaining": last_remaining,
            })
        })
        .await;
        p.step("move leader to a missing member", async |s| {
            let r = s.client.move_leader(12345).await;
            res(&r, |x| json!({"header": s.norm.header(x.header())}))
        })
        .await;
        p.step("member remove of a missing member", async |s| {
            let r = s.client.member_remove(12345).await;
            res(&r, |_| json!("ok"))
        })
        .await;
        p.step("member update of a missing member", async |s| {
            let r = s
                .client
                .member_update(12345, vec!["http://127.0.0.1:1".to_string()])
                .await;
            res(&r, |_| json!("ok"))
        })
        .await;
        p.step("member list again", async |s| {
            let r = s.client.member_list().await;
            res(&r, |x| s.norm.member_list(x))
        })
        .await;
        p.finish();
    });
}
