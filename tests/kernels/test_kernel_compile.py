"""Ahead-of-time compilation of every Triton kernel for real GPUs (sm_90 H100, sm_80 A100), no GPU needed.

The interpreter checks what the kernels compute but not that they compile: type rules, layouts, `tl.dot` shapes and
shared memory are only checked by the compiler. This compiles each kernel to a cubin with Triton's bundled ptxas,
specialised as the JIT specialises a launch (unit strides become constants, pointers and the other ints are
16-byte divisible, except those a kernel does not specialise on), with the heuristic default block sizes, and checks that the GEMM loops are software-pipelined
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
    """Compile `fn` for `cuda:cap`; `pointers` maps pointer args to Triton types, other non-constexpr args are i32.

    Every argument is taken as a multiple of 16, as a launch finds the pointers and most sizes, except those the
    kernel does not specialise on (`do_not_specialize`), which a launch never marks so."""
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in fn.arg_names}
    unspecialised = {fn.arg_names[i] if isinstance(i, int) else i for i in fn.do_not_specialize}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if signature[n] != "constexpr" and n not in unspecialised}  # fmt: skip
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=GPUTarget("cuda", cap, 32), options=options)


def _cuobjdump(kernel, flag: str) -> str | None:
    """`cuobjdump flag` of a compiled kernel's cubin, with Triton's bundled cuobjdump; None without it."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(cuobjdump, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        return subprocess.run([cuobjdump, flag, path], capture_output=True, text=True).stdout


def spill_bytes(kernel) -> int | None:
    """Bytes of stack (register spills) of a compiled kernel; None without cuobjdump."""
    usage = _cuobjdump(kernel, "--dump-resource-usage")
    found = None if usage is None else re.search(r"STACK:(\d+)", usage)
    return None if found is None else int(found.group(1))


def spills_in_loops(kernel) -> int | None:
    """Local-memory loads and stores (spill traffic) inside the kernel's loops, from its SASS; None without cuobjdump.

    What a spill costs is where it sits: a value parked on the stack before the K loop and read back in the epilogue
    costs two instructions a launch, one reloaded every K step costs bandwidth in the hot loop. The stack size alone
    does not tell them apart, and it moves between Triton releases (compiled for sm_90, Triton 3.6 parks 8 bytes in
    the 64x256 and 128x128 gate/up tiles on 8 warps that Triton 3.9 keeps in registers). A loop is the span from a
    backward branch's target to the branch.
    """
    sass = _cuobjdump(kernel, "-sass")
    if sass is None:
        return None
    code = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(to, 16), at) for at, op in code for to in re.findall(r"\bBRA\b[^;]*?0x([0-9a-f]+)", op)]
    loops = [(start, end) for start, end in loops if start < end]
    assert loops, f"{kernel.metadata.name}: no loop found in its SASS (has cuobjdump's format changed?)"
    local = [at for at, op in code if re.search(r"\b(LDL|STL)\b", op)]
    return sum(any(start <= at <= end for start, end in loops) for at in local)


