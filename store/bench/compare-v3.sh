#!/usr/bin/env bash
# Compare Keel's store with etcd 3.4 on the etcd v3 gRPC API, using
# `keel-store bench --api v3` as the load generator for both, and print a
# markdown table. Shares its helpers with compare.sh (v2) in lib.sh.
#
# Each server is started twice on loopback, with a fresh data dir each time:
#   A. latency/throughput: put @1, @16 and @64 clients, linearizable range @1
#      and @16, compare-and-swap txn @16, watch fan-out (1000 watchers on one
#      key over 10 streams, one writer; every watcher must see every revision
#      exactly once, in order), lease keep-alives (1000 leases, 16 streams);
#   B. memory and recovery: bulk load of 1M keys then up to 2M keys (256-byte
#      values), RSS / peak RSS and data dir size after each, then SIGTERM and
#      restart with 2M keys, timed until a range of the last key returns it.
# etcd runs v3-only with --quota-backend-bytes 8 GiB so its backend quota
# (default 2 GiB; NOSPACE alarm when crossed) never stops the 2M-key load.
# keel-store has no quota flag (its keyspace lives in memory, the data dir holds
# WAL + snapshots).
#
# Usage: store/bench/compare-v3.sh [--quick] [--only etcd|keel]
#                                  [--port-base N] [--raw FILE]
#   --quick       scale down for smoke tests (10k/20k keys, 2s runs)
#   --only NAME   run only etcd or only keel (default: both)
#   --port-base N first loopback port (default 23791); uses N, N+1, N+10, N+11
#   --raw FILE    also append every run's JSON report to FILE
# Environment:
#   KEEL_STORE  keel-store binary (default: <repo>/target/release/keel-store)
#   KEEL_BENCH  load generator command (default: "$KEEL_STORE bench")
#   ETCD        etcd binary (default: /usr/bin/etcd; apt package etcd-server
#               is installed when missing)
#   KEEP=1      keep the scratch directory (data dirs, server logs)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
# shellcheck source=store/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init "$@"

if [[ $QUICK == 1 ]]; then
    DUR=2s; KV_KEYS=10000; WATCHERS=100; WATCH_PUTS=200; LEASES=100; LOAD1=10000; LOAD2=20000
else
    DUR=10s; KV_KEYS=100000; WATCHERS=1000; WATCH_PUTS=1000; LEASES=1000; LOAD1=1000000; LOAD2=2000000
fi
STREAMS=10
LOAD_CLIENTS=16
LOAD_CONNS=4
ETCD_QUOTA_BYTES=$((8 * 1024 * 1024 * 1024))
READY_TIMEOUT=900 # seconds; a restart with 2M keys can take a while

# range_ok PORT KEY: a (linearizable) range of KEY through the JSON gateway
# returns it.
range_ok() {
    local body
    body="{\"key\":\"$(printf '%s' "$2" | base64 -w0)\"}"
    curl -sf --max-time 2 -X POST -d "$body" "http://127.0.0.1:$1/v3/kv/range" 2>/dev/null |
        grep -q '"kvs"'
}

# v3_ready PORT: the v3 API answers a range (of a key that need not exist).
v3_ready() {
    curl -sf -o /dev/null --max-time 2 -X POST -d '{"key":"YQ=="}' "http://127.0.0.1:$1/v3/kv/range"
}

