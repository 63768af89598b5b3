"""`saeforge train`: one or several dictionaries on a model's activations, from one pass.

    model (or cache, or given activations) → ActivationBuffer (one forward up to the deepest hook,
    the hooks' activations side by side; s per hook with E‖s·x‖² = d_in, from the first fill)
    → per dictionary: its run config, an SAE initialized from the buffer (b_dec = the sample
    mean), a Trainer → every step, each dictionary trains on the same rows (its hook's columns)
    → dictionaries (s folded in) → evals on held-out text → summary.json

A single dictionary is the one-element case (dictionaries.py): it writes into --out itself;
several write into --out/<name>/, and --out/summary.json lists them. The buffer's batch order is
a function of the seed and the data only, and each dictionary draws its init and resampling
samples with its own generator (the one its single run uses): a dictionary trained beside others
ends as its own run ends (to float rounding; tests/test_many.py).

Resume continues from the data position the checkpoints record (contexts read, or the cache
cursor), never repeating data. A single-process live pass also rebuilds its buffer exactly from
the snapshot (buffer.py: row origins, permutation, RNG, the oldest rows; the rest recomputed by
the model) and each dictionary its sample generator, so it ends with the weights of an
uninterrupted pass. Under torchrun the batch is global; each rank reads its own shards or every
world-th batch of contexts; the input scale is the mean of the ranks' estimates; rank 0
initializes, broadcasts and evaluates.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saeforge import distributed
from saeforge.config import ActivationTrainConfig
from saeforge.errors import UserError
from saeforge.pipeline import common
from saeforge.pipeline.dictionaries import check_root, configs, several, specs
from saeforge.runtime import atomic_write_json, make_out_dir, pick_device
from saeforge.sources.buffer import DTYPES, ActivationBuffer, ModelSource, sample_generator
from saeforge.sources.cache import CacheSource, read_manifest
from saeforge.sources.language_model import default_hook, hook_order, hook_width, load_model, resolve_hook
from saeforge.training.checkpoint import read_checkpoint
from saeforge.training.trainer import Trainer


@dataclass
class Dictionary:
    """One dictionary of the pass: its name (its directory under --out; "" for a single one), hook,
    the hook a transcoder writes (None: an SAE), run, columns of the batch, sample generator and trainer."""

    name: str
    hook: str | None
    run: common.Run
    target: str | None = None
    cols: slice | None = None
    out_cols: slice | None = None
    gen: torch.Generator | None = None
    trainer: Trainer | None = None
    layers: tuple[list[str], list[str]] | None = None  # a cross-layer transcoder's input and target hooks
    all_cols: list[slice] | None = None  # its columns: every input, then every target

    def take(self, batch: torch.Tensor) -> torch.Tensor:
        """Its rows of a batch of the pass: its hook's columns (a transcoder's: input and target side by
        side; a cross-layer transcoder's: every layer's input, then every layer's target)."""
        if self.all_cols is not None:
            return torch.cat([batch[:, c] for c in self.all_cols], 1)
        if self.cols is None:
            return batch
        if self.out_cols is None:
            return batch[:, self.cols].contiguous()
        return torch.cat([batch[:, self.cols], batch[:, self.out_cols]], 1)


@dataclass
class Pass:
    """What the dictionaries of one pass share: where the activations come from, and the buffer."""

    cfg: ActivationTrainConfig
    device: torch.device
    model: Any  # the HookedTransformer (None: a cache run before its evals, or given activations)
    activations: Any  # api.ActivationSource, or None
    model_spec: str | None
    dataset: str | None
    n_ctx: int | None
    dicts: list[Dictionary]
    hooks: list[Any]
    widths: list[int]
    source: Any = None
    buffer: ActivationBuffer | None = None
    first_fill: tuple[float, float] = (0.0, 0.0)
    stop_at: int | None = None  # the layer the model's forward may stop after (the deepest hook's)
    skip: int = 0  # global contexts read before this process started
    live: bool = False  # the model runs during training

    @property
    def scales(self) -> list[float]:
        return self.buffer.scales if len(self.hooks) > 1 else [self.buffer.scale]

    def width(self, d: Dictionary) -> int:
        return self.widths[self.hooks.index(d.hook)]

    def the_model(self):
        """The model, loaded once when first needed (a cache run's evals, after its dictionaries are saved)."""
        if self.model is None:
            self.model = load_model(self.model_spec, self.device, progress=self.cfg.progress)
        return self.model


