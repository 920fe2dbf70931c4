# Helpers shared by store/bench/compare.sh (v2 API) and compare-v3.sh (v3
# API): option parsing, prerequisites, server lifecycle on loopback, running
# `keel-store bench`, and markdown table output. Source it, don't run it.
#
# The sourcing script must define usage() (its help text) before calling
# bench_init "$@", which parses the common options, checks prerequisites and
# creates the scratch directory $WORK (removed on exit unless KEEP=1).
# shellcheck shell=bash

log() { echo "[compare] $*" >&2; }
die() { echo "[compare] error: $*" >&2; exit 1; }

# bench_init ARGS...: parse --quick/--only/--port-base/--raw, set QUICK, ONLY,
# PORT_BASE, RAW, ROOT, KEEL_STORE, BENCH (array), ETCD, WORK.
bench_init() {
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

    if [[ $ONLY != keel && ! -x $ETCD ]]; then
        log "etcd not found at $ETCD; installing Debian's etcd-server"
        local sudo=()
        [[ $(id -u) == 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq etcd-server >/dev/null
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
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    if alive; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

# Value of a top-level scalar field in a flat one-line JSON object.
jget() {
    local v
    v="$(sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" <<<"$1")"
    echo "${v:-null}"
}

# --- server lifecycle ---------------------------------------------------------
# start NAME BINARY DATADIR CLIENT_PORT PEER_PORT [FLAG...] -> sets SERVER_PID.
# The extra flags go to the server (e.g. --enable-v2, --quota-backend-bytes).
start() {
    local name=$1 bin=$2 dir=$3 port=$4 peer=$5
    shift 5
    "$bin" --data-dir "$dir" \
        --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" \
        "$@" >>"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
}

# alive: the current server process exists and is not a zombie.
alive() {
    [[ -n ${SERVER_PID:-} && -r /proc/$SERVER_PID/stat ]] &&
        ! sed 's/.*) //' "/proc/$SERVER_PID/stat" 2>/dev/null | grep -q '^Z'
}

# wait_until NAME CMD...: poll CMD until it succeeds; fails if the server dies
# or after $READY_TIMEOUT seconds.
wait_until() {
    local name=$1 deadline=$((SECONDS + ${READY_TIMEOUT:-600}))
    shift
    until "$@"; do
        if ! alive; then
            tail -n 20 "$WORK/$name.log" >&2
            die "$name exited before becoming ready"
        fi
        ((SECONDS < deadline)) || die "$name not ready after ${READY_TIMEOUT:-600}s"
        sleep 0.01
    done
}

# wait_ok NAME URL: poll until GET URL answers 2xx.
wait_ok() {
    wait_until "$1" curl -sf -o /dev/null --max-time 2 "$2"
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

# rss_kib: VmRSS of the current server.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status"; }

# bench NAME LABEL PORT ARGS...: run the load generator, keep its JSON report
# in J[LABEL] (and append it to $RAW).
declare -gA J
bench() {
    local name=$1 label=$2 port=$3 out
    shift 3
    log "$name: $label"
    out="$("${BENCH[@]}" --endpoint "http://127.0.0.1:$port" --pid "$SERVER_PID" \
        --format json "$@")" || die "$name: bench $label failed"
    [[ -n $RAW ]] && printf '%s\n' "$out" >>"$RAW"
    J[$label]=$out
}

# --- report -------------------------------------------------------------------
declare -gA R # results: R[name.metric]=value
NAMES=()

ms() { [[ $1 == null ]] && echo "-" || awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
mib() { [[ $1 == null ]] && echo "-" || awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
num() { [[ $1 == null ]] && echo "-" || awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
k() { awk -v n="$1" 'BEGIN { if (n >= 1000000 && n % 1000000 == 0) printf "%dM", n / 1000000; else if (n >= 1000 && n % 1000 == 0) printf "%dk", n / 1000; else print n }'; }

# row LABEL METRIC: one table row with R[<server>.METRIC] for every server.
row() {
    local label=$1 metric=$2 line
    line="| $label |"
    for n in "${NAMES[@]}"; do line+=" ${R[$n.$metric]:--} |"; done
    echo "$line"
}

# table_header: the header and separator rows (one column per server).
table_header() {
    local header="| benchmark |" sep="|---|"
    for n in "${NAMES[@]}"; do
        if [[ $n == etcd ]]; then header+=" etcd ${R[etcd.version]} |"; else header+=" keel |"; fi
        sep+="---:|"
    done
    echo "$header"
    echo "$sep"
}

# machine: one line describing the box and its load right now.
machine() {
    echo "$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
}
