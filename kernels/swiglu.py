"""Grouped SwiGLU over heterogeneous experts, with tokens grouped by expert and scattered back weighted.

Weight layout (all experts concatenated, no padding):
- `w_up`: [d_model, sum_e 2 f_e]; expert e owns columns [2 F_e, 2 F_e + 2 f_e) where F_e = f_0 + ... + f_{e-1};
  the first f_e of them are the gate projection, the next f_e the up projection.
- `w_down`: [sum_e f_e, d_model]; expert e owns rows [F_e, F_e + f_e).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expert_offsets(widths: tuple[int, ...] | list[int]) -> list[int]:
    """Start row of each expert in `w_down` (prefix sums of widths); length E + 1."""
    out = [0]
    for w in widths:
        out.append(out[-1] + int(w))
    return out


def grouped_swiglu_reference(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    widths: tuple[int, ...],
) -> torch.Tensor:
    """PyTorch reference: `sum_j w[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))` for e = topk_ids[t, j].

    Tokens are sorted by expert, each expert runs once on its contiguous segment, and results are scattered back
    weighted. Differentiable (used for pretraining and TTT).

    Args:
        x: [T, d] token activations.
        topk_ids: int64 [T, k] chosen experts.
        topk_weights: [T, k] combine weights.
        w_up: [d, sum 2 f_e] fused gate/up weights (layout in the module docstring).
        w_down: [sum f_e, d] down weights.
        widths: f_e per expert, length E.

    Returns:
        [T, d] in x's dtype.
    """
    num_tokens, k = topk_ids.shape
    offsets = expert_offsets(widths)
    flat_ids = topk_ids.reshape(-1)  # (T k,)
    order = torch.argsort(flat_ids, stable=True)
    token_idx = order // k  # (T k,) source token of each sorted slot
    counts = torch.bincount(flat_ids, minlength=len(widths)).tolist()
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
    out = torch.zeros_like(x)
    if ys:
        y = torch.cat(ys) * topk_weights.reshape(-1)[order].to(x.dtype).unsqueeze(-1)
        out = out.index_add(0, token_idx, y)
    return out