def run_train(cfg: ActivationTrainConfig, *, model=None, activations=None) -> dict[str, Any]:
    """`model`: a HookedTransformer to use instead of loading cfg.model; `activations`: a buffer
    source of the caller's own activations (api.py), in place of a model or a cache."""
    t_start = time.perf_counter()
    p = plan(cfg, model, activations)
    restored = open_data(p)
    for d in p.dicts:
        build(p, d, restored)
    run_steps(cfg, p.dicts, p.buffer, p.dicts[0].run.steps, lambda d: save_position(p, d))
    summaries = {}
    for d in p.dicts:
        d.trainer.check_finite()  # a diverged dictionary keeps its last checkpoint; those before it are saved
        save_position(p, d)
        summaries[d.name] = finish_dictionary(p, d)
    if not several(cfg):
        return summaries[""]
    total = {"dictionaries": summaries, "hooks": p.hooks, "steps": p.dicts[0].run.steps,
             "wall_s": round(time.perf_counter() - t_start, 3)}
    make_out_dir(Path(cfg.out))  # every rank: it ends on a barrier (rank 0 alone waited there for ever before)
    if distributed.is_main():
        atomic_write_json(Path(cfg.out) / "summary.json", total)
    return total


def plan(cfg: ActivationTrainConfig, model, activations) -> Pass:
    """The pass's dictionaries, each with its run config resolved, before any data is read (a single
    run checks its --out before anything is loaded; several need the model's default hook first)."""
    if several(cfg):
        if activations is not None:
            raise UserError("--hooks / --dictionaries train from a model or a cache, not from given activations")
        if cfg.feature_shards > 1:
            raise UserError("--feature-shards trains one dictionary; run --hooks / --dictionaries without it")
        specs(cfg, cfg.hook or "default")  # a bad spec is refused before any model or cache is read
        check_root(cfg)
        distributed.setup(cfg.device)
        first, device = None, pick_device(cfg.device, cfg.threads)
    else:
        first = common.start(cfg)
        device = first.device
    manifest = read_manifest(cfg.cache) if cfg.cache and activations is None else None
    if activations is not None:
        model_spec = dataset = first_hook = n_ctx = None
    elif manifest:
        model_spec, dataset, first_hook, n_ctx = manifest["model"], manifest["dataset"], manifest["hook"], int(manifest["n_ctx"])
    else:
        model = load_model(cfg.model, device, progress=cfg.progress) if model is None else model
        model_spec, dataset, first_hook, n_ctx = cfg.model, cfg.dataset, default_hook(model), model.cfg.n_ctx
    if cfg.cross_layer:
        ins, outs = ([h.strip() for h in text.split(",") if h.strip()] for text in (cfg.hooks, cfg.target_hooks))
        dicts = [Dictionary("", ins[0], first, target=outs[0], layers=(ins, outs))]
    else:
        dicts = [Dictionary(name, hook if activations is None else None, first or common.start(sub),
                            target=(sub.target_hook or None) if activations is None else None)
                 for name, hook, sub in configs(cfg, first_hook)]
    if activations is not None and (cfg.target_hook or cfg.target_hooks):
        raise UserError("a transcoder reads two hooks of a model's forward: train it from a model, not from given "
                        "activations")
    hooks = list(dict.fromkeys([d.hook for d in dicts] + [d.target for d in dicts if d.target]
                               + [h for d in dicts if d.layers for h in (*d.layers[0], *d.layers[1])]))
    cached = [first_hook, *([manifest["target_hook"]] if manifest and manifest.get("target_hook") else [])]
    if manifest and hooks != cached:
        holds = " → ".join(cached) + (" (a transcoder's pairs: give --target-hook)" if len(cached) > 1 else " only")
        raise UserError(f"--cache {cfg.cache} holds {holds}; this run reads {', '.join(hooks)}")
    stops = [resolve_hook(model, h) for h in hooks] if model is not None and not manifest else []  # checks each hook
    if stops:
        check_transcoders(model, dicts)
    elif cfg.cross_layer:
        raise UserError("--cross-layer reads every layer of a model's forward: train it from a model, not --cache")
    widths = ([activations.d_in] if activations is not None
              else [int(manifest["d_in"])] + ([int(manifest["d_out"])] if len(cached) > 1 else []) if manifest
              else [hook_width(model, h) for h in hooks])
    p = Pass(cfg, device, model, activations, model_spec, dataset, n_ctx, dicts, hooks, widths,
             stop_at=None if not stops or None in stops else max(stops))
    for d in dicts:
        i = hooks.index(d.hook)
        d.cols = slice(sum(widths[:i]), sum(widths[:i + 1])) if len(hooks) > 1 else None
        if d.target:
            j = hooks.index(d.target)
            d.out_cols = slice(sum(widths[:j]), sum(widths[:j + 1]))
        if d.layers:
            d.all_cols = [slice(sum(widths[:hooks.index(h)]), sum(widths[:hooks.index(h) + 1]))
                          for h in (*d.layers[0], *d.layers[1])]
        common.check_same_run(d.run, {"model": model_spec, "hook": d.hook, "dataset": dataset, "cache": cfg.cache,
                                      "text_column": cfg.text_column, "seed": d.run.cfg.seed,
                                      "architecture": f"clt/{d.run.cfg.architecture}" if d.layers else d.run.cfg.architecture,
                                      "target_hook": d.run.cfg.target_hook,
                                      "skip_connection": d.run.cfg.skip_connection})
        common.resolve(d.run, widths[i])
    return p


