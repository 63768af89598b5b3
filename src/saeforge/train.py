"""The training loop: Adam on MSE + λ·L1, logging, dead-feature statistics, checkpoints.

The trainer consumes an iterator of activation batches x_BD and does not know where they
come from (a model, a disk cache, toy data). Per step it runs kernels.loss_and_grads, the
optional unit-norm projection and Adam; every value it needs later stays on the device.
The host syncs only on logging and checkpoint steps (and when a callback asks for it).

Checkpoints (`<out>/checkpoint/`): state.safetensors (weights, Adam moments, firing
statistics, torch RNG state) + state.json (step, tokens, Adam step, config, the caller's
extra state). A resumed run ends with exactly the weights of an uninterrupted one, provided
the batch iterator resumes at the same step (ToyData.batches(start=step) does).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import distributed, metrics
from .config import TrainConfig
from .dictionary import atomic_save_tensors, atomic_write_bytes, atomic_write_json, log_sparsity, read_tensors, save
from .errors import UserError
from .kernels import StepOutput, loss_and_grads
from .resample import Resampler, check_settings
from .sae import SparseAutoencoder

CKPT = "checkpoint"


def pick_device(name: str) -> torch.device:
    name = distributed.device_for(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def prepare_out_dir(path: str | Path, resume: bool) -> Path:
    """Create --out, refusing to clobber a previous run unless it is being resumed."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not resume and ((out / "summary.json").exists() or (out / CKPT).exists()):
        raise UserError(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}") from None
    distributed.barrier()  # every rank has checked before any writes
    return out


