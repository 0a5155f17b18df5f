"""Muon: momentum SGD whose update for each weight matrix is orthogonalised by a Newton-Schulz iteration.

Muon (Keller Jordan, 2024) replaces the update matrix G of a 2-D weight by the nearest semi-orthogonal matrix
U V^T (G = U S V^T), computed without an SVD by a quintic Newton-Schulz iteration, so every direction of the update
moves at the same rate. LaCT ("Test-Time Training Done Right", Zhang et al., 2025) uses it for its fast weights.

The iteration, for X_0 = G / ||G||_F (so every singular value is at most 1):

    X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,   A_k = X_k X_k^T,   (a, b, c) = (3.4445, -4.7750, 2.0315)

maps each singular value s to p(s) = a s + b s^3 + c s^5. The coefficients trade exactness for speed: the slope at
0 is 3.4445, so five steps lift singular values as small as ~1e-3 of the largest, and afterwards they oscillate in
roughly [0.7, 1.2] instead of converging to 1, which does not hurt the optimiser.
"""

from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation U V^T of `g` by the quintic Newton-Schulz iteration.

    Args:
        g: [..., m, n] update matrices (a batch of them when more than 2-D).
        steps: iterations; 5 brings singular values >= ~1e-3 of the largest into roughly [0.7, 1.2].
        eps: added to the Frobenius norm before normalising.

    Returns:
        [..., m, n] float32 tensor with singular values near 1 and the singular vectors of `g`.
    """
    if g.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:
        x = x.mT  # iterate on the smaller Gram matrix
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT  # (..., m, m)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon for matrix-shaped parameters (and batches of matrices: the last two dimensions).

    Each step: momentum m <- beta m + (1 - beta) g; the update u = g + beta (m - g) (Nesterov) or m, orthogonalised
    by `newton_schulz` and scaled by sqrt(max(1, rows / cols)) so its RMS per element does not shrink for tall
    matrices; then p <- p (1 - lr wd) - lr u.

    Args:
        params: tensors with at least 2 dimensions.
        lr: learning rate (the spectral norm of one step's change, before the shape scale).
        momentum: beta.
        nesterov: use the Nesterov form.
        ns_steps: Newton-Schulz iterations.
        weight_decay: decoupled weight decay.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ):
        if lr <= 0 or not 0 <= momentum < 1 or ns_steps < 1 or weight_decay < 0:
            raise ValueError(
                f"Muon needs lr > 0, 0 <= momentum < 1, ns_steps >= 1, weight_decay >= 0; got lr={lr}, "
                f"momentum={momentum}, ns_steps={ns_steps}, weight_decay={weight_decay}"
            )
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon takes matrix parameters only; got shape {tuple(p.shape)} (use AdamW)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta = group["momentum"]
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                u = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, u))
            for shape, pairs in by_shape.items():  # one batched iteration per shape: fewer, larger launches
                updates = newton_schulz(torch.stack([u for _, u in pairs]), group["ns_steps"])
                updates *= max(1.0, shape[-2] / shape[-1]) ** 0.5
                for (p, _), u in zip(pairs, updates):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u.to(p.dtype), alpha=-group["lr"])
        return loss
