#!/usr/bin/env python3
"""Rewrites the CUDA backend's small kernels (src/cuda/{embedding,elementwise,rope,route,
matmul,rmsnorm}.cu) into host C++ for tools/cuda_emu (verification only).

Kernel launches of any signature become emu_launch_args() calls (one host thread per CUDA
thread, a block's threads at once, blocks one after another); static shared arrays become
function statics (one copy: the emulator runs a grid's blocks one at a time). What this
checks: indexing, grid-stride bounds, reductions and barriers, the fault word, the
router's ranking, the matmul's mapping onto cuBLAS (tools/cuda_emu/cublas_v2.h). What it
cannot: real races, the device's float functions (expf, sincos) or cuBLAS's arithmetic.
"""
import re
import sys

for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    s = open(src).read()
    s = re.sub(r"(?<!extern )__shared__ ", "static ", s)
    s = re.sub(r"([\w:]+(?:<[^<>]*>)?)<<<([^,]+),\s*([^,]+),\s*([^,]+),\s*stream>>>\(",
               r"emu_launch_args(\1, \2, \3, \4, ", s)
    if "<<<" in s or "asm" in s:
        sys.exit(f"patch_ops: a launch or inline asm was left unpatched in {src}")
    open(dst, "w").write(s)
