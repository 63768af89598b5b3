"""Dataclass configs. They are the CLI: every field is a flag, its docstring-like `help` the help.

Precedence: field default < `--config FILE` (TOML or JSON, same keys, dashes or underscores)
< explicit flags. Validation happens in `validate()` and raises `UserError` with the fix.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .errors import UserError

INITS = ("orthogonal", "xavier", "data", "svd", "kmeans", "mod", "average", "centroid", "outlier")  # init.METHODS
RESAMPLERS = ("none", "anthropic", "clustered")  # resample.METHODS


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """What every training command shares (DESIGN.md contract 2)."""

    out: str = opt("", "output directory: metrics.jsonl, summary.json, the dictionary, checkpoints")
    seed: int = opt(0, "seed for initialization and data order; same seed, same dictionary")
    steps: int = opt(0, "training steps (0: derive from --tokens)")
    tokens: int = opt(0, "training tokens, rounded up to whole batches (used when --steps is 0)")
    dict_size: int = opt(0, "number of dictionary features (0: the command's default)")
    init: str = opt("orthogonal", f"dictionary initialization, one of {', '.join(INITS)}")
    rare_ratio: float = opt(0.0, "fraction of atoms taken from rare-feature vectors (informed inits)")
    encoder_scale: float = opt(1.0, "initial W_enc = encoder_scale · W_decᵀ (smaller: fewer features fire at first)")
    resample: str = opt("none", f"dead-feature resampling, one of {', '.join(RESAMPLERS)}")
    resample_every: int = opt(500, "resample dead features every N steps (none in the budget's last N steps)")
    resample_at: str = opt("", "resample at these steps instead, e.g. 1000,2000,4000")
    resample_sample: int = opt(16384, "inputs scored by reconstruction error at each resampling")
    resample_worst: int = opt(2048, "clustered: the worst-reconstructed inputs kept and clustered (residual: "
                              "the N with the most unexplained error among the 8N worst)")
    resample_clusters: int = opt(32, "clustered: MiniBatchKMeans clusters over the worst inputs")
    resample_direction: str = opt("centroid", "clustered: new direction = centroid (x − its cluster centroid) or "
                                  "residual (the summed residual x − x̂ of one of the most coherent clusters of residual "
                                  "directions, over the worst inputs with the most error no firing feature explains)")
    resample_encoder: str = opt("anthropic", "new encoder columns: anthropic (0.2 × the alive features' mean norm, bias 0) "
                                "or alive (the alive features' median norm and median bias)")
    resample_duplicates: float = opt(0.0, "also renew the rarer of two features whose decoder rows have cosine >= this (0: off)")
    l1: float = opt(5.0, "sparsity coefficient λ in MSE + λ·Σ f_i‖W_dec,i‖")
    l1_warmup_steps: int = opt(0, "ramp λ linearly from 0 over this many steps (keeps features alive early)")
    lr: float = opt(1e-3, "Adam learning rate")
    lr_warmup_steps: int = opt(0, "ramp the learning rate linearly from 0 over this many steps")
    lr_decay_steps: int = opt(0, "decay the learning rate linearly to 0 over the last N steps of the budget")
    beta1: float = opt(0.9, "Adam β1")
    beta2: float = opt(0.999, "Adam β2")
    adam_eps: float = opt(1e-8, "Adam ε (larger: parameters with tiny, rare gradients move less)")
    batch_size: int = opt(4096, "activations per training step")
    unit_norm_decoder: bool = opt(False, "keep decoder rows at unit norm (tangent gradient + renormalize)")
    log_every: int = opt(100, "write a metrics.jsonl line every N steps (the only host syncs)")
    checkpoint_every: int = opt(0, "save a resumable checkpoint every N steps (0: only at the end)")
    dead_window: int = opt(0, "a feature is dead after this many tokens without firing (0: 10 batches)")
    resume: bool = opt(False, "continue from the checkpoint in --out if there is one")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:N")
    progress: bool = opt(True, "show a progress bar on stderr")

    def validate(self) -> None:
        if not self.out:
            raise UserError("--out is required: the directory the run writes into")
        for name in ("steps", "tokens", "dict_size", "checkpoint_every", "dead_window", "l1_warmup_steps",
                     "lr_warmup_steps", "lr_decay_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.init not in INITS:
            raise UserError(f"--init {self.init!r} is unknown; choose one of {', '.join(INITS)}")
        if self.resample not in RESAMPLERS:
            raise UserError(f"--resample {self.resample!r} is unknown; choose one of {', '.join(RESAMPLERS)}")
        if self.resample_direction not in ("residual", "centroid"):
            raise UserError(f"--resample-direction must be residual or centroid, got {self.resample_direction!r}")
        if self.resample_encoder not in ("anthropic", "alive"):
            raise UserError(f"--resample-encoder must be anthropic or alive, got {self.resample_encoder!r}")
        if not 0.0 <= self.resample_duplicates <= 1.0:
            raise UserError(f"--resample-duplicates must be a cosine in [0, 1] (0: off), got {self.resample_duplicates}")
        for name in ("resample_every", "resample_sample", "resample_worst", "resample_clusters"):
            if getattr(self, name) < (0 if name == "resample_every" else 1):
                raise UserError(f"--{name.replace('_', '-')} must be >= {0 if name == 'resample_every' else 1}, "
                                f"got {getattr(self, name)}")
        if not 0.0 <= self.rare_ratio <= 1.0:
            raise UserError(f"--rare-ratio must be in [0, 1], got {self.rare_ratio}")
        if not (math.isfinite(self.encoder_scale) and self.encoder_scale > 0):
            raise UserError(f"--encoder-scale must be a finite number > 0, got {self.encoder_scale}")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise UserError(f"--l1 must be a finite number >= 0, got {self.l1}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (self.adam_eps > 0 and math.isfinite(self.adam_eps)):
            raise UserError(f"--adam-eps must be > 0, got {self.adam_eps}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise UserError(f"--device {self.device!r} is unknown; use auto, cpu, cuda or cuda:N")

    def total_steps(self) -> int:
        if self.steps:
            return self.steps
        if self.tokens:
            return -(-self.tokens // self.batch_size)
        raise UserError("give --steps N or --tokens N")


@dataclass
class ToyConfig(TrainConfig):
    """`saeforge toy`: train on fresh toy data with known features until MMCS >= target."""

    d_model: int = opt(128, "dimension the ground-truth features are superposed into")
    n_features: int = opt(512, "number of ground-truth features")
    n_active: float = opt(5.0, "expected number of active features per sample")
    decay: float = opt(0.99, "feature i fires with probability ∝ decay**i")
    correlated: bool = opt(True, "modulate firing by a correlated Gaussian (the seed's setup)")
    target_mmcs: float = opt(0.99, "stop once MMCS reaches this (0: run all --steps)")
    check_every: int = opt(25, "read the on-device MMCS trace every N steps to decide to stop")

    def validate(self) -> None:
        super().validate()
        if self.d_model < 1 or self.n_features < 1:
            raise UserError("--d-model and --n-features must be >= 1")
        if not 0 < self.n_active <= self.n_features:
            raise UserError(f"--n-active must be in (0, n_features], got {self.n_active}")
        if not 0 < self.decay <= 1:
            raise UserError(f"--decay must be in (0, 1], got {self.decay}")
        if not 0 <= self.target_mmcs <= 1:
            raise UserError(f"--target-mmcs must be in [0, 1], got {self.target_mmcs}")
        if self.check_every < 1:
            raise UserError(f"--check-every must be >= 1, got {self.check_every}")


@dataclass
class ModelDataConfig:
    """Where activations come from: a model, a hook point and a dataset."""

    model: str = opt("embedded", "model: 'embedded', a local model directory, or a TransformerLens name (e.g. gelu-4l)")
    hook: str = opt("", "hook point (default: blocks.{n_layers//2}.hook_resid_post)")
    dataset: str = opt("embedded", "'embedded' (Python's stdlib sources), local .txt/.jsonl/.parquet file(s) or dir, or a hub name")
    text_column: str = opt("text", "dataset column holding text (a 'tokens'/'input_ids' column is used as is)")
    contexts_per_pass: int = opt(32, "contexts per model forward pass")

    def _validate_source(self) -> None:
        if self.contexts_per_pass < 1:
            raise UserError(f"--contexts-per-pass must be >= 1, got {self.contexts_per_pass}")


@dataclass
class ActivationTrainConfig(TrainConfig, ModelDataConfig):
    """`saeforge train`: train on a model's activations (live buffer, or --cache)."""

    cache: str = opt("", "train from this activation cache (saeforge harvest) instead of running the model")
    buffer_mb: float = opt(128.0, "memory bound of the activation buffer in MiB (on the model's device)")
    buffer_dtype: str = opt("float32", "buffer storage dtype: float32 or bfloat16")
    eval_tokens: int = opt(65536, "held-out tokens for the final evals (CE loss recovered); 0 skips them")

    def validate(self) -> None:
        super().validate()
        self._validate_source()
        if self.buffer_dtype not in ("float32", "bfloat16"):
            raise UserError(f"--buffer-dtype must be float32 or bfloat16, got {self.buffer_dtype!r}")
        if not self.buffer_mb > 0:
            raise UserError(f"--buffer-mb must be > 0, got {self.buffer_mb}")
        if self.eval_tokens < 0:
            raise UserError(f"--eval-tokens must be >= 0, got {self.eval_tokens}")


