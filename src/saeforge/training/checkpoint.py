"""Checkpoints: a run's resumable state on disk, its schema, and its reading and writing.

`<out>/checkpoint/` holds state.safetensors (the weights `sae.*`, Adam's moments `adam.*`, the
dead-feature counters, torch's RNG `rng.*`, the data source's `data.*` and the resampler's
`resample.*` tensors) and state.json (a `TrainState` without its tensors, Adam's step counts,
the run config, the dictionary's metadata; docs/design.md). It is written into a fresh directory
and swapped in by rename, so a reader finds the previous checkpoint or the new one, never a mix.
Everything read is checked against the schema below before use (a corrupt file is one line).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saeforge.errors import UserError
from saeforge.runtime import CHECKPOINT, atomic_save_tensors, atomic_write_json, check_json, read_json, read_tensors

STATE_FORMAT = 2  # state.json's layout; 1 (saeforge 0.1) kept the non-tensor state under "extra"


@dataclass
class TrainState:
    """A run's progress: what a checkpoint restores besides the weights and Adam's moments."""

    step: int = 0
    tokens: int = 0  # training inputs seen, all ranks together
    input_scale: float = 1.0  # s with E‖s·x‖² = d_in; the trainer sees s·x
    output_scale: float | None = None  # a transcoder's t with E‖t·y‖² = d_out for its targets y
    hook_scales: dict[str, float] = field(default_factory=dict)  # every hook of the pass: its scale
    data_position: dict[str, Any] = field(default_factory=dict)  # the source's resumable position
    train_seconds: float = 0.0
    firing_tokens: int = 0  # inputs behind firing_counts_F (logging steps only)
    resample_events: list[dict[str, Any]] = field(default_factory=list)
    mmcs_trace: list[float] = field(default_factory=list)  # runs with known features: MMCS after each step
    tokens_since_fired_F: torch.Tensor | None = None
    firing_counts_F: torch.Tensor | None = None
    data_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the source's resumable tensors

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if not isinstance(v, torch.Tensor) and v is not None and k != "data_tensors"}


IDENTITY = ("seed", "cache", "text_column", "d_model", "n_features", "n_active", "decay", "correlated")


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    tensors: dict[str, torch.Tensor]  # sae.*, adam.*, rng.*
    adam_steps: dict[str, float]
    metadata: dict[str, Any]
    config: dict[str, Any]
    architecture: str

    def identity(self) -> dict[str, Any]:
        """What makes the checkpoint's run that run: its data, model, hook, architecture, seed."""
        ident = {k: self.config[k] for k in IDENTITY if k in self.config} | {"architecture": self.architecture}
        for key, meta in (("model", "model_name"), ("hook", "hook_name"), ("dataset", "dataset_path")):
            if meta in self.metadata:
                ident[key] = self.metadata[meta]
        return ident


STATE_FIELDS = {"format": (int, False), "step": (int, True), "tokens": (int, True), "input_scale": (float, False),
                "output_scale": (float, False), "hook_scales": (dict, False),
                "data_position": (dict, False), "train_seconds": (float, False), "firing_tokens": (int, False),
                "resample_events": (list, False), "mmcs_trace": (list, False), "adam_steps": (dict, False),
                "metadata": (dict, False), "config": (dict, False), "extra": (dict, False),
                "architecture": (str, False)}
EVENT_FIELDS = {"step": (int, True), "dead": (int, True), "seconds": (float, True), "resampled": (int, False)}


PREVIOUS = f".{CHECKPOINT}.prev"  # the checkpoint before the current one (kept by passes of several dictionaries)


def read_checkpoint(out: Path, step: int | None = None) -> Checkpoint | None:
    """The checkpoint in `out` (or the previous one, if a swap was interrupted); with `step`, the one
    at that step, current or kept (`keep_previous`); None if there is none."""
    cands = [c for c in (out / CHECKPOINT, out / f".{CHECKPOINT}.old", out / PREVIOUS)
             if (c / "state.json").is_file() and (c / "state.safetensors").is_file()]
    for cand in cands:
        if step is None:
            return _read(cand)
        try:
            at = json.loads((cand / "state.json").read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            continue
        if at == step:
            return _read(cand)
    return None


def _read(cand: Path) -> Checkpoint:
    fix = f"the checkpoint is corrupt; delete {cand} to start over"
    where = str(cand / "state.json")
    raw = check_json(read_json(cand / "state.json", fix), where, STATE_FIELDS)
    if raw.get("format", 1) == 1:  # saeforge 0.1: the callers' state under "extra"
        extra = raw.get("extra") or {}
        raw |= {"input_scale": extra.get("input_scale", 1.0), "data_position": extra.get("data", {}),
                "resample_events": extra.get("resample_events", []), "mmcs_trace": extra.get("mmcs_trace", [])}
        check_json(raw, f"{where} (extra)", STATE_FIELDS)
    for event in raw.get("resample_events") or []:
        check_json(event, f"{where} (resample_events)", EVENT_FIELDS)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw.get("mmcs_trace") or []):
        raise UserError(f"{where}: the field 'mmcs_trace' must be a list of numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (raw.get("adam_steps") or {}).values()):
        raise UserError(f"{where}: the field 'adam_steps' must map parameter names to numbers")
    check_json(raw.get("data_position") or {}, f"{where} (data_position)",
               {k: (int, False) for k in ("contexts_read", "epoch", "cursor", "offset", "world", "rows_read")})
    scales = [raw.get(k) for k in ("input_scale", "output_scale") if raw.get(k) is not None]
    if raw["step"] < 0 or raw["tokens"] < 0 or not all(s > 0 and math.isfinite(s) for s in scales):
        raise UserError(f"{where}: step and tokens must be >= 0 and input_scale (output_scale) > 0; {fix}")
    tensors = read_tensors(cand / "state.safetensors", "the checkpoint tensors")
    missing = sorted({"tokens_since_fired", "firing_counts", "rng.cpu"} - set(tensors))
    if missing:
        raise UserError(f"{cand / 'state.safetensors'} lacks {', '.join(missing)}; {fix}")
    names = {f for f in TrainState.__dataclass_fields__ if not f.endswith("_F") and f != "data_tensors"}
    state = TrainState(**{k: raw[k] for k in names if raw.get(k) is not None},
                       tokens_since_fired_F=tensors["tokens_since_fired"], firing_counts_F=tensors["firing_counts"],
                       data_tensors={k[5:]: v for k, v in tensors.items() if k.startswith("data.")})
    return Checkpoint(cand, state, tensors, raw.get("adam_steps") or {}, raw.get("metadata") or {},
                      raw.get("config") or {}, raw.get("architecture") or "standard")


def write_checkpoint(out: Path, tensors: dict[str, torch.Tensor], state_json: dict[str, Any],
                     keep_previous: bool = False) -> Path:
    """Write <out>/checkpoint atomically: into a fresh directory, then swapped in by rename. With
    `keep_previous` the one it replaces stays as .checkpoint.prev: several dictionaries write their
    checkpoints one after the other, and a kill between two leaves each able to go back to the
    step they all reached."""
    final, tmp = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp"
    old = out / (PREVIOUS if keep_previous else f".{CHECKPOINT}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_tensors(tmp / "state.safetensors", tensors)
    atomic_write_json(tmp / "state.json", {"format": STATE_FORMAT, **state_json})
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if not keep_previous:
        shutil.rmtree(old, ignore_errors=True)
    return final
