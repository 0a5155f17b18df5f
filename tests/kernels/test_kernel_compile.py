"""Ahead-of-time compilation of every Triton kernel for real GPUs (sm_90 H100, sm_80 A100), no GPU needed.

The interpreter checks what the kernels compute but not that they compile: type rules, layouts, `tl.dot` shapes and
shared memory are only checked by the compiler. This compiles each kernel to a cubin with Triton's bundled ptxas,
specialised as the JIT specialises a launch (unit strides become constants, pointers and the other ints are
16-byte divisible), with the heuristic default block sizes, and checks that the GEMM loops are software-pipelined
(async copies) and that the shared memory fits the device. WIDTH_ALIGN=16: the runtime's widths are multiples of 16
(without the hint the gate/up columns of an expert have unknown alignment, loads do not vectorise, and the up
kernel spills registers).

Not marked `triton`: under TRITON_INTERPRET=1 the kernels are interpreted functions that cannot be compiled, so this
runs in the main test run (marked `slow`, ~30 s on 2 cores) and skips under the interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import _triton_align, _triton_route, _triton_swiglu  # noqa: E402
from kernels._triton import interpreting  # noqa: E402
from kernels.configs import MoeKernelConfig, default_config  # noqa: E402
from kernels.configs.tuning import fits_registers  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset"),
    pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1: kernels are interpreted and cannot be compiled"),
]

# (compute capability, shared memory per block opt-in in bytes): H100 SXM and A100, from their CUDA device queries.
DEVICES = {"sm90": (90, 232448), "sm80": (80, 166912)}
TL_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def compile_kernel(fn, pointers: dict[str, str], constexprs: dict, cap: int, num_warps: int = 4, num_stages: int = 3):
    """Compile `fn` for `cuda:cap`; `pointers` maps pointer args to Triton types, other non-constexpr args are i32."""
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if signature[n] != "constexpr"}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=GPUTarget("cuda", cap, 32), options=options)


def spill_bytes(kernel) -> int | None:
    """Bytes of stack (register spills) of a compiled kernel, from Triton's bundled cuobjdump; None without it."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(cuobjdump, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    found = re.search(r"STACK:(\d+)", usage)
    return None if found is None else int(found.group(1))


@pytest.mark.parametrize("device", ["sm90", "sm80"])
def test_index_kernels_compile(device):
    cap, _ = DEVICES[device]
    ids = {"ids_ptr": "*i64", "topk_ids_ptr": "*i64"}
    i32 = "*i32"
    compile_kernel(
        _triton_route.route_kernel,
        {"logits_ptr": "*bf16", "bias_ptr": "*fp32", "weights_ptr": "*fp32", "scores_ptr": "*fp32",
         "partial_counts_ptr": i32, **ids},
        dict(NUM_EXPERTS=64, TOP_K=8, HAS_BIAS=True, BLOCK_T=32, BLOCK_E=64, BLOCK_K=8, stride_le=1),
        cap,
    )  # fmt: skip
    compile_kernel(_triton_route.reduce_counts_kernel, {"partial_counts_ptr": i32, "counts_ptr": "*i64"},
                   dict(NUM_EXPERTS=64, BLOCK_E=64, BLOCK_P=64), cap)  # fmt: skip
    compile_kernel(_triton_align.count_kernel, {"chunk_counts_ptr": i32, **ids},
                   dict(NUM_EXPERTS=64, BLOCK_E=64, CHUNK=64), cap)  # fmt: skip
    compile_kernel(_triton_align.scan_kernel,
                   {"chunk_counts_ptr": i32, "chunk_base_ptr": i32, "seg_ptr": i32, "num_post_pad_ptr": i32},
                   dict(BLOCK_E=64, BLOCK_C=64, BLOCK_SIZE_M=64), cap)  # fmt: skip
    compile_kernel(_triton_align.scatter_kernel,
                   {"chunk_base_ptr": i32, "seg_ptr": i32, "sorted_ids_ptr": i32, "expert_ids_ptr": i32, **ids},
                   dict(NUM_EXPERTS=64, BLOCK_E=64, CHUNK=64, BLOCK_SIZE_M=64), cap)  # fmt: skip
    compile_kernel(_triton_swiglu.combine_kernel, {"y_ptr": "*bf16", "out_ptr": "*bf16"},
                   dict(TOP_K=8, BLOCK_T=16, BLOCK_D=256), cap)  # fmt: skip


