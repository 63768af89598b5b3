"""The interpretability suite on the real model: its noise on the main job, then every architecture ×
init × dead-latent handling at matched L0; writes docs/evals.md, docs/evals.jsonl, docs/evals-grid.png.

    python scripts/reproduce/evals.py [--main-seeds 0 1 2] [--grid-seeds 0] [--grid-tokens 1000000]
                                      [--suite-tokens 32768] [--grid-suite-tokens 32768]
                                      [--out runs/evals] [--reuse-only]

1. **Noise.** The README's main job (`saeforge train`, TopK k 32, 4M tokens) with each of
   --main-seeds; `saeforge eval --interp` on each (--suite-tokens labelled held-out tokens) and the
   stability (PW-MCC) across them. The spread over seeds says which differences mean something.
2. **Grid.** Each architecture (standard, topk, batchtopk, jumprelu, matryoshka) × init
   (orthogonal, mod: the informed default of `saeforge toy`, data, datapoint: the field's blend of
   centred data points, p 0.8) × dead-latent handling (AuxK for the k-architectures or none for the
   others, against clustered resampling; datapoint with the default alone), trained on
   --grid-tokens of the embedded corpus with every other setting at its default. L0 is matched at
   32: k = 32 for the k-architectures; the L1 / L0 coefficient of standard and JumpReLU is
   calibrated once per architecture × init (seed 0, no resampling) by a multiplicative search to L0
   within ±3 of 32, then kept for its other seeds and for clustered resampling (their L0 is reported).
   EV and CE-loss recovered are the training run's held-out evaluation (65,536 tokens).

Finished runs and their suite results are reused (runs/evals/…/interp.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka")
K_ARCHS = ("topk", "batchtopk", "matryoshka")
INITS = ("orthogonal", "mod", "data", "datapoint")  # datapoint: the field's (Anthropic's, saev's) blend
COEF = {"standard": "l1_coefficient", "jumprelu": "l0_coefficient"}
TARGET_L0 = 32
REUSE_ONLY = False


def train(run: Path, args: list[str]) -> dict | None:
    from saeforge.cli import main as saeforge_main

    if not (run / "summary.json").exists():
        if REUSE_ONLY:
            return None
        code = saeforge_main(["train", "--out", str(run), "--no-progress", "--eval-tokens", "65536", *args])
        if code:
            sys.exit(f"failed: saeforge train --out {run} {' '.join(args)}")
    summary = json.loads((run / "summary.json").read_text())
    for name in COEF.values():  # a run reused under a changed calibration would be silently wrong
        flag = f"--{name.replace('_', '-')}"
        if flag in args and name in summary and abs(summary[name] - float(args[args.index(flag) + 1])) > 1e-9:
            sys.exit(f"{run} was trained with {name} {summary[name]}, not {args[args.index(flag) + 1]}: move it aside")
    return summary


def suite(run: Path, tokens: int) -> dict | None:
    import saeforge

    f = run / "interp.json"
    if not f.exists():
        if REUSE_ONLY:
            return None
        t0 = time.perf_counter()
        res = saeforge.interpretability(str(run), tokens=tokens)["dictionaries"][0]
        res["wall_s"] = time.perf_counter() - t0
        f.write_text(json.dumps(res))
    return json.loads(f.read_text())


def calibrate(arch: str, init: str, out: Path, tokens: int) -> float:
    """The coefficient that lands near L0 32 for this architecture and init (module docstring), cached
    in out/calibration.json under "arch" (orthogonal) or "arch-init"."""
    cache = out / "calibration.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    key = arch if init == "orthogonal" else f"{arch}-{init}"
    if key in known:
        return known[key]
    # start from the orthogonal init's coefficient where it is known, else from the default
    c = known.get(arch, {"standard": 0.55, "jumprelu": 1.0}[arch]) if init != "orthogonal" else \
        {"standard": 0.55, "jumprelu": 1.0}[arch]
    for i in range(6):
        name = f"{arch}-{c:.4g}" if init == "orthogonal" else f"{arch}-{init}-{c:.4g}"
        s = train(out / "calibration" / name, ["--architecture", arch, f"--{COEF[arch].replace('_', '-')}",
                                               f"{c:.4g}", "--tokens", str(tokens), "--init", init, "--resample", "none"])
        if s is None:
            break
        print(f"calibrate {arch} {init}: {COEF[arch]} {c:.4g} → L0 {s['l0']:.1f}", flush=True)
        if abs(s["l0"] - TARGET_L0) <= 3:
            break
        c *= (s["l0"] / TARGET_L0) ** (0.7 if arch == "standard" else 1.0)
    known[key] = float(f"{c:.4g}")
    cache.write_text(json.dumps(known))
    return known[key]


def headline(res: dict) -> dict:
    p = res["probing"]
    return {"k1_probe": p["sae"]["k=1"]["accuracy"], "k1_probe_ci": p["sae"]["k=1"]["interval"],
            "k5_probe": p["sae"]["k=5"]["accuracy"], "k1_control": p["control"]["k=1"]["accuracy"],
            "k1_model": p["model"]["k=1"]["accuracy"],
            "labelled_fraction": res["labelled_fraction"], "labelled_ci": res["labelled_interval"],
            "absorption": res["absorption"]["mean_absorption_fraction"], "absorption_ci": res["absorption"]["interval"]}


def grid_args(arch: str, init: str, dead: str, coef: dict) -> list[str]:
    """The cell's flags; coef maps (arch, init) to the calibrated coefficient."""
    args = ["--architecture", arch, "--init", init]
    if arch in K_ARCHS:
        args += ["--k", str(TARGET_L0)]
        args += ["--aux-k-coefficient", "0", "--resample", "clustered"] if dead == "clustered" else ["--resample", "none"]
    else:
        args += [f"--{COEF[arch].replace('_', '-')}", str(coef[arch, init]), "--resample", dead]
    return args


