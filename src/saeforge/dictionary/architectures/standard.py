"""ReLU + L1, SAELens's "standard" architecture: the model on one screen, then its fast step.

    f   = ReLU((x − b_dec) @ W_enc + b_enc)          encode
    x̂   = f @ W_dec + b_dec                          decode
    L   = Σ_d (x − x̂)²  + λ · Σ_i f_i ‖W_dec,i‖       mean over the batch

`loss` is the autograd reference; `step` is the hand-written backward that tests/test_sae.py
checks against it gradient for gradient: dense while codes are dense (early in training), and
past the encoder product sparse once fewer than SPARSE_BELOW of the codes fire (docs/performance.md);
always sparse at many latents, the encoder product run over blocks of latents (blocks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saeforge.dictionary import blocks, kernels
from saeforge.dictionary.sae import (SAE, ArchitectureConfig, Loss, StepOutput, exact, g_b_dec, output, set_grads,
                                     skip_grad)
from saeforge.dictionary.sparse import Transposed, csr_of, sampled
from saeforge.errors import UserError
from saeforge.options import opt

# Above this share of firing codes the dense products are faster than the sparse ones
# (measured by scripts/benchmarks/bench_train_step.py --sparse-l0: docs/performance.md).
SPARSE_BELOW = 0.04
DECIDE_ROWS = 256  # the share is counted on the batch's first rows: a fraction of a pass, one host sync


def sparse_enough(pre_BF: torch.Tensor, threshold) -> bool:
    """Whether fewer than SPARSE_BELOW of the codes fire (pre > threshold), judged on DECIDE_ROWS rows."""
    head = pre_BF[:DECIDE_ROWS]
    return int(torch.count_nonzero(head > threshold)) < SPARSE_BELOW * head.numel()


@dataclass(frozen=True)
class StandardConfig(ArchitectureConfig):
    l1_coefficient: float = opt(0.55, "sparsity coefficient λ in MSE + λ·Σ f_i‖W_dec,i‖ (inputs scaled to "
                                "E‖x‖² = d_in)", ge=0, aliases=("--l1",))
    coefficient = "l1_coefficient"


class StandardSAE(SAE):
    architecture = "standard"
    Config = StandardConfig

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.centered(x_BD) @ self.W_enc + self.b_enc)

    def codes_of(self, x_BD: torch.Tensor) -> torch.Tensor:
        if not blocks.inference_in_blocks(self, x_BD):
            return self.encode(x_BD)
        return blocks.firing_codes(self, x_BD, torch.zeros_like(self.b_enc))

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> Loss:
        f_BF = self.encode(x_BD)
        err_BD = self.decode(f_BF, x_BD) - self.target(x_BD, y_BE)
        mse = err_BD.pow(2).sum(-1).mean()
        sparsity = self.across((f_BF * self.W_dec.norm(dim=-1)).sum(-1)).mean()
        return Loss(mse + coefficient * sparsity, mse, sparsity, f_BF, err_BD)

    @classmethod
    def from_saved_config(cls, cfg: dict, where: str) -> StandardConfig:
        act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
        if act != "relu":
            raise UserError(f"{where}: activation_fn {act!r} is not supported; saeforge loads ReLU dictionaries")
        return super().from_saved_config(cfg, where)

    @torch.no_grad()
    def step(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> StepOutput:
        return fast_step(self, x_BD, coefficient, y_BE=y_BE)


# ---------------------------------------------------------------- the fast step
# Autograd on [batch, features] tensors spends as much on the elementwise work (ReLU, its mask,
# the penalty and their gradients) and one avoidable product as on the useful products. Here:
#
#   forward   pre_BF = (x_BD − b_dec) @ W_enc + b_enc          product 1
#             f_BF   = relu_(pre_BF)                            in place
#             out    = f_BF @ [W_dec | ‖W_dec‖]                 product 2: x̂ and the penalty at once
#   backward  g_BF   = addmm(λ‖W_dec‖/B, g_x̂_BD, W_decᵀ)        product 3
#             g_BF  *= (f_BF > 0)                               one fused pass
#             [g_W_enc; g_b_enc] = [x_c | 1]ᵀ @ g_BF            product 4, bias gradient as an extra row
#             [g_W_dec | Σ_b f] = f_BFᵀ @ [g_x̂ | 1/B]           product 5, firing sums as an extra column
#             g_b_dec = Σ_b g_x̂ − g_b_enc @ W_encᵀ              a [F]x[F,D] product, not [B,F]x[F,D]
#
# Autograd needs a sixth product (the gradient through x − b_dec); the chain rule gives it as
# g_b_enc @ W_encᵀ because b_dec is broadcast over the batch. The firing sums fall out of
# product 5 for free and feed the dead-feature statistics.
@torch.no_grad()
def fast_step(sae: StandardSAE, x_BD: torch.Tensor, l1: float, sparse: bool | None = None,
              y_BE: torch.Tensor | None = None) -> StepOutput:
    """Compute the loss and write the gradients into `.grad` of the parameters.
    `sparse`: None decides from the share of codes that fire (SPARSE_BELOW); True / False force.
    `y_BE`: a transcoder's targets. Under autocast the [B, F] products run in bfloat16; the rest in
    the parameters' dtype."""
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    B, D = x_BD.shape
    E = sae.d_out
    x_BD = x_BD.to(W_enc.dtype)
    y_BE = sae.target(x_BD, None if y_BE is None else y_BE.to(W_enc.dtype))

    xc_BD1 = torch.empty(B, D + 1, dtype=x_BD.dtype, device=x_BD.device)
    if sae.transcoder:
        xc_BD1[:, :D] = x_BD
    else:
        torch.sub(x_BD, b_dec, out=xc_BD1[:, :D])
    xc_BD1[:, D] = 1.0
    xc_BD = xc_BD1[:, :D]

    norms_F = W_dec.norm(dim=-1)
    if sparse is not False and blocks.several(sae, xc_BD):  # many latents: no [B, F], the sparse step on
        seen = blocks.firing(sae, xc_BD, torch.zeros_like(b_enc))  # the entries that fire, block by block
        with exact(x_BD.device.type):
            return sparse_relu_step(sae, x_BD, xc_BD, seen, norms_F, l1, y_BE)
    pre_BF = xc_BD @ W_enc  # the bias joins below: folded into the sparse path's comparison
    if sparse or (sparse is None and sparse_enough(pre_BF, -b_enc)):
        with exact(x_BD.device.type):
            return sparse_relu_step(sae, x_BD, xc_BD, kernels.firing(pre_BF, -b_enc, b_enc), norms_F, l1, y_BE)
    dtype = x_BD.dtype
    f_BF = pre_BF.add_(b_enc).relu_()
    dec_FE1 = torch.cat([W_dec, norms_F[:, None]], dim=1)
    out_BE1 = (f_BF @ dec_FE1).to(dtype)
    err_BE = output(sae, out_BE1[:, :E], x_BD).sub_(y_BE)
    mse = err_BE.pow(2).sum() / B
    sparsity = out_BE1[:, E].sum() / B

    # d mse / d x̂ = 2 err / B; last column carries the penalty's d/dW_dec and the firing sums.
    gx_BE1 = torch.empty(B, E + 1, dtype=x_BD.dtype, device=x_BD.device)
    torch.mul(err_BE, 2.0 / B, out=gx_BE1[:, :E])
    gx_BE1[:, E] = 1.0
    gx_BE = gx_BE1[:, :E]

    g_BF = torch.addmm(norms_F * (l1 / B), gx_BE, W_dec.t())
    g_BF = torch.ops.aten.threshold_backward(g_BF, f_BF, 0.0)

    g_enc_D1F = (xc_BD1.t() @ g_BF).to(dtype)
    g_dec_FE1 = (f_BF.t() @ gx_BE1).to(dtype)
    feature_sums_F = g_dec_FE1[:, E]

    g_W_dec = g_dec_FE1[:, :E].addcmul_(W_dec, (feature_sums_F * (l1 / B) / norms_F.clamp_min(1e-12))[:, None])
    g_b_enc = g_enc_D1F[D]
    set_grads(((W_enc, g_enc_D1F[:D]), (b_enc, g_b_enc), (W_dec, g_W_dec), (b_dec, g_b_dec(sae, gx_BE, g_b_enc)),
               *skip_grad(sae, x_BD, gx_BE)))
    return StepOutput(mse + l1 * sparsity, mse, sparsity, f_BF, err_BE, feature_sums_F)


