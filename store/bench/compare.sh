#!/usr/bin/env bash
# Compare Keel's store with etcd 3.4 (`etcd --enable-v2`) on the etcd v2 keys
# API, using `keel-store bench` as the load generator for both, and print a
# markdown table.
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

QUICK=0
ONLY=both
PORT_BASE=23791
RAW=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY="${2:?--only needs etcd or keel}"; shift ;;
        --port-base) PORT_BASE="${2:?--port-base needs a port}"; shift ;;
        --raw) RAW="${2:?--raw needs a file}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$ONLY" in etcd|keel|both) ;; *) echo "--only must be etcd or keel" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KEEL_STORE="${KEEL_STORE:-$ROOT/target/release/keel-store}"
read -r -a BENCH <<<"${KEEL_BENCH:-$KEEL_STORE bench}"
ETCD="${ETCD:-/usr/bin/etcd}"

if [[ $QUICK == 1 ]]; then
    DUR=2s; KV_KEYS=10000; WATCH_PUTS=300; LOAD1=10000; LOAD2=20000
else
    DUR=10s; KV_KEYS=100000; WATCH_PUTS=2000; LOAD1=100000; LOAD2=1000000
fi
WATCHERS=100
LOAD_CLIENTS=16
READY_TIMEOUT=600 # seconds; a restart with 1M keys can take a while

log() { echo "[compare] $*" >&2; }
die() { echo "[compare] error: $*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
if [[ $ONLY != keel && ! -x $ETCD ]]; then
    log "etcd not found at $ETCD; installing Debian's etcd-server"
    if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq etcd-server >/dev/null
    [[ -x $ETCD ]] || ETCD="$(command -v etcd)" || die "etcd-server installed no etcd binary"
fi
if [[ $ONLY != etcd && ! -x $KEEL_STORE ]]; then
    die "keel-store not found at $KEEL_STORE (cargo build --release -p keel-store, or set KEEL_STORE)"
fi
[[ -x ${BENCH[0]} ]] || command -v "${BENCH[0]}" >/dev/null ||
    die "load generator ${BENCH[0]} not found (build keel-store, or set KEEL_BENCH)"
command -v curl >/dev/null || die "curl is required"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/keel-compare.XXXXXX")"
SERVER_PID=""
cleanup() {
    if alive; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A R # results: R[name.metric]=value

# Value of a top-level scalar field in a flat one-line JSON object.
jget() {
    local v
    v="$(sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" <<<"$1")"
    echo "${v:-null}"
}

# --- server lifecycle ---------------------------------------------------------
# start NAME BINARY DATADIR CLIENT_PORT PEER_PORT -> sets SERVER_PID
start() {
    local name=$1 bin=$2 dir=$3 port=$4 peer=$5
    "$bin" --enable-v2 --data-dir "$dir" \
        --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" \
        >>"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
}

# alive: the current server process exists and is not a zombie.
alive() {
    [[ -n $SERVER_PID && -r /proc/$SERVER_PID/stat ]] &&
        ! sed 's/.*) //' "/proc/$SERVER_PID/stat" 2>/dev/null | grep -q '^Z'
}

# wait_ok NAME URL: poll until GET URL answers 2xx; fails if the server dies.
wait_ok() {
    local name=$1 url=$2 deadline=$((SECONDS + READY_TIMEOUT))
    until curl -sf -o /dev/null --max-time 2 "$url"; do
        if ! alive; then
            tail -n 20 "$WORK/$name.log" >&2
            die "$name exited before becoming ready"
        fi
        ((SECONDS < deadline)) || die "$name not ready after ${READY_TIMEOUT}s"
        sleep 0.01
    done
}

# stop: SIGTERM the server and wait; sets STOP_MS to how long the exit took.
stop() {
    local t0 t1 n=0
    t0=$(date +%s%N)
    kill -TERM "$SERVER_PID"
    while alive; do
        sleep 0.01
        n=$((n + 1))
        if ((n == 6000)); then
            log "server ignored SIGTERM for 60s; killing"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    done
    wait "$SERVER_PID" 2>/dev/null || true
    t1=$(date +%s%N)
    SERVER_PID=""
    STOP_MS=$(((t1 - t0) / 1000000))
}

# bench NAME LABEL PORT ARGS...: run the load generator, keep its JSON report.
bench() {
    local name=$1 label=$2 port=$3 out
    shift 3
    log "$name: $label"
    out="$("${BENCH[@]}" --endpoint "http://127.0.0.1:$port" --pid "$SERVER_PID" \
        --format json "$@")" || die "$name: bench $label failed"
    [[ -n $RAW ]] && printf '%s\n' "$out" >>"$RAW"
    J[$label]=$out
}
declare -A J

ms() { [[ $1 == null ]] && echo "-" || awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
mib() { [[ $1 == null ]] && echo "-" || awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
num() { [[ $1 == null ]] && echo "-" || awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }

run_server() {
    local name=$1 bin=$2 port=$3 peer=$4 j
    J=()

    # A: latency / throughput on a fresh server.
    start "$name" "$bin" "$WORK/$name-a" "$port" "$peer"
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
    start "$name" "$bin" "$dir" "$port" "$peer"
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
    start "$name" "$bin" "$dir" "$port" "$peer"
    wait_ok "$name" "http://127.0.0.1:$port/v2/keys/$last"
    t1=$(date +%s%N)
    R[$name.restart_ms]=$(((t1 - t0) / 1000000))
    R[$name.restart_rss]="$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")"
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

NAMES=()
if [[ $ONLY != keel ]]; then
    run_server etcd "$ETCD" "$PORT_BASE" "$((PORT_BASE + 10))"
    NAMES+=(etcd)
fi
if [[ $ONLY != etcd ]]; then
    run_server keel "$KEEL_STORE" "$((PORT_BASE + 1))" "$((PORT_BASE + 11))"
    NAMES+=(keel)
fi

# --- report -------------------------------------------------------------------
k() { awk -v n="$1" 'BEGIN { if (n >= 1000000 && n % 1000000 == 0) printf "%dM", n / 1000000; else if (n >= 1000 && n % 1000 == 0) printf "%dk", n / 1000; else print n }'; }
row() {
    local label=$1 metric=$2 line
    line="| $label |"
    for n in "${NAMES[@]}"; do line+=" ${R[$n.$metric]:--} |"; done
    echo "$line"
}

mode="full"
[[ $QUICK == 1 ]] && mode="quick (smoke test; numbers are not comparable to a full run)"
echo "## etcd v2 API: $(printf '%s vs ' "${NAMES[@]}" | sed 's/ vs $//')"
echo
echo "Mode: $mode. $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, loopback, load generator on the same machine; ${DUR} runs, 256-byte values, closed loop (one request in flight per client)."
echo
header="| benchmark |"
sep="|---|"
for n in "${NAMES[@]}"; do
    if [[ $n == etcd ]]; then header+=" etcd ${R[etcd.version]} |"; else header+=" keel |"; fi
    sep+="---:|"
done
echo "$header"
echo "$sep"
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
