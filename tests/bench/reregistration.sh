#!/usr/bin/env bash
# How long a worker daemon takes to register with a restarted coordinator: one coordinator and one
# idle worker daemon on loopback; RESTARTS times the coordinator is killed (-9), left down 3-8 s,
# and started again on the same data directory and port, and the seconds from that start to the
# coordinator's "worker NAME registered" line are printed, one per restart, then min / median /
# max. A run held across a restart is kept only when this is well under --lease-ms
# (docs/service.md, "gRPC settings"). On demand, not in CI (timings on a shared machine).
# Usage: tests/bench/reregistration.sh [RESTARTS]
# Environment: MAL_BUILD_DIR (build), or COORDINATOR / WORKER (binaries, to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${MAL_BUILD_DIR:-build}"
coordinator="${COORDINATOR:-$build/server/mal-coordinator}"
worker="${WORKER:-$build/worker/mal-worker}"
restarts="${1:-10}"
tmp="$(mktemp -d)"
coordinator_pid="" worker_pid=""
cleanup() {
  [ -n "$coordinator_pid" ] && kill -9 "$coordinator_pid" 2> /dev/null || true
  [ -n "$worker_pid" ] && kill "$worker_pid" 2> /dev/null || true
  wait 2> /dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
start_coordinator() {  # $1: the address; $2: the log
  "$coordinator" --data-dir "$tmp/data" --listen "$1" > "$2" 2>&1 &
  coordinator_pid=$!
}
start_coordinator 127.0.0.1:0 "$tmp/coordinator.0.log"
for _ in $(seq 100); do
  port="$(sed -n 's/^mal-coordinator listening on port \([0-9]*\)$/\1/p' "$tmp/coordinator.0.log")"
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "reregistration.sh: the coordinator did not start" >&2; exit 1; }
"$worker" --coordinator "127.0.0.1:$port" --work-dir "$tmp/worker" --name w1 > "$tmp/worker.log" 2>&1 &
worker_pid=$!
sleep 2
times=()
for i in $(seq "$restarts"); do
  kill -9 "$coordinator_pid"
  wait "$coordinator_pid" 2> /dev/null || true
  sleep "$(python3 -c 'import random; print(round(random.uniform(3, 8), 2))')"
  start=$(date +%s.%N)
  start_coordinator "127.0.0.1:$port" "$tmp/coordinator.$i.log"
  until grep -q "worker w1 registered" "$tmp/coordinator.$i.log"; do
    if (( $(python3 -c "print(int($(date +%s.%N) - $start > 60))") )); then
      echo "reregistration.sh: no registration within 60 s (see $tmp)" >&2
      trap - EXIT
      exit 1
    fi
    sleep 0.02
  done
  times+=("$(python3 -c "print(round($(date +%s.%N) - $start, 2))")")
  echo "restart $i: ${times[-1]} s"
done
python3 -c "import statistics, sys; t = sorted(map(float, sys.argv[1:])); print(f'min {t[0]} s, median {statistics.median(t)} s, max {t[-1]} s over {len(t)} restarts')" "${times[@]}"
