"""The training loop: Adam on an SAE's loss, logging, dead-feature statistics, checkpoints.

The trainer sees batches x_BD (it does not know where they come from), an SAE (through the
interface of sae.py), a TrainConfig, and what it is given: a resampler, a per-step callback.
Per step it runs `sae.step` (loss and gradients), the optional unit-norm projection and Adam;
every value it needs later stays on the device, so the host syncs only on logging and
checkpoint steps.

Everything a run has beyond its config and weights is one typed `TrainState`; a checkpoint
(checkpoint.py) is its serialization plus the weights and Adam's moments. A resumed run ends with exactly the weights of an
uninterrupted one, provided the batches resume at the same step (toy batches do).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from saeforge import distributed, threads
from saeforge.config import TrainConfig
from saeforge.dictionary.io import log_sparsity, save
from saeforge.dictionary.sae import SAE, StepOutput
from saeforge.errors import UserError
from saeforge.evaluation import metrics
from saeforge.runtime import CHECKPOINT, DeviceClock, atomic_write_bytes
from saeforge.training import feature_shards
from saeforge.training.checkpoint import Checkpoint, TrainState, write_checkpoint


class ResamplerHook(Protocol):
    """What the trainer calls after each step (resample.Resampler is the one implementation)."""

    def observe(self, trainer: "Trainer", x_BD: torch.Tensor, out: StepOutput) -> None: ...
    def __call__(self, trainer: "Trainer") -> dict[str, Any] | None: ...
    def state_tensors(self) -> dict[str, torch.Tensor]: ...
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], sae: SAE, where: str) -> None: ...


class Trainer:
    def __init__(self, sae: SAE, cfg: TrainConfig, out_dir: str | Path | None = None, *,
                 state: TrainState | None = None, resampler: ResamplerHook | None = None):
        if not cfg.is_resolved():
            raise ValueError("the trainer takes a run config: cfg.resolved(steps, d_in)")
        self.sae, self.cfg, self.resampler = sae, cfg, resampler
        self.out = Path(out_dir) if out_dir else None
        dev = sae.W_enc.device
        kw: dict[str, Any] = {"fused": True} if dev.type in ("cuda", "cpu") else {}
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    eps=cfg.adam_eps, **kw)
        self.state = state or TrainState()
        for name in ("tokens_since_fired_F", "firing_counts_F"):
            if getattr(self.state, name) is None:
                setattr(self.state, name, torch.zeros(sae.d_sae, dtype=torch.long, device=dev))
        self.total_steps = 0  # the budget fit() runs to; the lr decay counts back from it
        self.first_bad_step = torch.zeros((), dtype=torch.long, device=dev)  # first step with a non-finite loss
        self.log_extra: dict[str, Any] = {}  # fields a callback adds to the next metrics.jsonl rows
        # where this process's training time went (host seconds; on a GPU the step's kernels run
        # async, so their time shows wherever the host next waits: `step_clock` has their GPU time)
        self.timing = {"data_s": 0.0, "step_s": 0.0, "resample_s": 0.0}
        self.step_clock = DeviceClock(dev)
        self.loggers: list[Any] = []  # more sinks for each metrics row: objects with log(row) (e.g. W&B)
        self.keep_previous_checkpoint = False  # several dictionaries of a pass keep theirs (checkpoint.py)
        self.last_log: dict[str, Any] = {}

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def data_world(self) -> int:
        """Ranks that train on different rows of the global batch."""
        return distributed.world() if self.sae.shards is None else self.sae.shards.data_world

    @property
    def dead_window(self) -> int:
        return self.cfg.dead_window

    def coefficient_now(self) -> float:
        """The architecture's sparsity coefficient (λ for ReLU + L1), ramped over --l1-warmup-steps."""
        value = self.cfg.sae.coefficient_value()
        w = self.cfg.l1_warmup_steps
        return value * min(1.0, (self.step + 1) / w) if w else value

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
    def train_step(self, batch: torch.Tensor) -> StepOutput:
        """One step on a batch: its rows are inputs x_BD, or a transcoder's inputs and targets side by
        side [x_BD | y_BE] (`SAE.split`)."""
        sae, st = self.sae, self.state
        x_BD, y_BE = sae.split(batch)
        dead_F = st.tokens_since_fired_F >= self.dead_window if sae.uses_dead_mask else None
        self.opt.zero_grad(set_to_none=True)  # the last step's gradients freed before this one's are made
        with torch.autocast(x_BD.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast):
            if sae.shards is None:
                out = sae.step(x_BD, self.coefficient_now(), dead_F, y_BE)
            else:  # one shard of the features: the autograd step, with its collectives (feature_shards.py)
                out = SAE.step(sae, x_BD, self.coefficient_now(), dead_F, y_BE)
        if self.data_world > 1:  # one all-reduce: mean gradient of the global batch + firing sums
            distributed.all_reduce_step(list(sae.parameters()), out.feature_sums_F,
                                        group=None if sae.shards is None else sae.shards.data_group)
        if self.cfg.unit_norm_decoder:
            sae.remove_parallel_grad_()
        if self.cfg.max_grad_norm:  # on the device, no host sync
            torch.nn.utils.clip_grad_norm_(sae.parameters(), self.cfg.max_grad_norm, foreach=True)
        if self.cfg.lr_warmup_steps or self.cfg.lr_decay_steps:
            for group in self.opt.param_groups:
                group["lr"] = self.lr_now()
        self.opt.step()
        if self.cfg.unit_norm_decoder:
            sae.normalize_decoder_()
        B = x_BD.shape[0] * self.data_world
        st.tokens_since_fired_F.add_(B).masked_fill_(out.feature_sums_F > 0, 0)
        st.step += 1
        st.tokens += B
        # on the device, no sync: read on logging and checkpoint steps (check_finite)
        self.first_bad_step = torch.where((self.first_bad_step == 0) & ~torch.isfinite(out.loss), st.step,
                                          self.first_bad_step)
        return out

    def check_finite(self) -> None:
        """Stop a diverged run before it writes anything: the last checkpoint and dictionary stay."""
        bad = int(self.first_bad_step)
        if bad:
            raise UserError(f"training diverged at step {bad} (the loss is not finite); the last checkpoint and "
                            f"dictionary in --out are kept. Lower --lr (now {self.cfg.lr:g}) or raise --lr-warmup-steps")

    @torch.no_grad()
    def renew_features(self, idx_K: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Give features idx_K new parameter values (`values[name]` holds their slices along the
        feature axis); their Adam moments and firing counters start over."""
        values = {**self.sae.renewed(idx_K), **values}
        for name, axis in self.sae.feature_axes.items():
            p = getattr(self.sae, name)
            sl = (slice(None),) * axis + (idx_K,)
            if name in values:
                p[sl] = values[name].to(p.dtype)
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][sl] = 0.0
        self.state.tokens_since_fired_F[idx_K] = 0

    # ---------------------------------------------------------------- the loop
    def fit(self, batches: Iterator[torch.Tensor], steps: int,
            callback: Callable[["Trainer", StepOutput], bool] | None = None) -> None:
        """Train until `steps` total steps (counting resumed ones) or until callback returns True."""
        self.begin(steps)
        bar = tqdm(total=steps, initial=self.step, disable=not self.cfg.progress, file=sys.stderr,
                   desc="train", unit="step", dynamic_ncols=True)
        stop = False
        try:
            while self.step < steps and not stop:
                t_data = time.perf_counter()
                x_BD = next(batches)
                self.timing["data_s"] += time.perf_counter() - t_data
                stop = self.advance(x_BD, callback)
                if self.last_log.get("step") == self.step:
                    row = self.last_log
                    bar.set_postfix(mse=f"{row['mse']:.4g}", l0=f"{row['l0']:.1f}", ev=f"{row['explained_variance']:.3f}")
                bar.update(1)
        finally:
            bar.close()
            self.end(check=False)
        self.check_finite()

    def begin(self, steps: int) -> None:
        """Start (or continue) training toward a budget of `steps` steps; `advance` does each one."""
        self.total_steps = steps
        self._t0 = time.perf_counter()

    def advance(self, x_BD: torch.Tensor, callback: Callable[["Trainer", StepOutput], bool] | None = None) -> bool:
        """One step on x_BD, then resampling, the callback, logging and checkpointing when due.
        Returns True when the callback asks to stop."""
        cfg, clock, timing = self.cfg, time.perf_counter, self.timing
        threads.tick()
        t_step, begun = clock(), self.step_clock.start()
        out = self.train_step(x_BD)
        self.step_clock.stop(begun)
        t_done = clock()
        timing["step_s"] += t_done - t_step
        if self.resampler is not None:
            self.resampler.observe(self, x_BD, out)
            event = self.resampler(self)
            if event is not None:
                self.state.resample_events.append(event)
            timing["resample_s"] += clock() - t_done
        stop = bool(callback(self, out)) if callback is not None else False
        if self.step % cfg.log_every == 0 or self.step == self.total_steps or stop:
            self.check_finite()
            self.log(x_BD, out, clock() - self._t0)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.out:
            self.check_finite()
            self.save_checkpoint(extra_seconds=clock() - self._t0)
        return stop

    def end(self, check: bool = True) -> None:
        """Close the span `begin` opened (its seconds count into the state); raise if it diverged."""
        self.state.train_seconds += time.perf_counter() - self._t0
        self._t0 = time.perf_counter()
        if check:
            self.check_finite()

    @torch.no_grad()
    def log(self, x_BD: torch.Tensor, out: StepOutput, elapsed: float) -> dict[str, Any]:
        st = self.state
        fired_F, l0 = metrics.firing(out.codes(dense=False))
        shards = self.sae.shards
        st.firing_counts_F += distributed.all_reduce_sum_(fired_F, None if shards is None else shards.data_group)
        st.firing_tokens += x_BD.shape[0] * self.data_world
        l0 = l0 if shards is None else shards.sum(l0)  # a shard counts its own latents only
        dead = metrics.dead_fraction(st.tokens_since_fired_F, self.dead_window).item()
        # means over ranks (equal local batches; a feature group's ranks agree, dead: equal shares)
        loss, mse, sparsity, l0, ev, dead = distributed.all_reduce_mean(
            [out.loss.item(), out.mse.item(), out.sparsity.item(), l0.item(),
             metrics.explained_variance(self.sae.target(*self.sae.split(x_BD)).to(out.err_BD.dtype),
                                        out.err_BD).item(), dead], x_BD.device)
        row = {
            "step": self.step, "tokens": st.tokens, "loss": loss, "mse": mse, "sparsity": sparsity, "l0": l0,
            "explained_variance": ev,
            "dead_fraction": dead,
            "lr": self.opt.param_groups[0]["lr"], (self.sae.coefficient or "coefficient"): self.coefficient_now(),
            "elapsed_s": round(st.train_seconds + elapsed, 3),
        }
        if self.step_clock.on:  # the host has just waited for the step (the .item() above): no extra sync
            row["step_gpu_s"] = round(self.step_clock.seconds(), 4)
        if self.resampler is not None:
            row["resampled"] = self.resample_summary()["resampled"]
        row.update(self.log_extra)
        self.last_log = row
        if self.out and distributed.is_main():
            try:
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            except OSError as e:  # a full disk: one line; the last checkpoint stays whole
                raise UserError(f"cannot write {self.out / 'metrics.jsonl'}: {e.strerror}; the last checkpoint in "
                                "--out is intact (free space, then --resume)") from None
        for logger in self.loggers:
            logger.log(row)
        return row

    # ---------------------------------------------------------------- outputs
    def resample_summary(self) -> dict[str, Any]:
        events = self.state.resample_events
        return {"resample": self.cfg.resample, "resample_events": len(events),
                "resampled": sum(e.get("resampled", e["dead"]) for e in events),
                "resample_s": round(sum(e["seconds"] for e in events), 4)}

    def dead_count(self) -> int:
        n = int((self.state.tokens_since_fired_F >= self.dead_window).sum())
        return n if self.sae.shards is None else self.sae.shards.count(n)

    def save_dictionary(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path else self.out
        if target is None:
            raise ValueError("no output directory")
        sae = self.whole_sae()
        st = self.state
        counts_F = st.firing_counts_F if self.sae.shards is None else self.sae.shards.whole(st.firing_counts_F, 0)
        if not distributed.is_main():
            return target
        sae.metadata.update(tokens_seen=st.tokens, steps=st.step, architecture=self.sae.architecture,
                            resample=self.cfg.resample, input_scale=st.input_scale, **sae.cfg.values())
        if st.output_scale is not None:
            sae.metadata["output_scale"] = st.output_scale
        sparsity = log_sparsity(counts_F, st.firing_tokens) if st.firing_tokens else None
        return save(sae, target, sparsity_F=sparsity, input_scale=st.input_scale, output_scale=st.output_scale)

    def unshard(self) -> None:
        """After training: hold the whole dictionary and its counters on every rank (a collective),
        so that the summary and evals read them as in an unsharded run."""
        shards = self.sae.shards
        if shards is not None:
            st = self.state
            st.tokens_since_fired_F = shards.whole(st.tokens_since_fired_F, 0)
            st.firing_counts_F = shards.whole(st.firing_counts_F, 0)
            self.sae = self.whole_sae()

    def whole_sae(self) -> SAE:
        """The dictionary with every feature (a sharded run gathers its shards: a collective)."""
        shards = self.sae.shards
        if shards is None:
            return self.sae
        return feature_shards.rebuilt(self.sae, shards.total, shards.whole)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, extra_seconds: float = 0.0) -> Path:
        """Write <out>/checkpoint atomically: into a fresh directory, then swapped in by rename.
        Rank 0 writes; every rank waits for it, so a resumed run finds the same state everywhere."""
        assert self.out is not None
        st = self.state
        tensors: dict[str, torch.Tensor] = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        adam_steps = {}
        for name, p in self.sae.named_parameters():
            ost = self.opt.state.get(p, {})
            if ost:
                tensors[f"adam.{name}.exp_avg"] = ost["exp_avg"]
                tensors[f"adam.{name}.exp_avg_sq"] = ost["exp_avg_sq"]
                adam_steps[name] = float(ost["step"])
        tensors["tokens_since_fired"] = st.tokens_since_fired_F
        tensors["firing_counts"] = st.firing_counts_F
        if self.sae.shards is not None:  # the checkpoint holds the whole dictionary, whatever the layout
            tensors = {k: self._resliced(k, v, self.sae.shards.whole) for k, v in tensors.items()}
        if not distributed.is_main():
            distributed.barrier()
            return self.out / CHECKPOINT
        tensors |= {f"data.{k}": v for k, v in st.data_tensors.items()}
        if self.resampler is not None:
            tensors |= {f"resample.{k}": v for k, v in self.resampler.state_tensors().items()}
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        final = write_checkpoint(self.out, tensors, keep_previous=self.keep_previous_checkpoint, state_json={
            **st.to_json(), "train_seconds": st.train_seconds + extra_seconds, "adam_steps": adam_steps,
            "architecture": self.sae.architecture, "config": asdict(self.cfg), "metadata": self.sae.metadata,
        })
        distributed.barrier()
        return final

    def _resliced(self, key: str, t: torch.Tensor, how: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """A checkpoint tensor gathered whole or cut to this shard (`how`), if it is indexed by feature."""
        if key in ("tokens_since_fired", "firing_counts"):
            return how(t, 0)
        name = key.split(".")[1] if key.startswith(("sae.", "adam.")) else None
        axis = self.sae.feature_axes.get(name) if name else None
        return t if axis is None else how(t, axis)

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint: weights, Adam's moments, torch's RNG, the training state.
        A feature shard takes its slice of the whole checkpoint (any layout wrote it)."""
        shards = self.sae.shards
        if shards is not None:
            size = ckpt.tensors["sae.W_dec"].shape[0] if "sae.W_dec" in ckpt.tensors else -1
            if size != shards.total:
                raise UserError(f"checkpoint {ckpt.path} does not match this run's dictionary ({size} features, "
                                f"not {shards.total}); use the same --dict-size, or another --out")
            ckpt.tensors = {k: self._resliced(k, v, shards.own) for k, v in ckpt.tensors.items()}
            ckpt.state.tokens_since_fired_F = ckpt.tensors["tokens_since_fired"]
            ckpt.state.firing_counts_F = ckpt.tensors["firing_counts"]
        dev = self.sae.W_enc.device
        params = dict(self.sae.named_parameters())
        sd = {k[4:]: v for k, v in ckpt.tensors.items() if k.startswith("sae.")}
        own = self.sae.state_dict()
        for k, v in sd.items():
            if k not in own or v.shape != own[k].shape:
                raise UserError(f"checkpoint {ckpt.path} does not match this run's dictionary ({k} {list(v.shape)}); "
                                "use the same --dict-size / model, or another --out")
        if set(sd) != set(self.sae.state_dict()):
            raise UserError(f"checkpoint {ckpt.path} does not hold every weight of this run's dictionary "
                            f"({', '.join(sorted(set(self.sae.state_dict()) - set(sd)))} missing); delete it to start over")
        for key in ("tokens_since_fired", "firing_counts"):
            t = ckpt.tensors[key]
            if tuple(t.shape) != (self.sae.d_sae,) or t.dtype != torch.long:
                raise UserError(f"checkpoint {ckpt.path}: {key} is not an int64 vector of {self.sae.d_sae}; "
                                "delete it to start over")
        for name in ckpt.adam_steps:
            for key in (f"adam.{name}.exp_avg", f"adam.{name}.exp_avg_sq"):
                if key not in ckpt.tensors or name not in params or ckpt.tensors[key].shape != params[name].shape:
                    raise UserError(f"checkpoint {ckpt.path}: {key} is missing or misshapen; delete it to start over")
        if ckpt.tensors["rng.cpu"].dtype != torch.uint8:
            raise UserError(f"checkpoint {ckpt.path}: rng.cpu is not a byte tensor; delete it to start over")
        self.sae.load_state_dict(sd)
        opt_state = {}
        for i, (name, p) in enumerate(self.sae.named_parameters()):
            if name in ckpt.adam_steps:
                opt_state[i] = {"step": torch.tensor(ckpt.adam_steps[name], dtype=torch.float32),
                                "exp_avg": ckpt.tensors[f"adam.{name}.exp_avg"].to(dev),
                                "exp_avg_sq": ckpt.tensors[f"adam.{name}.exp_avg_sq"].to(dev)}
        sd_opt = self.opt.state_dict()
        sd_opt["state"] = opt_state
        self.opt.load_state_dict(sd_opt)
        try:
            torch.set_rng_state(ckpt.tensors["rng.cpu"])
        except RuntimeError:
            raise UserError(f"checkpoint {ckpt.path}: rng.cpu is not a torch RNG state; delete it to start over") from None
        if "rng.cuda" in ckpt.tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt.tensors["rng.cuda"])
        if self.resampler is not None:
            self.resampler.load_state_tensors({k[9:]: v for k, v in ckpt.tensors.items() if k.startswith("resample.")},
                                              self.sae, str(ckpt.path))
        st = ckpt.state
        st.tokens_since_fired_F = st.tokens_since_fired_F.to(dev)
        st.firing_counts_F = st.firing_counts_F.to(dev)
        self.state = st
        self.sae.metadata.update(ckpt.metadata)
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metrics.jsonl lines logged after the checkpoint (the resumed run logs them again),
        naming the penalty `sparsity` in lines an older release wrote as `l1`."""
        file = self.out / "metrics.jsonl" if self.out and distributed.is_main() else None
        if not file or not file.exists():
            return
        keep = []
        for ln in file.read_text().splitlines():
            row = json.loads(ln) if ln.strip() else None
            if row is None or row.get("step", 0) > self.step:
                continue
            if "l1" in row and "sparsity" not in row:
                row = {("sparsity" if k == "l1" else k): v for k, v in row.items()}
            keep.append(json.dumps(row))
        atomic_write_bytes(file, ("\n".join(keep) + "\n" if keep else "").encode())
