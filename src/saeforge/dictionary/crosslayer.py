"""Cross-layer transcoders (CLT; Anthropic's circuit tracing, 2025): an encoder at each layer's MLP
input, and the features of layer i writing into the MLP outputs of layers i, i + 1, …, L − 1.

    f_i = σ(x_i @ W_enc[i] + b_enc[i])                        x_i: layer i's input [B, D]
    ŷ_j = Σ_{i ≤ j} f_i @ W_dec_i[:, j − i] + b_dec[j]        W_dec_i: [F, L − i, E]
    L   = Σ_j ‖ŷ_j − y_j‖² (+ the sparsity term)               mean over the batch

σ is an architecture's, per layer: topk (k per input and layer; AuxK: each layer's dead latents
reconstruct the residual of what they could write), standard (ReLU; λ · Σ f · ‖W_dec_i,f‖, the
norm over every layer a feature writes, as Anthropic's) or jumprelu (θ per latent; the L0 of
DeepMind's estimator). The training rows are every layer's inputs then every layer's targets,
[x_0 | … | x_{L−1} | y_0 | … | y_{L−1}]; to the trainer it is one dictionary of L·F latents
(dead-latent counts, AuxK, logging), trained by autograd (`SAE.step`).

Saved in circuit-tracer's CLT layout (W_enc_{i}.safetensors: W_enc_{i} [F, D], b_enc_{i},
b_dec_{i}, threshold_{i}; W_dec_{i}.safetensors: W_dec_{i} [F, L − i, E]) beside a cfg.json of
saeforge's (`save_clt` / `load_clt`); circuit-tracer reads the ReLU and JumpReLU ones.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeforge.dictionary.architectures import ARCHITECTURES
from saeforge.dictionary.architectures.jumprelu import _JumpReLU, _Step
from saeforge.dictionary.init import initialize
from saeforge.dictionary.sae import SAE, ArchitectureConfig, Loss
from saeforge.errors import UserError
from saeforge.runtime import atomic_save_tensors, atomic_write_json, check_json, read_json, read_tensors

ACTIVATIONS = ("topk", "standard", "jumprelu")
CFG = "cfg.json"


class CrossLayerTranscoder(SAE):
    """n_layers encoders of d_in, each with d_sae latents, writing d_out-wide targets of its own and
    every later layer. To the trainer: d_in, d_sae, d_out are the totals over the layers."""

    architecture = "clt"
    transcoder = True
    W_skip = None

    def __init__(self, n_layers: int, d_in: int, d_sae: int, d_out: int, activation: str = "topk",
                 cfg: ArchitectureConfig | None = None, *, device: Any = None, dtype: torch.dtype = torch.float32,
                 **settings: Any):
        if activation not in ACTIVATIONS:
            raise UserError(f"a cross-layer transcoder's architecture is one of {', '.join(ACTIVATIONS)}; got "
                            f"{activation!r}")
        nn.Module.__init__(self)
        arch = ARCHITECTURES[activation]
        if cfg is None:
            cfg = arch.Config(**settings)
            cfg.validate()
        self.activation, self.n_layers = activation, n_layers
        self.architecture = f"clt/{activation}"  # what a checkpoint records (a resume checks it)
        self.layer_in, self.layer_sae, self.layer_out = d_in, d_sae, d_out
        self.d_in, self.d_sae, self.d_out = n_layers * d_in, n_layers * d_sae, n_layers * d_out
        self.cfg = cfg.resolved(d_in, d_sae)
        self.uses_dead_mask = activation == "topk"
        kw = dict(device=device, dtype=dtype)
        self.W_enc = nn.Parameter(torch.zeros(n_layers, d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(n_layers, d_sae, **kw))
        for i in range(n_layers):
            self.register_parameter(f"W_dec_{i}", nn.Parameter(torch.zeros(d_sae, n_layers - i, d_out, **kw)))
        self.b_dec = nn.Parameter(torch.zeros(n_layers, d_out, **kw))
        if activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((n_layers, d_sae), float(self.cfg.jumprelu_init_threshold), **kw))
        self.metadata: dict[str, Any] = {}

    def decoders(self) -> list[torch.Tensor]:
        return [getattr(self, f"W_dec_{i}") for i in range(self.n_layers)]

    # ---------------------------------------------------------------- the model
    def pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Pre-activations [B, L, F] of the rows' inputs [B, L·D]."""
        x_BLD = x_BD.reshape(len(x_BD), self.n_layers, self.layer_in)
        return torch.einsum("bld,ldf->blf", x_BLD, self.W_enc) + self.b_enc

    def activate(self, pre_BLF: torch.Tensor, train: bool = False, layer: int | None = None) -> torch.Tensor:
        """The architecture's activation of pre-activations [..., F] of every layer ([B, L, F]) or of one
        `layer`'s; `train`: JumpReLU through its estimator."""
        if self.activation == "standard":
            return pre_BLF.relu()
        if self.activation == "jumprelu":
            theta = self.threshold if layer is None else self.threshold[layer]
            if train:
                return _JumpReLU.apply(pre_BLF, theta, self.cfg.jumprelu_bandwidth)
            return pre_BLF.relu() * (pre_BLF > theta)
        vals, idx = pre_BLF.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre_BLF).scatter(-1, idx, vals.relu())

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Codes [B, L·F] (layer i's latents at i·F … (i + 1)·F − 1)."""
        return self.activate(self.pre(x_BD)).reshape(len(x_BD), self.d_sae)

    def decode(self, f_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs [B, L·E] (layer j's at j·E …) from codes [B, L·F]."""
        B, L, E = len(f_BF), self.n_layers, self.layer_out
        f_BLF = f_BF.reshape(B, L, self.layer_sae)
        out = self.b_dec.expand(B, L, E).clone()
        for i, W in enumerate(self.decoders()):
            out[:, i:] += (f_BLF[:, i] @ W.reshape(self.layer_sae, -1)).reshape(B, L - i, E)
        return out.reshape(B, L * E)

    def layer_output(self, f_BLF: list[torch.Tensor], j: int) -> torch.Tensor:
        """ŷ_j from the codes of layers 0 … j (each [..., F]): what splicing needs, layer by layer."""
        out, decoders = self.b_dec[j], self.decoders()
        for i in range(j + 1):
            out = out + f_BLF[i] @ decoders[i][:, j - i]
        return out

    def encode_layer(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Layer i's codes from its input x [..., D]."""
        return self.activate(x @ self.W_enc[i] + self.b_enc[i], layer=i)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BD))

    def loss(self, x_BD: torch.Tensor, coefficient: float, dead_F: torch.Tensor | None = None,
             y_BE: torch.Tensor | None = None) -> Loss:
        y_BE = self.target(x_BD, y_BE)
        pre_BLF = self.pre(x_BD)
        f_BLF = self.activate(pre_BLF, train=True)
        f_BF = f_BLF.reshape(len(x_BD), self.d_sae)
        err_BE = self.decode(f_BF) - y_BE
        mse = err_BE.pow(2).sum(-1).mean()
        if self.activation == "standard":
            norms_LF = torch.stack([W.reshape(self.layer_sae, -1).norm(dim=-1) for W in self.decoders()])
            sparsity = (f_BLF * norms_LF).sum((1, 2)).mean()
        elif self.activation == "jumprelu":
            sparsity = _Step.apply(pre_BLF, self.threshold, self.cfg.jumprelu_bandwidth).sum((1, 2)).mean()
        else:
            sparsity = self.auxk(pre_BLF, err_BE, dead_F)
            coefficient = 1.0
        return Loss(mse + coefficient * sparsity, mse, sparsity, f_BF, err_BE)

    def auxk(self, pre_BLF: torch.Tensor, err_BE: torch.Tensor, dead_F: torch.Tensor | None) -> torch.Tensor:
        """AuxK per layer: the aux_k largest pre-activations among each layer's dead latents
        reconstruct the residual of the outputs they write (TopK's loss, topk.py)."""
        n_dead = 0 if dead_F is None else int(dead_F.sum())
        if not (n_dead and self.cfg.aux_k_coefficient):
            return err_BE.new_zeros(())
        dead_LF = dead_F.reshape(self.n_layers, self.layer_sae)
        k_aux = min(self.cfg.aux_k, int(dead_LF.sum(1).max()))
        masked = pre_BLF.masked_fill(~dead_LF, -torch.inf)
        vals, idx = masked.topk(k_aux, dim=-1)
        a_BLF = torch.zeros_like(pre_BLF).scatter(-1, idx, torch.where(torch.isfinite(vals), vals, 0.0).relu())
        recon_BE = self.decode(a_BLF.reshape(len(pre_BLF), self.d_sae)) - self.b_dec.reshape(-1)
        scale = self.cfg.aux_k_coefficient * min(n_dead / (self.cfg.aux_k * self.n_layers), 1.0)
        return scale * (recon_BE + err_BE.detach()).pow(2).sum(-1).mean()

    # ---------------------------------------------------------------- what the trainer asks of a dictionary
    def target(self, x_BD: torch.Tensor, y_BE: torch.Tensor | None) -> torch.Tensor:
        if y_BE is None:
            raise ValueError("a cross-layer transcoder's loss needs its targets y_BE")
        return y_BE

    def centered(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        raise UserError("a cross-layer transcoder trains with a free decoder norm (its sparsity term weighs it)")

    def remove_parallel_grad_(self) -> None:
        raise UserError("a cross-layer transcoder trains with a free decoder norm (its sparsity term weighs it)")

    def folded(self, input_scale: float | list[float], output_scale: float | list[float] | None = None
               ) -> dict[str, torch.Tensor]:
        """Weights for raw activations: training saw layer i's inputs × s_i and layer j's targets × t_j
        (a number: the same for every layer)."""
        L = self.n_layers
        s = torch.as_tensor(input_scale if isinstance(input_scale, list) else [float(input_scale)] * L)
        t = s if output_scale is None else torch.as_tensor(
            output_scale if isinstance(output_scale, list) else [float(output_scale)] * L)
        s, t = s.to(self.W_enc), t.to(self.W_enc)
        w = {k: v.detach() for k, v in self.state_dict().items()}
        w["W_enc"] = w["W_enc"] * s[:, None, None]
        w["b_dec"] = w["b_dec"] / t[:, None]
        for i in range(L):
            w[f"W_dec_{i}"] = w[f"W_dec_{i}"] / t[i:][None, :, None]
        return w

    @torch.no_grad()
    def layer_view(self, i: int) -> SAE:
        """Layer i's features as a one-layer transcoder: the same encoder and activation, and as decoder
        their total write Σ_j W_dec_i[:, j] (every layer's MLP output adds into the residual stream);
        what inspect shows for a CLT."""
        if not 0 <= i < self.n_layers:
            raise UserError(f"--layer must be in [0, {self.n_layers - 1}] for this {self.n_layers}-layer transcoder, "
                            f"got {i}")
        view = ARCHITECTURES[self.activation](self.layer_in, self.layer_sae, self.cfg, d_out=self.layer_out,
                                              device=self.W_enc.device, dtype=self.W_enc.dtype)
        view.W_enc.copy_(self.W_enc[i])
        view.b_enc.copy_(self.b_enc[i])
        view.W_dec.copy_(self.decoders()[i].sum(1))
        if self.activation == "jumprelu":
            view.threshold.copy_(self.threshold[i])
        view.metadata = {k: v for k, v in self.metadata.items() if k not in ("hook_names", "hook_names_out")}
        hooks, outs = self.metadata.get("hook_names"), self.metadata.get("hook_names_out")
        if hooks and outs:
            view.metadata |= {"hook_name": hooks[i], "hook_name_out": f"{outs[i]} … {outs[-1]}"}
        return view

    def extra_repr(self) -> str:
        return (f"layers={self.n_layers}, activation={self.activation}, d_in={self.layer_in}, d_sae={self.layer_sae} "
                f"per layer, d_out={self.layer_out}")


# ---------------------------------------------------------------- init
@torch.no_grad()
def initialize_clt(clt: CrossLayerTranscoder, method: str, *, seed: int = 0, sample: torch.Tensor | None = None,
                   encoder_scale: float = 1.0) -> None:
    """Each layer's encoder and decoder as a transcoder of that layer's input to the targets of it and
    every later layer is initialized (init.py): the same methods, the pairs (x_i, [y_i … y_{L−1}])."""
    L, D, E, F = clt.n_layers, clt.layer_in, clt.layer_out, clt.layer_sae
    for i in range(L):
        one = ARCHITECTURES["standard"](D, F, d_out=(L - i) * E)
        rows = None
        if sample is not None:
            X, Y = sample[:, :clt.d_in], sample[:, clt.d_in:]
            rows = torch.cat([X[:, i * D:(i + 1) * D], Y[:, i * E:]], 1)
        initialize(one, method, seed=seed * 1_000_003 + i, sample=rows, encoder_scale=encoder_scale)
        clt.W_enc[i].copy_(one.W_enc)
        clt.b_enc[i].copy_(one.b_enc)
        clt.decoders()[i].copy_(one.W_dec.reshape(F, L - i, E))  # unit norm over everything it writes
    clt.b_dec.zero_()
    clt.metadata["init"] = method
    clt.metadata["encoder_scale"] = encoder_scale


# ---------------------------------------------------------------- files
def save_clt(clt: CrossLayerTranscoder, path: str | Path, *, input_scale: float | list[float] = 1.0,
             output_scale: float | list[float] | None = None) -> Path:
    """circuit-tracer's CLT layout (module docstring) and saeforge's cfg.json, for raw activations
    (`input_scale`, `output_scale`: what training multiplied each layer's inputs and targets by;
    a CLT trained by `saeforge train` keeps them per layer in metadata["layer_scales"])."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    scales = clt.metadata.get("layer_scales")
    if scales:
        input_scale, output_scale = scales["inputs"], scales["targets"]
    w = clt.folded(input_scale, output_scale)
    save_id = uuid.uuid4().hex
    for i in range(clt.n_layers):
        enc = {f"W_enc_{i}": w["W_enc"][i].t(), f"b_enc_{i}": w["b_enc"][i], f"b_dec_{i}": w["b_dec"][i]}
        if clt.activation == "jumprelu":
            enc[f"threshold_{i}"] = w["threshold"][i].clamp_min(0)
        atomic_save_tensors(path / f"W_enc_{i}.safetensors", {k: v.float().contiguous().cpu() for k, v in enc.items()},
                            metadata={"saeforge_save_id": save_id})
        atomic_save_tensors(path / f"W_dec_{i}.safetensors", {f"W_dec_{i}": w[f"W_dec_{i}"].float().contiguous().cpu()},
                            metadata={"saeforge_save_id": save_id})
    cfg = {"architecture": "clt", "activation": clt.activation, "n_layers": clt.n_layers, "d_in": clt.layer_in,
           "d_sae": clt.layer_sae, "d_out": clt.layer_out, **clt.cfg.saved_fields(),
           "saeforge": {k: v for k, v in clt.metadata.items() if k != "layer_scales"}
           | {"save_id": save_id, "layer_scales_folded": {"inputs": input_scale, "targets": output_scale}}}
    atomic_write_json(path / CFG, cfg)
    return path


CLT_FIELDS = {"architecture": (str, True), "activation": (str, True), "n_layers": (int, True), "d_in": (int, True),
              "d_sae": (int, True), "d_out": (int, True), "saeforge": (dict, False)}


def is_clt(path: str | Path) -> bool:
    """A saeforge CLT directory, or a circuit-tracer one (its layer files, no cfg.json)."""
    p = Path(path)
    if (p / CFG).is_file():
        return read_json(p / CFG, "the file is corrupt or truncated").get("architecture") == "clt"
    return (p / "W_enc_0.safetensors").is_file() and (p / "W_dec_0.safetensors").is_file()


def _circuit_tracer_cfg(path: Path) -> dict[str, Any]:
    """What a circuit-tracer CLT directory's files say (it has no cfg.json): layers, widths, activation."""
    n = len(list(path.glob("W_enc_*.safetensors")))
    if not all((path / f"W_{kind}_{i}.safetensors").is_file() for i in range(n) for kind in ("enc", "dec")):
        raise UserError(f"{path}: a cross-layer transcoder needs W_enc_i and W_dec_i files for layers 0 … {n - 1}")
    enc = read_tensors(path / "W_enc_0.safetensors", "layer 0's encoder")
    if "W_enc_0" not in enc or "b_dec_0" not in enc:
        raise UserError(f"{path / 'W_enc_0.safetensors'}: missing W_enc_0 or b_dec_0")
    F, D = enc["W_enc_0"].shape
    return {"architecture": "clt", "activation": "jumprelu" if "threshold_0" in enc else "standard", "n_layers": n,
            "d_in": int(D), "d_sae": int(F), "d_out": int(enc["b_dec_0"].shape[0]),
            "saeforge": {"source": f"circuit-tracer {path}"}}


def load_clt(path: str | Path, *, device: str | torch.device = "cpu") -> CrossLayerTranscoder:
    """A saeforge CLT directory, or circuit-tracer's CLT layout as it writes it (ReLU, or JumpReLU where
    the files hold thresholds)."""
    path = Path(path)
    if (path / CFG).is_file():
        cfg = check_json(read_json(path / CFG, "the file is corrupt or truncated"), str(path / CFG), CLT_FIELDS)
    else:
        cfg = _circuit_tracer_cfg(path)
    act = cfg["activation"]
    if act not in ACTIVATIONS:
        raise UserError(f"{path / CFG}: activation {act!r} is not one of {', '.join(ACTIVATIONS)}")
    settings = (ARCHITECTURES[act].from_saved_config(cfg | {"architecture": act}, str(path / CFG))
                if (path / CFG).is_file() else None)
    clt = CrossLayerTranscoder(cfg["n_layers"], cfg["d_in"], cfg["d_sae"], cfg["d_out"], act, settings, device=device)
    L, D, F, E = clt.n_layers, clt.layer_in, clt.layer_sae, clt.layer_out
    with torch.no_grad():
        for i in range(L):
            enc = read_tensors(path / f"W_enc_{i}.safetensors", f"layer {i}'s encoder")
            dec = read_tensors(path / f"W_dec_{i}.safetensors", f"layer {i}'s decoder")
            want = {f"W_enc_{i}": (F, D), f"b_enc_{i}": (F,), f"b_dec_{i}": (E,)} | (
                {f"threshold_{i}": (F,)} if act == "jumprelu" else {})
            for name, t in list(want.items()) + [(f"W_dec_{i}", (F, L - i, E))]:
                got = enc.get(name, dec.get(name))
                if got is None or tuple(got.shape) != t:
                    raise UserError(f"{path}: layer {i}'s {name} is {'missing' if got is None else list(got.shape)}; "
                                    f"cfg.json (n_layers={L}, d_in={D}, d_sae={F}, d_out={E}) needs {list(t)}")
            clt.W_enc[i].copy_(enc[f"W_enc_{i}"].t())
            clt.b_enc[i].copy_(enc[f"b_enc_{i}"])
            clt.b_dec[i].copy_(enc[f"b_dec_{i}"])
            clt.decoders()[i].copy_(dec[f"W_dec_{i}"])
            if act == "jumprelu":
                clt.threshold[i].copy_(enc[f"threshold_{i}"])
    clt.metadata = dict(cfg.get("saeforge") or {})
    return clt


__all__ = ["CrossLayerTranscoder", "initialize_clt", "save_clt", "load_clt", "is_clt"]
