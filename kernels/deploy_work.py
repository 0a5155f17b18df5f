"""Work lists as arrays, and the same routing decisions rebuilt at a `DeploymentScale` (DESIGN.md, "Deployment scale").

`work_arrays` turns a list of `KernelCall`s into column arrays (one row per call, with a multiplicity `count`) and
`call_flops_bytes` evaluates the FLOP and byte formulas of `kernels.work` on them, vectorised, so that pricing a
step takes a few numpy operations instead of a Python loop over calls.

`deployment_arrays(work, scale, deploy_tokens)` prices the runtime's decisions at deployment shape and volume:

- Runtime tokens N_rt: the tokens of the runtime's forward passes (its `embed_head` forward calls).
- Deployment layer j runs what runtime layer l = floor(j L_rt / L_deploy) ran: rows of runtime layer l count once
  per deployment layer mapped to it.
- The deployment serves `deploy_tokens` tokens in launches of `scale.batch_tokens` (whole launches plus one partial
  launch). In a launch of t tokens, each distinct forward launch of the runtime (same op, layer, expert and shape,
  merged over the runtime's passes) runs once on round(tokens x t / N_rt) tokens: t for the dense work (embedding
  and head, QKV, attention, output projection, router, TTT fast weights), s[l, e] t for expert e of layer l, where
  s[l, e] = its forward tokens / N_rt is the share the runtime's router chose (sums to top-k over e).
- TTT calls (phase `ttt_forward`/`ttt_backward`) keep their number of updates and scale their chunk by
  deploy_tokens / N_rt, split into launches of at most `scale.batch_tokens`: the deployment trains on the same
  share of the tokens it serves as the runtime did (chunk / frequency), in large chunks as LaCT does. Repeating the
  runtime's small chunk deploy_tokens / N_rt times instead would make TTT's cost almost all launch overhead at
  deployment shape (~1,000 updates a second), breaking DESIGN.md's "same share of the cost at both scales".
- Shapes: d_model -> `scale.d_model`; an expert's d_ff -> its `scale.expert_widths`; `embed_head` -> the
  vocabulary; other widths scale with d_model (QKV 3d/2, output d, fast weights); seq_len with `scale.seq_len`.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

from kernels.work import OPS, PHASES, DeploymentScale, KernelCall

OP_INDEX = {op: i for i, op in enumerate(OPS)}
GEMM_UP, GEMM_DOWN, SILU_MUL, SDPA, ROUTER, EMBED = (OP_INDEX[o] for o in OPS)
PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
FORWARD, TTT_BACKWARD = PHASE_INDEX["forward"], PHASE_INDEX["ttt_backward"]
COLUMNS = ("op", "tokens", "d_model", "d_ff", "seq_len", "experts", "expert", "layer", "phase", "count")
_INT_COLUMNS = ("op", "expert", "layer", "phase")
_FIELDS = attrgetter("op", "tokens", "d_model", "d_ff", "seq_len", "experts", "expert", "layer", "phase")
# FLOPs = sum_k FLOP_TERMS[op, k] * (t d f, t f, t S d, t d E)[k]; elements moved likewise over (t d, d f, t f, d E).
FLOP_TERMS = np.array([[4, 0, 0, 0], [2, 0, 0, 0], [0, 4, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2], [2, 0, 0, 0]], float)
ELEMENT_TERMS = np.array([[1, 2, 2, 0], [1, 1, 1, 0], [0, 0, 3, 0], [4, 0, 0, 0], [1, 0, 0, 1], [1, 1, 1, 0]], float)
assert FLOP_TERMS.shape[0] == len(OPS) == ELEMENT_TERMS.shape[0]


class WorkArrays:
    """A work list as one float64 matrix [N, len(COLUMNS)]: a row per launch shape, with a multiplicity `count`.

    Columns (attributes, each [N]): op (index into `OPS`), tokens, d_model, d_ff, seq_len, experts, expert (-1 for
    none), layer (-1 for none), phase (index into `PHASES`), count. op, expert, layer and phase read as int64.
    """

    __slots__ = ("m",)

    def __init__(self, m: np.ndarray):
        self.m = m

    def __len__(self) -> int:
        return self.m.shape[0]

    def __getattr__(self, name: str) -> np.ndarray:
        if name in COLUMNS:
            column = self.m[:, COLUMNS.index(name)]
            return column.astype(np.int64) if name in _INT_COLUMNS else column
        raise AttributeError(name)

    def with_column(self, name: str, values) -> WorkArrays:
        m = self.m.copy()
        m[:, COLUMNS.index(name)] = values
        return WorkArrays(m)

    def select(self, mask: np.ndarray) -> WorkArrays:
        return WorkArrays(self.m[mask])

    @staticmethod
    def concat(parts: list[WorkArrays]) -> WorkArrays:
        return WorkArrays(np.concatenate([p.m for p in parts]))


def make_arrays(
    op, tokens, d_model, d_ff=0, seq_len=0, experts=0, expert=-1, layer=-1, phase=FORWARD, count=1.0
) -> WorkArrays:
    """WorkArrays from broadcastable columns."""
    columns = np.broadcast_arrays(
        *map(np.asarray, (op, tokens, d_model, d_ff, seq_len, experts, expert, layer, phase, count))
    )
    return WorkArrays(np.column_stack([np.asarray(c, float).ravel() for c in columns]).reshape(-1, len(COLUMNS)))


def work_arrays(work: list[KernelCall]) -> WorkArrays:
    """Column arrays of a `KernelCall` list (count 1 each)."""
    rows = [
        (OP_INDEX[o], t, d, f, s, e, x, lay, PHASE_INDEX[p], 1.0) for o, t, d, f, s, e, x, lay, p in map(_FIELDS, work)
    ]
    return WorkArrays(np.array(rows, float).reshape(-1, len(COLUMNS)))


def call_flops_bytes(w: WorkArrays, dtype_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLOPs, bytes and launches of one of each row (not times `count`): the `KernelCall` formulas, vectorised.

    Returns:
        flops [N], bytes [N] (at `dtype_bytes` per element), launches [N] (2 for a backward pass, else 1).
    """
    m = w.m
    t, d, f, s, e = m[:, 1], m[:, 2], m[:, 3], m[:, 4], m[:, 5]
    op = m[:, 0].astype(np.intp)
    td, tf = t * d, t * f
    a, b = FLOP_TERMS[op], ELEMENT_TERMS[op]  # (N, 4) each
    flops = a[:, 0] * td * f + a[:, 1] * tf + a[:, 2] * td * s + a[:, 3] * td * e
    elements = b[:, 0] * td + b[:, 1] * d * f + b[:, 2] * tf + b[:, 3] * d * e
    launches = np.where(m[:, 8] == TTT_BACKWARD, 2.0, 1.0)
    return flops * launches, elements * (dtype_bytes * launches), launches


