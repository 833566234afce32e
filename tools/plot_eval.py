#!/usr/bin/python3
"""Plot `ekva eval --json-out` results: quality against KV bytes, one line per method.

usage: tools/plot_eval.py RESULTS.json OUT.png
Left: retrieval accuracy at the longest evaluated context; right: perplexity of the
continuation after the compressed context. The full cache is the dashed reference.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results = json.load(open(sys.argv[1]))
    rows = results["rows"]
    ctx = str(max(results["retrieval_contexts"]))
    full = next(r for r in rows if r["method"] == "full")
    methods = sorted({r["method"] for r in rows if r["method"] != "full"})
    fig, (ax_r, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in methods:
        pts = sorted((r["kv_fraction_after_prompt"] * 100, r) for r in rows if r["method"] == m)
        xs = [x for x, _ in pts]
        style = "-o" if m.startswith("ekva") else "--s"
        ax_r.plot(xs, [r["retrieval"][ctx]["accuracy_pct"] for _, r in pts], style, label=m, ms=4)
        ax_p.plot(xs, [r["perplexity"] for _, r in pts], style, label=m, ms=4)
    ax_r.axhline(full["retrieval"][ctx]["accuracy_pct"], color="k", ls=":", label="full cache")
    ax_p.axhline(full["perplexity"], color="k", ls=":", label="full cache")
    ax_r.set(xlabel="KV bytes kept after the prompt (% of full)", ylabel=f"retrieval accuracy @ {ctx} (%)")
    ax_p.set(xlabel="KV bytes kept after the prompt (% of full)",
             ylabel=f"perplexity @ {results['ppl_context']} (lower is better)")
    ax_p.set_yscale("log")
    ax_r.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{results['model']}: KV compression, quality against memory")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
