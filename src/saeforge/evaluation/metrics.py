"""Scores of a dictionary, computed here and nowhere else: MMCS against known features, and the
reconstruction figures (MSE, explained variance, L0, sparsity, dead fraction) of a batch or of
a stream of batches (`Reconstruction`). Definitions: docs/design.md, "Metrics".
"""

from __future__ import annotations

import torch


@torch.no_grad()
def mmcs(true_FD: torch.Tensor, learned_GD: torch.Tensor) -> torch.Tensor:
    """Mean max cosine similarity: for each ground-truth feature, the best cosine with any
    learned atom, averaged over ground-truth features. 1 means every feature is recovered."""
    return max_cosines(true_FD, learned_GD).mean()


def mcc(cos_GF: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean correlation coefficient: the one-to-one matching of latents (rows) and true features
    (columns) that maximizes the summed |cosine| (Hungarian algorithm), and its mean |cosine|
    over the min(G, F) matched pairs. Also returns each true feature's latent (−1: unmatched)."""
    from scipy.optimize import linear_sum_assignment

    c = cos_GF.abs().double().cpu()
    rows, cols = linear_sum_assignment(1 - c.numpy())
    latent_of_F = torch.full((c.shape[1],), -1, dtype=torch.long)
    latent_of_F[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return float(c[rows, cols].mean()), latent_of_F


def uniqueness(cos_GF: torch.Tensor) -> float:
    """Distinct true features among the latents' best matches, per latent (1: no two latents share one)."""
    return len(cos_GF.abs().argmax(1).unique()) / max(cos_GF.shape[0], 1)


def max_cosines(true_FD: torch.Tensor, learned_GD: torch.Tensor) -> torch.Tensor:
    t = torch.nn.functional.normalize(true_FD.float(), dim=-1)
    d = torch.nn.functional.normalize(learned_GD.float(), dim=-1)
    return (t @ d.T).amax(dim=1)


def squared_error(err_BD: torch.Tensor) -> torch.Tensor:
    """‖x − x̂‖² per input [B]."""
    return err_BD.pow(2).sum(-1)


def l0(f_BF: torch.Tensor) -> torch.Tensor:
    """Average number of active features per input."""
    return (f_BF > 0).sum(dim=-1, dtype=torch.float32).mean()


def firing(f_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs each feature fired on [F], L0) of a batch's codes, dense or a CSR matrix (the sparse
    steps': read from its entries, never densified)."""
    if f_BF.layout == torch.sparse_csr:
        vals, cols = f_BF.values(), f_BF.col_indices()
        on = vals > 0
        counts_F = torch.bincount(cols[on], minlength=f_BF.shape[1])
        return counts_F, on.sum(dtype=torch.float32) / f_BF.shape[0]
    fired_BF = f_BF > 0
    return fired_BF.sum(0), l0(f_BF)


def explained_variance(x_BD: torch.Tensor, err_BD: torch.Tensor) -> torch.Tensor:
    """1 − FVU: 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the batch."""
    total = (x_BD - x_BD.mean(dim=0)).pow(2).sum()
    return 1 - err_BD.pow(2).sum() / total.clamp_min(1e-30)


def dead_fraction(tokens_since_fired_F: torch.Tensor, window: int) -> torch.Tensor:
    """Fraction of features that have not fired in the last `window` tokens."""
    return (tokens_since_fired_F >= window).float().mean()


class Reconstruction:
    """Reconstruction figures accumulated over batches (held-out evals): sums kept in float64
    on the host side of `.item()`, firing counts on the device."""

    def __init__(self, d_sae: int, device: torch.device | str):
        self.n = 0
        self.sq_err = self.sum_x2 = self.l0_sum = self.sparsity_sum = 0.0
        self.sum_x_D: torch.Tensor | float = 0.0
        self.fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)

    @torch.no_grad()
    def add(self, x_BD: torch.Tensor, f_BF: torch.Tensor, err_BD: torch.Tensor,
            sparsity_B: torch.Tensor | None = None) -> None:
        self.n += x_BD.shape[0]
        self.sq_err += err_BD.pow(2).sum().item()
        self.sum_x_D = self.sum_x_D + x_BD.sum(0).double()
        self.sum_x2 += x_BD.double().pow(2).sum().item()
        fired_F, _ = firing(f_BF)  # dense codes, or a wide dictionary's CSR (SAE.codes_of)
        self.l0_sum += int(fired_F.sum())
        self.fired_F += fired_F
        if sparsity_B is not None:
            self.sparsity_sum += sparsity_B.sum().item()

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        sum_x = self.sum_x_D if isinstance(self.sum_x_D, float) else self.sum_x_D.pow(2).sum().item()
        total_var = self.sum_x2 - sum_x / n
        return {"mse": self.sq_err / n, "mse_relative": self.sq_err / total_var,
                "explained_variance": 1.0 - self.sq_err / total_var, "l0": self.l0_sum / n,
                "sparsity": self.sparsity_sum / n, "dead_fraction": (self.fired_F == 0).float().mean().item()}

    def firing_frequency(self) -> torch.Tensor:
        return (self.fired_F.double() / max(self.n, 1)).cpu()
