"""Grouped SwiGLU over heterogeneous experts, with tokens grouped by expert and scattered back weighted.

Weight layout (all experts concatenated, no padding):
- `w_up`: [d_model, sum_e 2 f_e]; expert e owns columns [2 F_e, 2 F_e + 2 f_e) where F_e = f_0 + ... + f_{e-1};
  the first f_e of them are the gate projection, the next f_e the up projection.
- `w_down`: [sum_e f_e, d_model]; expert e owns rows [F_e, F_e + f_e).

`grouped_swiglu_reference` (PyTorch, differentiable) and `grouped_swiglu_triton` (aligned grouped GEMMs; inference
only) take the same arguments and agree to rounding.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels._triton import cdiv, dot_precision, next_power_of_2, require_triton
from kernels.align import align_triton_segments, segment_order_of
from kernels.configs import MoeKernelConfig, get_config

# Token-expert slots (tokens x k) per pass of the Triton path: bounds the intermediates (slots x (max f_e + d)
# elements) as vLLM's VLLM_FUSED_MOE_CHUNK_SIZE (32768 tokens) does at k = 8. Counted in slots, not tokens, so that
# top-1 and top-2 launches are not cut into passes with a fraction of the slots per expert: on the H100, 64 experts
# at top-1 over 65536 tokens ran as two 32768-token passes (512 slots an expert, so 64-row default tiles) at
# 0.39-0.42 of a dense GEMM, where the same 65536 slots at top-8 in one pass (1024 an expert, 128-row tiles) ran
# at 0.55-0.60 (results/gpu/kernels/grid.json, d_model 1024 and 4096). Each pass aligns, runs both GEMMs and
# combines its own tokens.
SLOTS_PER_PASS = 262144
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Both GEMMs' weight tiles through tensor descriptors (TMA on Hopper) where the layout allows: True or False forces
# them on or off; None, the default, takes them on a GPU of compute capability 9.0 or later for passes of at least
# TMA_MIN_SLOTS token-expert slots (`use_tma_weights`). Measured on an H100 with Triton 3.6
# (results/gpu/kernels/2026-11-24-width-fix/): replayed from a CUDA graph, the call took a median 5% less time with
# them over 54 cases of 8k-64k tokens (0.85x-1.12x); but its host enqueue took a median 0.1 ms longer, up to about
# 0.35 ms (Triton encodes each descriptor at launch), which loses where the host bounds the call. From 65536 slots a
# pass (0.75 ms of GPU work and more there) the eager call was faster in 41 of 42 cases over two grids.
TMA_WEIGHTS: bool | None = None
TMA_MIN_SLOTS = 65536
# Experimental, off: where the weight tiles go through tensor descriptors, each GEMM program makes its descriptor
# (`tl.make_tensor_descriptor`, in a scratch buffer Triton asks `triton.set_allocator`'s allocator for: this sets one of
# torch's caching allocator) instead of Triton's launcher encoding one on the host at every launch, which is what
# made TMA lose at small passes (above). Untimed: `benchmarks/moe_kernels.py --tma-weights on --device-descriptors`
# times it against the host's descriptors.
DEVICE_DESCRIPTORS = False
# At k = 2 the down launch adds each token's two weighted rows into the zeroed output (16-byte atomic adds) instead
# of writing y for the combine kernel: the same result, bit for bit (see `_triton_swiglu.down_kernel`), a fill of the
# output in place of the combine launch, and no round trip of y through memory. True or False forces it on or off;
# None, the default, takes it on a GPU of compute capability 9.0 or later (`use_atomic_top2`: native vector bf16 and
# fp16 atomics). Measured on an H100 with Triton 3.6, in one call beside the combine (results/gpu/kernels/
# 2026-11-24-width-fix/ab_atomic_top2.json against grid.json; E 8, 16 and 64, d_model 1024 and 4096, 8k-64k tokens):
# replayed from a CUDA graph, a geometric mean of 0.986x the combine's time (0.93x-1.02x over 18 cases); eager,
# 0.97x (0.68x-1.14x), the most where the host bounds the call: 0.72x and 0.68x at 8k tokens, d_model 1024, 8 and 16
# experts, one Triton launch fewer. Not at k > 2: the order of the adds would then change the rounding from run to
# run.
ATOMIC_TOP2: bool | None = None


def use_tma_weights(device: torch.device, slots: int) -> bool:
    """Whether a pass of `slots` token-expert slots on `device` loads its weight tiles through tensor descriptors:
    `TMA_WEIGHTS` where it is set, else from `TMA_MIN_SLOTS` on an NVIDIA GPU of compute capability 9.0 or later (not
    ROCm, whose capabilities number differently) with a Triton that has host tensor descriptors (3.4 and later)."""
    if TMA_WEIGHTS is not None:
        return bool(TMA_WEIGHTS)
    if device.type != "cuda" or slots < TMA_MIN_SLOTS or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9 and _has_tensor_descriptors()


def use_atomic_top2(device: torch.device, top_k: int) -> bool:
    """Whether the down launch adds a top-2 token's rows into the output itself, without the combine kernel:
    `ATOMIC_TOP2` where it is set, else on an NVIDIA GPU of compute capability 9.0 or later (not ROCm); never at
    k != 2."""
    if top_k != 2:
        return False
    if ATOMIC_TOP2 is not None:
        return bool(ATOMIC_TOP2)
    if device.type != "cuda" or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


@functools.cache
def _has_tensor_descriptors() -> bool:
    try:
        return importlib.util.find_spec("triton.tools.tensor_descriptor") is not None
    except ModuleNotFoundError:  # no Triton at all
        return False


def tokens_per_pass(num_tokens: int, top_k: int) -> int:
    """Tokens per pass of `grouped_swiglu_triton` for `num_tokens` at `top_k` (at most `SLOTS_PER_PASS` / k), which is
    also the token count its block sizes are looked up by (`kernels.configs.get_config`)."""
    return min(num_tokens, max(1, SLOTS_PER_PASS // top_k))


def expert_offsets(widths: tuple[int, ...] | list[int]) -> list[int]:
    """Start row of each expert in `w_down` (prefix sums of widths); length E + 1."""
    out = [0]
    for w in widths:
        out.append(out[-1] + int(w))
    return out


@functools.lru_cache(maxsize=64)
def _width_facts(widths: tuple[int, ...]) -> tuple[tuple[int, ...], int, int, int]:
    """(widths as ints, sum, max, WIDTH_ALIGN) once per widths tuple; a ValueError for bad widths."""
    ints = tuple(int(w) for w in widths)
    if not ints or min(ints) <= 0:
        raise ValueError(f"widths must be positive expert widths, got {tuple(widths)}")
    gcd = math.gcd(*ints)
    return ints, sum(ints), max(ints), min(16, gcd & -gcd)  # largest power of two (<= 16) dividing every f_e


def _check_swiglu_args(x, topk_ids, topk_weights, w_up, w_down, widths) -> None:
    """Shape checks of both paths."""
    if x.dim() != 2:
        raise ValueError(f"x must be [tokens, d_model], got shape {tuple(x.shape)}")
    num_tokens, d_model = x.shape
    if topk_ids.dim() != 2 or topk_ids.shape[0] != num_tokens:
        raise ValueError(f"topk_ids must be [{num_tokens}, k], got shape {tuple(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights must match topk_ids {tuple(topk_ids.shape)}, got {tuple(topk_weights.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64 expert ids, got {topk_ids.dtype}")
    for name, t in (("x", x), ("topk_weights", topk_weights), ("w_up", w_up), ("w_down", w_down)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    # Under autocast (bf16 pretraining on CUDA) the matmuls cast for themselves; elsewhere mixed dtypes would fail
    # deep inside the first matmul.
    if not torch.is_autocast_enabled(x.device.type) and not x.dtype == w_up.dtype == w_down.dtype:
        raise TypeError(f"x, w_up and w_down must share one dtype, got {x.dtype}, {w_up.dtype}, {w_down.dtype}")
    try:
        total = _width_facts(widths if isinstance(widths, tuple) else tuple(widths))[1]
    except TypeError:  # unhashable entries: not widths
        raise ValueError(f"widths must be positive expert widths, got {widths!r}") from None
    if w_up.shape != (d_model, 2 * total):
        raise ValueError(f"w_up must be [{d_model}, {2 * total}] (d_model, sum 2 f_e), got {tuple(w_up.shape)}")
    if w_down.shape != (total, d_model):
        raise ValueError(f"w_down must be [{total}, {d_model}] (sum f_e, d_model), got {tuple(w_down.shape)}")


def grouped_swiglu_reference(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    widths: tuple[int, ...],
    *,
    segment_order: Sequence[int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch reference: `sum_j w[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))` for e = topk_ids[t, j].

    Tokens are sorted by expert, each expert runs once on its contiguous segment, and results are scattered back
    weighted. Differentiable (used for pretraining and TTT).

    Args:
        x: [T, d] token activations.
        topk_ids: int64 [T, k] chosen experts, each in [0, E) (a ValueError otherwise).
        topk_weights: [T, k] combine weights.
        w_up: [d, sum 2 f_e] fused gate/up weights (layout in the module docstring).
        w_down: [sum f_e, d] down weights.
        widths: f_e per expert, length E.
        segment_order: accepted and checked as `grouped_swiglu_triton` does (a permutation of range(E)), so either
            path takes the same call; the result does not depend on it.
        out: optional [T, d] tensor to write the result into (not differentiable).

    Returns:
        [T, d] in x's dtype.
    """
    _check_swiglu_args(x, topk_ids, topk_weights, w_up, w_down, widths)
    segment_order_of(segment_order, len(widths))
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(f"out must be a {x.dtype} [{x.shape[0]}, {x.shape[1]}] tensor on {x.device}, got {out.dtype} "
                         f"{list(out.shape)} on {out.device}")  # fmt: skip
    num_tokens, k = topk_ids.shape
    offsets = expert_offsets(widths)
    flat_ids = topk_ids.reshape(-1)  # (T k,)
    order = torch.argsort(flat_ids, stable=True)
    token_idx = order // k  # (T k,) source token of each sorted slot
    num_experts = len(widths)
    # Ids outside [0, E) land in the end bins, so the range check costs no device sync beyond the counts' own.
    bins = torch.bincount(flat_ids.clamp(-1, num_experts) + 1, minlength=num_experts + 2).tolist()
    if bins[0] or bins[-1]:
        raise ValueError(f"topk_ids must be expert ids in [0, {num_experts}), got {bins[0] + bins[-1]} outside")
    counts = bins[1:-1]
    xs = x[token_idx]  # (T k, d)
    ys = []
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        f, off = widths[e], offsets[e]
        h = xs[start : start + n] @ w_up[:, 2 * off : 2 * off + 2 * f]  # (n, 2 f)
        a = F.silu(h[:, :f]) * h[:, f:]  # (n, f)
        ys.append(a @ w_down[off : off + f])  # (n, d)
        start += n
    result = torch.zeros_like(x)
    if ys:
        y = torch.cat(ys) * topk_weights.reshape(-1)[order].to(x.dtype).unsqueeze(-1)
        result = result.index_add(0, token_idx, y)
    if out is None:
        return result
    return out.copy_(result.detach())


