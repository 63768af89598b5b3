"""Dictionary initializers. Every method writes unit-norm decoder rows (atoms) and sets the
encoder consistently with them: W_enc = W_decᵀ, b_enc = 0, b_dec = 0.

Tying the encoder to the decoder at the start means each feature's pre-activation is the
projection of the input on its own atom, so features start out detecting what they write;
it is what SAELens, Anthropic and sparsify also do for their baselines.

- orthogonal: torch.nn.init.orthogonal_ on W_dec [d_sae, d_in] (orthonormal columns when
  d_sae > d_in), rows then rescaled to unit norm: the toy replication's baseline.
- xavier: xavier_uniform_ on W_dec, rows rescaled to unit norm: directions uniform-ish.

Informed initializations from a sample of the data come with the informed-init issue.
"""

from __future__ import annotations

import torch

from .errors import UserError
from .sae import SparseAutoencoder

METHODS = ("orthogonal", "xavier")


@torch.no_grad()
def initialize(sae: SparseAutoencoder, method: str, *, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    W_FD = torch.empty(sae.d_sae, sae.d_in, dtype=torch.float32)
    if method == "orthogonal":
        torch.nn.init.orthogonal_(W_FD, generator=g)
    elif method == "xavier":
        torch.nn.init.xavier_uniform_(W_FD, generator=g)
    else:
        raise UserError(f"unknown init {method!r}; choose one of {', '.join(METHODS)}")
    W_FD /= W_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sae.W_dec.copy_(W_FD)
    sae.W_enc.copy_(W_FD.T)
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    sae.metadata["init"] = method
