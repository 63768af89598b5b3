"""`saeforge.train`: a dictionary from Python, with the CLI's defaults, checks and schedule.

    sae, summary = saeforge.train(acts_ND, k=32, steps=2000)                 # a tensor [..., d_in]
    sae, summary = saeforge.train(batches, architecture="standard", tokens=10**6)  # an iterable of them
    sae, summary = saeforge.train("embedded", dataset="my.txt", hook="blocks.2.hook_resid_post")  # a model

Keywords are `saeforge train`'s flags with underscores (`defaults="toy"` starts from `saeforge
toy`'s instead). As on the command line, inputs are scaled to E‖s·x‖² = d_in (s from the first
buffer fill), `auto` values follow the budget, init and resampling draw from the source, and
the dictionary returned acts on raw activations (s folded in). Bad input raises UserError
naming the keyword. Without `out` nothing is written to disk that outlives the call.
"""

from __future__ import annotations

import difflib
import re
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from saeforge.config import ActivationTrainConfig, ToyConfig
from saeforge.dictionary.architectures import CONFIGS
from saeforge.dictionary.io import load
from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError

PRESETS = {"train": ActivationTrainConfig, "toy": ToyConfig}
ITERABLE_BATCHES = 16  # the buffer over an iterable source: this many batches, shuffled
MODEL_KEYS = ("model", "dataset", "hook", "text_column", "contexts_per_pass", "cache", "eval_tokens")


class Trained(NamedTuple):
    sae: SAE  # on raw activations
    summary: dict[str, Any]  # what summary.json holds