# ---------------------------------------------------------------- the sparse step
# Once codes are sparse, every product after the encoder's touches only the firing entries
# (A: the codes as a CSR matrix, N = B·L0 entries):
#
#   x̂ = A @ W_dec + b_dec                     O(N·D) instead of O(B·F·D)
#   g at A's entries = sampled (g_x̂ @ W_decᵀ) + λ‖W_dec‖/B     (ReLU: only firing codes pass gradient)
#   g_W_enc = (Gᵀ @ x_c)ᵀ,  g_W_dec = Aᵀ @ g_x̂ + penalty term,  g_b_enc = Σ by latent
@torch.no_grad()
def sparse_relu_step(sae: StandardSAE, x_BD: torch.Tensor, xc_BD: torch.Tensor, firing, norms_F: torch.Tensor,
                     l1: float, y_BE: torch.Tensor) -> StepOutput:
    """`firing`: (rows, latents, values) of the codes that fire, row-major; `y_BE`: the targets."""
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    B, D = x_BD.shape
    F = sae.d_sae
    rows, cols, vals = firing
    vals = vals.to(x_BD.dtype)  # bfloat16 when the encoder product ran under autocast
    A = csr_of(rows, cols, vals, (B, F))
    err_BE = output(sae, A @ W_dec, x_BD).sub_(y_BE)
    mse = err_BE.pow(2).sum() / B
    sparsity = (vals * norms_F[cols]).sum() / B
    gx_BE = err_BE * (2.0 / B)
    g_N = sampled(A, gx_BE, W_dec).add_(norms_F[cols], alpha=l1 / B)
    g_b_enc = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, g_N)
    feature_sums_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, vals)
    T = Transposed(rows, cols, F)
    g_W_dec = T.matmul(vals, gx_BE).addcmul_(W_dec, (feature_sums_F * (l1 / B) / norms_F.clamp_min(1e-12))[:, None])
    set_grads(((W_enc, T.matmul(g_N, xc_BD).t()), (b_enc, g_b_enc), (W_dec, g_W_dec),
               (b_dec, g_b_dec(sae, gx_BE, g_b_enc)), *skip_grad(sae, x_BD, gx_BE)))
    return StepOutput(mse + l1 * sparsity, mse, sparsity, lambda: A, err_BE, feature_sums_F)
