#!/usr/bin/env bash
# train.oom_retries on a real (not injected) allocation failure, through the service: a coordinator
# and a worker daemon whose engine's address space is limited with `ulimit -v` (an --engine
# wrapper, so the daemon itself is not limited), an STL run on SynthFace whose
# batch of 1,024 frames at 96 px needs about 6.6 GB; with the default 4 GB limit the CPU allocator
# fails at 1,024 and 512 and the run completes at 256 (docs/engine.md). Prints the events, the
# run's out-of-memory warnings and the batch in the registered model.json. On demand, not in CI:
# the limit that separates the batches depends on the machine (raise or lower ULIMIT_KB).
# Below about 1 GB (ULIMIT_KB=900000) the engine hangs in OpenBLAS instead (docs/engine.md); with
# WORKER_ARGS="--stall-timeout-s 30" the daemon's watchdog then stops each attempt and the run
# ends FAILED after max_restarts (docs/service.md).
# Usage: tests/bench/oom_fallback.sh [OUT_DIR]
# Environment: ULIMIT_KB (4000000), WORKER_ARGS (extra mal-worker options), MAL_BUILD_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/coordinator-lib.sh
build="${MAL_BUILD_DIR:-build}"
out="$(realpath -m "${1:-runs/oom-fallback}")"
rm -rf "$out/coordinator" "$out/worker"
mkdir -p "$out"
[ -f "$out/synthface/synthface.txt" ] ||
  "$build/client/malctl" data synth --out "$out/synthface" --force --seed 1 > /dev/null
cat > "$out/spec.yaml" <<SPEC
name: oom-fallback
method: stl
data:
  au: {format: synthface, root: $out/synthface}
cv: {protocol: standard, only: [1]}
model: {backbone: small_cnn, input: 96, resize: 104}
train: {epochs: 1, batch_au: 1024, lr: 0.01, max_iterations: 2, threads: 1, data_threads: 1,
        oom_retries: 5, checkpoint_every: 1}
seed: 1
SPEC
coordinator=""
worker=""
cleanup() {
  [ -n "$worker" ] && kill "$worker" 2>/dev/null && wait "$worker" 2>/dev/null
  [ -n "$coordinator" ] && kill "$coordinator" 2>/dev/null && wait "$coordinator" 2>/dev/null
  true
}
trap cleanup EXIT
start_coordinator "$build" "$out"
cat > "$out/engine.sh" <<ENGINE
#!/bin/sh
ulimit -v ${ULIMIT_KB:-4000000}
exec "$(realpath "$build/worker/mal-worker")" "\$@"
ENGINE
chmod +x "$out/engine.sh"
# shellcheck disable=SC2086  # WORKER_ARGS: several words
"$build/worker/mal-worker" --coordinator "$MAL_ADDRESS" --slots 1 --work-dir "$out/worker" \
  --engine "$out/engine.sh" ${WORKER_ARGS:-} > "$out/worker.log" 2>&1 &
worker=$!
"$build/client/malctl" submit -f "$out/spec.yaml" --follow --plain \
  --kinds state,epoch,fold_result,end
echo "out-of-memory warnings in the run's log (as uploaded to the coordinator):"
grep -h "out of memory\|halved" "$out/coordinator/artifacts/exp-1/trial-0/fold-1/log.txt" |
  cut -c1-200 || true
model="$out/coordinator/artifacts/exp-1/trial-0/fold-1/model.json"
if [ ! -f "$model" ]; then
  echo "no model.json: the run did not succeed (its attempts, from the worker's log):"
  grep -h "made no progress\|failed" "$out/worker.log" | cut -c1-300 || true
  exit 1
fi
python3 - "$model" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))["spec"]["train"]
print(f"model.json: trained with batch_au {spec['batch_au']} (the spec asked for 1024)")
PY
