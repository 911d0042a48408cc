#!/usr/bin/env bash
# The paper in miniature: STL, MTL and MAL on SynthFace (24 AU subjects, 300 FE identities, 30% of
# the FE images ambiguous), small CNN, the same data, budget, folds and seeds for every method.
# Prints mean test F1 +- std over seeds per method (unseen subjects of the fold), MAL's FE weights
# against annotator consistency and true ambiguity, and how the task balance moved; writes
# OUT/summary.json. Usage: tests/bench/miniature.sh [OUT_DIR]
# Environment: DATA_SEED (SynthFace seed, 11), SEEDS ("1 2 3"), FOLD (1), EPOCHS (12),
# AU_SUBJECTS (24), FRAMES (80 per subject), FE_SUBJECTS (300), FE_IMAGES (3000), AMBIGUOUS (0.3),
# METHODS ("stl mtl mal"; add mtl_clear for the reference row: MTL trained on the clear FE images
# only, which no method may use, as it reads SynthFace's ground truth; mtl_clear_xN, e.g.
# mtl_clear_x3: MTL with every clear FE image listed N times, the ambiguous ones drawn at 1/N of
# their rate; mal_mtl, after mal: MTL drawing the FE images by that seed's MAL run's final
# weights, train.fe_weights, with FE_WEIGHT_LEVELS levels, 3 by default), MAL_EXTRA (more mal:
# fields, e.g. ", task_bias: false"), SCHEDULE (train.schedule for every method: cosine, or
# constant), VAL_BATCH (mal.val_batch, 64),
# VAL_FRACTION (mal.val_fraction, 0.05: 64 of the 1,280 training frames of fold 1), VAL_SPLIT
# (mal.val_split for every method, so all train on the same frames: frames, or subjects), LR (train.lr,
# 0.01 for every method), WEIGHT_DECAY (train.weight_decay, 5e-4), META_LR (mal.meta_lr, 1e-3).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-runs/miniature}"
seeds="${SEEDS:-1 2 3}"
fold="${FOLD:-1}"
epochs="${EPOCHS:-12}"
methods="${METHODS:-stl mtl mal}"
build="${MAL_BUILD_DIR:-build}"
mkdir -p "$out"
data="$out/synthface"
if [ ! -f "$data/synthface.txt" ]; then
  "$build/client/malctl" data synth --out "$data" --force --seed "${DATA_SEED:-11}" \
    --au-subjects "${AU_SUBJECTS:-24}" --frames "${FRAMES:-80}" --fe-subjects "${FE_SUBJECTS:-300}" \
    --fe-images "${FE_IMAGES:-3000}" --ambiguous "${AMBIGUOUS:-0.3}" --size 80
fi
for method in $methods; do
  # The reference rows' data (fe/synth_truth.csv, the ground truth no method may use): mtl_clear
  # leaves every ambiguous FE image out of the label list; mtl_clear_xN lists every clear training
  # image N times (hard-linked copies under new names), so MTL draws the ambiguous ones at 1/N of
  # the clear ones' rate: a fixed down-weighting, how far MAL's graded weights must go.
  [[ "$method" =~ ^mtl_clear(_x([0-9]+))?$ ]] || continue
  times="${BASH_REMATCH[2]}" dir="$out/synthface-clear${BASH_REMATCH[2]:+-x${BASH_REMATCH[2]}}"
  [ -f "$dir/synthface.txt" ] && continue
  rm -rf "$dir.partial"
  cp -rL "$data" "$dir.partial"  # -L: $data may be a link to shared data
  python3 - "$dir.partial/fe" "$times" <<'PY'
