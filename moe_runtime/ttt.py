"""Test-time training (TTT): the served model adapts to the tokens it has already seen.

`TTTEngine` keeps its own buffer of the (input, target) pairs the runtime has served and scored. Every
`frequency_tokens` served tokens it takes `steps_per_update` optimiser steps on the most recent `chunk_tokens` of
them (never on a token the model has not predicted yet), then the runtime serves the following tokens with the
updated weights. Both knobs change between control intervals (`set_schedule`); frequency 0 turns TTT off.

The base weights stay frozen: what adapts is a small set of extra tensors, and the adapted model is
`TTTEngine.forward` (the bare `model(...)` always stays the base model, e.g. for a paired reference). Methods:

- `fast_weights` (LaCT, "Test-Time Training Done Right", Zhang et al. 2025): a SwiGLU fast-weight network per MoE
  layer, f(x) = (silu(x W1) * (x W3)) W2 with W1, W3 [d, h] and W2 [h, d], added to the layer's output through the
  `MoELayer.adapter` hook: y <- y + f(x). W2 starts at zero, so the adapted model starts exactly as the base model.
  As in LaCT, updates use Muon and large chunks, and W1, W3 keep their initial column norms after each step. LaCT
  trains fast weights on a key/value reconstruction loss with projections learned in pretraining; a base model
  pretrained without them has no such keys and values, so here the objective is the next-token loss on the chunk,
  back-propagated through the frozen model.
- `lora`: low-rank deltas on each MoE layer's concatenated expert weights, w_up + A_up B_up and
  w_down + A_down B_down (rank `lora_rank`, B = 0 at start), trained on the next-token loss of the chunk (dynamic
  evaluation, Krause et al. 2018).
- `tent` (Wang et al. 2021): deltas on the router gates and on every LayerNorm's gain and bias, trained to
  minimise the entropy of the next-token predictions on the chunk (no labels used).

Optimisers: `muon` (Newton-Schulz-orthogonalised momentum for matrices, AdamW at `vector_lr` for vectors) or
`adamw`. The learning rate is per `lr_chunk_tokens` tokens and scales linearly with the tokens an update adds (both
optimisers take steps whose size the learning rate sets, so this keeps the change per token trained the same for
small and large chunks). Each step clips the gradient norm at `grad_clip` and the norm of the change at `max_update_norm`. An update
whose loss or gradient is not finite at any step, or whose loss after the update is not finite, is rolled back
(weights and optimiser state), counted in `skipped_updates` and reported.

Measurements behind the defaults: `moe_runtime.ttt_config`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from kernels import KernelCall
from moe_runtime.model import ModelOutput, MoETransformer
from moe_runtime.muon import Muon
from moe_runtime.runtime import forward_work
from moe_runtime.ttt_config import TTTConfig, TTTUpdate

log = logging.getLogger(__name__)


class _LayerAdapter:
    """The `MoELayer.adapter` the engine installs while it runs the model: fast weights and/or recording.

    A plain callable, not an `nn.Module`, so the model's parameters and state dict never include it.
    """

    def __init__(self, engine: TTTEngine, layer: int, record: bool):
        self.engine, self.layer, self.record = engine, layer, record

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: [T, d] -> [T, d]."""
        p = self.engine.params
        if self.engine.config.method == "fast_weights":
            w1, w3, w2 = (p[f"{self.layer}.{n}"].to(x.dtype) for n in ("w1", "w3", "w2"))
            y = y + (F.silu(x @ w1) * (x @ w3)) @ w2  # (T, h) -> (T, d)
        if self.record:
            self.engine._energy[self.layer] = float(y.detach().float().square().mean())
        return y


