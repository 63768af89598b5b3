"""The construction path every training pipeline (train, toy, sweep) shares, in the order it runs:

    start(cfg)        device, torchrun group, --out, rank split, the budget, the checkpoint to resume
    resolve(run, d_in) the run config: every `auto` value fixed once (TrainConfig.resolved), the
                      architecture's and resampling's settings checked, before any data is read
    build_sae(...)    the architecture, initialized from a sample (rank 0, then broadcast)
    make_trainer(...) the trainer with its resampler, restored from the checkpoint
    finish(...)       checkpoint + dictionary saved, the summary fields every run reports
    write_summary(...) summary.json
    context_stream / held_out_evals   the training contexts and the held-out evals (train, many)
"""

from __future__ import annotations

import itertools
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saeforge import distributed, threads
from saeforge.config import TrainConfig
from saeforge.dictionary.architectures import create
from saeforge.dictionary.crosslayer import CrossLayerTranscoder, initialize_clt
from saeforge.dictionary.init import initialize, sample_size
from saeforge.dictionary.io import load
from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError
from saeforge.evaluation.evals import evaluate, evaluate_clt
from saeforge.runtime import (atomic_write_json, check_run_dir, lock_run_dir, make_out_dir, pick_device,
                              release_run_dirs)
from saeforge.sources import data
from saeforge.training import feature_shards
from saeforge.training.checkpoint import Checkpoint, TrainState, read_checkpoint
from saeforge.training.resample import Resampler
from saeforge.training.trainer import Trainer
from saeforge.training.wandb_log import WandbLogger, check_available


@dataclass
class Run:
    cfg: Any  # the command's config (a TrainConfig); from `resolve` on, the run config (every `auto` fixed)
    device: torch.device
    out: Path | None  # None: nothing is written (sweep runs)
    steps: int
    world: int
    rank: int
    local_batch: int
    checkpoint: Checkpoint | None  # what --resume continues from
    t_start: float
    out_existed: bool = True  # whether --out was there before this run (a refusal removes what it made)
    init_s: float = 0.0


def start(cfg: TrainConfig) -> Run:
    t_start = time.perf_counter()
    distributed.setup(cfg.device)
    device = pick_device(cfg.device, cfg.threads)
    out = check_run_dir(cfg.out, cfg.resume) if cfg.out else None  # created by make_trainer, after the checks
    feature_shards.check(cfg)
    world, rank = distributed.world(), distributed.rank()
    if cfg.feature_shards > 1:  # the data splits over the data groups; a feature group shares its rows
        if world % cfg.feature_shards:
            raise UserError(f"--feature-shards {cfg.feature_shards} must divide the number of ranks ({world})")
        world, rank = world // cfg.feature_shards, rank // cfg.feature_shards
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} (the global batch) must divide evenly over {world} ranks")
    steps = cfg.total_steps()
    if cfg.wandb:
        if not out:
            raise UserError("--wandb needs --out (the W&B run lives in the run directory)")
        check_available(cfg.wandb)
    checkpoint = read_checkpoint(out) if out and cfg.resume and out.is_dir() else None
    if checkpoint is not None and checkpoint.state.step > steps:
        raise UserError(f"--resume: the checkpoint in {out} is at step {checkpoint.state.step}, past this budget of "
                        f"{steps} steps; give a larger --steps / --tokens")
    return Run(cfg, device, out, steps, world, rank, cfg.batch_size // world, checkpoint, t_start,
               out_existed=bool(out and out.exists()))


def check_same_run(run: Run, identity: dict[str, Any]) -> None:
    """--resume continues the run in --out only: the same data, model, hook, architecture, seed…
    (`identity`: field → this run's value, compared with what the checkpoint recorded)."""
    if run.checkpoint is None:
        return
    recorded = run.checkpoint.identity()
    differ = [f"{k} {recorded[k]!r} → {v!r}" for k, v in identity.items() if k in recorded and recorded[k] != v]
    if differ:
        raise UserError(f"--resume: {run.out} holds a run with other settings ({'; '.join(differ)}); "
                        "resume it with its own settings, or choose another --out")