def fmt(v, ci=None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--main-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--grid-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--grid-tokens", type=int, default=1_000_000)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--clustered-inits", nargs="*", default=["orthogonal", "mod", "data"],
                    help="the inits whose cells are also trained with clustered resampling (the others: AuxK / none)")
    ap.add_argument("--suite-tokens", type=int, default=32768, help="labelled tokens for the main job's suite")
    ap.add_argument("--grid-suite-tokens", type=int, default=32768, help="labelled tokens for each grid cell's suite")
    ap.add_argument("--out", default="runs/evals")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--reuse-only", action="store_true", help="render what is finished (time ran out for the rest)")
    ap.add_argument("--render-only", action="store_true", help="only render docs/evals.md from docs/evals.jsonl")
    a = ap.parse_args(argv)
    docs = Path(a.docs)
    if a.render_only:
        rows = [json.loads(line) for line in (docs / "evals.jsonl").read_text().splitlines() if line.strip()]
        write_doc(a, rows, docs)
        return
    global REUSE_ONLY
    REUSE_ONLY = a.reuse_only
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    # 1. the main job's noise
    main_runs = []
    for seed in a.main_seeds:
        run = out / f"main-seed{seed}"
        s = train(run, ["--seed", str(seed)])
        r = suite(run, a.suite_tokens) if s else None
        if r is None:
            continue
        main_runs.append(run)
        rows.append({"part": "main", "seed": seed, "l0": s["l0"], "train_wall_s": s["wall_s"], "explained_variance": s["explained_variance"],
                     "ce_loss_recovered": s["ce_loss_recovered"], "suite_wall_s": r["wall_s"], **headline(r)})
        print(json.dumps(rows[-1]), flush=True)
    if len(main_runs) >= 2:
        import saeforge
        from saeforge.evaluation.interp import stability

        rows.append({"part": "stability", "seeds": a.main_seeds, **stability([saeforge.load(r) for r in main_runs])})
    # 2. the grid
    coef = {(arch, init): calibrate(arch, init, out, a.grid_tokens) for arch in a.archs if arch in COEF for init in INITS}
    rows += [{"part": "calibration", "architecture": arch, "init": init, "coefficient": c} for (arch, init), c in coef.items()]
    for arch in a.archs:
        for init in INITS:
            for dead in (("auxk" if arch in K_ARCHS else "none"),) + (("clustered",) if init in a.clustered_inits else ()):
                for seed in a.grid_seeds:
                    run = out / f"{arch}-{init}-{dead}-seed{seed}"
                    s = train(run, [*grid_args(arch, init, dead, coef), "--tokens", str(a.grid_tokens),
                                    "--seed", str(seed)])
                    r = suite(run, a.grid_suite_tokens) if s else None
                    if r is None:
                        continue
                    rows.append({"part": "grid", "architecture": arch, "init": init, "dead": dead, "seed": seed,
                                 "l0": s["l0"], "explained_variance": s["explained_variance"],
                                 "ce_loss_recovered": s["ce_loss_recovered"], "dead_fraction": s.get("dead_fraction"),
                                 "resampled": s.get("resampled", 0), "train_wall_s": s["wall_s"],
                                 "suite_wall_s": r["wall_s"], **headline(r)})
                    print(json.dumps(rows[-1]), flush=True)
    # stability of each cell across its seeds (PW-MCC of Hungarian-matched decoder rows)
    import saeforge
    from saeforge.evaluation.interp import stability

    for key in dict.fromkeys((r["architecture"], r["init"], r["dead"]) for r in rows if r["part"] == "grid"):
        runs = [out / f"{key[0]}-{key[1]}-{key[2]}-seed{seed}" for seed in a.grid_seeds]
        runs = [r for r in runs if (r / "sae_weights.safetensors").exists()]
        if len(runs) >= 2:
            rows.append({"part": "cell_stability", "architecture": key[0], "init": key[1], "dead": key[2],
                         **stability([saeforge.load(r) for r in runs])})
    (docs / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_doc(a, rows, docs)


METRICS = [("k1_probe", "k=1 probe accuracy"), ("k5_probe", "k=5 probe accuracy"),
           ("labelled_fraction", "labelled latents (F1 ≥ 0.5)"), ("absorption", "absorption fraction"),
           ("explained_variance", "explained variance"), ("ce_loss_recovered", "CE-loss recovered")]


def seed_range(grid: list[dict]) -> str:
    n = {}
    for r in grid:
        n[(r["architecture"], r["init"], r["dead"])] = n.get((r["architecture"], r["init"], r["dead"]), 0) + 1
    lo, hi = min(n.values()), max(n.values())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def findings(grid: list[dict], main_rows: list[dict], cell_stab: dict | None = None) -> list[str]:
    """What the grid says, computed under docs/protocol.md: each factor's change in each metric is
    the mean over the cells where only it differs (L0 matched), taken per seed; the verdict is the
    paired interval over seeds (`protocol.paired`): helps / hurts only when it excludes 0."""
    from saeforge.evaluation.protocol import fmt_interval, mean_interval, paired

    cell: dict[tuple, dict[int, dict]] = {}
    for r in grid:
        cell.setdefault((r["architecture"], r["init"], r["dead"]), {})[r["seed"]] = r

    def matched(key: tuple) -> bool:  # k-architectures are matched by k; the others by the calibration
        return key[0] in K_ARCHS or abs(np.mean([r["l0"] for r in cell[key].values()]) - TARGET_L0) <= 3

    def compare(pairs: list[tuple[tuple, tuple]], what: str) -> str:
        pairs = [(a, b) for a, b in pairs if matched(a) and matched(b)]
        if not pairs:
            return f"- **{what}**: no cell pair at matched L0."
        seeds = sorted({s for a, b in pairs for s in cell[a].keys() & cell[b].keys()})
        parts = []
        for m, name in METRICS:
            mean_of = lambda side, s: float(np.mean([cell[p[side]][s][m] for p in pairs  # noqa: E731
                                                     if s in cell[p[0]] and s in cell[p[1]]]))
            d = paired({s: mean_of(0, s) for s in seeds}, {s: mean_of(1, s) for s in seeds},
                       higher_is_better=m != "absorption")
            parts.append(f"{name} {fmt_interval(d['difference'], *d['interval'], spec='+.3f')} ({d['verdict']})")
        with_stab = [(a, b) for a, b in pairs if cell_stab and a in cell_stab and b in cell_stab]
        if len(with_stab) >= 2:  # one figure per cell, so the interval is over the cell pairs
            d = paired({i: cell_stab[a] for i, (a, _) in enumerate(with_stab)},
                       {i: cell_stab[b] for i, (_, b) in enumerate(with_stab)})
            parts.append(f"stability (PW-MCC across seeds; interval over cell pairs) "
                         f"{fmt_interval(d['difference'], *d['interval'], spec='+.3f')} ({d['verdict']})")
        verdicts = {v: [x.split(" [")[0].rsplit(" ", 1)[0].split(" (")[0] for x in parts if x.endswith(f"({v})")]
                    for v in ("helps", "hurts")}
        plain = "; ".join(f"{v} {', '.join(ms)}" for v, ms in verdicts.items() if ms) or "no difference in any metric"
        return (f"- **{what}** — in short: {plain}. ({len(pairs)} cell pairs × {len(seeds)} seeds): "
                + "; ".join(parts) + ".")

    L = ["### What the grid says (computed by the script, under [protocol.md](protocol.md))", "",
         f"Cells have {seed_range(grid)} seed(s); a ± in the table is the sample sd over them. A factor's change is the "
         "mean over the cell pairs that differ only in it, per seed, then its mean over seeds with the 95% t-interval "
         "[in brackets]; it helps or hurts only when that interval excludes 0 (for absorption, less is better). The "
         "k-architectures are matched at L0 32 by k; standard and JumpReLU by their calibrated coefficient.", ""]
    for init in INITS[1:]:
        pairs = [((a, "orthogonal", d), (a, i, d)) for (a, i, d) in cell if i == init and (a, "orthogonal", d) in cell]
        if pairs:
            L.append(compare(pairs, f"{init} init against orthogonal"))
    pairs = [((a, "datapoint", d), (a, "mod", d)) for (a, i, d) in cell if i == "datapoint" and (a, "mod", d) in cell]
    if pairs:
        L.append(compare(pairs, "mod init (saeforge's) against datapoint (the field's blend)"))
    pairs = [((a, i, d), (a, i, "clustered")) for (a, i, d) in cell if d != "clustered" and (a, i, "clustered") in cell]
    acted = sum(any(r.get("resampled", 0) > 0 for r in cell[b].values()) for _, b in pairs)
    L.append(compare(pairs, "clustered resampling against AuxK / none") + f" Resampling acted in {acted} of the "
             f"{len(pairs)} clustered cells at some seed (where no latent was dead for its window, the run is the "
             "other cell's, bit for bit).")
    base = {a: (a, "orthogonal", "auxk" if a in K_ARCHS else "none") for a in ARCHS}
    ranked = sorted(((*mean_interval([r["k1_probe"] for r in cell[k].values()]), a)
                     for a, k in base.items() if k in cell and matched(k)), reverse=True)
    if ranked:
        L.append("- **architectures** (orthogonal init, default dead-latent handling), by k=1 probe accuracy "
                 "(mean over seeds [95% interval]; PW-MCC across seeds in parentheses): "
                 + ", ".join(f"{a} {fmt_interval(m, lo, hi)} ({(cell_stab or {}).get(base[a], float('nan')):.3f})"
                             for m, lo, hi, a in ranked)
                 + ".")
    off = [f"{k[0]} {k[1]} ({np.mean([r['l0'] for r in cell[k].values()]):.0f})" for k in cell
           if not matched(k) and k[2] != "clustered"]
    if off:
        L.append("- L0 not matched (left out of the comparisons above): " + ", ".join(off) + ".")
    return L + [""]


def write_doc(a, rows: list[dict], docs: Path) -> None:
    """docs/evals.md and evals-grid.png from the rows alone (tests/test_protocol.py re-renders it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_rows = [r for r in rows if r["part"] == "main"]
    grid = [r for r in rows if r["part"] == "grid"]
    stab = next((r for r in rows if r["part"] == "stability"), None)
    coef = {(r["architecture"], r["init"]): r["coefficient"] for r in rows if r["part"] == "calibration"}
    cmd = (f"python scripts/reproduce/evals.py --main-seeds {' '.join(map(str, a.main_seeds))} --grid-seeds "
           f"{' '.join(map(str, a.grid_seeds))} --grid-tokens {a.grid_tokens} --suite-tokens {a.suite_tokens} "
           f"--grid-suite-tokens {a.grid_suite_tokens}")
    L = ["# Is a dictionary interpretable? The suite on the real model", "",
         f"Generated by `{cmd}` from docs/evals.jsonl (the script's docstring says what was trained). "
         "The suite (`saeforge eval DIR --interp`, src/saeforge/evaluation/interp.py, labels.py, absorption.py) "
         "labels every byte of held-out Python with Python's own `tokenize` and `ast`, then measures: k-sparse probing "
         "accuracy (SAEBench's protocol, mean over the kept tasks; the same probes on the model's activations and "
         "on an untrained dictionary of the same shape beside it), the fraction of latents whose best label has "
         "F1 ≥ 0.5, and the absorption fraction on code hierarchies (validated against ground truth in "
         "[absorption-validation.md](absorption-validation.md)). Intervals are 95% bootstrap over documents.", ""]
    if main_rows:
        L += ["## Noise: the main job with different seeds", "",
              "| seed | " + " | ".join(n for _, n in METRICS) + " | untrained control k=1 | model k=1 | suite s |",
              "|---|" + "---|" * (len(METRICS) + 3)]
        for r in main_rows:
            L.append(f"| {r['seed']} | " + " | ".join(fmt(r[m], r.get({'k1_probe': 'k1_probe_ci',
                     'labelled_fraction': 'labelled_ci', 'absorption': 'absorption_ci'}.get(m, ''))) for m, _ in METRICS)
                     + f" | {fmt(r['k1_control'])} | {fmt(r['k1_model'])} | {r['suite_wall_s']:.0f} |")
        if len(main_rows) >= 2:
            L += ["", "Seed-to-seed spread (sample standard deviation over the seeds): " + "; ".join(
                f"{n} {statistics.stdev([r[m] for r in main_rows]):.4f}" for m, n in METRICS) + "."]
            L += ["A difference between two dictionaries smaller than about twice this spread is not a finding."]
        if stab:
            L += ["", f"Stability across the {len(main_rows)} seeds: PW-MCC (mean cosine of Hungarian-matched decoder "
                  f"rows) {stab['pw_mcc']:.3f} (pairs {stab['pw_mcc_min']:.3f}–{stab['pw_mcc_max']:.3f}); "
                  f"{stab['matched_above_0.7']:.1%} of matched pairs above cosine 0.7."]
        L.append("")
    if grid:
        L += ["## Every architecture × init × dead-latent handling, at L0 ≈ 32", "",
              f"{a.grid_tokens:,} training tokens each; seeds {a.grid_seeds}; coefficients calibrated to L0 32: "
              + (", ".join(f"{k[0]} {k[1]} {COEF[k[0]]} = {v:g}" for k, v in coef.items()) or "none")
              + " (each architecture × init calibrated once, seed 0, no resampling).", "",
              "| architecture | init | dead latents | L0 | latents resampled | " + " | ".join(n for _, n in METRICS)
              + " | PW-MCC across seeds |", "|---|---|---|---|---|" + "---|" * (len(METRICS) + 1)]
        cell_stab = {(r["architecture"], r["init"], r["dead"]): r["pw_mcc"] for r in rows if r["part"] == "cell_stability"}
        keys = sorted({(r["architecture"], r["init"], r["dead"]) for r in grid},
                      key=lambda k: (ARCHS.index(k[0]), INITS.index(k[1]), k[2]))
        for key in keys:
            rs = [r for r in grid if (r["architecture"], r["init"], r["dead"]) == key]
            cells = []
            for m, _ in METRICS:
                vals = [r[m] for r in rs]
                if len(rs) == 1:
                    ci = rs[0].get({"k1_probe": "k1_probe_ci", "labelled_fraction": "labelled_ci",
                                    "absorption": "absorption_ci"}.get(m, ""))
                    cells.append(fmt(vals[0], ci))
                else:
                    cells.append(f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}")
            L.append(f"| {key[0]} | {key[1]} | {key[2]} | {np.mean([r['l0'] for r in rs]):.1f} | "
                     f"{np.mean([r.get('resampled', 0) for r in rs]):.0f} | " + " | ".join(cells)
                     + f" | {fmt(cell_stab.get(key))} |")
        from saeforge.config import TrainConfig

        d = TrainConfig()
        L += [""] + findings(grid, main_rows, cell_stab) + [
            f"`saeforge train`'s defaults are `--init {d.init}` and `--resample {d.resample}` (AuxK on for the "
            "k-architectures): on this model no informed init and no resampling variant makes latents more "
            "interpretable by k-sparse probing or absorption, so they stay off by default; `saeforge toy`'s informed "
            "default is judged on synthetic ground truth in [benchmark.md](benchmark.md).", ""]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        for ax, (m, name) in zip(axes, [METRICS[0], METRICS[2], METRICS[3]]):
            for i, arch in enumerate(ARCHS):
                for j, init in enumerate(INITS):
                    for d, dead in enumerate(("auxk" if arch in K_ARCHS else "none", "clustered")):
                        rs = [r for r in grid if (r["architecture"], r["init"], r["dead"]) == (arch, init, dead)]
                        if rs:
                            ax.scatter(i + (j - 1.5) * 0.2, np.mean([r[m] for r in rs]), marker="os"[d],
                                       color=f"C{j}", label=f"{init}, {'clustered' if d else 'AuxK/none'}" if i == 1 else None)
            ax.set_xticks(range(len(ARCHS)), ARCHS, rotation=30, fontsize=7)
            ax.set_title(name, fontsize=9)
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(docs / "evals-grid.png", dpi=110)
        L += ["", "![grid](evals-grid.png)", ""]
    timing = docs / "evals-timing.jsonl"
    if timing.exists():
        t_rows = [json.loads(line) for line in timing.read_text().splitlines() if line.strip()]
        L += ["## Time", "", "The suite on the main job's dictionary (`python scripts/benchmarks/bench_interp_suite.py "
              "runs/main --record`; 32,768 labelled tokens), each repeat as recorded:", "",
              "| total s | load average | CPUs | parts (s) |", "|---|---|---|---|"]
        L += [f"| {r['total_s']:.1f} | {r['load_average']:.1f} | {r['cpus']} | "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["parts_s"].items()) + " |" for r in t_rows]
    runs = main_rows + grid
    L += ["", f"Compute behind these rows: {sum(r['train_wall_s'] for r in runs):.0f} s of training and "
          f"{sum(r['suite_wall_s'] for r in runs):.0f} s of suites (2 CPU cores, shared with other jobs at times)."]
    (docs / "evals.md").write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