class TTTEngine:
    """Test-time training for a `MoETransformer`, driven by `MoERuntime`.

    Use: `attach(model)` once (the runtime does it), `set_schedule(frequency, chunk)` when a controller decides,
    then for each served segment `forward(idx, targets)` (the adapted model), `observe(inputs, targets)` once the
    segment is scored, and `update()` when `tokens_until_due()` is 0. `reset()` restores the initial state bit for
    bit.

    Args:
        config: what adapts and how; `TTTConfig()` when None.
    """

    def __init__(self, config: TTTConfig | None = None):
        self.config = config or TTTConfig()
        self.model: MoETransformer | None = None
        self.params: dict[str, torch.Tensor] = {}
        self._initial: dict[str, torch.Tensor] = {}
        self._col_norms: dict[str, torch.Tensor] = {}
        self._energy: list[float] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self.frequency_tokens, self.chunk_tokens = 0, self.config.chunk_tokens
        self._clear_counters()
        self.set_schedule(self.config.frequency_tokens, self.config.chunk_tokens)

    # ---- set-up and state -------------------------------------------------------------------------------------

    def attach(self, model: MoETransformer) -> None:
        """Create the adapted tensors for `model` (on its device, float32) and remember their initial values."""
        cfg = model.cfg
        device = next(model.parameters()).device
        self.model = model
        g = torch.Generator().manual_seed(self.config.seed)
        d, h, r, total = cfg.d_model, self.config.fast_weight_dim, self.config.lora_rank, sum(cfg.expert_widths)
        params: dict[str, torch.Tensor] = {}
        for layer in range(cfg.n_layers):
            if self.config.method == "fast_weights":
                params[f"{layer}.w1"] = torch.randn(d, h, generator=g) / math.sqrt(d)
                params[f"{layer}.w3"] = torch.randn(d, h, generator=g) / math.sqrt(d)
                params[f"{layer}.w2"] = torch.zeros(h, d)
            elif self.config.method == "lora":
                params[f"{layer}.up_a"] = torch.randn(d, r, generator=g) / math.sqrt(d)
                params[f"{layer}.up_b"] = torch.zeros(r, 2 * total)
                params[f"{layer}.down_a"] = torch.randn(total, r, generator=g) / math.sqrt(total)
                params[f"{layer}.down_b"] = torch.zeros(r, d)
            else:  # tent
                params[f"{layer}.gate"] = torch.zeros(cfg.num_experts, d)
                for norm in ("ln1", "ln2"):
                    params[f"{layer}.{norm}.weight"] = torch.zeros(d)
                    params[f"{layer}.{norm}.bias"] = torch.zeros(d)
        if self.config.method == "tent":
            params["ln_f.weight"] = torch.zeros(d)
            params["ln_f.bias"] = torch.zeros(d)
        self.params = {k: v.to(device).requires_grad_(True) for k, v in params.items()}
        self._initial = {k: v.detach().clone() for k, v in self.params.items()}
        self._col_norms = {
            k: v.detach().norm(dim=0) for k, v in self.params.items() if k.endswith((".w1", ".w3"))
        }  # LaCT: fast weights keep their initial column norms
        self._energy = [0.0] * cfg.n_layers
        self._make_optimizers()
        self._clear_counters()

    def _make_optimizers(self) -> None:
        c = self.config
        matrices = [p for p in self.params.values() if p.ndim >= 2]
        vectors = [p for p in self.params.values() if p.ndim < 2]
        self._optimizers = []
        if c.optimizer == "muon":
            if matrices:
                self._optimizers.append(Muon(matrices, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))
            if vectors:
                self._optimizers.append(
                    torch.optim.AdamW(vectors, lr=c.vector_lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay)
                )
        else:
            self._optimizers.append(
                torch.optim.AdamW(
                    list(self.params.values()), lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay
                )
            )

    def _set_lr(self, chunk: int) -> None:
        """Learning rates for an update on `chunk` tokens (see `TTTConfig.lr_chunk_tokens`)."""
        c = self.config
        # Tokens new since the last update: the frequency's worth when the update fell due, more when a lowered
        # frequency made it overdue.
        new_tokens = min(chunk, max(self.frequency_tokens, self._since_update)) if self.frequency_tokens else chunk
        scale = new_tokens / c.lr_chunk_tokens if c.lr_chunk_tokens else 1.0
        for opt in self._optimizers:
            base = c.vector_lr if c.optimizer == "muon" and not isinstance(opt, Muon) else c.lr
            for group in opt.param_groups:
                group["lr"] = base * scale

    def _clear_counters(self) -> None:
        n = self.config.buffer_tokens
        self._inputs = np.zeros(0, dtype=np.uint8)
        self._targets = np.zeros(0, dtype=np.uint8)
        self._capacity = max(n, self.chunk_tokens)
        self.tokens_seen = 0
        self._since_update = 0
        self.updates_done = 0
        self.skipped_updates = 0
        self.last_update: TTTUpdate | None = None
        self._pristine = True  # no update applied: the adapted model is the base model

    def reset(self) -> None:
        """Restore the adapted tensors and optimiser state to their initial values; forget the seen tokens."""
        self._require_attached()
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self._initial[k])
                p.grad = None
        self._make_optimizers()
        self._clear_counters()

    def set_schedule(self, frequency_tokens: int, chunk_tokens: int) -> None:
        """Update every `frequency_tokens` served tokens (0 = off) on the last `chunk_tokens` seen tokens.

        The count toward the next update continues across calls while TTT stays on (a controller may repeat the
        same setting every interval), restarts from 0 when TTT is turned on, and an update whose count already
        reached a new, lower frequency fires before the next token is served.
        """
        for name, value in (("frequency_tokens", frequency_tokens), ("chunk_tokens", chunk_tokens)):
            if isinstance(value, bool) or not float(value).is_integer():  # 100.9 was taken as 100, NaN failed in int()
                raise ValueError(f"ttt {name} must be a whole number of tokens, got {value!r}")
        frequency_tokens, chunk_tokens = int(frequency_tokens), int(chunk_tokens)
        if frequency_tokens < 0:
            raise ValueError(f"ttt frequency_tokens must be >= 0 (0 = off), got {frequency_tokens}")
        if chunk_tokens <= 0:
            raise ValueError(f"ttt chunk_tokens must be positive, got {chunk_tokens}")
        if frequency_tokens and not self.frequency_tokens:
            self._since_update = 0
        self.frequency_tokens, self.chunk_tokens = frequency_tokens, chunk_tokens
        self._capacity = max(self._capacity, chunk_tokens)

    @property
    def enabled(self) -> bool:
        return self.frequency_tokens > 0

    def tokens_until_due(self) -> int | None:
        """Tokens to serve before the next update is due (0: due now); None when TTT is off."""
        if not self.enabled:
            return None
        return max(0, self.frequency_tokens - self._since_update)

    def adapted_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every adapted tensor, by name."""
        return {k: v.detach().clone() for k, v in self.params.items()}

    def _require_attached(self) -> MoETransformer:
        if self.model is None:
            raise RuntimeError("TTTEngine is not attached to a model; call attach(model) (MoERuntime does)")
        return self.model

    # ---- serving --------------------------------------------------------------------------------------------

    def _overrides(self) -> dict[str, torch.Tensor]:
        """Base parameter name -> base + delta, for `lora` and `tent` (empty for `fast_weights`)."""
        model, p = self._require_attached(), self.params
        out: dict[str, torch.Tensor] = {}
        for layer, block in enumerate(model.blocks):
            pre = f"blocks.{layer}"
            if self.config.method == "lora":
                w_up, w_down = block.moe.w_up, block.moe.w_down
                out[f"{pre}.moe.w_up"] = w_up + (p[f"{layer}.up_a"] @ p[f"{layer}.up_b"]).to(w_up.dtype)
                out[f"{pre}.moe.w_down"] = w_down + (p[f"{layer}.down_a"] @ p[f"{layer}.down_b"]).to(w_down.dtype)
            elif self.config.method == "tent":
                out[f"{pre}.moe.gate.weight"] = block.moe.gate.weight + p[f"{layer}.gate"].to(
                    block.moe.gate.weight.dtype
                )
                for norm in ("ln1", "ln2"):
                    for kind in ("weight", "bias"):
                        base = getattr(getattr(block, norm), kind)
                        out[f"{pre}.{norm}.{kind}"] = base + p[f"{layer}.{norm}.{kind}"].to(base.dtype)
        if self.config.method == "tent":
            for kind in ("weight", "bias"):
                base = getattr(model.ln_f, kind)
                out[f"ln_f.{kind}"] = base + p[f"ln_f.{kind}"].to(base.dtype)
        return out

    @contextmanager
    def _adapters(self, record: bool):
        """Install the engine's `MoELayer.adapter`s for one forward pass; put back what was there after it."""
        model = self._require_attached()
        install = record or self.config.method == "fast_weights"
        layers = model.moe_layers
        previous = [layer.adapter for layer in layers]
        if install:
            for i, layer in enumerate(layers):
                layer.adapter = _LayerAdapter(self, i, record)
        try:
            yield
        finally:
            for layer, adapter in zip(layers, previous):
                layer.adapter = adapter

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, context: int = 0) -> ModelOutput:
        """The adapted model: `model(idx, targets, context)` with the engine's fast weights or deltas applied.

        Until an update has been applied (since `attach` or `reset`) the adapted model equals the base model, and
        this runs the base model alone, at no extra cost.

        Args:
            idx: int64 [B, S] tokens.
            targets: int64 [B, S] next tokens, or None.
            context: leading positions of each row that are context only (`MoETransformer.forward`).
        """
        if self._pristine:
            return self._require_attached()(idx, targets, context)
        return self._adapted_forward(idx, targets, record=False, context=context)

    def _adapted_forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None, record: bool, context: int = 0
    ) -> ModelOutput:
        """`forward` with the adaptation always applied; `record` stores each MoE layer's activation energy."""
        model = self._require_attached()
        with self._adapters(record):
            overrides = self._overrides()
            if overrides:
                return functional_call(model, overrides, (idx, targets, context))
            return model(idx, targets, context)

    def serving_work(self, batch: int, seq: int, phase: str = "forward") -> list[KernelCall]:
        """The extra `KernelCall`s the adaptation adds to a forward pass over [batch, seq] tokens.

        Fast weights add a SwiGLU of width h per layer; LoRA and TENT deltas are folded into the base weights once
        per forward (a d x r x 2F product per layer, negligible and not listed).
        """
        if self.config.method != "fast_weights" or self.model is None or (self._pristine and phase == "forward"):
            return []
        t, d, h = batch * seq, self.model.cfg.d_model, self.config.fast_weight_dim
        work = []
        for layer in range(self.model.cfg.n_layers):
            work.append(KernelCall("gemm_up", t, d, d_ff=h, layer=layer, phase=phase))
            work.append(KernelCall("silu_mul", t, d, d_ff=h, layer=layer, phase=phase))
            work.append(KernelCall("gemm_down", t, d, d_ff=h, layer=layer, phase=phase))
        return work

    # ---- training -------------------------------------------------------------------------------------------

    def observe(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        """Record served (input, target) pairs whose predictions have been scored; they count toward the next update.

        Args:
            inputs, targets: uint8 or int [n] tokens; targets[i] follows inputs[i] in the stream.
        """
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        if inputs.shape != targets.shape or inputs.ndim != 1:
            raise ValueError(
                f"observe needs inputs and targets of equal shape [n]; got {inputs.shape}, {targets.shape}"
            )
        keep = self._capacity
        self._inputs = np.concatenate([self._inputs, inputs.astype(np.uint8)])[-keep:]
        self._targets = np.concatenate([self._targets, targets.astype(np.uint8)])[-keep:]
        self.tokens_seen += len(inputs)
        if self.enabled:
            self._since_update += len(inputs)

    def _chunk_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The last n seen pairs as [B, S] (input, target) batches of the model's seq_len, remainder last."""
        model = self._require_attached()
        seq, device = model.cfg.seq_len, next(model.parameters()).device
        x = torch.from_numpy(self._inputs[-n:].astype(np.int64)).to(device)
        y = torch.from_numpy(self._targets[-n:].astype(np.int64)).to(device)
        full, rem = divmod(n, seq)
        out = []
        if full:
            out.append((x[: full * seq].view(full, seq), y[: full * seq].view(full, seq)))
        if rem:
            out.append((x[full * seq :].view(1, rem), y[full * seq :].view(1, rem)))
        return out

    def _objective(self, out: ModelOutput) -> torch.Tensor:
        """The self-supervised loss of one batch: next-token loss, or prediction entropy for `tent`."""
        if self.config.method == "tent":
            logp = torch.log_softmax(out.logits.float(), dim=-1)  # (B, S, V)
            return -(logp.exp() * logp).sum(-1).mean()
        return out.loss

    def _chunk_forward(self, batches, grad: bool, work: list[KernelCall], phase: str):
        """Token-weighted objective and next-token loss over the chunk; appends the work to `work`."""
        cfg = self._require_attached().cfg
        n = sum(x.numel() for x, _ in batches)
        objective, loss = 0.0, 0.0
        for x, y in batches:
            with torch.set_grad_enabled(grad):
                out = self._adapted_forward(x, y, record=grad)
                if grad:
                    objective = objective + self._objective(out) * (x.numel() / n)
            loss += float(out.loss.detach()) * x.numel() / n
            counts = out.expert_counts.cpu().numpy()
            work += forward_work(cfg, x.shape[0], x.shape[1], counts, phase=phase)
            work += self.serving_work(x.shape[0], x.shape[1], phase=phase)
            if grad:
                back = forward_work(cfg, x.shape[0], x.shape[1], counts, phase="ttt_backward")
                work += back + self.serving_work(x.shape[0], x.shape[1], phase="ttt_backward")
        return objective, loss

    def _layer_grad_norms(self) -> list[float]:
        model = self._require_attached()
        sq = [0.0] * model.cfg.n_layers
        for k, p in self.params.items():
            head = k.split(".")[0]
            if p.grad is not None and head.isdigit():
                sq[int(head)] += float(p.grad.float().square().sum())
        return [math.sqrt(s) for s in sq]

    def _step(self, batches, work: list[KernelCall]) -> tuple[float, list[float], str]:
        """One optimiser step; returns (loss before it, per-layer grad norms, '' or why it must be rolled back)."""
        for p in self.params.values():
            p.grad = None
        objective, loss = self._chunk_forward(batches, grad=True, work=work, phase="ttt_forward")
        if not torch.isfinite(objective).item() or not math.isfinite(loss):
            return loss, [float("nan")] * len(self._energy), f"non-finite loss ({float(objective.detach())})"
        objective.backward()
        grad_norms = self._layer_grad_norms()
        tensors = list(self.params.values())
        grads = [p.grad for p in tensors if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        if total is not None and not torch.isfinite(total).item():
            return loss, grad_norms, "non-finite gradient"
        if self.config.grad_clip and total is not None:
            torch.nn.utils.clip_grad_norm_(tensors, self.config.grad_clip)
        before = [p.detach().clone() for p in tensors]
        for opt in self._optimizers:
            opt.step()
        self._pristine = False
        with torch.no_grad():
            deltas = [p - b for p, b in zip(tensors, before)]
            change = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in deltas])))
            if not math.isfinite(change):
                return loss, grad_norms, "non-finite update"
            limit = self.config.max_update_norm
            if limit and change > limit:
                for p, b, dlt in zip(tensors, before, deltas):
                    p.copy_(b + dlt * (limit / change))
            for k, norms in self._col_norms.items():
                w = self.params[k]
                w.mul_(norms / w.norm(dim=0).clamp_min(1e-12))
        return loss, grad_norms, ""

    def update(self) -> TTTUpdate:
        """Train on the most recent `chunk_tokens` seen pairs (all of them if fewer were seen).

        Returns:
            A `TTTUpdate`; with `applied` False the weights and optimiser state are as before the call.

        Raises:
            RuntimeError: not attached, or no token seen yet.
        """
        self._require_attached()
        n = min(self.chunk_tokens, len(self._inputs))
        if n == 0:
            raise RuntimeError("TTTEngine.update needs seen tokens; call observe(...) first")
        start = time.perf_counter()
        self._set_lr(n)
        saved = {k: v.detach().clone() for k, v in self.params.items()}
        saved_opt = [copy.deepcopy(opt.state_dict()) for opt in self._optimizers]
        was_pristine = self._pristine
        work: list[KernelCall] = []
        reason, loss_before, loss_after = "", float("nan"), float("nan")
        grad_norms = [0.0] * len(self._energy)
        with torch.inference_mode(False), torch.enable_grad():
            batches = self._chunk_batches(n)
            for i in range(self.config.steps_per_update):
                loss, grad_norms, reason = self._step(batches, work)
                if i == 0:
                    loss_before = loss
                if reason:
                    break
            if not reason and self.config.check_after:
                with torch.no_grad():
                    _, loss_after = self._chunk_forward(batches, grad=False, work=work, phase="ttt_forward")
                if not math.isfinite(loss_after):
                    reason = f"non-finite loss after the update ({loss_after})"
        if reason:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])
            for opt, state in zip(self._optimizers, saved_opt):
                opt.load_state_dict(state)
            self._pristine = was_pristine
            self.skipped_updates += 1
            loss_after = float("nan")
            log.warning("TTT update skipped and rolled back: %s", reason)
        else:
            self.updates_done += 1
        for p in self.params.values():
            p.grad = None
        self._since_update = 0
        result = TTTUpdate(
            applied=not reason,
            tokens=n,
            first_token=self.tokens_seen - n,
            end_token=self.tokens_seen,
            loss_before=loss_before,
            loss_after=loss_after,
            grad_norms=grad_norms,
            activation_energy=list(self._energy),
            wall_time_s=time.perf_counter() - start,
            work=work,
            reason=reason,
        )
        self.last_update = result
        return result
