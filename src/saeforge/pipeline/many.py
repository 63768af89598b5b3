"""`saeforge train --hooks H1,H2 --dictionaries 'SPEC; SPEC'`: several dictionaries from one pass.

    model forward (up to the deepest hook) ─► one buffer, the hooks' activations side by side
        ─► each step, every dictionary trains on the same batch rows (its hook's columns)

Each dictionary has its own run directory (`--out/<name>/`: metrics, checkpoint, summary.json,
dictionary), optimizer, resampling and evals; `--out/summary.json` lists them. A spec sets any
per-dictionary setting (dict_size, architecture, k, l1_coefficient, lr, init, seed …; not the
budget, batch, data or buffer, which all share). The buffer's row count per hook equals a single
run's, its batch order is a function of the seed and the data only, and each dictionary draws its
init and resampling samples with the generator its single run would use: a dictionary trained
here ends as its separate run ends (to float rounding; tests/test_many.py), for the run's seed.
Resume continues every dictionary from its checkpoint (all at the same step), with a fresh buffer
from the shared data position.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import distributed
from ..buffer import DTYPES, ActivationBuffer, ModelSource, sample_generator
from ..cache import CacheSource, read_manifest
from ..config import ActivationTrainConfig
from ..errors import UserError
from ..models import default_hook, hook_width, load_model, resolve_hook
from ..runtime import atomic_write_json, make_out_dir
from . import common

# what every dictionary of a pass shares (the data, the budget, the buffer, the output root)
SHARED = {"out", "steps", "tokens", "batch_size", "device", "progress", "resume", "model", "dataset", "text_column",
          "contexts_per_pass", "cache", "buffer_mb", "buffer_dtype", "eval_tokens", "hooks", "dictionaries",
          "log_every", "checkpoint_every", "wandb"}


def specs(cfg: ActivationTrainConfig, default_hook_name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, hook, settings) of every dictionary: each spec of --dictionaries at each hook."""
    hooks = [h.strip() for h in cfg.hooks.split(",") if h.strip()] or [cfg.hook or default_hook_name]
    parsed = [parse_spec(s) for s in cfg.dictionaries.split(";") if s.strip()] or [{}]
    out = []
    for hook, spec in itertools.product(hooks, parsed):
        spec = dict(spec)
        h = spec.pop("hook", hook)
        parts = ([h] if len(hooks) > 1 or h != hook else []) + [f"{k}{v}" for k, v in spec.items()]
        name = re.sub(r"[^A-Za-z0-9_.=-]", "_", "-".join(parts) or h)
        out.append((name, h, spec))
    names = [n for n, _, _ in out]
    if len(set(names)) < len(names):
        raise UserError(f"--dictionaries: two dictionaries would share a run directory ({', '.join(names)}); "
                        "give them different settings")
    return out


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def parse_spec(text: str) -> dict[str, Any]:
    opts = ActivationTrainConfig.options()
    spec: dict[str, Any] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, eq, value = (x.strip() for x in item.partition("="))
        key = key.replace("-", "_").removeprefix("__")
        if not eq or not value:
            raise UserError(f"--dictionaries: {item!r} is not key=value")
        if key == "hook":
            spec[key] = value
            continue
        if key not in opts or key in SHARED:
            why = "shared by all dictionaries of a pass" if key in SHARED else "not a setting of saeforge train"
            raise UserError(f"--dictionaries: {key!r} is {why}")
        o = opts[key]
        try:
            if o.nullable and value == "auto":
                spec[key] = None
            elif o.type is bool:
                spec[key] = BOOLEANS[value.lower()]
            else:
                spec[key] = o.type(value)
        except (ValueError, KeyError):
            raise UserError(f"--dictionaries: {key} expects {o.type.__name__}, got {value!r}") from None
    return spec