run_server() {
    local name=$1 bin=$2 port=$3 peer=$4 j flags=()
    J=()
    [[ $name == etcd ]] && flags=(--quota-backend-bytes "$ETCD_QUOTA_BYTES")
    local v3=(--api v3)

    # A: latency / throughput on a fresh server.
    start "$name" "$bin" "$WORK/$name-a" "$port" "$peer" "${flags[@]}"
    wait_until "$name" v3_ready "$port"
    R[$name.version]="$(curl -s "http://127.0.0.1:$port/version" | sed -n 's/.*"etcdserver":"\([^"]*\)".*/\1/p')"
    bench "$name" put1 "$port" "${v3[@]}" --workload put --clients 1 --conns 1 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/put
    bench "$name" put16 "$port" "${v3[@]}" --workload put --clients 16 --conns 4 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/put
    bench "$name" put64 "$port" "${v3[@]}" --workload put --clients 64 --conns 8 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/put
    bench "$name" range1 "$port" "${v3[@]}" --workload range --clients 1 --conns 1 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/range
    bench "$name" range16 "$port" "${v3[@]}" --workload range --clients 16 --conns 4 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/range --no-preload
    bench "$name" txn16 "$port" "${v3[@]}" --workload txn --clients 16 --conns 4 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/txn
    bench "$name" watch "$port" "${v3[@]}" --workload watch --watchers "$WATCHERS" --streams "$STREAMS" --conns 1 \
        --total "$WATCH_PUTS" --watch-grace 60s --prefix bench/watch
    bench "$name" keepalive "$port" "${v3[@]}" --workload keepalive --clients 16 --conns 4 --leases "$LEASES" --duration "$DUR"
    stop

    # B: memory after bulk loads, then restart time.
    local dir="$WORK/$name-b" last
    start "$name" "$bin" "$dir" "$port" "$peer" "${flags[@]}"
    wait_until "$name" v3_ready "$port"
    bench "$name" load1 "$port" "${v3[@]}" --workload load --clients "$LOAD_CLIENTS" --conns "$LOAD_CONNS" \
        --key-space "$LOAD1" --prefix bench/data
    R[$name.du1]="$(du -sm "$dir" | cut -f1)"
    bench "$name" load2 "$port" "${v3[@]}" --workload load --clients "$LOAD_CLIENTS" --conns "$LOAD_CONNS" \
        --key-start "$LOAD1" --key-space "$((LOAD2 - LOAD1))" --prefix bench/data
    R[$name.du2]="$(du -sm "$dir" | cut -f1)"
    stop
    R[$name.stop_ms]=$STOP_MS
    last="$(printf 'bench/data/k%08d' $((LOAD2 - 1)))"
    local t0 t1
    t0=$(date +%s%N)
    start "$name" "$bin" "$dir" "$port" "$peer" "${flags[@]}"
    wait_until "$name" range_ok "$port" "$last"
    t1=$(date +%s%N)
    R[$name.restart_ms]=$(((t1 - t0) / 1000000))
    R[$name.restart_rss]="$(mib "$(rss_kib)")"
    stop

    for b in put1 put16 put64 range1 range16 txn16 keepalive; do
        j=${J[$b]}
        R[$name.$b.ops]=$(num "$(jget "$j" ops_per_sec)")
        R[$name.$b.lat]="$(ms "$(jget "$j" p50_us)") / $(ms "$(jget "$j" p99_us)")"
        R[$name.$b.cpu]=$(num "$(jget "$j" server_cpu_us_per_op)")
        R[$name.$b.err]=$(jget "$j" errors)
    done
    j=${J[watch]}
    R[$name.watch.eps]=$(num "$(jget "$j" events_per_sec)")
    R[$name.watch.lat]="$(ms "$(jget "$j" delivery_p50_us)") / $(ms "$(jget "$j" delivery_p99_us)")"
    R[$name.watch.bad]="$(jget "$j" events_missed) / $(jget "$j" events_duplicated) / $(jget "$j" events_out_of_order) of $(jget "$j" events_expected)"
    R[$name.watch.put]=$(num "$(jget "$j" ops_per_sec)")
    R[$name.watch.cpu]=$(jget "$j" server_cpu_us_per_op)
    R[$name.watch.err]=$(($(jget "$j" errors) + $(jget "$j" watch_errors) + $(jget "$j" events_unexpected)))
    for b in load1 load2; do
        j=${J[$b]}
        R[$name.$b.rate]=$(num "$(jget "$j" ops_per_sec)")
        R[$name.$b.rss]="$(mib "$(jget "$j" server_rss_kib)") / $(mib "$(jget "$j" server_hwm_kib)")"
        R[$name.$b.max]="$(ms "$(jget "$j" max_us)")"
        R[$name.$b.err]=$(jget "$j" errors)
    done
    R[$name.bpk]=$(awk -v k="$(jget "${J[load2]}" server_rss_kib)" -v n="$LOAD2" 'BEGIN { printf "%.0f", k * 1024 / n }')
}

