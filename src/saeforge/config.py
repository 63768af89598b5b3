"""The commands' configs: what each command (`saeforge train`, `toy`, `sweep`, `harvest`, `eval`,
`inspect`) takes. Every field is a flag, a config-file key and a keyword (options.py says how);
each default is declared once, in the class of the command that uses it, and a command's class may
give an inherited field another default (`inherit`). An architecture's own settings (k, λ,
thresholds…) are declared by the architecture (architectures/), resampling's by resample.py;
TrainConfig holds them and shows them as flat options.

`TrainConfig.resolved(steps, d_in)` fixes every `auto` value once, at the start of a run: the
frozen run config the trainer, resampler, sweep and summary read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from saeforge.dictionary.architectures import ARCHITECTURES, CONFIGS
from saeforge.dictionary.init import METHODS as INITS
from saeforge.dictionary.sae import ArchitectureConfig
from saeforge.errors import UserError
from saeforge.options import AUTO, Config, Option, add_config_flags, build_config, field_options, inherit, opt, show
from saeforge.training.resample import ResampleConfig, check_settings

__all__ = ["AUTO", "add_config_flags", "build_config", "changed_defaults", "RunConfig", "TrainConfig", "ToyConfig",
           "ActivationTrainConfig", "HarvestConfig", "SweepConfig", "EvalConfig", "InspectConfig"]


@dataclass(frozen=True)
class RunConfig(Config):
    """What every command that writes a directory shares."""

    out: str = opt("", "output directory")
    seed: int = opt(0, "seed for initialization and data order; same seed, same result")
    device: str = opt("auto", "torch device: auto, cpu, cuda, cuda:N")
    progress: bool = opt(True, "show a progress bar on stderr")
    threads: int = opt(0, "CPU threads (0: as many as the cores other processes leave free, re-checked every "
                       "second, at most torch's count; a fixed count makes a seed's result the same bits on a busy "
                       "machine too: docs/performance.md)", ge=0)

    def validate(self) -> None:
        super().validate()
        if not self.out:
            raise UserError(f"--out is required: {self.__dataclass_fields__['out'].metadata['help']}")
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise UserError(f"--device {self.device!r} is unknown; use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class TrainConfig(ResampleConfig, RunConfig):
    """What the trainer and every training command share. The defaults are `saeforge train`'s,
    tuned so the main job (embedded model, 1,024 features, 4M tokens) finishes in minutes on
    2 CPU cores (docs/main-job.md: how they were found). `sae` holds the architecture's own settings
    (architectures/: its Config); `SAE_DEFAULTS` lets a command give those other defaults."""

    SAE_DEFAULTS: ClassVar[dict[str, Any]] = {}

    out: str = inherit(RunConfig, "out", help="output directory: metrics.jsonl, summary.json, the dictionary, "
                                              "checkpoints")
    steps: int = opt(0, "training steps (0: derive from --tokens)", ge=0)
    tokens: int = opt(4_000_000, "training tokens, rounded up to whole batches (used when --steps is 0)", ge=0)
    architecture: str = opt("standard", "SAE architecture (its name in cfg.json)", choices=tuple(ARCHITECTURES))
    dict_size: int = opt(0, "number of dictionary features (0: the command's default)", ge=0)
    init: str = opt("orthogonal", f"dictionary initialization, one of {', '.join(INITS)}", choices=INITS)
    rare_ratio: float = opt(0.0, "fraction of atoms taken from rare-feature vectors (informed inits)", ge=0, le=1)
    encoder_scale: float | None = opt(1.0, "initial W_enc = encoder_scale · W_decᵀ (smaller: fewer features fire at "
                                      "first; auto: the architecture's)", gt=0)
    center_init: bool = opt(True, "start b_dec at the mean of a sample of the inputs (off: at 0)")
    l1_warmup_steps: int = opt(500, "ramp the sparsity coefficient (λ, λ₀) linearly from 0 over this many steps "
                               "(keeps features alive early)", ge=0)
    lr: float | None = opt(None, "Adam learning rate (auto: the architecture's: 1e-2 for standard and jumprelu, "
                           "3e-3 for topk, batchtopk and matryoshka)", gt=0)
    lr_warmup_steps: int = opt(200, "ramp the learning rate linearly from 0 over this many steps", ge=0)
    lr_decay_steps: int | None = opt(400, "decay the learning rate linearly to 0 over the last N steps of the "
                                     "budget (auto: half the budget)", ge=0)
    beta1: float = opt(0.9, "Adam β1", ge=0, lt=1)
    beta2: float = opt(0.999, "Adam β2", ge=0, lt=1)
    adam_eps: float = opt(1e-8, "Adam ε (larger: parameters with tiny, rare gradients move less)", gt=0)
    max_grad_norm: float | None = opt(0.0, "clip the gradient's global norm to this before each Adam step, as SAELens's "
                               "trainer does at 1.0 (0: no clipping)", ge=0)
    batch_size: int = opt(512, "activations per training step (the global batch under torchrun)", ge=1)
    unit_norm_decoder: bool | None = opt(False, "keep decoder rows at unit norm (tangent gradient + renormalize; "
                                         "auto: the architecture's)")
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
    sae: ArchitectureConfig | None = None  # the architecture's settings (None: its defaults); flat options

    def __post_init__(self) -> None:
        arch = CONFIGS.get(self.architecture) if isinstance(self.architecture, str) else None
        if self.sae is None and arch is not None:
            object.__setattr__(self, "sae", arch(**{k: v for k, v in self.SAE_DEFAULTS.items()
                                                    if k in arch.__dataclass_fields__}))
        elif arch is not None and type(self.sae) is not arch:
            raise UserError(f"the architecture settings are {type(self.sae).__name__}, not {arch.__name__} of "
                            f"--architecture {self.architecture}")

    # ---------------------------------------------------------------- the flat view
    @classmethod
    def options(cls) -> dict[str, Option]:
        """Its own fields, resampling's, and every architecture's settings (named by their owners)."""
        out = field_options(cls)
        for name, arch in CONFIGS.items():
            for o in field_options(arch, cls.SAE_DEFAULTS).values():
                prev = out.get(o.name)
                out[o.name] = o._replace(owners=(*prev.owners, name)) if prev else o._replace(owners=(name,))
        return out

    @classmethod
    def from_values(cls, values: dict[str, Any]):
        opts, values = cls.options(), cls.typed(values)
        own = {k: v for k, v in values.items() if not opts[k].owners}
        arch_name = own.get("architecture", cls.__dataclass_fields__["architecture"].default)
        arch = CONFIGS.get(arch_name)
        if arch is None:  # validate() names the choices
            return cls(**own)
        # another architecture's settings are taken and left unused, as a config file shared by several
        # architectures (or a flag set looped over them) holds them; summary.json records the ones used
        mine = {k: v for k, v in {**cls.SAE_DEFAULTS, **values}.items() if k in arch.__dataclass_fields__}
        return cls(**own, sae=arch(**mine))

    def values(self) -> dict[str, Any]:
        own = {o.name: getattr(self, o.name) for o in field_options(type(self)).values()}
        return own | (self.sae.values() if self.sae is not None else {})

    def with_values(self, **changes: Any):
        base = self.values()
        if changes.get("architecture", self.architecture) != self.architecture:  # the old one's settings go
            base = {k: v for k, v in base.items() if not self.sae or k not in self.sae.__dataclass_fields__}
        return type(self).from_values(base | changes)

    def validate(self) -> None:
        super().validate()
        if not self.steps and not self.tokens:
            raise UserError("give --steps N or --tokens N (both are 0)")

    # ---------------------------------------------------------------- the run config
    def total_steps(self) -> int:
        if self.steps:
            return self.steps
        if self.tokens:
            return -(-self.tokens // self.batch_size)
        raise UserError("give --steps N or --tokens N")

    def default_dict_size(self, d_in: int) -> int:
        """--dict-size 0: 8 × the input width."""
        return 8 * d_in

    def resolved(self, steps: int, d_in: int):
        """The run config: every `auto` value fixed for a budget of `steps` steps on inputs of width
        `d_in`, and the settings that depend on them checked. Nothing downstream resolves again."""
        d_sae = self.dict_size or self.default_dict_size(d_in)
        if d_sae % self.feature_shards:
            raise UserError(f"--feature-shards {self.feature_shards} must divide the dictionary size ({d_sae})")
        sae = self.sae.resolved(d_in, d_sae)
        cfg = replace(
            self, steps=steps, dict_size=d_sae, sae=sae,
            lr=sae.default_lr if self.lr is None else self.lr,
            unit_norm_decoder=self.auto_unit_norm_decoder(sae) if self.unit_norm_decoder is None else self.unit_norm_decoder,
            max_grad_norm=self.auto_max_grad_norm() if self.max_grad_norm is None else self.max_grad_norm,
            encoder_scale=sae.default_encoder_scale if self.encoder_scale is None else self.encoder_scale,
            lr_decay_steps=steps // 2 if self.lr_decay_steps is None else self.lr_decay_steps,
            dead_window=self.dead_window or 10 * self.batch_size,
            # the rarest features a pool can show grow rarer faster than the dictionary grows (128/1024 toy:
            # 2M inputs found the features that 524,288 missed; docs/toy.md)
            resample_sample=self.resample_sample or max(131072, 2 * d_sae ** 2))
        if cfg.resample == AUTO:  # off where AuxK revives dead latents; both may be asked for explicitly
            on = (cfg.auto_resamples() and cfg.resample_steps() and not sae.revives_dead_latents()
                  and cfg.feature_shards == 1)
            cfg = replace(cfg, resample="clustered" if on else "none")
        check_settings(cfg)
        return cfg

    def auto_resamples(self) -> bool:
        """Whether `--resample auto` may turn resampling on for this command's data (a command overrides)."""
        return True

    def auto_unit_norm_decoder(self, sae: ArchitectureConfig) -> bool:
        """`--unit-norm-decoder auto`: the architecture's (a command overrides)."""
        return sae.default_unit_norm_decoder

    def auto_max_grad_norm(self) -> float:
        """`--max-grad-norm auto` (a command that has it overrides)."""
        return 0.0

    @staticmethod
    def shardable_architectures() -> list[str]:
        return [name for name, arch in CONFIGS.items() if arch.shardable]

    def is_resolved(self) -> bool:
        """No `auto` left: no None among the settings, and the 0 / auto defaults fixed."""
        return (self.steps > 0 and self.dict_size > 0 and self.dead_window > 0 and self.resample != AUTO
                and None not in self.values().values())

    def resample_steps(self) -> list[int]:
        """The steps resampling acts on (a resolved config): never once the lr decays."""
        return self.schedule(self.steps, self.lr_decay_steps or 0)


