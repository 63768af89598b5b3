"""The synthetic ground-truth benchmark under the protocol (docs/protocol.md): saeforge against
SAELens's trainer at matched L0, each tuned the same way; writes docs/benchmark.md from
docs/benchmark.jsonl.

    python scripts/reproduce/reproduce_benchmark.py [--archs topk standard ...] [--l0s 8 16 32]
        [--seeds 0 1 2] [--steps 1000] [--methods saeforge SAELens SAELens+mod]
        [--out runs/benchmark] [--render-only]

The model (built and saved by SAELens's `SyntheticModel`): d 128, 1,024 features, Zipf firing
(exponent 0.5, 0.4 … 0.005), a hierarchy (64 trees, branching 3, depth 2, half the parents with
mutually exclusive children, probabilities compensated), low-rank correlation (rank 16),
magnitudes 1 ± 0.2, a bias of norm 1; true L0 ≈ 16.6.

Methods, each at --steps × 1,024 samples, batch 1,024, Adam, the lr decayed linearly to 0 over the
second half (the same schedule for both libraries):
- **saeforge**: `saeforge toy --synthetic-model DIR` with its defaults (init mod; AuxK where the
  architecture has it, no resampling; a free decoder norm for ReLU + L1 and JumpReLU, a unit-norm one
  for the k-architectures; ReLU + L1's and JumpReLU's gradient norm clipped at 1.0: methods-synthetic.md), only --lr
  and the sparsity knob set;
- **SAELens**: SAELens's `train_toy_sae` on the model's own generator (its defaults otherwise);
- **SAELens+mod**: the same SAELens trainer started from saeforge's informed init (mod, computed
  on fresh samples of the model): the init's effect apart from the trainer's.

Protocol (saeforge.evaluation.protocol): for each architecture and method, the lr is chosen from
{3e-4, 1e-3, 3e-3, 1e-2} by validation MCC at the middle target L0 and the tuning seed; at each
target L0 the sparsity knob is calibrated on validation (k = the target for the k-architectures;
λ / λ₀ by search otherwise); then every seed is trained at the chosen settings and scored on the
test split. Validation: 20,000 samples from one reserved stream; test: 100,000 from another;
neither is trained on. Every run is a row of docs/benchmark.jsonl; the tables and the figure are
rendered from that file alone (`render`), and tests/test_protocol.py checks the document matches.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from saeforge.evaluation.protocol import (LRS, Protocol, Results, calibrate, choose, fmt_interval,  # noqa: E402
                                          matched, mean_interval, paired, table)

ARCHS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka")
K_ARCHS = ("topk", "batchtopk", "matryoshka")
METHODS = ("saeforge", "SAELens", "SAELens+mod")
# where each library's sparsity search starts (earlier probes on this model); the exponent damps it
START = {("saeforge", "standard"): 0.5, ("saeforge", "jumprelu"): 0.1, ("SAELens", "standard"): 1.0,
         ("SAELens", "jumprelu"): 0.02}
EXPONENT = {"standard": 0.7, "jumprelu": 1.0}
MATRYOSHKA = [128, 512, 1024]
VALIDATION, TEST = 3 * 10**9, 2 * 10**9  # the reserved streams (steps −first, −first−1, …) of each split
SPLIT_SAMPLES = {"validation": 20_000, "test": 100_000}
KEY = ("arch", "method", "lr", "knob", "seed", "steps", "split")
METRICS = (("mcc", "MCC"), ("f1", "F1"), ("absorption", "absorption"), ("explained_variance", "EV"),
           ("l0", "L0"), ("dead_latents", "dead"))


def run_dir(out: Path, arch: str, method: str, lr: float, knob: float, seed: int, steps: int) -> Path:
    name = "".join(c if c.isalnum() or c in "+-." else "_" for c in method)
    return out / "protocol" / f"{name}-{arch}-lr{lr:g}-knob{knob:.5g}-seed{seed}-steps{steps}"


def train_saeforge(model_dir: Path, arch: str, lr: float, knob: float, seed: int, steps: int, path: Path,
                   extra: list[str] = ()) -> None:
    from saeforge.cli import main as saeforge_main

    flags = ["--k", str(int(knob))] if arch in K_ARCHS else \
        [{"standard": "--l1-coefficient", "jumprelu": "--l0-coefficient"}[arch], f"{knob:.5g}"]
    if arch == "matryoshka":
        flags += ["--matryoshka-sizes", ",".join(map(str, MATRYOSHKA))]
    args = ["toy", "--synthetic-model", str(model_dir), "--architecture", arch, "--seed", str(seed), "--steps",
            str(steps), "--batch-size", "1024", "--lr", f"{lr:g}", "--target-mmcs", "0", "--eval-samples", "0",
            "--out", str(path), "--no-progress", *flags, *extra]
    if saeforge_main(args):
        sys.exit(f"failed: saeforge {' '.join(args)}")


def informed_start(model_dir: Path, seed: int) -> SimpleNamespace:
    """saeforge's informed init (mod), as `saeforge toy` computes it, on fresh samples of the model."""
    import torch

    from saeforge.dictionary.init import initialize, sample_size
    from saeforge.sources.synthetic import SyntheticData

    data = SyntheticData.read_saelens(model_dir)
    d, F = data.d_model, 1024
    sae = SimpleNamespace(d_in=d, d_sae=F, W_dec=torch.zeros(F, d), W_enc=torch.zeros(d, F), b_enc=torch.zeros(F),
                          b_dec=torch.zeros(d), metadata={})
    initialize(sae, "mod", seed=seed, sample=data.fresh(sample_size("mod", F, 0.0), 1))
    return sae