def resolve(run: Run, d_in: int) -> None:
    """The run config for inputs of width d_in: every `auto` value fixed once (TrainConfig.resolved),
    the architecture's settings (k against the dictionary size, Matryoshka sizes…) and resampling's
    checked, before any data is read."""
    run.cfg = run.cfg.resolved(run.steps, d_in)


def build_sae(run: Run, d_in: int, sample: Callable[[int], torch.Tensor], d_out: int | None = None) -> SAE:
    """The dictionary, initialized by --init from `sample(n)` (fresh inputs of the training
    distribution; a transcoder's: its (input, target) rows side by side, d_out wide targets); with
    --center-init, b_dec = the mean of a sample (of the targets). A resumed run skips the init."""
    cfg = run.cfg
    d_sae = cfg.dict_size
    shape = {} if d_out is None else {"d_out": d_out, "skip": bool(getattr(cfg, "skip_connection", False))}
    sae = create(cfg.architecture, d_in, d_sae, cfg.sae, device=run.device, **shape)
    t0 = time.perf_counter()
    if run.checkpoint is None:
        if distributed.is_main():
            n = sample_size(cfg.init, d_sae, cfg.rare_ratio)
            initialize(sae, cfg.init, seed=cfg.seed, sample=sample(n) if n else None, rare_ratio=cfg.rare_ratio,
                       encoder_scale=cfg.encoder_scale)
            if cfg.center_init:
                with torch.no_grad():
                    x_BD, y_BE = sae.split(sample(16384))
                    sae.b_dec.copy_((x_BD if y_BE is None else y_BE).mean(0))
        for p in sae.parameters():  # every replica starts from rank 0's dictionary
            distributed.broadcast_(p.data)
    if cfg.feature_shards > 1:  # this rank's slice of the initialized dictionary (b_dec replicated)
        shards = feature_shards.FeatureShards(cfg.feature_shards, d_sae)
        sae = feature_shards.rebuilt(sae, shards.size, shards.own)
        sae.shards = shards
    run.init_s = time.perf_counter() - t0
    return sae


def build_clt(run: Run, d_in: int, d_out: int, n_layers: int, sample: Callable[[int], torch.Tensor]):
    """A cross-layer transcoder of `n_layers` (crosslayer.py), initialized by --init layer by layer from
    `sample(n)` (rows: every layer's input, then every layer's target); --center-init: b_dec = the
    targets' means. A resumed run skips the init."""
    cfg = run.cfg
    clt = CrossLayerTranscoder(n_layers, d_in, cfg.dict_size, d_out, cfg.architecture, cfg.sae, device=run.device)
    t0 = time.perf_counter()
    if run.checkpoint is None:
        if distributed.is_main():
            n = sample_size(cfg.init, cfg.dict_size, cfg.rare_ratio)
            initialize_clt(clt, cfg.init, seed=cfg.seed, sample=sample(n).cpu() if n else None,
                           encoder_scale=cfg.encoder_scale)
            if cfg.center_init:
                with torch.no_grad():
                    clt.b_dec.copy_(sample(16384)[:, clt.d_in:].mean(0).reshape(n_layers, d_out))
        for p in clt.parameters():
            distributed.broadcast_(p.data)
    run.init_s = time.perf_counter() - t0
    return clt


