"""Informed initialization on the first seed's toy scenarios, under the protocol (docs/protocol.md);
writes docs/informed-init.md from docs/informed-init.jsonl.

    python scripts/reproduce/reproduce_informed_init.py [--scenarios 256 512 1024] [--seeds 0 1 2 3 4]
        [--steps 2000] [--cadence-scenarios 256 1024] [--out runs/informed-init] [--render-only]

The seed's setup: 128-dimensional toy data superposing N ground-truth features (128/256 is the
seed's case; 128/1024 is 8× overcomplete), a ReLU + L1 dictionary of N latents, `saeforge toy`'s
defaults (λ 0.3, batch 2,048, stop at MMCS 0.99). `--seed` draws the scenario (its features) as
well as the init and the data order, so the validation scenario (seed 100) is a different draw
from the test scenarios (seeds 0 …).

- **init** (clustered resampling every 250 steps, the toy default on this data): orthogonal
  (the reference), orthogonal with b_dec at the sample mean (mean-centring alone), data (sample
  rows), datapoint centred (Anthropic's / saev's blend, p 0.8), mod (saeforge: spherical k-means
  then optimal directions), outlier (saeforge's rare-feature init, ratio 0.05).
- **cadence** (orthogonal and mod): resampling off, or clustered every 125 / 250 / 500 steps, or
  Anthropic's resampling (from inputs drawn by squared loss) every 250.

Every variant chose its lr from the protocol's grid on the validation scenario (resampling every
250), by its steps to MMCS 0.99 plus the init's own time converted to steps at the run's step time
(a run that never gets there ranks below every run that does, then by its final MMCS).
A run that never reaches 0.99 counts at the budget in the paired differences (a floor on its true
cost: the intervals of a comparison it enters are then conservative for the variant that reached).
The cost also counts resampling's own time (clustered resampling's k-means is not free), converted
the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from saeforge.evaluation.protocol import (LRS, Results, choose, fmt_interval, mean_interval, paired,  # noqa: E402
                                          table)

KEY = ("study", "scenario", "variant", "cadence", "lr", "seed", "steps")
VALIDATION_SEED = 100
INIT = {  # variant -> `saeforge toy` flags
    "orthogonal": ["--init", "orthogonal"],
    "orthogonal centred": ["--init", "orthogonal", "--center-init"],
    "data": ["--init", "data"],
    "datapoint centred": ["--init", "datapoint", "--center-init"],
    "mod": ["--init", "mod"],
    "outlier r0.05": ["--init", "outlier", "--rare-ratio", "0.05"],
}
CADENCE = {"none": ["--resample", "none"], "125": ["--resample", "clustered", "--resample-every", "125"],
           "250": ["--resample", "clustered", "--resample-every", "250"],
           "500": ["--resample", "clustered", "--resample-every", "500"],
           "anthropic 250": ["--resample", "anthropic", "--resample-every", "250"]}
CADENCE_VARIANTS = ("orthogonal", "mod")
# a scenario named in --reduced (its runs cost minutes: 128/1024 never stops early) runs a smaller design
REDUCED = {"seeds": 3, "variants": ("orthogonal", "datapoint centred", "mod"), "cadences": ("none", "250")}


def run(a, res: Results, study: str, nf: int, variant: str, cadence: str, lr: float, seed: int) -> dict:
    key = dict(study=study, scenario=nf, variant=variant, cadence=cadence, lr=lr, seed=seed, steps=a.steps)
    row = res.get(**key)
    if row is not None:
        return row
    from saeforge.cli import main as saeforge_main

    out = run_dir(a, nf, variant, cadence, lr, seed)
    if not (out / "summary.json").exists():
        code = saeforge_main(["toy", "--d-model", "128", "--n-features", str(nf), "--seed", str(seed), "--steps",
                              str(a.steps), "--lr", str(lr), "--out", str(out), "--no-progress", *INIT[variant],
                              *CADENCE[cadence]])
        if code:
            sys.exit(code)
    s = json.loads((out / "summary.json").read_text())
    print(f"128/{nf} {variant} resample {cadence} lr {lr:g} seed {seed}: start {s['mmcs_initial']:.3f} "
          f"to 0.99 {s['steps_to_mmcs']['0.99']} final {s['mmcs_final']:.4f}", flush=True)
    return res.add(key | {"split": "validation" if seed == VALIDATION_SEED else "test"} | measured(s))


def run_dir(a, nf: int, variant: str, cadence: str, lr: float, seed: int) -> Path:
    slug = variant.replace(" ", "-")
    return Path(a.out) / f"128-{nf}" / slug / f"resample-{cadence.replace(' ', '-')}" / f"lr{lr:g}" / f"seed{seed}"


def measured(s: dict) -> dict:
    """A run's row from its summary.json. The cost to MMCS 0.99 counts the init's and resampling's own
    time, converted to steps at the run's pure step time (its training seconds less resampling's)."""
    t99 = s["steps_to_mmcs"]["0.99"]
    resample_s = s.get("resample_s", 0.0) or 0.0
    step_s = max(s["train_s"] - resample_s, 1e-9) / max(s["steps"], 1)
    cost = None if t99 is None else t99 + (s["init_s"] + resample_s) / step_s
    return {"start": s["mmcs_initial"], "t95": s["steps_to_mmcs"]["0.95"], "t99": t99, "cost99": cost,
            "final": s["mmcs_final"], "dead": s["dead_features"], "l0": s["l0"], "ev": s["explained_variance"],
            "init_s": s["init_s"], "train_s": s["train_s"], "resample_s": resample_s, "steps_run": s["steps"],
            "resample_events": s.get("resample_events", 0)}


def backfill(a, path: Path) -> None:
    """Rewrite the results file's rows from their runs' summaries (the measures `measured` defines)."""
    from saeforge.runtime import atomic_write_bytes

    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = []
    for r in rows:
        s = json.loads((run_dir(a, r["scenario"], r["variant"], r["cadence"], r["lr"], r["seed"]) / "summary.json")
                       .read_text())
        out.append(r | measured(s))
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in out).encode())


def score(row: dict, budget: int) -> float:
    """The lr choice (lower is better): steps to 0.99 plus the init's time in steps at the run's step time
    where reached, else the budget plus the MMCS still missing. (The reported cost also counts
    resampling's time; the choice was fixed before that, and kept.)"""
    if row["t99"] is None:
        return budget * (2 - row["final"])
    return row["t99"] + row["init_s"] / (row["train_s"] / max(row["steps_run"], 1))


def chosen_lr(a, res: Results, nf: int, variant: str) -> float:
    rows = [run(a, res, "init", nf, variant, "250", lr, VALIDATION_SEED) for lr in a.lrs]
    return choose([dict(r, score=score(r, a.steps)) for r in rows], "score", higher_is_better=False)["lr"]


def design(a, nf: int) -> tuple[list[int], tuple[str, ...], tuple[str, ...]]:
    """(seeds, init variants, cadences) of a scenario: the full design, or REDUCED for --reduced ones."""
    if nf in a.reduced:
        return a.seeds[:REDUCED["seeds"]], REDUCED["variants"], REDUCED["cadences"]
    return a.seeds, tuple(INIT), tuple(CADENCE)


def collect(a, res: Results) -> None:
    for nf in a.scenarios:
        seeds, variants, _ = design(a, nf)
        for variant in variants:
            lr = chosen_lr(a, res, nf, variant)
            for seed in seeds:
                run(a, res, "init", nf, variant, "250", lr, seed)
    for nf in a.cadence_scenarios:
        seeds, _, cadences = design(a, nf)
        for variant in CADENCE_VARIANTS:
            lr = chosen_lr(a, res, nf, variant)
            for cadence in cadences:
                for seed in seeds:
                    run(a, res, "init", nf, variant, cadence, lr, seed)


# ---- rendering -------------------------------------------------------------------------------------

def lr_of(rows: list[dict], nf: int, variant: str, lrs, budget: int) -> float | None:
    val = [r for r in rows if r["scenario"] == nf and r["variant"] == variant and r["cadence"] == "250"
           and r["seed"] == VALIDATION_SEED and r["lr"] in lrs]
    if len(val) < len(lrs):
        return None
    return choose([dict(r, score=score(r, budget)) for r in val], "score", higher_is_better=False)["lr"]


def test_rows(rows, nf, variant, cadence, lr, seeds) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["scenario"] == nf and r["variant"] == variant and r["cadence"] == cadence
            and r["lr"] == lr and r["seed"] in seeds}


