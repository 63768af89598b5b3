"""saeforge's own methods on the synthetic ground-truth benchmark, under the protocol
(docs/protocol.md): which init, and which handling of dead latents; writes docs/methods-synthetic.md
from docs/methods-synthetic.jsonl.

    python scripts/reproduce/methods_synthetic.py [--study init dead trainer jumprelu] [--seeds 0 1 2] [--steps 1000]
        [--init-l0s 8 16 32] [--dead-l0s 8] [--dead-archs topk batchtopk matryoshka] [--trainer-l0s 8 16 32]
        [--jumprelu-l0s 8 16 32]
        [--out runs/benchmark] [--render-only]

The model, the splits, the budget and the tuning are the benchmark's (reproduce_benchmark.py,
docs/benchmark.md): every variant chooses its lr from the same grid by validation MCC at the middle
target L0 (seed 0), and is reported on the test split over the seeds, paired by seed against the
study's reference.

- **init** (TopK, AuxK on): orthogonal (the reference), orthogonal with b_dec started at the
  sample mean ("centred": mean-centring alone), data (random sample rows), datapoint (Anthropic's /
  saev's blend of centred sample rows with random directions, p = 0.8, centred), mod (saeforge's
  informed init: spherical k-means then optimal directions), mod centred. The init's own time is
  in each row (`init_s`), beside the run's wall time.
- **dead** (every k-architecture, init mod): AuxK alone (the reference: the
  default), clustered resampling alone (every 250 or every 125 steps: resampling stops where the
  lr decay starts, halfway), neither, and both. Mixture latents are
  counted directly: decoder rows with |cos| ≥ 0.3 to two or more true features, beside the same
  count for the true features themselves (the chance level of this overlapping feature set).
- **trainer** (standard, init mod): the toy defaults of the time (unit-norm decoder, Adam β2 0.95 /
  ε 1e-5, b_dec from 0, clustered resampling; the reference) against each of SAELens's choices alone: a free decoder norm (the
  penalty weighs it), Adam β2 0.999 / ε 1e-8, and b_dec started at the sample mean; and clustered
  resampling (on by default where there is no AuxK) switched off; and the free decoder norm with
  SAELens's Adam together; then the defaults since (free norm, no resampling) with and without
  SAELens's gradient clipping at 1.0, and those defaults from the orthogonal init instead of mod.
- **jumprelu** (init mod, no resampling on synthetic data): the toy defaults of the time (unit-norm
  decoder; the reference) against SAELens's choices: a free decoder norm, Adam β2 0.999 / ε 1e-8, and
  both; and SAELens's trainer's clipping of the gradient's norm at 1.0 (`--max-grad-norm 1`), alone
  and with the free norm. Both this study and the trainer study found the free decoder norm better
  (F1 at every L0), so it is now the toy default for ReLU + L1 and JumpReLU on synthetic data; the free
  norm with the clipping raised JumpReLU's MCC and F1 at every L0, so the clipping is JumpReLU's toy
  default there too. The trainer study then tried the clipping on ReLU + L1's new default (free norm,
  no resampling): F1 up at every L0, MCC at 16 and 32, so ReLU + L1 clips at 1.0 on synthetic data too.
  The variants name both settings explicitly.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_benchmark import KEY, Bench, chosen  # noqa: E402

from saeforge.evaluation.protocol import LRS, Protocol, Results, fmt_interval, mean_interval, paired, table  # noqa: E402

INIT = {  # variant -> extra `saeforge toy` flags (TopK)
    "saeforge init=orthogonal": ["--init", "orthogonal"],
    "saeforge init=orthogonal centred": ["--init", "orthogonal", "--center-init"],
    "saeforge init=data": ["--init", "data"],
    "saeforge init=datapoint centred": ["--init", "datapoint", "--center-init"],
    "saeforge init=mod": ["--init", "mod"],
    "saeforge init=mod centred": ["--init", "mod", "--center-init"],
}
DEAD = {  # variant -> extra flags (k-architectures, init mod)
    "saeforge dead=AuxK": ["--init", "mod"],
    "saeforge dead=clustered": ["--init", "mod", "--aux-k-coefficient", "0", "--resample", "clustered"],
    "saeforge dead=clustered/125": ["--init", "mod", "--aux-k-coefficient", "0", "--resample", "clustered",
                                    "--resample-every", "125"],
    "saeforge dead=none": ["--init", "mod", "--aux-k-coefficient", "0", "--resample", "none"],
    "saeforge dead=AuxK+clustered": ["--init", "mod", "--resample", "clustered"],
}
TRAINER = {  # variant -> extra flags (standard: where saeforge's F1 trails SAELens's in benchmark.md); the toy
    # defaults of the time, clustered resampling included (--resample auto is none on synthetic data since)
    "saeforge trainer=toy defaults": ["--init", "mod", "--resample", "clustered", "--unit-norm-decoder"],
    "saeforge trainer=free decoder norm": ["--init", "mod", "--resample", "clustered", "--no-unit-norm-decoder"],
    "saeforge trainer=Adam 0.999/1e-8": ["--init", "mod", "--resample", "clustered", "--unit-norm-decoder",
                                         "--beta2", "0.999", "--adam-eps", "1e-8"],
    "saeforge trainer=centred": ["--init", "mod", "--resample", "clustered", "--unit-norm-decoder", "--center-init"],
    "saeforge trainer=no resampling": ["--init", "mod", "--resample", "none", "--unit-norm-decoder"],
    "saeforge trainer=free norm + Adam 0.999/1e-8": ["--init", "mod", "--resample", "clustered",
                                                     "--no-unit-norm-decoder", "--beta2", "0.999", "--adam-eps", "1e-8"],
    # the toy default since (free norm, no resampling on synthetic data), and SAELens's clipping on top of it
    "saeforge trainer=free norm, no resampling": ["--init", "mod", "--resample", "none", "--no-unit-norm-decoder",
                                                  "--max-grad-norm", "0"],
    "saeforge trainer=free norm, no resampling, grad clip 1.0": ["--init", "mod", "--resample", "none",
                                                                 "--no-unit-norm-decoder", "--max-grad-norm", "1.0"],
    # SAELens's own init (W_enc = W_decᵀ, random directions) lost F1 at L0 32 when started from mod (benchmark.md):
    # the same question for saeforge's trainer
    "saeforge trainer=defaults, orthogonal init": ["--init", "orthogonal", "--resample", "none",
                                                   "--no-unit-norm-decoder", "--max-grad-norm", "1.0"],
}
JUMPRELU = {  # variant -> extra flags (jumprelu: where saeforge's MCC trails SAELens's in benchmark.md); SAELens's
    # trainer leaves the decoder norm free and runs Adam β2 0.999 / ε 1e-8
    "saeforge jumprelu=defaults": ["--init", "mod", "--unit-norm-decoder", "--max-grad-norm", "0"],
    "saeforge jumprelu=free decoder norm": ["--init", "mod", "--no-unit-norm-decoder", "--max-grad-norm", "0"],
    "saeforge jumprelu=Adam 0.999/1e-8": ["--init", "mod", "--unit-norm-decoder", "--beta2", "0.999",
                                          "--adam-eps", "1e-8", "--max-grad-norm", "0"],
    "saeforge jumprelu=free norm + Adam 0.999/1e-8": ["--init", "mod", "--no-unit-norm-decoder", "--beta2", "0.999",
                                                      "--adam-eps", "1e-8", "--max-grad-norm", "0"],
    "saeforge jumprelu=grad clip 1.0": ["--init", "mod", "--unit-norm-decoder", "--max-grad-norm", "1.0"],
    "saeforge jumprelu=free norm + grad clip 1.0": ["--init", "mod", "--no-unit-norm-decoder", "--max-grad-norm", "1.0"],
}
STUDIES = {"init": (INIT, "saeforge init=orthogonal"), "dead": (DEAD, "saeforge dead=AuxK"),
           "trainer": (TRAINER, "saeforge trainer=toy defaults"), "jumprelu": (JUMPRELU, "saeforge jumprelu=defaults")}
# comparisons besides each variant against the reference: saeforge's init against the field's data-point init, and
# mean-centring on top of it
PAIRS = {"init": [("saeforge init=mod", "saeforge init=datapoint centred"), ("saeforge init=mod centred", "saeforge init=mod")],
         "dead": [], "jumprelu": [],
         "trainer": [("saeforge trainer=free norm, no resampling, grad clip 1.0", "saeforge trainer=free norm, no resampling"),
                     ("saeforge trainer=defaults, orthogonal init", "saeforge trainer=free norm, no resampling, grad clip 1.0")]}
METRICS = (("mcc", "MCC", True), ("f1", "F1", True), ("absorption", "absorption", False),
           ("mixture_latents", "mixture latents", False), ("dead_latents", "dead", False),
           ("explained_variance", "EV", True), ("l0", "L0", None), ("init_s", "init s", None),
           ("wall_s", "wall s", None))


def label(variant: str) -> str:
    return variant.split(" ", 1)[1].split("=", 1)[1]


def render_study(rows: list[dict], study: str, archs: list[str], protocol: Protocol) -> list[str]:
    variants, reference = STUDIES[study]
    L = []
    for arch in archs:
        per = {v: chosen(rows, arch, v) for v in variants}
        per = {v: t for v, t in per.items() if t}
        if not per:
            continue
        L += [f"### {arch}", ""]
        body = []
        for v, targets in per.items():
            for target, rs in targets.items():
                body.append([label(v), f"{target:g}", f"{rs[0]['lr']:g}", len(rs),
                             *(fmt_interval(*mean_interval([r[m] for r in rs]),
                                            spec=".3f" if m in ("mcc", "f1", "absorption", "explained_variance")
                                            else ".1f") for m, _, _ in METRICS)])
        L += table(["variant", "target L0", "lr", "seeds", *(n for _, n, _ in METRICS)], body) + [""]
        lrs = validation(rows, arch, list(per), sorted(protocol.target_l0s)[len(protocol.target_l0s) // 2])
        if lrs:
            L += ["Validation at the tuning L0, every lr of the grid (MCC / EV of the run nearest the target): a "
                  "variant whose EV stays below the reference's at every lr trains slower at this budget whatever "
                  "its lr, rather than having chosen a barely trained run.", ""] + lrs + [""]
        chance = {r.get("mixture_chance") for v in per.values() for rs in v.values() for r in rs}
        L += [f"Mixture latents at chance (the true features counted the same way): {', '.join(map(str, sorted(chance)))} "
              "of 1,024.", ""]
        verdicts = []
        for v, base in comparisons(study):
            if v not in per or base not in per:
                continue
            for target, rs in per[v].items():
                ref = per[base].get(target)
                if not ref:
                    continue
                for m, name, up in METRICS[:6]:
                    d = paired({r["seed"]: r[m] for r in ref}, {r["seed"]: r[m] for r in rs}, higher_is_better=up)
                    verdicts.append([f"{label(v)} − {label(base)}", f"{target:g}", name,
                                     fmt_interval(d["difference"], *d["interval"]), d["seeds"], d["verdict"]])
        if verdicts:
            L += table(["variant − reference", "target L0", "metric", "difference [95%]", "seeds", "verdict"],
                       verdicts) + [""]
    return L


def validation(rows: list[dict], arch: str, variants: list[str], target: float) -> list[str]:
    """A table: per variant, MCC / EV on validation at each lr tried (the run whose L0 is nearest `target`)."""
    grid = sorted({r["lr"] for r in rows if r["split"] == "validation" and r["arch"] == arch and r["method"] in variants})
    body = []
    for v in variants:
        cells = []
        for lr in grid:
            tried = [r for r in rows if r["split"] == "validation" and r["arch"] == arch and r["method"] == v
                     and r["lr"] == lr]
            best = min(tried, key=lambda r: abs(r["l0"] - target)) if tried else None
            cells.append(f"{best['mcc']:.3f} / {best['explained_variance']:.3f} (L0 {best['l0']:.0f})" if best else "—")
        if any(c != "—" for c in cells):
            body.append([label(v), *cells])
    return table(["variant", *(f"lr {lr:g}" for lr in grid)], body) if body else []


def comparisons(study: str) -> list[tuple[str, str]]:
    """(variant, what it is compared with): every variant against the reference, then PAIRS."""
    variants, reference = STUDIES[study]
    return [(v, reference) for v in variants if v != reference] + PAIRS[study]


def tally(rows: list[dict], study: str, archs: list[str]) -> list[str]:
    """One line per comparison: over the (architecture, L0) cells, where it helps / hurts on MCC, F1, absorption."""
    out = []
    for v, reference in comparisons(study):
        counts = {}
        for arch in archs:
            ref, mine = chosen(rows, arch, reference), chosen(rows, arch, v)
            for target in set(ref) & set(mine):
                for m, name, up in METRICS[:3]:
                    d = paired({r["seed"]: r[m] for r in ref[target]}, {r["seed"]: r[m] for r in mine[target]},
                               higher_is_better=up)
                    counts.setdefault(name, []).append(d["verdict"])
        if counts:
            out.append(f"- **{label(v)}** against {label(reference)}: " + "; ".join(
                f"{name} helps in {c.count('helps')}, hurts in {c.count('hurts')}, no difference in "
                f"{c.count('no difference')} of {len(c)}" for name, c in counts.items()) + ".")
    return out


def render(rows: list[dict], protocol: Protocol, steps: int, cmd: str, archs: dict[str, list[str]]) -> str:
    L = ["# saeforge's methods on the synthetic benchmark, under the protocol", "",
         f"Generated by `{cmd}` from [methods-synthetic.jsonl](methods-synthetic.jsonl); the model, splits, budget "
         "and tuning are [benchmark.md](benchmark.md)'s, the rules [protocol.md](protocol.md)'s, and the script's "
         "docstring says what each variant is.", "",
         f"Budget: {steps:,} steps × 1,024 samples per run. Each variant chose its lr from "
         f"{{{', '.join(f'{x:g}' for x in protocol.lrs)}}} by validation MCC at the study's middle target L0 (seed 0); "
         f"figures are means over seeds {list(protocol.seeds)} on the test split (100,000 samples) with 95% "
         "t-intervals, and each difference is paired by seed (less is better for absorption, mixture latents and "
         "dead latents; a verdict only where the interval excludes 0). The runs shared this 2-core machine with one "
         "to three others, each on one thread: the init and wall seconds compare variants within this document "
         "only. Mixture latents saturate on this model (most rows of every dictionary, and "
         f"{'/'.join(str(c) for c in sorted({r['mixture_chance'] for r in rows if 'mixture_chance' in r}))} of the "
         "1,024 true features themselves, have |cos| ≥ 0.3 with two features): read them as a comparison, not a "
         "count of failures.", ""]
    for study, title in (("init", "Which init (TopK, AuxK on)"), ("dead", "Which handling of dead latents"),
                         ("trainer", "Which trainer settings (standard)"), ("jumprelu", "Which trainer settings (JumpReLU)")):
        body = render_study([r for r in rows if r["method"] in STUDIES[study][0]], study, archs[study], protocol)
        if body:
            L += [f"## {title}", "", "In short:", "", *tally(rows, study, archs[study]), "", *body]
    return "\n".join(L) + "\n"


def plot(rows: list[dict], path: Path, archs: dict[str, list[str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STUDIES), figsize=(4.7 * len(STUDIES), 3.6))
    for ax, (study, (variants, _)) in zip(axes, STUDIES.items()):
        for i, v in enumerate(variants):
            for j, arch in enumerate(archs[study]):
                pts = [(statistics.fmean(r["l0"] for r in rs), *mean_interval([r["mcc"] for r in rs]))
                       for rs in chosen(rows, arch, v).values()]
                if pts:
                    x, y, lo, hi = zip(*pts)
                    ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                                fmt="-" + "os^"[j % 3], color=f"C{i}", ms=4, capsize=2,
                                label=f"{label(v)} {arch}" if study == "dead" else label(v))
        ax.set(xlabel="L0", ylabel="MCC (test)", title=f"{study} study", xscale="log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--init-l0s", type=float, nargs="+", default=[8, 16, 32])
    ap.add_argument("--dead-l0s", type=float, nargs="+", default=[8])
    ap.add_argument("--dead-archs", nargs="+", default=["topk", "batchtopk", "matryoshka"])
    ap.add_argument("--trainer-l0s", type=float, nargs="+", default=[8, 16, 32])
    ap.add_argument("--jumprelu-l0s", type=float, nargs="+", default=[8, 16, 32])
    ap.add_argument("--out", default="runs/benchmark")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--variants", nargs="+", default=None, help="run only these variants (default: every one)")
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    docs = Path(a.docs)
    results = Results(docs / "methods-synthetic.jsonl", KEY)
    archs = {"init": ["topk"], "dead": a.dead_archs, "trainer": ["standard"], "jumprelu": ["jumprelu"]}
    l0s = {"init": a.init_l0s, "dead": a.dead_l0s, "trainer": a.trainer_l0s, "jumprelu": a.jumprelu_l0s}
    if not a.render_only:
        every = {v: f for variants, _ in STUDIES.values() for v, f in variants.items()}
        bench = Bench(Path(a.out), results, a.steps, flags=every)
        for study in a.study:
            p = Protocol(lrs=tuple(a.lrs), target_l0s=tuple(l0s[study]), seeds=tuple(a.seeds))
            for arch in archs[study]:
                for v in STUDIES[study][0]:
                    if a.variants is None or v in a.variants:
                        bench.method(arch, v, p)
    rows = [r for r in results.rows if r["steps"] == a.steps]
    p = Protocol(lrs=tuple(a.lrs), target_l0s=tuple(a.init_l0s), seeds=tuple(a.seeds))
    cmd = (f"python scripts/reproduce/methods_synthetic.py --seeds {' '.join(map(str, a.seeds))} --steps {a.steps} "
           f"--init-l0s {' '.join(f'{x:g}' for x in a.init_l0s)} --dead-l0s {' '.join(f'{x:g}' for x in a.dead_l0s)} "
           f"--dead-archs {' '.join(a.dead_archs)} --trainer-l0s {' '.join(f'{x:g}' for x in a.trainer_l0s)}"
           + (f" --jumprelu-l0s {' '.join(f'{x:g}' for x in a.jumprelu_l0s)}"
              if any(r["method"] in JUMPRELU for r in rows) else ""))
    (docs / "methods-synthetic.md").write_text(render(rows, p, a.steps, cmd, archs))
    plot(rows, docs / "methods-synthetic.png", archs)
    print(f"wrote {docs / 'methods-synthetic.md'}")


if __name__ == "__main__":
    main()
