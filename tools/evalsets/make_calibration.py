#!/usr/bin/python3
"""Build EKVA's calibration sample (deterministic; output committed under data/calibration/).

    /usr/bin/python3 tools/evalsets/make_calibration.py [--corpus data/corpus] [--out data/calibration]

Input: the VALIDATION split of the corpus (data/corpus/val.jsonl with its manifest.json,
from tools/corpus/build.sh). Never the test split: the evaluation sets come from it. The
sha256 of val.jsonl must match the manifest, so the sample is tied to one corpus build.

Output:
  data/calibration/validation_sample.txt  excerpts of validation documents, separated by
                                          blank lines, for `ekva calibrate --data`
  data/calibration/README.md              how it was made, and every excerpt's origin

Sampling: prose and code take the byte shares they have in the whole corpus (manifest
kept_bytes per kind); within a kind each source takes the share of its kept bytes
among the sources that have validation documents. A source's quota is filled with
contiguous excerpts of at most EXCERPT_BYTES (about one 4k-token training window, so a
calibration sequence sees long-range structure), cut at line boundaries, from its
documents in sha256(seed:id) order, each starting at a line chosen by a seeded hash.
Documents whose id looks like a data table (the evaluation sets' DATA_LIKE rule) are
skipped. Excerpts are interleaved so that prose and code stay in proportion along the
file: any prefix that `ekva calibrate --max-tokens` reads is a mix of both.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = "ekva-calibration-v1"
TARGET_BYTES = 256_000
EXCERPT_BYTES = 12_000
MIN_EXCERPT_BYTES = 1_000  # a quota left smaller than this is not filled
BYTES_PER_TOKEN = 3.10  # measured on the training split (models/ekva-moe-tiny/MODEL_CARD.md)
DATA_LIKE = re.compile(r"/fonts?/|/unicore/|_table|tables?\.|/firmware/")  # as make_evalsets.py


def hash_key(*parts) -> str:
    return hashlib.sha256(":".join((SEED,) + tuple(map(str, parts))).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def excerpt(doc: dict, limit: int) -> tuple[str, int]:
    """Up to `limit` bytes of whole lines from a seeded line of the document; (text, byte offset)."""
    lines = doc["text"].splitlines(keepends=True)
    sizes = [nbytes(line) for line in lines]
    total = sum(sizes)
    start = 0
    if total > limit:  # start at a line from which at least `limit` bytes remain
        last, remaining = 0, 0
        for i in range(len(lines) - 1, -1, -1):
            remaining += sizes[i]
            if remaining >= limit:
                last = i
                break
        start = random.Random(hash_key("start", doc["id"])).randint(0, last)
    taken, size = [], 0
    for line, n in zip(lines[start:], sizes[start:]):
        if size + n > limit:
            break
        taken.append(line)
        size += n
    if not taken:  # one line longer than the limit: its first `limit` bytes
        taken = [lines[start].encode("utf-8")[:limit].decode("utf-8", errors="ignore")]
    raw = "".join(taken)
    text = raw.strip("\n")
    return text, sum(sizes[:start]) + len(raw) - len(raw.lstrip("\n"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "calibration")
    args = ap.parse_args()

    manifest = json.loads((args.corpus / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != "ekva-corpus-manifest-v1":
        sys.exit(f"{args.corpus / 'manifest.json'}: not an ekva-corpus-manifest-v1")
    val_path = args.corpus / "val.jsonl"
    val_sha = sha256_file(val_path)
    if val_sha != manifest["totals"]["val"]["jsonl_sha256"]:
        sys.exit(f"{val_path}: sha256 {val_sha} differs from the manifest's; rebuild the corpus")

    kind_of = {s["name"]: s["kind"] for s in manifest["sources"]}
    kept = {s["name"]: s["kept_bytes"] for s in manifest["sources"]}
    kind_bytes = {k: sum(b for n, b in kept.items() if kind_of[n] == k) for k in ("prose", "code")}
    corpus_bytes = sum(kind_bytes.values())

    docs: dict[str, list[dict]] = {}
    for line in val_path.open(encoding="utf-8"):
        d = json.loads(line)
        if not DATA_LIKE.search(d["id"]):
            docs.setdefault(d["source"], []).append(d)
    for source in docs:
        docs[source].sort(key=lambda d: hash_key("doc", d["id"]))

    picked: dict[str, list[dict]] = {"prose": [], "code": []}
    for kind in ("prose", "code"):
        target = TARGET_BYTES * kind_bytes[kind] / corpus_bytes
        sources = sorted(n for n in docs if kind_of[n] == kind)
        weight = sum(kept[n] for n in sources)
        for source in sources:
            quota = round(target * kept[source] / weight)
            for d in docs[source]:
                if quota < MIN_EXCERPT_BYTES:
                    break
                text, offset = excerpt(d, min(quota, EXCERPT_BYTES))
                if nbytes(text) < MIN_EXCERPT_BYTES // 4:
                    continue  # a scrap (a nearly empty document): not worth a boundary
                picked[kind].append(dict(source=source, kind=kind, id=d["id"], offset=offset,
                                         bytes=nbytes(text), text=text))
                quota -= nbytes(text)
        picked[kind].sort(key=lambda e: hash_key("order", e["id"]))

    # Interleave: the i-th of n excerpts of a kind sits at (i + 0.5) / n along the file.
    order = sorted(
        ((i + 0.5) / len(items), kind, i) for kind, items in picked.items() for i in range(len(items)))
    excerpts = [picked[kind][i] for _, kind, i in order]

    args.out.mkdir(parents=True, exist_ok=True)
    sample = "\n\n".join(e["text"] for e in excerpts) + "\n"
    sample_path = args.out / "validation_sample.txt"
    sample_path.write_text(sample, encoding="utf-8")

    total = nbytes(sample)
    by_kind = {k: sum(e["bytes"] for e in excerpts if e["kind"] == k) for k in ("prose", "code")}
    n_sources = len({e["source"] for e in excerpts})
    rows = "\n".join(f"| {n} | {e['kind']} | `{e['id']}` | {e['offset']} | {e['bytes']} |"
                     for n, e in enumerate(excerpts, 1))
    readme = f"""# EKVA calibration sample