import csv, os, sys
fe, times = sys.argv[1], int(sys.argv[2] or 0)
kind = {r["name"]: r["kind"] for r in csv.DictReader(open(f"{fe}/synth_truth.csv"))}
for name in ("list_patition_label.txt",) if times == 0 else ("list_patition_label.txt", "distribution_basic.txt"):
    path = f"{fe}/EmoLabel/{name}"
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    missing = [l.split()[0] for l in lines if l.split()[0] not in kind]
    if missing:
        sys.exit(f"{path}: {len(missing)} image(s) not in synth_truth.csv, e.g. {missing[0]}")
    if times == 0:
        lines = [l for l in lines if kind[l.split()[0]] == "clear"]
    for l in list(lines) if times else []:
        image, rest = l.split(None, 1)
        if image.startswith("train_") and kind[image] == "clear":
            stem = image.rsplit(".", 1)[0]
            for k in range(1, times):
                lines.append(f"{stem}d{k}.jpg {rest}")
                if name == "distribution_basic.txt":
                    os.link(f"{fe}/Image/aligned/{stem}_aligned.jpg", f"{fe}/Image/aligned/{stem}d{k}_aligned.jpg")
    open(path, "w").write("".join(l + "\n" for l in lines))
PY
  mv "$dir.partial" "$dir"
done
start=$(date +%s)
for seed in $seeds; do
  for method in $methods; do
    run="$out/$method-seed$seed"
    [ -f "$run/model.json" ] && continue
    fe_root="$data" spec_method="$method" train_extra=""
    if [[ "$method" =~ ^mtl_clear(_x([0-9]+))?$ ]]; then
      fe_root="$out/synthface-clear${BASH_REMATCH[2]:+-x${BASH_REMATCH[2]}}" spec_method=mtl
    elif [ "$method" = mal_mtl ]; then  # MTL on the same seed's MAL run's final FE weights
      weights="$out/mal-seed$seed/weights/epoch_$(printf %03d "$epochs").csv"
      if [ ! -f "$out/mal-seed$seed/model.json" ] || [ ! -f "$weights" ]; then
        echo "mal_mtl seed $seed: needs the finished MAL run $out/mal-seed$seed (put mal before mal_mtl in METHODS)" >&2
        exit 1
      fi
      spec_method=mtl train_extra=", fe_weights: $weights, fe_weight_levels: ${FE_WEIGHT_LEVELS:-3}"
    fi
    cat > "$out/$method-seed$seed.yaml" <<SPEC
name: miniature-$method
method: $spec_method
data:
  au: {format: synthface, root: $data}
  fe: {format: synthface, root: $fe_root}
model: {backbone: small_cnn, input: 64, resize: 72}
train: {epochs: $epochs, batch_au: 32, batch_fe: 32, lr: ${LR:-0.01}, schedule: ${SCHEDULE:-cosine}, momentum: 0.9,
        weight_decay: ${WEIGHT_DECAY:-5e-4}, fe_lambda: 1.0, threads: 2, log_every: 50, checkpoint_every: 100000$train_extra}
mal: {mode: exact, meta_lr: ${META_LR:-1e-3}, meta_optimizer: adam, val_fraction: ${VAL_FRACTION:-0.05}, val_split: ${VAL_SPLIT:-frames}, val_batch: ${VAL_BATCH:-64}${MAL_EXTRA:-}}
seed: $seed
SPEC
    echo "== $method seed $seed ($(( $(date +%s) - start )) s so far)"
    rm -rf "$run"
    "$build/worker/mal-worker" train -f "$out/$method-seed$seed.yaml" --fold "$fold" --out "$run" --quiet
  done