class Trainer:
    def __init__(self, sae: SparseAutoencoder, cfg: TrainConfig, out_dir: str | Path | None = None,
                 input_scale: float = 1.0, sampler: Callable[[int, int], torch.Tensor] | None = None):
        self.sae, self.cfg = sae, cfg
        self.out = Path(out_dir) if out_dir else None
        self.input_scale = input_scale
        dev = sae.W_enc.device
        kw: dict[str, Any] = {"fused": True} if dev.type in ("cuda", "cpu") else {}
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    eps=cfg.adam_eps, **kw)
        self.step = 0
        self.tokens = 0
        self.tokens_since_fired_F = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
        # Firing counts measured on logging steps (the only steps that look at the codes).
        self.firing_counts_F = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
        self.firing_tokens = 0
        self.extra_state: dict[str, Any] = {}  # callers' resumable state (e.g. the toy MMCS trace)
        self.train_seconds = 0.0
        self.total_steps = 0  # the budget fit() runs to; the lr decay counts back from it
        # sampler(n, step): n activations from the training distribution, for resampling
        self.sampler = sampler
        self.resampler: Resampler | None = None

    @property
    def dead_window(self) -> int:
        return self.cfg.dead_window or 10 * self.cfg.batch_size

    def l1_now(self) -> float:
        w = self.cfg.l1_warmup_steps
        return self.cfg.l1 * min(1.0, (self.step + 1) / w) if w else self.cfg.l1

    def lr_now(self) -> float:
        """Linear warm-up from 0, constant, then linear decay to 0 over the budget's last steps."""
        cfg, step = self.cfg, self.step
        scale = 1.0
        if cfg.lr_warmup_steps:
            scale = min(scale, (step + 1) / cfg.lr_warmup_steps)
        if cfg.lr_decay_steps and self.total_steps:
            scale = min(scale, max(0.0, (self.total_steps - step) / cfg.lr_decay_steps))
        return cfg.lr * scale

    # ---------------------------------------------------------------- one step
    def train_step(self, x_BD: torch.Tensor) -> StepOutput:
        sae = self.sae
        out = loss_and_grads(sae, x_BD, self.l1_now())
        if distributed.active():  # one all-reduce: mean gradient of the global batch + firing sums
            distributed.all_reduce_step([sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec], out.feature_sums_F)
        if self.cfg.unit_norm_decoder:
            sae.remove_parallel_grad_()
        if self.cfg.lr_warmup_steps or self.cfg.lr_decay_steps:
            for group in self.opt.param_groups:
                group["lr"] = self.lr_now()
        self.opt.step()
        if self.cfg.unit_norm_decoder:
            sae.normalize_decoder_()
        B = x_BD.shape[0] * distributed.world()
        self.tokens_since_fired_F.add_(B).masked_fill_(out.feature_sums_F > 0, 0)
        self.step += 1
        self.tokens += B
        return out

    # ---------------------------------------------------------------- the loop
    def fit(self, batches: Iterator[torch.Tensor], steps: int,
            callback: Callable[["Trainer", StepOutput], bool] | None = None) -> None:
        """Train until `steps` total steps (counting resumed ones) or until callback returns True."""
        cfg = self.cfg
        self.total_steps = steps
        if cfg.resample != "none":
            check_settings(cfg, steps, steps * cfg.batch_size)
            if self.sampler is None:
                raise UserError(f"--resample {cfg.resample} needs a source of activations to score")
            self.resampler = Resampler(cfg, self.sampler, steps)
        bar = tqdm(total=steps, initial=self.step, disable=not cfg.progress, file=sys.stderr,
                   desc="train", unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        stop = False
        try:
            while self.step < steps and not stop:
                x_BD = next(batches)
                out = self.train_step(x_BD)
                if self.resampler is not None:
                    self.resampler(self)
                if callback is not None:
                    stop = bool(callback(self, out))
                if self.step % cfg.log_every == 0 or self.step == steps or stop:
                    row = self.log(x_BD, out, time.perf_counter() - t0)
                    bar.set_postfix(mse=f"{row['mse']:.4g}", l0=f"{row['l0']:.1f}", ev=f"{row['explained_variance']:.3f}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.out:
                    self.save_checkpoint(extra_seconds=time.perf_counter() - t0)
                bar.update(1)
        finally:
            bar.close()
            self.train_seconds += time.perf_counter() - t0

    @torch.no_grad()
    def log(self, x_BD: torch.Tensor, out: StepOutput, elapsed: float) -> dict[str, Any]:
        fired_BF = out.f_BF > 0
        self.firing_counts_F += distributed.all_reduce_sum_(fired_BF.sum(0))
        self.firing_tokens += x_BD.shape[0] * distributed.world()
        loss, mse, l1, l0, ev = distributed.all_reduce_mean(  # means over ranks (equal local batches)
            [out.loss.item(), out.mse.item(), out.sparsity.item(), fired_BF.sum(-1, dtype=torch.float32).mean().item(),
             metrics.explained_variance(x_BD.to(out.err_BD.dtype), out.err_BD).item()], x_BD.device)
        row = {
            "step": self.step,
            "tokens": self.tokens,
            "loss": loss,
            "mse": mse,
            "l1": l1,
            "l0": l0,
            "explained_variance": ev,
            "dead_fraction": metrics.dead_fraction(self.tokens_since_fired_F, self.dead_window).item(),
            "lr": self.opt.param_groups[0]["lr"],
            "l1_coefficient": self.l1_now(),
            "elapsed_s": round(self.train_seconds + elapsed, 3),
        }
        if self.resampler is not None:
            row["resampled"] = sum(e.get("resampled", e["dead"]) for e in self.extra_state.get("resample_events", []))
        row.update(self.extra_state.get("log", {}))
        self.last_log = row
        if self.out and distributed.is_main():
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    # ---------------------------------------------------------------- outputs
    def resample_summary(self) -> dict[str, Any]:
        events = self.extra_state.get("resample_events", [])
        return {"resample": self.cfg.resample, "resample_events": len(events),
                "resampled": sum(e.get("resampled", e["dead"]) for e in events),
                "resample_s": round(sum(e["seconds"] for e in events), 4)}

    def dead_count(self) -> int:
        return int((self.tokens_since_fired_F >= self.dead_window).sum())

    def save_dictionary(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path else self.out
        if target is None:
            raise ValueError("no output directory")
        if not distributed.is_main():
            return target
        self.sae.metadata.update(tokens_seen=self.tokens, steps=self.step, l1=self.cfg.l1,
                                 resample=self.cfg.resample, input_scale=self.input_scale)
        sparsity = log_sparsity(self.firing_counts_F, self.firing_tokens) if self.firing_tokens else None
        return save(self.sae, target, sparsity_F=sparsity, input_scale=self.input_scale)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, extra_seconds: float = 0.0) -> Path:
        """Write <out>/checkpoint atomically: into a fresh directory, then swapped in by rename.
        Rank 0 writes; every rank waits for it, so a resumed run finds the same state everywhere."""
        assert self.out is not None
        if not distributed.is_main():
            distributed.barrier()
            return self.out / CKPT
        final, tmp, old = self.out / CKPT, self.out / f".{CKPT}.tmp", self.out / f".{CKPT}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors: dict[str, torch.Tensor] = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        adam_steps = {}
        for name, p in self.sae.named_parameters():
            st = self.opt.state.get(p, {})
            if st:
                tensors[f"adam.{name}.exp_avg"] = st["exp_avg"]
                tensors[f"adam.{name}.exp_avg_sq"] = st["exp_avg_sq"]
                adam_steps[name] = float(st["step"])
        tensors["tokens_since_fired"] = self.tokens_since_fired_F
        tensors["firing_counts"] = self.firing_counts_F
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        atomic_save_tensors(tmp / "state.safetensors", tensors)
        atomic_write_json(tmp / "state.json", {
            "step": self.step, "tokens": self.tokens, "firing_tokens": self.firing_tokens,
            "adam_steps": adam_steps, "train_seconds": self.train_seconds + extra_seconds,
            "config": asdict(self.cfg), "metadata": self.sae.metadata, "extra": self.extra_state,
        })
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
        return final

    def load_checkpoint(self) -> bool:
        """Restore from <out>/checkpoint (or the previous one if a swap was interrupted)."""
        assert self.out is not None
        for cand in (self.out / CKPT, self.out / f".{CKPT}.old"):
            if (cand / "state.json").is_file() and (cand / "state.safetensors").is_file():
                break
        else:
            return False
        try:
            state = json.loads((cand / "state.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"checkpoint {cand} is corrupt ({e}); delete it to start over") from None
        tensors = read_tensors(cand / "state.safetensors", "the checkpoint tensors")
        dev = self.sae.W_enc.device
        sd = {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}
        for k, v in sd.items():
            if k not in dict(self.sae.named_parameters()) or v.shape != getattr(self.sae, k).shape:
                raise UserError(f"checkpoint {cand} does not match this run's dictionary ({k} {list(v.shape)}); "
                                "use the same --dict-size / model, or another --out")
        self.sae.load_state_dict(sd)
        opt_state = {}
        for i, (name, p) in enumerate(self.sae.named_parameters()):
            if name in state["adam_steps"]:
                opt_state[i] = {"step": torch.tensor(state["adam_steps"][name], dtype=torch.float32),
                                "exp_avg": tensors[f"adam.{name}.exp_avg"].to(dev),
                                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(dev)}
        sd_opt = self.opt.state_dict()
        sd_opt["state"] = opt_state
        self.opt.load_state_dict(sd_opt)
        self.tokens_since_fired_F.copy_(tensors["tokens_since_fired"])
        self.firing_counts_F.copy_(tensors["firing_counts"])
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.firing_tokens = state["firing_tokens"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.extra_state = state.get("extra", {})
        self.sae.metadata.update(state.get("metadata", {}))
        self._truncate_metrics()
        return True

    def _truncate_metrics(self) -> None:
        """Drop metrics.jsonl lines logged after the checkpoint: the resumed run re-logs them."""
        file = self.out / "metrics.jsonl" if self.out and distributed.is_main() else None
        if not file or not file.exists():
            return
        keep = [ln for ln in file.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        atomic_write_bytes(file, ("\n".join(keep) + "\n" if keep else "").encode())


# ---------------------------------------------------------------- `saeforge train` on real activations
def run_train(cfg) -> dict[str, Any]:
    """Train on a model's activations (live buffer, or an activation cache), evaluate, write everything.

    Flow: model (or cache) → ActivationBuffer (scale s so that E‖s·x‖² = d_in, estimated on the
    first fill) → initializer, then b_dec = the mean of a sample → Trainer → dictionary (s folded
    in) → evals on held-out text with the dictionary spliced in → summary.json.

    Resume (`--resume`) restores weights, Adam state and statistics, and the data position
    (contexts read, or the cache cursor): the run goes on with data it has not seen, never
    repeating any. Its batches differ from an uninterrupted run's, because the buffer's
    unserved rows at the checkpoint are not saved (the toy path resumes exactly).

    Under torchrun (see distributed.py) --batch-size is the global batch; each rank reads its
    own shards of the cache, or every world-th batch of contexts; the input scale is the mean
    of the ranks' estimates; rank 0 initializes and broadcasts the dictionary, and evaluates.
    """
    import itertools

    from . import data
    from .buffer import DTYPES, ActivationBuffer, ModelSource
    from .cache import CacheSource, read_manifest
    from .dictionary import atomic_write_json
    from .init import initialize, sample_size
    from .models import default_hook, hook_width, load_model, resolve_hook

    t_start = time.perf_counter()
    distributed.setup(cfg.device)
    world, rank = distributed.world(), distributed.rank()
    device = pick_device(cfg.device)
    out = prepare_out_dir(cfg.out, cfg.resume)
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} (the global batch) must divide evenly over {world} ranks")
    local_batch = cfg.batch_size // world
    model = None
    if cfg.cache:
        manifest = read_manifest(cfg.cache)
        model_spec, hook, dataset = manifest["model"], manifest["hook"], manifest["dataset"]
        d_in, n_ctx = int(manifest["d_in"]), int(manifest["n_ctx"])
    else:
        model = load_model(cfg.model, device)
        model_spec, dataset = cfg.model, cfg.dataset
        hook = cfg.hook or default_hook(model)
        stop_at_layer = resolve_hook(model, hook)
        d_in, n_ctx = hook_width(model, hook), model.cfg.n_ctx
    steps = cfg.total_steps()
    sae = SparseAutoencoder(d_in, cfg.dict_size or 8 * d_in, device=device)
    trainer = Trainer(sae, cfg, out)
    resumed = cfg.resume and trainer.load_checkpoint()
    if not resumed and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    position = trainer.extra_state.get("data", {}) if resumed else {}
    if resumed and position.get("world", 1) != world:  # another number of ranks: same global position, re-split
        position = {"contexts_read": position.get("contexts_read", 0), "epoch": position.get("epoch", 0) + 1}
    st_dtype = DTYPES[cfg.buffer_dtype]
    if cfg.cache:
        source = CacheSource(cfg.cache, seed=cfg.seed, device=device, position=position, rank=rank, world=world)
        carry = source.rows_per_chunk
    else:
        skip = position.get("contexts_read", 0)  # global contexts consumed by all ranks together
        stream = data.contexts(model, cfg.dataset, "train", seed=cfg.seed, batch=cfg.contexts_per_pass,
                               text_column=cfg.text_column, skip=skip)
        if world > 1:
            stream = itertools.islice(stream, rank, None, world)
        source = ModelSource(model, hook, stream, stop_at_layer, contexts_read=skip)
        carry = cfg.contexts_per_pass * (n_ctx - 1)
    rows = ActivationBuffer.rows_for(cfg.buffer_mb, d_in, st_dtype, carry_rows=carry)
    buffer = ActivationBuffer(source, rows, local_batch, device, st_dtype, seed=cfg.seed * world + rank,
                              scale=trainer.extra_state.get("input_scale"))
    if "input_scale" not in trainer.extra_state:
        buffer.scale = distributed.all_reduce_mean([buffer.scale], device)[0]
    trainer.input_scale = buffer.scale
    trainer.sampler = lambda n, step: buffer.sample(n)
    trainer.extra_state["input_scale"] = buffer.scale

    t_init = time.perf_counter()
    if not resumed:
        n = sample_size(cfg.init, sae.d_sae, cfg.rare_ratio)
        if distributed.is_main():
            initialize(sae, cfg.init, seed=cfg.seed, sample=buffer.sample(n) if n else None,
                       rare_ratio=cfg.rare_ratio, encoder_scale=cfg.encoder_scale)
            with torch.no_grad():
                sae.b_dec.copy_(buffer.sample(16384).mean(0))
        for p in sae.parameters():  # every replica starts from rank 0's dictionary
            distributed.broadcast_(p.data)
    init_s = time.perf_counter() - t_init
    sae.metadata.update(model_name=model_spec, hook_name=hook, context_size=n_ctx, prepend_bos=True,
                        dataset_path=dataset, seed=cfg.seed, dict_size=sae.d_sae, source="cache" if cfg.cache else "model")

    def position_now() -> dict[str, Any]:
        st = dict(source.state(), world=world)
        if "contexts_read" in st:  # ranks read equally: the global count
            st["contexts_read"] = skip + (st["contexts_read"] - skip) * world
        return st

    def on_step(tr: Trainer, _out) -> bool:
        if cfg.checkpoint_every and tr.step % cfg.checkpoint_every == 0:
            tr.extra_state["data"] = position_now()
        return False

    trainer.fit(buffer, steps, callback=on_step)
    trainer.extra_state["data"] = position_now()
    trainer.save_checkpoint()
    trainer.save_dictionary()
    last = getattr(trainer, "last_log", {})
    summary: dict[str, Any] = {
        "model": model_spec, "hook": hook, "dataset": dataset, "cache": cfg.cache or None,
        "d_in": d_in, "dict_size": sae.d_sae, "init": cfg.init, "rare_ratio": cfg.rare_ratio, "encoder_scale": cfg.encoder_scale, "seed": cfg.seed,
        "l1": cfg.l1, "lr": cfg.lr, "batch_size": cfg.batch_size, "steps": trainer.step, "tokens": trainer.tokens,
        "input_scale": buffer.scale, "buffer_rows": rows,
        "train_l0": last.get("l0"), "train_explained_variance": last.get("explained_variance"),
        "train_mse": last.get("mse"), "train_dead_fraction": last.get("dead_fraction"), **trainer.resample_summary(),
    }
    t_eval = time.perf_counter()
    if not distributed.is_main():
        distributed.barrier()
        return summary
    if cfg.eval_tokens:
        from .dictionary import load
        from .evals import evaluate

        if model is None:
            model = load_model(model_spec, device)
        held = data.contexts(model, dataset, "test", seed=0, batch=cfg.contexts_per_pass,
                             text_column=cfg.text_column, loop=False)
        ev = evaluate(model, load(out, device=device), hook, held, cfg.eval_tokens, progress=cfg.progress)
        ev.pop("firing_frequency")
        summary.update(ev)
    summary.update(init_s=round(init_s, 3), train_s=round(trainer.train_seconds, 3),
                   eval_s=round(time.perf_counter() - t_eval, 3), wall_s=round(time.perf_counter() - t_start, 3),
                   device=str(device))
    atomic_write_json(out / "summary.json", summary)
    distributed.barrier()
    return summary
