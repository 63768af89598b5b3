"""The architectures, one file each. `ARCHITECTURES` maps `--architecture` to its class, `SAVED`
a cfg.json `architecture` (SAELens's names) to the class that loads it.

Adding one: a new file with an `SAE` subclass (see sae.py), a line here, its name in
config.ARCHITECTURES.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..sae import SAE
from .batchtopk import BatchTopKSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .standard import StandardSAE
from .topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (
    StandardSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE)}
# BatchTopK and Matryoshka dictionaries are saved as `jumprelu` (their inference is a threshold).
SAVED: dict[str, type[SAE]] = {"standard": StandardSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE}


def create(architecture: str, d_in: int, d_sae: int, *, device: Any = None, dtype: torch.dtype = torch.float32,
           **params: Any) -> SAE:
    if architecture not in ARCHITECTURES:
        raise UserError(f"architecture {architecture!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](d_in, d_sae, device=device, dtype=dtype, **params)


__all__ = ["ARCHITECTURES", "SAVED", "create", "SAE", "StandardSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE",
           "MatryoshkaSAE"]
