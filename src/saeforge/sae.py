"""The sparse autoencoder: the whole model on one screen, plain torch.

    f   = ReLU((x - b_dec) @ W_enc + b_enc)          encode
    x̂   = f @ W_dec + b_dec                          decode
    L   = Σ_d (x - x̂)²  + λ · Σ_i f_i ‖W_dec,i‖       mean over the batch

Shapes: x_BD, W_enc_DF, b_enc_F, W_dec_FD, b_dec_D (B batch, D d_in, F d_sae). The same
parameter names and layout as SAELens's "standard" SAE, so dictionaries move both ways.
The fast training step (hand-written backward) lives in kernels.py; `loss` here is the
autograd reference it is tested against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, d_sae: int, *, device: Any = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        kw = dict(device=device, dtype=dtype)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        # Free-form facts about the dictionary (model, hook, init, tokens seen…), saved in cfg.json.
        self.metadata: dict[str, Any] = {}

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return torch.relu((x_BD - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        return f_BF @ self.W_dec + self.b_dec

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BD))

    def loss(self, x_BD: torch.Tensor, l1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, mse, sparsity) with autograd; the reference for kernels.loss_and_grads."""
        f_BF = self.encode(x_BD)
        err_BD = self.decode(f_BF) - x_BD
        mse = err_BD.pow(2).sum(-1).mean()
        sparsity = (f_BF * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return mse + l1 * sparsity, mse, sparsity

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Put every decoder row back on the unit sphere (after an optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Keep only the gradient tangent to each (unit) decoder row, so Adam moves along the sphere."""
        g_FD, w_FD = self.W_dec.grad, self.W_dec
        if g_FD is not None:
            g_FD.sub_((g_FD * w_FD).sum(-1, keepdim=True) * w_FD)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}"
