#!/usr/bin/env bash
# The main job on the embedded synthetic data: set up, build, generate the SynthFace dataset
# (BP4D layout for AU data, RAF-DB layout for expression data), write a preview sheet, and
# inspect both parts with the same readers real datasets go through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh malctl
build_dir="${MAL_BUILD_DIR:-build}"
data="${MAL_SYNTH_DIR:-.cache/synthface}"
malctl="$build_dir/client/malctl"
mkdir -p "$(dirname "$data")"
"$malctl" data synth --out "$data" --force --preview "$data-preview.png"
echo
"$malctl" data inspect --format synthface --root "$data"
echo
"$malctl" data inspect --format synthface --part fe --root "$data"
echo
echo "SynthFace is in $data (au/: BP4D layout, fe/: RAF-DB layout); preview: $data-preview.png"