@pytest.mark.parametrize("device", ["sm90", "sm80"])
def test_index_kernels_compile(device):
    """Each routing and alignment kernel compiles to a cubin that fits the device's shared memory."""
    cap, smem_bytes = DEVICES[device]
    ids = {"ids_ptr": "*i64", "topk_ids_ptr": "*i64"}
    i32 = "*i32"
    kernels = [compile_kernel(
        _triton_route.route_kernel,
        {"logits_ptr": "*bf16", "bias_ptr": "*fp32", "weights_ptr": "*fp32", "scores_ptr": "*fp32",
         "partial_counts_ptr": i32, **ids},
        dict(NUM_EXPERTS=64, TOP_K=8, HAS_BIAS=True, BLOCK_T=32, BLOCK_E=64, BLOCK_K=8, stride_le=1),
        cap,
    )]  # fmt: skip
    kernels.append(compile_kernel(_triton_route.reduce_counts_kernel, {"partial_counts_ptr": i32, "counts_ptr": "*i64"},
                   dict(NUM_EXPERTS=64, BLOCK_E=64, BLOCK_P=64), cap))  # fmt: skip
    kernels.append(compile_kernel(_triton_align.count_kernel, {"chunk_counts_ptr": i32, **ids},
                   dict(NUM_EXPERTS=64, BLOCK_E=64, CHUNK=64), cap))  # fmt: skip
    kernels.append(compile_kernel(_triton_align.scan_kernel,
                   {"chunk_counts_ptr": i32, "chunk_base_ptr": i32, "seg_ptr": i32, "num_post_pad_ptr": i32,
                    "order_ptr": i32},
                   dict(BLOCK_E=64, BLOCK_C=64, BLOCK_SIZE_M=64), cap))  # fmt: skip
    for scan in (False, True):  # the scan in its own launch, or in every scatter program
        kernels.append(compile_kernel(_triton_align.scatter_kernel,
                       {"chunk_counts_ptr": i32, "chunk_base_ptr": i32, "seg_ptr": i32, "num_post_pad_ptr": i32,
                        "order_ptr": i32, "sorted_ids_ptr": i32, "expert_ids_ptr": i32, **ids},
                       dict(NUM_EXPERTS=64, BLOCK_E=64, CHUNK=64, BLOCK_SIZE_M=64, SCAN=scan, BLOCK_C=64),
                       cap))  # fmt: skip
    kernels.append(compile_kernel(_triton_swiglu.combine_kernel, {"y_ptr": "*bf16", "out_ptr": "*bf16"},
                   dict(TOP_K=8, BLOCK_T=16, BLOCK_D=256), cap))  # fmt: skip
    for k in kernels:
        assert k.asm.get("cubin"), f"{k.metadata.name}: no cubin for sm_{cap}"
        assert k.metadata.shared <= smem_bytes, f"{k.metadata.name}: {k.metadata.shared} B shared > {smem_bytes}"


# (device, dtype, tokens per launch): the default tiles for a small and a large batch.
GEMM_CASES = [("sm90", torch.bfloat16, 16384), ("sm90", torch.bfloat16, 256), ("sm80", torch.float16, 16384),
              ("sm80", torch.float16, 256), ("sm90", torch.float32, 2048), ("sm90", torch.float32, 256)]  # fmt: skip


