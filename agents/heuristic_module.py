"""The router-module face of `EnergyAwareTTTRouter` (`agents.heuristic`): `forward(gate_logits, num_tokens,
context)` routes an MoE layer's tokens with the heuristic's biases, reading the GPU through a `GpuSystemMonitor`
(part 5), TTT feedback from the context's tensors (part 1) and each expert's cost from the kernel cost model at the
config's shape (part 2). A mixin: the decision itself (`_decide`) and the state live in `EnergyAwareTTTRouter`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.heuristic_parts import _normalise, _stat
from kernels import DeploymentScale, dispatch


class RouterModuleFace:
    """`forward` and its helpers for `EnergyAwareTTTRouter` (which supplies num_experts, top_k, config,
    kernel_cost_model, gpu_system_monitor, the targets, `_decide` and `update_energy_aware_loss`)."""

    def forward(
        self, gate_logits: torch.Tensor, num_tokens: int | None = None, context: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Route tokens with energy-aware selection biases.

        Args:
            gate_logits: [T, E] or [B, S, E] router logits.
            num_tokens: tokens these logits stand for (token counting for fast-weight updates); T when None.
            context: optional `gradients` / `activations` (lists of tensors, part 1), `loss` (tensor or float,
                nats), `gpu_stats` (the seed's keys; used without a monitor), `inference_latency_ms`, and
                `routing_biases` ([E]; used as they are instead of the router's own decision, e.g. zeros).

        Returns:
            (expert_indices int64 [..., k], routing_weights float32 [..., k] (unbiased scores renormalised over the
            chosen k), metadata dict: biases, expert_counts, thermal_scaling, ttt_feedback, ttt_schedule,
            energy_aware_loss, gpu_stats, ttt_updated).
        """
        if gate_logits.dim() not in (2, 3) or gate_logits.shape[-1] != self.num_experts:
            raise ValueError(
                f"gate_logits must be [T, {self.num_experts}] or [B, S, {self.num_experts}], "
                f"got {tuple(gate_logits.shape)}"
            )
        context = context or {}
        updates_before = self._stats["ttt_update_count"]
        lead = gate_logits.shape[:-1]
        logits = gate_logits.reshape(-1, self.num_experts)  # (T, E)
        tokens = int(num_tokens if num_tokens is not None else logits.shape[0])
        stats = self._monitor_stats(context)  # part 5
        feedback = self._extract_ttt_feedback(context)  # part 1
        summary = {k: float(v.mean()) for k, v in feedback.items()}
        with torch.no_grad():
            scores = torch.softmax(logits.float(), dim=-1)  # (T, E)
            unbiased = torch.topk(scores, self.top_k, dim=-1).indices
            load0 = _normalise(torch.bincount(unbiased.flatten().cpu(), minlength=self.num_experts).double().numpy())
        energy_loss = self.update_energy_aware_loss(
            stats,
            target_power=self.target_power_w,
            target_temp=self.target_temp_c,
            target_latency=self.target_latency_ms,
        )
        fixed = context.get("routing_biases")
        d = None
        if fixed is None:
            loss = context.get("loss")
            loss = float(loss) if loss is not None else None
            loss_delta = loss - self._last_loss if loss is not None and self._last_loss is not None else 0.0
            loss_gap = loss - self._loss_ema if loss is not None and self._loss_ema is not None else 0.0
            if loss is not None:
                self._last_loss = loss
                self._loss_ema = loss if self._loss_ema is None else 0.9 * self._loss_ema + 0.1 * loss
            d = self._decide(
                stats,
                {
                    "gradient_mean": summary.get("gradient_mean", 0.0),
                    "activation_energy_mean": summary.get("activation_energy_mean", 0.0),
                },
                self._expert_cost,
                load0,
                loss_delta=loss_delta,
                loss_gap=loss_gap,
                backlog=0.0,
                energy_loss=energy_loss["total_loss"],
                tokens=tokens,
                power_w=_stat(stats, "power_watt"),
                utilization=float(stats.get("gpu_utilization_percent") or 50.0) / 100.0,
            )
            biases = torch.as_tensor(d.biases, dtype=torch.float32)
        else:
            biases = torch.as_tensor(np.asarray(fixed, dtype=np.float32))
            if biases.shape != (self.num_experts,):
                raise ValueError(
                    f"context['routing_biases'] must have shape ({self.num_experts},), got {tuple(biases.shape)}"
                )
        r = dispatch.route(logits, biases.to(logits.device), self.top_k)
        self.statistical_load_balancer.update_usage(r.topk_ids)
        metadata = {
            "biases": biases.cpu().numpy(),
            "expert_counts": r.expert_counts.detach().cpu().numpy(),
            "thermal_scaling": d.thermal_scaling if d else self.thermal_adaptive_scaler.get_scaling_factor(stats),
            "ttt_feedback": summary,
            "ttt_schedule": (d.ttt_frequency_tokens, d.ttt_chunk_tokens) if d else None,
            "energy_aware_loss": energy_loss,
            "gpu_stats": stats,
            "ttt_updated": self._stats["ttt_update_count"] > updates_before,
        }
        k = self.top_k
        return r.topk_ids.view(*lead, k), r.topk_weights.view(*lead, k), metadata

    def _monitor_stats(self, context: dict[str, Any]) -> dict[str, Any]:
        if self.gpu_system_monitor is not None:
            stats = dict(self.gpu_system_monitor.get_current_stats())
        else:
            stats = dict(context.get("gpu_stats") or {})
        if "inference_latency_ms" in context:
            stats["inference_latency_ms"] = float(context["inference_latency_ms"])
        return stats

    def _extract_ttt_feedback(self, context: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        """Part 1 (the seed's code): gradient norms and activation energy from a context's tensors."""
        feedback: dict[str, torch.Tensor] = {}
        if not context:
            return feedback
        if context.get("gradients"):
            grad_norms = torch.stack([g.detach().float().norm() for g in context["gradients"]])
            feedback["gradient_norms"] = grad_norms
            feedback["gradient_mean"] = grad_norms.mean()
            feedback["gradient_std"] = grad_norms.std() if len(grad_norms) > 1 else torch.zeros(())
        if context.get("activations"):
            act_energy = torch.stack([torch.sum(a.detach().float() ** 2) for a in context["activations"]])
            feedback["activation_energy"] = act_energy
            feedback["activation_energy_mean"] = act_energy.mean()
        return feedback

    def _module_expert_cost(self) -> np.ndarray:
        """[E] each expert's energy per token over the mean: the KCM at the config's shape, else by width."""
        widths = getattr(self.config, "expert_widths", None)
        if not widths or len(widths) != self.num_experts:
            return np.ones(self.num_experts)
        widths = np.asarray(widths, dtype=np.float64)
        if self.kernel_cost_model is None:
            return widths / widths.mean()
        c = self.config
        scale = DeploymentScale(
            d_model=c.d_model,
            layers=c.n_layers,
            heads=c.n_heads,
            seq_len=c.seq_len,
            expert_widths=tuple(int(w) for w in widths),
        )
        energy = np.asarray(self.kernel_cost_model.expert_energy_per_token_j(scale), dtype=np.float64)
        return energy / energy.mean()
