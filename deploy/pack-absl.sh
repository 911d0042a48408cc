#!/usr/bin/env bash
# Packs Debian's Abseil (headers, shared libraries, CMake config; about 8 MB) into build-absl/,
# a CMake prefix that deploy/gpu-check.sh uses on a machine without Abseil. The engine-only build
# (cmake -DMAL_ENGINE_ONLY=ON) needs Abseil's status and string libraries and nothing else of
# Debian's; the GPU machines have PyTorch, CMake, ninja and nvcc, and no Abseil. Carry the folder
# with the working tree (it is ignored by git).
#
# The libraries are Debian 12's: they need glibc >= 2.34 and a libstdc++ of GCC >= 11 where they
# run (gpu-check.sh checks the glibc version before it builds).
#
#   deploy/pack-absl.sh [DIR]      # default build-absl
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build-absl}"
arch_lib="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
if [ ! -f "$arch_lib/cmake/absl/abslConfig.cmake" ] || [ ! -d /usr/include/absl ]; then
  echo "pack-absl: Debian's libabsl-dev is not installed (deploy/setup.sh installs it)" >&2
  exit 1
fi
rel_lib="${arch_lib#/usr/}"
rm -rf "$out"
mkdir -p "$out/include" "$out/$rel_lib/cmake"
cp -r /usr/include/absl "$out/include/"
cp -r "$arch_lib/cmake/absl" "$out/$rel_lib/cmake/"
# Real files, no symbolic links (the carried tree may not keep them): the name the CMake config
# imports (libabsl_x.so.VERSION.0.0) and the soname the loader looks for (libabsl_x.so.VERSION).
for f in "$arch_lib"/libabsl_*.so.*.*; do
  cp -L "$f" "$out/$rel_lib/"
  soname=$(objdump -p "$f" | awk '/SONAME/ {print $2}')
  [ -n "$soname" ] && [ ! -e "$out/$rel_lib/$soname" ] && cp -L "$f" "$out/$rel_lib/$soname"
done
echo "pack-absl: $(du -sh "$out" | cut -f1) in $out ($(find "$out/$rel_lib" -name 'libabsl_*' | wc -l) library files)"
