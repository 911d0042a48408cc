#!/usr/bin/env bash
# The prepared GPU check of the training engine, one command: builds the engine-only target
# (cmake -DMAL_ENGINE_ONLY=ON: LibTorch and Abseil only) against the installed PyTorch, then runs
# mal-engine-check: correctness on the device against the CPU and a training smoke, then the speed
# of STL, MTL and each MAL mode in float32 and with bf16 autocast + channels_last. Writes
# report.json and report.txt (and the parts they are made of) under the output folder.
#
#   deploy/gpu-check.sh [--device cuda|cuda:N|cpu] [--out DIR] [--small|--paper]
#
# --device: default cuda. --out: default runs/gpu-check/<date>. The speed setting is the paper's
# (ResNet-34, 224 px, batch 64 AU + 64 FE, validation batch 256) on CUDA and a small one on the
# CPU (ResNet-18, 32 px, 4 + 4, validation 8: it shows that the path runs, not the speed);
# --small / --paper choose, and MAL_CHECK_BACKBONE, MAL_CHECK_INPUT, MAL_CHECK_BATCH,
# MAL_CHECK_VAL_BATCH, MAL_CHECK_ITERATIONS, MAL_CHECK_WARMUP, MAL_CHECK_THREADS (CPU threads for
# the timing; 0 = all cores) override single values. MAL_CHECK_BF16=0 skips the bf16 run; MAL_CHECK_BUILD_DIR names
# the build folder (default build-engine-<torch version>).
#
# Finds PyTorch through $MAL_PYTHON, else python3, else .venv-torch2/bin/python
# (deploy/build-torch2.sh). Abseil: the system's, or build-absl/ (deploy/pack-absl.sh, carried
# with the working tree). Exit status: 0 every check passed, 1 a check or a step failed, 2 usage.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

device=cuda
out=""
setting=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="${2:?--device needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --small) setting=small; shift ;;
    --paper) setting=paper; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in cpu|cuda|cuda:[0-9]*) ;; *) echo "gpu-check: --device cpu, cuda or cuda:N" >&2; exit 2 ;; esac
[ -n "$setting" ] || { [ "$device" = cpu ] && setting=small || setting=paper; }
out="${out:-runs/gpu-check/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
log() { echo "gpu-check: $*" | tee -a "$out/log.txt"; }
start=$(date +%s)

# PyTorch and its CMake prefix.
python=""
for p in "${MAL_PYTHON:-}" python3 "$root/.venv-torch2/bin/python"; do
  if [ -n "$p" ] && "$p" -c 'import torch' >/dev/null 2>&1; then python="$p"; break; fi
done
if [ -z "$python" ]; then
  echo "gpu-check: no python with torch (set MAL_PYTHON, or run deploy/build-torch2.sh)" >&2
  exit 1