def make_trainer(run: Run, sae: SAE, sampler: Callable[[int, int, int], torch.Tensor], input_scale: float = 1.0,
                 output_scale: float | None = None) -> Trainer:
    """The trainer, with a resampler drawing `sampler(n, step, part)` when --resample is on
    (`output_scale`: a transcoder's targets' scale)."""
    resampler = Resampler(run.cfg, sampler) if run.cfg.resample != "none" else None
    trainer = Trainer(sae, run.cfg, run.out, state=TrainState(input_scale=input_scale, output_scale=output_scale),
                      resampler=resampler)
    if run.checkpoint is not None:
        trainer.restore(run.checkpoint)
    if run.out:
        make_out_dir(run.out)
        lock_run_dir(run.out)  # a second run into this --out is refused from here on
        if run.checkpoint is None and (run.out / "metrics.jsonl").exists() and distributed.is_main():
            (run.out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
        if run.cfg.wandb and distributed.is_main():
            try:
                trainer.loggers.append(WandbLogger(run.cfg, run.out, kind=type(run.cfg).__name__))
            except UserError:  # nothing trained yet: leave no directory this run made
                if not run.out_existed:
                    release_run_dirs()
                    shutil.rmtree(run.out, ignore_errors=True)
                raise
    return trainer


def finish(run: Run, trainer: Trainer) -> dict[str, Any]:
    """Save the checkpoint and the dictionary; the summary fields every training run reports."""
    cfg, st = run.cfg, trainer.state
    if run.out:
        trainer.save_checkpoint()
        trainer.save_dictionary()
    # this rank's dictionary state: weights + Adam's two moments (a feature shard holds its slice)
    state_bytes = sum(3 * p.numel() * p.element_size() for p in trainer.sae.parameters())
    trainer.unshard()
    return {"architecture": cfg.architecture, "dict_size": trainer.sae.d_sae, "init": cfg.init,
            "feature_shards": cfg.feature_shards, "rank_state_bytes": state_bytes,
            "rank_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rare_ratio": cfg.rare_ratio, "encoder_scale": cfg.encoder_scale,
            "unit_norm_decoder": cfg.unit_norm_decoder, "seed": cfg.seed, **cfg.sae.values(),
            "lr": cfg.lr, "lr_decay_steps": cfg.lr_decay_steps, "batch_size": cfg.batch_size,
            "dead_window": cfg.dead_window, "steps": st.step, "tokens": st.tokens, **trainer.resample_summary(),
            "threads": threads.governor.summary()}


def context_stream(model, cfg: Any, rank: int, world: int) -> Callable[[int], Any]:
    """The training contexts from global context k on (this rank's share under torchrun)."""
    def stream_from(k: int):
        stream = data.contexts(model, cfg.dataset, "train", seed=cfg.seed, batch=cfg.contexts_per_pass,
                               text_column=cfg.text_column, skip=k)
        return itertools.islice(stream, rank, None, world) if world > 1 else stream

    return stream_from


def held_out_evals(model, run: Run, dataset: str, hook: str, target_hook: str | None = None,
                   layers: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
    """The saved dictionary spliced into the model on the dataset's held-out split (`eval_tokens`);
    a transcoder's output in place of its target hook's activation; a cross-layer transcoder's at
    every layer at once (`layers`: its input and target hooks)."""
    cfg = run.cfg
    held = data.contexts(model, dataset, "test", seed=0, batch=cfg.contexts_per_pass, text_column=cfg.text_column,
                         loop=False)
    if layers:
        ev = evaluate_clt(model, load(run.out, device=run.device), *layers, held, cfg.eval_tokens,
                          progress=cfg.progress)
        for row in ev["layers"]:
            row.pop("firing_frequency")
        return ev
    ev = evaluate(model, load(run.out, device=run.device), hook, held, cfg.eval_tokens, progress=cfg.progress,
                  target_hook=target_hook)
    ev.pop("firing_frequency")
    return ev


def write_summary(run: Run, trainer: Trainer, summary: dict[str, Any]) -> dict[str, Any]:
    summary |= {"init_s": round(run.init_s, 4), "train_s": round(trainer.state.train_seconds, 3),
                "wall_s": round(time.perf_counter() - run.t_start, 3), "device": str(run.device)}
    if distributed.is_main() and run.out:
        atomic_write_json(run.out / "summary.json", summary)
        for logger in trainer.loggers:
            logger.finish(summary)
    distributed.barrier()
    return summary