done
echo "== all runs: $(( $(date +%s) - start )) s"
python3 - "$out" "$seeds" "$methods" <<'PY'
import csv, json, statistics, sys
out, seeds, methods = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def sd(v): return statistics.stdev(v) if len(v) > 1 else 0.0
summary = {}
print(f"{'method':8} {'test mean F1 (last epoch)':>26} {'best epoch':>11} {'s/run':>7}   per-AU F1 (mean over seeds)")
for method in methods:
    last, best, secs, per_au, aus = [], [], [], None, None
    for s in seeds:
        epochs = json.load(open(f"{out}/{method}-seed{s}/metrics.json"))["epochs"]
        last.append(epochs[-1]["test_mean_f1"]); best.append(max(e["test_mean_f1"] for e in epochs))
        secs.append(sum(e["seconds"] for e in epochs))
        aus = epochs[-1]["aus"]
        f1 = epochs[-1]["test_f1"]
        per_au = f1 if per_au is None else [a + b for a, b in zip(per_au, f1)]
    per_au = [x / len(seeds) for x in per_au]
    summary[method] = {"mean": statistics.mean(last), "std": sd(last), "per_seed": last,
                       "best_epoch_mean": statistics.mean(best), "seconds_mean": statistics.mean(secs),
                       "per_au": dict(zip(map(str, aus), per_au))}
    print(f"{method:8} {statistics.mean(last):14.4f} +- {sd(last):.4f} {statistics.mean(best):11.4f} "
          f"{statistics.mean(secs):7.0f}   " + " ".join(f"{a}:{f:.2f}" for a, f in zip(aus, per_au)))
pairs = [("mal", "mtl"), ("mal", "stl"), ("mtl", "stl"), ("mtl_clear", "mtl"), ("mal", "mtl_clear")]
pairs += [(m, "mtl") for m in methods if m.startswith("mtl_clear_x")]
pairs += [("mal_mtl", "mtl"), ("mal_mtl", "stl"), ("mal_mtl", "mal")]
for a, b in pairs:
    if a in summary and b in summary:
        d = [x - y for x, y in zip(summary[a]["per_seed"], summary[b]["per_seed"])]
        summary[f"{a}_minus_{b}"] = {"mean": statistics.mean(d), "std": sd(d), "per_seed": d}
        print(f"{a} - {b}: {statistics.mean(d):+.4f} (per seed {', '.join(f'{x:+.3f}' for x in d)})")
if "mal" in summary:
    truth = {r["name"].rsplit(".", 1)[0]: r
             for r in csv.DictReader(open(f"{out}/synthface/fe/synth_truth.csv"))}
    rhos, kinds_all, balance = [], {}, []
    for s in seeds:
        epochs = json.load(open(f"{out}/mal-seed{s}/metrics.json"))["epochs"]
        rows = [r for r in csv.DictReader(open(f"{out}/mal-seed{s}/weights/epoch_{len(epochs):03d}.csv"))
                if r["task"] == "fe"]
        by_kind = {}
        for r in rows:
            by_kind.setdefault(truth[r["id"]]["kind"], []).append(float(r["weight"]))
        kinds = {k: statistics.mean(v) for k, v in by_kind.items()}
        rec = list(csv.DictReader(open(f"{out}/mal-seed{s}/records.csv")))
        def share(rows):  # normalised AU share of the weights
            au = statistics.mean(float(r["mean_wn_au"]) for r in rows)
            fe = statistics.mean(float(r["mean_wn_fe"]) for r in rows)
            return au / (au + fe)
        first, final = share(rec[:20]), share(rec[-20:])
        rho = epochs[-1]["fe_weight_consistency_spearman"]
        rhos.append(rho)
        balance.append({"first_20_iterations": {"au": first, "fe": 1 - first},
                        "last_20_iterations": {"au": final, "fe": 1 - final}})
        kinds_all[s] = kinds
        print(f"mal seed {s}: Spearman(FE weight, consistency) {rho:+.3f} (by epoch: "
              + " ".join(f"{e['fe_weight_consistency_spearman']:+.2f}" for e in epochs) + ")")
        print(f"  mean FE weight by true ambiguity: "
              + ", ".join(f"{k} {kinds[k]:.4f}" for k in ["clear", "partial", "weak", "none"] if k in kinds))
        print(f"  normalised task shares AU / FE: first 20 iterations {first:.3f} / {1 - first:.3f}, "
              f"last 20 {final:.3f} / {1 - final:.3f}")
    summary["mal_spearman"] = dict(zip(seeds, rhos))
    summary["spearman_min"] = min(rhos)
    summary["mal_fe_weight_by_kind"] = kinds_all
    summary["mal_task_balance"] = dict(zip(seeds, balance))
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"wrote {out}/summary.json")
PY
