"""The fast training step: loss and all four gradients with a hand-written backward.

Why not autograd: on [batch, features] tensors the elementwise work (ReLU, its mask, the
penalty and their gradients) and one avoidable matrix product cost as much as the useful
products. Here, per step:

    forward   pre_BF = addmm(b_enc, x_BD - b_dec, W_enc)      product 1
              f_BF   = relu_(pre_BF)                            in place
              out    = f_BF @ [W_dec | ‖W_dec‖]                 product 2: x̂ and the penalty at once
    backward  g_BF   = addmm(λ‖W_dec‖/B, g_x̂_BD, W_decᵀ)        product 3
              g_BF  *= (f_BF > 0)                               one fused pass
              [g_W_enc; g_b_enc] = [x_c | 1]ᵀ @ g_BF            product 4, bias gradient as an extra row
              [g_W_dec | Σ_b f] = f_BFᵀ @ [g_x̂ | 1/B]           product 5, firing sums as an extra column
              g_b_dec = Σ_b g_x̂ - g_b_enc @ W_encᵀ              a [F]x[F,D] product, not [B,F]x[F,D]

Autograd needs a sixth product (the gradient through x - b_dec, [B,F]x[F,D]); the chain
rule gives it as g_b_enc @ W_encᵀ because b_dec is broadcast over the batch. The per-feature
activation sums fall out of product 5 for free and feed the dead-feature statistics.
tests/test_sae.py checks every gradient against SparseAutoencoder.loss with autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sae import SparseAutoencoder


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, on device
    mse: torch.Tensor  # scalar: Σ_d err², mean over batch
    sparsity: torch.Tensor  # scalar: Σ_i f_i‖W_dec,i‖, mean over batch
    f_BF: torch.Tensor  # codes (for L0 on logging steps)
    err_BD: torch.Tensor  # x̂ - x (for explained variance on logging steps)
    feature_sums_F: torch.Tensor  # Σ_b f_bi: > 0 exactly when feature i fired in the batch


@torch.no_grad()
def loss_and_grads(sae: SparseAutoencoder, x_BD: torch.Tensor, l1: float) -> StepOutput:
    """Compute the loss and write the gradients into `.grad` of the four parameters."""
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    B, D = x_BD.shape
    x_BD = x_BD.to(W_enc.dtype)

    xc_BD1 = torch.empty(B, D + 1, dtype=x_BD.dtype, device=x_BD.device)
    torch.sub(x_BD, b_dec, out=xc_BD1[:, :D])
    xc_BD1[:, D] = 1.0
    xc_BD = xc_BD1[:, :D]

    f_BF = torch.addmm(b_enc, xc_BD, W_enc).relu_()
    norms_F = W_dec.norm(dim=-1)
    dec_FD1 = torch.cat([W_dec, norms_F[:, None]], dim=1)
    out_BD1 = f_BF @ dec_FD1
    err_BD = out_BD1[:, :D].add_(b_dec).sub_(x_BD)
    mse = err_BD.pow(2).sum() / B
    sparsity = out_BD1[:, D].sum() / B

    # d mse / d x̂ = 2 err / B; last column carries the penalty's d/dW_dec and the firing sums.
    gx_BD1 = torch.empty(B, D + 1, dtype=x_BD.dtype, device=x_BD.device)
    torch.mul(err_BD, 2.0 / B, out=gx_BD1[:, :D])
    gx_BD1[:, D] = 1.0
    gx_BD = gx_BD1[:, :D]

    g_BF = torch.addmm(norms_F * (l1 / B), gx_BD, W_dec.t())
    g_BF = torch.ops.aten.threshold_backward(g_BF, f_BF, 0.0)

    g_enc_D1F = xc_BD1.t() @ g_BF
    g_dec_FD1 = f_BF.t() @ gx_BD1
    feature_sums_F = g_dec_FD1[:, D]

    g_W_dec = g_dec_FD1[:, :D].addcmul_(W_dec, (feature_sums_F * (l1 / B) / norms_F.clamp_min(1e-12))[:, None])
    g_b_enc = g_enc_D1F[D]
    g_b_dec = gx_BD.sum(0).sub_(W_enc @ g_b_enc)

    for p, g in ((W_enc, g_enc_D1F[:D]), (b_enc, g_b_enc), (W_dec, g_W_dec), (b_dec, g_b_dec)):
        if p.grad is None:
            p.grad = g.contiguous()
        else:
            p.grad.copy_(g)
    return StepOutput(mse + l1 * sparsity, mse, sparsity, f_BF, err_BD, feature_sums_F)