def check_transcoders(model, dicts: list[Dictionary]) -> None:
    """A transcoder's target hook comes after its input hook in the forward (it predicts what the model
    computes next from what it has read); a cross-layer transcoder has a pair at every layer from 0,
    each of the same per-block hooks."""
    order = hook_order(model)
    for d in dicts:
        pairs = list(zip(*d.layers)) if d.layers else [(d.hook, d.target)] if d.target else []
        for hook, target in pairs:
            if order[target] <= order[hook]:
                raise UserError(f"--target-hook {target} runs {'as' if target == hook else 'before'} --hook {hook} "
                                "in the forward: a transcoder reads a hook and writes a later one (e.g. --hook "
                                "blocks.1.ln2.hook_normalized --target-hook blocks.1.hook_mlp_out)")
        if d.layers:
            n = model.cfg.n_layers
            for names, flag in zip(d.layers, ("--hooks", "--target-hooks")):
                per_block = {h.split(".", 2)[2] if h.startswith("blocks.") else h for h in names}
                want = [f"blocks.{i}.{next(iter(per_block))}" for i in range(n)]
                if len(per_block) > 1 or names != want:
                    raise UserError(f"--cross-layer: {flag} must name one hook of every block of the model, in order "
                                    f"({n} layers: {want[0]} … {want[-1]}); got {', '.join(names)}")


