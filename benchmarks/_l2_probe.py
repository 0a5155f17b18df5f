"""The rate at which a GPU's SMs read from its L2 cache: the roof of the MoE kernels' operand traffic.

`benchmarks/moe_kernels.py` counts the bytes that every program of the grouped GEMMs loads into its SM
(`_moe_targets.operand_bytes`); at their tile shapes most of them come from L2, not HBM. This times a read of a
buffer that fits in L2, many times over, by programs on every SM, with loads that skip L1 (`.cg`), so that its
rate is L2's: the benchmark records it beside the kernels' own rate.
"""

from __future__ import annotations

import triton
import triton.language as tl


# `numel` is specialised on: a launch then knows it is a multiple of 16 (the probe's buffer is), so the masked loads
# vectorise. Not specialised on, each thread loaded 2 bytes at a time, and an H100 read at 0.89 TB/s (2026-11-24).
@triton.jit(do_not_specialize=["num_programs"])
def read_kernel(src_ptr, out_ptr, numel, num_programs, REPEATS: tl.constexpr, BLOCK: tl.constexpr):
    """out[p] = REPEATS x the sum of program p's strided share of src (every element read REPEATS times)."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(REPEATS):
        for start in range(pid * BLOCK, numel, num_programs * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(src_ptr + offs, mask=offs < numel, other=0.0, cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def read_sum(src, num_programs: int, repeats: int, block: int = 4096):
    """fp32 [num_programs] partial sums of `src` (1-D, contiguous), read `repeats` times: the probe's launch."""
    import torch

    out = torch.empty(num_programs, dtype=torch.float32, device=src.device)
    read_kernel[(num_programs,)](src, out, src.numel(), num_programs, REPEATS=repeats, BLOCK=block, num_warps=8)
    return out


def l2_read_bytes_per_s(buffer_mb: int = 16, repeats: int = 50, warmup_ms: int = 10, rep_ms: int = 50) -> float:
    """Bytes per second read from L2 on the current CUDA device (a `buffer_mb` MB bf16 buffer, well under an H100's
    50 MB L2, read `repeats` times a launch; the first read of each launch comes from HBM after do_bench's flush)."""
    import torch

    src = torch.ones(buffer_mb * 2**19, dtype=torch.bfloat16, device="cuda")
    programs = 4 * torch.cuda.get_device_properties(src.device).multi_processor_count
    ms = triton.testing.do_bench(lambda: read_sum(src, programs, repeats), warmup=warmup_ms, rep=rep_ms,
                                 return_mode="median")  # fmt: skip
    return repeats * src.numel() * src.element_size() / (ms / 1e3)
