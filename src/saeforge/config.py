"""Dataclass configs. They are the CLI: every field is a flag, its `help` the help, its default
the default `--help` shows. Each default is declared once, in the class of the command that uses
it; a command's class may give an inherited field another default (`inherit`). "Derive it from
the budget" is the explicit value None, shown and written as `auto`.

Precedence: field default < `--config FILE` (TOML or JSON, same keys, dashes or underscores)
< explicit flags. `validate()` checks every field against the bounds declared with it, then
the rules that tie fields together, and raises `UserError` with the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka")  # architectures.ARCHITECTURES (tests/test_cli.py)
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")  # sparsity set by k (AuxK on), not by a coefficient
# --lr auto: the k-architectures diverge at L1's 1e-2 on long or wide runs (docs/architectures.md, "Learning rate")
DEFAULT_LR = {"standard": 1e-2, "jumprelu": 1e-2, "topk": 3e-3, "batchtopk": 3e-3, "matryoshka": 3e-3}
INITS = ("orthogonal", "xavier", "data", "svd", "kmeans", "mod", "average", "centroid", "outlier")  # init.METHODS
RESAMPLERS = ("none", "anthropic", "clustered")  # resample.METHODS
AUTO = "auto"


def opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None,
        aliases: tuple[str, ...] = (), positional: bool = False) -> Any:
    """A dataclass field with its CLI help and the bounds `validate()` checks."""
    meta = dict(help=help, choices=choices, ge=ge, gt=gt, le=le, lt=lt, aliases=aliases, positional=positional)
    return field(default=default, metadata=meta)


def inherit(cls: type, name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """Field `name` of `cls` (help and bounds), with another default or help for this command."""
    f = next(f for f in fields(cls) if f.name == name)
    meta = dict(f.metadata) | ({"help": help} if help else {})
    return field(default=f.default if default is dataclasses.MISSING else default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(typ: Any) -> tuple[type, bool]:
    """(the value type, whether None — `auto` — is allowed) of a field's annotation."""
    if get_origin(typ) in (Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        return args[0], True
    return typ, False


def _show(v: Any) -> Any:
    return AUTO if v is None else v


def _within(v: float, m: Any) -> bool:
    return (math.isfinite(v) and (m["ge"] is None or v >= m["ge"]) and (m["gt"] is None or v > m["gt"])
            and (m["le"] is None or v <= m["le"]) and (m["lt"] is None or v < m["lt"]))


def _bounds(m: Any, real: bool) -> str:
    """A field's declared bounds in words: 'in [0, 1)', 'a finite number > 0', '>= 1'."""
    lo = ("[", m["ge"]) if m["ge"] is not None else ("(", m["gt"]) if m["gt"] is not None else None
    hi = ("]", m["le"]) if m["le"] is not None else (")", m["lt"]) if m["lt"] is not None else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    words = "a finite number " if real else ""
    if lo:
        return f"{words}{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    return f"{words}{'<=' if hi[0] == ']' else '<'} {hi[1]:g}" if hi else "a finite number"


@dataclass
class Config:
    """Bounds checking shared by every command's config."""

    def validate(self) -> None:
        for f in fields(self):
            v, m = getattr(self, f.name), f.metadata
            if v is None or isinstance(v, bool) or not m:
                continue
            flag = _flag(f.name)
            if m["choices"] and v not in m["choices"]:
                if len(m["choices"]) == 2:
                    raise UserError(f"{flag} must be {' or '.join(m['choices'])}, got {v!r}")
                raise UserError(f"{flag} {v!r} is unknown; choose one of {', '.join(m['choices'])}")
            if isinstance(v, (int, float)) and not _within(v, m):
                raise UserError(f"{flag} must be {_bounds(m, isinstance(v, float))}, got {v}")


@dataclass
class RunConfig(Config):
    """What every command that writes a directory shares."""

    out: str = opt("", "output directory")
    seed: int = opt(0, "seed for initialization and data order; same seed, same result")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:N")
    progress: bool = opt(True, "show a progress bar on stderr")

    def validate(self) -> None:
        super().validate()
        if not self.out:
            raise UserError(f"--out is required: {self.__dataclass_fields__['out'].metadata['help']}")
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise UserError(f"--device {self.device!r} is unknown; use auto, cpu, cuda or cuda:N")


@dataclass
class TrainConfig(RunConfig):
    """What the trainer and every training command share. The defaults are `saeforge train`'s,
    tuned so the main job (embedded model, 1,024 features, 4M tokens) finishes in minutes on
    2 CPU cores (README: how they were found)."""

    out: str = inherit(RunConfig, "out", help="output directory: metrics.jsonl, summary.json, the dictionary, "
                                              "checkpoints")
    steps: int = opt(0, "training steps (0: derive from --tokens)", ge=0)
    tokens: int = opt(4_000_000, "training tokens, rounded up to whole batches (used when --steps is 0)", ge=0)
    architecture: str = opt("standard", "SAE architecture (its name in cfg.json)", choices=ARCHITECTURES)
    dict_size: int = opt(0, "number of dictionary features (0: the command's default)", ge=0)
    init: str = opt("orthogonal", f"dictionary initialization, one of {', '.join(INITS)}", choices=INITS)
    rare_ratio: float = opt(0.0, "fraction of atoms taken from rare-feature vectors (informed inits)", ge=0, le=1)
    encoder_scale: float = opt(1.0, "initial W_enc = encoder_scale · W_decᵀ (smaller: fewer features fire at first)",
                               gt=0)
    resample: str = opt("none", f"dead-feature resampling, one of {', '.join(RESAMPLERS)} (auto: clustered when a "
                        "resampling step fits in the budget and AuxK is off, else none)", choices=(*RESAMPLERS, AUTO))
    resample_every: int = opt(500, "resample dead features every N steps (none in the budget's last N steps)", ge=0)
    resample_at: str = opt("", "resample at these steps instead, e.g. 1000,2000,4000")
    resample_sample: int | None = opt(16384, "inputs scored by reconstruction error at each resampling, streamed in "
                                      "chunks (auto: max(131072, 2 × latents²))", ge=1)
    resample_pool: str = opt("fresh", "where resampling looks for badly reconstructed inputs: fresh "
                             "(--resample-sample new inputs drawn and scored at each resampling) or stream (the "
                             "worst of every training batch since the last resampling, and the earlier candidates "
                             "still unexplained: nothing drawn, only those scored)", choices=("fresh", "stream"))
    resample_worst: int = opt(2048, "clustered: the worst-reconstructed inputs kept and clustered (residual: "
                              "the N with the most unexplained error among the 8N worst)", ge=1)
    resample_clusters: int = opt(32, "clustered: MiniBatchKMeans clusters over the worst inputs", ge=1)
    resample_direction: str = opt("centroid", "clustered: new direction = centroid (x − its cluster centroid) or "
                                  "residual (the summed residual x − x̂ of one of the most coherent clusters of residual "
                                  "directions, over the worst inputs with the most error no firing feature explains)",
                                  choices=("residual", "centroid"))
    resample_encoder: str = opt("anthropic", "new encoder columns: anthropic (0.2 × the alive features' mean norm, "
                                "bias 0) or alive (the alive features' median norm and median bias)",
                                choices=("anthropic", "alive"))
    resample_duplicates: float = opt(0.0, "also renew the rarer of two features whose decoder rows have cosine >= "
                                     "this (0: off)", ge=0, le=1)
    l1_coefficient: float = opt(0.55, "standard: sparsity coefficient λ in MSE + λ·Σ f_i‖W_dec,i‖ (inputs scaled to "
                                "E‖x‖² = d_in)", ge=0, aliases=("--l1",))
    k: int = opt(32, "topk, batchtopk, matryoshka: active latents per input (batchtopk: on average over the batch)",
                 ge=1)
    aux_k: int | None = opt(None, "AuxK: dead latents that reconstruct the residual error (auto: d_in / 2)", ge=1)
    aux_k_coefficient: float = opt(1 / 32, "AuxK loss coefficient (0: AuxK off)", ge=0)
    matryoshka_sizes: str = opt("", "matryoshka: nested prefix sizes, e.g. 128,512,2048 (the dictionary size "
                                "closes the list; empty: d_sae/16, d_sae/4, d_sae)")
    l0_coefficient: float = opt(1.0, "jumprelu: coefficient λ₀ of its sparsity loss", ge=0)
    jumprelu_init_threshold: float = opt(0.01, "jumprelu: initial threshold of every latent", ge=0)
    jumprelu_bandwidth: float = opt(0.05, "jumprelu: width of the straight-through estimator's kernel", gt=0)
    jumprelu_sparsity: str = opt("step", "jumprelu: sparsity loss, step (L0 through the estimator, DeepMind's) "
                                 "or tanh (Anthropic's)", choices=("step", "tanh"))
    l1_warmup_steps: int = opt(500, "ramp λ linearly from 0 over this many steps (keeps features alive early)", ge=0)
    lr: float | None = opt(None, "Adam learning rate (auto: 1e-2 for standard and jumprelu, 3e-3 for topk, "
                           "batchtopk and matryoshka)", gt=0)
    lr_warmup_steps: int = opt(200, "ramp the learning rate linearly from 0 over this many steps", ge=0)
    lr_decay_steps: int | None = opt(400, "decay the learning rate linearly to 0 over the last N steps of the "
                                     "budget (auto: half the budget)", ge=0)
    beta1: float = opt(0.9, "Adam β1", ge=0, lt=1)
    beta2: float = opt(0.999, "Adam β2", ge=0, lt=1)
    adam_eps: float = opt(1e-8, "Adam ε (larger: parameters with tiny, rare gradients move less)", gt=0)
    batch_size: int = opt(512, "activations per training step (the global batch under torchrun)", ge=1)
    unit_norm_decoder: bool = opt(False, "keep decoder rows at unit norm (tangent gradient + renormalize)")
    autocast: bool = opt(False, "the step's dense matrix products in bfloat16 (torch.autocast; parameters, gradients, "
                         "Adam and the loss's sums stay float32): for GPUs, and CPUs with AMX (docs/performance.md)")
    log_every: int = opt(100, "write a metrics.jsonl line every N steps (the only host syncs)", ge=1)
    checkpoint_every: int = opt(1000, "save a resumable checkpoint every N steps (0: only at the end)", ge=0)
    dead_window: int = opt(0, "a feature is dead after this many tokens without firing (0: 10 batches)", ge=0)
    resume: bool = opt(False, "continue from the checkpoint in --out if there is one")
    wandb: str = opt("", "also log to Weights & Biases under this project (pip install 'saeforge[wandb]'; "
                     "WANDB_MODE=offline logs without a network)")
    feature_shards: int = opt(1, "under torchrun: split the dictionary's features over this many ranks (the "
                              "world is data × feature shards; docs/distributed.md)", ge=1)

    def validate(self) -> None:
        super().validate()
        if not self.steps and not self.tokens:
            raise UserError("give --steps N or --tokens N (both are 0)")
        if self.resample_at:
            parse_steps(self.resample_at)

    def total_steps(self) -> int:
        if self.steps:
            return self.steps
        if self.tokens:
            return -(-self.tokens // self.batch_size)
        raise UserError("give --steps N or --tokens N")

    def for_architecture(self):
        """This config with the `auto` values that depend only on the architecture fixed."""
        cfg, topk = self, self.architecture == "topk"
        if cfg.lr is None:
            cfg = dataclasses.replace(cfg, lr=DEFAULT_LR[cfg.architecture])
        if cfg.unit_norm_decoder is None:
            cfg = dataclasses.replace(cfg, unit_norm_decoder=topk)
        if cfg.encoder_scale is None:
            cfg = dataclasses.replace(cfg, encoder_scale=0.1 if topk else 1.0)
        return cfg

    def resolved(self, steps: int):
        """This config with every `auto` value fixed for a budget of `steps` steps."""
        cfg = self.for_architecture()
        if cfg.lr_decay_steps is None:
            cfg = dataclasses.replace(cfg, lr_decay_steps=steps // 2)
        if cfg.resample == AUTO:  # off where AuxK revives dead latents; both may be asked for explicitly
            auxk = cfg.architecture in K_ARCHITECTURES and cfg.aux_k_coefficient > 0
            on = cfg.resample_steps(steps) and not auxk and cfg.feature_shards == 1
            cfg = dataclasses.replace(cfg, resample="clustered" if on else "none")
        return cfg

    def resample_steps(self, total_steps: int) -> list[int]:
        """The steps resampling acts on: --resample-at, or every --resample-every steps but never
        in the budget's last interval nor once the lr decays (a renewed feature needs time at full lr)."""
        if self.resample_at:
            return sorted(s for s in parse_steps(self.resample_at) if 0 < s < total_steps)
        every = self.resample_every
        end = total_steps - max(every, self.lr_decay_steps or 0)
        return list(range(every, end + 1, every)) if every > 0 else []


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--resample-at must be comma-separated step numbers, got {text!r}") from None
    if any(s < 1 for s in steps):
        raise UserError(f"--resample-at steps must be >= 1, got {text!r}")
    return steps


@dataclass
class ToyConfig(TrainConfig):
    """`saeforge toy`: train on fresh toy data with known features until MMCS >= target.

    Toy inputs have E‖x‖² ≈ 1.7, not d_in, and ground-truth recovery wants the unit-norm
    decoder; docs/toy.md and docs/toy-notes.md say how the other toy defaults were found."""

    steps: int = inherit(TrainConfig, "steps", 5000)
    tokens: int = inherit(TrainConfig, "tokens", 0)
    init: str = inherit(TrainConfig, "init", "mod")
    resample: str = inherit(TrainConfig, "resample", AUTO)
    resample_every: int = inherit(TrainConfig, "resample_every", 250)
    resample_sample: int | None = inherit(TrainConfig, "resample_sample", None)
    resample_pool: str = inherit(TrainConfig, "resample_pool", "stream")
    resample_direction: str = inherit(TrainConfig, "resample_direction", "residual")
    resample_encoder: str = inherit(TrainConfig, "resample_encoder", "alive")
    resample_duplicates: float = inherit(TrainConfig, "resample_duplicates", 0.8)
    l1_coefficient: float = inherit(TrainConfig, "l1_coefficient", 0.3)
    l1_warmup_steps: int = inherit(TrainConfig, "l1_warmup_steps", 0)
    lr_warmup_steps: int = inherit(TrainConfig, "lr_warmup_steps", 0)
    lr_decay_steps: int | None = inherit(TrainConfig, "lr_decay_steps", None)
    beta2: float = inherit(TrainConfig, "beta2", 0.95)
    adam_eps: float = inherit(TrainConfig, "adam_eps", 1e-5)
    batch_size: int = inherit(TrainConfig, "batch_size", 2048)
    unit_norm_decoder: bool = inherit(TrainConfig, "unit_norm_decoder", True)
    checkpoint_every: int = inherit(TrainConfig, "checkpoint_every", 0)
    d_model: int = opt(128, "dimension the ground-truth features are superposed into", ge=1)
    n_features: int = opt(512, "number of ground-truth features", ge=1)
    n_active: float = opt(5.0, "expected number of active features per sample", gt=0)
    decay: float = opt(0.99, "feature i fires with probability ∝ decay**i", gt=0, le=1)
    correlated: bool = opt(True, "modulate firing by a correlated Gaussian (the seed's setup)")
    data: str = opt("seed", "toy data: 'seed' (the first seed's setup: decay, correlated firing) or 'synthetic' "
                    "(hierarchy, Zipf: the --zipf-*/--hierarchy-* flags; docs/benchmark.md)", choices=("seed", "synthetic"))
    synthetic_model: str = opt("", "train on a SAELens synthetic model directory (SyntheticModel.save) as it is; "
                               "sets --d-model and --n-features from it")
    zipf_exponent: float = opt(1.0, "synthetic: Zipf exponent of the base firing probabilities", gt=0)
    max_prob: float = opt(0.3, "synthetic: firing probability of the most frequent feature", gt=0, le=1)
    min_prob: float = opt(0.01, "synthetic: firing probability of the least frequent feature", gt=0, le=1)
    hierarchy_roots: int = opt(32, "synthetic: number of hierarchy trees (0: no hierarchy)", ge=0)
    hierarchy_branching: int = opt(4, "synthetic: children per parent", ge=2)
    hierarchy_depth: int = opt(2, "synthetic: levels below the roots", ge=1)
    exclusive_share: float = opt(0.5, "synthetic: share of parents whose children are mutually exclusive", ge=0, le=1)
    correlation_rank: int = opt(0, "synthetic: rank of the low-rank firing correlation (0: independent)", ge=0)
    correlation_scale: float = opt(0.075, "synthetic: scale of the correlation factor's entries", ge=0)
    magnitude_std: float = opt(0.0, "synthetic: std of a firing feature's magnitude (mean 1)", ge=0)
    bias_norm: float = opt(0.0, "synthetic: norm of the constant offset added to every sample", ge=0)
    eval_samples: int = opt(100_000, "fresh samples for the final ground-truth metrics (MCC, F1, absorption); 0 skips",
                            ge=0)
    target_mmcs: float = opt(0.99, "stop once MMCS reaches this (0: run all --steps)", ge=0, le=1)
    check_every: int = opt(10, "read the on-device MMCS trace every N steps to decide to stop", ge=1)

    def validate(self) -> None:
        super().validate()
        if self.n_active > self.n_features:
            raise UserError(f"--n-active must be in (0, n_features], got {self.n_active}")
        if self.min_prob >= self.max_prob:
            raise UserError(f"--min-prob must be below --max-prob, got {self.min_prob} and {self.max_prob}")


@dataclass
class ModelDataConfig(Config):
    """Where activations come from: a model, a hook point and a dataset."""

    model: str = opt("embedded", "model: 'embedded', a local model directory, or a TransformerLens name (e.g. gelu-4l)")
    hook: str = opt("", "hook point (default: blocks.{n_layers//2}.hook_resid_post)")
    dataset: str = opt("embedded", "'embedded' (Python's stdlib sources), local .txt/.jsonl/.parquet file(s) or dir, "
                       "or a hub name")
    text_column: str = opt("text", "dataset column holding text (a 'tokens'/'input_ids' column is used as is)")
    contexts_per_pass: int = opt(32, "contexts per model forward pass", ge=1)


@dataclass
class ActivationTrainConfig(TrainConfig, ModelDataConfig):
    """`saeforge train`: train on a model's activations (live buffer, or --cache). Its default is
    TopK (k 32): on the main job's budget it beats ReLU + L1 (README, docs/architectures.md)."""

    architecture: str = inherit(TrainConfig, "architecture", "topk")
    # TopK starts as SAELens's does (docs/performance.md: "Where SAELens's CE-loss edge came from"); for
    # batchtopk and matryoshka that start left many latents dead (docs/architectures.md, section b)
    encoder_scale: float | None = inherit(TrainConfig, "encoder_scale", None, help=(
        "initial W_enc = encoder_scale · W_decᵀ (auto: 0.1 for topk, 1 otherwise)"))
    unit_norm_decoder: bool | None = inherit(TrainConfig, "unit_norm_decoder", None, help=(
        "keep decoder rows at unit norm (tangent gradient + renormalize; auto: on for topk)"))
    cache: str = opt("", "train from this activation cache (saeforge harvest) instead of running the model")
    buffer_mb: float = opt(128.0, "memory bound of the activation buffer in MiB (on the model's device)", gt=0)
    buffer_dtype: str = opt("float32", "buffer storage dtype", choices=("float32", "bfloat16"))
    eval_tokens: int = opt(65536, "held-out tokens for the final evals (CE loss recovered); 0 skips them", ge=0)
    hooks: str = opt("", "several hook points, comma-separated: one model forward (up to the deepest) feeds a "
                     "dictionary at each; the runs go to --out/<hook>[-<spec>]/ (--buffer-mb is per hook)")
    dictionaries: str = opt("", "several dictionaries from the same batches: specs separated by ';', each "
                            "comma-separated key=value settings of that dictionary, e.g. 'dict_size=1024; "
                            "dict_size=4096,k=64' (in a config file also a list of tables); with --hooks, "
                            "every spec at every hook")


@dataclass
class HarvestConfig(RunConfig, ModelDataConfig):
    """`saeforge harvest`: write a model's activations to disk once, for many training runs."""

    out: str = inherit(RunConfig, "out", help="cache directory (manifest.json + shard_*.safetensors); rerun to resume")
    seed: int = inherit(RunConfig, "seed", help="seed of the document shuffle")
    tokens: int = opt(2_000_000, "activation tokens to harvest (rounded up to whole contexts)", ge=1)
    split: str = opt("train", "dataset split", choices=("train", "test"))
    dtype: str = opt("float32", "stored dtype", choices=("float32", "bfloat16", "float16"))
    contexts_per_shard: int = opt(256, "contexts per shard file", ge=1)


@dataclass
class SweepConfig(RunConfig):
    """`saeforge sweep`: dictionary sizes × training steps (× λ) from one activation cache.

    Every run trains with `saeforge train`'s optimizer defaults; its schedule scales with its
    step budget (the two fractions below)."""

    out: str = inherit(RunConfig, "out", help="sweep directory: runs.jsonl (one row per finished run), fits.json, "
                                              "plots")
    seed: int = inherit(RunConfig, "seed", help="seed of every run (init and data order)")
    progress: bool = inherit(RunConfig, "progress", help="show a progress bar over the grid on stderr")
    cache: str = opt("", "activation cache to train every run from (saeforge harvest)")
    eval_cache: str = opt("", "held-out activation cache (harvest --split test); default: the cache's last shard, "
                              "kept out of training")
    sizes: str = opt("256,512,1024,2048,4096", "dictionary sizes, comma-separated")
    steps: str = opt("250,500,1000,2000,4000", "training step counts, comma-separated")
    architecture: str = inherit(TrainConfig, "architecture")
    l1s: str = opt("5", "sparsity coefficients λ (standard) or λ₀ (jumprelu), comma-separated (several: the L0 "
                        "analysis picks the best per cell; with --suggest, the one value whose fits to use)")
    ks: str = opt("16,32,64", "topk, batchtopk, matryoshka: values of k, comma-separated (the sparsity axis "
                  "instead of --l1s)")
    alpha: float = opt(3.0, "α of the L0-based loss MSE + α·L0 (trainer units, E‖x‖² = d_in)", ge=0)
    eval_rows: int = opt(65536, "held-out activations every run is measured on", ge=1)
    batch_size: int = inherit(TrainConfig, "batch_size")
    lr: float | None = inherit(TrainConfig, "lr")
    init: str = inherit(TrainConfig, "init")
    buffer_mb: float = inherit(ActivationTrainConfig, "buffer_mb")
    lr_decay_fraction: float = opt(0.2, "each run decays its learning rate linearly to 0 over this last fraction "
                                   "of its steps", ge=0, le=1)
    l1_warmup_fraction: float = opt(0.1, "each run ramps λ from 0 over this first fraction of its steps", ge=0, le=1)
    suggest: float = opt(0.0, "print the predicted compute-optimal size and steps at this FLOP budget and exit", ge=0)

    def validate(self) -> None:
        super().validate()
        if not self.suggest and not self.cache:
            raise UserError("--cache is required: the activation cache the runs train on (saeforge harvest)")

    def sparsity_axis(self) -> str:
        """The TrainConfig field the grid varies besides size and steps: k, λ or λ₀."""
        if self.architecture in K_ARCHITECTURES:
            return "k"
        return "l0_coefficient" if self.architecture == "jumprelu" else "l1_coefficient"

    def run_config(self, steps: int, sparsity: float, device: str) -> TrainConfig:
        """The TrainConfig of one run of the grid (`sparsity`: the value on the sparsity axis)."""
        def part(fraction: float) -> int:
            return max(1, int(steps * fraction + 1e-9))

        axis = self.sparsity_axis()
        return TrainConfig(out="", seed=self.seed, steps=steps, tokens=0, init=self.init, lr=self.lr,
                           architecture=self.architecture, **{axis: int(sparsity) if axis == "k" else sparsity},
                           batch_size=self.batch_size, lr_warmup_steps=0,
                           l1_warmup_steps=part(self.l1_warmup_fraction), lr_decay_steps=part(self.lr_decay_fraction),
                           log_every=steps, checkpoint_every=0, progress=False, device=device)


@dataclass
class HeldOutConfig(Config):
    """What the commands that run a saved dictionary's model on held-out text share."""

    path: str = opt("", "dictionary directory (saeforge or SAELens)", positional=True)
    model: str = opt("", "model (default: the one recorded in cfg.json)")
    hook: str = opt("", "hook point (default: the one recorded in cfg.json)")
    dataset: str = opt("", "dataset whose held-out split to use (default: the recorded one, else embedded)")
    contexts_per_pass: int = inherit(ModelDataConfig, "contexts_per_pass")
    device: str = inherit(RunConfig, "device")
    progress: bool = inherit(RunConfig, "progress")


@dataclass
class EvalConfig(HeldOutConfig):
    """`saeforge eval`: CE loss recovered, explained variance, L0 of a saved dictionary."""

    tokens: int = opt(65536, "held-out tokens to evaluate on", ge=1)


@dataclass
class InspectConfig(HeldOutConfig):
    """`saeforge inspect`: an HTML feature browser of a saved dictionary."""

    out: str = opt("", "report directory (index.html, density.png, features.png)")
    features: int = opt(32, "how many alive features to study, spread over the firing frequencies", ge=1)
    tokens: int = opt(32768, "held-out tokens to run", ge=1)
    top_k: int = opt(10, "top-activating contexts per feature", ge=1)

    def validate(self) -> None:
        super().validate()
        if not self.out:
            raise UserError("--out is required: the report directory")


# ---------------------------------------------------------------- flags and files
def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field (a positional for `positional` fields); defaults are suppressed
    so that a config file's values are not overridden by them."""
    hints = get_type_hints(cls)
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file with the same keys; flags override it")
    for f in fields(cls):
        typ, nullable = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        if f.default != "" and "default" not in help_:
            help_ += f" (default: {_show(f.default)})"
        help_ = help_.replace("%", "%%")  # argparse formats help
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=_typed(typ, f.name, nullable), help=help_)
        elif typ is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_)
        else:
            parser.add_argument(_flag(f.name), *f.metadata.get("aliases", ()), dest=f.name,
                                type=_typed(typ, _flag(f.name), nullable), default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help_)


def _typed(typ: type, flag: str, nullable: bool):
    def convert(text: str):
        if nullable and text == AUTO:
            return None
        try:
            if typ is int:
                value = float(text)  # accept 1e5 for counts
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {typ.__name__}{' or auto' if nullable else ''}, "
                                             f"got {text!r}") from None

    return convert


