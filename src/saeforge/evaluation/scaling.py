"""Scaling laws for dictionary learning: FLOP accounting, IsoFLOP fits, the compute-optimal frontier
(`saeforge sweep` runs the grid: pipeline/sweep.py).

FLOPs of a run (a multiply-add counts 2). Per token, the encoder (x − b_dec)·W_enc and the
decoder f·W_dec are 2·d·F each: forward 4dF; the backward pass costs twice the forward
(gradients w.r.t. the input side and the weights): 8dF; so training costs 12·d·F per token
(Kaplan's 6·N with N = 2dF weights; biases, ReLU, Adam and the decoder renormalization are
O(F + dF/B) per token and left out). A run of S steps of B tokens costs 12·d·F·B·S, plus its
init (`init_flops`).

The analysis follows the IsoFLOP method (Hoffmann et al. 2022), which the seed's grid allows
directly: with sizes and step counts on the same geometric ladder, every diagonal of the
grid (F·S constant) is one FLOP budget C. On each budget with at least 3 runs, a parabola
in log F through log loss gives the compute-optimal size F*(C) (its vertex, kept inside the
sizes run) and loss L*(C); S*(C) = C / (12·d·B·F*). A budget whose vertex falls on the
smallest or largest size only bounds its optimum and is left out of the fits. Power laws y = k·C^e are least-squares
lines in log-log space. With several seeds per cell a cell's loss is their mean, and the 95%
intervals come from a bootstrap (2,000 replicates, 2.5 and 97.5 percentiles) that first resamples
each cell's seeds and refits every budget's parabola (the vertices' own uncertainty), then
resamples the budgets' optima in pairs and refits the lines; with one seed only the second part
is left.

Losses (held-out, in the trainer's normalized units, E‖x‖² = d_in):
- "l1": MSE + λ·L1 (`loss_l1`) with the λ the run was trained with (the seed's MSE + 5·L1); for a
  sweep over k (TopK-like architectures) `loss_l1` is the MSE and the fits are per k;
- "l0": MSE + α·L0; per (F, S) the λ of the grid that minimizes it is chosen, as the seed does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from saeforge.errors import UserError
from saeforge.runtime import check_json


def train_flops(d_in: float, d_sae: int, tokens: int) -> float:
    return 12.0 * d_in * d_sae * tokens


def init_flops(method: str, d_in: int, d_sae: int, n_sample: int, iters: int = 20, mod_iters: int = 10) -> float:
    """The initializer's arithmetic: k-means is 2·n·F·d per Lloyd iteration; MOD adds the
    code projections, AᵀA (n·topk²·2) and the F³/3 solve per round; the others are ~free."""
    if method == "kmeans":
        return 2.0 * n_sample * d_sae * d_in * iters
    if method == "mod":
        return init_flops("kmeans", d_in, d_sae, n_sample) + mod_iters * (2.0 * n_sample * d_sae * d_in + d_sae ** 3 / 3)
    if method == "svd":
        return 4.0 * n_sample * d_in * d_in
    return 0.0


# ---------------------------------------------------------------- fitting
def fit_power_law(x, y) -> tuple[float, float]:
    """(k, e) of y = k·x^e by least squares in log-log space."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise ValueError("a power law needs at least two distinct x values")
    e, logk = np.polyfit(lx, ly, 1)
    return float(math.exp(logk)), float(e)