@dataclass(frozen=True)
class ToyConfig(TrainConfig):
    """`saeforge toy`: train on fresh toy data with known features until MMCS >= target.

    Toy inputs have E‖x‖² ≈ 1.7, not d_in, and ground-truth recovery on the seed's data wants the
    unit-norm decoder; docs/toy.md and docs/toy-notes.md say how the other toy defaults were found."""

    SAE_DEFAULTS: ClassVar[dict[str, Any]] = {"l1_coefficient": 0.3}

    steps: int = inherit(TrainConfig, "steps", 5000)
    tokens: int = inherit(TrainConfig, "tokens", 0)
    init: str = inherit(TrainConfig, "init", "mod")
    center_init: bool = inherit(TrainConfig, "center_init", False)
    resample: str = inherit(TrainConfig, "resample", AUTO, help=(
        "dead-feature resampling, one of none, anthropic, clustered (auto: clustered on the seed's toy data when a "
        "resampling step fits in the budget and AuxK is off; none on synthetic data, where clustered resampling "
        "lost to none under the protocol: docs/methods-synthetic.md)"))
    resample_every: int = inherit(TrainConfig, "resample_every", 250)
    resample_sample: int | None = inherit(TrainConfig, "resample_sample", None)
    resample_pool: str = inherit(TrainConfig, "resample_pool", "stream")
    resample_direction: str = inherit(TrainConfig, "resample_direction", "residual")
    resample_encoder: str = inherit(TrainConfig, "resample_encoder", "alive")
    resample_duplicates: float = inherit(TrainConfig, "resample_duplicates", 0.8)
    l1_warmup_steps: int = inherit(TrainConfig, "l1_warmup_steps", 0)
    lr_warmup_steps: int = inherit(TrainConfig, "lr_warmup_steps", 0)
    lr_decay_steps: int | None = inherit(TrainConfig, "lr_decay_steps", None)
    beta2: float = inherit(TrainConfig, "beta2", 0.95)
    adam_eps: float = inherit(TrainConfig, "adam_eps", 1e-5)
    batch_size: int = inherit(TrainConfig, "batch_size", 2048)
    max_grad_norm: float | None = inherit(TrainConfig, "max_grad_norm", None, help=(
        "clip the gradient's global norm to this before each Adam step (auto: 1.0 for jumprelu on synthetic data, "
        "where it raised MCC and F1 at every L0: docs/methods-synthetic.md; else 0, no clipping)"))
    unit_norm_decoder: bool | None = inherit(TrainConfig, "unit_norm_decoder", None, help=(
        "keep decoder rows at unit norm (tangent gradient + renormalize; auto: on, except on synthetic data for the "
        "architectures trained with a sparsity penalty, standard and jumprelu, whose F1 a free norm raised at every "
        "L0 under the protocol: docs/methods-synthetic.md)"))
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

    def default_dict_size(self, d_in: int) -> int:
        """--dict-size 0: one latent per true feature."""
        return self.n_features

    def auto_resamples(self) -> bool:
        """`--resample auto` is off on synthetic data (--data synthetic or a SAELens synthetic model):
        there it lowered F1 and never raised MCC (docs/methods-synthetic.md)."""
        return not (self.data == "synthetic" or self.synthetic_model)

    def auto_unit_norm_decoder(self, sae: ArchitectureConfig) -> bool:
        """Unit norm on the seed's toy data (ground-truth recovery wants it: docs/toy.md); free on synthetic
        data where a penalty weighs each latent by its decoder norm (docs/methods-synthetic.md)."""
        return sae.coefficient is None or self.auto_resamples()

    def auto_max_grad_norm(self) -> float:
        """1.0 for the penalty architectures (ReLU + L1, JumpReLU) on synthetic data, where SAELens's clipping
        on top of the free decoder norm raised F1 at every L0 and MCC at most (docs/methods-synthetic.md);
        else none."""
        return 1.0 if self.architecture in ("standard", "jumprelu") and not self.auto_resamples() else 0.0

    def validate(self) -> None:
        super().validate()
        if self.n_active > self.n_features:
            raise UserError(f"--n-active must be in (0, n_features], got {self.n_active}")
        if self.min_prob >= self.max_prob:
            raise UserError(f"--min-prob must be below --max-prob, got {self.min_prob} and {self.max_prob}")