def read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file {path} does not exist")
    if not p.is_file():
        raise UserError(f"config file {path} is not a file")
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table/object of keys")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _file_values(cls: type, path: str) -> dict[str, Any]:
    """A config file's values, each checked against its field's type; old key names (aliases) accepted."""
    hints = get_type_hints(cls)
    alias = {a.removeprefix("--").replace("-", "_"): f.name for f in fields(cls) for a in f.metadata.get("aliases", ())}
    raw = {alias.get(k, k): v for k, v in read_config_file(path).items()}
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    values = {}
    for k, v in raw.items():
        typ, nullable = _base_type(hints[k])
        if nullable and v in (None, AUTO):
            values[k] = None
            continue
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if k == "dictionaries" and isinstance(v, list) and all(isinstance(t, dict) for t in v):  # a list of tables
            v = "; ".join(", ".join(f"{kk}={vv}" for kk, vv in t.items()) for t in v)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise UserError(f"config file {path}: {k} must be {typ.__name__}, got {v!r}")
        values[k] = v
    return values


def build_config(cls: type, args: argparse.Namespace):
    """defaults < config file < flags, then validate."""
    values = _file_values(cls, args.config) if getattr(args, "config", None) else {}
    values |= {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    cfg = cls(**values)
    cfg.validate()
    return cfg


def changed_defaults(cls: type, base: type = TrainConfig) -> dict[str, Any]:
    """The defaults `cls` gives its inherited fields that differ from `base`'s (docs print them)."""
    ours = {f.name: f.default for f in fields(cls)}
    return {f.name: _show(ours[f.name]) for f in fields(base) if f.name in ours and ours[f.name] != f.default}
