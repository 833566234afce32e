#!/usr/bin/env python3
"""Peers of EKVA's CUDA ragged decode attention, on the very inputs of its benchmark.

Reads the JSON of ekva_bench_cuda_attention (run with --dump-dir), rebuilds its
inputs on the GPU (the bench fills K, V and q with a hash of the element index; the
same hash is computed here), and times on every case, as the bench does (CUDA
events, L2 flushed by a 256 MB memset before each run, median of --runs after three
warm-ups):

  sdpa_cudnn, sdpa_flash   PyTorch SDPA on the problem padded to dense: K/V
                           [batch, 8, longest list, 128], q [batch, 32, 1, 128],
                           enable_gqa. On ragged cases the padded rows are read and
                           not masked (the flash backend takes no mask): a lower bound
                           on what a padded peer costs; its output is checked only on
                           dense cases.
  flash_varlen             PyTorch's flash varlen forward with one sequence per
                           (sequence, kv-head) (Ada-KV's flattened layout): q
                           [batch * 8, 4, 128], K/V [entries, 1, 128].
  triton                   a split-K ragged decode kernel written here in Triton
                           over the same packed per-list layout, plus a merge kernel.

Each peer's output is compared with EKVA's (DIR/<case>.out.bin) and with a float64
reference on a sample of lists. Bandwidth counts the retained K/V bytes only.

  peers.py --bench-json bench.json --dump-dir DIR --json-out peers.json [--runs 25]
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM = 32, 8, 128
GROUP = HEADS // KV_HEADS
FLUSH_BYTES = 256 << 20
MASK64 = (1 << 64) - 1


def s64(x):
    """A uint64 constant as the int64 of the same bits (torch has no uint64 math on CUDA)."""
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


C1, C2, GOLDEN = s64(0xFF51AFD7ED558CCD), s64(0xC4CEB9FE1A85EC53), 0x9E3779B97F4A7C15
LOW31 = (1 << 31) - 1


def hash32(x):
    """bench_cuda_attention.cu's hash32 on int64 tensors holding uint64 bits."""
    x = x ^ ((x >> 33) & LOW31)  # logical shift: the arithmetic one, top bits masked off
    x = x * C1  # wraps modulo 2^64 like the uint64 product
    x = x ^ ((x >> 33) & LOW31)
    x = x * C2
    x = x ^ ((x >> 33) & LOW31)
    return x & 0xFFFFFFFF


def fill_bf16(n, seed, device):
    out = torch.empty(n, dtype=torch.int16, device=device)
    step = 1 << 26
    base = s64(seed * GOLDEN)
    for i0 in range(0, n, step):
        i = torch.arange(i0, min(n, i0 + step), dtype=torch.int64, device=device)
        h = hash32(i + base)
        v = (h & 0x8000) | ((126 + ((h >> 8) & 1)) << 7) | 0x40 | (h & 0x3F)
        out[i0:i0 + len(i)] = torch.where(v >= 0x8000, v - 0x10000, v).to(torch.int16)
    return out.view(torch.bfloat16)


def fill_f32(n, seed, device):
    i = torch.arange(n, dtype=torch.int64, device=device)
    h = hash32(i * 7919 + seed)
    return ((h % 2000001).to(torch.float32) - 1e6) * 1e-6 + 1e-3


def time_runs(fn, runs, flush):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    us = []
    for r in range(runs):
        flush.fill_(r & 0xFF)
        a.record()
        fn()
        b.record()
        b.synchronize()
        us.append(a.elapsed_time(b) * 1e3)
    us.sort()
    return us