def _deploy_shapes(w: WorkArrays, scale: DeploymentScale, runtime_seq: float) -> WorkArrays:
    """The rows at deployment shapes (tokens and counts unchanged): d_model; an expert's width, the vocabulary, or
    d_ff scaled by the d_model ratio; seq_len scaled by the seq_len ratio; the deployment's expert count."""
    m = w.m.copy()
    op, expert = w.op, w.expert
    widths = np.asarray(scale.expert_widths, float)
    d_ff = np.where(
        expert >= 0, widths[np.clip(expert, 0, scale.num_experts - 1)], np.rint(m[:, 3] * scale.d_model / m[:, 2])
    )
    m[:, 3] = np.where(op == EMBED, scale.vocab_size, d_ff)
    m[:, 2] = scale.d_model
    m[:, 4] = np.rint(m[:, 4] * scale.seq_len / runtime_seq)
    m[:, 5] = np.where(op == ROUTER, scale.num_experts, m[:, 5])
    return WorkArrays(m)


def _merge_forward(fwd: WorkArrays, per_layer: np.ndarray) -> tuple[WorkArrays, np.ndarray]:
    """The runtime's forward launches merged per (op, layer, expert, shape): rows with summed tokens x count, and
    how many deployment layers run each (1 for work of no layer)."""
    key = np.ascontiguousarray(fwd.m[:, [0, 3, 4, 5, 6, 7]])
    _, first, inverse = np.unique(
        key.view(np.dtype((np.void, key.dtype.itemsize * 6))).ravel(), return_index=True, return_inverse=True
    )
    merged = fwd.select(first)
    merged.m[:, 1] = np.bincount(inverse.ravel(), fwd.m[:, 1] * fwd.m[:, 9], len(first))
    layer = merged.layer
    return merged, np.where(layer >= 0, per_layer[np.clip(layer, 0, len(per_layer) - 1)], 1.0)


