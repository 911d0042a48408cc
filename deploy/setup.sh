#!/usr/bin/env bash
# Installs every Debian package mal needs to build, test and run. Idempotent: safe to run again.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config clang clang-format
  libtorch-dev libopenblas0-pthread
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libyaml-cpp-dev libsqlite3-dev libgoogle-glog-dev libssl-dev openssl
  libopencv-dev opencv-data
  libgtest-dev libgmock-dev libcli11-dev
  gnuplot-nox tmux
  prometheus-cpp-dev prometheus libsystemd-dev
  python3-torch python3-torchvision
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
