#!/usr/bin/env bash
# Installs the packages (deploy/setup.sh), configures and builds mal into $MAL_BUILD_DIR (default
# build/). Extra arguments are build targets (default: everything).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
build_dir="${MAL_BUILD_DIR:-build}"
jobs="${MAL_JOBS:-$(nproc)}"
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${MAL_BUILD_TYPE:-RelWithDebInfo}"
fi
cmake --build "$build_dir" -j "$jobs" ${1:+--target "$@"}