`validation_sample.txt` is the text that `ekva calibrate` is meant to read when it builds a
model's calibration profile: the attention and routing statistics per layer, expert and
kv-head that the budget allocators use.

    ekva calibrate -m models/ekva-moe-tiny --data data/calibration/validation_sample.txt -o profile.json

The file is committed, so calibration needs no corpus rebuild. It was made by
`tools/evalsets/make_calibration.py` (deterministic, seed `{SEED}`) from the
**validation split** of the corpus built by `tools/corpus/build.sh`:
- `val.jsonl` sha256 `{val_sha}`, as in the corpus manifest.

The evaluation sets (`data/evalsets/`) come from the test split; training used neither.

- **Size:** {total:,} bytes of UTF-8. At the corpus's {BYTES_PER_TOKEN} bytes per token
  that is about {round(total / BYTES_PER_TOKEN / 1000)}k tokens, enough for the default
  `--max-tokens 65536` (32 sequences of 2048 tokens).
- **Mix:** prose and code take their shares of the whole corpus
  ({100 * kind_bytes['prose'] / corpus_bytes:.1f}% / {100 * kind_bytes['code'] / corpus_bytes:.1f}% of its bytes).
  - prose: {by_kind['prose']:,} bytes ({100 * by_kind['prose'] / sum(by_kind.values()):.1f}%)
  - code: {by_kind['code']:,} bytes ({100 * by_kind['code'] / sum(by_kind.values()):.1f}%)
  - {len(excerpts)} excerpts from {n_sources} sources
- **Sampling:**
  - Within a kind, each source gets the share its bytes have in the corpus, among the
    sources that have validation documents.
  - That share is filled with contiguous excerpts of whole lines, at most {EXCERPT_BYTES:,}
    bytes each (about one 4k-token training window). They come from the source's
    documents in hashed order, and each starts at a line chosen by a seeded hash.
  - Quotas under {MIN_EXCERPT_BYTES:,} bytes are not filled. Documents whose id looks like a
    data table are skipped.
- **Order:** prose and code excerpts are interleaved evenly, so any prefix of the file keeps
  about the same mix. Excerpts are separated by one blank line and have no headers: the
  model sees only the text.
- **Licences:** those of the source packages (see `data/corpus/manifest.json` and
  `models/ekva-moe-tiny/MODEL_CARD.md`). Some of them are copyleft.

## Excerpts, in file order
Offsets are UTF-8 byte offsets into the document's `text` in `val.jsonl`.

| # | kind | document | offset | bytes |
| --- | --- | --- | --- | --- |
{rows}
"""
    (args.out / "README.md").write_text(readme, encoding="utf-8")
    print(f"{sample_path}: {total:,} bytes, {len(excerpts)} excerpts from {n_sources} sources, "
          f"prose {by_kind['prose']:,} / code {by_kind['code']:,} bytes; sha256 {sha256_file(sample_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
