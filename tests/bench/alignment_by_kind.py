#!/usr/bin/env python3
"""Mean gradient alignment of a MAL run's samples by SynthFace's true ambiguity kind.

Reads RUN/weights/epoch_NNN.csv (its `alignment` column: grad l_i . grad L_v(theta') averaged over
the epoch's meta updates, docs/engine.md) for epochs FIRST..LAST and DATA/fe/synth_truth.csv, and
prints, per kind, the number of (sample, epoch) values, their mean and its standard error.
Usage: tests/bench/alignment_by_kind.py RUN DATA FIRST LAST
"""
import csv
import statistics
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    run, data, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    truth = {r["name"].rsplit(".", 1)[0]: r
             for r in csv.DictReader(open(f"{data}/fe/synth_truth.csv"))}
    groups = {}
    for epoch in range(first, last + 1):
        path = f"{run}/weights/epoch_{epoch:03d}.csv"
        for row in csv.DictReader(open(path)):
            if not row.get("alignment"):
                continue  # not in a meta update of this epoch
            if row["task"] == "au":
                key = "AU frames"
            else:
                t = truth[row["id"]]
                key = f"FE {t['kind']}"
                if t["kind"] in ("clear", "none"):
                    key += ", labelled neutral" if t["label"] == "neutral" else ", labelled an expression"
            groups.setdefault(key, []).append(float(row["alignment"]))
    for key in sorted(groups):
        v = groups[key]
        se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else float("nan")
        print(f"{key:36} n={len(v):5}  mean {statistics.mean(v):+.3f} +- {se:.3f} (se)")


if __name__ == "__main__":
    main()