def train_saelens(model, model_dir: Path, arch: str, lr: float, knob: float, seed: int, steps: int, path: Path,
                  start: str | None) -> None:
    import sae_lens
    import torch
    from sae_lens.synthetic import train_toy_sae

    common = dict(d_in=128, d_sae=1024)
    make = {"standard": lambda: sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(**common, l1_coefficient=knob)),
            "topk": lambda: sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(**common, k=int(knob))),
            "batchtopk": lambda: sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(**common, k=int(knob))),
            "jumprelu": lambda: sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(**common, l0_coefficient=knob)),
            "matryoshka": lambda: sae_lens.MatryoshkaBatchTopKTrainingSAE(sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
                **common, k=int(knob), matryoshka_widths=MATRYOSHKA))}[arch]
    torch.manual_seed(seed)
    sae = make()
    t0 = time.perf_counter()
    if start == "mod":
        init = informed_start(model_dir, seed)
        with torch.no_grad():
            sae.W_dec.copy_(init.W_dec)
            sae.W_enc.copy_(init.W_enc)
            sae.b_enc.zero_()
            sae.b_dec.zero_()
    train_toy_sae(sae, model.feature_dict, model.activation_generator, training_samples=steps * 1024, batch_size=1024,
                  lr=lr, lr_decay_steps=steps // 2)
    wall = time.perf_counter() - t0
    sae.save_inference_model(str(path))  # BatchTopK / Matryoshka: as JumpReLU with the threshold
    (path / "wall.json").write_text(json.dumps({"wall_s": wall}))


def build_model(path: Path):
    from sae_lens.synthetic import (HierarchyConfig, LowRankCorrelationConfig, SyntheticModel, SyntheticModelConfig,
                                    ZipfianFiringProbabilityConfig)
    if not (path / "synthetic_model.safetensors").exists():
        cfg = SyntheticModelConfig(
            num_features=1024, hidden_dim=128,
            firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=0.005),
            hierarchy=HierarchyConfig(total_root_nodes=64, branching_factor=3, max_depth=2,
                                      mutually_exclusive_portion=0.5, compensate_probabilities=True),
            correlation=LowRankCorrelationConfig(rank=16, correlation_scale=0.075),
            std_firing_magnitudes=0.2, mean_firing_magnitudes=1.0, bias=1.0, seed=1234)  # not a training seed
        SyntheticModel(cfg).save(path)
    return SyntheticModel.load_from_disk(path)