@dataclass(frozen=True)
class ModelDataConfig(Config):
    """Where activations come from: a model, a hook point and a dataset."""

    model: str = opt("embedded", "model: 'embedded', a local model directory, or a TransformerLens name (e.g. gelu-4l)")
    hook: str = opt("", "hook point (default: blocks.{n_layers//2}.hook_resid_post)")
    target_hook: str = opt("", "a transcoder's target: this later hook's activations, read beside --hook's in one forward "
                           "(train: reconstruct them from --hook's, e.g. --hook blocks.1.ln2.hook_normalized "
                           "--target-hook blocks.1.hook_mlp_out; harvest: a cache of the pairs)")
    dataset: str = opt("embedded", "'embedded' (Python's stdlib sources), local .txt/.jsonl/.parquet file(s) or dir, "
                       "or a hub name")
    text_column: str = opt("text", "dataset column holding text (a 'tokens'/'input_ids' column is used as is)")
    contexts_per_pass: int = opt(32, "contexts per model forward pass", ge=1)


@dataclass(frozen=True)
class ActivationTrainConfig(TrainConfig, ModelDataConfig):
    """`saeforge train`: train on a model's activations (live buffer, or --cache). Its default is
    TopK (k 32): on the main job's budget it beats ReLU + L1 (docs/main-job.md, docs/architectures.md)."""

    architecture: str = inherit(TrainConfig, "architecture", "topk")
    # the architecture's start (its Config: TopK's is SAELens's, unit-norm decoder and encoder scale 0.1)
    encoder_scale: float | None = inherit(TrainConfig, "encoder_scale", None)
    unit_norm_decoder: bool | None = inherit(TrainConfig, "unit_norm_decoder", None)
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
    target_hooks: str = opt("", "with --hooks: a transcoder for each pair, the i-th of --hooks read and the i-th of "
                            "these written (comma-separated, as many as --hooks)")
    skip_connection: bool = opt(False, "transcoder: add a linear skip connection x @ W_skip to its output "
                                "(SAELens's skip_transcoder)")
    cross_layer: bool = opt(False, "with --hooks and --target-hooks naming one pair per layer (every layer from 0): "
                            "one cross-layer transcoder, whose layer-i features write into layer i's and every later "
                            "layer's target (--architecture topk, standard or jumprelu; --dict-size per layer)")

    def validate(self) -> None:
        super().validate()
        if self.target_hooks and not self.hooks:
            raise UserError("--target-hooks pairs with --hooks (for one transcoder: --hook and --target-hook)")
        if self.target_hook and self.hooks:
            raise UserError("--target-hook pairs with --hook; with --hooks give --target-hooks")
        if self.target_hook or self.target_hooks:
            if self.cache and self.target_hooks:
                raise UserError("--target-hooks: a cache holds one pair of hooks (harvest --target-hook); train "
                                "several transcoders from the model")
        elif self.skip_connection and not self.dictionaries:
            raise UserError("--skip-connection is a transcoder's: give --target-hook (or --target-hooks)")
        if self.cross_layer:
            if not (self.hooks and self.target_hooks) or self.dictionaries:
                raise UserError("--cross-layer trains one transcoder over every layer: give --hooks and --target-hooks "
                                "(one pair per layer), without --dictionaries")
            if self.architecture not in ("topk", "standard", "jumprelu"):
                raise UserError(f"--cross-layer: the architecture is topk, standard or jumprelu, not {self.architecture!r}")
            if self.feature_shards > 1:
                raise UserError("--feature-shards: a cross-layer transcoder is not sharded yet (torchrun data "
                                "parallelism works); per-layer transcoders are")
            if self.skip_connection or self.unit_norm_decoder or self.resample not in (AUTO, "none"):
                raise UserError("--cross-layer trains without --skip-connection, --unit-norm-decoder and --resample "
                                "(TopK's AuxK revives its dead latents)")

    def auto_resamples(self) -> bool:
        """A cross-layer transcoder is not resampled (`--resample auto` is none for it)."""
        return not self.cross_layer

    def resolved(self, steps: int, d_in: int):
        cfg = super().resolved(steps, d_in)
        return replace(cfg, unit_norm_decoder=False) if self.cross_layer else cfg  # its sparsity term weighs the norm


