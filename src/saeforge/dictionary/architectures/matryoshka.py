"""Matryoshka BatchTopK (Bussmann et al. / Nabeshima 2025): nested prefixes of the dictionary,
each of which must reconstruct the input on its own.

With prefix sizes m_1 < m_2 < … < m_L = d_sae, the loss is Σ_l ‖x − (f[:m_l] @ W_dec[:m_l] + b_dec)‖²
(mean over the batch) plus AuxK: the first latents are pushed to carry the most general features,
which is claimed to curb feature absorption. Sizes: --matryoshka-sizes (auto: d_sae/16, d_sae/4,
d_sae). Selection, threshold, saving and the sparse step are BatchTopK's; the step scores every
level in one pass over the active entries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from saeforge.dictionary.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from saeforge.errors import UserError
from saeforge.options import opt


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


@dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    matryoshka_sizes: str = opt("", "nested prefix sizes, e.g. 128,512,2048 (the dictionary size closes the "
                                "list; empty: d_sae/16, d_sae/4, d_sae)")

    def resolved(self, d_in: int, d_sae: int) -> "MatryoshkaConfig":
        sizes = ",".join(map(str, parse_sizes(self.matryoshka_sizes, d_sae)))
        return replace(super().resolved(d_in, d_sae), matryoshka_sizes=sizes)


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    Config = MatryoshkaConfig

    def __init__(self, d_in: int, d_sae: int, cfg: MatryoshkaConfig | None = None, **kw: Any):
        super().__init__(d_in, d_sae, cfg, **kw)
        self.sizes = parse_sizes(self.cfg.matryoshka_sizes, d_sae)

    def levels(self) -> list[int]:
        return self.sizes
