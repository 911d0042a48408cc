#!/usr/bin/env bash
# The paper in miniature: STL, MTL and MAL on SynthFace (with ambiguous FE samples), small CNN,
# several seeds; mean test F1 +- std per method, and how MAL weights FE samples against their
# annotator consistency. Usage: tests/bench/miniature.sh [OUT_DIR] (SEEDS="1 2 3", FOLD=1)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-runs/miniature}"
seeds="${SEEDS:-1 2 3}"
fold="${FOLD:-1}"
epochs="${EPOCHS:-20}"
build="${MAL_BUILD_DIR:-build}"
mkdir -p "$out"
data="$out/synthface"
if [ ! -d "$data" ]; then
  "$build/client/malctl" data synth --out "$data" --au-subjects 9 --frames 150 --fe-subjects 300 \
    --fe-images 3000 --ambiguous 0.3 --size 96 --seed 11
fi
for method in stl mtl mal; do
  for seed in $seeds; do
    run="$out/$method-seed$seed"
    [ -f "$run/model.json" ] && continue
    cat > "$out/$method-seed$seed.yaml" <<SPEC
name: miniature-$method
method: $method
data:
  au: {format: synthface, root: $data}
  fe: {format: synthface, root: $data}
model: {backbone: small_cnn, input: 80, resize: 88}
train: {epochs: $epochs, batch_au: 32, batch_fe: 32, lr: 0.05, momentum: 0.9, weight_decay: 5e-4,
        fe_lambda: 1.0, log_every: 50, checkpoint_every: 1000}
mal: {mode: exact, meta_lr: 1e-3, meta_optimizer: adam, val_fraction: 0.05, val_batch: 64}
seed: $seed
SPEC
    echo "== $method seed $seed"
    "$build/worker/mal-worker" train -f "$out/$method-seed$seed.yaml" --fold "$fold" --out "$run" --quiet
  done
done
python3 - "$out" "$seeds" <<'PY'
import csv, json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2].split()
print(f"{'method':8} {'test mean F1 (last epoch)':>28} {'best epoch F1':>16}")
for method in ["stl", "mtl", "mal"]:
    last, best = [], []
    for s in seeds:
        epochs = json.load(open(f"{out}/{method}-seed{s}/metrics.json"))["epochs"]
        last.append(epochs[-1]["test_mean_f1"]); best.append(max(e["test_mean_f1"] for e in epochs))
    sd = statistics.stdev(last) if len(last) > 1 else 0.0
    print(f"{method:8} {statistics.mean(last):20.4f} +- {sd:.4f} {statistics.mean(best):16.4f}")
truth = {r["name"].rsplit(".", 1)[0]: r for r in csv.DictReader(open(f"{out}/synthface/fe/synth_truth.csv"))}
for s in seeds:
    epochs = json.load(open(f"{out}/mal-seed{s}/metrics.json"))["epochs"]
    rows = [r for r in csv.DictReader(open(epochs[-1]["weights_csv"] if "weights_csv" in epochs[-1]
            else f"{out}/mal-seed{s}/weights/epoch_{len(epochs):03d}.csv")) if r["task"] == "fe"]
    by_kind = {}
    for r in rows:
        by_kind.setdefault(truth[r["id"]]["kind"], []).append(float(r["weight"]))
    kinds = ", ".join(f"{k} {statistics.mean(v):.4f}" for k, v in sorted(by_kind.items()))
    au = [e for e in epochs][-1]
    print(f"mal seed {s}: Spearman(FE weight, consistency) {au['fe_weight_consistency_spearman']:+.3f}; "
          f"mean weight AU {au['mean_au_weight']:.4f} FE {au['mean_fe_weight']:.4f}; FE by kind: {kinds}")
PY
