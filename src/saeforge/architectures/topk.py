"""TopK (Gao et al. 2024), with AuxK: the model on one screen, then its sparse fast step.

    pre = (x − b_dec) @ W_enc + b_enc
    f   = ReLU(TopK_k(pre))                 the k largest pre-activations of each input, others 0
    x̂   = f @ W_dec + b_dec
    L   = Σ_d (x − x̂)²  + c_aux · s · Σ_d (e − ê)²      mean over the batch

AuxK: with e = x − x̂ (no gradient) and ê = TopK_aux(pre restricted to dead latents) @ W_dec, the
aux_k (default d_in / 2) largest pre-activations among dead latents reconstruct the residual;
s = min(#dead / aux_k, 1) as in SAELens, c_aux = --aux-k-coefficient (1/32). Sparsity comes from
k, so there is no coefficient; the `sparsity` column of metrics.jsonl holds the AuxK term.
Saved as SAELens's `topk` (rescale_acts_by_decoder_norm false).

The fast step keeps the codes as (row, latent, value) entries: only the encoder product is dense
([B, D] × [D, F]); the decoder, its gradient and the encoder's weight gradient touch only the k
active latents of each input (O(B·k·D) instead of O(B·F·D)). BatchTopK and Matryoshka reuse it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..sae import SAE, Loss, StepOutput


class TopKSAE(SAE):
    architecture = "topk"
    coefficient = None
    uses_dead_mask = True

    def __init__(self, d_in: int, d_sae: int, *, k: int = 32, aux_k: int | None = None,
                 aux_k_coefficient: float = 1 / 32, **kw: Any):
        super().__init__(d_in, d_sae, **kw)
        if not 1 <= k <= d_sae:
            raise UserError(f"--k must be in [1, {d_sae}] (the dictionary size), got {k}")
        self.k, self.aux_k, self.aux_k_coefficient = k, aux_k or d_in // 2, aux_k_coefficient

    @classmethod
    def from_train_config(cls, cfg: Any) -> dict[str, Any]:
        return {"k": cfg.k, "aux_k": cfg.aux_k, "aux_k_coefficient": cfg.aux_k_coefficient}

    def saved_config(self) -> dict[str, Any]:
        return {"architecture": "topk", "k": self.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def from_saved_config(cls, cfg: dict, where: str) -> dict:
        k = cfg.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"{where}: a topk dictionary needs an integer k >= 1, got {k!r}")
        if cfg.get("rescale_acts_by_decoder_norm"):
            raise UserError(f"{where}: rescale_acts_by_decoder_norm true is not supported; save it from SAELens's "
                            "inference SAE, which folds the decoder norm into the weights")
        return {"k": k}

    def pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        return (x_BD - self.b_dec) @ self.W_enc + self.b_enc

    def select(self, pre_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The active entries of a batch during training: (rows, latents, values ≥ 0)."""
        vals_BK, idx_BK = pre_BF.topk(self.k, dim=1, sorted=False)
        rows = torch.arange(len(pre_BF), device=pre_BF.device).repeat_interleave(self.k)
        return rows, idx_BK.reshape(-1), vals_BK.reshape(-1).relu()

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre(x_BD)
        rows, cols, vals = self.select(pre_BF)
        return torch.zeros_like(pre_BF).index_put_((rows, cols), vals)

    def after_step(self, vals_N: torch.Tensor) -> None:
        """Called by the fast step with the batch's active values (BatchTopK learns its threshold here)."""

    def levels(self) -> list[int]:
        """Nested prefix sizes whose reconstructions are each scored (Matryoshka); one level here."""
        return [self.d_sae]

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None) -> Loss:
        """The autograd reference of `step`."""
        pre_BF = self.pre(x_BD)
        rows, cols, vals = self.select(pre_BF)
        vals = pre_BF[rows, cols].relu()  # the same entries, with their gradient path
        f_BF = torch.zeros_like(pre_BF).index_put((rows, cols), vals)
        total = 0.0
        for size in self.levels():
            err_BD = f_BF[:, :size] @ self.W_dec[:size] + self.b_dec - x_BD
            total = total + err_BD.pow(2).sum(-1).mean()
        mse = err_BD.pow(2).sum(-1).mean()
        aux = x_BD.new_zeros(())
        n_dead = 0 if dead_F is None else int(dead_F.sum())
        if n_dead and self.aux_k_coefficient:
            k_aux = min(self.aux_k, n_dead)
            a_vals, a_idx = pre_BF.masked_fill(~dead_F, -torch.inf).topk(k_aux, dim=1, sorted=False)
            recon_BD = torch.zeros_like(pre_BF).scatter(1, a_idx, a_vals) @ self.W_dec
            aux = (self.aux_k_coefficient * min(n_dead / self.aux_k, 1.0)) * (recon_BD + err_BD.detach()).pow(2).sum(-1).mean()
        return Loss(total + aux, mse, aux, f_BF, err_BD)

    @torch.no_grad()
    def step(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None) -> StepOutput:
        return sparse_step(self, x_BD, dead_F)


