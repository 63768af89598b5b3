"""The second seed's scaling-law sweep on the embedded model, under the protocol (docs/protocol.md):
3 seeds, FLOP budgets over 256× compute, λ giving L0 10–50; writes docs/scaling-laws.md from
docs/scaling-laws.jsonl.

    python scripts/reproduce/reproduce_scaling_laws.py [--seeds 0 1 2] [--l1s 0.75 1.5] [--alpha 0.5]
        [--budgets 9] [--base 25600] [--band 2] [--cache runs/cache-scaling] [--out runs/scaling]
        [--render-only]

Design: IsoFLOP budgets C_b = 12·d·B·base·2^b (b = 0 … budgets−1, so the last is 2^(budgets−1)
times the first); on each, dictionary sizes on the ladder 64·2^i with steps C_b / (12·d·B·F)
(≥ 100). Seed 0 runs first, budget by budget: each band starts at the previous budget's best
size moved up by 0.4 octave (±`band` sizes) and grows by one size wherever a loss's best run sits
on its edge; seeds 1, 2, … then run exactly the cells seed 0 ran. Every cell is a `saeforge sweep`
run (resumable: runs/scaling/seed<N>/runs.jsonl), measured on the cache's held-out last shard;
each finished run is one row of docs/scaling-laws.jsonl.

The analysis (saeforge.evaluation.scaling.analyze) averages a cell over its seeds; its
intervals resample each cell's seeds, refit every budget's parabola, then resample the budgets —
so they include the parabola fits' uncertainty. Each of the seed's observations is marked holds
(its interval on the right side), reversed (on the wrong side) or open.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from saeforge.evaluation.protocol import Results  # noqa: E402
from saeforge.evaluation.scaling import analyze, plot, read_results  # noqa: E402

KEY = ("seed", "d_sae", "steps", "l1_coefficient")
KEEP = ("d_in", "batch_size", "tokens", "flops", "lr", "mse", "sparsity", "l0", "loss_l1", "explained_variance",
        "dead_fraction", "eval_rows", "seconds")
MIN_SIZE, MIN_STEPS, GROWTH = 64, 100, 0.4


def sweep(a, seed: int, cells: list[tuple[int, int]], res: Results) -> None:
    """Train the (F, S) cells at every λ for one seed (one `saeforge sweep` call per step count: the
    sizes sharing it train side by side) and copy the finished runs into the results file."""
    from saeforge.cli import main as saeforge_main

    out = Path(a.out) / f"seed{seed}"
    have = {(r["d_sae"], r["steps"]) for r in res.rows if r["seed"] == seed and r["l1_coefficient"] == a.l1s[-1]}
    for S in sorted({S for F, S in cells if (F, S) not in have}):
        sizes = ",".join(str(F) for F, S2 in sorted(cells) if S2 == S)
        if saeforge_main(["sweep", "--cache", a.cache, "--out", str(out), "--sizes", sizes, "--steps", str(S),
                          "--l1s", ",".join(f"{x:g}" for x in a.l1s), "--alpha", str(a.alpha), "--seed", str(seed),
                          "--no-progress"]):
            sys.exit(2)
    for r in read_results(out / "runs.jsonl"):
        key = {"seed": seed, "d_sae": r["d_sae"], "steps": r["steps"], "l1_coefficient": r["l1_coefficient"]}
        if (r["d_sae"], r["steps"]) in cells and res.get(**key) is None:
            res.add(key | {k: r[k] for k in KEEP})


def design(a, res: Results) -> list[tuple[int, int]]:
    """Seed 0's adaptive bands, budget by budget; returns every cell it ran."""
    cells: list[tuple[int, int]] = []
    centre = 1.0  # ladder index of the first budget's expected best size (128)
    for b in range(a.budgets):
        fs = a.base * 2 ** b  # F·S of this budget
        top = math.floor(math.log2(fs / MIN_STEPS / MIN_SIZE) + 1e-9)  # steps ≥ MIN_STEPS
        lo, hi = max(0, round(centre) - a.band), min(top, round(centre) + a.band)
        while True:
            band = [(MIN_SIZE * 2 ** i, int(fs // (MIN_SIZE * 2 ** i))) for i in range(lo, hi + 1)]
            sweep(a, 0, band, res)
            best = best_indices(res, band, a.alpha)
            grow_lo = lo in best and lo > 0
            grow_hi = hi in best and hi < top
            if not (grow_lo or grow_hi):
                break
            lo, hi = lo - grow_lo, hi + grow_hi
        cells += band
        centre = float(np.mean(sorted(best))) + GROWTH
    return cells


def best_indices(res: Results, band, alpha: float) -> set[int]:
    """Ladder indices of each loss's best cell in a band (seed 0): every λ's L1 loss and the L0 loss."""
    rows = [r for r in res.rows if r["seed"] == 0 and (r["d_sae"], r["steps"]) in band]
    out = set()
    for lam in sorted({r["l1_coefficient"] for r in rows}):
        r = min((r for r in rows if r["l1_coefficient"] == lam), key=lambda r: r["loss_l1"])
        out.add(round(math.log2(r["d_sae"] / MIN_SIZE)))
    r = min(rows, key=lambda r: r["mse"] + alpha * r["l0"])
    out.add(round(math.log2(r["d_sae"] / MIN_SIZE)))
    return out


def law(p: dict) -> str:
    return f"{p['e']:.3f} [{p['e_lo']:.3f}, {p['e_hi']:.3f}]"


def status(lo: float, hi: float) -> str:
    """A claim that a quantity is > 0: holds when its interval is above 0, reversed when below."""
    return "**holds**" if lo > 0 else "**reversed**" if hi < 0 else "**open**"


def ratio(a_log: np.ndarray, b_log: np.ndarray) -> tuple[float, float, float]:
    """exp of the difference of two bootstrap distributions of log values (replicates paired by index):
    median and 95% interval."""
    n = min(len(a_log), len(b_log))
    d = a_log[:n] - b_log[:n]
    lo, mid, hi = np.percentile(d, [2.5, 50, 97.5])
    return math.exp(mid), math.exp(lo), math.exp(hi)


def reading(res: dict, lams: list[float], alpha: float) -> list[str]:
    out = []
    fl = [(f"MSE + {lam:g}·L1", res["l1"][lam]) for lam in lams] + [(f"MSE + {alpha:g}·L0", res["l0"])]
    fitted = [(n, f) for n, f in fl if "loss_vs_flops" in f]
    if not fitted:
        return ["Too few interior IsoFLOP optima to test the seed's observations; widen the bands."]

    def each(fn) -> tuple[list[str], list[str]]:
        parts, marks = [], []
        for n, f in fitted:
            text, mark = fn(f)
            parts.append(f"{n}: {text}")
            marks.append(mark)
        return parts, marks

    def overall(marks: list[str]) -> str:
        return marks[0] if len(set(marks)) == 1 else "**open** (the losses disagree)"

    def obs1(f):
        L = f["loss_vs_flops"]
        C = np.array([o["flops"] for o in f["optima"]])
        obs = np.log([o["loss"] for o in f["optima"]])
        pred = np.log(L["k"]) + L["e"] * np.log(C)
        r2 = 1 - ((obs - pred) ** 2).sum() / max(((obs - obs.mean()) ** 2).sum(), 1e-30)
        mark = "**holds**" if L["e_hi"] < 0 and r2 >= 0.9 else "**reversed**" if L["e_lo"] > 0 else "**open**"
        return f"L* ∝ C^{law(L)}, R² {r2:.3f}", mark

    parts, marks = each(obs1)
    out.append("1. *Loss falls as a power law in compute* (at the compute-optimal size and steps). "
               + "; ".join(parts) + f". {overall(marks)}.")

    def obs2(f):
        Fe, Se = f["features_vs_flops"], f["steps_vs_flops"]
        lo = min(Fe["e_lo"], Se["e_lo"])
        hi = min(Fe["e_hi"], Se["e_hi"])
        return f"F* ∝ C^{law(Fe)}, S* ∝ C^{law(Se)}", status(lo, hi)

    parts, marks = each(obs2)
    out.append("2. *Optimal features and steps both grow as power laws of compute* (both exponents above 0). "
               + "; ".join(parts) + f". {overall(marks)}.")

    def obs3(f):
        d = f["boot"]["features_e"] - f["boot"]["steps_e"]
        lo, hi = np.percentile(d, [2.5, 97.5])
        return (f"e_F − e_S = {f['features_vs_flops']['e'] - f['steps_vs_flops']['e']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                status(lo, hi))

    parts, marks = each(obs3)
    out.append("3. *Optimal features grow faster than optimal steps* (e_F − e_S > 0). " + "; ".join(parts)
               + f". {overall(marks)}.")

    def obs4(f):
        SF = f["steps_vs_features"]
        inside = 0.5 <= SF["e_lo"] and SF["e_hi"] <= 1.0
        outside = SF["e_hi"] < 0.5 or SF["e_lo"] > 1.0
        return f"S* ∝ F*^{law(SF)}", "**holds**" if inside else "**reversed**" if outside else "**open**"

    parts, marks = each(obs4)
    out.append("4. *Steps against features: an exponent between 0.5 and 1* (holds when the interval lies inside "
               "[0.5, 1], reversed when it lies outside). " + "; ".join(parts) + f". {overall(marks)}.")

    l1f = [(lam, res["l1"][lam]) for lam in lams if "boot" in res["l1"][lam]]
    if len(l1f) >= 2:
        (lam_a, fa), (lam_b, fb) = l1f[0], l1f[-1]
        m, lo, hi = ratio(fb["boot"]["log_steps_at_pivot"], fa["boot"]["log_steps_at_pivot"])
        out.append(f"5. *A larger L1 coefficient makes more steps compute-optimal.* At C = {res['pivot']:.3g}, "
                   f"S*(λ {lam_b:g}) / S*(λ {lam_a:g}) = {m:.2f} [{lo:.2f}, {hi:.2f}]. "
                   f"{status(math.log(lo), math.log(hi))}.")
    else:
        out.append("5. *Larger λ, more steps.* Too few fitted λ values to compare: **open**.")
    if "boot" in res["l0"] and l1f:
        parts, marks = [], []
        for lam, f in l1f:
            m, lo, hi = ratio(res["l0"]["boot"]["log_steps_at_features"], f["boot"]["log_steps_at_features"])
            parts.append(f"against MSE + {lam:g}·L1 {m:.2f} [{lo:.2f}, {hi:.2f}]")
            marks.append(status(math.log(lo), math.log(hi)))
        out.append(f"6. *L0-based losses need more steps for a given number of features.* S* of MSE + {alpha:g}·L0 "
                   f"(λ chosen per cell on the seed-mean) over S* of the L1 loss, both at F = "
                   f"{res['pivot_features']:.0f}: " + "; ".join(parts) + f". {overall(marks)}.")
    else:
        out.append("6. *L0-based losses need more steps.* Too few interior optima for the L0 loss: **open**.")
    return out


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per (F, S, λ): the seed-mean of each measure (for the tables and plots)."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["d_sae"], r["steps"], r["l1_coefficient"]), []).append(r)
    out = []
    for (F, S, lam), rs in sorted(cells.items()):
        m = {k: float(np.mean([r[k] for r in rs])) for k in ("mse", "l0", "loss_l1", "sparsity", "flops",
                                                               "explained_variance", "dead_fraction")}
        out.append(m | {"d_sae": F, "steps": S, "l1_coefficient": lam, "seeds": len(rs)})
    return out


def best_l0(avg: list[dict]) -> dict[float, tuple[float, float]]:
    """Per λ, the range of L0 over the budgets' lowest-loss cells (where the fits' optima lie)."""
    out = {}
    for lam in sorted({r["l1_coefficient"] for r in avg}):
        best: dict[int, dict] = {}
        for r in avg:
            if r["l1_coefficient"] == lam:
                b = r["d_sae"] * r["steps"]
                if b not in best or r["loss_l1"] < best[b]["loss_l1"]:
                    best[b] = r
        l0 = [r["l0"] for r in best.values()]
        out[lam] = (min(l0), max(l0))
    return out


def render(a, rows: list[dict], docs: Path, t_invocation: float) -> None:
    lams = sorted({r["l1_coefficient"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    d_in, batch = rows[0]["d_in"], rows[0]["batch_size"]
    res = analyze(rows, d_in, batch, a.alpha, n_boot=a.n_boot)
    avg = mean_rows(rows)
    tmp = docs / ".scaling-plots"
    tmp.mkdir(exist_ok=True)
    for png in plot(res, avg, tmp, a.alpha):
        shutil.copy(png, docs / f"scaling-laws-{png.stem.removeprefix('scaling-')}.png")
    shutil.rmtree(tmp)

    cmd = (f"python scripts/reproduce/reproduce_scaling_laws.py --seeds {' '.join(map(str, a.seeds))} "
           f"--l1s {' '.join(f'{x:g}' for x in a.l1s)} --alpha {a.alpha:g} --budgets {a.budgets} --base {a.base} "
           f"--band {a.band}")
    fs = sorted({r["d_sae"] * r["steps"] for r in rows})
    sizes = sorted({r["d_sae"] for r in rows})
    cells = sorted({(r["d_sae"], r["steps"]) for r in rows})
    l0s = [r["l0"] for r in avg]
    lines = ["# Scaling laws for dictionary learning on the embedded model", "",
             f"Generated by `{cmd}`; rows in `docs/scaling-laws.jsonl`. Rules: [protocol.md](protocol.md).", "",
             f"**Design.** {len(fs)} IsoFLOP budgets spanning {max(fs) / min(fs):.0f}× in compute "
             f"({12 * d_in * batch * min(fs):.3g} to {12 * d_in * batch * max(fs):.3g} training FLOPs); on each, "
             f"dictionary sizes on a ×2 ladder around the best one (seed 0 chose the bands: a band grows wherever a "
             f"loss's best run is on its edge): {len(cells)} (size, steps) cells, sizes {sizes[0]}–{sizes[-1]}, "
             f"× λ ∈ {{{', '.join(f'{x:g}' for x in lams)}}} × seeds {{{', '.join(map(str, seeds))}}} = {len(rows)} "
             f"runs. Each is a ReLU + L1 dictionary trained from the activation cache of the embedded model "
             f"(hook blocks.2.hook_resid_post, d_in {d_in}; {a.cache_tokens:,} activations, the last shard held out; "
             f"runs longer than one pass see rows again, the longest {max(r['tokens'] for r in rows) / a.cache_tokens:.1f} "
             "passes) "
             f"with batch {batch}, Adam lr {rows[0]['lr']:g} (the architecture's default; λ warmed up over the first "
             f"10% of steps, lr decayed to 0 over the last 20%), orthogonal init, and measured on the same "
             f"{rows[0]['eval_rows']:,} held-out activations (the cache's last shard), in the trainer's units "
             f"(E‖x‖² = d_in). Seed-mean L0 over the grid: {min(l0s):.1f}–{max(l0s):.1f}; at each budget's best cell: "
             + "; ".join(f"λ {lam:g} {lo:.1f}–{hi:.1f}" for lam, (lo, hi) in best_l0(avg).items()) + ". "
             f"FLOPs = 12·d_in·F·tokens (see `saeforge.evaluation.scaling`). The runs' own wall time: "
             f"{sum(r['seconds'] for r in rows) / 60:.0f} min on this 2-core machine, one thread each.", "",
             "**Intervals.** A cell's loss is the mean over its seeds. The 95% intervals come from "
             f"{a.n_boot:,} bootstrap replicates that resample each cell's seeds, refit every budget's parabola "
             "(so the vertices' own uncertainty is in them), then resample the budgets' optima and refit the "
             "power laws. An observation **holds** when its interval lies on the seed's side, is **reversed** "
             "when it lies on the other, and is **open** otherwise.", "",
             "**Not tuned per cell:** the lr is the architecture's default at every size (the protocol's lr grid "
             "would multiply the sweep's cost by 4); a size-dependent optimal lr would tilt the exponents.", ""]
    lines += ["## Against the seed, point by point", ""] + reading(res, lams, a.alpha) + [""]
    lines += ["## Fitted power laws (exponent [95% interval])", "",
              "| loss | budgets fitted | L* ∝ C^e | F* ∝ C^e | S* ∝ C^e | S* ∝ F*^e |", "|---|---|---|---|---|---|"]
    named = [(f"MSE + {lam:g}·L1", res["l1"][lam]) for lam in lams] + [(f"MSE + {a.alpha:g}·L0", res["l0"])]
    for name, f in named:
        if "loss_vs_flops" in f:
            lines.append(f"| {name} | {len(f['optima'])} | {law(f['loss_vs_flops'])} | {law(f['features_vs_flops'])} | "
                         f"{law(f['steps_vs_flops'])} | {law(f['steps_vs_features'])} |")
        else:
            lines.append(f"| {name} | {len(f['optima'])} | too few interior optima to fit | | | |")
    lines += ["", "IsoFLOP optima (a parabola in log F through log seed-mean loss on each budget; a budget whose "
              "optimum falls on its smallest or largest size is listed but not fitted):", "",
              "| loss | FLOPs | F* | S* | L* | sizes | fitted |", "|---|---|---|---|---|---|---|"]
    for name, f in named:
        for o in sorted(f["optima"] + f["edge_optima"], key=lambda o: o["flops"]):
            lines.append(f"| {name} | {o['flops']:.3g} | {o['d_sae']:.0f} | {o['steps']:.0f} | {o['loss']:.3f} | "
                         f"{o['points']} | {'yes' if o['interior'] else 'no (edge)'} |")
    lines += ["", *[f"![{name}](scaling-laws-{tag}.png)" for name, tag in
                    [(f"λ {lam:g}", f"l1-{lam:g}") for lam in lams] + [("L0", "l0")]], ""]
    budgets = sorted({12 * d_in * batch * F * S for F, S in cells})
    for lam in lams:
        cell = {(r["d_sae"], 12 * d_in * batch * r["d_sae"] * r["steps"]): r for r in avg if r["l1_coefficient"] == lam}
        lines += [f"## Held-out MSE + {lam:g}·L1, seed-mean (L0 in brackets)", "",
                  "| features \\ FLOPs | " + " | ".join(f"{C:.3g}" for C in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for F in sizes:
            lines.append(f"| {F} | " + " | ".join(
                f"{cell[(F, C)]['loss_l1']:.2f} ({cell[(F, C)]['l0']:.1f})" if (F, C) in cell else "—"
                for C in budgets) + " |")
        lines.append("")
    if t_invocation:
        lines += [f"This invocation: {t_invocation:.0f} s (finished runs are reused).", ""]
    (docs / "scaling-laws.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'scaling-laws.md'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--l1s", type=float, nargs="+", default=[0.75, 1.5])
    ap.add_argument("--alpha", type=float, default=0.5,
                    help="α of the L0-based loss MSE + α·L0 (0.5: the two terms of similar size mid-grid)")
    ap.add_argument("--budgets", type=int, default=9, help="FLOP budgets, each twice the one before")
    ap.add_argument("--base", type=int, default=25600, help="F·S of the smallest budget")
    ap.add_argument("--band", type=int, default=2, help="sizes each side of a band's centre")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--cache", default="runs/cache-scaling")
    ap.add_argument("--cache-tokens", type=int, default=7_000_000)
    ap.add_argument("--out", default="runs/scaling")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args(argv)
    docs = Path(a.docs)
    res = Results(docs / "scaling-laws.jsonl", KEY)
    t0 = time.perf_counter()
    if not a.render_only:
        from saeforge.cli import main as saeforge_main

        if not (Path(a.cache) / "manifest.json").exists():
            if saeforge_main(["harvest", "--out", a.cache, "--tokens", str(a.cache_tokens), "--no-progress"]):
                sys.exit(2)
        cells = design(a, res)
        for seed in a.seeds:
            if seed != 0:
                sweep(a, seed, cells, res)
    rows = [r for r in res.rows if r["seed"] in a.seeds and r["l1_coefficient"] in a.l1s]
    if not rows:
        sys.exit(f"{docs / 'scaling-laws.jsonl'} holds no run of these seeds and λ values; run without --render-only")
    render(a, rows, docs, 0.0 if a.render_only else time.perf_counter() - t0)


if __name__ == "__main__":
    main()
