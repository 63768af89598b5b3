"""JumpReLU (Rajamanoharan et al. 2024): a learned threshold per latent, trained through a
straight-through estimator.

    pre = (x − b_dec) @ W_enc + b_enc
    f   = pre · H(pre − θ)                   H: the step; θ ≥ 0 per latent (kept ≥ 0 after each step)
    L   = Σ_d (x − x̂)² + λ₀ · Σ_i H(pre_i − θ_i)          (`step`: L0, DeepMind's)
          or λ₀ · Σ_i tanh(4 · f_i ‖W_dec,i‖)              (`tanh`: Anthropic's)

H has no gradient; the estimator gives θ the gradient of a rectangle kernel of width
`bandwidth` around it (pre does not receive it: DeepMind's variant). λ₀ is --l0-coefficient,
θ starts at --jumprelu-init-threshold, the kernel width is --jumprelu-bandwidth (SAELens's
defaults). Saved as SAELens's `jumprelu`. The step is autograd while codes are dense (early
on) and, once fewer than SPARSE_BELOW fire, sparse past the encoder product (`sparse_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saeforge.dictionary import blocks, kernels
from saeforge.dictionary.architectures.standard import sparse_enough
from saeforge.dictionary.sae import (SAE, ArchitectureConfig, Loss, StepOutput, exact, g_b_dec, output, set_grads,
                                     skip_grad)
from saeforge.dictionary.sparse import Transposed, csr_of, sampled
from saeforge.options import opt

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


@dataclass(frozen=True)
class JumpReLUConfig(ArchitectureConfig):
    l0_coefficient: float = opt(1.0, "coefficient λ₀ of its sparsity loss", ge=0)
    jumprelu_init_threshold: float = opt(0.01, "initial threshold of every latent", ge=0)
    jumprelu_bandwidth: float = opt(0.05, "width of the straight-through estimator's kernel", gt=0)
    jumprelu_sparsity: str = opt("step", "sparsity loss, step (L0 through the estimator, DeepMind's) or tanh "
                                 "(Anthropic's)", choices=("step", "tanh"))
    coefficient = "l0_coefficient"


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    Config = JumpReLUConfig
    feature_axes = {**SAE.feature_axes, "threshold": 0}

    def __init__(self, d_in: int, d_sae: int, cfg: JumpReLUConfig | None = None, **kw: Any):
        super().__init__(d_in, d_sae, cfg, **kw)
        self.threshold = torch.nn.Parameter(torch.full((d_sae,), float(self.cfg.jumprelu_init_threshold),
                                                       dtype=self.W_enc.dtype, device=self.W_enc.device))
        self.bandwidth, self.sparsity_loss = self.cfg.jumprelu_bandwidth, self.cfg.jumprelu_sparsity

    def renewed(self, idx_K: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"threshold": torch.full((len(idx_K),), float(self.cfg.jumprelu_init_threshold), device=idx_K.device)}

    def pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.centered(x_BD) @ self.W_enc + self.b_enc

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre(x_BD)
        return pre_BF.relu() * (pre_BF > self.threshold)

    def codes_of(self, x_BD: torch.Tensor) -> torch.Tensor:
        if not blocks.inference_in_blocks(self, x_BD):
            return self.encode(x_BD)
        return blocks.firing_codes(self, x_BD, self.threshold.clamp(min=0.0))

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> Loss:
        pre_BF = self.pre(x_BD)
        f_BF = _JumpReLU.apply(pre_BF, self.threshold, self.bandwidth)
        err_BD = self.decode(f_BF, x_BD) - self.target(x_BD, y_BE)
        mse = err_BD.pow(2).sum(-1).mean()
        if self.sparsity_loss == "tanh":
            sparsity = self.across(torch.tanh(TANH_SCALE * f_BF * self.W_dec.norm(dim=-1)).sum(-1)).mean()
        else:
            sparsity = self.across(_Step.apply(pre_BF, self.threshold, self.bandwidth).sum(-1)).mean()
        return Loss(mse + coefficient * sparsity, mse, sparsity, f_BF, err_BD)

    def step(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None, sparse: bool | None = None) -> StepOutput:
        """`sparse`: None decides from the share of firing codes (SPARSE_BELOW); True / False force."""
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)  # θ < 0 would let negative pre-activations through
            if sparse is not False:
                x_BD = x_BD.to(self.W_enc.dtype)
                # the entries that fire or lie in θ's kernel: all the sparse step needs
                low_F = self.threshold - self.bandwidth / 2
                if blocks.several(self, x_BD):  # many latents: those entries block by block, no [B, F]
                    seen = blocks.firing(self, self.centered(x_BD), low_F)
                    with exact(x_BD.device.type):
                        y = self.target(x_BD, None if y_BE is None else y_BE.to(self.W_enc.dtype))
                        return sparse_step(self, x_BD, seen, coefficient, y)
                pre_BF = torch.addmm(self.b_enc, self.centered(x_BD), self.W_enc)  # bfloat16 under autocast
                if sparse or sparse_enough(pre_BF, low_F):
                    with exact(x_BD.device.type):  # after the encoder product (bfloat16 under autocast)
                        y = self.target(x_BD, None if y_BE is None else y_BE.to(self.W_enc.dtype))
                        return sparse_step(self, x_BD, kernels.firing(pre_BF, low_F), coefficient, y)
        return super().step(x_BD, coefficient, dead_F, y_BE)


# ---------------------------------------------------------------- the sparse step
# With A the firing codes (pre > θ) and K the entries inside the kernel (|pre − θ| < bandwidth/2),
# both CSR: the decoder and the weight gradients touch A's entries only, and θ's estimator needs
# the codes' gradient at K's entries only (two sampled products instead of one dense one).
@torch.no_grad()
def sparse_step(sae: JumpReLUSAE, x_BD: torch.Tensor, seen, l0: float, y_BE: torch.Tensor) -> StepOutput:
    """`seen`: (rows, latents, pre-activations) of the entries with pre > θ − bandwidth/2, row-major;
    `y_BE`: the targets."""
    W_enc, b_enc, W_dec, b_dec, theta_F = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold
    B, D = x_BD.shape
    F, bw = sae.d_sae, sae.bandwidth
    xc_BD = x_BD if sae.transcoder else x_BD - b_dec
    rows_S, cols_S, pre_S = seen
    pre_S = pre_S.to(x_BD.dtype)
    fire_S = pre_S > theta_F[cols_S]
    rows_A = rows_S[fire_S]
    A = csr_of(rows_A, cols_S[fire_S], pre_S[fire_S], (B, F))
    cols, vals = A.col_indices(), A.values()
    err_BD = output(sae, A @ W_dec, x_BD).sub_(y_BE)
    mse = err_BD.pow(2).sum() / B
    gx_BD = err_BD * (2.0 / B)
    norms_F = W_dec.norm(dim=-1)
    g_N = sampled(A, gx_BD, W_dec)  # d mse / d f at the firing codes
    feature_sums_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, vals)
    T = Transposed(rows_A, cols, F)  # the latent-major order, shared by both weight gradients
    g_W_dec = T.matmul(vals, gx_BD)

    # the kernel's entries: θ's gradient, -θ/bw · d L/d f there (+ the step loss's -λ₀/(B·bw) each)
    near_S = (pre_S - theta_F[cols_S]).abs() < bw / 2
    cols_K = cols_S[near_S]
    K = csr_of(rows_S[near_S], cols_K, pre_S[near_S], (B, F))
    g_K = sampled(K, gx_BD, W_dec)
    if sae.sparsity_loss == "tanh":  # λ₀ Σ tanh(4 f ‖W_dec‖) / B: gradients into f, and into ‖W_dec‖
        t_N = torch.tanh(TANH_SCALE * vals * norms_F[cols])
        sparsity = t_N.sum() / B
        dt_N = (1 - t_N.pow(2)) * (TANH_SCALE * l0 / B)
        g_N += dt_N * norms_F[cols]
        on_K = (K.values() > theta_F[cols_K]).to(g_K)  # f at a kernel entry: pre if it fires, else 0
        f_K = K.values() * on_K
        g_K += (1 - torch.tanh(TANH_SCALE * f_K * norms_F[cols_K]).pow(2)) * (TANH_SCALE * l0 / B) * norms_F[cols_K]
        per_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, dt_N * vals)
        g_W_dec.addcmul_(W_dec, (per_F / norms_F.clamp_min(1e-12))[:, None])
        g_theta_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(
            0, cols_K, g_K * theta_F[cols_K], alpha=-1.0 / bw)
    else:  # λ₀ Σ H(pre − θ) / B: θ only, through the kernel
        sparsity = torch.tensor(float(len(vals)) / B, dtype=x_BD.dtype, device=x_BD.device)
        g_theta_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(
            0, cols_K, g_K * theta_F[cols_K] + l0 / B, alpha=-1.0 / bw)

    g_b_enc = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, g_N)
    # the JumpReLU passes f's gradient to pre where it fires
    set_grads(((W_enc, T.matmul(g_N, xc_BD).t()), (b_enc, g_b_enc), (W_dec, g_W_dec),
               (b_dec, g_b_dec(sae, gx_BD, g_b_enc)), (theta_F, g_theta_F), *skip_grad(sae, x_BD, gx_BD)))
    return StepOutput(mse + l0 * sparsity, mse, sparsity, lambda: A, err_BD, feature_sums_F)