def _launch_block(
    merged: WorkArrays, repeats: np.ndarray, runtime_tokens: float, tokens: float, count: float
) -> WorkArrays:
    """`count` deployment launches of `tokens` tokens: each merged runtime launch on round(its tokens x tokens /
    runtime_tokens) tokens (so each expert keeps its share), once per deployment layer mapped to its layer."""
    m = merged.m.copy()
    m[:, 1] = np.rint(m[:, 1] * (tokens / runtime_tokens))
    m[:, 9] = count * repeats
    return WorkArrays(m[(m[:, 1] > 0) & (m[:, 9] > 0)])


def deployment_arrays(
    work: list[KernelCall] | WorkArrays, scale: DeploymentScale, deploy_tokens: float | None = None
) -> tuple[WorkArrays, float]:
    """The deployment-scale work for a runtime work list (module docstring).

    Args:
        work: the runtime's `KernelCall`s of one interval (or their `work_arrays`).
        scale: the deployment shape and launch size.
        deploy_tokens: tokens the deployment serves in the interval; `scale.batch_tokens` (one launch) when None.

    Returns:
        (WorkArrays at deployment scale, deploy_tokens).

    Raises:
        ValueError: no forward pass in `work`, an expert index outside `scale.expert_widths`, or deploy_tokens < 0.
    """
    w = work if isinstance(work, WorkArrays) else work_arrays(work)
    deploy_tokens = float(scale.batch_tokens if deploy_tokens is None else deploy_tokens)
    if not deploy_tokens >= 0:
        raise ValueError(f"deploy_tokens must be >= 0, got {deploy_tokens}")
    if len(w) == 0 or deploy_tokens == 0:
        return make_arrays(np.zeros(0), 0, 0), deploy_tokens
    fwd = w.phase == FORWARD
    embed = fwd & (w.op == EMBED)
    runtime_tokens = float(np.sum(w.tokens[embed] * w.count[embed]))
    if runtime_tokens <= 0:
        raise ValueError("work has no forward pass (no forward embed_head call) to take expert shares from")
    if np.any(w.expert >= scale.num_experts):
        raise ValueError(
            f"work names expert {int(w.expert.max())}; the DeploymentScale has {scale.num_experts} expert widths"
        )
    attention = fwd & (w.op == SDPA)
    runtime_seq = float(w.seq_len[attention].max()) if np.any(attention) else float(scale.seq_len)
    runtime_layers = int(max(w.layer.max(), 0)) + 1
    per_layer = np.bincount((np.arange(scale.layers) * runtime_layers) // scale.layers, minlength=runtime_layers)
    merged, repeats = _merge_forward(w.select(fwd), per_layer)
    full, partial = divmod(deploy_tokens, scale.batch_tokens)
    blocks = [_launch_block(merged, repeats, runtime_tokens, scale.batch_tokens, full)] if full > 0 else []
    if partial > 0:
        blocks.append(_launch_block(merged, repeats, runtime_tokens, partial, 1.0))
    ttt = w.select(~fwd)
    layer = ttt.layer
    trained = ttt.m[:, 1] * (deploy_tokens / runtime_tokens)  # deployment tokens each TTT call trains on
    launches = np.maximum(1.0, np.ceil(trained / scale.batch_tokens))
    ttt.m[:, 1] = np.rint(trained / launches)
    ttt.m[:, 9] *= launches * np.where(layer >= 0, per_layer[np.clip(layer, 0, runtime_layers - 1)], 1.0)
    blocks.append(ttt.select(ttt.m[:, 1] > 0))
    return _deploy_shapes(WorkArrays.concat(blocks), scale, runtime_seq), deploy_tokens


def deployment_calls(
    work: list[KernelCall], scale: DeploymentScale, deploy_tokens: float | None = None
) -> list[tuple[KernelCall, float]]:
    """The deployment-scale launches as (`KernelCall`, how many) pairs: `deployment_arrays` in readable form."""
    w, _ = deployment_arrays(work, scale, deploy_tokens)
    out = []
    for i in range(len(w)):
        call = KernelCall(
            OPS[w.op[i]],
            int(w.tokens[i]),
            int(w.d_model[i]),
            int(w.d_ff[i]),
            seq_len=int(w.seq_len[i]),
            heads=scale.heads if w.op[i] == SDPA else 0,
            experts=int(w.experts[i]),
            layer=int(w.layer[i]),
            expert=int(w.expert[i]),
            phase=PHASES[w.phase[i]],
        )
        out.append((call, float(w.count[i])))
    return out
