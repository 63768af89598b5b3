"""The SAE interface: what an architecture provides, and all the rest of saeforge relies on.

Every architecture keeps SAELens's four tensors W_enc_DF, b_enc_F, W_dec_FE, b_dec_E (B batch,
D d_in, F d_sae, E d_out: d_in for an autoencoder) and the decoder x̂ = f @ W_dec + b_dec; a
transcoder (d_out given) reconstructs a target y_BE of another hook from x_BD, does not centre its
input, and may add a skip connection x @ W_skip_DE. An architecture defines

    encode(x_BD) -> f_BF                 its activation function (inference)
    loss(x_BD, coefficient, dead_F, y_BE) -> Loss   total, mse and sparsity terms, with autograd
    step(x_BD, coefficient, dead_F, y_BE) -> StepOutput   loss + gradients in .grad (default: autograd
                                         on `loss`; an architecture overrides it with a fast step)
    architecture                         its name (`--architecture`)
    Config                               its settings (an `ArchitectureConfig`: k, thresholds, its
                                         sparsity coefficient, default lr and start, cfg.json fields)
    uses_dead_mask                       whether its loss needs the dead latents (AuxK)

An instance holds its resolved settings as `sae.cfg`; `saved_config` / `from_saved_config` write
and read the fields its Config names in `saved`, so cfg.json and the flags share one declaration.
The trainer, init, resampling, save/load, evals, sweep and inspect use this interface only;
`architectures/` holds the implementations, one file each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, get_type_hints

import torch
from torch import nn

from saeforge.errors import UserError
from saeforge.options import Config, base_type


@dataclass(frozen=True)
class ArchitectureConfig(Config):
    """An architecture's own settings, declared next to its code. Its fields are flags of the
    training commands (their help names the architectures that have them), keys of config files
    and --dictionaries specs, and keywords of saeforge.train; the class variables are what `auto`
    becomes for this architecture and which fields cfg.json records."""

    default_lr: ClassVar[float] = 1e-2  # --lr auto
    default_unit_norm_decoder: ClassVar[bool] = False  # --unit-norm-decoder auto
    default_encoder_scale: ClassVar[float] = 1.0  # --encoder-scale auto
    coefficient: ClassVar[str | None] = None  # the field weighing the sparsity term (ramped by --l1-warmup-steps)
    saved: ClassVar[tuple[str, ...]] = ()  # fields written to cfg.json and read back
    shardable: ClassVar[bool] = True  # whether --feature-shards can split its latents over ranks

    def resolved(self, d_in: int, d_sae: int) -> "ArchitectureConfig":
        """These settings with their `auto` values fixed for this shape, checked against it."""
        return self

    def revives_dead_latents(self) -> bool:
        """Whether its loss itself brings dead latents back (AuxK): `--resample auto` is then off."""
        return False

    def coefficient_value(self) -> float:
        return float(getattr(self, self.coefficient)) if self.coefficient else 0.0

    def saved_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.saved}

    @classmethod
    def from_saved(cls, cfg: dict[str, Any], where: str, architecture: str) -> "ArchitectureConfig":
        """The settings a cfg.json records (the `saved` fields, each required and type-checked)."""
        hints, values = get_type_hints(cls), {}
        for name in cls.saved:
            typ, _ = base_type(hints[name])
            v = cfg.get(name)
            if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
                raise UserError(f"{where}: a {architecture} dictionary needs {name} as {typ.__name__}, got {v!r}")
            values[name] = v
        out = cls(**values)
        try:
            out.validate()
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        return out


class Loss(NamedTuple):
    total: torch.Tensor  # mse + coefficient · sparsity
    mse: torch.Tensor  # Σ_d (x − x̂)², mean over the batch
    sparsity: torch.Tensor  # the architecture's sparsity penalty (ReLU: Σ_i f_i‖W_dec,i‖), mean over the batch
    f_BF: torch.Tensor  # the codes
    err_BD: torch.Tensor  # x̂ − x


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, on device
    mse: torch.Tensor
    sparsity: torch.Tensor
    f_BF: torch.Tensor | Callable[[], torch.Tensor]  # codes, or how to make them (sparse steps: a CSR matrix, on
    # logging steps only: never a dense [batch, latents] there)
    err_BD: torch.Tensor  # x̂ − x (for explained variance on logging steps)
    feature_sums_F: torch.Tensor  # Σ_b f_bi: > 0 exactly when feature i fired in the batch

    def codes(self, dense: bool = True) -> torch.Tensor:
        """The codes [B, F]; dense=False: as the step made them (a sparse step's CSR matrix)."""
        f = self.f_BF() if callable(self.f_BF) else self.f_BF
        return f.to_dense() if dense and f.layout != torch.strided else f


class SAE(nn.Module):
    architecture: ClassVar[str]
    Config: ClassVar[type[ArchitectureConfig]] = ArchitectureConfig
    saved_as: ClassVar[str] = ""  # cfg.json's `architecture` (SAELens's name); default: `architecture`
    uses_dead_mask: ClassVar[bool] = False
    # Parameters indexed by feature, and the axis of the feature index (resampling renews slices).
    feature_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "b_enc": 0, "W_dec": 0}

    def __init__(self, d_in: int, d_sae: int, cfg: ArchitectureConfig | None = None, *, d_out: int | None = None,
                 skip: bool = False, device: Any = None, dtype: torch.dtype = torch.float32, **settings: Any):
        """`cfg`: the architecture's settings (or given as keywords, `settings`), resolved for this shape.
        `d_out`: a transcoder, reading inputs of width d_in and reconstructing targets of width d_out (its
        input is not centred by b_dec, as SAELens's transcoders); `skip`: a transcoder with a linear skip
        connection W_skip [d_in, d_out] added to its output."""
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.transcoder = d_out is not None
        self.d_out = d_in if d_out is None else d_out
        if skip and not self.transcoder:
            raise UserError("a skip connection needs a transcoder (give d_out)")
        if cfg is None:
            cfg = self.Config(**settings)
            cfg.validate()
        elif settings:
            raise TypeError("give the settings as cfg or as keywords, not both")
        self.cfg = cfg.resolved(d_in, d_sae)
        kw = dict(device=device, dtype=dtype)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, self.d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out, **kw))
        self.W_skip = nn.Parameter(torch.zeros(d_in, self.d_out, **kw)) if skip else None
        # Free-form facts about the dictionary (model, hook, init, tokens seen…), saved in cfg.json.
        self.metadata: dict[str, Any] = {}

    # ---------------------------------------------------------------- what an architecture defines
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> Loss:
        """`y_BE`: a transcoder's targets (None: the input is the target)."""
        raise NotImplementedError

    def renewed(self, idx_K: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values of the architecture's own feature-indexed parameters for features renewed by
        resampling (e.g. JumpReLU's initial threshold); the trainer writes them with the rest."""
        return {}

    @property
    def coefficient(self) -> str | None:
        """The name of the setting that weighs the sparsity term (None: sparsity comes from k)."""
        return self.cfg.coefficient

    def saved_config(self) -> dict[str, Any]:
        """cfg.json's `architecture` (SAELens's name for what is saved) and the architecture's own
        fields (besides d_in, d_sae, dtype)."""
        return {"architecture": self.saved_as or self.architecture, **self.cfg.saved_fields()}

    @classmethod
    def from_saved_config(cls, cfg: dict[str, Any], where: str) -> ArchitectureConfig:
        """The settings of a cfg.json; raise UserError naming `where` if it cannot be loaded."""
        return cls.Config.from_saved(cfg, where, cls.saved_as or cls.architecture)

    # ---------------------------------------------------------------- shared
    shards: Any = None  # feature_shards.FeatureShards when this instance holds one shard of the features

    def centered(self, x_BD: torch.Tensor) -> torch.Tensor:
        """x − b_dec, the encoder's input (sharded: its b_dec gradient is summed over the shards); a
        transcoder's input as it is."""
        if self.transcoder:
            return x_BD if self.shards is None else self.shards.copy(x_BD)
        return x_BD - self.b_dec if self.shards is None else self.shards.copy(x_BD - self.b_dec)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch's inputs and targets: an autoencoder's rows are its inputs (no separate
        target); a transcoder's hold input and target side by side, [x_BD | y_BE]."""
        if not self.transcoder:
            return batch, None
        return batch[..., :self.d_in], batch[..., self.d_in:]

    def target(self, x_BD: torch.Tensor, y_BE: torch.Tensor | None) -> torch.Tensor:
        """What the output should match: a transcoder's targets, an autoencoder's input."""
        if y_BE is None:
            if self.transcoder:
                raise ValueError("a transcoder's loss needs its targets y_BE")
            return x_BD
        return y_BE

    def skip_term(self, x_BD: torch.Tensor) -> torch.Tensor | None:
        """x @ W_skip for a skip transcoder, else None."""
        return None if self.W_skip is None else x_BD @ self.W_skip

    def across(self, t: torch.Tensor) -> torch.Tensor:
        """A per-feature sum (a partial reconstruction, a penalty) completed over the shards."""
        return t if self.shards is None else self.shards.sum(t)

    def decode(self, f_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """f @ W_dec + b_dec, plus x @ W_skip for a skip transcoder (which then needs its input x)."""
        out = self.across(f_BF @ self.W_dec) + self.b_dec
        if self.W_skip is not None:
            if x_BD is None:
                raise ValueError("a skip transcoder decodes with its input: decode(f, x)")
            out = out + x_BD @ self.W_skip
        return out

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        x2_BD = x_BD.reshape(-1, self.d_in)  # any leading dimensions (e.g. [batch, pos, d_in])
        return self.decode(self.codes_of(x2_BD), x2_BD).reshape(*x_BD.shape[:-1], self.d_out)

    def codes_of(self, x_BD: torch.Tensor) -> torch.Tensor:
        """`encode`, or where a dense [inputs, latents] would be too large, the same codes as a CSR matrix
        (every architecture, block by block over the latents: blocks.py): what `forward` and the evals decode."""
        return self.encode(x_BD)

    def step(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> StepOutput:
        """Loss and gradients (written to .grad) by autograd; architectures may override it."""
        for p in self.parameters():
            p.grad = None
        x_BD = x_BD.to(self.W_enc.dtype)
        y_BE = None if y_BE is None else y_BE.to(self.W_enc.dtype)
        with torch.enable_grad():
            out = self.loss(x_BD, coefficient, dead_F, y_BE)
            out.total.backward()
        f_BF = out.f_BF.detach()
        return StepOutput(out.total.detach(), out.mse.detach(), out.sparsity.detach(), f_BF, out.err_BD.detach(),
                          f_BF.sum(0))

    @classmethod
    def fold_saved(cls, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Rewrite loaded tensors (in place in the dict) for settings of cfg.json that saeforge
        folds into the weights; none here."""

    def folded(self, input_scale: float, output_scale: float | None = None) -> dict[str, torch.Tensor]:
        """The weights for raw inputs when training saw inputs × s (and a transcoder's targets × t;
        t = s otherwise): W_enc·s, W_dec/t, b_dec/t, W_skip·s/t (encode(s·x) and decode(f)/t are
        unchanged); other tensors as they are."""
        s = float(input_scale)
        t = s if output_scale is None else float(output_scale)
        w = {k: v.detach() for k, v in self.state_dict().items()}
        w["W_enc"], w["W_dec"], w["b_dec"] = w["W_enc"] * s, w["W_dec"] / t, w["b_dec"] / t
        if "W_skip" in w:
            w["W_skip"] = w["W_skip"] * (s / t)
        return w

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Put every decoder row back on the unit sphere (after an optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Keep only the gradient tangent to each (unit) decoder row, so Adam moves along the sphere."""
        g_FD, w_FD = self.W_dec.grad, self.W_dec
        if g_FD is not None:  # g − (g·w) w in place, a block of rows at a time: no [F, D] temporary
            for g, w in zip(g_FD.split(16384), w_FD.split(16384)):
                g.addcmul_((g * w).sum(-1, keepdim=True), w, value=-1)

    def extra_repr(self) -> str:
        out = f"architecture={self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}"
        if self.transcoder:
            out += f", d_out={self.d_out}, skip={self.W_skip is not None}"
        return out


def set_grads(pairs) -> None:
    """Write hand-computed gradients into `.grad` (the fast steps): (parameter, gradient) pairs. A fresh
    gradient is made contiguous: torch 2.13's fused Adam on the CPU misreads a transposed one (W_enc's
    gradient comes as [F, D]ᵀ), updating the wrong entries."""
    for p, g in pairs:
        if p.grad is None:
            p.grad = g.to(p.dtype).contiguous()
        else:
            p.grad.copy_(g)


# ---- shared by the fast steps: where a transcoder differs from an autoencoder
def output(sae: SAE, recon_BE: torch.Tensor, x_BD: torch.Tensor) -> torch.Tensor:
    """The decoder's output from f @ W_dec (in place): + b_dec, + x @ W_skip for a skip transcoder."""
    recon_BE.add_(sae.b_dec)
    return recon_BE if sae.W_skip is None else recon_BE.addmm_(x_BD, sae.W_skip)


def g_b_dec(sae: SAE, gx_BE: torch.Tensor, g_b_enc_F: torch.Tensor) -> torch.Tensor:
    """b_dec's gradient: Σ_b d/dx̂, minus what flows back through the encoder's input x − b_dec
    (g_b_enc @ W_encᵀ: b_dec is broadcast over the batch) unless the input is not centred (a transcoder)."""
    g = gx_BE.sum(0)
    return g if sae.transcoder else g.sub_(sae.W_enc @ g_b_enc_F)


def skip_grad(sae: SAE, x_BD: torch.Tensor, gx_BE: torch.Tensor) -> tuple:
    """(W_skip, xᵀ @ d/dx̂) for a skip transcoder, nothing otherwise: to add to set_grads' pairs."""
    return () if sae.W_skip is None else ((sae.W_skip, x_BD.t() @ gx_BE),)


def exact(device_type: str):
    """Turn autocast off for what follows a step's bfloat16 products (the selections, the sparse
    products and the sums: float32, as the parameters)."""
    return torch.autocast(device_type, enabled=False)
