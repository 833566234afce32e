#!/usr/bin/env python3
"""Rewrites src/cuda/attention.cu into host C++ for tools/cuda_emu (verification only).

Kernel launches become emu_launch() calls (one host thread per CUDA thread, barriers for
__syncthreads and warp shuffles), cp.async becomes a synchronous copy (zero-fill kept),
dynamic shared memory a NaN-poisoned buffer per block, ldmatrix and mma.sync (TF32) their
PTX fragment semantics over the warp's lanes. What this checks: indexing, fragment layouts,
chunk walks, masks, the stage rotation, merges and scores. What it cannot: timing of
the async copies, real races, performance (compute-sanitizer and the device do that).
"""
import re
import sys

src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()
s = s.replace("extern __shared__ __align__(16) unsigned char smem[];", "unsigned char* smem = emu_smem();")
# Static shared arrays: one copy, as the emulator runs a grid's blocks one at a time.
s = re.sub(r"(?<!extern )__shared__ (float \w+\[)", r"static \1", s)


def replace_body(name, body):
    global s
    m = re.search(r"(__device__ __forceinline__ \w+ " + name + r"\([^)]*\) \{)(.*?)\n\}\n", s, re.S)
    if not m:
        sys.exit(f"patch_kernels: {name} not found")
    s = s[: m.start()] + m.group(1) + body + "\n}\n" + s[m.end():]


replace_body("cp_async16", " if (valid) std::memcpy(smem, gmem, 16); else std::memset(smem, 0, 16);")
replace_body("cp_async4", " if (valid) std::memcpy(smem, gmem, 4); else std::memset(smem, 0, 4);")
replace_body("ldmatrix_x4", " emu_ldmatrix_x4(r0, r1, r2, r3, row, false);")
replace_body("ldmatrix_x4_trans", " emu_ldmatrix_x4(r0, r1, r2, r3, row, true);")
replace_body("mma_tf32", " emu_mma_tf32(c0, c1, c2, c3, a0, 0u, a2, 0u, b0, b1);")
replace_body("to_tf32", " return emu_to_tf32(x);")
s = "\n".join(line for line in s.split("\n") if "asm volatile" not in line)
s = re.sub(r"([\w:]+(?:<[^<>]*>)?)<<<([^,]+),\s*([^,]+),\s*([^,]+),\s*stream>>>\((\w+)\)",
           r"emu_launch(\1, \2, \3, \4, \5)", s)
if "<<<" in s or "asm" in s:
    sys.exit("patch_kernels: a launch or inline asm was left unpatched")
open(dst, "w").write(s)