def run_many(cfg: ActivationTrainConfig, *, model=None) -> dict[str, Any]:
    t_start = time.perf_counter()
    specs(cfg, cfg.hook or "default")  # a bad spec is refused before any model or cache is read
    if cfg.feature_shards > 1:
        raise UserError("--feature-shards trains one dictionary; run --hooks / --dictionaries without it")
    if cfg.cache:
        manifest = read_manifest(cfg.cache)
        model_spec, dataset, first_hook = manifest["model"], manifest["dataset"], manifest["hook"]
        n_ctx = int(manifest["n_ctx"])
    else:
        distributed.setup(cfg.device)
        from ..runtime import pick_device

        model = load_model(cfg.model, pick_device(cfg.device)) if model is None else model
        model_spec, dataset, first_hook, n_ctx = cfg.model, cfg.dataset, default_hook(model), model.cfg.n_ctx
    dicts = specs(cfg, first_hook)
    hooks = list(dict.fromkeys(h for _, h, _ in dicts))
    if cfg.cache and hooks != [first_hook]:
        raise UserError(f"--cache {cfg.cache} holds {first_hook} only; --hooks / hook= name {', '.join(hooks)}")
    runs = []
    for name, hook, spec in dicts:
        sub = cfg.with_values(out=str(Path(cfg.out) / name), hooks="", dictionaries="", hook=hook, **spec)
        sub.validate()
        runs.append(common.start(sub))
    run0 = runs[0]
    world, rank, device, steps = run0.world, run0.rank, run0.device, run0.steps
    widths = [int(manifest["d_in"])] if cfg.cache else [hook_width(model, h) for h in hooks]
    ends = list(itertools.accumulate(widths))
    cols = {h: slice(e - w, e) for h, w, e in zip(hooks, widths, ends)}  # each hook's columns of a batch
    for run, (_, hook, _) in zip(runs, dicts):
        common.check_same_run(run, {"model": model_spec, "hook": hook, "dataset": dataset, "cache": cfg.cache,
                                    "text_column": cfg.text_column, "seed": run.cfg.seed,
                                    "architecture": run.cfg.architecture})
        common.resolve(run, widths[hooks.index(hook)])
    resumed = [r.checkpoint.state for r in runs if r.checkpoint]
    if resumed and (len(resumed) < len(runs) or len({st.step for st in resumed}) > 1):
        raise UserError(f"--resume: the dictionaries under {cfg.out} are not all at the same step "
                        f"({len(resumed)} of {len(runs)} checkpoints); resume them as separate runs")
    position = dict(resumed[0].data_position) if resumed else {}
    if resumed and position.get("world", 1) != world:
        position = {"contexts_read": position.get("contexts_read", 0), "epoch": position.get("epoch", 0) + 1}

    skip = position.get("contexts_read", 0)  # global contexts consumed by all ranks together
    if cfg.cache:
        source = CacheSource(cfg.cache, seed=cfg.seed, device=device, position=position, rank=rank, world=world)
        carry = source.rows_per_chunk
    else:
        stops = [resolve_hook(model, h) for h in hooks]
        stop_at = None if None in stops else max(stops)
        source = ModelSource(model, hooks, common.context_stream(model, cfg, rank, world), stop_at,
                             contexts_read=skip)
        carry = cfg.contexts_per_pass * (n_ctx - 1)
    st_dtype = DTYPES[cfg.buffer_dtype]
    # --buffer-mb per hook: the rows of a single run's buffer, each holding every hook's activation
    rows = ActivationBuffer.rows_for(cfg.buffer_mb * len(hooks), sum(widths), st_dtype, carry_rows=carry)
    rows = min(rows, max(steps * run0.local_batch, 2 * run0.local_batch))
    scales = [next(st.input_scale for st, (_, h, _) in zip([r.checkpoint.state for r in runs], dicts) if h == hook)
              for hook in hooks] if resumed else None
    buffer = ActivationBuffer(source, rows, run0.local_batch, device, st_dtype, seed=cfg.seed * world + rank,
                              scale=scales, widths=widths)
    if not resumed:
        buffer.set_scales(distributed.all_reduce_mean(buffer.scales, device))

    trainers = []
    for run, (name, hook, _) in zip(runs, dicts):
        sl, i = cols[hook], hooks.index(hook)
        gen = sample_generator(cfg.seed * world + rank)  # what its single run's buffer would draw with
        sample = (lambda sl, gen: lambda n: buffer.sample(n, gen)[:, sl].contiguous())(sl, gen)
        sae = common.build_sae(run, widths[i], sample, center=True)
        sae.metadata.update(model_name=model_spec, hook_name=hook, context_size=n_ctx, prepend_bos=True,
                            dataset_path=dataset, seed=run.cfg.seed, dict_size=sae.d_sae,
                            source="cache" if cfg.cache else "model")
        trainers.append(common.make_trainer(run, sae, (lambda s: lambda n, step, part: s(n))(sample),
                                            input_scale=buffer.scales[i]))

    def save_position(st) -> None:
        pos = dict(source.state(), world=world)
        if "contexts_read" in pos:
            pos["contexts_read"] = skip + (pos["contexts_read"] - skip) * world
        st.data_position = pos

    def on_step(tr, _out) -> bool:
        if cfg.checkpoint_every and tr.step % cfg.checkpoint_every == 0:
            save_position(tr.state)
        return False

    for tr in trainers:
        tr.begin(steps)
    bar = tqdm(total=steps, initial=trainers[0].step, disable=not cfg.progress, desc=f"train ×{len(trainers)}",
               unit="step", dynamic_ncols=True)
    try:
        while trainers[0].step < steps:
            t0 = time.perf_counter()
            x_BD = next(buffer)
            for tr, (_, hook, _) in zip(trainers, dicts):
                tr.timing["data_s"] += (time.perf_counter() - t0) / len(trainers)
                tr.advance(x_BD[:, cols[hook]].contiguous() if len(hooks) > 1 else x_BD, on_step)
            bar.update(1)
    finally:
        bar.close()
        for tr in trainers:
            tr.end(check=False)
    summaries = {}
    for run, tr, (name, hook, _) in zip(runs, trainers, dicts):
        tr.check_finite()
        save_position(tr.state)
        last = tr.last_log
        summary: dict[str, Any] = {
            "model": model_spec, "hook": hook, "dataset": dataset, "cache": cfg.cache or None,
            "d_in": widths[hooks.index(hook)], **common.finish(run, tr), "input_scale": buffer.scales[hooks.index(hook)],
            "buffer_rows": rows, "train_l0": last.get("l0"), "train_explained_variance": last.get("explained_variance"),
            "train_dead_fraction": last.get("dead_fraction"), "trained_with": [n for n, _, _ in dicts],
        }
        t_eval = time.perf_counter()
        if cfg.eval_tokens and distributed.is_main():
            if model is None:
                model = load_model(model_spec, device)
            summary.update(common.held_out_evals(model, run, dataset, hook))
        summary["eval_s"] = round(time.perf_counter() - t_eval, 3)
        summaries[name] = common.write_summary(run, tr, summary)
    total = {"dictionaries": summaries, "hooks": hooks, "steps": steps,
             "wall_s": round(time.perf_counter() - t_start, 3)}
    if distributed.is_main():
        make_out_dir(Path(cfg.out))
        atomic_write_json(Path(cfg.out) / "summary.json", total)
    return total
