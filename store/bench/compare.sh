#!/usr/bin/env bash
# Compare Keel's store with etcd 3.4 (`etcd --enable-v2`) on the etcd v2 keys
# API, using `keel-store bench` as the load generator for both, and print a
# markdown table. compare-v3.sh does the same for the v3 gRPC API; both use the
# helpers in lib.sh.
#
# Each server is started twice on loopback, with a fresh data dir each time:
#   A. latency/throughput: put @1 and @16 clients, get @1 and @16 clients,
#      watch fan-out (100 watchers, one writer);
#   B. memory and recovery: RSS after loading 100k keys, RSS after 1M keys
#      (256-byte values), then SIGTERM and restart with 1M keys, timed until
#      GET of a loaded key succeeds.
#
# Usage: store/bench/compare.sh [--quick] [--only etcd|keel] [--port-base N]
#                               [--raw FILE]
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
    DUR=2s; KV_KEYS=10000; WATCH_PUTS=300; LOAD1=10000; LOAD2=20000
else
    DUR=10s; KV_KEYS=100000; WATCH_PUTS=2000; LOAD1=100000; LOAD2=1000000
fi
WATCHERS=100
LOAD_CLIENTS=16
READY_TIMEOUT=600 # seconds; a restart with 1M keys can take a while

run_server() {
    local name=$1 bin=$2 port=$3 peer=$4 j
    J=()

    # A: latency / throughput on a fresh server.
    start "$name" "$bin" "$WORK/$name-a" "$port" "$peer" --enable-v2
    wait_ok "$name" "http://127.0.0.1:$port/v2/keys/"
    R[$name.version]="$(curl -s "http://127.0.0.1:$port/version" | sed -n 's/.*"etcdserver":"\([^"]*\)".*/\1/p')"
    bench "$name" put1 "$port" --workload put --clients 1 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/put
    bench "$name" put16 "$port" --workload put --clients 16 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/put
    bench "$name" get1 "$port" --workload get --clients 1 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/get
    bench "$name" get16 "$port" --workload get --clients 16 --duration "$DUR" --key-space "$KV_KEYS" --prefix bench/get --no-preload
    bench "$name" watch "$port" --workload watch --watchers "$WATCHERS" --total "$WATCH_PUTS" --prefix bench/watch
    stop

    # B: memory after bulk loads, then restart time.
    local dir="$WORK/$name-b" last
    start "$name" "$bin" "$dir" "$port" "$peer" --enable-v2
    wait_ok "$name" "http://127.0.0.1:$port/v2/keys/"
    bench "$name" load1 "$port" --workload load --clients "$LOAD_CLIENTS" --key-space "$LOAD1" --prefix bench/data
    bench "$name" load2 "$port" --workload load --clients "$LOAD_CLIENTS" --key-start "$LOAD1" \
        --key-space "$((LOAD2 - LOAD1))" --prefix bench/data
    R[$name.du]="$(du -sm "$dir" | cut -f1)"
    stop
    R[$name.stop_ms]=$STOP_MS
    last="$(printf 'bench/data/k%08d' $((LOAD2 - 1)))"
    local t0 t1
    t0=$(date +%s%N)
    start "$name" "$bin" "$dir" "$port" "$peer" --enable-v2
    wait_ok "$name" "http://127.0.0.1:$port/v2/keys/$last"
    t1=$(date +%s%N)
    R[$name.restart_ms]=$(((t1 - t0) / 1000000))
    R[$name.restart_rss]="$(rss_kib)"
    stop

    for b in put1 put16 get1 get16; do
        j=${J[$b]}
        R[$name.$b.ops]=$(jget "$j" ops_per_sec)
        R[$name.$b.lat]="$(ms "$(jget "$j" p50_us)") / $(ms "$(jget "$j" p99_us)")"
        R[$name.$b.cpu]=$(jget "$j" server_cpu_us_per_op)
        R[$name.$b.err]=$(jget "$j" errors)
    done
    j=${J[watch]}
    R[$name.watch.eps]=$(num "$(jget "$j" events_per_sec)")
    R[$name.watch.lat]="$(ms "$(jget "$j" delivery_p50_us)") / $(ms "$(jget "$j" delivery_p99_us)")"
    R[$name.watch.missed]="$(jget "$j" events_missed) of $(jget "$j" events_expected)"
    R[$name.watch.put]=$(jget "$j" ops_per_sec)
    R[$name.load1.rate]=$(num "$(jget "${J[load1]}" ops_per_sec)")
    R[$name.load2.rate]=$(num "$(jget "${J[load2]}" ops_per_sec)")
    R[$name.load1.rss]="$(mib "$(jget "${J[load1]}" server_rss_kib)") / $(mib "$(jget "${J[load1]}" server_hwm_kib)")"
    R[$name.load2.rss]="$(mib "$(jget "${J[load2]}" server_rss_kib)") / $(mib "$(jget "${J[load2]}" server_hwm_kib)")"
    R[$name.restart_rss]="$(mib "${R[$name.restart_rss]:-null}")"
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
echo "## etcd v2 API: $(printf '%s vs ' "${NAMES[@]}" | sed 's/ vs $//')"
echo
echo "Mode: $mode. $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, loopback, load generator on the same machine; ${DUR} runs, 256-byte values, closed loop (one request in flight per client)."
echo
table_header
row "put, 1 client: ops/s" put1.ops
row "put, 1 client: p50 / p99 latency (ms)" put1.lat
row "put, 16 clients: ops/s" put16.ops
row "put, 16 clients: p50 / p99 latency (ms)" put16.lat
row "put, 16 clients: server CPU per op (µs)" put16.cpu
row "get, 1 client: ops/s" get1.ops
row "get, 1 client: p50 / p99 latency (ms)" get1.lat
row "get, 16 clients: ops/s" get16.ops
row "get, 16 clients: p50 / p99 latency (ms)" get16.lat
row "get, 16 clients: server CPU per op (µs)" get16.cpu
row "watch, $WATCHERS watchers, $WATCH_PUTS puts: events delivered/s" watch.eps
row "watch: delivery p50 / p99 latency (ms)" watch.lat
row "watch: missed events" watch.missed
row "watch: writer puts/s" watch.put
row "bulk load of $(k "$LOAD1") keys, $LOAD_CLIENTS clients: keys/s" load1.rate
row "RSS / peak after $(k "$LOAD1") keys (MiB)" load1.rss
row "bulk load to $(k "$LOAD2") keys: keys/s" load2.rate
row "RSS / peak after $(k "$LOAD2") keys (MiB)" load2.rss
row "data dir with $(k "$LOAD2") keys (MiB)" du
row "SIGTERM to exit with $(k "$LOAD2") keys (ms)" stop_ms
row "restart with $(k "$LOAD2") keys until GET succeeds (ms)" restart_ms
row "RSS after restart (MiB)" restart_rss
errs=""
for n in "${NAMES[@]}"; do
    for b in put1 put16 get1 get16; do
        [[ ${R[$n.$b.err]} == 0 ]] || errs+=" $n/$b: ${R[$n.$b.err]} errors;"
    done
done
[[ -z $errs ]] || { echo; echo "Errors:$errs"; }
