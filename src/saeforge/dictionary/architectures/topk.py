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

The fast step keeps the codes as a CSR matrix: only the encoder product is dense ([B, D] × [D, F]);
the decoder, the codes' gradient (a sampled product) and both weight gradients are sparse products
that touch only the k active latents of each input (O(B·k·D) instead of O(B·F·D)). BatchTopK and
Matryoshka reuse it. At many latents the encoder product and the selection run block by block over
the latents (blocks.py: at most 64 MB of pre-activations at a time on the CPU, 1 GiB on a GPU), each block's
candidates merged into a running selection (`merge`), so no [batch, latents] tensor is made: the
step's memory grows with the parameters and Adam's state, plus batch × k.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from saeforge.dictionary import blocks, kernels
from saeforge.dictionary.sae import (SAE, ArchitectureConfig, Loss, StepOutput, exact, g_b_dec, output, set_grads,
                                     skip_grad)
from saeforge.dictionary.sparse import Transposed, crow_of, csr, row_of, sampled
from saeforge.errors import UserError
from saeforge.options import opt


@dataclass(frozen=True)
class TopKConfig(ArchitectureConfig):
    k: int = opt(32, "active latents per input (batchtopk: on average over the batch)", ge=1)
    aux_k: int | None = opt(None, "AuxK: dead latents that reconstruct the residual error (auto: d_in / 2)", ge=1)
    aux_k_coefficient: float = opt(1 / 32, "AuxK loss coefficient (0: AuxK off)", ge=0)
    # the k-architectures diverge at L1's 1e-2 on long or wide runs (docs/architectures.md, "Learning rate");
    # TopK starts as SAELens's does (docs/performance.md: "Where SAELens's CE-loss edge came from")
    default_lr = 3e-3
    default_unit_norm_decoder = True
    default_encoder_scale = 0.1
    saved = ("k",)

    def revives_dead_latents(self) -> bool:
        return self.aux_k_coefficient > 0

    def resolved(self, d_in: int, d_sae: int) -> "TopKConfig":
        if not 1 <= self.k <= d_sae:
            raise UserError(f"--k must be in [1, {d_sae}] (the dictionary size), got {self.k}")
        return self if self.aux_k else replace(self, aux_k=max(1, d_in // 2))


class TopKSAE(SAE):
    architecture = "topk"
    Config = TopKConfig
    uses_dead_mask = True

    def __init__(self, d_in: int, d_sae: int, cfg: TopKConfig | None = None, **kw: Any):
        super().__init__(d_in, d_sae, cfg, **kw)
        self.k, self.aux_k, self.aux_k_coefficient = self.cfg.k, self.cfg.aux_k, self.cfg.aux_k_coefficient

    def saved_config(self) -> dict[str, Any]:
        return {**super().saved_config(), "rescale_acts_by_decoder_norm": False}

    @classmethod
    def fold_saved(cls, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
        """SAELens's `rescale_acts_by_decoder_norm` (its TopK training default): TopK of pre·‖W_dec,i‖,
        decoded through W_dec,i/‖W_dec,i‖. The same codes and reconstruction with the norms folded:
        W_enc[:, i]·n_i, b_enc[i]·n_i, W_dec[i]/n_i."""
        if cfg.get("rescale_acts_by_decoder_norm"):
            n_F = tensors["W_dec"].double().norm(dim=-1)
            tensors["W_enc"] = tensors["W_enc"].double() * n_F
            tensors["b_enc"] = tensors["b_enc"].double() * n_F
            tensors["W_dec"] = tensors["W_dec"].double() / n_F[:, None]

    def pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.centered(x_BD) @ self.W_enc + self.b_enc

    def select(self, pre_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The active entries of a batch during training, in CSR order (rows ascending, latents
        ascending within a row): (row pointers [B + 1], latents [N], values ≥ 0 [N])."""
        if self.shards is not None:  # the global top k over every shard's latents
            rows, cols = self.shards.top_k(pre_BF, self.k)
            return crow_of(torch.bincount(rows, minlength=len(pre_BF))), cols, pre_BF[rows, cols].relu()
        return self.selected(self.merge(None, 0, pre_BF), len(pre_BF))

    def merge(self, kept: Any, f0: int, pre_Bb: torch.Tensor) -> Any:
        """The selection so far (None at first) and one more block of pre-activations, latents f0, f0 + 1, …:
        here each row's k largest (a `RowTopK`)."""
        kept = kept or RowTopK(self.k)
        vals, idx = kernels.top_k(pre_Bb, min(self.k, pre_Bb.shape[1]))
        kept.add(vals, idx + f0)
        return kept

    def selected(self, kept: Any, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`merge`'s final selection as `select` returns it."""
        vals_BK, idx_BK = kept.result()
        crow = torch.arange(0, B * idx_BK.shape[1] + 1, idx_BK.shape[1], device=idx_BK.device)
        return crow, idx_BK.reshape(-1), vals_BK.reshape(-1).relu()

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre(x_BD.reshape(-1, self.d_in))  # any leading dimensions (e.g. [batch, pos, d_in])
        return csr(*self.select(pre_BF), pre_BF.shape).to_dense().reshape(*x_BD.shape[:-1], self.d_sae)

    def codes_of(self, x_BD: torch.Tensor) -> torch.Tensor:
        if not blocks.inference_in_blocks(self, x_BD, self.k):
            return self.encode(x_BD)
        kept = None
        for f0, pre_Bb in blocks.encoder_blocks(self, self.centered(x_BD), self.k):
            kept = self.merge(kept, f0, pre_Bb)
        return csr(*self.selected(kept, len(x_BD)), (len(x_BD), self.d_sae))

    def after_step(self, vals_N: torch.Tensor) -> None:
        """Called by the fast step with the batch's active values (BatchTopK learns its threshold here)."""

    def levels(self) -> list[int]:
        """Nested prefix sizes whose reconstructions are each scored (Matryoshka); one level here."""
        return [self.d_sae]

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> Loss:
        """The autograd reference of `step`."""
        y_BE = self.target(x_BD, y_BE)
        skip_BE = self.skip_term(x_BD)
        pre_BF = self.pre(x_BD)
        crow, cols, _ = self.select(pre_BF)
        rows = row_of(crow, len(cols))
        vals = pre_BF[rows, cols].relu()  # the same entries, with their gradient path
        f_BF = torch.zeros_like(pre_BF).index_put((rows, cols), vals)
        total = 0.0
        for size in self.levels():
            err_BD = self.across(f_BF[:, :size] @ self.W_dec[:size]) + self.b_dec - y_BE
            if skip_BE is not None:
                err_BD = err_BD + skip_BE
            total = total + err_BD.pow(2).sum(-1).mean()
        mse = err_BD.pow(2).sum(-1).mean()
        aux = x_BD.new_zeros(())  # AuxK reconstructs the residual of the target
        n_dead = 0 if dead_F is None else int(dead_F.sum())
        n_dead = n_dead if self.shards is None else self.shards.count(n_dead)
        if n_dead and self.aux_k_coefficient:
            k_aux = min(self.aux_k, n_dead)
            dead_pre_BF = pre_BF.masked_fill(~dead_F, -torch.inf)
            if self.shards is None:
                a_vals, a_idx = dead_pre_BF.topk(k_aux, dim=1, sorted=False)
                a_BF = torch.zeros_like(pre_BF).scatter(1, a_idx, a_vals)
            else:
                rows, cols = self.shards.top_k(dead_pre_BF, k_aux)
                a_BF = torch.zeros_like(pre_BF).index_put((rows, cols), pre_BF[rows, cols])
            recon_BD = self.across(a_BF @ self.W_dec)
            aux = (self.aux_k_coefficient * min(n_dead / self.aux_k, 1.0)) * (recon_BD + err_BD.detach()).pow(2).sum(-1).mean()
        return Loss(total + aux, mse, aux, f_BF, err_BD)

    @torch.no_grad()
    def step(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> StepOutput:
        return sparse_step(self, x_BD, dead_F, y_BE)


@torch.no_grad()
def sparse_step(sae: TopKSAE, x_BD: torch.Tensor, dead_F: torch.Tensor | None, y_BE: torch.Tensor | None = None
                ) -> StepOutput:
    """Loss and gradients of `TopKSAE.loss` (and its subclasses') with the codes as CSR matrices:
    the decoder, the codes' gradients and both weight gradients are sparse products (MKL)."""
    x_BD = x_BD.to(sae.W_enc.dtype)
    y_BE = sae.target(x_BD, None if y_BE is None else y_BE.to(sae.W_enc.dtype))
    xc_BD = x_BD if sae.transcoder else x_BD - sae.b_dec
    B, F = len(x_BD), sae.d_sae
    n_dead = 0 if dead_F is None or not sae.aux_k_coefficient else int(dead_F.sum())  # one host sync, as SAELens; AuxK only
    dead_idx = torch.nonzero(dead_F).flatten() if n_dead else None  # ascending
    kept = aux = dead_buf = None
    for f0, pre_Bb in blocks.encoder_blocks(sae, xc_BD, sae.k):  # the one dense product (bfloat16 under autocast)
        f1 = f0 + pre_Bb.shape[1]
        with exact(x_BD.device.type):
            kept = sae.merge(kept, f0, pre_Bb)
            if n_dead:  # AuxK's candidates: each row's aux_k largest among the dead latents
                lo, hi = torch.searchsorted(dead_idx, torch.tensor([f0, f1], device=dead_idx.device)).tolist()
                if hi > lo:
                    aux = aux or RowTopK(min(sae.aux_k, n_dead))
                    cols = dead_idx[lo:hi] - f0
                    if f1 - f0 < F:  # several blocks: every block's gather into one buffer, as encoder_blocks
                        if dead_buf is None:
                            dead_buf = torch.empty(pre_Bb.numel(), dtype=pre_Bb.dtype, device=pre_Bb.device)
                        dead_Bd = torch.index_select(pre_Bb, 1, cols, out=dead_buf[:B * (hi - lo)].view(B, hi - lo))
                    else:
                        dead_Bd = pre_Bb[:, cols]
                    vals, j = kernels.top_k(dead_Bd, min(aux.k, hi - lo))
                    aux.add(vals, dead_idx[lo:hi][j])
        del pre_Bb
    with exact(x_BD.device.type):
        return sparse_rest(sae, x_BD, xc_BD, sae.selected(kept, B), aux and aux.result(), n_dead, y_BE)


class RowTopK:
    """Each row's k largest over blocks of latents: every block's own k largest are kept, and folded into
    one set (one `topk` and one sort) every FOLD blocks and at the end, not at every block."""

    FOLD = 16

    def __init__(self, k: int):
        self.k, self.vals, self.idx = k, [], []

    def add(self, vals_Bk: torch.Tensor, idx_Bk: torch.Tensor) -> None:
        """A block's candidates: values and latents [B, ≤ k], latents ascending."""
        self.vals.append(vals_Bk.to(self.vals[0].dtype) if self.vals else vals_Bk)
        self.idx.append(idx_Bk)
        if len(self.vals) >= self.FOLD:
            self.fold()

    def fold(self) -> None:
        if len(self.vals) == 1 and self.vals[0].shape[1] <= self.k:
            return
        vals, idx = torch.cat(self.vals, 1), torch.cat(self.idx, 1)
        if vals.shape[1] > self.k:
            vals, at = vals.topk(self.k, dim=1, sorted=False)
            idx = idx.gather(1, at)
        idx, order = idx.sort(dim=1)
        self.vals, self.idx = [vals.gather(1, order)], [idx]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [B, k], latents [B, k] ascending)."""
        self.fold()
        return self.vals[0], self.idx[0]


def sparse_rest(sae: TopKSAE, x_BD: torch.Tensor, xc_BD: torch.Tensor, selection: tuple, aux: tuple | None,
                n_dead: int, y_BE: torch.Tensor) -> StepOutput:
    """`sparse_step` after the encoder product and the selection: sparse products, gradients."""
    W_enc, W_dec, b_dec = sae.W_enc, sae.W_dec, sae.b_dec
    B, D = x_BD.shape
    E = sae.d_out
    F = sae.d_sae
    crow, cols, vals = selection
    vals = vals.to(x_BD.dtype)

    # the active entries split by nested level (one level unless Matryoshka), each a CSR matrix
    sizes = sae.levels()
    if len(sizes) == 1:
        parts = [(crow, cols, vals)]
    else:
        rows = row_of(crow, len(cols))
        level_N = torch.bucketize(cols, torch.tensor(sizes[:-1], device=cols.device), right=True)
        parts = []
        for lvl in range(len(sizes)):
            sel = level_N == lvl
            parts.append((crow_of(torch.bincount(rows[sel], minlength=B)), cols[sel], vals[sel]))
    A = [csr(c, j, v, (B, F)) for c, j, v in parts]
    x_hat_BE = output(sae, torch.zeros(B, E, dtype=x_BD.dtype, device=x_BD.device), x_BD)
    g_levels, total = [], x_BD.new_zeros(())
    for A_l in A:
        x_hat_BE += A_l @ W_dec
        err_BD = x_hat_BE - y_BE
        total += err_BD.pow(2).sum() / B
        g_levels.append(err_BD * (2.0 / B))
    mse = err_BD.pow(2).sum() / B
    # an entry of level l reaches the reconstructions of levels l, l+1, …: suffix sums of their gradients
    suffix = g_levels[::-1]
    for i in range(1, len(suffix)):
        suffix[i] = suffix[i] + suffix[i - 1]
    suffix = suffix[::-1]

    g_W_dec = None  # sums of [F, D] products, started from the first (no zeros, no second [F, D] at once)
    enc = []  # (latent-major order of a pattern, its latents, gradient at its entries) for the encoder
    for A_l, (c_l, j_l, v_l), S_l in zip(A, parts, suffix):
        T_l = Transposed(row_of(c_l, len(j_l)), j_l, F)
        enc.append((T_l, j_l, sampled(A_l, S_l, W_dec) * (v_l > 0)))
        part = T_l.matmul(v_l, S_l)
        g_W_dec = part if g_W_dec is None else g_W_dec.add_(part)
        del part

    aux = auxk(sae, x_BD, aux, n_dead, err_BD, enc, g_W_dec)
    # encoder gradients: [W_enc]ᵀ from the sparse code gradients, b_enc by latent
    g_enc_FD = None
    g_b_enc = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device)
    for T, cols_N, g in enc:
        part = T.matmul(g, xc_BD)
        g_enc_FD = part if g_enc_FD is None else g_enc_FD.add_(part)
        del part
        g_b_enc.index_add_(0, cols_N, g)
    feature_sums_F = torch.zeros(F, dtype=x_BD.dtype, device=x_BD.device).index_add_(0, cols, vals)

    set_grads(((W_enc, g_enc_FD.t()), (sae.b_enc, g_b_enc), (W_dec, g_W_dec), (b_dec, g_b_dec(sae, suffix[0], g_b_enc)),
               *skip_grad(sae, x_BD, suffix[0])))
    sae.after_step(vals)
    return StepOutput(total + aux, mse, aux, lambda: csr(crow, cols, vals, (B, F)), err_BD,
                      feature_sums_F)


def auxk(sae: TopKSAE, x_BD: torch.Tensor, aux: tuple[torch.Tensor, torch.Tensor] | None, n_dead: int,
         err_BD: torch.Tensor, enc: list, g_W_dec: torch.Tensor) -> torch.Tensor:
    """AuxK's loss: the aux_k largest pre-activations among dead latents (`aux`: their values and
    latents [B, k_aux], latents ascending) reconstruct the residual. Adds its decoder gradient to
    g_W_dec and its (pattern, latents, code gradients) to `enc`."""
    B, F = x_BD.shape[0], sae.d_sae
    if aux is None:
        return x_BD.new_zeros(())
    a_vals, a_idx = aux
    k_aux = a_idx.shape[1]
    crow_aux, cols_aux = torch.arange(0, B * k_aux + 1, k_aux, device=x_BD.device), a_idx.reshape(-1)
    vals_aux = a_vals.reshape(-1).to(x_BD.dtype)
    A_aux = csr(crow_aux, cols_aux, vals_aux, (B, F))
    aux_err_BD = (A_aux @ sae.W_dec).add_(err_BD)
    c = sae.aux_k_coefficient * min(n_dead / sae.aux_k, 1.0)
    g_aux_BD = aux_err_BD * (2.0 * c / B)
    T_aux = Transposed(row_of(crow_aux, len(cols_aux)), cols_aux, F)
    enc.append((T_aux, cols_aux, sampled(A_aux, g_aux_BD, sae.W_dec)))
    g_W_dec += T_aux.matmul(vals_aux, g_aux_BD)
    return c * aux_err_BD.pow(2).sum() / B
