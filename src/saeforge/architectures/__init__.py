"""The architectures, one file each; `ARCHITECTURES` maps a cfg.json architecture name to its class.

Adding one: a new file with an `SAE` subclass (see sae.py), and a line here.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..sae import SAE
from .standard import StandardSAE

ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (StandardSAE,)}


def create(architecture: str, d_in: int, d_sae: int, *, device: Any = None, dtype: torch.dtype = torch.float32,
           **params: Any) -> SAE:
    if architecture not in ARCHITECTURES:
        raise UserError(f"architecture {architecture!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](d_in, d_sae, device=device, dtype=dtype, **params)


__all__ = ["ARCHITECTURES", "create", "StandardSAE", "SAE"]
