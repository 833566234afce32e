#!/usr/bin/python3
"""Roofline plot of one or more `ekva roofline report` JSON files.

    tools/plot_roofline.py OUT_PREFIX REPORT.json [REPORT.json ...] [--title TEXT]

Writes OUT_PREFIX.svg and OUT_PREFIX.png: log-log arithmetic intensity (FLOP/byte)
against attained GFLOP/s, with the memory and compute roofs of the first report's
ceilings (and the last-level-cache read roof, dashed, when the probe measured one),
one point per op (all layers and experts together, size by share of the time), one
per expert FFN (layer, expert; coloured by its attention entropy when the report has a
calibration profile), and one per layer's attention. Several reports (say batch 1 and
batch 64) share the axes, each with its own marker. Needs only matplotlib.
"""
import argparse
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = ["o", "s", "D", "^", "v", "P"]


def roof(ax, x, bw, peak, **kw):
    ys = [min(bw * v, peak) for v in x]
    ax.plot(x, ys, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_prefix")
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    reports = [json.load(open(p)) for p in a.reports]
    c = reports[0]["ceilings"]
    bw, peak = c["memory_gb_per_s"], c["compute_gflop_per_s"]
    ridge = peak / bw

    points = [p for r in reports for key in ("ops", "experts", "attention") for p in r[key]
              if p["bytes"] > 0 and p["seconds"] > 0 and p["intensity"] > 0]
    xs = [p["intensity"] for p in points] + [ridge]
    ys = [p["gflop_per_s"] for p in points] + [peak]
    x_lo = 10 ** math.floor(math.log10(min(xs) / 2))
    x_hi = 10 ** math.ceil(math.log10(max(xs) * 4))
    y_lo = 10 ** math.floor(math.log10(max(min(ys) / 2, 1e-3)))
    y_hi = 10 ** math.ceil(math.log10(peak * 3))

    fig, ax = plt.subplots(figsize=(9, 6))
    grid = [x_lo * (x_hi / x_lo) ** (i / 400) for i in range(401)]
    roof(ax, grid, bw, peak, color="black", lw=2,
         label=f"roof: memory {bw:.1f} GB/s, compute {peak:.0f} GFLOP/s ({c['compute_kind']})")
    if c.get("cache_gb_per_s", 0) > 0:
        roof(ax, grid, c["cache_gb_per_s"], peak, color="gray", lw=1.2, ls="--",
             label=f"last-level cache read {c['cache_gb_per_s']:.1f} GB/s")
    ax.axvline(ridge, color="black", lw=0.6, ls=":")
    ax.text(ridge * 1.05, y_lo * 1.5, f"ridge {ridge:.1f} FLOP/B", fontsize=8)

    entropy_points = [p for r in reports for p in r["experts"] if "query_entropy" in p]
    if entropy_points:
        e_lo = min(p["query_entropy"] for p in entropy_points)
        e_hi = max(p["query_entropy"] for p in entropy_points)
    scatter = None
    for i, r in enumerate(reports):
        m = MARKERS[i % len(MARKERS)]
        name = r.get("title") or a.reports[i]
        ex = [p for p in r["experts"] if p["intensity"] > 0 and p["seconds"] > 0]
        if ex:
            colour = [p.get("query_entropy", 0) for p in ex]
            kw = dict(c=colour, cmap="viridis", vmin=e_lo, vmax=e_hi) if entropy_points else \
                dict(color="tab:green")
            scatter = ax.scatter([p["intensity"] for p in ex], [p["gflop_per_s"] for p in ex],
                                 marker=m, s=18, alpha=0.75, edgecolors="none",
                                 label=f"{name}: expert FFN (layer, expert)", **kw)
        at = [p for p in r["attention"] if p["intensity"] > 0 and p["seconds"] > 0]
        if at:
            ax.scatter([p["intensity"] for p in at], [p["gflop_per_s"] for p in at], marker=m,
                       s=22, facecolors="none", edgecolors="tab:red",
                       label=f"{name}: attention per layer")
        ops = [p for p in r["ops"] if p["intensity"] > 0 and p["seconds"] > 0]
        ax.scatter([p["intensity"] for p in ops], [p["gflop_per_s"] for p in ops], marker=m,
                   s=[30 + 400 * p["share"] for p in ops], color="tab:blue", alpha=0.55,
                   edgecolors="black", linewidths=0.5, label=f"{name}: op (size: share of time)")
        offsets = [(5, 4), (5, -10), (-45, 6), (5, 14), (-45, -10), (5, -20)]
        for k, p in enumerate(sorted(ops, key=lambda p: -p["share"])[:6]):
            ax.annotate(p["label"], (p["intensity"], p["gflop_per_s"]), fontsize=7,
                        xytext=offsets[k], textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="gray"))
    if scatter is not None and entropy_points:
        fig.colorbar(scatter, ax=ax, label="expert's query attention entropy (nats)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained GFLOP/s")
    ax.set_title(a.title or " | ".join(r.get("title", "") for r in reports), fontsize=10)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="upper left")
    fig.text(0.01, 0.01, f"{c['device']} ({c['source']})", fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(a.out_prefix + ".svg")
    fig.savefig(a.out_prefix + ".png", dpi=100)


if __name__ == "__main__":
    main()
