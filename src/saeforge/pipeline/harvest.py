"""`saeforge harvest`: the model's activations on `--tokens` tokens of the dataset, to an activation cache."""

from __future__ import annotations

from typing import Any

from saeforge.config import HarvestConfig
from saeforge.runtime import check_out_dir, pick_device
from saeforge.sources import data
from saeforge.sources.cache import harvest
from saeforge.errors import UserError
from saeforge.sources.language_model import default_hook, hook_order, load_model, resolve_hook


def run_harvest(cfg: HarvestConfig) -> dict[str, Any]:
    check_out_dir(cfg.out, outputs=("manifest.json",))
    device = pick_device(cfg.device, cfg.threads)
    model = load_model(cfg.model, device, progress=cfg.progress)
    hook = cfg.hook or default_hook(model)
    stop = resolve_hook(model, hook)
    hooks = [hook]
    if cfg.target_hook:  # a transcoder's pairs: the target after the input in the forward
        if hook_order(model).get(cfg.target_hook, -1) <= hook_order(model).get(hook, -1):
            resolve_hook(model, cfg.target_hook)
            raise UserError(f"--target-hook {cfg.target_hook} does not run after --hook {hook} in the forward: a "
                            "transcoder reads a hook and writes a later one")
        t_stop = resolve_hook(model, cfg.target_hook)
        stop = None if stop is None or t_stop is None else max(stop, t_stop)
        hooks.append(cfg.target_hook)
    n_ctx = model.cfg.n_ctx
    n_contexts = -(-cfg.tokens // (n_ctx - 1))

    def stream(skip: int = 0):
        return data.contexts(model, cfg.dataset, cfg.split, seed=cfg.seed, batch=cfg.contexts_per_pass,
                             text_column=cfg.text_column, skip=skip)

    settings = {"model": cfg.model, "hook": hook, "dataset": cfg.dataset, "split": cfg.split, "seed": cfg.seed,
                "n_ctx": n_ctx} | ({"target_hook": cfg.target_hook} if cfg.target_hook else {})
    return harvest(model, hooks, stop, stream(), cfg.out, settings, n_contexts, cfg.contexts_per_shard,
                   dtype=cfg.dtype, progress=cfg.progress, skip_contexts=stream)