def bootstrap_power_law(x, y, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Fit plus a pairs-bootstrap 95% interval of the exponent and coefficient."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    k, e = fit_power_law(x, y)
    rs = np.random.default_rng(seed)
    es, ks = [], []
    for _ in range(n_boot):
        i = rs.integers(0, len(x), len(x))
        if np.ptp(np.log(x[i])) == 0:
            continue
        kb, eb = fit_power_law(x[i], y[i])
        es.append(eb)
        ks.append(kb)
    lo, hi = (np.percentile(es, [2.5, 97.5]) if es else (float("nan"), float("nan")))
    klo, khi = (np.percentile(ks, [2.5, 97.5]) if ks else (float("nan"), float("nan")))
    return {"k": k, "e": e, "e_lo": float(lo), "e_hi": float(hi), "k_lo": float(klo), "k_hi": float(khi), "n": len(x)}


def isoflop_optima(runs: list[dict], loss_key: str, d_in: int, batch: int, min_points: int = 3) -> list[dict]:
    """Per FLOP budget (grid diagonal), the parabola-vertex optimum in log F. `runs` rows have
    d_sae, steps, flops and loss_key. Budgets are grouped by rounding log2(F·S)."""
    groups: dict[int, list[dict]] = {}
    for r in runs:
        groups.setdefault(round(math.log2(r["d_sae"] * r["steps"]) * 4), []).append(r)
    out = []
    for _, rs in sorted(groups.items()):
        if len({r["d_sae"] for r in rs}) < min_points:
            continue
        lf = np.log([r["d_sae"] for r in rs])
        ll = np.log([r[loss_key] for r in rs])
        C = float(np.median([r["flops"] for r in rs]))
        a, b, c = np.polyfit(lf, ll, 2)
        best = int(np.argmin(ll))
        if a > 0:  # a valley: its vertex, kept inside the sizes run
            v = float(np.clip(-b / (2 * a), lf.min(), lf.max()))
            loss = float(math.exp(a * v * v + b * v + c))
        else:  # no valley: the best run
            v, loss = float(lf[best]), float(math.exp(ll[best]))
        F = math.exp(v)
        out.append({"flops": C, "d_sae": F, "steps": C / (12.0 * d_in * batch * F), "loss": min(loss, float(np.exp(ll[best]))),
                    "points": len(rs), "interior": bool(lf.min() < v < lf.max())})
    return out


def frontier(runs: list[dict], loss_key: str) -> list[dict]:
    """Runs that no cheaper-or-equal run beats: the lowest loss reachable at each FLOP budget."""
    best, out = math.inf, []
    for r in sorted(runs, key=lambda r: (r["flops"], r[loss_key])):
        if r[loss_key] < best:
            best = r[loss_key]
            out.append(r)
    return out


def l0_choice(runs: list[dict], alpha: float) -> list[dict]:
    """Per (F, S), the run (λ) minimizing MSE + α·L0, with that loss as 'loss_l0' (one seed's
    rows; `analyze` makes the same choice on the seed-mean)."""
    cells: dict[tuple[int, int], dict] = {}
    for r in runs:
        r = dict(r, loss_l0=r["mse"] + alpha * r["l0"])
        k = (r["d_sae"], r["steps"])
        if k not in cells or r["loss_l0"] < cells[k]["loss_l0"]:
            cells[k] = r
    return list(cells.values())


# A loss table: (F, S) -> (FLOPs, losses [options, seeds]). A cell's loss is the mean over its
# seeds, minimized over its options (one option for an L1 loss; the λ values for the L0 loss).
Table = dict[tuple[float, float], tuple[float, np.ndarray]]


def loss_tables(runs: list[dict], alpha: float) -> tuple[dict[float, Table], Table]:
    """Per sparsity value, the table of the held-out L1 loss; and the table of MSE + α·L0 whose
    options are the sparsity values (the seeds every value of a cell has, in seed order)."""
    by: dict[tuple[float, float], dict[float, dict[int, dict]]] = {}
    for r in runs:
        by.setdefault((r["d_sae"], r["steps"]), {}).setdefault(sparsity_value(r), {})[int(r.get("seed", 0))] = r
    l1: dict[float, Table] = {}
    l0: Table = {}
    for cell, per in by.items():
        for lam, seeds in per.items():
            rs = [seeds[s] for s in sorted(seeds)]
            l1.setdefault(lam, {})[cell] = (float(np.median([r["flops"] for r in rs])), np.array([[r["loss_l1"] for r in rs]]))
        common = sorted(set.intersection(*(set(seeds) for seeds in per.values())))
        lams = sorted(per)
        l0[cell] = (float(np.median([per[lams[0]][s]["flops"] for s in common])),
                    np.array([[per[lam][s]["mse"] + alpha * per[lam][s]["l0"] for s in common] for lam in lams]))
    return dict(sorted(l1.items())), l0


def _optima(table: Table, d_in: int, batch: int, rs: np.random.Generator | None = None) -> list[dict]:
    """IsoFLOP optima of a table; with `rs`, each cell's seeds are resampled with replacement first."""
    rows = []
    for (F, S), (C, M) in table.items():
        if rs is not None and M.shape[1] > 1:
            M = M[:, rs.integers(0, M.shape[1], M.shape[1])]
        rows.append({"d_sae": F, "steps": S, "flops": C, "loss": float(M.mean(1).min())})
    return isoflop_optima(rows, "loss", d_in, batch)


LAWS = {"loss_vs_flops": ("flops", "loss"), "features_vs_flops": ("flops", "d_sae"),
        "steps_vs_flops": ("flops", "steps"), "steps_vs_features": ("d_sae", "steps")}


def analyze(runs: list[dict], d_in: int, batch: int, alpha: float, n_boot: int = 2000) -> dict[str, Any]:
    """Fits for every λ of the grid (L1 loss) and for the L0 loss; see the module docstring.
    With several seeds per cell, a cell's loss is their mean, and the bootstrap resamples each
    cell's seeds before refitting the parabolas (the vertices' own uncertainty) and then the
    budgets' optima (the power laws' points). `pivot` is the geometric mean budget and `pivot_features`
    the geometric mean size: `boot["log_steps_at_pivot"]` holds each replicate's predicted log S*
    there, `boot["log_steps_at_features"]` its log S* at that many features."""
    l1, l0 = loss_tables(runs, alpha)
    budgets = {round(math.log2(F * S) * 4): C for t in l1.values() for (F, S), (C, _) in t.items()}
    pivot = float(np.exp(np.mean(np.log(list(budgets.values()))))) if budgets else 0.0
    sizes = {F for t in l1.values() for F, _ in t}
    pivot_f = float(np.exp(np.mean(np.log(list(sizes))))) if sizes else 0.0
    res: dict[str, Any] = {"l1": {}, "l0": None, "pivot": pivot, "pivot_features": pivot_f}
    for lam, table in l1.items():
        res["l1"][lam] = fits(table, d_in, batch, n_boot, pivot, pivot_f)
        res["l1"][lam]["frontier"] = frontier([r for r in runs if sparsity_value(r) == lam], "loss_l1")
    res["l0"] = fits(l0, d_in, batch, n_boot, pivot, pivot_f)
    res["l0"]["frontier"] = frontier(l0_choice(runs, alpha), "loss_l0")
    return res


def fits(table: Table, d_in: int, batch: int, n_boot: int, pivot: float, pivot_f: float, seed: int = 0) -> dict[str, Any]:
    everything = _optima(table, d_in, batch)
    # an optimum pinned to the smallest or largest size only bounds the true one: left out of the fits
    opt = [o for o in everything if o["interior"]]
    out: dict[str, Any] = {"optima": opt, "edge_optima": [o for o in everything if not o["interior"]]}
    if len(opt) < 2:
        return out
    for name, (xk, yk) in LAWS.items():
        k, e = fit_power_law([o[xk] for o in opt], [o[yk] for o in opt])
        out[name] = {"k": k, "e": e, "n": len(opt)}
    rs = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {name: [] for name in LAWS} | {f"k_{name}": [] for name in LAWS}
    at_pivot, at_features = [], []
    for _ in range(n_boot):
        o = [x for x in _optima(table, d_in, batch, rs) if x["interior"]]
        if len(o) < 2:
            continue
        o = [o[i] for i in rs.integers(0, len(o), len(o))]  # the budgets' points, pairs resampled
        if len({x["flops"] for x in o}) < 2 or len({x["d_sae"] for x in o}) < 2:
            continue
        for name, (xk, yk) in LAWS.items():
            kb, eb = fit_power_law([x[xk] for x in o], [x[yk] for x in o])
            boot[name].append(eb)
            boot[f"k_{name}"].append(kb)
        at_pivot.append(math.log(boot["k_steps_vs_flops"][-1]) + boot["steps_vs_flops"][-1] * math.log(pivot))
        at_features.append(math.log(boot["k_steps_vs_features"][-1]) + boot["steps_vs_features"][-1] * math.log(pivot_f))
    for name in LAWS:
        if boot[name]:
            lo, hi = np.percentile(boot[name], [2.5, 97.5])
            klo, khi = np.percentile(boot[f"k_{name}"], [2.5, 97.5])
        else:
            lo = hi = klo = khi = float("nan")
        out[name] |= {"e_lo": float(lo), "e_hi": float(hi), "k_lo": float(klo), "k_hi": float(khi)}
    out["boot"] = {"log_steps_at_pivot": np.array(at_pivot), "log_steps_at_features": np.array(at_features),
                   "features_e": np.array(boot["features_vs_flops"]),
                   "steps_e": np.array(boot["steps_vs_flops"])}
    return out


def suggest(result: dict[str, Any], flops: float, lam: float | None = None) -> dict[str, Any]:
    """Predicted compute-optimal size and steps (with 95% intervals) at a FLOP budget."""
    table = result["l1"]
    if not table:
        raise UserError("the sweep has no finished runs to fit")
    if lam is None or (lam not in table and len(table) == 1):  # a one-λ sweep answers for its λ
        lam = sorted(table)[len(table) // 2]
    f = table.get(lam)
    if f is None:
        raise UserError(f"the sweep has no runs with λ = {lam:g}; it has {', '.join(f'{k:g}' for k in sorted(table))}")
    if "features_vs_flops" not in f:
        raise UserError(f"the sweep has too few FLOP budgets with 3 or more sizes to fit (λ = {lam}); "
                        "add sizes or step counts")

    out = {"flops": flops, "sparsity_value": lam}
    for name, key in (("d_sae", "features_vs_flops"), ("steps", "steps_vs_flops"), ("loss", "loss_vs_flops")):
        p = f[key]
        C = np.array([o["flops"] for o in f["optima"]])
        c0 = float(np.exp(np.log(C).mean()))  # pivot: the intervals widen away from the data
        y0 = p["k"] * c0 ** p["e"]
        mid = p["k"] * flops ** p["e"]
        ends = sorted(y0 * (flops / c0) ** e for e in (p["e_lo"], p["e_hi"]))
        out[name] = {"value": mid, "lo": min(ends[0], mid), "hi": max(ends[1], mid), "exponent": p["e"]}
    return out


# ---------------------------------------------------------------- the grid
def parse_grid(text: str, name: str, kind=int) -> list:
    try:
        vals = [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise UserError(f"--{name} is empty")
    if any(v <= 0 for v in vals):
        raise UserError(f"--{name} values must be > 0, got {text!r}")
    if len(set(vals)) != len(vals):
        raise UserError(f"--{name} repeats a value: {text!r}")
    return sorted(vals)


OLD_NAMES = {"l1": "l1_coefficient", "l1_norm": "sparsity"}  # runs.jsonl of saeforge 0.1


def sparsity_value(row: dict) -> float:
    """A run's value on the sweep's sparsity axis (λ, λ₀ or k)."""
    return row[row.get("sparsity_axis", "l1_coefficient")]


RUN_FIELDS = {"d_sae": (int, True), "steps": (int, True), "sparsity_axis": (str, False), "d_in": (int, True),
              "d_out": (int, False),
              "batch_size": (int, True), "flops": (float, True), "mse": (float, True), "sparsity": (float, True),
              "l0": (float, True), "loss_l1": (float, True)}


def read_results(path: Path) -> list[dict]:
    """The finished runs of a sweep; a line cut by an interruption is skipped (that run is redone),
    a row that is not a sweep result is an error naming its line."""
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                row = {OLD_NAMES.get(k, k): v for k, v in row.items()}
            check_json(row, f"{path} line {i}", RUN_FIELDS)
            axis = row.get("sparsity_axis", "l1_coefficient")
            check_json(row, f"{path} line {i}", {axis: (float, True)})
            rows.append(row)
    return rows


def jsonable(o):
    """Plain JSON of an analysis (the bootstrap replicates left out)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items() if k != "boot"}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


def plot(res: dict, rows: list[dict], out: Path, alpha: float) -> list[Path]:
    """The seed's figures, per loss: loss against FLOPs per size (IsoFLOP optima and their
    fit), and the optimal size and steps against FLOPs."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    k_axis = bool(rows) and rows[0].get("sparsity_axis") == "k"
    entries = [(f"k-{lam:g}" if k_axis else f"l1-{lam:g}", f, [r for r in rows if sparsity_value(r) == lam], "loss_l1",
                f"held-out MSE (k = {lam:g})" if k_axis else f"held-out MSE + {lam:g}·L1")
               for lam, f in res["l1"].items()]
    entries.append(("l0", res["l0"], l0_choice(rows, alpha), "loss_l0", f"held-out MSE + {alpha:g}·L0 (best λ per cell)"))
    paths = []
    for tag, f, rs, key, ylabel in entries:
        fig = Figure(figsize=(16, 4.4))
        axes = fig.subplots(1, 3)
        cmap = matplotlib.colormaps["viridis"]
        sizes = sorted({r["d_sae"] for r in rs})
        for i, F in enumerate(sizes):
            pts = sorted((r["flops"], r[key]) for r in rs if r["d_sae"] == F)
            axes[0].plot(*zip(*pts), marker="o", ms=3, lw=1, color=cmap(i / max(1, len(sizes) - 1)), label=f"{F} features")
        C = np.array([o["flops"] for o in f["optima"]])
        if len(C):
            axes[0].plot(C, [o["loss"] for o in f["optima"]], "k*", ms=9, label="IsoFLOP optimum")
        if "loss_vs_flops" in f:
            p = f["loss_vs_flops"]
            Cs = np.geomspace(min(r["flops"] for r in rs), max(r["flops"] for r in rs), 50)
            axes[0].plot(Cs, p["k"] * Cs ** p["e"], "k--", lw=1,
                         label=f"L* ∝ C^{p['e']:.3f} [{p['e_lo']:.3f}, {p['e_hi']:.3f}]")
        axes[0].set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel=ylabel, title="loss against compute")
        axes[0].legend(fontsize=7)
        for ax, k2, name in ((axes[1], "d_sae", "features_vs_flops"), (axes[2], "steps", "steps_vs_flops")):
            if len(C):
                ax.plot(C, [o[k2] for o in f["optima"]], "ko", label="IsoFLOP optimum")
            if name in f:
                p = f[name]
                Cs = np.geomspace(C.min(), C.max(), 50)
                ax.plot(Cs, p["k"] * Cs ** p["e"], "k--", lw=1, label=f"∝ C^{p['e']:.3f} [{p['e_lo']:.3f}, {p['e_hi']:.3f}]")
            ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel=f"compute-optimal {k2}",
                   title=f"optimal {'features' if k2 == 'd_sae' else 'steps'} against compute")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"scaling-{tag}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