def capped(r: dict, budget: int) -> float:
    return r["cost99"] if r["cost99"] is not None else float(budget)


def summary_row(label, by_seed: dict[int, dict], budget: int, lr) -> list:
    rs = list(by_seed.values())
    reached = sum(r["cost99"] is not None for r in rs)
    cost = mean_interval([capped(r, budget) for r in rs])
    return [label, f"{lr:g}", len(rs), fmt_interval(*mean_interval([r["start"] for r in rs])),
            f"{reached}/{len(rs)}", ("≥ " if reached < len(rs) else "") + fmt_interval(*cost, spec=".0f"),
            fmt_interval(*mean_interval([r["final"] for r in rs]), spec=".4f"),
            fmt_interval(*mean_interval([r["dead"] for r in rs]), spec=".1f"),
            fmt_interval(*mean_interval([r["l0"] for r in rs]), spec=".2f"),
            f"{mean_interval([r['init_s'] for r in rs])[0]:.2f}"]


HEAD = ["variant", "lr", "seeds", "MMCS at step 0", "reached 0.99", "cost to 0.99 (steps)", "final MMCS", "dead",
        "L0", "init s"]


def comparisons(ref: dict[int, dict], other: dict[int, dict], budget: int) -> list[tuple[str, dict]]:
    return [("cost to 0.99", paired({s: capped(r, budget) for s, r in ref.items()},
                                    {s: capped(r, budget) for s, r in other.items()}, higher_is_better=False)),
            ("final MMCS", paired({s: r["final"] for s, r in ref.items()}, {s: r["final"] for s, r in other.items()}))]


