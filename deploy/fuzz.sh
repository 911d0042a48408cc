#!/usr/bin/env bash
# Builds tests/fuzz as libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs each for a
# bounded time from its committed corpus (docs/fuzzing.md). New interesting inputs go to a
# scratch directory, never into the repository; a crash leaves its input in
# build-fuzz/fuzz-artifacts/NAME/ and fails the script (copy it into tests/fuzz/corpus/NAME/:
# from then on the replay ctest of every build runs it).
#
#   deploy/fuzz.sh                     # every target, MAL_FUZZ_SECONDS (default 30) each
#   deploy/fuzz.sh spec_yaml image_decode
#   MAL_FUZZ_RUNS=ci deploy/fuzz.sh    # what CI runs: a fixed seed and a fixed number of inputs
#                                      # per target (about 30 s each here), so a red CI is
#                                      # reproducible and never a matter of luck
#
# Environment: MAL_FUZZ_SECONDS, MAL_FUZZ_RUNS (ci), MAL_FUZZ_BUILD_DIR (default build-fuzz),
# MAL_JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh > /dev/null
build_dir="${MAL_FUZZ_BUILD_DIR:-build-fuzz}"
seconds="${MAL_FUZZ_SECONDS:-30}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spec_yaml spec_proto label_readers image_decode)

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMAL_FUZZ=ON > /dev/null
ninja -C "$build_dir" -j "${MAL_JOBS:-$(nproc)}" "${targets[@]/%/_fuzzer}"

status=0
declare -A ci_runs=([spec_yaml]=60000 [spec_proto]=600000 [label_readers]=20000
                    [image_decode]=600000)
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  artifacts="$build_dir/fuzz-artifacts/$t"
  mkdir -p "$artifacts"
  if [ "${MAL_FUZZ_RUNS:-}" = ci ]; then
    bound=(-seed=1 -runs="${ci_runs[$t]}" -max_total_time=600)
    echo "fuzz: $t, ${ci_runs[$t]} inputs from seed 1"
  else
    bound=(-max_total_time="$seconds")
    echo "fuzz: $t for ${seconds}s"
  fi
  # ASan's leak check is off: the readers keep process-wide caches (glog, OpenCV) by design.
  if ! ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "$build_dir/tests/fuzz/${t}_fuzzer" "$scratch" "tests/fuzz/corpus/$t" \
      "${bound[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 2> "$artifacts/log.txt"; then
    echo "fuzz: $t FAILED; input(s) in $artifacts, log in $artifacts/log.txt:"
    grep -m 5 -E "ERROR|SUMMARY|Test unit written" "$artifacts/log.txt" || true
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::new_units_added" "$artifacts/log.txt" |
      tr '\n' ' ' | sed "s/^/fuzz: $t ok: /" || true
    echo
  fi
  rm -rf "$scratch"
done
exit "$status"
