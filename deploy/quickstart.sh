#!/usr/bin/env bash
# The main job on the embedded synthetic data, in local mode: set up, build, generate SynthFace
# (BP4D layout for AU data, RAF-DB layout for expression data) and inspect it with the same
# readers real datasets go through; then start a coordinator and one worker daemon on loopback
# (state and artifacts under one directory), submit deploy/examples/quickstart.yaml (MAL, fold 1)
# and follow it to the end; then serve the trained model with mal-serve and detect AUs on the
# unseen test subjects' frames with `malctl predict`.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/coordinator-lib.sh
bash deploy/build.sh malctl mal-worker mal-coordinator mal-serve
build_dir="${MAL_BUILD_DIR:-build}"
data=.cache/synthface  # where deploy/examples/quickstart.yaml reads it
# (Re)generated when missing or made by an older generator (docs/synthface.md).
generator="generator $("$build_dir/client/malctl" data synth --generator-version)"
if ! grep -qx "$generator" "$data/synthface.txt" 2>/dev/null; then
  "$build_dir/client/malctl" data synth --out "$data" --force --preview "$data-preview.png"
fi
"$build_dir/client/malctl" data inspect --format synthface --root "$data"
"$build_dir/client/malctl" data inspect --format synthface --root "$data" --part fe
echo

out="${MAL_QUICKSTART_OUT:-runs/quickstart}"
rm -rf "$out"
mkdir -p "$out"
coordinator=""
worker=""
serve=""
cleanup() {
  [ -n "$serve" ] && kill "$serve" 2>/dev/null && wait "$serve" 2>/dev/null
  [ -n "$worker" ] && kill "$worker" 2>/dev/null && wait "$worker" 2>/dev/null
  [ -n "$coordinator" ] && kill "$coordinator" 2>/dev/null && wait "$coordinator" 2>/dev/null
  true
}
trap cleanup EXIT
start_coordinator "$build_dir" "$out"
"$build_dir/worker/mal-worker" --coordinator "$MAL_ADDRESS" --slots 1 --work-dir "$out/worker" \
  > "$out/worker.log" 2>&1 &
worker=$!
echo "coordinator on $MAL_ADDRESS (logs in $out); submitting deploy/examples/quickstart.yaml"
"$build_dir/client/malctl" submit -f deploy/examples/quickstart.yaml --follow \
  --kinds state,epoch,fold_result,trial_result,end
echo
"$build_dir/client/malctl" results exp-1
echo
run_dir="$out/coordinator/artifacts/exp-1/trial-0/fold-1"
"$build_dir/client/malctl" data inspect --format synthface --root "$data" -o json > "$out/inspect.json"
python3 deploy/explain_run.py "$run_dir" "$out/inspect.json"
echo
# The paper's figures for this run, drawn by gnuplot (Fig. 3: losses and task weights over
# iterations; Fig. 5: FE weights by expression; Fig. 6: weight against annotator consistency).
echo "Figures (PNG and PDF):"
"$build_dir/client/malctl" plot exp-1 --out "$out/figures"
echo

# Serving: the finished experiment registered its model as quickstart:1 in the coordinator's
# registry; name it quickstart@champion, serve the registry with mal-serve (which downloads the
# version into its cache), and detect the AUs of one unseen test subject's frames through the RPC,
# as CSV. SynthFace frames are aligned face crops, as BP4D's are: --face-crop (on photographs leave
# it out and OpenCV's detector finds the faces; it misses some SynthFace subjects' drawn faces).
"$build_dir/client/malctl" models ls
"$build_dir/client/malctl" models alias set quickstart:1 champion
"$build_dir/server/mal-serve" --listen 127.0.0.1:0 --registry "$MAL_ADDRESS" --cache-dir "$out/serve-cache" \
  > "$out/serve.out" 2> "$out/serve.log" &
serve=$!
serve_port=$(listening_port "$out/serve.out")
[ -n "$serve_port" ] || { echo "mal-serve did not start; see $out/serve.log" >&2; exit 1; }
subject=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["folds"][0]["test_subjects"][0])' \
  "$out/inspect.json")
echo "mal-serve on 127.0.0.1:$serve_port; AUs of test subject $subject (never seen in training), task T1:"
"$build_dir/client/malctl" predict --address "127.0.0.1:$serve_port" --model quickstart@champion --face-crop "$data/au/$subject/T1" \
  --out "$out/predictions.csv"
echo
echo "SynthFace: $data (preview $data-preview.png). Artifacts: $run_dir"
echo "(model.pt + model.json, metrics.json, records.csv, weights/epoch_*.csv with every sample's learned weight)."
echo "Per-frame AU probabilities and occurrences (OpenFace-style CSV): $out/predictions.csv"
echo "Every loss point and weight summary is in the event log: start"
echo "  $build_dir/server/mal-coordinator --listen 127.0.0.1:7070 --data-dir $out/coordinator &"
echo "and run: $build_dir/client/malctl watch exp-1"
