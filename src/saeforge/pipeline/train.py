"""`saeforge train`: a dictionary on a model's activations (live buffer, or an activation cache).

    model (or cache) → ActivationBuffer (s with E‖s·x‖² = d_in, from the first fill) → SAE
    initialized from the buffer, b_dec = the sample mean → Trainer → dictionary (s folded in)
    → evals on held-out text with the dictionary spliced in → summary.json

Resume continues from the data position the checkpoint records (contexts read, or the cache
cursor), never repeating data. A single-process live run also rebuilds its buffer exactly from
the checkpoint's snapshot (buffer.py: row origins, permutation, RNG, the oldest rows; the rest
recomputed by the model), so it ends with the weights of an uninterrupted run. Under torchrun the batch
is global; each rank reads its own shards or every world-th batch of contexts; the input scale
is the mean of the ranks' estimates; rank 0 initializes, broadcasts and evaluates.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .. import distributed
from ..buffer import DTYPES, ActivationBuffer, ModelSource
from ..cache import CacheSource, read_manifest
from ..config import ActivationTrainConfig
from ..errors import UserError
from ..models import default_hook, hook_width, load_model, resolve_hook
from . import common


def run_train(cfg: ActivationTrainConfig, *, model=None, activations=None) -> dict[str, Any]:
    """`model`: a HookedTransformer to use instead of loading cfg.model; `activations`: a buffer
    source of the caller's own activations (api.py), in place of a model or a cache."""
    if cfg.hooks or cfg.dictionaries:  # several dictionaries from one pass
        if activations is not None:
            raise UserError("--hooks / --dictionaries train from a model or a cache, not from given activations")
        from .many import run_many

        return run_many(cfg, model=model)
    run = common.start(cfg)
    cfg, world, rank, device = run.cfg, run.world, run.rank, run.device
    if activations is not None:
        model_spec = hook = dataset = None
        d_in, n_ctx = activations.d_in, None
    elif cfg.cache:
        manifest = read_manifest(cfg.cache)
        model_spec, hook, dataset = manifest["model"], manifest["hook"], manifest["dataset"]
        d_in, n_ctx = int(manifest["d_in"]), int(manifest["n_ctx"])
    else:
        model = load_model(cfg.model, device) if model is None else model
        model_spec, dataset = cfg.model, cfg.dataset
        hook = cfg.hook or default_hook(model)
        stop_at_layer = resolve_hook(model, hook)
        d_in, n_ctx = hook_width(model, hook), model.cfg.n_ctx

    common.check_same_run(run, {"model": model_spec, "hook": hook, "dataset": dataset, "cache": cfg.cache,
                                "text_column": cfg.text_column, "seed": cfg.seed, "architecture": cfg.architecture})
    common.resolve(run, d_in)
    cfg = run.cfg
    resumed = run.checkpoint.state if run.checkpoint else None
    position = resumed.data_position if resumed else {}
    if resumed and position.get("world", 1) != world:  # another number of ranks: same global position, re-split
        position = {"contexts_read": position.get("contexts_read", 0), "epoch": position.get("epoch", 0) + 1}
    if activations is not None:
        source = activations.seek(position.get("rows_read", 0))
        carry = 0
    elif cfg.cache:
        source = CacheSource(cfg.cache, seed=cfg.seed, device=device, position=position, rank=rank, world=world)
        carry = source.rows_per_chunk
    else:
        skip = position.get("contexts_read", 0)  # global contexts consumed by all ranks together
        source = ModelSource(model, hook, common.context_stream(model, cfg, rank, world), stop_at_layer,
                             contexts_read=skip)
        carry = cfg.contexts_per_pass * (n_ctx - 1)
    st_dtype = DTYPES[cfg.buffer_dtype]
    rows = ActivationBuffer.rows_for(cfg.buffer_mb, d_in, st_dtype, carry_rows=carry)
    # a short run needs no buffer larger than its budget (its first fill would run the model for nothing)
    rows = min(rows, max(run.steps * run.local_batch, 2 * run.local_batch))
    if activations is not None:
        rows = activations.buffer_rows(rows, run.local_batch)
    live = activations is None and not cfg.cache  # the model runs during training
    snap = position.get("buffer")  # a single-process live run rebuilds its buffer exactly (buffer.py)
    restore = None
    if snap and live and world == 1:
        tensors = {k.removeprefix("buffer."): v for k, v in resumed.data_tensors.items()}
        if ActivationBuffer.fits(snap, tensors, rows, d_in) and snap["contexts_per_pass"] == cfg.contexts_per_pass:
            restore = (snap, tensors)
        else:
            print("saeforge: note: the buffer's size changed since the checkpoint (--buffer-mb, --contexts-per-pass, "
                  "or a budget shorter than the buffer); the run goes on from its data position with a fresh buffer "
                  "(not the batches an uninterrupted run would see)",
                  file=sys.stderr)
    t_fill = time.perf_counter()
    buffer = ActivationBuffer(source, rows, run.local_batch, device, st_dtype, seed=cfg.seed * world + rank,
                              scale=resumed.input_scale if resumed else None, restore=restore)
    first_fill = (time.perf_counter() - t_fill, getattr(source, "forward_seconds", 0.0))
    if not resumed:
        buffer.scale = distributed.all_reduce_mean([buffer.scale], device)[0]

    sae = common.build_sae(run, d_in, buffer.sample, center=True)
    meta = dict(model_name=model_spec, hook_name=hook, context_size=n_ctx, prepend_bos=True, dataset_path=dataset)
    sae.metadata.update({k: v for k, v in meta.items() if activations is None},
                        seed=cfg.seed, dict_size=sae.d_sae,
                        source="activations" if activations is not None else "cache" if cfg.cache else "model")
    trainer = common.make_trainer(run, sae, lambda n, step, part: buffer.sample(n), input_scale=buffer.scale)

    def save_position(st) -> None:
        pos = dict(source.state(), world=world)
        if "contexts_read" in pos:  # ranks read equally: the global count
            pos["contexts_read"] = skip + (pos["contexts_read"] - skip) * world
        if world == 1 and live:
            pos["buffer"], tensors = buffer.snapshot(cfg.contexts_per_pass)
            st.data_tensors = {f"buffer.{k}": v for k, v in tensors.items()}
        st.data_position = pos

    def on_step(tr, _out) -> bool:
        if cfg.checkpoint_every and tr.step % cfg.checkpoint_every == 0:
            save_position(tr.state)
        return False

    trainer.fit(buffer, run.steps, callback=on_step)
    save_position(trainer.state)
    last = trainer.last_log
    summary: dict[str, Any] = {
        "model": model_spec, "hook": hook, "dataset": dataset, "cache": cfg.cache or None, "d_in": d_in,
        **common.finish(run, trainer), "input_scale": buffer.scale, "buffer_rows": rows,
        "train_l0": last.get("l0"), "train_explained_variance": last.get("explained_variance"),
        "train_mse": last.get("mse"), "train_dead_fraction": last.get("dead_fraction"),
        "time_breakdown": breakdown(trainer, source, first_fill),
    }
    t_eval = time.perf_counter()
    if cfg.eval_tokens and distributed.is_main() and activations is None:
        if model is None:
            model = load_model(model_spec, device)
        summary.update(common.held_out_evals(model, run, dataset, hook))
    summary["eval_s"] = round(time.perf_counter() - t_eval, 3)
    return common.write_summary(run, trainer, summary)


def breakdown(trainer, source, first_fill: tuple[float, float]) -> dict[str, float]:
    """Where this process's time went, in seconds: the buffer's first fill (before training), then,
    while training, the model's forward passes (live runs), the rest of getting batches (refills,
    mixing, cache reads), the step (loss, gradients, Adam), resampling, and the remainder
    (logging, checkpoints)."""
    t = trainer.timing
    forward = getattr(source, "forward_seconds", 0.0) - first_fill[1]
    parts = {"first_fill_s": first_fill[0], "model_forward_s": forward, "buffer_s": t["data_s"] - forward,
             "step_s": t["step_s"], "resample_s": t["resample_s"]}
    parts["other_s"] = max(0.0, trainer.state.train_seconds - sum(parts.values()) + first_fill[0])
    if trainer.step_clock.on:  # on a GPU: the steps' kernel time by CUDA events (step_s is the host's launch time)
        parts["step_gpu_s"] = trainer.step_clock.seconds()
    return {k: round(v, 3) for k, v in parts.items()}