# (device, dtype, tokens per launch): the default tiles for a small and a large batch.
GEMM_CASES = [("sm90", torch.bfloat16, 16384), ("sm90", torch.bfloat16, 256), ("sm80", torch.float16, 16384),
              ("sm80", torch.float16, 256), ("sm90", torch.float32, 2048), ("sm90", torch.float32, 256)]  # fmt: skip


def compile_gemms(cfg, dtype: torch.dtype, cap: int):
    """(gate/up kernel, down kernel) compiled for `cuda:cap` with the tiles of `cfg`, specialised as a launch."""
    t = TL_TYPES[dtype]
    index = {"sorted_ids_ptr": "*i32", "expert_ids_ptr": "*i32", "num_post_pad_ptr": "*i32", "widths_ptr": "*i32"}
    meta = dict(
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        BLOCK_SIZE_M=cfg.block_size_m,
        BLOCK_SIZE_K=cfg.block_size_k,
        GROUP_SIZE_M=cfg.group_size_m,
    )
    up = compile_kernel(
        _triton_swiglu.up_kernel,
        {"x_ptr": f"*{t}", "w_up_ptr": f"*{t}", "h_ptr": f"*{t}", "col_starts_ptr": "*i64", **index},
        dict(TOP_K=2, WIDTH_ALIGN=16, stride_xd=1, stride_wn=1, stride_hn=1, BLOCK_SIZE_N=cfg.block_size_n, **meta),
        cap, cfg.num_warps, cfg.num_stages,
    )  # fmt: skip
    down = compile_kernel(
        _triton_swiglu.down_kernel,
        {"h_ptr": f"*{t}", "w_down_ptr": f"*{t}", "y_ptr": f"*{t}", "topk_weights_ptr": f"*{t}",
         "row_starts_ptr": "*i64", **index},
        dict(WIDTH_ALIGN=16, stride_hk=1, stride_wn=1, stride_yn=1, BLOCK_SIZE_N=cfg.down_block_size_n, **meta),
        cap, cfg.num_warps, cfg.num_stages,
    )  # fmt: skip
    return up, down


@pytest.mark.parametrize(("device", "dtype", "num_tokens"), GEMM_CASES)
def test_grouped_gemms_compile_pipelined(device, dtype, num_tokens):
    cap, smem_bytes = DEVICES[device]
    cfg = default_config(num_tokens, num_experts=8, top_k=2, dtype=dtype, smem_bytes=smem_bytes)
    for k in compile_gemms(cfg, dtype, cap):
        assert k.metadata.shared <= smem_bytes, f"{k.metadata.name}: {k.metadata.shared} B shared > {smem_bytes}"
        assert re.search("async_copy_global_to_local", k.asm["ttgir"]), f"{k.metadata.name}: K loop not pipelined"
        if device == "sm90":  # the target GPU: the default tiles must not spill (A100 spills a little at 128x128)
            assert spill_bytes(k) in (0, None), f"{k.metadata.name}: spills {spill_bytes(k)} B of registers"


# The register budget of the tuning space (kernels.configs.tuning.fits_registers), on both sides of its line.
BUDGET_CASES = [
    (MoeKernelConfig(64, 256, 64, 8, 8, 3), True),  # 128 accumulator registers a thread, wgmma
    (MoeKernelConfig(128, 128, 64, 8, 8, 3), True),
    (MoeKernelConfig(32, 256, 64, 8, 8, 3), True),  # 64, mma.sync
    (MoeKernelConfig(128, 128, 64, 8, 4, 3), False),  # 256: spills
    (MoeKernelConfig(64, 256, 64, 8, 16, 3), True),  # 64 of the 128 registers a thread has at 16 warps
    (MoeKernelConfig(128, 256, 64, 8, 16, 2), False),  # 128 of 128: spills
]


