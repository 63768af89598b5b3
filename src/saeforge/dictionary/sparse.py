"""Sparse-matrix helpers of the fast steps: a batch's active entries as CSR matrices, the
latent-major order shared by the products with the transpose, and the sampled product that gives
the gradient at each active entry. Used by every architecture's sparse step and by synthetic.py.
"""

from __future__ import annotations

import warnings

import torch


def csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # torch's one-time "CSR support is in beta" notice: not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, size=tuple(shape), check_invariants=False)


def csr_of(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """A CSR matrix from entries in row-major order."""
    return csr(crow_of(torch.bincount(rows, minlength=shape[0])), cols, vals, shape)


class Transposed:
    """The latent-major (CSR of the transpose, [F, B]) order of a batch's entries, sorted once and
    shared by every product with the transpose (g_W_dec = Aᵀ @ g_x̂, g_W_encᵀ = Gᵀ @ x_c): torch's
    own `A.t() @ X` converts (and sorts) the pattern again for each product."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_latents: int):
        self.order = torch.argsort(cols, stable=True)
        self.crow = crow_of(torch.bincount(cols, minlength=n_latents))
        self.rows = rows[self.order]

    def matmul(self, vals: torch.Tensor, X_BD: torch.Tensor) -> torch.Tensor:
        """(pattern with values `vals`, in row-major order)ᵀ @ X: [F, D]."""
        return csr(self.crow, self.rows, vals[self.order], (len(self.crow) - 1, len(X_BD))) @ X_BD


def crow_of(counts_B: torch.Tensor) -> torch.Tensor:
    """CSR row pointers from the number of entries in each row."""
    return torch.cat([counts_B.new_zeros(1), counts_B.cumsum(0)])


def row_of(crow: torch.Tensor, n: int) -> torch.Tensor:
    """The row of each of the n entries of a CSR matrix."""
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff(), output_size=n)


def sampled(pattern: torch.Tensor, a_BD: torch.Tensor, W_FD: torch.Tensor) -> torch.Tensor:
    """(a @ Wᵀ) at the entries of a CSR pattern, in its order: the gradient reaching each active code."""
    return torch.sparse.sampled_addmm(pattern, a_BD, W_FD.t(), beta=0.0).values()
