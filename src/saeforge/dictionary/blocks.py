"""The encoder product over blocks of latents: how every architecture's step and inference avoid a
[batch, latents] tensor at many latents.

A block holds at most BLOCK_BYTES of pre-activations (GPU_BLOCK_BYTES on a GPU). The k-architectures
fold each block's k largest into a running selection (topk.py); ReLU + L1 and JumpReLU keep each
block's entries above a threshold (`firing`), so their steps run the sparse path on the whole batch
with no [batch, latents] tensor.
"""

from __future__ import annotations

import torch

from saeforge.dictionary import kernels
from saeforge.dictionary.sparse import csr_of

BLOCK_BYTES = 64 * 2**20  # the most pre-activations a step holds at once (a [B, latents] block) on the CPU
# On a GPU wider blocks keep the device busy: on an H200 the 1,048,576-latent step took 84 ms in 1 GiB
# blocks against 128 ms in 64 MB ones, 6.0 against 8.8 ms at 65,536 (docs/performance.md, bench_gpu.py).
GPU_BLOCK_BYTES = 2**30


def latent_blocks(B: int, F: int, k: int, itemsize: int, device_type: str = "cpu") -> list[tuple[int, int]]:
    """The latent ranges [f0, f1) the encoder product and the selection run over: all of them at once
    while [B, F] fits the block budget (BLOCK_BYTES, GPU_BLOCK_BYTES off the CPU), else blocks as wide as
    fit (a multiple of 16, the kernels'; at least 16·k)."""
    budget = BLOCK_BYTES if device_type == "cpu" else GPU_BLOCK_BYTES
    if B * F * itemsize <= budget:
        return [(0, F)]
    width = max(16 * k, budget // (B * itemsize) // 16 * 16)
    return [(f0, min(F, f0 + width)) for f0 in range(0, F, width)]


def several(sae, x_BD: torch.Tensor, k: int = 1) -> bool:
    """Whether the encoder product over x_BD runs in more than one block."""
    return len(latent_blocks(len(x_BD), sae.d_sae, k, x_BD.element_size(), x_BD.device.type)) > 1


def inference_in_blocks(sae, x_BD: torch.Tensor, k: int = 1) -> bool:
    """Whether `codes_of` goes block by block: a [inputs, d_in] batch on a whole dictionary (a feature
    shard encodes as before) whose encoder product takes more than one block."""
    return x_BD.dim() == 2 and sae.shards is None and several(sae, x_BD, k)


def encoder_blocks(sae, xc_BD: torch.Tensor, k: int = 1):
    """(f0, pre-activations [B, f1 − f0], the encoder bias included) of each block of latents
    (`latent_blocks`). With several blocks each is written into one buffer, reused: fresh blocks
    fragment a heap that keeps freed memory (runtime.keep_freed_memory: 16 blocks of 64 MB grew the
    process by 1 GB). Under autocast or autograd torch allocates each block (`out=` supports neither)."""
    B = len(xc_BD)
    blocks = latent_blocks(B, sae.d_sae, k, xc_BD.element_size(), xc_BD.device.type)
    buf = (torch.empty(B * (blocks[0][1] - blocks[0][0]), dtype=xc_BD.dtype, device=xc_BD.device)
           if len(blocks) > 1 and not torch.is_autocast_enabled(xc_BD.device.type) and not torch.is_grad_enabled()
           else None)
    for f0, f1 in blocks:
        out = None if buf is None else buf[:B * (f1 - f0)].view(B, f1 - f0)
        yield f0, torch.addmm(sae.b_enc[f0:f1], xc_BD, sae.W_enc[:, f0:f1], out=out)


def firing(sae, xc_BD: torch.Tensor, low_F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, latents, pre-activations) of the entries with pre > low, row-major (CSR order), the
    encoder product run block by block: `kernels.firing` over each block, the pieces in row order."""
    rows, cols, vals = [], [], []
    for f0, pre_Bb in encoder_blocks(sae, xc_BD):
        r, c, v = kernels.firing(pre_Bb, low_F[f0:f0 + pre_Bb.shape[1]])
        rows.append(r)
        cols.append(c + f0)
        vals.append(v)
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    if len(rows):
        order = torch.argsort(rows, stable=True)  # blocks ascend in latents: a stable sort by row is CSR order
        rows, cols, vals = rows[order], cols[order], vals[order]
    return rows, cols, vals


def firing_codes(sae, x_BD: torch.Tensor, low_F: torch.Tensor) -> torch.Tensor:
    """The codes of the entries with pre > low as a CSR matrix [inputs, latents], block by block (the
    codes of ReLU + L1, JumpReLU and BatchTopK at inference, with their thresholds)."""
    rows, cols, vals = firing(sae, sae.centered(x_BD), low_F)
    return csr_of(rows, cols, vals, (len(x_BD), sae.d_sae))