@pytest.mark.parametrize(("cfg", "fits"), BUDGET_CASES)
def test_register_budget_of_the_tuning_space(cfg, fits):
    assert fits_registers(cfg.block_size_m, cfg.block_size_n, cfg.num_warps) == fits
    up, _ = compile_gemms(cfg, torch.bfloat16, DEVICES["sm90"][0])
    spilled = spill_bytes(up)
    if spilled is None:
        pytest.skip("no cuobjdump beside this Triton to read the spills")
    assert (spilled == 0) == fits, f"{cfg}: {spilled} B of stack (budget says {'fits' if fits else 'spills'})"
    # Hopper's matrix instructions need 64-row tiles per warpgroup: below that the dot runs on mma.sync.
    assert ("wgmma.mma_async" in up.asm["ptx"]) == (cfg.block_size_m >= 64)


@pytest.mark.parametrize("cfg", [MoeKernelConfig(128, 128, 64, 8, 8, 4, 256),
                                 MoeKernelConfig(64, 128, 64, 8, 4, 3, 256)])  # fmt: skip
def test_wide_down_tile_takes_what_the_gate_up_tile_takes(cfg):
    """The down GEMM at twice the columns (the tuner's BLOCK_SIZE_N_DOWN candidates) fits where the gate/up tile fits:
    no more shared memory than it, no spills, and still on wgmma."""
    up, down = compile_gemms(cfg, torch.bfloat16, DEVICES["sm90"][0])
    assert down.metadata.shared <= up.metadata.shared <= DEVICES["sm90"][1]
    assert "wgmma.mma_async" in down.asm["ptx"]
    if spill_bytes(down) is None:
        pytest.skip("no cuobjdump beside this Triton to read the spills")
    assert spill_bytes(up) == 0 and spill_bytes(down) == 0, f"{cfg}: spills {spill_bytes(up)}, {spill_bytes(down)} B"


def test_batch_sizes_share_one_compiled_variant():
    """Token counts and grid sizes are not specialised on, so a new batch size reuses the compiled GEMMs.

    Triton compiles a separate variant for each pattern of int arguments that are 1 or divisible by 16; for the
    sizes that change every batch that would mean a compile (seconds) in the middle of a measured episode. This
    binds the launch arguments as the JIT does, for three batch sizes, and compares the specialisations.
    """
    try:
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as exc:  # the binder is Triton-internal; without it there is nothing to check here
        pytest.skip(f"this Triton has no JIT binder to inspect ({exc})")
    backend = make_backend(GPUTarget("cuda", 90, 32))
    bf16, i32, i64 = (torch.empty(1, dtype=t) for t in (torch.bfloat16, torch.int32, torch.int64))
    meta = dict(DOT_PRECISION="tf32", BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=8)

    def variants(kernel, make_args, constexprs) -> set:
        bind = create_function_from_signature(kernel.signature, kernel.params, backend)
        seen = set()
        for numel, num_pid_m in ((2048, 48), (2050, 41), (1, 1)):  # divisible by 16, neither, both equal to 1
            spec = bind(*make_args(numel, num_pid_m), **constexprs)[1]
            seen.add(tuple(map(str, spec)))
        return seen

    up_args = lambda numel, pid_m: [bf16, bf16, bf16, i32, i32, i32, i32, i64, numel, 1024, pid_m, 16,  # noqa: E731
                                    1024, 1, 4096, 1, 2048, 1]  # fmt: skip
    down_args = lambda numel, pid_m: [bf16, bf16, bf16, bf16, i32, i32, i32, i32, i64, numel, 1024, pid_m, 8,  # noqa: E731
                                      2048, 1, 1024, 1, 1024, 1]  # fmt: skip
    assert len(variants(_triton_swiglu.up_kernel, up_args, dict(TOP_K=2, WIDTH_ALIGN=16, **meta))) == 1
    assert len(variants(_triton_swiglu.down_kernel, down_args, dict(WIDTH_ALIGN=16, **meta))) == 1