class ActivationSource:
    """The buffer's source for activations the caller holds. A tensor is read row by row in a
    seeded order, a new order each epoch; an iterable of tensors is read once, in its order
    (a resumed run reads it again from its start and skips the rows already trained on)."""

    def __init__(self, acts: torch.Tensor | Iterable[torch.Tensor], seed: int = 0):
        self.seed, self.rows_read, self.read_ahead = seed, 0, 0
        if isinstance(acts, torch.Tensor):
            self.table_ND, self.it, self.pending = _rows(acts), None, None
            self.d_in = self.table_ND.shape[1]
        else:
            try:
                self.it = iter(acts)
                first = next(self.it)
            except TypeError:
                raise UserError(f"source: expected a tensor [N, d_in], an iterable of such tensors, a model name or "
                                f"a HookedTransformer; got {type(acts).__name__}") from None
            except StopIteration:
                raise UserError("source: the iterable gave no activations") from None
            self.table_ND, self.pending = None, _rows(first)
            self.d_in = self.pending.shape[1]

    def seek(self, rows: int) -> "ActivationSource":
        """Continue after `rows` rows (a resumed run)."""
        if self.table_ND is not None:
            self.rows_read = rows
        else:
            while self.rows_read < rows:
                self._take(min(rows - self.rows_read, 1 << 20))
        return self

    def buffer_rows(self, rows: int, batch: int) -> int:
        """A tensor source needs no buffer larger than itself; an iterable one of ITERABLE_BATCHES
        batches (it reads ahead by half the buffer); either needs 2 batches at least."""
        if self.table_ND is not None:
            rows = min(rows, len(self.table_ND))
            if rows < 2 * batch:
                raise UserError(f"source: {len(self.table_ND)} activations are fewer than 2 batches of "
                                f"{batch}; lower --batch-size")
            return rows
        self.read_ahead = min(rows, ITERABLE_BATCHES * batch) // 2
        return min(rows, ITERABLE_BATCHES * batch)

    def state(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read}

    def fill(self, storage: torch.Tensor, idx: torch.Tensor, origin_N: torch.Tensor) -> None:
        first = self.rows_read
        rows = self._take(len(idx))
        storage.index_copy_(0, idx, rows.to(storage.device, storage.dtype))
        origin_N.index_copy_(0, idx, torch.arange(first, first + len(idx), device=origin_N.device))

    def _take(self, n: int) -> torch.Tensor:
        if self.table_ND is not None:
            N, parts, pos = len(self.table_ND), [], self.rows_read
            while sum(len(p) for p in parts) < n:
                epoch, at = divmod(pos, N)
                order = torch.randperm(N, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                take = order[at: at + n - sum(len(p) for p in parts)]
                parts.append(self.table_ND[take.to(self.table_ND.device)])
                pos += len(take)
            self.rows_read = pos
            return torch.cat(parts)
        parts, have = [], 0
        while have < n:
            if self.pending is None or not len(self.pending):
                try:
                    self.pending = _rows(next(self.it))
                except StopIteration:
                    raise UserError(f"source: the activations ran out after {self.rows_read + have} rows; training "
                                    f"reads steps × batch size rows and {self.read_ahead} more (half the buffer): "
                                    "lower --steps / --tokens, or give a longer iterable") from None
                if self.pending.shape[1] != self.d_in:
                    raise UserError(f"source: a batch of width {self.pending.shape[1]} after batches of {self.d_in}")
            part, self.pending = self.pending[: n - have], self.pending[n - have:]
            parts.append(part)
            have += len(part)
        self.rows_read += n
        return torch.cat(parts)


def _rows(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim < 2 or not t.is_floating_point() or t.shape[-1] < 1:
        what = f"a tensor of shape {tuple(t.shape)} and dtype {t.dtype}" if isinstance(t, torch.Tensor) \
            else type(t).__name__
        raise UserError(f"source: activations must be floating-point tensors [..., d_in]; got {what}")
    rows = t.detach().reshape(-1, t.shape[-1])
    bad = ~torch.isfinite(rows).all(-1)
    if bad.any():
        i = int(torch.nonzero(bad)[0, 0])
        kind = "NaN" if torch.isnan(rows[i]).any() else "Inf"
        raise UserError(f"source: the activations hold non-finite values ({kind} in row {i} of a batch, "
                        f"{int(bad.sum())} rows in all); drop or fix those rows before training")
    return rows


def _keywords(message: str) -> str:
    """The CLI's flag names in a message, as this function's keywords: --batch-size → batch_size=."""
    names = set(ActivationTrainConfig.options())
    fix = lambda m: f"{m[1].replace('-', '_')}=" if m[1].replace("-", "_") in names else m[0]  # noqa: E731
    return re.sub(r"--([a-z0-9][a-z0-9-]*)", fix, message)


def train(source: Any = "embedded", *, defaults: str = "train", **kwargs: Any) -> Trained:
    """Train a dictionary on `source`: a tensor [..., d_in] or an iterable of them (activations),
    or a model (a name or directory as `--model` takes, or a HookedTransformer) read on
    `dataset` at `hook`. Returns (the dictionary on raw activations, the run's summary)."""
    from saeforge.runtime import keep_freed_memory, release_run_dirs

    keep_freed_memory()
    try:
        return _train(source, defaults, kwargs)
    except UserError as e:
        raise UserError(_keywords(str(e))) from None
    finally:
        release_run_dirs()


def _train(source: Any, defaults: str, kwargs: dict[str, Any]) -> Trained:
    from saeforge.pipeline.train import run_train

    if defaults not in PRESETS:
        raise UserError(f"defaults must be one of {', '.join(PRESETS)}, got {defaults!r}")
    names = set(ActivationTrainConfig.options())
    unknown = sorted(set(kwargs) - names)
    if unknown:
        near = [m for u in unknown for m in difflib.get_close_matches(u, names, 1)]
        raise UserError(f"saeforge.train got unknown keyword(s) {', '.join(unknown)}"
                        + (f" (did you mean {', '.join(near)}?)" if near else "")
                        + "; the keywords are the fields of saeforge.ActivationTrainConfig")
    preset = PRESETS[defaults]
    values = {name: o.default for name, o in preset.options().items() if name in names and not o.owners}
    model = activations = None
    if isinstance(source, str):
        values["model"] = source
    elif hasattr(source, "run_with_hooks") and hasattr(source, "cfg"):  # a HookedTransformer
        model, values["model"] = source, getattr(source.cfg, "model_name", None) or "custom"
    else:
        given = [k for k in MODEL_KEYS if k in kwargs]
        if given:
            raise UserError(f"{', '.join(given)}: only for a model source; the source here is activations")
        activations = ActivationSource(source, seed=kwargs.get("seed", values["seed"]))
    tmp = tempfile.mkdtemp(prefix="saeforge-") if kwargs.get("out") in (None, "") else None  # no out: a scratch dir
    values |= kwargs
    arch = values.get("architecture")  # the preset's defaults for the architecture's own settings
    arch = CONFIGS.get(arch) if isinstance(arch, str) else None
    values = {k: v for k, v in preset.SAE_DEFAULTS.items() if arch and k in arch.__dataclass_fields__} | values
    values["out"] = tmp or values["out"]
    try:
        cfg = ActivationTrainConfig.from_values(values)
        cfg.validate()
        summary = run_train(cfg, model=model, activations=activations)
        sae = load(cfg.out, device=torch.device(summary["device"]))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return Trained(sae, summary)


def interpretability(dictionaries: Any, *, model: Any = None, hook: str | None = None, dataset: str | None = None,
                     tokens: int = 32768, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The interpretability suite (`saeforge eval --interp`; evaluation/interp.py) on one dictionary
    or a list of them (directories or SAE objects of one model, hook and shape; several: their
    stability too). `model`: a name, a directory or a HookedTransformer (default: the one the first
    dictionary records); `dataset`: Python source (default: the recorded one, else the embedded
    corpus). Returns every figure, per task and per latent."""
    from saeforge.evaluation import interp
    from saeforge.evaluation.analysis import load_others, load_with_model
    from saeforge.sources.language_model import hook_width, load_model, resolve_hook

    items = list(dictionaries) if isinstance(dictionaries, (list, tuple)) else [dictionaries]
    if not items:
        raise UserError("dictionaries= is empty: give a dictionary directory or SAE, or a list of them")
    for name, value, typ in (("tokens", tokens, int), ("seed", seed, int)):
        if not isinstance(value, typ) or isinstance(value, bool) or value < (256 if name == "tokens" else 0):
            raise UserError(f"{name}= must be an int ≥ {256 if name == 'tokens' else 0}, got {value!r}")
    for name, value in (("hook", hook), ("dataset", dataset)):
        if value is not None and not isinstance(value, str):
            raise UserError(f"{name}= must be a str, got {value!r} ({type(value).__name__})")
    first = items[0]
    if isinstance(first, SAE):
        hook = hook or first.metadata.get("hook_name")
        spec = model if model is not None else first.metadata.get("model_name")
        if spec is None or hook is None:
            raise UserError("an SAE object that does not record its model and hook needs model= and hook=")
        model = load_model(spec) if isinstance(spec, str) else spec
        resolve_hook(model, hook)
        if hook_width(model, hook) != first.d_in:
            raise UserError(f"the dictionary reads {first.d_in}-wide activations, but {hook} gives "
                            f"{hook_width(model, hook)}")
        saes = [first]
    elif isinstance(first, str) or hasattr(first, "__fspath__"):
        sae, model, hook = load_with_model(first, model, hook)
        saes = [sae]
    else:
        raise UserError(f"dictionaries= must hold directories or SAE objects, got {type(first).__name__}")
    for other in items[1:]:
        if isinstance(other, SAE):
            if (other.d_in, other.d_sae) != (saes[0].d_in, saes[0].d_sae):
                raise UserError("dictionaries= must be of one shape")
            saes.append(other)
        elif isinstance(other, str) or hasattr(other, "__fspath__"):
            saes += load_others(saes[0], [str(other)], hook)
        else:
            raise UserError(f"dictionaries= must hold directories or SAE objects, got {type(other).__name__}")
    dataset = dataset or saes[0].metadata.get("dataset_path") or "embedded"
    device = next(model.parameters()).device
    return interp.run_suite(model, [s.to(device) for s in saes], hook, dataset, tokens, seed=seed, progress=progress)
