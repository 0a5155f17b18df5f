"""`MoERuntime`: the model, its token stream and its device, stepping one control interval at a time.

The runtime is where a controller's decisions take effect: `apply(ControlAction)` sets the selection biases of
every router and the TTT knobs, and `step(num_tokens)` serves the next tokens of the stream, returning a
`StepReport` with the real loss, the routing it chose and the `work` it performed (`kernels.KernelCall`s), which
the cost model prices.
"""

from __future__ import annotations

import numbers
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from kernels import KernelCall
from moe_runtime.config import MoEConfig
from moe_runtime.model import MoETransformer
from moe_runtime.streams import DomainSchedule, TokenStream

if TYPE_CHECKING:
    from moe_runtime.ttt import TTTEngine

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ControlAction:
    """What a controller sets for the next control interval.

    Attributes:
        routing_biases: per-expert selection biases [E]; empty means zero for every expert.
        ttt_frequency_tokens: tokens between TTT updates; 0 turns TTT off.
        ttt_chunk_tokens: tokens each TTT update trains on.
    """

    routing_biases: tuple[float, ...] = ()
    ttt_frequency_tokens: int = 0
    ttt_chunk_tokens: int = 512

    def __post_init__(self) -> None:
        if np.ndim(self.routing_biases) != 1:  # [L, E] is set_routing_biases's
            raise ValueError(
                f"ControlAction.routing_biases must be one bias per expert [E], got shape "
                f"{np.shape(self.routing_biases)}; per-layer [L, E] biases go to MoERuntime.set_routing_biases"
            )
        object.__setattr__(self, "routing_biases", tuple(float(b) for b in self.routing_biases))
        if not all(np.isfinite(self.routing_biases)):
            raise ValueError(f"ControlAction.routing_biases must be finite, got {self.routing_biases}")
        for name in ("ttt_frequency_tokens", "ttt_chunk_tokens"):  # counts: 1024.0 is 1024; 2.5 or NaN is none
            value = getattr(self, name)
            whole = isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer()
            if isinstance(value, bool) or not whole:
                raise ValueError(f"ControlAction.{name} must be a whole number of tokens, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.ttt_frequency_tokens < 0:
            raise ValueError(
                f"ControlAction.ttt_frequency_tokens must be >= 0 (0 = off), got {self.ttt_frequency_tokens}"
            )
        if self.ttt_chunk_tokens <= 0:
            raise ValueError(f"ControlAction.ttt_chunk_tokens must be positive, got {self.ttt_chunk_tokens}")

    @classmethod
    def uncontrolled(cls, num_experts: int | None = None) -> ControlAction:
        """No control: zero biases, TTT off."""
        return cls(routing_biases=(0.0,) * (num_experts or 0), ttt_frequency_tokens=0)

    @property
    def ttt_enabled(self) -> bool:
        return self.ttt_frequency_tokens > 0

    def biases(self, num_experts: int) -> np.ndarray:
        """The biases as a float32 array [num_experts] (zeros when empty)."""
        if not self.routing_biases:
            return np.zeros(num_experts, dtype=np.float32)
        if len(self.routing_biases) != num_experts:
            raise ValueError(
                f"ControlAction has {len(self.routing_biases)} biases; the model has {num_experts} experts"
            )
        return np.asarray(self.routing_biases, dtype=np.float32)


@dataclass
class StepReport:
    """What one control interval did.

    Attributes:
        tokens: tokens served.
        loss: mean next-token cross-entropy over them (nats).
        expert_token_counts: [L, E] slots routed to each expert per layer (each row sums to tokens * top_k).
        router_entropy: mean over layers of the routing distribution's entropy (nats).
        router_entropy_per_layer: [L].
        flops_per_expert: [E] forward FLOPs spent in each expert, all layers.
        flops_total: FLOPs of everything in `work` (forward and TTT).
        wall_time_s: wall time of the step, including TTT.
        work: the `KernelCall`s performed.
        domain: the domain that served most of the tokens; `domain_tokens` counts each.
        ttt_updates: TTT updates applied in the interval.
        ttt_tokens_trained: tokens those updates trained on (chunk tokens, once per update whatever its steps).
        ttt_wall_time_s: wall time of the interval's updates (applied or skipped), inside `wall_time_s`.
        ttt_skipped_updates: updates rolled back for a non-finite loss or gradient.
        ttt_loss_before, ttt_loss_after: token-weighted mean next-token loss (nats) of the applied updates' chunks
            before and after each update; NaN without one.
        ttt_grad_norms: [L] gradient norm of each MoE layer's adapted tensors at the interval's last applied
            update; zeros without one (also without a TTT engine).
        ttt_activation_energy: [L] mean square MoE-layer output over that update's chunk; zeros without one.
        The TTT work (`ttt_forward`, `ttt_backward` `KernelCall`s, with the expert counts the chunks routed) is in
        `work` and `flops_total`; `flops_per_expert` counts forward serving only.
        reference_loss: loss of the uncontrolled base model (zero biases, no TTT) on the interval's first
            `reference_tokens` tokens; NaN when the runtime keeps no reference.
        served_reference_loss: the served model's loss on those same tokens, so that `served_reference_loss -
            reference_loss` is a paired, low-variance estimate of what control cost (or TTT gained).
    """

    tokens: int
    loss: float
    expert_token_counts: list[list[int]]
    router_entropy: float
    router_entropy_per_layer: list[float]
    flops_per_expert: list[float]
    flops_total: float
    wall_time_s: float
    work: list[KernelCall]
    domain: str
    domain_tokens: dict[str, int]
    ttt_updates: int = 0
    ttt_tokens_trained: int = 0
    ttt_wall_time_s: float = 0.0
    ttt_skipped_updates: int = 0
    ttt_loss_before: float = float("nan")
    ttt_loss_after: float = float("nan")
    ttt_grad_norms: list[float] = field(default_factory=list)
    reference_loss: float = float("nan")
    served_reference_loss: float = float("nan")
    ttt_activation_energy: list[float] = field(default_factory=list)


def forward_work(cfg: MoEConfig, batch: int, seq: int, expert_counts: np.ndarray, phase: str = "forward"):
    """The `KernelCall`s of one forward pass over `batch` sequences of `seq` tokens.

    Args:
        expert_counts: [L, E] slots routed to each expert.
    """
    t, d = batch * seq, cfg.d_model
    work = [KernelCall("embed_head", t, d, d_ff=cfg.vocab_size, phase=phase)]
    for layer in range(cfg.n_layers):
        work.append(KernelCall("gemm_up", t, d, d_ff=3 * d // 2, layer=layer, phase=phase))  # fused QKV
        work.append(KernelCall("sdpa_causal", t, d, heads=cfg.n_heads, seq_len=seq, layer=layer, phase=phase))
        work.append(KernelCall("gemm_down", t, d, d_ff=d, layer=layer, phase=phase))  # attention output
        work.append(KernelCall("router_topk", t, d, experts=cfg.num_experts, layer=layer, phase=phase))
        for e, f in enumerate(cfg.expert_widths):
            n = int(expert_counts[layer, e])
            if n == 0:
                continue
            for op in ("gemm_up", "silu_mul", "gemm_down"):
                work.append(KernelCall(op, n, d, d_ff=f, layer=layer, expert=e, phase=phase))
    return work


class MoERuntime:
    """Owns the model, its token stream and device; serves control intervals.

    Args:
        config: the model shape; `config.device` picks CPU or CUDA (bf16 on CUDA unless `config.dtype` says).
        model: a pretrained model to serve, of `config`'s shape (its own config when `config` is None); the runtime
            takes it over (eval mode, parameters frozen, moved to the device and dtype). A freshly initialised one
            when None.
        schedule: the domain schedule of the stream (default: prose, then code).
        split: which corpus split the stream reads.
        seed: stream seed (defaults to `config.seed`).
        ttt: a `moe_runtime.TTTEngine`, attached here; it serves the adapted model and trains when updates fall
            due, starting at its config's schedule until `apply` sets one. None serves without test-time training.
        reference_tokens: tokens at the start of each interval that the uncontrolled base model also scores (an
            extra forward pass over them), giving `StepReport.reference_loss`; 0 keeps no reference.
    """

    def __init__(
        self,
        config: MoEConfig | None = None,
        model: MoETransformer | None = None,
        schedule: DomainSchedule | None = None,
        split: str = "test",
        seed: int | None = None,
        ttt: TTTEngine | None = None,
        reference_tokens: int = 0,
    ):
        if config is not None and not isinstance(config, MoEConfig):
            raise TypeError(f"config must be a MoEConfig (e.g. MoEConfig.preset('tiny')), got {type(config).__name__}")
        if model is not None and not isinstance(model, MoETransformer):
            raise TypeError(
                f"model must be a MoETransformer, got {type(model).__name__}; a checkpoint file loads with "
                "moe_runtime.load_model(path)"
            )
        if config is None and model is not None:
            config = model.cfg  # the model's own shape
        self.config = config or MoEConfig()
        # The shape, not the device, dtype or the seed it was trained from.
        if model is not None and model.cfg.model_key() != replace(self.config, seed=model.cfg.seed).model_key():
            got, want = model.cfg, self.config
            raise ValueError(
                f"the model is shaped for another MoEConfig (d_model {got.d_model}, layers {got.n_layers}, experts "
                f"{got.expert_widths}) than `config` (d_model {want.d_model}, layers {want.n_layers}, experts "
                f"{want.expert_widths}); pass the model's own config, or none"
            )
        self.device = torch.device(self.config.resolved_device())
        self.dtype = _TORCH_DTYPES[self.config.resolved_dtype()]
        if model is None:
            torch.manual_seed(self.config.seed)
            model = MoETransformer(self.config)
        self.model = model.to(self.device, self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.stream = TokenStream(schedule, split=split, seed=self.config.seed if seed is None else seed)
        self.ttt = ttt
        if isinstance(reference_tokens, bool) or not isinstance(reference_tokens, numbers.Integral) or reference_tokens < 0:
            raise ValueError(f"reference_tokens must be an integer >= 0, got {reference_tokens!r}")
        self.reference_tokens = int(reference_tokens)
        self.action = ControlAction.uncontrolled(self.config.num_experts)
        if ttt is not None:
            ttt.attach(self.model)
            self.action = ControlAction(self.action.routing_biases, ttt.frequency_tokens, ttt.chunk_tokens)

    def reset_stream(
        self, schedule: DomainSchedule | None = None, split: str | None = None, seed: int | None = None
    ) -> None:
        """Start a fresh stream from its beginning: a new schedule, split or seed, each the present one when None."""
        seed = self.stream.seed if seed is None else seed
        self.stream = TokenStream(schedule or self.stream.schedule, split=split or self.stream.split, seed=seed)

    def set_routing_biases(self, biases) -> None:
        """Selection biases: [E] for every MoE layer, or [L, E] per layer (tensor, array or sequence)."""
        self.model.set_selection_biases(torch.as_tensor(np.asarray(biases, dtype=np.float32)))

    def apply(self, action: ControlAction) -> None:
        """Take a controller's decision into effect for the following intervals: all of it, or (on a ValueError)
        none of it."""
        if not isinstance(action, ControlAction):
            raise TypeError(
                f"apply takes a ControlAction, got {type(action).__name__}; e.g. "
                "ControlAction(routing_biases=biases), or set_routing_biases(biases) for the biases alone"
            )
        if self.ttt is None and action.ttt_enabled:
            raise ValueError(
                f"ControlAction turns TTT on (every {action.ttt_frequency_tokens} tokens) but this runtime has no TTT "
                "engine; build it with one, MoERuntime(..., ttt=TTTEngine(TTTConfig())), or keep TTT off"
            )
        biases = action.biases(self.config.num_experts)  # checked before anything changes
        if self.ttt is not None:
            self.ttt.set_schedule(action.ttt_frequency_tokens, action.ttt_chunk_tokens)
        self.set_routing_biases(biases)
        self.action = action

    def reset_ttt(self) -> None:
        """Restore the adapted parameters to their initial state."""
        if self.ttt is not None:
            self.ttt.reset()

    def _forward(self, x: np.ndarray, y: np.ndarray, batch: int, seq: int, context: int = 0):
        idx = torch.from_numpy(x.astype(np.int64)).view(batch, seq).to(self.device)
        tgt = torch.from_numpy(y.astype(np.int64)).view(batch, seq).to(self.device)
        with torch.inference_mode():
            out = self.ttt.forward(idx, tgt, context) if self.ttt is not None else self.model(idx, tgt, context)
        return out

    def _reference_loss(self, tokens: np.ndarray) -> float:
        """Mean loss of the uncontrolled base model (zero biases, no TTT) on tokens[:-1] -> tokens[1:]."""
        saved = [layer.selection_bias.clone() for layer in self.model.moe_layers]
        self.model.set_selection_biases(torch.zeros(self.config.num_experts))
        try:
            total, n_total = 0.0, len(tokens) - 1
            for batch, s, off in _sequences(0, n_total, self.config.seq_len):
                n = batch * s
                x = torch.from_numpy(tokens[off : off + n].astype(np.int64)).view(batch, s).to(self.device)
                y = torch.from_numpy(tokens[off + 1 : off + n + 1].astype(np.int64)).view(batch, s).to(self.device)
                with torch.inference_mode():
                    total += float(self.model(x, y).loss) * n
        finally:
            for layer, b in zip(self.model.moe_layers, saved):
                layer.selection_bias.copy_(b)
        return total / n_total

    def step(self, num_tokens: int) -> StepReport:
        """Serve the next `num_tokens` tokens of the stream, with the TTT updates that fall due among them.

        Tokens are served in sequences of `seq_len` on a grid that starts at the interval's first token. The
        interval is split where a TTT update falls due: the tokens before it are predicted and scored, the update
        trains on them (the most recent `chunk_tokens` seen), and the tokens after it are predicted by the updated
        model. A sequence that spans an update point keeps its context: its part after the point is served with the
        tokens before the point as context (recomputed by the updated model, where a KV cache would keep the old
        model's keys and values), so every token is predicted from the same context with TTT as without it, and an
        update changes the loss only through the weights. Work is priced for the served tokens alone, as with a KV
        cache.
        """
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens <= 0:
            raise ValueError(f"num_tokens must be a positive integer, got {num_tokens!r}")
        cfg = self.config
        start = time.perf_counter()
        tokens, domains = self.stream.next(num_tokens)
        loss_sum = 0.0
        counts = np.zeros((cfg.n_layers, cfg.num_experts), dtype=np.int64)
        entropy = np.zeros(cfg.n_layers)
        work: list[KernelCall] = []
        updates = []
        pos = 0
        ref_tokens = min(self.reference_tokens, num_tokens)
        served_ref_sum = 0.0
        while True:
            due_in = self.ttt.tokens_until_due() if self.ttt is not None else None
            if due_in == 0:
                updates.append(self.ttt.update())
                continue
            if pos == num_tokens:
                break
            end = num_tokens if due_in is None else min(num_tokens, pos + due_in)
            for batch, s, off in _sequences(pos, end, cfg.seq_len):
                n = batch * s
                ctx = off % cfg.seq_len  # > 0 only for the one sequence a just-applied update cut: its earlier part
                x, y = tokens[off - ctx : off + n], tokens[off - ctx + 1 : off + n + 1]
                out = self._forward(x, y, batch, s + ctx, ctx)
                loss_sum += float(out.loss) * n
                if off < ref_tokens:
                    logits = out.logits[:, ctx:]
                    served_ref_sum += _loss_sum_before(logits, tokens[off + 1 : off + n + 1], ref_tokens - off)
                c = out.expert_counts.cpu().numpy()
                counts += c
                entropy += out.router_entropy.cpu().numpy() * n
                work += forward_work(cfg, batch, s, c)
                if self.ttt is not None:
                    work += self.ttt.serving_work(batch, s)
            if self.ttt is not None:
                self.ttt.observe(tokens[pos:end], tokens[pos + 1 : end + 1])
            pos = end
        report = StepReport(
            tokens=num_tokens,
            loss=loss_sum / num_tokens,
            expert_token_counts=counts.tolist(),
            router_entropy=float(entropy.mean() / num_tokens),
            router_entropy_per_layer=(entropy / num_tokens).tolist(),
            flops_per_expert=[0.0] * cfg.num_experts,
            flops_total=0.0,
            wall_time_s=0.0,
            work=work,
            domain=Counter(domains).most_common(1)[0][0],
            domain_tokens=dict(Counter(domains)),
        )
        _add_ttt(report, updates, cfg.n_layers)
        if ref_tokens:
            report.reference_loss = self._reference_loss(tokens[: ref_tokens + 1])
            report.served_reference_loss = served_ref_sum / ref_tokens
        for call in report.work:
            if call.expert >= 0 and call.phase == "forward":
                report.flops_per_expert[call.expert] += call.flops()
        report.flops_total = float(sum(c.flops() for c in report.work))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        report.wall_time_s = time.perf_counter() - start
        return report


def _loss_sum_before(logits: torch.Tensor, targets: np.ndarray, limit: int) -> float:
    """Summed next-token loss of the first `limit` positions of a forward pass (logits [B, S, V], row-major)."""
    flat = logits.reshape(-1, logits.shape[-1])[:limit].float()
    tgt = torch.from_numpy(targets[:limit].astype(np.int64)).to(flat.device)
    return float(torch.nn.functional.cross_entropy(flat, tgt, reduction="sum"))


def _sequences(a: int, b: int, seq: int) -> list[tuple[int, int, int]]:
    """Cut interval positions [a, b) on the grid of `seq` into (batch, length, offset) groups of equal length.

    Example: a=200, b=700, seq=128 -> [(1, 56, 200), (3, 128, 256), (1, 60, 640)].
    """
    head_end = min(b, -(-a // seq) * seq)
    parts = [(1, head_end - a, a)] if head_end > a else []
    full, rem = divmod(b - head_end, seq)
    if full:
        parts.append((full, seq, head_end))
    if rem:
        parts.append((1, rem, head_end + full * seq))
    return parts


def _add_ttt(report: StepReport, updates: list, n_layers: int) -> None:
    """Fill the report's `ttt_*` fields and work from the interval's `TTTUpdate`s."""
    applied = [u for u in updates if u.applied]
    report.ttt_updates = len(applied)
    report.ttt_skipped_updates = len(updates) - len(applied)
    report.ttt_tokens_trained = sum(u.tokens for u in applied)
    report.ttt_wall_time_s = float(sum(u.wall_time_s for u in updates))
    for u in updates:
        report.work += u.work
    if applied:
        w = np.array([u.tokens for u in applied], dtype=np.float64)
        report.ttt_loss_before = float(np.dot(w, [u.loss_before for u in applied]) / w.sum())
        report.ttt_loss_after = float(np.dot(w, [u.loss_after for u in applied]) / w.sum())
        report.ttt_grad_norms = list(applied[-1].grad_norms)
        report.ttt_activation_energy = list(applied[-1].activation_energy)
    else:
        report.ttt_grad_norms = [0.0] * n_layers
        report.ttt_activation_energy = [0.0] * n_layers