@dataclass(frozen=True)
class HarvestConfig(RunConfig, ModelDataConfig):
    """`saeforge harvest`: write a model's activations to disk once, for many training runs."""

    out: str = inherit(RunConfig, "out", help="cache directory (manifest.json + shard_*.safetensors); rerun to resume")
    seed: int = inherit(RunConfig, "seed", help="seed of the document shuffle")
    tokens: int = opt(2_000_000, "activation tokens to harvest (rounded up to whole contexts)", ge=1)
    split: str = opt("train", "dataset split", choices=("train", "test"))
    dtype: str = opt("float32", "stored dtype", choices=("float32", "bfloat16", "float16"))
    contexts_per_shard: int = opt(256, "contexts per shard file", ge=1)


@dataclass(frozen=True)
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
        """The architecture's setting the grid varies besides size and steps: its coefficient (λ, λ₀), or k."""
        return CONFIGS[self.architecture].coefficient or "k"

    def run_config(self, steps: int, size: int, sparsity: float, device: str) -> TrainConfig:
        """The TrainConfig of one run of the grid (`sparsity`: the value on the sparsity axis)."""
        def part(fraction: float) -> int:
            return max(1, int(steps * fraction + 1e-9))

        axis = self.sparsity_axis()
        return TrainConfig.from_values(dict(
            out="", seed=self.seed, steps=steps, tokens=0, dict_size=size, init=self.init, lr=self.lr,
            architecture=self.architecture, **{axis: int(sparsity) if axis == "k" else float(sparsity)},
            batch_size=self.batch_size, lr_warmup_steps=0, l1_warmup_steps=part(self.l1_warmup_fraction),
            lr_decay_steps=part(self.lr_decay_fraction), log_every=steps, checkpoint_every=0, progress=False,
            device=device, threads=self.threads))


