#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (unit and integration) with ctest.
# MAL_CTEST_ARGS adds ctest arguments, e.g. "-L unit" or "-LE slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
# Test-only Python packages from PyPI (tritonclient[grpc]); without them one test skips, saying so.
MAL_TEST_PYTHON="${MAL_TEST_PYTHON:-$(bash deploy/test-python-deps.sh | tail -n 1)}"
export MAL_TEST_PYTHON
build_dir="${MAL_BUILD_DIR:-build}"
cd "$build_dir"
# MAL_CTEST_ARGS is split into words on purpose ("-L unit").
# shellcheck disable=SC2086
ctest --output-on-failure -j "${MAL_JOBS:-$(nproc)}" ${MAL_CTEST_ARGS:-}
