"""The MoE language model: byte-level transformer whose feed-forward blocks are heterogeneous SwiGLU experts.

Each block is pre-norm attention followed by a pre-norm MoE layer. The router is a linear gate with softmax scores,
top-k selection on `scores + selection_bias` and combine weights from the unbiased scores (renormalised over the
chosen k); dropless. Expert execution goes through `kernels.dispatch`, which picks Triton on CUDA.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import dispatch
from moe_runtime.config import MoEConfig


class ModelOutput(NamedTuple):
    """What one forward pass returns.

    Attributes:
        logits: [B, S, V].
        loss: mean next-token cross-entropy (nats) over the scored positions, or None without targets.
        aux_loss: Switch load-balancing loss summed over layers (0-dim tensor).
        expert_counts: int64 [L, E] slots routed to each expert per layer.
        router_entropy: [L] mean entropy (nats) of each layer's unbiased routing distribution.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor
    expert_counts: torch.Tensor
    router_entropy: torch.Tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # each (B, S, d)
        q, k, v = (t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, S, hd)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class MoELayer(nn.Module):
    """Router + heterogeneous SwiGLU experts.

    Buffers:
        selection_bias: [E] added to the softmax scores only when choosing the top-k.

    `adapter`, when set (by the TTT engine), is called as `adapter(x, y) -> y` on the layer's input x [T, d] and
    output y [T, d], so test-time fast weights can modulate the layer without touching the base weights.
    """

    def __init__(self, cfg: MoEConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.top_k = cfg.top_k
        self.widths = tuple(cfg.expert_widths)
        self.gate = nn.Linear(cfg.d_model, cfg.num_experts, bias=False)
        total = sum(self.widths)
        self.w_up = nn.Parameter(torch.empty(cfg.d_model, 2 * total))  # (d, sum 2 f_e): gate|up per expert
        self.w_down = nn.Parameter(torch.empty(total, cfg.d_model))  # (sum f_e, d)
        nn.init.normal_(self.w_up, std=1.0 / math.sqrt(cfg.d_model))
        # Scale each expert's down projection by 1/sqrt(its width) so wide and narrow experts start comparable.
        with torch.no_grad():
            start = 0
            for f in self.widths:
                self.w_down[start : start + f].normal_(std=1.0 / math.sqrt(f) / math.sqrt(2 * cfg.n_layers))
                start += f
        self.register_buffer("selection_bias", torch.zeros(cfg.num_experts), persistent=False)
        self.adapter: nn.Module | None = None

    def forward(
        self, x: torch.Tensor, scored: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [T, d] -> (y [T, d], aux_loss (0-dim), counts [E], entropy (0-dim)).

        `scored`, a bool [T] mask, limits the counts, the entropy and the aux loss to those tokens (the others are
        context, computed only so that later tokens can attend to them); None counts all.
        """
        logits = self.gate(x)  # (T, E)
        r = dispatch.route(logits, self.selection_bias, self.top_k)
        y = dispatch.expert_swiglu(x, r.topk_ids, r.topk_weights.to(x.dtype), self.w_up, self.w_down, self.widths)
        if self.adapter is not None:
            y = self.adapter(x, y)
        num_experts = logits.shape[-1]
        counts, scores, slots = r.expert_counts, r.scores, r.topk_ids.numel()
        if scored is not None:
            ids = r.topk_ids[scored]
            counts = torch.bincount(ids.flatten(), minlength=num_experts).to(counts.dtype)
            scores, slots = scores[scored], ids.numel()
        # Switch/GShard: E * sum_e (share of slots on e) * (mean probability of e).
        slot_share = counts.float() / max(1, slots)
        aux = num_experts * torch.sum(slot_share.detach() * scores.mean(dim=0))
        entropy = -(scores * torch.log(scores.clamp_min(1e-12))).sum(-1).mean()
        return y, aux, counts, entropy


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig, layer_index: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.moe = MoELayer(cfg, layer_index)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, scored: torch.Tensor | None = None):
        x = x + self.drop(self.attn(self.ln1(x)))
        b, s, d = x.shape
        y, aux, counts, entropy = self.moe(self.ln2(x).reshape(b * s, d), scored)
        return x + self.drop(y.view(b, s, d)), aux, counts, entropy


class MoETransformer(nn.Module):
    """Byte-level MoE language model. Input [B, S] int64 tokens, output `ModelOutput`."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=0.02)
            nn.init.normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))
            nn.init.normal_(block.moe.gate.weight, std=0.02)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [b.moe for b in self.blocks]

    def set_selection_biases(self, biases: torch.Tensor) -> None:
        """Set selection biases: [E] for every MoE layer at once, or [L, E] per layer."""
        biases = torch.as_tensor(biases, dtype=torch.float32)
        L, E = self.cfg.n_layers, self.cfg.num_experts
        if biases.shape == (E,):
            biases = biases.expand(L, E)
        if biases.shape != (L, E):
            raise ValueError(f"routing biases must have shape ({E},) or ({L}, {E}), got {tuple(biases.shape)}")
        if not torch.isfinite(biases).all():
            raise ValueError("routing biases must be finite")
        for layer, b in zip(self.moe_layers, biases):
            layer.selection_bias.copy_(b)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, context: int = 0) -> ModelOutput:
        """Logits for `idx` [B, S] int token ids (S <= seq_len); with `targets` [B, S] also the mean loss, nats.

        `context` (0 <= context < S): the first `context` positions of every row are context only: later positions
        attend to them, but the loss, expert counts, router entropy and aux loss cover positions >= context alone.
        Logits are returned for all S positions.

        Token ids are range-checked where they live on the CPU; on a GPU that check would cost a device sync every
        call, and an id out of range there fails as CUDA's device-side assert.
        """
        if idx.dim() != 2 or idx.dtype not in (torch.int32, torch.int64):  # what nn.Embedding takes
            raise ValueError(
                f"token ids must be a [batch, seq] int32/int64 tensor, got {idx.dtype} of shape {tuple(idx.shape)}"
            )
        b, s = idx.shape
        if s > self.cfg.seq_len:
            raise ValueError(f"sequence length {s} exceeds the model's seq_len {self.cfg.seq_len}")
        if idx.device.type == "cpu" and idx.numel():
            low, high = (int(v) for v in torch.aminmax(idx))
            if low < 0 or high >= self.cfg.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), got ids from {low} to {high}")
        if isinstance(context, bool) or not isinstance(context, numbers.Integral) or not 0 <= context < max(s, 1):
            raise ValueError(f"context must be an integer in [0, {s}) for sequences of {s} tokens, got {context!r}")
        pos = torch.arange(s, device=idx.device)
        scored = (pos >= context).repeat(b) if context else None  # (B * S,) row-major, as the MoE layers see tokens
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, S, d)
        aux_total = x.new_zeros((), dtype=torch.float32)
        counts, entropies = [], []
        for block in self.blocks:
            x, aux, c, ent = block(x, scored)
            aux_total = aux_total + aux
            counts.append(c)
            entropies.append(ent.detach())
        logits = F.linear(self.ln_f(x), self.tok_emb.weight)  # (B, S, V), tied embedding
        loss = None
        if targets is not None:
            tail = logits[:, context:].float()
            loss = F.cross_entropy(tail.reshape(-1, tail.shape[-1]), targets[:, context:].reshape(-1))
        return ModelOutput(logits, loss, aux_total, torch.stack(counts), torch.stack(entropies).float())
