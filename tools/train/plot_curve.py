#!/usr/bin/env python3
"""Plot the training curve of a metrics JSON (train.py's metrics.json or bench/results/training_*.json).

Usage: python3 tools/train/plot_curve.py METRICS.json OUT.png
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dst = sys.argv[1], sys.argv[2]
    m = json.load(open(src))
    if "training" in m:  # a bench/results file
        m = m["training"]
    curve, val = m["curve"], m["val_curve"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    tok = [c["tokens"] / 1e6 for c in curve]
    ax[0].plot(tok, [c["loss"] for c in curve], lw=1, label="train (incl. synthetic retrieval)")
    ax[0].plot([v["tokens"] / 1e6 for v in val], [v["val_loss"] for v in val], "o-", ms=3, label="validation")
    ax[0].set_xlabel("tokens (M)")
    ax[0].set_ylabel("cross-entropy (nats/token)")
    lo = min(min(c["loss"] for c in curve), min(v["val_loss"] for v in val))
    ax[0].set_ylim(lo - 0.2, min(8.0, max(c["loss"] for c in curve[2:]) + 0.2) if len(curve) > 3 else None)
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    ax[0].set_title("ekva-moe-tiny training loss", fontsize=9)
    ax[1].plot(tok, [c["aux_loss"] for c in curve], lw=1, color="C2")
    ax[1].axhline(2.0, color="grey", lw=0.6, ls="--")
    ax[1].set_xlabel("tokens (M)")
    ax[1].set_ylabel("router load-balancing loss")
    ax[1].grid(alpha=0.3)
    ax[1].set_title("router aux loss (2.0 = balanced for top-2)", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst)
    print("wrote", dst, "final val ppl", math.exp(val[-1]["val_loss"]))


if __name__ == "__main__":
    main()