@dataclass(frozen=True)
class HeldOutConfig(Config):
    """What the commands that run a saved dictionary's model on held-out text share."""

    path: str = opt("", "dictionary directory (saeforge or SAELens)", positional=True)
    model: str = opt("", "model (default: the one recorded in cfg.json)")
    hook: str = opt("", "hook point (default: the one recorded in cfg.json)")
    dataset: str = opt("", "dataset whose held-out split to use (default: the recorded one, else embedded)")
    contexts_per_pass: int = inherit(ModelDataConfig, "contexts_per_pass")
    device: str = inherit(RunConfig, "device")
    progress: bool = inherit(RunConfig, "progress")


@dataclass(frozen=True)
class EvalConfig(HeldOutConfig):
    """`saeforge eval`: CE loss recovered, explained variance, L0 of a saved dictionary; with
    --interp, the interpretability suite (evaluation/interp.py)."""

    more: tuple[str, ...] = opt((), "more dictionaries of the same model, hook and shape (other seeds): each is "
                                "evaluated, and with --interp their stability across seeds is reported",
                                positional=True)
    tokens: int = opt(65536, "held-out tokens to evaluate on", ge=1)
    interp: bool = opt(False, "also run the interpretability suite on labelled Python (k-sparse probing against the "
                       "model and an untrained control, per-latent labels; stability across several dictionaries)")
    interp_tokens: int = opt(32768, "labelled held-out tokens for --interp", ge=256)
    stability: bool = opt(False, "require several dictionaries and report their stability across seeds (PW-MCC)")
    together: bool = opt(False, "splice every dictionary given into the model at once, each at its own hooks (a "
                         "replacement model: e.g. a transcoder per layer): its CE loss recovered and KL, and each "
                         "dictionary's own figures")
    out: str = opt("", "with --interp: write interp.json (every figure, each latent's label) and interp.png here")
    seed: int = opt(0, "seed of --interp's document windows, probe samples and control", ge=0)

    def validate(self) -> None:
        super().validate()
        if self.out and not self.interp:
            raise UserError("--out is where --interp writes interp.json and interp.png: give --interp too")
        if self.stability and not self.more:
            raise UserError("--stability compares dictionaries trained with different seeds: give two or more "
                            "directories")


