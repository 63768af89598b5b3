"""Evals that need the model: the dictionary spliced into the forward pass, on held-out text.

For each held-out context the model runs three times, with the hook's activation at
positions 1.. (position 0 is BOS, never trained on; see data.py) left alone (clean),
replaced by the dictionary's reconstruction (spliced), and replaced by zeros (zero-ablated).
A transcoder replaces the activation of the hook it writes with its output from the hook it
reads; several dictionaries can be spliced at once (`evaluate_splices`: a replacement model):

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
             progress: bool = False, target_hook: str | None = None) -> dict[str, Any]:
    """One dictionary spliced in: an SAE at `hook`, or a transcoder reading `hook` and writing
    `target_hook` (its output replaces that hook's activation; zero-ablation zeroes it)."""
    out = evaluate_splices(model, [(sae, hook, target_hook)], contexts, n_tokens, progress)
    return {k: v for k, v in out.items() if k != "dictionaries"} | out["dictionaries"][0]


@torch.no_grad()
def evaluate_splices(model, splices: list[tuple[SAE, str, str | None]], contexts: Iterator[torch.Tensor],
                     n_tokens: int, progress: bool = False) -> dict[str, Any]:
    """Several dictionaries spliced in at once (a replacement model: a transcoder per layer, each
    reading the stream the ones before it changed): the CE loss and KL of that model, and each
    dictionary's own figures on the clean activations (`dictionaries`, in the order given).
    `splices`: (dictionary, the hook it reads, the hook it writes or None for the same)."""
    device = next(model.parameters()).device
    splices = [(sae.to(device), hook, target or hook) for sae, hook, target in splices]
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    kl = 0.0  # KL(clean ‖ spliced) of the next-token distributions, summed over predicted positions
    recs = [Reconstruction(sae.d_sae, device) for sae, _, _ in splices]
    n_pred = 0  # predicted positions: logits at 1..n_ctx-2 (the last position has no next token)
    bar = tqdm(total=n_tokens, disable=not progress, file=sys.stderr, desc="eval", unit="tok", dynamic_ncols=True)
    while recs[0].n < n_tokens:
        try:
            tokens = next(contexts).to(device)
        except StopIteration:
            break
        seen: dict[tuple[int, str], torch.Tensor] = {}

        def record(i, part):
            def fn(act, hook):
                seen[i, part] = act[:, 1:].float()
                return act
            return fn

        def splice(i, sae):
            def fn(act, hook):  # at the target hook, after the input hook has run (or at the same one)
                x = seen.pop((i, "in"), act[:, 1:])
                act[:, 1:] = sae(x.to(sae.W_enc.dtype)).to(act.dtype)
                return act
            return fn

        def zero(act, hook):
            act[:, 1:] = 0
            return act

        runs = {"clean": [h for i, (_, hook, target) in enumerate(splices)
                          for h in ((hook, record(i, "x")), (target, record(i, "y")))],
                "spliced": [h for i, (sae, hook, target) in enumerate(splices)
                            for h in ([] if hook == target else [(hook, record(i, "in"))]) + [(target, splice(i, sae))]],
                "zero": [(target, zero) for _, _, target in splices]}
        kl += three_runs(model, tokens, runs, ce)
        n_pred += tokens[:, 2:].numel()
        for i, (sae, _, _) in enumerate(splices):
            x = seen[i, "x"].reshape(-1, sae.d_in)
            y = seen[i, "y"].reshape(-1, sae.d_out)
            f = sae.codes_of(x)
            recs[i].add(y, f, sae.decode(f, x) - y)
        bar.update(x.shape[0])
    bar.close()
    whole, per = figures(ce, kl, n_pred, recs)
    return whole | {"dictionaries": per}


def three_runs(model, tokens: torch.Tensor, runs: dict[str, list], ce: dict[str, float]) -> float:
    """The model on `tokens` under each run's hooks (clean, spliced, zero): adds each run's summed
    next-token loss at positions 1..n_ctx−2 to `ce`; returns the summed KL(clean ‖ spliced)."""
    clean_logp, kl = None, 0.0
    for name, hooks in runs.items():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
        logp = logits[:, 1:-1].float().log_softmax(-1)  # predictions made at positions 1..n_ctx-2
        ce[name] += -logp.gather(-1, tokens[:, 2:, None]).sum().item()
        if name == "clean":
            clean_logp = logp
        elif name == "spliced":
            kl += (clean_logp.exp() * (clean_logp - logp)).sum().item()
    return kl


def figures(ce: dict[str, float], kl: float, n_pred: int, recs: list[Reconstruction]) -> tuple[dict, list[dict]]:
    """The spliced model's figures (CE losses per token, CE loss recovered, KL) and each reconstruction's."""
    if recs[0].n == 0:
        raise UserError("the held-out split gave no context to evaluate on")
    ce = {k: v / n_pred for k, v in ce.items()}
    recovered = (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"]) if ce["zero"] != ce["clean"] else float("nan")
    per = []
    for rec in recs:
        out = rec.result()
        out.pop("sparsity")
        per.append(out | {"firing_frequency": rec.firing_frequency()})
    return {"eval_tokens": recs[0].n, "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
            "ce_loss_recovered": recovered, "kl_divergence": kl / n_pred}, per


@torch.no_grad()
def evaluate_clt(model, clt, hooks: list[str], targets: list[str], contexts: Iterator[torch.Tensor], n_tokens: int,
                 progress: bool = False) -> dict[str, Any]:
    """A cross-layer transcoder spliced in at every layer (a replacement model): layer j's target
    replaced by Σ_{i ≤ j} of the features read from layers 0 … j of the spliced stream. The CE loss
    and KL of that model, and per layer the figures of its output on the clean activations (L0:
    that layer's own latents)."""
    device = next(model.parameters()).device
    clt = clt.to(device)
    L = clt.n_layers
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    kl = 0.0
    recs = [Reconstruction(clt.layer_sae, device) for _ in range(L)]
    n_pred = 0
    bar = tqdm(total=n_tokens, disable=not progress, file=sys.stderr, desc="eval", unit="tok", dynamic_ncols=True)
    while recs[0].n < n_tokens:
        try:
            tokens = next(contexts).to(device)
        except StopIteration:
            break
        seen: dict[tuple[str, int], torch.Tensor] = {}
        codes: list[torch.Tensor] = []

        def record(part, i):
            def fn(act, hook):
                seen[part, i] = act[:, 1:].float()
                return act
            return fn

        def read(i):  # the spliced stream's layer-i input: layer i's features
            def fn(act, hook):
                codes.append(clt.encode_layer(act[:, 1:].to(clt.W_enc.dtype), i))
                return act
            return fn

        def write(j):
            def fn(act, hook):
                act[:, 1:] = clt.layer_output(codes, j).to(act.dtype)
                return act
            return fn

        def zero(act, hook):
            act[:, 1:] = 0
            return act

        runs = {"clean": [(h, record("x", i)) for i, h in enumerate(hooks)]
                + [(t, record("y", j)) for j, t in enumerate(targets)],
                "spliced": [h for i in range(L) for h in ((hooks[i], read(i)), (targets[i], write(i)))],
                "zero": [(t, zero) for t in targets]}
        kl += three_runs(model, tokens, runs, ce)
        n_pred += tokens[:, 2:].numel()
        f = [clt.encode_layer(seen["x", i].reshape(-1, clt.layer_in), i) for i in range(L)]
        for j in range(L):
            y = seen["y", j].reshape(-1, clt.layer_out)
            recs[j].add(y, f[j], clt.layer_output(f, j) - y)
        bar.update(f[0].shape[0])
    bar.close()
    whole, per = figures(ce, kl, n_pred, recs)
    return whole | {"explained_variance": sum(r["explained_variance"] for r in per) / L,
                    "l0": sum(r["l0"] for r in per), "dead_fraction": sum(r["dead_fraction"] for r in per) / L,
                    "layers": per}