if [[ $ONLY != keel ]]; then
    run_server etcd "$ETCD" "$PORT_BASE" "$((PORT_BASE + 10))"
    NAMES+=(etcd)
fi
if [[ $ONLY != etcd ]]; then
    run_server keel "$KEEL_STORE" "$((PORT_BASE + 1))" "$((PORT_BASE + 11))"
    NAMES+=(keel)
fi

# --- report -------------------------------------------------------------------
mode="full"
[[ $QUICK == 1 ]] && mode="quick (smoke test; numbers are not comparable to a full run)"
echo "## etcd v3 gRPC API: $(printf '%s vs ' "${NAMES[@]}" | sed 's/ vs $//')"
echo
echo "Mode: $mode. $(machine); loopback, load generator on the same machine; ${DUR} runs, 256-byte values, closed loop (one request in flight per client), clients sharing --conns HTTP/2 connections."
echo
table_header
row "put, 1 client: ops/s" put1.ops
row "put, 1 client: p50 / p99 latency (ms)" put1.lat
row "put, 16 clients / 4 conns: ops/s" put16.ops
row "put, 16 clients: p50 / p99 latency (ms)" put16.lat
row "put, 16 clients: server CPU per op (µs)" put16.cpu
row "put, 64 clients / 8 conns: ops/s" put64.ops
row "put, 64 clients: p50 / p99 latency (ms)" put64.lat
row "put, 64 clients: server CPU per op (µs)" put64.cpu
row "range (linearizable), 1 client: ops/s" range1.ops
row "range, 1 client: p50 / p99 latency (ms)" range1.lat
row "range, 16 clients / 4 conns: ops/s" range16.ops
row "range, 16 clients: p50 / p99 latency (ms)" range16.lat
row "range, 16 clients: server CPU per op (µs)" range16.cpu
row "txn (CAS), 16 clients / 4 conns: ops/s" txn16.ops
row "txn, 16 clients: p50 / p99 latency (ms)" txn16.lat
row "txn, 16 clients: server CPU per op (µs)" txn16.cpu
row "watch, $WATCHERS watchers / $STREAMS streams, $WATCH_PUTS puts: events delivered/s" watch.eps
row "watch: delivery p50 / p99 latency (ms)" watch.lat
row "watch: missed / duplicated / out-of-order events" watch.bad
row "watch: writer puts/s" watch.put
row "watch: server CPU per delivered event (µs)" watch.cpu
row "lease keep-alive, 16 streams, $LEASES leases: keep-alives/s" keepalive.ops
row "keep-alive: p50 / p99 latency (ms)" keepalive.lat
row "keep-alive: server CPU per op (µs)" keepalive.cpu
row "bulk load of $(k "$LOAD1") keys, $LOAD_CLIENTS clients / $LOAD_CONNS conns: keys/s" load1.rate
row "bulk load of $(k "$LOAD1") keys: max put latency (ms)" load1.max
row "RSS / peak after $(k "$LOAD1") keys (MiB)" load1.rss
row "data dir with $(k "$LOAD1") keys (MiB)" du1
row "bulk load from $(k "$LOAD1") to $(k "$LOAD2") keys: keys/s" load2.rate
row "bulk load to $(k "$LOAD2") keys: max put latency (ms)" load2.max
row "RSS / peak after $(k "$LOAD2") keys (MiB)" load2.rss
row "RSS per key after $(k "$LOAD2") keys (bytes)" bpk
row "data dir with $(k "$LOAD2") keys (MiB)" du2
row "SIGTERM to exit with $(k "$LOAD2") keys (ms)" stop_ms
row "restart with $(k "$LOAD2") keys until the last key is read (ms)" restart_ms
row "RSS after restart (MiB)" restart_rss
errs=""
for n in "${NAMES[@]}"; do
    for b in put1 put16 put64 range1 range16 txn16 keepalive watch load1 load2; do
        [[ ${R[$n.$b.err]} == 0 ]] || errs+=" $n/$b: ${R[$n.$b.err]} errors;"
    done
done
[[ -z $errs ]] || { echo; echo "Errors:$errs"; }