fi
read -r torch_version torch_cuda cuda_available torch_root prefix < <("$python" -c '
import os, torch, torch.utils
print(torch.__version__, torch.version.cuda or "none", int(torch.cuda.is_available()),
      os.path.dirname(torch.__file__), torch.utils.cmake_prefix_path)' 2>/dev/null)
log "torch $torch_version (CUDA $torch_cuda, GPU visible to PyTorch: $cuda_available) from $python"
if [ "$device" != cpu ] && [ "$cuda_available" != 1 ]; then
  log "no CUDA device visible; run with --device cpu"
  exit 1
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true; fi
if [ "$torch_cuda" != none ] && ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

# Abseil: the system's if CMake finds it, else the carried bundle (Debian 12's libraries).
prefixes="$prefix"
if [ -d "$root/build-absl" ]; then
  prefixes="$prefix;$root/build-absl"
  glibc=$(ldd --version 2>/dev/null | awk 'NR==1 {print $NF}')
  if [ -n "$glibc" ] && [ "$(printf '%s\n2.34\n' "$glibc" | sort -V | head -1)" != 2.34 ]; then
    log "glibc $glibc here; build-absl/ holds Debian 12's Abseil, which needs glibc >= 2.34"
    exit 1
  fi
fi

# Build the engine-only target.
build_dir="${MAL_CHECK_BUILD_DIR:-build-engine-$(echo "$torch_version" | tr -c 'A-Za-z0-9.\n' '-')}"
jobs="${MAL_JOBS:-$(nproc)}"
t0=$(date +%s)
if [ ! -f "$build_dir/build.ninja" ]; then
  generator=(-G Ninja)
  command -v ninja >/dev/null || generator=()
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMAL_ENGINE_ONLY=ON \
    -DCMAKE_PREFIX_PATH="$prefixes" -DTorch_ROOT="$torch_root" \
    > "$out/configure.log" 2>&1 || { log "configure failed: $out/configure.log"; tail -20 "$out/configure.log"; exit 1; }
fi
cmake --build "$build_dir" -j "$jobs" --target mal-engine-check > "$out/build.log" 2>&1 \
  || { log "build failed: $out/build.log"; tail -30 "$out/build.log"; exit 1; }
build_seconds=$(( $(date +%s) - t0 ))
log "built $build_dir/worker/engine/mal-engine-check in ${build_seconds}s"
check="$build_dir/worker/engine/mal-engine-check"

if [ "$setting" = small ]; then
  backbone=resnet18 input=32 batch=4 val_batch=8 iterations=2 warmup=1
else
  backbone=resnet34 input=224 batch=64 val_batch=256 iterations=10 warmup=3
fi
speed_args=(--device "$device" --out "$out"
  --backbone "${MAL_CHECK_BACKBONE:-$backbone}" --input "${MAL_CHECK_INPUT:-$input}"
  --batch "${MAL_CHECK_BATCH:-$batch}" --val-batch "${MAL_CHECK_VAL_BATCH:-$val_batch}"
  --iterations "${MAL_CHECK_ITERATIONS:-$iterations}" --warmup "${MAL_CHECK_WARMUP:-$warmup}"
  --threads "${MAL_CHECK_THREADS:-0}")

status=0
parts=(correctness)
"$check" --part correctness --device "$device" --out "$out" 2>&1 | tee -a "$out/log.txt" \
  || status=1
log "speed, float32"
# A part that failed (one method failing, say) still reports what it measured: every part whose
# files exist goes into the report.
parts+=(speed_fp32)
"$check" --part speed "${speed_args[@]}" 2>&1 | tee -a "$out/log.txt" || status=1
if [ "${MAL_CHECK_BF16:-1}" != 0 ]; then
  log "speed, bf16 autocast + channels_last"
  parts+=(speed_bf16_channels_last)
  "$check" --part speed "${speed_args[@]}" --bf16 --channels-last 2>&1 | tee -a "$out/log.txt" \
    || status=1
fi

# The report: the parts' JSON objects side by side, their text one after another.
total_seconds=$(( $(date +%s) - start ))
{
  printf '{"torch": "%s", "torch_cuda": "%s", "device": "%s", "setting": "%s", ' \
    "$torch_version" "$torch_cuda" "$device" "$setting"
  printf '"build_seconds": %d, "total_seconds": %d, "passed": %s' \
    "$build_seconds" "$total_seconds" "$([ $status = 0 ] && echo true || echo false)"
  for p in "${parts[@]}"; do
    [ -f "$out/$p.json" ] && printf ',\n"%s": %s' "$p" "$(cat "$out/$p.json")"
  done
  printf '}\n'
} > "$out/report.json"
{
  echo "mal gpu-check: torch $torch_version (CUDA $torch_cuda), device $device, setting $setting"
  echo "build ${build_seconds}s, total ${total_seconds}s, $([ $status = 0 ] && echo 'every check passed' || echo 'FAILED')"
  [ -f "$out/nvidia-smi.txt" ] && head -12 "$out/nvidia-smi.txt"
  for p in "${parts[@]}"; do [ -f "$out/$p.txt" ] && { echo; cat "$out/$p.txt"; }; done
} > "$out/report.txt"
log "report: $out/report.txt, $out/report.json (${total_seconds}s)"
exit "$status"
