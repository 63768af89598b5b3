"""The architectures, one file each: the SAE subclass (its model on one screen and its fast step)
and its `Config` (its settings, their defaults, help and bounds, its default lr and start, the
fields cfg.json records). `ARCHITECTURES` maps `--architecture` to its class, `SAVED` a cfg.json
`architecture` (SAELens's names) to the class that loads it.

Adding one: a new file with an `SAE` subclass and its `ArchitectureConfig` (see sae.py), and its
class in the tuple below. Its settings then show in `--help`, config files, --dictionaries specs
and saeforge.train; the run config, trainer, summary and cfg.json read them from its Config.
"""

from __future__ import annotations

from typing import Any

import torch

from saeforge.dictionary.architectures.batchtopk import BatchTopKSAE
from saeforge.dictionary.architectures.jumprelu import JumpReLUSAE
from saeforge.dictionary.architectures.matryoshka import MatryoshkaSAE
from saeforge.dictionary.architectures.standard import StandardSAE
from saeforge.dictionary.architectures.topk import TopKSAE
from saeforge.dictionary.sae import SAE, ArchitectureConfig
from saeforge.errors import UserError

ARCHITECTURES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (
    StandardSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE)}
CONFIGS: dict[str, type[ArchitectureConfig]] = {name: cls.Config for name, cls in ARCHITECTURES.items()}
# BatchTopK and Matryoshka dictionaries are saved as `jumprelu` (their inference is a threshold).
SAVED: dict[str, type[SAE]] = {name: cls for name, cls in ARCHITECTURES.items() if not cls.saved_as}


def create(architecture: str, d_in: int, d_sae: int, cfg: ArchitectureConfig | None = None, *, device: Any = None,
           dtype: torch.dtype = torch.float32, **settings: Any) -> SAE:
    if architecture not in ARCHITECTURES:
        raise UserError(f"architecture {architecture!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](d_in, d_sae, cfg, device=device, dtype=dtype, **settings)


__all__ = ["ARCHITECTURES", "CONFIGS", "SAVED", "create", "SAE", "StandardSAE", "TopKSAE", "BatchTopKSAE",
           "JumpReLUSAE", "MatryoshkaSAE"]