@torch.no_grad()
def sparse_step(sae: TopKSAE, x_BD: torch.Tensor, dead_F: torch.Tensor | None) -> StepOutput:
    """Loss and gradients of `TopKSAE.loss` (and its subclasses') with the codes kept sparse."""
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    B, D = x_BD.shape
    F = sae.d_sae
    x_BD = x_BD.to(W_enc.dtype)
    xc_BD = x_BD - b_dec
    pre_BF = torch.addmm(b_enc, xc_BD, W_enc)                       # the one dense product
    rows, cols, vals = sae.select(pre_BF)                            # N active entries
    Wa_ND = W_dec[cols]

    # x̂ of each nested level (one level unless Matryoshka); entries sorted into levels by latent
    sizes = sae.levels()
    level_N = torch.bucketize(cols, torch.tensor(sizes[:-1], device=cols.device), right=True)
    contrib_ND = vals[:, None] * Wa_ND
    x_hat_BD = b_dec.expand(B, D).clone()
    g_levels = []  # d loss / d x̂ of each level
    total = x_BD.new_zeros(())
    for lvl in range(len(sizes)):
        sel = level_N == lvl
        x_hat_BD.index_add_(0, rows[sel], contrib_ND[sel])
        err_BD = x_hat_BD - x_BD
        total += err_BD.pow(2).sum() / B
        g_levels.append(err_BD * (2.0 / B))
    mse = err_BD.pow(2).sum() / B
    if len(sizes) == 1:
        gx_BD = g_levels[0]
        gx_ND = gx_BD[rows]                                           # d loss / d x̂ seen by each entry
    else:  # an entry of level l reaches the reconstructions of levels l, l+1, …: suffix sums
        suffix = torch.stack(g_levels).flip(0).cumsum(0).flip(0)      # [L, B, D]
        gx_ND = suffix[level_N, rows]
        gx_BD = suffix[0]                                             # d loss / d b_dec through the decoder

    g_vals = (Wa_ND * gx_ND).sum(1) * (vals > 0)
    g_W_dec = torch.zeros_like(W_dec).index_add_(0, cols, vals[:, None] * gx_ND)
    enc_rows, enc_cols, enc_g = rows, cols, g_vals

    aux = x_BD.new_zeros(())
    n_dead = 0 if dead_F is None else int(dead_F.sum())  # one host sync, as SAELens; AuxK only
    if n_dead and sae.aux_k_coefficient:
        k_aux = min(sae.aux_k, n_dead)
        a_vals_BK, a_idx_BK = pre_BF.masked_fill_(~dead_F, -torch.inf).topk(k_aux, dim=1, sorted=False)
        a_rows = torch.arange(B, device=x_BD.device).repeat_interleave(k_aux)
        a_cols, a_vals = a_idx_BK.reshape(-1), a_vals_BK.reshape(-1)
        Wx_ND = W_dec[a_cols]
        aux_err_BD = torch.zeros_like(x_BD).index_add_(0, a_rows, a_vals[:, None] * Wx_ND).add_(err_BD)
        c = sae.aux_k_coefficient * min(n_dead / sae.aux_k, 1.0)
        aux = c * aux_err_BD.pow(2).sum() / B
        g_aux_BD = aux_err_BD * (2.0 * c / B)
        ga_ND = g_aux_BD[a_rows]
        g_W_dec.index_add_(0, a_cols, a_vals[:, None] * ga_ND)
        enc_rows, enc_cols = torch.cat([rows, a_rows]), torch.cat([cols, a_cols])
        enc_g = torch.cat([g_vals, (Wx_ND * ga_ND).sum(1)])

    # encoder gradients from the entries: [W_enc; b_enc]ᵀ rows of the active latents only
    g_enc_FD = torch.zeros(F, D, dtype=x_BD.dtype, device=x_BD.device).index_add_(
        0, enc_cols, enc_g[:, None] * xc_BD[enc_rows])
    g_b_enc = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, enc_cols, enc_g)
    g_b_dec = gx_BD.sum(0).sub_(W_enc @ g_b_enc)
    feature_sums_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, vals)

    for p, g in ((W_enc, g_enc_FD.t()), (b_enc, g_b_enc), (W_dec, g_W_dec), (b_dec, g_b_dec)):
        if p.grad is None:
            p.grad = g.contiguous()
        else:
            p.grad.copy_(g)
    sae.after_step(vals)
    f_BF = lambda: torch.zeros(B, F, dtype=x_BD.dtype, device=x_BD.device).index_put_((rows, cols), vals)  # noqa: E731
    return StepOutput(total + aux, mse, aux, f_BF, err_BD, feature_sums_F)
