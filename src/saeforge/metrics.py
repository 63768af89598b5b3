"""Scores of a dictionary: MMCS against known features, L0, explained variance, dead fraction."""

from __future__ import annotations

import torch


@torch.no_grad()
def mmcs(true_FD: torch.Tensor, learned_GD: torch.Tensor) -> torch.Tensor:
    """Mean max cosine similarity: for each ground-truth feature, the best cosine with any
    learned atom, averaged over ground-truth features. 1 means every feature is recovered."""
    return max_cosines(true_FD, learned_GD).mean()


def max_cosines(true_FD: torch.Tensor, learned_GD: torch.Tensor) -> torch.Tensor:
    t = torch.nn.functional.normalize(true_FD.float(), dim=-1)
    d = torch.nn.functional.normalize(learned_GD.float(), dim=-1)
    return (t @ d.T).amax(dim=1)


def l0(f_BF: torch.Tensor) -> torch.Tensor:
    """Average number of active features per input."""
    return (f_BF > 0).sum(dim=-1, dtype=torch.float32).mean()


def explained_variance(x_BD: torch.Tensor, err_BD: torch.Tensor) -> torch.Tensor:
    """1 - FVU: 1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖² over the batch."""
    total = (x_BD - x_BD.mean(dim=0)).pow(2).sum()
    return 1 - err_BD.pow(2).sum() / total.clamp_min(1e-30)


def dead_fraction(tokens_since_fired_F: torch.Tensor, window: int) -> torch.Tensor:
    """Fraction of features that have not fired in the last `window` tokens."""
    return (tokens_since_fired_F >= window).float().mean()
