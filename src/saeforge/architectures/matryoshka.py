"""Matryoshka BatchTopK (Bussmann et al. / Nabeshima 2025): nested prefixes of the dictionary,
each of which must reconstruct the input on its own.

With prefix sizes m_1 < m_2 < … < m_L = d_sae, the loss is Σ_l ‖x − (f[:m_l] @ W_dec[:m_l] + b_dec)‖²
(mean over the batch) plus AuxK: the first latents are pushed to carry the most general features,
which is claimed to curb feature absorption. Sizes: --matryoshka-sizes (auto: d_sae/16, d_sae/4,
d_sae). Selection, threshold, saving and the sparse step are BatchTopK's; the step scores every
level in one pass over the active entries.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .batchtopk import BatchTopKSAE


def parse_sizes(text: str, d_sae: int) -> list[int]:
    """--matryoshka-sizes as a strictly increasing list ending at d_sae (appended when missing)."""
    if not text:
        sizes = sorted({max(1, d_sae // 16), max(1, d_sae // 4)} - {d_sae})
    else:
        try:
            sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
        except ValueError:
            raise UserError(f"--matryoshka-sizes must be comma-separated integers, got {text!r}") from None
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or any(s < 1 for s in sizes):
        raise UserError(f"--matryoshka-sizes must be positive and strictly increasing, got {text!r}")
    if sizes and sizes[-1] > d_sae:
        raise UserError(f"--matryoshka-sizes: {sizes[-1]} exceeds the dictionary size {d_sae}")
    return sizes if sizes and sizes[-1] == d_sae else [*sizes, d_sae]


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"

    def __init__(self, d_in: int, d_sae: int, *, matryoshka_sizes: str = "", **kw: Any):
        super().__init__(d_in, d_sae, **kw)
        self.sizes = parse_sizes(matryoshka_sizes, d_sae)

    @classmethod
    def from_train_config(cls, cfg: Any) -> dict[str, Any]:
        return {**super().from_train_config(cfg), "matryoshka_sizes": cfg.matryoshka_sizes}

    def levels(self) -> list[int]:
        return self.sizes
