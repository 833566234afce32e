#!/usr/bin/env python3
"""Install what the GPU training call returned into the repository.

Usage: python3 tools/train/finalize.py FILES_DIR [--date YYYY-MM-DD]
FILES_DIR holds the call's $OUT: model-*.safetensors, meta.tar (config.json,
generation_config.json, model.safetensors.index.json), metrics.json,
ekva_moe_tiny_reference.safetensors, train.log.
Writes models/ekva-moe-tiny/ (weights, config, index, training_curve.png),
tests/data/ekva_moe_tiny_reference.safetensors and bench/results/training_<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "ekva-moe-tiny"


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--device-minutes", type=float, default=None)
    ap.add_argument("--reference", default="", help="reference file to install (default: FILES_DIR's)")
    ap.add_argument("--verify", action="append", default=[], help="verify.json of tools/train/verify_checkpoint.py")
    args = ap.parse_args()
    src = Path(args.files)
    MODEL.mkdir(parents=True, exist_ok=True)
    for old in MODEL.glob("model-*.safetensors"):
        old.unlink()
    shards = sorted(src.glob("model-*-of-*.safetensors"))
    for s in shards:
        shutil.copyfile(s, MODEL / s.name)
    with tarfile.open(src / "meta.tar") as tf:
        for name in ("config.json", "generation_config.json", "model.safetensors.index.json"):
            (MODEL / name).write_bytes(tf.extractfile(name).read())
    ref = Path(args.reference) if args.reference else src / "ekva_moe_tiny_reference.safetensors"
    if ref.exists():
        (REPO / "tests" / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ref, REPO / "tests" / "data" / "ekva_moe_tiny_reference.safetensors")

    # consistency: index <-> shard headers, sizes
    index = json.loads((MODEL / "model.safetensors.index.json").read_text())
    total = 0
    for s in shards:
        h = safetensors_header(MODEL / s.name)
        for k, v in h.items():
            if k == "__metadata__":
                continue
            assert index["weight_map"][k] == s.name, k
            assert v["dtype"] == "BF16", (k, v["dtype"])
            total += v["data_offsets"][1] - v["data_offsets"][0]
    assert total == index["metadata"]["total_size"], (total, index["metadata"]["total_size"])
    weight_bytes = sum((MODEL / s.name).stat().st_size for s in shards)

    if (src / "metrics.json").exists():
        metrics = json.loads((src / "metrics.json").read_text())
    else:
        with tarfile.open(src / "meta.tar") as tf:
            metrics = json.loads(tf.extractfile("metrics.json").read())
    Path("/tmp/ekva_metrics.json").write_text(json.dumps(metrics))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    manifest = REPO / "data" / "corpus" / "manifest.json"
    corpus = None
    if manifest.exists():
        m = json.loads(manifest.read_text())
        corpus = {"totals": m["totals"],
                  "sources": [{k: s.get(k) for k in ("name", "package", "version", "licence", "kept_bytes")}
                              for s in m["sources"]]}
    result = {
        "kind": "training",
        "model": "ekva-moe-tiny",
        "date": args.date,
        "commit": "(lead fills in: the commit that adds this file)",
        "code_base_commit": commit,
        "device": metrics.get("device"),
        "device_minutes_used": args.device_minutes,
        "software": {"torch": metrics.get("torch"), "transformers": metrics.get("transformers")},
        "params": metrics["params"],
        "weight_files_bytes": weight_bytes,
        "config": metrics["config"],
        "figures": {
            "final": metrics.get("final"),
            "retrieval_full_cache": {t: {c: v["accuracy"] for c, v in metrics.get("retrieval", {}).get(t, {}).items()}
                                     for t in ("passkey", "multikey")},
            "ppl_eval": {c: {"ppl": v["ppl"], "n_seq": v["n_seq"]} for c, v in metrics.get("ppl_eval", {}).items()},
        },
        "training": metrics["train"] | {"curve": metrics["curve"], "val_curve": metrics["val_curve"]},
        "retrieval": metrics.get("retrieval"),
        "ppl_eval": metrics.get("ppl_eval"),
        "reload_check": metrics.get("reload_check"),
        "verification": [json.loads(Path(v).read_text()) for v in args.verify],
        "total_seconds_on_device": metrics.get("total_seconds"),
        "corpus": corpus,
    }
    out = REPO / "bench" / "results" / f"training_{args.date}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    subprocess.run([sys.executable, str(REPO / "tools" / "train" / "plot_curve.py"), "/tmp/ekva_metrics.json",
                    str(MODEL / "training_curve.png")], check=True)
    print("wrote", out, "and", MODEL, f"({weight_bytes:,} bytes of weights in {len(shards)} shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