def compile_gemms(cfg, dtype: torch.dtype, cap: int, weight_descriptor: bool = False, add_to_token: bool = False,
                  device_descriptor: bool = False):  # fmt: skip
    """(gate/up kernel, down kernel) compiled for `cuda:cap` with the tiles of `cfg`, specialised as a launch: weight
    tiles by pointer, or through a descriptor from the host (`weight_descriptor`) or made in the kernel
    (`device_descriptor`)."""
    host_desc = weight_descriptor and not device_descriptor
    t = TL_TYPES[dtype]
    index = {"sorted_ids_ptr": "*i32", "widths_ptr": "*i32"}
    meta = dict(
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        BLOCK_SIZE_M=cfg.block_size_m,
        BLOCK_SIZE_K=cfg.block_size_k,
        GROUP_SIZE_M=cfg.group_size_m,
    )
    up = compile_kernel(
        _triton_swiglu.up_kernel,
        {"x_ptr": f"*{t}", "w_up_ptr": f"*{t}", "h_ptr": f"*{t}", "col_starts_ptr": "*i64", "seg_ptr": "*i32",
         "order_ptr": "*i32", "w_up_desc": f"tensordesc<{t}[{cfg.block_size_k}, {cfg.block_size_n}]>", **index},
        dict(TOP_K=2, NUM_EXPERTS=8, BLOCK_E=8, WIDTH_ALIGN=16, stride_xd=1, stride_wn=1, stride_hn=1,
             BLOCK_SIZE_N=cfg.block_size_n, W_DESC=weight_descriptor, DEVICE_DESC=device_descriptor,
             **({} if host_desc else dict(w_up_desc=None)), **meta),
        cap, cfg.num_warps, cfg.num_stages,
    )  # fmt: skip
    down = compile_kernel(
        _triton_swiglu.down_kernel,
        {"h_ptr": f"*{t}", "w_down_ptr": f"*{t}", "y_ptr": f"*{t}", "topk_weights_ptr": f"*{t}",
         "row_starts_ptr": "*i64", "expert_ids_ptr": "*i32", "num_post_pad_ptr": "*i32",
         "w_down_desc": f"tensordesc<{t}[{cfg.block_size_k}, {cfg.down_block_size_n}]>", **index},
        dict(WIDTH_ALIGN=16, stride_hk=1, stride_wn=1, stride_yn=1, BLOCK_SIZE_N=cfg.down_block_size_n,
             W_DESC=weight_descriptor, DEVICE_DESC=device_descriptor, **({} if host_desc else dict(w_down_desc=None)),
             ADD_TO_TOKEN=add_to_token, TOP_K=2 if add_to_token else 1, **meta),
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
        if device == "sm90":  # the target GPU: no spills in the default tiles' K loop (A100's 128x128 has some)
            assert spills_in_loops(k) in (0, None), f"{k.metadata.name}: {spill_bytes(k)} B of stack, used in its loop"


@pytest.mark.parametrize("device_descriptor", [False, True], ids=["host", "device"])
def test_weight_descriptors_compile_to_pipelined_bulk_copies_on_hopper(device_descriptor):
    """Weight tiles through descriptors (TMA), from the host or made by each program (`DEVICE_DESCRIPTORS`): bulk
    tensor copies in a pipelined K loop, in the shared memory of an H100, the made ones in Triton's global scratch."""
    cap, smem_bytes = DEVICES["sm90"]
    cfg = default_config(16384, num_experts=8, top_k=2, dtype=torch.bfloat16, smem_bytes=smem_bytes)
    for k in compile_gemms(cfg, torch.bfloat16, cap, weight_descriptor=True, device_descriptor=device_descriptor):
        assert k.metadata.shared <= smem_bytes, f"{k.metadata.name}: {k.metadata.shared} B shared > {smem_bytes}"
        assert "cp.async.bulk.tensor" in k.asm["ptx"], f"{k.metadata.name}: no TMA copies"
        assert re.search("async_tma_copy_global_to_local", k.asm["ttgir"]), f"{k.metadata.name}: no TMA loads"
        assert re.search("async_copy_global_to_local", k.asm["ttgir"]), f"{k.metadata.name}: x or h not pipelined"
        made = "tensormap.replace" in k.asm["ptx"]  # the descriptor written by the program
        assert made == device_descriptor and (k.metadata.global_scratch_size > 0) == device_descriptor, k.metadata.name


# The register budget of the tuning space (kernels.configs.tuning.fits_registers), on both sides of its line.
BUDGET_CASES = [
    (MoeKernelConfig(64, 256, 64, 8, 8, 3), True),  # 128 accumulator registers a thread, wgmma
    (MoeKernelConfig(128, 128, 64, 8, 8, 3), True),
    (MoeKernelConfig(32, 256, 64, 8, 8, 3), True),  # 64, mma.sync
    (MoeKernelConfig(128, 128, 64, 8, 4, 3), False),  # 256: spills in the K loop
    (MoeKernelConfig(64, 256, 64, 8, 16, 3), True),  # 64 of the 128 registers a thread has at 16 warps
    (MoeKernelConfig(128, 256, 64, 8, 16, 2), False),  # 128 of 128: spills in the K loop
]


@pytest.mark.parametrize(("cfg", "fits"), BUDGET_CASES)
def test_register_budget_of_the_tuning_space(cfg, fits):
    assert fits_registers(cfg.block_size_m, cfg.block_size_n, cfg.num_warps) == fits
    up, _ = compile_gemms(cfg, torch.bfloat16, DEVICES["sm90"][0])
    in_loop = spills_in_loops(up)
    if in_loop is None:
        pytest.skip("no cuobjdump beside this Triton to read the spills")
    assert (in_loop == 0) == fits, (
        f"{cfg}: {spill_bytes(up)} B of stack, {in_loop} loads/stores of it in the K loop "
        f"(budget says {'fits' if fits else 'spills'})"
    )
    # Hopper's matrix instructions need 64-row tiles per warpgroup: below that the dot runs on mma.sync.
    assert ("wgmma.mma_async" in up.asm["ptx"]) == (cfg.block_size_m >= 64)


@pytest.mark.parametrize("cfg", [MoeKernelConfig(128, 128, 64, 8, 8, 4, 256),
                                 MoeKernelConfig(64, 128, 64, 8, 4, 3, 256)])  # fmt: skip
def test_wide_down_tile_takes_what_the_gate_up_tile_takes(cfg):
    """The down GEMM at twice the columns (the tuner's BLOCK_SIZE_N_DOWN candidates) fits where the gate/up tile fits:
    no more shared memory than it, no spills in the K loop, and still on wgmma."""
    up, down = compile_gemms(cfg, torch.bfloat16, DEVICES["sm90"][0])
    assert down.metadata.shared <= up.metadata.shared <= DEVICES["sm90"][1]
    assert "wgmma.mma_async" in down.asm["ptx"]
    if spills_in_loops(down) is None:
        pytest.skip("no cuobjdump beside this Triton to read the spills")
    assert spills_in_loops(up) == 0 and spills_in_loops(down) == 0, (
        f"{cfg}: {spill_bytes(up)} and {spill_bytes(down)} B of stack, used in the K loop"
    )


@pytest.mark.parametrize(
    ("dtype", "weight_descriptor"),
    [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, False), (torch.float32, False)],
)
def test_down_gemm_adding_into_token_rows_uses_vector_reductions(dtype, weight_descriptor):
    """The down GEMM at top-2 on Hopper (`swiglu.use_atomic_top2`), compiled for sm_90 (bf16 and fp16 with the H100's
    tuned 8k-16k tiles, bf16 also with its weight tiles through a tensor descriptor as passes of 65536 slots and more
    load them, fp32 with the default tiles): its epilogue adds with 16-byte vector atomics (`...v8.bf16`, `v8.f16`,
    `v4.f32`), not an atomic a value; no spills in its K loop. Triton 3.9 emits reductions (`red`, no old values
    returned), 3.6 `atom` whose old values go unused."""
    cap, smem_bytes = DEVICES["sm90"]
    if dtype == torch.float32:
        cfg = default_config(16384, num_experts=8, top_k=2, dtype=dtype, smem_bytes=smem_bytes)
    else:
        cfg = MoeKernelConfig(128, 128, 64, 8, 8, 4, 256)
    _, down = compile_gemms(cfg, dtype, cap, weight_descriptor=weight_descriptor, add_to_token=True)
    ptx = down.asm["ptx"]
    vector = {torch.bfloat16: "v8.bf16", torch.float16: "v8.f16", torch.float32: "v4.f32"}[dtype]
    adds = re.findall(r"\b(?:red|atom)\.global\.gpu\.relaxed\.add\.(?:noftz\.)?([\w.]+)", ptx)
    assert adds and set(adds) == {vector}, f"atomic adds {sorted(set(adds))}, not all {vector}"
    assert "st.global" not in ptx
    assert ("wgmma.mma_async" in ptx) == (dtype != torch.float32)  # fp32 products are exact: no tensor cores
    assert ("cp.async.bulk.tensor" in ptx) == weight_descriptor  # TMA loads of the weight tiles
    if spills_in_loops(down) is not None:
        assert spills_in_loops(down) == 0, f"{spill_bytes(down)} B of stack, used in the K loop"


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

    up_args = lambda numel, pid_m: [bf16, bf16, None, bf16, i32, i32, i32, i32, i64, numel, 1024, 4096,  # noqa: E731
                                    1024, 1, 4096, 1, 2048, 1]  # fmt: skip
    down_args = lambda numel, pid_m: [bf16, bf16, None, bf16, bf16, i32, i32, i32, i32, i64, numel, 1024, 2048,  # noqa: E731
                                      pid_m, 8, 2048, 1, 1024, 1, 1024, 1]  # fmt: skip
    up_meta = dict(TOP_K=2, NUM_EXPERTS=8, BLOCK_E=8, WIDTH_ALIGN=16, W_DESC=False, **meta)
    assert len(variants(_triton_swiglu.up_kernel, up_args, up_meta)) == 1
    assert len(variants(_triton_swiglu.down_kernel, down_args, dict(WIDTH_ALIGN=16, W_DESC=False, **meta))) == 1


def test_l2_probe_reads_past_l1():
    """benchmarks/_l2_probe.py times L2, so its loads must skip L1 (`ld.global.cg`) and vectorise."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from _l2_probe import read_kernel

    ptx = compile_kernel(read_kernel, {"src_ptr": "*bf16", "out_ptr": "*fp32"}, dict(REPEATS=4, BLOCK=4096),
                         DEVICES["sm90"][0], num_warps=8).asm["ptx"]  # fmt: skip
    assert re.search(r"ld\.global\.cg\.v4", ptx), "the probe's loads are not 16-byte L2-only loads"