def triton_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def split_kernel(q_ptr, k_ptr, v_ptr, start_ptr, len_ptr, part_o, part_ml, scale,
                     SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr,
                     GP: tl.constexpr, D: tl.constexpr, N_SPLITS: tl.constexpr):
        lst = tl.program_id(0)
        sp = tl.program_id(1)
        start = tl.load(start_ptr + lst)
        n = tl.load(len_ptr + lst)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (lst * G + g)[:, None] * D + d[None, :], mask=(g < G)[:, None],
                    other=0.0).to(tl.bfloat16)
        m = tl.full([GP], -float("inf"), tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        lo = sp * SPLIT
        hi = tl.minimum(lo + SPLIT, n)
        for j0 in range(lo, hi, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            valid = j < hi
            rows = (start + j).to(tl.int64)
            k = tl.load(k_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale  # [GP, BLOCK_N], log2 domain
            s = tl.where(valid[None, :], s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v)
            m = m_new
        base = (lst * N_SPLITS + sp) * GP + g
        tl.store(part_o + base[:, None] * D + d[None, :], acc)
        tl.store(part_ml + base * 2, m)
        tl.store(part_ml + base * 2 + 1, l)

    @triton.jit
    def merge_kernel(part_o, part_ml, out_ptr, len_ptr, SPLIT: tl.constexpr, G: tl.constexpr,
                     GP: tl.constexpr, D: tl.constexpr, N_SPLITS: tl.constexpr):
        lst = tl.program_id(0)
        n = tl.load(len_ptr + lst)
        used = tl.cdiv(n, SPLIT)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        m = tl.full([GP], -float("inf"), tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for sp in range(0, used):
            base = (lst * N_SPLITS + sp) * GP + g
            pm = tl.load(part_ml + base * 2)
            pl = tl.load(part_ml + base * 2 + 1)
            po = tl.load(part_o + base[:, None] * D + d[None, :])
            m_new = tl.maximum(m, pm)
            a = tl.exp2(m - m_new)
            b = tl.exp2(pm - m_new)
            l = l * a + pl * b
            acc = acc * a[:, None] + po * b[:, None]
            m = m_new
        o = acc / l[:, None]
        tl.store(out_ptr + (lst * G + g)[:, None] * D + d[None, :], o, mask=(g < G)[:, None])

    return split_kernel, merge_kernel


class TritonRagged:
    """Split-K decode over lists packed in one pool: list i is rows [start_i, start_i + n_i)."""

    def __init__(self, lengths, device):
        self.split, self.merge = triton_kernels()
        self.lengths = torch.tensor(lengths, dtype=torch.int32, device=device)
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        self.starts = torch.tensor(starts, dtype=torch.int32, device=device)
        total, n_lists = sum(lengths), len(lengths)
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        # About four programs per SM: splits of a multiple of 64 entries, at most 64 per list.
        longest = max(lengths)
        splits = max(1, min(64, math.ceil(4 * sms / n_lists)))
        self.SPLIT = max(64, math.ceil(longest / splits / 64) * 64)
        self.N_SPLITS = max(1, math.ceil(longest / self.SPLIT))
        self.GP = 16  # tl.dot needs M >= 16: the group's 4 heads padded
        self.part_o = torch.empty(n_lists * self.N_SPLITS * self.GP * DIM, dtype=torch.float32,
                                  device=device)
        self.part_ml = torch.empty(n_lists * self.N_SPLITS * self.GP * 2, dtype=torch.float32,
                                   device=device)
        self.n_lists = n_lists

    def __call__(self, q, k, v, out):
        scale = (1.0 / math.sqrt(DIM)) * 1.4426950408889634
        self.split[(self.n_lists, self.N_SPLITS)](
            q, k, v, self.starts, self.lengths, self.part_o, self.part_ml, scale,
            SPLIT=self.SPLIT, BLOCK_N=64, G=GROUP, GP=self.GP, D=DIM, N_SPLITS=self.N_SPLITS,
            num_warps=4, num_stages=3)
        self.merge[(self.n_lists,)](self.part_o, self.part_ml, out, self.lengths,
                                    SPLIT=self.SPLIT, G=GROUP, GP=self.GP, D=DIM,
                                    N_SPLITS=self.N_SPLITS, num_warps=4)


def flash_varlen(q, k, v, cu_q, cu_k, max_k):
    scale = 1.0 / math.sqrt(DIM)
    r = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, 1, max_k, 0.0, False, False,
                                                scale=scale)
    return r[0]


def reference(qf, kp, vp, starts, lengths, lists):
    """float64 attention of the sampled lists: [len(lists), G, D]."""
    outs = []
    for li in lists:
        s, n = starts[li], lengths[li]
        k = kp[s:s + n].double()
        v = vp[s:s + n].double()
        q = qf[li * GROUP:(li + 1) * GROUP].double()
        w = torch.softmax(q @ k.T / math.sqrt(DIM), dim=-1)
        outs.append(w @ v)
    return torch.stack(outs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-json", required=True)
    ap.add_argument("--dump-dir", required=True)
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--runs", type=int, default=25)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("peers.py: no CUDA device")
    dev = torch.device("cuda")
    bench = json.load(open(a.bench_json))
    cases = bench["cases"]
    max_entries = max(c["entries"] for c in cases)
    max_batch = max(c["batch"] for c in cases)
    t0 = time.time()
    k_pool = fill_bf16(max_entries * DIM, 1, dev).view(max_entries, DIM)
    v_pool = fill_bf16(max_entries * DIM, 2, dev).view(max_entries, DIM)
    q_all = fill_f32(max_batch * HEADS * DIM, 3, dev).view(max_batch, HEADS, DIM)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=dev)
    torch.cuda.synchronize()
    print(f"inputs rebuilt in {time.time() - t0:.1f} s: {max_entries} entries; "
          f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001
        triton_version = f"unavailable: {e}"

    results = []
    for c in cases:
        B, lengths = c["batch"], c["list_lengths"]
        n_lists, total = len(lengths), sum(lengths)
        assert n_lists == B * KV_HEADS and total == c["entries"], c["name"]
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        kp, vp = k_pool[:total], v_pool[:total]
        q = q_all[:B]  # [B, 32, D] f32; kv-head h serves query heads 4h..4h+3
        ours = torch.from_file(os.path.join(a.dump_dir, c["name"] + ".out.bin"), size=B * HEADS * DIM,
                               dtype=torch.float32).to(dev).view(B, HEADS, DIM)
        kv_bytes = total * DIM * 2 * 2
        row = {"name": c["name"], "kv_bytes": kv_bytes, "peers": {}}
        # Reference on a sample of lists: the first, the longest, the shortest, a middle one.
        sample = sorted({0, n_lists // 2, n_lists - 1, max(range(n_lists), key=lambda i: lengths[i]),
                         min(range(n_lists), key=lambda i: lengths[i])})
        qf = q.reshape(B * HEADS, DIM)
        ref = reference(qf, kp, vp, starts, lengths, sample)
        ours_flat = ours.reshape(n_lists, GROUP, DIM)
        row["ekva_vs_reference_max_abs"] = float((ours_flat[sample].double() - ref).abs().max())

        def record(name, fn, output=None, check=True):
            try:
                us = time_runs(fn, a.runs, flush)
                med = us[len(us) // 2]
                entry = {"median_us": med, "min_us": us[0], "max_us": us[-1],
                         "tbs_retained": kv_bytes / (med * 1e-6) / 1e12}
                if output is not None and check:
                    o = output().reshape(n_lists, GROUP, DIM).float()
                    entry["max_abs_vs_ekva"] = float((o - ours_flat).abs().max())
                    entry["max_abs_vs_reference"] = float((o[sample].double() - ref).abs().max())
                elif not check:
                    entry["output_checked"] = False
                row["peers"][name] = entry
            except Exception as e:  # noqa: BLE001
                row["peers"][name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(f"  {c['name']:26s} {name:12s} {json.dumps(row['peers'][name])[:160]}", flush=True)

        # Padded dense layout.
        L = max(lengths)
        dense = all(n == L for n in lengths)
        if dense:
            kd = kp.view(B, KV_HEADS, L, DIM)
            vd = vp.view(B, KV_HEADS, L, DIM)
        else:
            kd = torch.zeros(B, KV_HEADS, L, DIM, dtype=torch.bfloat16, device=dev)
            vd = torch.zeros_like(kd)
            for li in range(n_lists):
                kd[li // KV_HEADS, li % KV_HEADS, :lengths[li]] = kp[starts[li]:starts[li] + lengths[li]]
                vd[li // KV_HEADS, li % KV_HEADS, :lengths[li]] = vp[starts[li]:starts[li] + lengths[li]]
        qd = q.to(torch.bfloat16).view(B, HEADS, 1, DIM)
        row["padded_entries"] = B * KV_HEADS * L
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
            box = {}

            def run(backend=backend, box=box):
                with sdpa_kernel(backend):
                    box["o"] = F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)
            record(name, run, lambda box=box: box["o"].view(B, HEADS, DIM), check=dense)
        del kd, vd

        # Flash varlen, one sequence per (sequence, kv-head).
        qv = q.to(torch.bfloat16).reshape(n_lists, GROUP, DIM)
        kv_k = kp.view(total, 1, DIM)
        kv_v = vp.view(total, 1, DIM)
        cu_q = torch.arange(n_lists + 1, dtype=torch.int32, device=dev)
        cu_k = torch.tensor(starts + [total], dtype=torch.int32, device=dev)
        box = {}

        def run_varlen(box=box):
            box["o"] = flash_varlen(qv, kv_k, kv_v, cu_q, cu_k, L)
        record("flash_varlen", run_varlen, lambda: box["o"])

        # Triton split-K ragged decode (q in f32 as EKVA's kernel takes it).
        out_t = torch.empty(n_lists, GROUP, DIM, dtype=torch.float32, device=dev)
        try:
            tr = TritonRagged(lengths, dev)
            qt = q.reshape(n_lists * GROUP, DIM).contiguous()
            record("triton", lambda: tr(qt, kp, vp, out_t), lambda: out_t)
            row["peers"]["triton"]["split"] = tr.SPLIT
        except Exception as e:  # noqa: BLE001
            row["peers"]["triton"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        results.append(row)
        torch.cuda.empty_cache()

    out = {"bench": "cuda_attention_peers", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "triton": triton_version, "runs": a.runs,
           "timing": "CUDA events, median, L2 flushed by a 256 MB memset before each run",
           "cases": results}
    json.dump(out, open(a.json_out, "w"), indent=1)
    print(f"wrote {a.json_out}")


if __name__ == "__main__":
    main()
