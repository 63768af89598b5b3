"""`saeforge sweep`: every (size, steps, λ) of the grid trained from one activation cache, each
measured on held-out activations, one JSON row per finished run appended to <out>/runs.jsonl
(a finished run is never redone), then the scaling-law fits and plots (scaling.py). With
--suggest, only the finished sweep is read.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from saeforge.config import SweepConfig
from saeforge.dictionary.init import sample_size
from saeforge.errors import UserError
from saeforge.evaluation.metrics import Reconstruction
from saeforge.evaluation.scaling import (analyze, init_flops, jsonable, parse_grid, plot, read_results, sparsity_value,
                                         suggest, train_flops)
from saeforge.pipeline import common
from saeforge.runtime import atomic_write_bytes, check_out_dir, make_out_dir, pick_device
from saeforge.sources.buffer import ActivationBuffer, sample_generator
from saeforge.sources.cache import CacheSource, read_manifest


def run_sweep(cfg: SweepConfig) -> list[dict]:
    out = Path(cfg.out)
    if not cfg.suggest:
        check_out_dir(out, outputs=("runs.jsonl", "fits.json"))
    sizes = parse_grid(cfg.sizes, "sizes")
    steps = parse_grid(cfg.steps, "steps")
    axis = cfg.sparsity_axis()
    l1s = parse_grid(cfg.ks, "ks") if axis == "k" else parse_grid(cfg.l1s, "l1s", float)
    if cfg.suggest:
        rows = read_results(out / "runs.jsonl")
        if not rows:
            raise UserError(f"--suggest: {out / 'runs.jsonl'} holds no finished run; run the sweep first")
        res = analyze(rows, flops_width(rows[0]), rows[0]["batch_size"], cfg.alpha, n_boot=500)
        print(json.dumps(suggest(res, cfg.suggest, l1s[0] if len(l1s) == 1 else None)))
        return rows
    manifest = read_manifest(cfg.cache)
    n_shards = len(manifest["shards"])
    if cfg.eval_cache:
        eval_src, train_shards = CacheSource(cfg.eval_cache), None
    else:
        if n_shards < 2:
            raise UserError(f"--cache {cfg.cache} has {n_shards} shard; hold-out needs 2 or more, or give --eval-cache")
        eval_src, train_shards = CacheSource(cfg.cache, shards=[n_shards - 1]), list(range(n_shards - 1))
    train_src = CacheSource(cfg.cache)
    if (eval_src.d_in, eval_src.widths) != (train_src.d_in, train_src.widths):  # found now, not after every run trained
        raise UserError(f"--eval-cache {cfg.eval_cache} holds activations of width {eval_src.d_in}, the training "
                        f"cache {train_src.d_in}: harvest both at the same model and hooks")
    device = pick_device(cfg.device, cfg.threads)
    make_out_dir(out)
    X_eval = eval_src.load_shard(eval_src.mine[0])["activations"][: cfg.eval_rows].to(device, torch.float32)
    results = out / "runs.jsonl"
    finished = read_results(results)
    if results.exists() and len(finished) != len([x for x in results.read_text().splitlines() if x.strip()]):
        atomic_write_bytes(results, "".join(json.dumps(r) + "\n" for r in finished).encode())  # drop a cut line
    done = {(r["d_sae"], r["steps"], sparsity_value(r)) for r in finished if r.get("sparsity_axis", "l1_coefficient") == axis}
    grid = [(F, S, lam) for lam in l1s for F in sizes for S in steps]
    bar = tqdm(total=len(grid), initial=sum(g in done for g in grid), disable=not cfg.progress, file=sys.stderr,
               desc="sweep", unit="run", dynamic_ncols=True)
    for S in steps:  # the runs that share a step budget train side by side, from one pass over the cache
        group = [(F, lam) for F, S2, lam in grid if S2 == S and (F, S, lam) not in done]
        if not group:
            continue
        for row in train_group(cfg, group, S, device, train_shards, X_eval):
            with open(results, "a") as fh:  # one whole line per finished run
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            bar.update(1)
            bar.set_postfix(F=row["d_sae"], S=S, loss=f"{row['loss_l1']:.3f}")
    bar.close()
    rows = [r for r in read_results(results) if r.get("sparsity_axis", "l1_coefficient") == axis
            and (r["d_sae"], r["steps"], sparsity_value(r)) in set(grid)]
    res = analyze(rows, flops_width(rows[0]) if rows else int(manifest["d_in"]), cfg.batch_size, cfg.alpha)
    (out / "fits.json").write_text(json.dumps(jsonable(res), indent=1))
    plot(res, rows, out, cfg.alpha)
    return rows


def train_group(cfg: SweepConfig, group: list[tuple[int, float]], S: int, device, train_shards, X_eval) -> list[dict]:
    """The (size, λ) runs of one step budget, trained side by side: one buffer over the cache feeds
    every run each batch; each run keeps its own optimizer, resampling and sample generator, so
    it ends with the weights of its run alone (tests/test_sweep.py). A transcoder cache's runs are
    transcoders (its rows: input and target, each side with its own scale)."""
    t0 = time.perf_counter()
    source = CacheSource(cfg.cache, seed=cfg.seed, device=device, shards=train_shards)
    d, d_out = (source.widths[0], source.widths[1]) if source.widths else (source.d_in, None)
    rows = ActivationBuffer.rows_for(cfg.buffer_mb, source.d_in, torch.float32, carry_rows=source.rows_per_chunk)
    buffer = ActivationBuffer(source, rows, cfg.batch_size, device, torch.float32, seed=cfg.seed, widths=source.widths)
    scales = buffer.scales if source.widths else [buffer.scale]
    runs, trainers = [], []
    for F, lam in group:
        run = common.start(cfg.run_config(S, F, lam, str(device)))
        common.resolve(run, d)
        gen = sample_generator(cfg.seed)  # what this run's own buffer would sample with
        sample = (lambda gen: lambda n: buffer.sample(n, gen))(gen)
        sae = common.build_sae(run, d, sample, d_out=d_out)
        trainer = common.make_trainer(run, sae, (lambda s: lambda n, step, part: s(n))(sample), input_scale=scales[0],
                                      output_scale=scales[1] if d_out else None)
        trainer.begin(S)
        runs.append(run)
        trainers.append(trainer)
    try:
        while trainers[0].step < S:
            x_BD = next(buffer)
            for tr in trainers:
                tr.advance(x_BD)
    finally:
        for tr in trainers:
            tr.end(check=False)
    seconds = (time.perf_counter() - t0) / len(group)
    out = []
    for run, tr, (F, lam) in zip(runs, trainers, group):
        tr.check_finite()
        out.append(measure(cfg, tr, F, S, lam, d, scales, X_eval, device) | {
            "init_s": round(run.init_s, 3), "seconds": round(seconds, 3), "trained_with": len(group)})
    return out


def flops_width(row: dict) -> float:
    """The width in the FLOP count 12·w·F per token: d_in for an SAE, (d_in + d_out) / 2 for a transcoder
    (its encoder product is 2·d_in·F, its decoder's 2·d_out·F, each tripled by the backward)."""
    return (row["d_in"] + row.get("d_out", row["d_in"])) / 2


def measure(cfg: SweepConfig, trainer, F: int, S: int, lam: float, d: int, scales: list[float], X_eval, device) -> dict:
    """One finished run's row: held-out reconstruction (a transcoder's: of its targets), FLOPs, settings."""
    sae = trainer.sae
    rec = Reconstruction(F, device)
    with torch.no_grad():
        x_all = X_eval[:, :d] * scales[0]
        y_all = X_eval[:, d:] * scales[1] if sae.transcoder else x_all
        norms_F = sae.W_dec.norm(dim=1)
        for i in range(0, len(x_all), 8192):
            x, y = x_all[i:i + 8192], y_all[i:i + 8192]
            f_BF = sae.encode(x)
            rec.add(y, f_BF, sae.decode(f_BF, x) - y, sparsity_B=(f_BF * norms_F).sum(-1))
    m = rec.result()
    tokens = trainer.state.tokens
    width = (d + sae.d_out) / 2
    f_train, f_init = train_flops(width, F, tokens), init_flops(cfg.init, sae.d_out, F, sample_size(cfg.init, F, 0.0))
    axis = cfg.sparsity_axis()
    coefficient = 0.0 if axis == "k" else lam  # a k-run's loss is its MSE
    return {"d_sae": F, "steps": S, "sparsity_axis": axis, axis: lam, "architecture": cfg.architecture, "d_in": d,
            **({"d_out": sae.d_out} if sae.transcoder else {}), "batch_size": cfg.batch_size, "tokens": tokens,
            "flops": f_train + f_init, "flops_train": f_train, "flops_init": f_init, "init": cfg.init, "lr": trainer.cfg.lr,
            "mse": m["mse"], "sparsity": m["sparsity"], "l0": m["l0"], "loss_l1": m["mse"] + coefficient * (m["l0"] if axis == "l0_coefficient" else m["sparsity"]),
            "explained_variance": m["explained_variance"], "dead_fraction": m["dead_fraction"], "eval_rows": rec.n,
            "seed": cfg.seed}