def open_data(p: Pass) -> bool:
    """The source at the position the checkpoints record, and the buffer over it; returns whether
    the buffer was rebuilt exactly from a snapshot."""
    cfg, dicts, run0 = p.cfg, p.dicts, p.dicts[0].run
    steps = {d.run.checkpoint.state.step for d in dicts if d.run.checkpoint}
    if len(steps) > 1:  # killed between two dictionaries' checkpoint writes: back to the step they all reached
        for d in dicts:
            if d.run.checkpoint and d.run.checkpoint.state.step > min(steps):
                d.run.checkpoint = read_checkpoint(d.run.out, step=min(steps)) or d.run.checkpoint
    resumed = [d.run.checkpoint.state for d in dicts if d.run.checkpoint]
    if resumed and (len(resumed) < len(dicts) or len({st.step for st in resumed}) > 1):
        raise UserError(f"--resume: the dictionaries under {cfg.out} are not all at the same step "
                        f"({len(resumed)} of {len(dicts)} checkpoints); resume them as separate runs")
    position = dict(resumed[0].data_position) if resumed else {}
    if resumed and position.get("world", 1) != run0.world:  # another number of ranks: same global position, re-split
        position = {"contexts_read": position.get("contexts_read", 0), "epoch": position.get("epoch", 0) + 1}
    p.skip = position.get("contexts_read", 0)  # global contexts consumed by all ranks together
    if p.activations is not None:
        p.source, carry = p.activations.seek(position.get("rows_read", 0)), 0
    elif cfg.cache:
        p.source = CacheSource(cfg.cache, seed=cfg.seed, device=p.device, position=position, rank=run0.rank,
                               world=run0.world)
        carry = p.source.rows_per_chunk
    else:
        p.source = ModelSource(p.model, p.hooks if len(p.hooks) > 1 else p.hooks[0],
                               common.context_stream(p.model, cfg, run0.rank, run0.world), p.stop_at,
                               contexts_read=p.skip)
        carry = cfg.contexts_per_pass * (p.n_ctx - 1)
        p.live = True
    scale = None  # a resumed pass keeps its scales (the first dictionary's at each hook)
    if resumed:
        by_hook: dict[Any, float] = {}
        for d in dicts:
            st = d.run.checkpoint.state
            for h, s in (st.hook_scales or {d.hook: st.input_scale}).items():
                by_hook.setdefault(h, s)
        missing = [h for h in p.hooks if h not in by_hook]
        if missing:
            raise UserError(f"--resume: the checkpoints under {cfg.out} do not record the scale of {', '.join(missing)}; "
                            "resume with the hooks the run was started with")
        scale = [by_hook[h] for h in p.hooks] if len(p.hooks) > 1 else by_hook[p.hooks[0]]
    snapshot = resumed[0].data_tensors if resumed and p.live and run0.world == 1 else None
    p.buffer, p.first_fill, restored = make_buffer(cfg, run0, p.source, carry, p.widths, scale, position, snapshot)
    return restored


def build(p: Pass, d: Dictionary, restored: bool) -> None:
    """A dictionary's SAE, initialized from the buffer with its own sample generator, and its trainer."""
    run0 = p.dicts[0].run
    d.gen = sample_generator(p.cfg.seed * run0.world + run0.rank)  # what its single run draws with
    if restored:  # where the buffer is rebuilt exactly, so is each dictionary's generator
        saved = d.run.checkpoint.state.data_tensors
        rng = saved.get("sample_rng", saved.get("buffer.sample_rng"))  # (a single run before: the buffer's)
        if rng is not None:
            d.gen.set_state(rng)
    sample = lambda n: d.take(p.buffer.sample(n, d.gen)).contiguous()  # noqa: E731
    d_out = p.widths[p.hooks.index(d.target)] if d.target else None
    if d.layers:
        sae = common.build_clt(d.run, p.width(d), d_out, len(d.layers[0]), sample)
        sae.metadata["layer_scales"] = {"inputs": [p.scales[p.hooks.index(h)] for h in d.layers[0]],
                                        "targets": [p.scales[p.hooks.index(h)] for h in d.layers[1]]}
        sae.metadata["hook_names"], sae.metadata["hook_names_out"] = list(d.layers[0]), list(d.layers[1])
    else:
        sae = common.build_sae(d.run, p.width(d), sample, d_out=d_out)
    meta = dict(model_name=p.model_spec, hook_name=d.hook, context_size=p.n_ctx, prepend_bos=True,
                dataset_path=p.dataset) | ({"hook_name_out": d.target} if d.target else {})
    sae.metadata.update({k: v for k, v in meta.items() if p.activations is None}, seed=d.run.cfg.seed,
                        dict_size=sae.d_sae,
                        source="activations" if p.activations is not None else "cache" if p.cfg.cache else "model")
    d.trainer = common.make_trainer(d.run, sae, lambda n, step, part: sample(n),
                                    input_scale=p.scales[p.hooks.index(d.hook)],
                                    output_scale=p.scales[p.hooks.index(d.target)] if d.target else None)
    if d.run.checkpoint is None:
        d.trainer.state.hook_scales = dict(zip(p.hooks, p.scales))
    d.trainer.keep_previous_checkpoint = several(p.cfg)


