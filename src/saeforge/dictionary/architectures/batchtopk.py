"""BatchTopK (Bussmann et al. 2024): TopK over the whole batch, with a threshold learned for inference.

Training keeps the k·B largest ReLU(pre) values of a batch of B inputs (k per input on average;
a busy input may use more latents, a quiet one fewer). That is not a function of one input, so
inference uses a threshold instead: f = ReLU(pre)·(pre > θ), with θ the running mean of the
smallest value kept in each training batch, an exponential moving average with rate
THRESHOLD_RATE (SAELens's topk_threshold_lr: a mean over the last ~100 batches, which follows
the dictionary as it changes). Under torchrun each rank selects within its own batch (as SAELens
does per device) and the EMA moves by the mean of the ranks' smallest values, one small
all-reduce, so every replica keeps the same θ. `encode` (evals, resampling scores, inspect, the saved dictionary)
uses θ; the training step uses the batch selection. Saved as SAELens's `jumprelu` with threshold θ
for every latent; AuxK and the sparse step are TopK's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saeforge import distributed
from saeforge.dictionary import blocks
from saeforge.dictionary.architectures.topk import RowTopK, TopKConfig, TopKSAE
from saeforge.dictionary.sparse import crow_of

THRESHOLD_RATE = 0.01


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    # TopK's small start left many latents dead here (docs/architectures.md, section b)
    default_unit_norm_decoder = False
    default_encoder_scale = 1.0
    saved = ()  # saved as SAELens's jumprelu: the threshold is a tensor
    shardable = False  # the batch selection and its threshold: not yet over feature shards


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    Config = BatchTopKConfig
    saved_as = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, cfg: BatchTopKConfig | None = None, **kw: Any):
        super().__init__(d_in, d_sae, cfg, **kw)
        self.register_buffer("topk_threshold", torch.zeros((), dtype=self.W_enc.dtype, device=self.W_enc.device))

    def merge(self, kept: Any, f0: int, pre_Bb: torch.Tensor) -> Any:
        """The batch's k·B largest (ReLU'd) pre-activations so far: (values, rows, latents)."""
        B, W = pre_Bb.shape
        vals, flat = pre_Bb.relu().flatten().topk(min(self.k * B, B * W), sorted=False)
        kept = [*(kept or []), (vals, flat // W, flat % W + f0)]
        return [self.fold(kept, B)] if len(kept) >= RowTopK.FOLD else kept

    def fold(self, kept: list, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Blocks' candidates folded into the batch's k·B largest of them."""
        vals, rows, cols = (torch.cat([p[i].to(kept[0][i].dtype) for p in kept]) for i in range(3))
        if len(vals) > self.k * B:
            vals, at = vals.topk(self.k * B, sorted=False)
            rows, cols = rows[at], cols[at]
        return vals, rows, cols

    def selected(self, kept: Any, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vals, rows, cols = self.fold(kept, B)
        flat, order = (rows * self.d_sae + cols).sort()  # CSR order
        return crow_of(torch.bincount(rows, minlength=B)), flat % self.d_sae, vals[order]

    def codes_of(self, x_BD: torch.Tensor) -> torch.Tensor:
        """At inference the entries above the learned threshold, not the batch's top k·B."""
        if not blocks.inference_in_blocks(self, x_BD, self.k):
            return self.encode(x_BD)
        return blocks.firing_codes(self, x_BD, self.topk_threshold.clamp_min(0).expand(self.d_sae))

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre(x_BD)
        return pre_BF.relu() * (pre_BF > self.topk_threshold)

    @torch.no_grad()
    def after_step(self, vals_N: torch.Tensor) -> None:
        smallest = torch.where(vals_N > 0, vals_N, torch.inf).min()  # no host sync
        found = torch.isfinite(smallest)
        if distributed.active():  # the mean over ranks that kept something
            both = distributed.all_reduce_sum_(torch.stack([torch.where(found, smallest, 0.0), found.to(smallest)]))
            found, smallest = both[1] > 0, both[0] / both[1].clamp(min=1)
        mixed = (1 - THRESHOLD_RATE) * self.topk_threshold + THRESHOLD_RATE * smallest
        self.topk_threshold.copy_(torch.where(found, mixed, self.topk_threshold))

    def saved_config(self) -> dict[str, Any]:
        return {"architecture": self.saved_as}

    def folded(self, input_scale: float, output_scale: float | None = None) -> dict[str, torch.Tensor]:
        w = super().folded(input_scale, output_scale)
        w["threshold"] = torch.full_like(w["b_enc"], float(w.pop("topk_threshold")))
        return w