@dataclass(frozen=True)
class InspectConfig(HeldOutConfig):
    """`saeforge inspect`: an HTML feature browser of a saved dictionary."""

    out: str = opt("", "report directory (index.html, density.png, features.png)")
    features: int = opt(32, "how many alive features to study, spread over the firing frequencies", ge=1)
    tokens: int = opt(32768, "held-out tokens to run", ge=1)
    top_k: int = opt(10, "top-activating contexts per feature", ge=1)
    labels: bool = opt(True, "label each feature with its best Python label by F1 (tokenize / ast) when the "
                       "dataset is Python source; otherwise the browser shows none")
    layer: int = opt(0, "a cross-layer transcoder: the layer whose features to show (they read that layer and "
                     "write it and every later one; their token effects are of the sum)", ge=0)

    def validate(self) -> None:
        super().validate()
        if not self.out:
            raise UserError("--out is required: the report directory")


def changed_defaults(cls: type, base: type = TrainConfig) -> dict[str, Any]:
    """The defaults `cls` gives its inherited options that differ from `base`'s (docs print them)."""
    ours, theirs = cls.options(), base.options()
    return {k: show(o.default) for k, o in ours.items() if k in theirs and o.default != theirs[k].default}


@dataclass(frozen=True)
class ExportConfig(Config):
    """`saeforge export`: saved transcoders written in another library's layout (dictionary/formats.py)."""

    paths: tuple[str, ...] = opt((), "transcoder directories, one per layer, or the --out of a pass that trained "
                                 "them (its dictionaries are read)", positional=True)
    out: str = opt("", "directory to write: config.yaml and layer_{i}.safetensors")
    format: str = opt("circuit-tracer", "the layout: circuit-tracer (its per-layer transcoder set)",
                      choices=("circuit-tracer",))
    scan: str = opt("", "circuit-tracer's scan name (default: the model name the transcoders record)")