def save_position(p: Pass, d: Dictionary) -> None:
    """Record in the dictionary's training state where the data stands (and, for a single-process
    live pass, the buffer's snapshot and the dictionary's sample generator)."""
    world = p.dicts[0].run.world
    pos = dict(p.source.state(), world=world)
    if "contexts_read" in pos:  # ranks read equally: the global count
        pos["contexts_read"] = p.skip + (pos["contexts_read"] - p.skip) * world
    st = d.trainer.state
    if world == 1 and p.live:
        pos["buffer"], tensors = p.buffer.snapshot(p.cfg.contexts_per_pass)
        st.data_tensors = {f"buffer.{k}": v for k, v in tensors.items()} | {"sample_rng": d.gen.get_state()}
    st.data_position = pos


def make_buffer(cfg, run0: common.Run, source, carry: int, widths: list[int], scale, position: dict,
                snapshot: dict | None) -> tuple[ActivationBuffer, tuple[float, float], bool]:
    """The pass's buffer: --buffer-mb per hook, no larger than the budget needs; rebuilt exactly from
    the checkpoint's `snapshot` where one fits (a single-process live pass), else filled afresh.
    Returns it, the first fill's (seconds, forward seconds), and whether it was rebuilt."""
    d_all, n_hooks = sum(widths), len(widths)
    st_dtype = DTYPES[cfg.buffer_dtype]
    rows = ActivationBuffer.rows_for(cfg.buffer_mb * n_hooks, d_all, st_dtype, carry_rows=carry)
    if carry and rows < 2 * run0.local_batch:  # one forward's rows fill it: say so (a long context, e.g.)
        per = "chunk of the cache" if cfg.cache else \
            f"forward pass (--contexts-per-pass {cfg.contexts_per_pass} × {carry // cfg.contexts_per_pass} rows a context)"
        raise UserError(f"one {per} gives {carry} activation rows, and --buffer-mb {cfg.buffer_mb:g} holds "
                        f"{rows + carry} in all: it needs room for that and 2 batches of {run0.local_batch}; raise "
                        "--buffer-mb" + ("" if cfg.cache else " or lower --contexts-per-pass"))
    # a short run needs no buffer larger than its budget (its first fill would run the model for nothing)
    rows = min(rows, max(run0.steps * run0.local_batch, 2 * run0.local_batch))
    if hasattr(source, "buffer_rows"):  # given activations: no more rows than there are
        rows = source.buffer_rows(rows, run0.local_batch)
    snap, restore = position.get("buffer"), None
    if snap and snapshot is not None:
        tensors = {k.removeprefix("buffer."): v for k, v in snapshot.items() if k.startswith("buffer.")}
        if ActivationBuffer.fits(snap, tensors, rows, d_all) and snap["contexts_per_pass"] == cfg.contexts_per_pass:
            restore = (snap, tensors)
        else:
            print("saeforge: note: the buffer's size changed since the checkpoint (--buffer-mb, --contexts-per-pass, "
                  "or a budget shorter than the buffer); the run goes on from its data position with a fresh buffer "
                  "(not the batches an uninterrupted run would see)", file=sys.stderr)
    t_fill = time.perf_counter()
    buffer = ActivationBuffer(source, rows, run0.local_batch, run0.device, st_dtype, seed=cfg.seed * run0.world + run0.rank,
                              scale=scale, restore=restore, widths=widths if n_hooks > 1 else None)
    first_fill = (time.perf_counter() - t_fill, getattr(source, "forward_seconds", 0.0))
    if scale is None:
        if n_hooks == 1:
            buffer.scale = distributed.all_reduce_mean([buffer.scale], run0.device)[0]
        else:
            buffer.set_scales(distributed.all_reduce_mean(buffer.scales, run0.device))
    return buffer, first_fill, restore is not None


