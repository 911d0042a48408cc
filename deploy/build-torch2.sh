#!/usr/bin/env bash
# Builds mal against a LibTorch 2.x from PyTorch's PyPI wheel (CUDA-enabled on Linux x86_64) in a
# second build directory, and runs the unit tests there on CPU. The default build (build/, Debian's
# LibTorch 1.13) is untouched.
#
#   deploy/build-torch2.sh            # venv .venv-torch2, build dir build-torch2, ctest -L unit
#
# Environment: MAL_TORCH2_VENV (default .venv-torch2), MAL_TORCH2_BUILD_DIR (default build-torch2),
# MAL_TORCH2_SPEC (pip requirement, default "torch"), MAL_JOBS (default nproc), MAL_CTEST_ARGS
# (default "-L unit"). Needs the Debian packages of deploy/setup.sh, python3 with venv, and for a
# CUDA wheel the CUDA toolkit (nvcc; /usr/local/cuda/bin is added to PATH when nvcc is not on it).
# Costs on a 2-core machine: docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh

venv="${MAL_TORCH2_VENV:-.venv-torch2}"
build_dir="${MAL_TORCH2_BUILD_DIR:-build-torch2}"
jobs="${MAL_JOBS:-$(nproc)}"
seconds() { date +%s; }

t0=$(seconds)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  "$venv/bin/pip" install --progress-bar off "${MAL_TORCH2_SPEC:-torch}"
fi
t_install=$(( $(seconds) - t0 ))

read -r torch_version cxx11_abi cuda_version prefix torch_root < <("$venv/bin/python" -c '
import os, torch, torch.utils
print(torch.__version__, int(torch._C._GLIBCXX_USE_CXX11_ABI), torch.version.cuda or "none",
      torch.utils.cmake_prefix_path, os.path.dirname(torch.__file__))' 2>/dev/null)
echo "build-torch2: torch $torch_version, CUDA $cuda_version, _GLIBCXX_USE_CXX11_ABI=$cxx11_abi"
if [ "$cxx11_abi" != 1 ]; then
  # Debian's gRPC, protobuf, abseil, OpenCV and yaml-cpp are built with the C++11 ABI
  # (std::__cxx11::basic_string); a pre-cxx11 LibTorch cannot be linked with them.
  echo "build-torch2: this LibTorch uses the pre-C++11 ABI; mal cannot link it with Debian's libraries" >&2
  exit 1
fi
if [ "$cuda_version" != none ] && ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

t1=$(seconds)
if [ ! -f "$build_dir/build.ninja" ]; then
  # Same flags as deploy/build.sh; only LibTorch differs. Torch_ROOT: the wheel's own lib/ before
  # the system's, where Debian's libtorch.so is (CMakeLists.txt, mal_find_torch). The binaries'
  # RPATH then names the wheel's lib/, so they load its libtorch, not Debian's.
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${MAL_BUILD_TYPE:-RelWithDebInfo}" \
    -DCMAKE_PREFIX_PATH="$prefix" -DTorch_ROOT="$torch_root"
fi
t_configure=$(( $(seconds) - t1 ))
t2=$(seconds)
cmake --build "$build_dir" -j "$jobs"
t_build=$(( $(seconds) - t2 ))

t3=$(seconds)
status=0
# Split into words on purpose ("-L unit").
# shellcheck disable=SC2086
(cd "$build_dir" && ctest --output-on-failure -j "$jobs" ${MAL_CTEST_ARGS:--L unit}) || status=$?
t_test=$(( $(seconds) - t3 ))
echo "build-torch2: torch $torch_version: install ${t_install}s, configure ${t_configure}s," \
  "build ${t_build}s, tests ${t_test}s (exit $status)"
exit "$status"
