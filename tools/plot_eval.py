#!/usr/bin/python3
"""Plot `ekva eval --json-out` results: quality against budget, one line per method.

usage: tools/plot_eval.py OUT.png RESULTS.json [MORE.json ...] [--merged-out ALL.json]

Several result files (runs over different contexts with the same methods and budgets)
are merged by (method, budget, setting). Panels: retrieval accuracy per context and
setting, perplexity of the continuation after the compressed context per context, and
the long generation's perplexity when measured. The full cache is the dotted line.
--merged-out writes the merged rows with the iso-quality budget recomputed over every
context of the merge (the rule of `ekva eval`: the smallest swept budget from which
on retrieval is at least 95% of the full cache's and perplexity within 2%, at every
context the method was measured at: contexts_measured).
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def merge(paths):
    rows, meta = {}, {"sources": []}
    for path in paths:
        res = json.load(open(path))
        meta["sources"].append({k: v for k, v in res.items() if k not in ("rows", "iso_quality")}
                               | {"file": path})
        for r in res["rows"]:
            key = (r["method"], r["budget"], r["setting"])
            into = rows.setdefault(key, {k: v for k, v in r.items()
                                         if k not in ("retrieval", "perplexity", "generation")})
            for part in ("retrieval", "perplexity"):
                into.setdefault(part, {}).update(r.get(part, {}))
            if "generation" in r:
                into["generation"] = r["generation"]
    return list(rows.values()), meta


def iso_quality(rows, method, setting, only=None):
    sweep = sorted((r for r in rows if r["method"] == method and r["setting"] == setting),
                   key=lambda r: r["budget_pct"] if r["budget_pct"] is not None else math.inf)
    full = next(r for r in rows if r["method"] == "full" and r["setting"] == setting)
    best = None
    for r in reversed(sweep):
        if r["budget_pct"] is None:
            return None
        ok = True
        for ctx, ref in full.get("retrieval", {}).items():
            if only not in (None, ("retrieval", ctx)) or ref["accuracy_pct"] is None:
                continue
            got = r["retrieval"].get(ctx, {}).get("accuracy_pct")
            ok = ok and (got is None or got >= 0.95 * ref["accuracy_pct"])  # None: not measured
        for ctx, ref in full.get("perplexity", {}).items():
            if only not in (None, ("perplexity", ctx)) or ref["ppl"] is None:
                continue
            got = r["perplexity"].get(ctx, {}).get("ppl")
            ok = ok and (got is None or got <= 1.02 * ref["ppl"])
        if not ok:
            break
        best = r["budget_pct"]
    return best


def main() -> None:
    args = sys.argv[1:]
    merged_out = None
    if "--merged-out" in args:
        i = args.index("--merged-out")
        merged_out = args[i + 1]
        del args[i:i + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    out_png, paths = args[0], args[1:]
    rows, meta = merge(paths)
    settings = sorted({r["setting"] for r in rows}, key=["prompt", "context"].index)
    methods = sorted({r["method"] for r in rows if r["method"] != "full"})
    ret_ctx = sorted({c for r in rows for c in r.get("retrieval", {})}, key=int)
    ppl_ctx = sorted({c for r in rows for c in r.get("perplexity", {})}, key=int)
    budgets = sorted({r["budget_pct"] for r in rows
                      if r["method"] != "full" and r["budget_pct"] is not None})
    has_gen = any("generation" in r for r in rows)
    panels = [("retrieval", s, c) for s in settings for c in ret_ctx]
    panels += [("perplexity", settings[0], c) for c in ppl_ctx]
    if has_gen:
        panels.append(("generation", settings[0], None))
    ncols = max(1, len(ret_ctx), len(ppl_ctx) + has_gen)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")

    def value(r, kind, ctx):
        if kind == "retrieval":
            return r.get("retrieval", {}).get(ctx, {}).get("accuracy_pct")
        if kind == "perplexity":
            return r.get("perplexity", {}).get(ctx, {}).get("ppl")
        return r.get("generation", {}).get("ppl")

    for ax, (kind, setting, ctx) in zip(axes.flat, panels):
        for m in methods:
            pts = sorted((r["budget_pct"], value(r, kind, ctx)) for r in rows
                         if r["method"] == m and r["setting"] == setting
                         and r["budget_pct"] is not None and value(r, kind, ctx) is not None)
            style = "-o" if m.startswith("ekva") else "--s"
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=m, ms=3, lw=1.2)
        full = next(r for r in rows if r["method"] == "full" and r["setting"] == setting)
        ref = value(full, kind, ctx)
        if ref is not None:
            ax.axhline(ref, color="k", ls=":", label="full cache")
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("KV budget (% of the full cache)")
        if kind == "retrieval":
            ax.set(ylabel="retrieval accuracy (%)", ylim=(-3, 103),
                   title=f"retrieval @{ctx}, setting '{setting}'")
        else:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.set(ylabel="perplexity (lower is better)",
                   title=f"perplexity @{ctx}" if kind == "perplexity" else "long generation ppl")
        ax.grid(alpha=0.3, which="both")
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{meta['sources'][0]['model']}: quality against KV budget")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    print(f"wrote {out_png}")
    if merged_out:
        iso = []
        for m in methods:
            for s in settings:
                e = {"method": m, "setting": s, "iso_quality_budget_pct": iso_quality(rows, m, s)}
                mine = [r for r in rows if r["method"] == m and r["setting"] == s]
                e["contexts_measured"] = {
                    "retrieval": sorted({c for r in mine for c in r.get("retrieval", {})}, key=int),
                    "perplexity": sorted({c for r in mine for c in r.get("perplexity", {})}, key=int)}
                e["retrieval_only"] = {c: iso_quality(rows, m, s, ("retrieval", c))
                                       for c in e["contexts_measured"]["retrieval"]}
                e["perplexity_only"] = {c: iso_quality(rows, m, s, ("perplexity", c))
                                        for c in e["contexts_measured"]["perplexity"]}
                iso.append(e)
        json.dump(meta | {"rows": rows, "iso_quality": iso}, open(merged_out, "w"), indent=1)
        print(f"wrote {merged_out}")


if __name__ == "__main__":
    main()
