"""Evals that need the model: the dictionary spliced into the forward pass, on held-out text.

For each held-out context the model runs three times, with the hook's activation at
positions 1.. (position 0 is BOS, never trained on; see data.py) left alone (clean),
replaced by the dictionary's reconstruction (spliced), and replaced by zeros (zero-ablated):

    CE-loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean)

CE is the mean next-token loss (nats) of the predictions made at positions 1..n_ctx−2, and the KL
divergence (nats) is KL(clean ‖ spliced) of the next-token distributions there, averaged. The same pass
gives the dictionary's own figures on the held-out activations: MSE (summed over d_in, raw
units and relative to E‖x − mean‖²), explained variance, L0, and the firing frequency of each
feature (dead = never fired on the eval tokens).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch
from tqdm import tqdm

from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError
from saeforge.evaluation.metrics import Reconstruction


@torch.no_grad()
def evaluate(model, sae: SAE, hook: str, contexts: Iterator[torch.Tensor], n_tokens: int,
             progress: bool = False) -> dict[str, Any]:
    device = next(model.parameters()).device
    sae = sae.to(device)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    kl = 0.0  # KL(clean ‖ spliced) of the next-token distributions, summed over predicted positions
    rec = Reconstruction(sae.d_sae, device)
    n_pred = 0  # predicted positions: logits at 1..n_ctx-2 (the last position has no next token)
    bar = tqdm(total=n_tokens, disable=not progress, file=sys.stderr, desc="eval", unit="tok", dynamic_ncols=True)
    while rec.n < n_tokens:
        try:
            tokens = next(contexts).to(device)
        except StopIteration:
            break
        seen: dict[str, torch.Tensor] = {}

        def record(act, hook):
            seen["x"] = act[:, 1:].float()
            return act

        def splice(act, hook):
            x = act[:, 1:]
            act[:, 1:] = sae(x.to(sae.W_enc.dtype)).to(act.dtype)
            return act

        def zero(act, hook):
            act[:, 1:] = 0
            return act

        clean_logp = None
        for name, fn in (("clean", record), ("spliced", splice), ("zero", zero)):
            logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, fn)], return_type="logits")
            logp = logits[:, 1:-1].float().log_softmax(-1)  # predictions made at positions 1..n_ctx-2
            ce[name] += -logp.gather(-1, tokens[:, 2:, None]).sum().item()
            if name == "clean":
                clean_logp = logp
            elif name == "spliced":
                kl += (clean_logp.exp() * (clean_logp - logp)).sum().item()
        n_pred += tokens[:, 2:].numel()
        x = seen["x"].reshape(-1, sae.d_in)
        f = sae.encode(x)
        rec.add(x, f, sae.decode(f) - x)
        bar.update(x.shape[0])
    bar.close()
    if rec.n == 0:
        raise UserError("the held-out split gave no context to evaluate on")
    ce = {k: v / n_pred for k, v in ce.items()}
    recovered = (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"]) if ce["zero"] != ce["clean"] else float("nan")
    figures = rec.result()
    figures.pop("sparsity")
    return {
        "eval_tokens": rec.n,
        "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
        "ce_loss_recovered": recovered, "kl_divergence": kl / n_pred, **figures,
        "firing_frequency": rec.firing_frequency(),
    }