def run_steps(cfg, dicts: list[Dictionary], buffer: ActivationBuffer, steps: int, save_position) -> None:
    """Every step: one batch from the buffer, each dictionary trained on its columns."""
    def on_step(d: Dictionary):
        def callback(tr, _out) -> bool:
            if cfg.checkpoint_every and tr.step % cfg.checkpoint_every == 0:
                save_position(d)
            return False
        return callback

    callbacks = [on_step(d) for d in dicts]
    for d in dicts:
        d.trainer.begin(steps)
    first = dicts[0].trainer
    bar = tqdm(total=steps, initial=first.step, disable=not cfg.progress, file=sys.stderr,
               desc="train" if len(dicts) == 1 else f"train ×{len(dicts)}", unit="step", dynamic_ncols=True)
    try:
        while first.step < steps:
            t0 = time.perf_counter()
            x_BD = next(buffer)
            data_s = (time.perf_counter() - t0) / len(dicts)  # the batch's cost, shared
            for d, callback in zip(dicts, callbacks):
                d.trainer.timing["data_s"] += data_s
                d.trainer.advance(d.take(x_BD), callback)
            row = first.last_log
            if len(dicts) == 1 and row.get("step") == first.step:
                bar.set_postfix(mse=f"{row['mse']:.4g}", l0=f"{row['l0']:.1f}", ev=f"{row['explained_variance']:.3f}")
            bar.update(1)
    finally:
        bar.close()
        for d in dicts:
            d.trainer.end(check=False)


def finish_dictionary(p: Pass, d: Dictionary) -> dict[str, Any]:
    """A dictionary's end: checkpoint and dictionary saved, held-out evals, its summary.json."""
    cfg, tr, run = p.cfg, d.trainer, d.run
    last = tr.last_log
    summary: dict[str, Any] = {
        "model": p.model_spec, "hook": d.hook, "dataset": p.dataset, "cache": cfg.cache or None, "d_in": p.width(d),
        **common.finish(run, tr), "input_scale": p.scales[p.hooks.index(d.hook)], "buffer_rows": len(p.buffer.storage),
        **({"target_hook": d.target, "d_out": tr.sae.d_out, "skip_connection": tr.sae.W_skip is not None,
            "output_scale": p.scales[p.hooks.index(d.target)]} if d.target else {}),
        **({"cross_layer": True, "hooks": d.layers[0], "target_hooks": d.layers[1], "n_layers": len(d.layers[0])}
           if d.layers else {}),
        "train_l0": last.get("l0"), "train_explained_variance": last.get("explained_variance"),
        "train_mse": last.get("mse"), "train_dead_fraction": last.get("dead_fraction"),
        "time_breakdown": breakdown(tr, p.source, p.first_fill),
    }
    if several(cfg):
        summary["trained_with"] = [x.name for x in p.dicts]
    t_eval = time.perf_counter()
    if cfg.eval_tokens and distributed.is_main() and p.activations is None:
        summary.update(common.held_out_evals(p.the_model(), run, p.dataset, d.hook, d.target, d.layers))
    summary["eval_s"] = round(time.perf_counter() - t_eval, 3)
    return common.write_summary(run, tr, summary)


def breakdown(trainer, source, first_fill: tuple[float, float]) -> dict[str, float]:
    """Where this process's time went, in seconds: the buffer's first fill (before training), then,
    while training, the model's forward passes (live runs), the rest of getting batches (refills,
    mixing, cache reads), the step (loss, gradients, Adam), resampling, and the remainder
    (logging, checkpoints). With several dictionaries the pass's forward and buffer time is shared
    among them."""
    t = trainer.timing
    forward = getattr(source, "forward_seconds", 0.0) - first_fill[1]
    parts = {"first_fill_s": first_fill[0], "model_forward_s": forward, "buffer_s": t["data_s"] - forward,
             "step_s": t["step_s"], "resample_s": t["resample_s"]}
    parts["other_s"] = max(0.0, trainer.state.train_seconds - sum(parts.values()) + first_fill[0])
    if trainer.step_clock.on:  # on a GPU: the steps' kernel time by CUDA events (step_s is the host's launch time)
        parts["step_gpu_s"] = trainer.step_clock.seconds()
    return {k: round(v, 3) for k, v in parts.items()}
