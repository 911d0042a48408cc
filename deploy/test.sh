#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (unit and integration) with ctest.
# MAL_CTEST_ARGS adds ctest arguments, e.g. "-L unit" or "-LE slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
build_dir="${MAL_BUILD_DIR:-build}"
cd "$build_dir"
# MAL_CTEST_ARGS is split into words on purpose ("-L unit").
# shellcheck disable=SC2086
ctest --output-on-failure -j "${MAL_JOBS:-$(nproc)}" ${MAL_CTEST_ARGS:-}
