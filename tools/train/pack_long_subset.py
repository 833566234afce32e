#!/usr/bin/env python3
"""A long-context subset of the training split for continued training at 8k-16k.

The GPU call carries the working tree plus .device/ under a 64 MiB limit, and the shipped
model already takes 45 MiB of it, so continued training cannot carry the whole corpus
(38 MB as xz). This keeps the longest training documents first (they are what long-context
training needs), then a random sample of the rest, up to --train-mb of text, and a
validation sample of --val-mb; both written xz-compressed to .device/corpus/.
Usage: /usr/bin/python3 tools/train/pack_long_subset.py [--train-mb 60] [--val-mb 3]
"""
from __future__ import annotations

import argparse
import json
import lzma
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pick(path: Path, budget: int, long_share: float, seed: int) -> tuple[list[str], dict]:
    docs = [line for line in path.open(encoding="utf-8")]
    lens = [len(json.loads(d)["text"]) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: -lens[i])
    chosen, used = [], 0
    for i in order:  # longest first, for long_share of the budget
        if used >= budget * long_share:
            break
        chosen.append(i)
        used += lens[i]
    n_long, shortest_long = len(chosen), lens[chosen[-1]] if chosen else 0
    taken = set(chosen)
    rest = [i for i in range(len(docs)) if i not in taken]
    random.Random(seed).shuffle(rest)
    for i in rest:
        if used >= budget:
            break
        chosen.append(i)
        used += lens[i]
    chosen.sort()
    stats = {"docs": len(chosen), "of_docs": len(docs), "chars": used, "longest_first_docs": n_long,
             "shortest_of_those_chars": shortest_long}
    return [docs[i] for i in chosen], stats


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-mb", type=float, default=60)
    ap.add_argument("--val-mb", type=float, default=3)
    ap.add_argument("--long-share", type=float, default=0.7)
    args = ap.parse_args()
    src = REPO / "data" / "corpus"
    dst = REPO / ".device" / "corpus"
    dst.mkdir(parents=True, exist_ok=True)
    for split, mb in (("train", args.train_mb), ("val", args.val_mb)):
        lines, stats = pick(src / f"{split}.jsonl", int(mb * 1e6), args.long_share, 1234)
        out = dst / f"{split}.jsonl.xz"
        with lzma.open(out, "wt", encoding="utf-8", preset=9) as f:
            f.writelines(lines)
        print(f"{split}: {stats} -> {out} {out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
