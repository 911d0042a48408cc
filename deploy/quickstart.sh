#!/usr/bin/env bash
# The main job on the embedded synthetic data: set up, build, generate SynthFace (BP4D layout for
# AU data, RAF-DB layout for expression data) and inspect it with the same readers real datasets
# go through, then train MAL on fold 1 with deploy/examples/quickstart.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh malctl mal-worker
build_dir="${MAL_BUILD_DIR:-build}"
data=.cache/synthface  # where deploy/examples/quickstart.yaml reads it
if [ ! -f "$data/synthface.txt" ]; then
  "$build_dir/client/malctl" data synth --out "$data" --force --preview "$data-preview.png"
fi
"$build_dir/client/malctl" data inspect --format synthface --root "$data"
echo
out="${MAL_QUICKSTART_OUT:-runs/quickstart}"
rm -rf "$out"
"$build_dir/worker/mal-worker" train -f deploy/examples/quickstart.yaml --fold 1 --out "$out"
echo
echo "SynthFace: $data (preview $data-preview.png). Run: $out (metrics.json, records.csv,"
echo "weights/epoch_*.csv with every sample's learned weight, model.pt + model.json)."
