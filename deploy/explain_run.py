#!/usr/bin/env python3
"""Says in plain words what a fold run learned: AU detection on the fold's unseen subjects against
the all-positive baseline, and (MAL) how the learned weights of the expression images relate to
their annotators' agreement.

Usage: deploy/explain_run.py RUN_DIR INSPECT_JSON
  RUN_DIR       a fold run's directory (metrics.json, weights/epoch_NNN.csv)
  INSPECT_JSON  `malctl data inspect ... -o json` of the AU data (for the AU positive rates)
"""
import csv
import json
import statistics
import sys


def main(run_dir, inspect_path):
    with open(f"{run_dir}/metrics.json") as f:
        epochs = json.load(f)["epochs"]
    last = epochs[-1]
    with open(inspect_path) as f:
        inspect = json.load(f)
    rates = {s["au"]: s["positive_rate"] for s in inspect["au_stats"]}
    aus, f1 = last["aus"], last["test_f1"]
    # F1 of saying "present" for every AU on every frame: 2p / (1 + p).
    baseline = statistics.mean(2 * rates[a] / (1 + rates[a]) for a in aus if a in rates)
    ranked = sorted(zip(f1, aus), reverse=True)
    print("What the model learned")
    print(f"- It detects {len(aus)} facial action units on faces it never saw in training (the fold's "
          f"test subjects) with mean F1 {last['test_mean_f1']:.2f} (1.00 is perfect; answering "
          f"'present' for every AU scores {baseline:.2f} on this data).")
    print(f"  Easiest: {', '.join(f'AU{a} {x:.2f}' for x, a in ranked[:3])}; hardest: "
          f"{', '.join(f'AU{a} {x:.2f}' for x, a in ranked[-3:])}.")
    weights_csv = f"{run_dir}/weights/epoch_{last['epoch']:03d}.csv"
    try:
        with open(weights_csv) as f:
            rows = [r for r in csv.DictReader(f) if r["task"] == "fe" and float(r["consistency"]) >= 0]
    except FileNotFoundError:
        return  # STL and MTL learn no sample weights
    if not rows:
        return
    agreed = [float(r["weight"]) for r in rows if float(r["consistency"]) >= 0.9]
    split = [float(r["weight"]) for r in rows if float(r["consistency"]) < 0.6]
    rho = last["fe_weight_consistency_spearman"]
    print(f"- MAL weighted every expression image by how much it helps AU detection, without seeing "
          f"the annotators' votes. Its weights follow the annotators' agreement with Spearman "
          f"{rho:+.2f} (0 = no relation, 1 = the same order) over {len(rows)} images.")
    if rho >= 0.2:
        print("  So it trusts the images people agree on more than the ambiguous ones, "
              "as in the paper's Fig. 6.")
    elif rho <= -0.2:
        print("  So on this run it trusts the ambiguous images more than the clear ones, "
              "the opposite of the paper's Fig. 6.")
    else:
        print("  So on this run it does not tell ambiguous images from clear ones.")
    if rho < 0.2 and inspect.get("format") == "synthface":
        print("  (On SynthFace this ranking depends on the data draw: docs/benchmarks.md, "
              "\"Across SynthFace draws the ranking's sign is chance\".)")
    if agreed and split:
        print(f"  Mean weight of images most annotators agreed on (>= 90%): {statistics.mean(agreed):.3f}; "
              f"of images with a split vote (< 60%): {statistics.mean(split):.3f}.")
    share = last["mean_fe_weight"] / max(1e-9, last["mean_fe_weight"] + last["mean_au_weight"])
    print(f"  Share of the training signal given to the expression task: {share:.2f} "
          f"(0.50 at the start).")
    lowest = sorted(rows, key=lambda r: float(r["weight"]))[:3]
    print("  Trusted least: " + "; ".join(
        f"{r['id']} labelled {r['label']} (agreement {float(r['consistency']):.2f})" for r in lowest))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
