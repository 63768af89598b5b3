"""JumpReLU (Rajamanoharan et al. 2024): a learned threshold per latent, trained through a
straight-through estimator.

    pre = (x − b_dec) @ W_enc + b_enc
    f   = pre · H(pre − θ)                   H: the step; θ ≥ 0 per latent (kept ≥ 0 after each step)
    L   = Σ_d (x − x̂)² + λ₀ · Σ_i H(pre_i − θ_i)          (`step`: L0, DeepMind's)
          or λ₀ · Σ_i tanh(4 · f_i ‖W_dec,i‖)              (`tanh`: Anthropic's)

H has no gradient; the estimator gives θ the gradient of a rectangle kernel of width
`bandwidth` around it (pre does not receive it: DeepMind's variant). λ₀ is --l0-coefficient,
θ starts at --jumprelu-init-threshold, the kernel width is --jumprelu-bandwidth (SAELens's
defaults). Trained by autograd (the codes are dense early on); saved as SAELens's `jumprelu`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..sae import SAE, Loss, StepOutput

TANH_SCALE = 4.0


def rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        g_threshold = -(rectangle((pre - threshold) / ctx.bandwidth) / ctx.bandwidth * grad).sum(0)
        return torch.zeros_like(pre), g_threshold, None


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        kernel = rectangle((pre - threshold) / ctx.bandwidth) / ctx.bandwidth
        return (pre > threshold) * grad, -(threshold * kernel * grad).sum(0), None


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    coefficient = "l0_coefficient"
    feature_axes = {**SAE.feature_axes, "threshold": 0}

    def __init__(self, d_in: int, d_sae: int, *, init_threshold: float = 0.01, bandwidth: float = 0.05,
                 sparsity: str = "step", **kw: Any):
        super().__init__(d_in, d_sae, **kw)
        self.threshold = torch.nn.Parameter(torch.full((d_sae,), float(init_threshold), dtype=self.W_enc.dtype,
                                                       device=self.W_enc.device))
        self.init_threshold, self.bandwidth, self.sparsity_loss = init_threshold, bandwidth, sparsity

    @classmethod
    def from_train_config(cls, cfg: Any) -> dict[str, Any]:
        return {"init_threshold": cfg.jumprelu_init_threshold, "bandwidth": cfg.jumprelu_bandwidth,
                "sparsity": cfg.jumprelu_sparsity}

    def renewed(self, idx_K: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"threshold": torch.full((len(idx_K),), float(self.init_threshold), device=idx_K.device)}

    def pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        return (x_BD - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre(x_BD)
        return pre_BF.relu() * (pre_BF > self.threshold)

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None) -> Loss:
        pre_BF = self.pre(x_BD)
        f_BF = _JumpReLU.apply(pre_BF, self.threshold, self.bandwidth)
        err_BD = self.decode(f_BF) - x_BD
        mse = err_BD.pow(2).sum(-1).mean()
        if self.sparsity_loss == "tanh":
            sparsity = torch.tanh(TANH_SCALE * f_BF * self.W_dec.norm(dim=-1)).sum(-1).mean()
        else:
            sparsity = _Step.apply(pre_BF, self.threshold, self.bandwidth).sum(-1).mean()
        return Loss(mse + coefficient * sparsity, mse, sparsity, f_BF, err_BD)

    def step(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None) -> StepOutput:
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)  # θ < 0 would let negative pre-activations through
        return super().step(x_BD, coefficient, dead_F)