def render(rows: list[dict], a, cmd: str) -> str:
    budget, seeds = a.steps, set(a.seeds)
    lines = ["# Informed initialization on the first seed's toy scenarios, under the protocol", "",
             f"Generated by `{cmd}` from [informed-init.jsonl](informed-init.jsonl); the rules are "
             "[protocol.md](protocol.md)'s and the script's docstring says what each variant is. The same question "
             "on the synthetic benchmark: [methods-synthetic.md](methods-synthetic.md); on the real model: "
             "[evals.md](evals.md).", "",
             f"Budget: {budget:,} steps × 2,048 samples (a run stops at MMCS 0.99). Each variant chose its lr from "
             f"{{{', '.join(f'{x:g}' for x in a.lrs)}}} on the validation scenario (seed {VALIDATION_SEED}; by steps "
             "to 0.99 plus the init's time); figures "
             f"are means over the test scenarios (seeds {sorted(seeds)}; 128/{', 128/'.join(map(str, a.reduced)) or '—'}: "
             f"the first {REDUCED['seeds']}, with orthogonal, datapoint centred and mod only, resampling off or every "
             "250, as its runs cost minutes) with 95% t-intervals, and each difference "
             "is paired by seed (a verdict only where its interval excludes 0). *Cost to 0.99* adds the init's and "
             f"resampling's own time, in steps at the run's pure step time; a run that never reaches 0.99 counts at the "
             f"budget ({budget:,}), "
             "marked ≥. The runs shared this 2-core machine with one to three other jobs, each on one thread (the init seconds compare variants within this document only).", ""]
    verdicts: list[str] = []
    for nf in a.scenarios:
        body, diffs = [], []
        seeds = set(design(a, nf)[0])
        lrs = {v: lr_of(rows, nf, v, a.lrs, budget) for v in INIT}
        ref = test_rows(rows, nf, "orthogonal", "250", lrs["orthogonal"], seeds)
        for v in INIT:
            got = test_rows(rows, nf, v, "250", lrs[v], seeds)
            if lrs[v] is None or not got:
                continue
            body.append(summary_row(v, got, budget, lrs[v]))
            if v != "orthogonal" and ref:
                for metric, p in comparisons(ref, got, budget):
                    diffs.append([f"{v} − orthogonal", metric, fmt_interval(p["difference"], *p["interval"],
                                  spec=".4f" if metric == "final MMCS" else ".0f"), p["seeds"], p["verdict"]])
                    verdicts.append(f"128/{nf}: {v} {metric} {p['verdict']}")
        if not body:
            continue
        lines += [f"## 128/{nf} ({nf // 128}× overcomplete), resampling every 250 steps", "", *table(HEAD, body), "",
                  *table(["variant − reference", "metric", "difference [95%]", "seeds", "verdict"], diffs), ""]
    for nf in a.cadence_scenarios:
        body, diffs = [], []
        seeds = set(design(a, nf)[0])
        for v in CADENCE_VARIANTS:
            lr = lr_of(rows, nf, v, a.lrs, budget)
            for c in CADENCE:
                got = test_rows(rows, nf, v, c, lr, seeds)
                if got:
                    body.append(summary_row(f"{v}, resample {c}", got, budget, lr))
        for c in CADENCE:
            ref = test_rows(rows, nf, "orthogonal", c, lr_of(rows, nf, "orthogonal", a.lrs, budget), seeds)
            got = test_rows(rows, nf, "mod", c, lr_of(rows, nf, "mod", a.lrs, budget), seeds)
            if ref and got:
                for metric, p in comparisons(ref, got, budget):
                    diffs.append([f"mod − orthogonal, resample {c}", metric, fmt_interval(
                        p["difference"], *p["interval"], spec=".4f" if metric == "final MMCS" else ".0f"),
                        p["seeds"], p["verdict"]])
                    verdicts.append(f"128/{nf} resample {c}: mod {metric} {p['verdict']}")
        for v in CADENCE_VARIANTS:  # each cadence against none, and against the toy default (every 250)
            lr = lr_of(rows, nf, v, a.lrs, budget)
            for c, base in [(c, "none") for c in ("125", "250", "500", "anthropic 250")] + [
                    (c, "250") for c in ("125", "500", "anthropic 250")]:
                ref, got = test_rows(rows, nf, v, base, lr, seeds), test_rows(rows, nf, v, c, lr, seeds)
                if ref and got:
                    for metric, p in comparisons(ref, got, budget):
                        diffs.append([f"{v}: resample {c} − {base}", metric, fmt_interval(
                            p["difference"], *p["interval"], spec=".4f" if metric == "final MMCS" else ".0f"),
                            p["seeds"], p["verdict"]])
                        if base == "250":
                            verdicts.append(f"128/{nf} {v}: resample {c} against every 250, {metric} {p['verdict']}")
        if body:
            lines += [f"## Resampling cadence, 128/{nf}", "",
                      "The lr is each variant's from the init study (chosen at every 250 steps).", "",
                      *table(HEAD, body), "",
                      *table(["variant − reference", "metric", "difference [95%]", "seeds", "verdict"], diffs), ""]
    lines += ["## Verdicts in one list", "", *[f"- {v}" for v in verdicts], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--cadence-scenarios", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--reduced", type=int, nargs="*", default=[1024],
                    help="scenarios run with the smaller design (3 seeds; orthogonal, datapoint centred, mod; "
                         "resampling off or every 250)")
    ap.add_argument("--out", default="runs/informed-init")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--backfill", action="store_true", help="rewrite the rows' measures from the runs' summaries first")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    docs = Path(a.docs)
    if a.backfill:
        backfill(a, docs / "informed-init.jsonl")
    res = Results(docs / "informed-init.jsonl", KEY)
    if not a.render_only:
        collect(a, res)
    rows = [r for r in res.rows if r["steps"] == a.steps]
    cmd = (f"python scripts/reproduce/reproduce_informed_init.py --scenarios {' '.join(map(str, a.scenarios))} "
           f"--cadence-scenarios {' '.join(map(str, a.cadence_scenarios))} --seeds {' '.join(map(str, a.seeds))} "
           f"--steps {a.steps} --reduced {' '.join(map(str, a.reduced))}")
    (docs / "informed-init.md").write_text(render(rows, a, cmd))
    print(f"wrote {docs / 'informed-init.md'}")


if __name__ == "__main__":
    main()