class Bench:
    """Trains (or finds) a run and scores it on a split; every score is a results row."""

    def __init__(self, out: Path, results: Results, steps: int, flags: dict[str, list[str]] | None = None):
        """`flags`: extra `saeforge toy` flags of each saeforge variant (a method named saeforge…)."""
        self.out, self.results, self.steps, self.flags = out, results, steps, flags or {}
        self.model_dir = out / "model"
        self.model = build_model(self.model_dir)
        from saeforge.sources.synthetic import SyntheticData

        self.data = SyntheticData.read_saelens(self.model_dir)

    def score(self, arch: str, method: str, lr: float, knob: float, seed: int, split: str,
              target: float | None = None) -> dict:
        key = dict(arch=arch, method=method, lr=lr, knob=knob, seed=seed, steps=self.steps, split=split)
        return self.results.cached(lambda: {**self._run(**key), "target_l0": target}, **key)

    def _run(self, arch, method, lr, knob, seed, steps, split) -> dict:
        import saeforge
        from sae_lens import SAE

        from saeforge.sources.synthetic import recovery

        path = run_dir(self.out, arch, method, lr, knob, seed, steps)
        ours = method.startswith("saeforge")
        done = path / ("summary.json" if ours else "wall.json")
        if not done.exists() and ours:
            train_saeforge(self.model_dir, arch, lr, knob, seed, steps, path, self.flags.get(method, []))
        elif not done.exists():
            train_saelens(self.model, self.model_dir, arch, lr, knob, seed, steps, path,
                          "mod" if method == "SAELens+mod" else None)
        times = {k: v for k, v in json.loads(done.read_text()).items() if k in ("wall_s", "init_s")}
        sae = saeforge.load(path) if ours else SAE.load_from_disk(str(path))
        m = recovery(sae, self.data, SPLIT_SAMPLES[split], first=VALIDATION if split == "validation" else TEST)
        row = {**times, **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
        print(json.dumps({"arch": arch, "method": method, "lr": lr, "knob": knob, "seed": seed, "split": split,
                          **{k: round(row[k], 4) for k in ("mcc", "f1", "l0", "absorption")}}), flush=True)
        return row

    def knob(self, arch: str, method: str, lr: float, target: float, p: Protocol) -> float:
        if arch in K_ARCHS:
            return float(target)
        lib = "SAELens" if method.startswith("SAELens") else "saeforge"
        found, _ = calibrate(lambda c: self.score(arch, method, lr, float(f"{c:.5g}"), p.tune_seed, "validation"),
                             START[lib, arch], target, tolerance=p.l0_tolerance, tries=p.calibration_tries,
                             exponent=EXPONENT[arch])
        return float(f"{found:.5g}")

    def method(self, arch: str, method: str, p: Protocol) -> None:
        mid = sorted(p.target_l0s)[len(p.target_l0s) // 2]
        tried = []
        for lr in p.lrs:
            k = self.knob(arch, method, lr, mid, p)
            tried.append(self.score(arch, method, lr, k, p.tune_seed, "validation"))
        # an lr whose calibration missed the target is compared only if none reached it
        lr = choose([r for r in tried if matched(r["l0"], mid, p.l0_tolerance)] or tried, "mcc")["lr"]
        for target in p.target_l0s:
            k = self.knob(arch, method, lr, target, p)
            for seed in p.seeds:
                self.score(arch, method, lr, k, seed, "test", target)


# ---- rendering: from the rows alone --------------------------------------------------------------

def chosen(rows: list[dict], arch: str, method: str) -> dict[float, list[dict]]:
    """The test rows per target L0 (each carries the lr and knob chosen for it)."""
    out: dict[float, list[dict]] = {}
    for r in rows:
        if r["arch"] == arch and r["method"] == method and r["split"] == "test":
            out.setdefault(r["target_l0"], []).append(r)
    return dict(sorted(out.items()))


def render(rows: list[dict], protocol: Protocol, steps: int, cmd: str) -> str:
    archs = [a for a in ARCHS if any(r["arch"] == a for r in rows)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    L = ["# The synthetic ground-truth benchmark, under the protocol", "",
         f"Generated by `{cmd}` from [benchmark.jsonl](benchmark.jsonl) (one row per run and split); the rules are "
         "[protocol.md](protocol.md)'s and the script's docstring says what each method is.", "",
         f"Budget: {steps:,} steps × 1,024 samples for every run. Each method chose its lr from "
         f"{{{', '.join(f'{x:g}' for x in protocol.lrs)}}} by validation MCC at L0 {sorted(protocol.target_l0s)[len(protocol.target_l0s) // 2]:g} "
         "(seed 0), its sparsity knob was calibrated on validation at each target L0, and each figure below is the "
         f"mean over seeds {list(protocol.seeds)} on the test split (100,000 samples) with its 95% t-interval.", ""]
    summary = []
    for arch in archs:
        L += [f"## {arch}", ""]
        body = []
        per = {}
        for method in methods:
            for target, rs in chosen(rows, arch, method).items():
                lr, knob = rs[0]["lr"], rs[0]["knob"]
                per[method, target] = {r["seed"]: r for r in rs}
                cells = [fmt_interval(*mean_interval([r[m] for r in rs]), spec=".1f" if m in ("l0", "dead_latents")
                                      else ".3f") for m, _ in METRICS]
                at = matched(statistics.fmean(r["l0"] for r in rs), target, protocol.l0_tolerance)
                body.append([method, f"{target:g}", f"{lr:g}", f"{knob:g}", len(rs), "yes" if at else "**no**", *cells])
        L += table(["method", "target L0", "lr", "knob", "seeds", "L0 at target", *(n for _, n in METRICS)], body) + [""]
        for target in protocol.target_l0s:
            if ("saeforge", target) in per and ("SAELens", target) in per:
                a, b = per["SAELens", target], per["saeforge", target]
                for m, name in METRICS[:3]:
                    d = paired({s: r[m] for s, r in a.items()}, {s: r[m] for s, r in b.items()},
                               higher_is_better=m != "absorption")
                    summary.append([arch, f"{target:g}", name, fmt_interval(d["difference"], *d["interval"]),
                                    d["seeds"], {"helps": "saeforge ahead", "hurts": "saeforge behind"}.get(
                                        d["verdict"], d["verdict"])])
            if ("SAELens+mod", target) in per and ("SAELens", target) in per:
                a, b = per["SAELens", target], per["SAELens+mod", target]
                for m, name in METRICS[:3]:
                    d = paired({s: r[m] for s, r in a.items()}, {s: r[m] for s, r in b.items()},
                               higher_is_better=m != "absorption")
                    summary.append([f"{arch}: SAELens+mod − SAELens", f"{target:g}", name,
                                    fmt_interval(d["difference"], *d["interval"]), d["seeds"],
                                    {"helps": "the init helps", "hurts": "the init hurts"}.get(d["verdict"], d["verdict"])])
        val = [r for r in rows if r["arch"] == arch and r["split"] == "validation" and r["seed"] == protocol.tune_seed]
        if val:
            L += ["Validation runs behind the choices (tuning seed): "
                  + "; ".join(f"{m} lr {lr:g}: " + ", ".join(f"knob {r['knob']:g} → L0 {r['l0']:.1f} MCC {r['mcc']:.3f}"
                                                          for r in val if r["method"] == m and r["lr"] == lr)
                              for m in methods for lr in protocol.lrs
                              if any(r["method"] == m and r["lr"] == lr for r in val)) + ".", ""]
    if summary:
        ours = [r for r in summary if ":" not in r[0]]
        tally = []
        for name in ("MCC", "F1", "absorption"):
            rs = [r for r in ours if r[2] == name]
            tally.append(f"{name}: ahead in {sum(r[5] == 'saeforge ahead' for r in rs)}, behind in "
                         f"{sum(r[5] == 'saeforge behind' for r in rs)}, no difference in "
                         f"{sum(r[5] == 'no difference' for r in rs)} of {len(rs)}")
        # where saeforge's absorption is behind, is it the init? (SAELens's own trainer from saeforge's init)
        behind = [(r[0], r[1]) for r in ours if r[2] == "absorption" and r[5] == "saeforge behind"]
        init_verdict = {(r[0].split(":")[0], r[1], r[2]): r[5] for r in summary if r[0].endswith("SAELens+mod − SAELens")}
        also = [c for c in behind if init_verdict.get((*c, "absorption")) == "the init hurts"]
        mcc = sum(init_verdict.get((*c, "MCC")) == "the init helps" for c in also)
        why = (f" In {len(also)} of the {len(behind)} cells where saeforge's absorption is behind, SAELens's own trainer "
               "started from saeforge's init is behind its default start on absorption too, and in "
               f"{mcc} of those {len(also)} the same init raises SAELens's MCC: the informed init trades absorption for "
               "recovery." if behind and any((*c, "absorption") in init_verdict for c in behind) else "")
        L = L[:6] + ["## saeforge − SAELens, paired by seed", "",
                     "Over the (architecture, target L0) cells measured, saeforge against SAELens — " + "; ".join(tally)
                     + "." + why, "",
                     "Each row is a difference paired by seed, B − A, with its 95% t-interval: saeforge − SAELens "
                     "(both tuned alike), and SAELens's own trainer started from saeforge's informed init − SAELens "
                     "(the init's effect apart from the trainer). Positive is B ahead, except for absorption, where "
                     "less is better; a verdict is given only when the interval excludes 0.", ""] \
            + table(["architecture", "target L0", "metric", "difference [95%]", "seeds", "verdict"], summary) + [""] + L[6:]
    missing = [a for a in ARCHS if a not in archs]
    if missing:
        L[6:6] = [f"Architectures with rows so far: {', '.join(archs)} (a table shows only the targets finished); "
                  "not yet rerun under the protocol: "
                  f"{', '.join(missing)}.", ""]
    L += ["![MCC and F1 against L0](benchmark-frontier.png)", "", DEFINITIONS, ""]
    return "\n".join(L)


def plot(rows: list[dict], protocol: Protocol, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in ARCHS if any(r["arch"] == a for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (m, name) in zip(axes, METRICS[:3]):
        for i, arch in enumerate(archs):
            for method, style in (("saeforge", "-o"), ("SAELens", "--s"), ("SAELens+mod", ":^")):
                pts = []
                for target, rs in chosen(rows, arch, method).items():
                    pts.append((statistics.fmean(r["l0"] for r in rs), *mean_interval([r[m] for r in rs])))
                if pts:
                    x, y, lo, hi = zip(*pts)
                    ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]]
                                if len(pts) and not any(v != v for v in lo) else None, fmt=style, color=f"C{i}",
                                label=f"{method} {arch}", ms=4, capsize=2)
        ax.set(xlabel="L0", title=name, xscale="log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DEFINITIONS = """## Definitions (saeforge.sources.synthetic.recovery, saeforge.evaluation.metrics)

- **MCC**: |cos| between every decoder row and every true feature; the one-to-one matching that
  maximizes its sum (Hungarian, `scipy.optimize.linear_sum_assignment`); the mean |cos| over the
  matched pairs. As SAELens's `mean_correlation_coefficient`.
- **F1**: each latent is a classifier of its best-matching true feature's firing (fires:
  activation ≠ 0; true feature fires: coefficient > 0); per-latent F1 (0 where undefined), averaged
  over all latents (dead ones count 0). As SAELens's `ClassificationMetricsCalculator`.
- **Absorption**: over every (parent, child) pair of the hierarchy and every sample where both
  fire, with m(·) the MCC matching's latent of a feature: the share of such events where m(parent)
  is silent while m(child) fires and m(child)'s decoder row has cosine ≥ 0.3 with the parent.
- **EV**: 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²). **L0**: mean non-zero latents per sample; **dead**:
  latents that never fired on the split's samples."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--l0s", type=float, nargs="+", default=[8, 16, 32])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default="runs/benchmark")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true", help="only render docs/benchmark.md from the results file")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    p = Protocol(lrs=tuple(a.lrs), target_l0s=tuple(a.l0s), seeds=tuple(a.seeds))
    docs = Path(a.docs)
    results = Results(docs / "benchmark.jsonl", KEY)
    if not a.render_only:
        bench = Bench(Path(a.out), results, a.steps)
        for arch in a.archs:
            for method in a.methods:
                bench.method(arch, method, p)
    rows = [r for r in results.rows if r["steps"] == a.steps]
    (docs / "benchmark.md").write_text(render(rows, p, a.steps, command(p, a.steps)))
    plot(rows, p, docs / "benchmark-frontier.png")
    print(f"wrote {docs / 'benchmark.md'}")


def command(p: Protocol, steps: int) -> str:
    return (f"python scripts/reproduce/reproduce_benchmark.py --l0s {' '.join(f'{x:g}' for x in p.target_l0s)} "
            f"--seeds {' '.join(map(str, p.seeds))} --lrs {' '.join(f'{x:g}' for x in p.lrs)} --steps {steps}")


if __name__ == "__main__":
    main()