def widest_first(widths: Sequence[int]) -> tuple[int, ...]:
    """The experts by width, widest first, ties in expert order: the longest-first order of their down-GEMM programs
    (each one's reduction runs over its expert's width). Expert order when every width is the same."""
    return tuple(sorted(range(len(widths)), key=lambda e: -int(widths[e])))


@functools.lru_cache(maxsize=32)
def _expert_tables(widths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 [E] widths, int64 [E] prefix offsets F_e) on `device`, built once per (widths, device)."""
    offsets = expert_offsets(widths)[:-1]
    return (
        torch.tensor(widths, dtype=torch.int32, device=device),
        torch.tensor(offsets, dtype=torch.int64, device=device),
    )


def grouped_swiglu_triton(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    widths: tuple[int, ...],
    *,
    segment_order: Sequence[int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton grouped SwiGLU: the same contract as `grouped_swiglu_reference`, without autograd.

    Per pass of `tokens_per_pass(T, k)` tokens (up to `SLOTS_PER_PASS` token-expert slots): align the slots by expert
    (`kernels.align`, block BLOCK_SIZE_M of the config), one grouped launch for gate/up with silu(gate) * up fused
    into its epilogue (h: [T k, max f_e]), one grouped launch for down with the combine weight applied in its
    epilogue (y: [T k, d]), and a combine kernel summing each token's k rows in fp32 (for k = 1 the down launch
    writes the output rows directly; at k = 2 on Hopper and later it adds them into the zeroed output instead,
    `use_atomic_top2`). Block sizes come from `kernels.configs.get_config`. fp32 accumulation; x and weights must
    share one dtype (fp32, bf16 or fp16); fp32 products are exact unless `torch.backends.cuda.matmul.allow_tf32` is
    set.

    Args:
        x, topk_ids, topk_weights, w_up, w_down, widths: as `grouped_swiglu_reference`; expert ids in [0, E),
            not checked (that would cost a device sync): a slot whose id is outside is dropped by the alignment
            without any access outside the buffers, and its token's output row is undefined.
        segment_order: the order of the experts' aligned segments, so of their programs in both launches (a
            permutation of range(E)); default `widest_first(widths)`. A down-GEMM program's time grows with its
            expert's width, so starting the widest first keeps a launch from ending on a tail of them.
        out: optional [T, d] tensor of x's dtype, last dimension contiguous; every element is written.

    Returns:
        [T, d] in x's dtype.

    Raises:
        RuntimeError: Triton cannot run on this device (the message says why).
        TypeError: unsupported or mixed dtypes.
        ValueError: a bad shape, `out` or `segment_order`.
    """
    _check_swiglu_args(x, topk_ids, topk_weights, w_up, w_down, widths)
    if x.dtype not in DTYPES or w_up.dtype != x.dtype or w_down.dtype != x.dtype:
        raise TypeError(
            f"grouped_swiglu_triton needs x, w_up and w_down in one dtype of {DTYPES}, got "
            f"{x.dtype}, {w_up.dtype}, {w_down.dtype}"
        )
    device = x.device
    require_triton(device, "grouped_swiglu_triton")
    from kernels import _triton_swiglu

    num_tokens, d_model = x.shape
    top_k = topk_ids.shape[1]
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != device or out.stride(1) != 1:
        raise ValueError(
            f"out must be a {x.dtype} [{num_tokens}, {d_model}] tensor on {device} with unit column stride"
        )
    widths = widths if isinstance(widths, tuple) else tuple(widths)
    # Checked once, before any pass (an iterator would be used up by the first) and before an empty batch returns.
    order = None if segment_order is None else segment_order_of(segment_order, len(widths))
    if num_tokens == 0:
        return out
    pass_tokens = tokens_per_pass(num_tokens, top_k)
    cfg = get_config(pass_tokens, len(widths), top_k, _width_facts(widths)[2], x.dtype, device)
    tma = use_tma_weights(device, pass_tokens * top_k)
    plan = _launch_plan(cfg, d_model, widths, x.dtype, device, torch.backends.cuda.matmul.allow_tf32, tma)
    up_desc = plan.w_up_desc and _descriptor_layout(w_up)
    down_desc = plan.w_down_desc and _descriptor_layout(w_down)
    in_kernel = DEVICE_DESCRIPTORS and (up_desc or down_desc)
    if in_kernel and device.type == "cuda":  # the interpreter needs no scratch
        _set_triton_allocator(_cuda_scratch)
    host_descs = not DEVICE_DESCRIPTORS
    w_up_desc = _weight_descriptor(w_up, cfg.block_size_k, cfg.block_size_n) if up_desc and host_descs else None
    w_down_desc = (
        _weight_descriptor(w_down, cfg.block_size_k, cfg.down_block_size_n) if down_desc and host_descs else None
    )
    order = plan.widest_first if order is None else order
    topk_ids = topk_ids.contiguous()
    topk_weights = topk_weights.contiguous()
    # Rows of h start 128-byte aligned whatever max f_e is, so the down GEMM's loads vectorise.
    h = torch.empty(pass_tokens * top_k, plan.h_pitch, dtype=x.dtype, device=device)[:, : plan.max_width]
    add_to_token = use_atomic_top2(device, top_k)
    combine = top_k > 1 and not add_to_token
    y = torch.empty(pass_tokens * top_k, d_model, dtype=x.dtype, device=device) if combine else None
    for t0 in range(0, num_tokens, pass_tokens):
        t1 = min(num_tokens, t0 + pass_tokens)
        numel = (t1 - t0) * top_k
        whole = t0 == 0 and t1 == num_tokens  # one pass: no slicing (each slice is a tensor object to make)
        xs, ids, wts, outs = (x, topk_ids, topk_weights, out) if whole else (
            x[t0:t1], topk_ids[t0:t1], topk_weights[t0:t1], out[t0:t1]
        )  # fmt: skip
        aligned, segments = align_triton_segments(ids, cfg.block_size_m, plan.num_experts, order)
        num_pid_m = aligned.expert_ids.numel()
        # k = 1: slot s is token s; atomic top-2: slots 2t and 2t + 1 are added into the zeroed row t.
        ys = outs if y is None else (y if numel == y.shape[0] else y[:numel])
        _triton_swiglu.up_kernel[(plan.up_programs(numel),)](
            xs, w_up, w_up_desc, h, aligned.sorted_token_ids, segments.table, segments.order, plan.widths_t,
            plan.offsets_t, numel, d_model, w_up.shape[1], xs.stride(0), xs.stride(1), w_up.stride(0), w_up.stride(1),
            h.stride(0), h.stride(1), TOP_K=top_k, W_DESC=up_desc, DEVICE_DESC=up_desc and DEVICE_DESCRIPTORS,
            **plan.meta_up,
        )  # fmt: skip
        if add_to_token:  # zeroed once the gate/up launch has read x (on the same stream), which `out` may be
            outs.zero_()
        _triton_swiglu.down_kernel[(num_pid_m * plan.n_down,)](
            h, w_down, w_down_desc, ys, wts, aligned.sorted_token_ids, aligned.expert_ids,
            aligned.num_tokens_post_padded, plan.widths_t, plan.offsets_t, numel, d_model, w_down.shape[0], num_pid_m,
            plan.n_down, h.stride(0), h.stride(1), w_down.stride(0), w_down.stride(1), ys.stride(0), ys.stride(1),
            W_DESC=down_desc, ADD_TO_TOKEN=add_to_token, TOP_K=2 if add_to_token else 1,
            DEVICE_DESC=down_desc and DEVICE_DESCRIPTORS, **plan.meta_down,
        )  # fmt: skip
        if combine:
            _triton_swiglu.combine_kernel[(cdiv(t1 - t0, plan.block_t), plan.combine_cols)](
                y, outs, t1 - t0, d_model, y.stride(0), outs.stride(0),
                TOP_K=top_k, BLOCK_T=plan.block_t, BLOCK_D=plan.block_d,
            )  # fmt: skip
    return out