@dataclass
class HarvestConfig(ModelDataConfig):
    """`saeforge harvest`: write a model's activations to disk once, for many training runs."""

    out: str = opt("", "cache directory (manifest.json + shard_*.safetensors); rerun to resume")
    tokens: int = opt(2_000_000, "activation tokens to harvest (rounded up to whole contexts)")
    split: str = opt("train", "dataset split: train or test")
    seed: int = opt(0, "seed of the document shuffle")
    dtype: str = opt("float32", "stored dtype: float32, bfloat16 or float16")
    contexts_per_shard: int = opt(256, "contexts per shard file")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:N")
    progress: bool = opt(True, "show a progress bar on stderr")

    def validate(self) -> None:
        self._validate_source()
        if not self.out:
            raise UserError("--out is required: the cache directory")
        if self.tokens < 1 or self.contexts_per_shard < 1:
            raise UserError("--tokens and --contexts-per-shard must be >= 1")
        if self.split not in ("train", "test"):
            raise UserError(f"--split must be train or test, got {self.split!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


# Defaults of `saeforge train` on real activations (inputs scaled to E‖x‖² = d_in), tuned so
# the main job (embedded model, 1024 features, 4M tokens) finishes in minutes on 2 CPU cores
# and lands at L0 ≈ 29, explained variance ≈ 0.91, CE-loss recovered ≈ 0.99 (README). The seed's
# λ = 5 stays the TrainConfig default; at this budget it collapses the codes (EV ≈ 0.2 after
# 2M tokens), and many small steps (batch 512, lr 1e-2) beat fewer large ones.
@dataclass
class SweepConfig:
    """`saeforge sweep`: dictionary sizes × training steps (× λ) from one activation cache."""

    cache: str = opt("", "activation cache to train every run from (saeforge harvest)")
    eval_cache: str = opt("", "held-out activation cache (harvest --split test); default: the cache's last shard, "
                              "kept out of training")
    out: str = opt("", "sweep directory: runs.jsonl (one row per finished run), fits.json, plots")
    sizes: str = opt("256,512,1024,2048,4096", "dictionary sizes, comma-separated")
    steps: str = opt("250,500,1000,2000,4000", "training step counts, comma-separated")
    l1s: str = opt("5", "L1 coefficients λ, comma-separated (several: the L0 analysis picks the best per cell; "
                            "with --suggest, the one λ whose fits to use)")
    alpha: float = opt(3.0, "α of the L0-based loss MSE + α·L0 (trainer units, E‖x‖² = d_in)")
    eval_rows: int = opt(65536, "held-out activations every run is measured on")
    batch_size: int = opt(512, "activations per training step")
    lr: float = opt(1e-2, "Adam learning rate (linear decay to 0 over the last 20% of each run)")
    init: str = opt("orthogonal", f"dictionary initialization, one of {', '.join(INITS)}")
    seed: int = opt(0, "seed of every run (init and data order)")
    suggest: float = opt(0.0, "print the predicted compute-optimal size and steps at this FLOP budget and exit")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:N")
    progress: bool = opt(True, "show a progress bar over the grid on stderr")

    def validate(self) -> None:
        if not self.out:
            raise UserError("--out is required: the sweep directory")
        if not self.suggest and not self.cache:
            raise UserError("--cache is required: the activation cache the runs train on (saeforge harvest)")
        if self.suggest < 0 or not math.isfinite(self.suggest):
            raise UserError(f"--suggest must be a FLOP budget > 0, got {self.suggest}")
        if self.init not in INITS:
            raise UserError(f"--init {self.init!r} is unknown; choose one of {', '.join(INITS)}")
        for name in ("batch_size", "eval_rows"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise UserError("--lr must be > 0 and --alpha >= 0")


TRAIN_DEFAULTS = dict(tokens=4_000_000, batch_size=512, lr=1e-2, l1=0.55, lr_warmup_steps=200, l1_warmup_steps=500,
                      lr_decay_steps=400, log_every=100, checkpoint_every=1000)


# Toy defaults differ from real-activation defaults: toy inputs have E‖x‖² ≈ 1.7, not d_in,
# and ground-truth recovery wants the unit-norm decoder. λ 0.3: started at the true features,
# training at λ 0.1 drifts away from them (128/1024: MMCS 1 -> 0.977, L0 7.7 for 5 true) while
# at 0.3 it stays (0.995, L0 4.7); scripts/toy_truth_drift.py. lr 1e-2 was faster early than
# 3e-3 but killed more atoms; 3e-2 killed 20%. See docs/toy.md.
# The toy path's defaults (docs/toy.md): Adam β2 0.95 instead of 0.999, and resampling that
# renews dead features and duplicates toward clusters of what the dictionary misses, with
# encoders that fire like their peers, until the lr decay begins; with them orthogonal init
# reaches MMCS 0.99 on 128/256, 128/512 and (with a 2M-sample resampling pool) 128/1024.
TOY_DEFAULTS = dict(init="mod", l1=0.3, lr=1e-2, beta2=0.95, batch_size=2048, unit_norm_decoder=True, steps=5000,
                    lr_decay_steps=2500, resample="clustered", resample_every=250, resample_direction="residual",
                    resample_encoder="alive", resample_duplicates=0.8, resample_sample=131072,
                    log_every=100, check_every=10)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, overrides: dict[str, Any] | None = None) -> None:
    """Add one flag per dataclass field; defaults are suppressed so we know what was given."""
    hints = get_type_hints(cls)
    defaults = {f.name: f.default for f in fields(cls)} | (overrides or {})
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file with the same keys; flags override it")
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_ = f"{f.metadata.get('help', '')} (default: {defaults[f.name]})".replace("%", "%%")  # argparse formats help
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            parser.add_argument(flag, type=_typed(typ, flag), default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_)


def _typed(typ: type, flag: str):
    def convert(text: str):
        try:
            if typ is int:
                value = float(text)  # accept 1e5 for counts
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {typ.__name__}, got {text!r}") from None

    return convert


def read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table/object of keys")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type, args: argparse.Namespace, overrides: dict[str, Any] | None = None):
    """defaults (+ command overrides) < config file < flags, then validate."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = dict(overrides or {})
    if getattr(args, "config", None):
        file_values = read_config_file(args.config)
        unknown = sorted(set(file_values) - set(hints))
        if unknown:
            raise UserError(f"config file {args.config}: unknown key(s) {', '.join(unknown)}")
        for k, v in file_values.items():
            typ = hints[k]
            if typ is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise UserError(f"config file {args.config}: {k} must be {typ.__name__}, got {v!r}")
            values[k] = v
    given = set(values) - set(overrides or {})
    for f in fields(cls):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
            given.add(f.name)
    cfg = cls(**values)
    cfg.given = frozenset(given)  # what the user chose (file or flags), for defaults that adapt
    cfg.validate()
    return cfg