def _descriptor_layout(w: torch.Tensor) -> bool:
    """Whether a weight matrix's layout allows a tensor descriptor: a 16-byte aligned base, unit column stride and
    16-byte aligned rows."""
    return w.stride(1) == 1 and (w.stride(0) * w.element_size()) % 16 == 0 and w.data_ptr() % 16 == 0


def _weight_descriptor(w: torch.Tensor, block_k: int, block_n: int):
    """A TensorDescriptor of a weight matrix in [block_k, block_n] blocks, or None where its layout allows none."""
    if not _descriptor_layout(w):
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(w, [block_k, block_n])


def _cuda_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Triton's allocator of kernel scratch (the descriptors `DEVICE_DESCRIPTORS` makes in the kernels): torch's
    caching allocator on the current device, whose blocks are aligned to 512 bytes (`alignment` asks 128 at most)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _set_triton_allocator(allocator) -> None:
    """`triton.set_allocator` (a context variable, so set at each call: a thread starts with none)."""
    import triton

    triton.set_allocator(allocator)


class _LaunchPlan(NamedTuple):
    """What a launch derives from its shape and config alone, not from its token count (`_launch_plan`)."""

    num_experts: int
    widest_first: tuple[int, ...]  # the default segment order
    max_width: int
    h_pitch: int  # row pitch of h (elements): max f_e rounded up to 64
    widths_t: torch.Tensor  # int32 [E] f_e on the device
    w_up_desc: bool  # the gate/up weight tiles through a tensor descriptor (use_tma_weights, column offsets aligned)
    w_down_desc: bool  # the down weight tiles so (use_tma_weights, no K tile crossing into another expert's rows)
    offsets_t: torch.Tensor  # int64 [E] F_e on the device
    block_m: int  # BLOCK_SIZE_M: rows of a block, as aligned
    n_up: int  # column tiles of the widest expert's gate/up
    up_tiles_per_block_sum: int  # sum over experts of their gate/up column tiles
    n_down: int  # column tiles of the down grid (d_model)
    meta_up: dict  # constexprs and launch options of the gate/up GEMM
    meta_down: dict  # the same for the down GEMM (its column tile may differ)
    block_t: int  # combine tile
    block_d: int
    combine_cols: int

    def up_programs(self, numel: int) -> int:
        """Programs of the gate/up launch for `numel` slots: the most live tiles they can make, sum over experts of
        ceil(c_e / BLOCK_SIZE_M) blocks x n_e column tiles, bounded without the counts c_e (no device sync):
        n_max tiles for every whole block of slots, and each expert's own tiles once more for its last block."""
        return self.n_up * (numel // self.block_m) + self.up_tiles_per_block_sum


@functools.lru_cache(maxsize=256)
def _launch_plan(
    cfg: MoeKernelConfig, d_model: int, widths: tuple[int, ...], dtype: torch.dtype,
    device: torch.device, allow_tf32: bool, tma_weights: bool = False,
) -> _LaunchPlan:  # fmt: skip
    # `allow_tf32` is in the key because the fp32 dot precision follows it (kernels._triton.dot_precision).
    widths, _, max_width, width_align = _width_facts(widths)
    widths_t, offsets_t = _expert_tables(widths, device)
    meta = dict(
        WIDTH_ALIGN=width_align,
        DOT_PRECISION=dot_precision(dtype),
        BLOCK_SIZE_M=cfg.block_size_m,
        BLOCK_SIZE_K=cfg.block_size_k,
        GROUP_SIZE_M=cfg.group_size_m,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    block_t, block_d = 16, min(256, max(16, 1 << (d_model - 1).bit_length()))
    return _LaunchPlan(
        num_experts=len(widths), widest_first=widest_first(widths), max_width=max_width,
        h_pitch=cdiv(max_width, 64) * 64, widths_t=widths_t, offsets_t=offsets_t,
        # A descriptor's column offsets (2 F_e, 2 F_e + f_e, + tiles) must be 16-byte aligned.
        w_up_desc=tma_weights and width_align * torch.empty(0, dtype=dtype).element_size() >= 16,
        w_down_desc=tma_weights and all(f % cfg.block_size_k == 0 for f in widths),
        block_m=cfg.block_size_m, n_up=cdiv(max_width, cfg.block_size_n),
        up_tiles_per_block_sum=sum(cdiv(f, cfg.block_size_n) for f in widths),
        n_down=cdiv(d_model, cfg.down_block_size_n),
        meta_up=dict(meta, BLOCK_SIZE_N=cfg.block_size_n, NUM_EXPERTS=len(widths),
                     BLOCK_E=next_power_of_2(len(widths))),
        meta_down=dict(meta, BLOCK_SIZE_N=cfg.down_block_size_n), block_t=block_t, block_d=block_d,
        combine_cols=cdiv(d_model, block_d),
    )  # fmt: skip
