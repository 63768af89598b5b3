"""Transcoders on the embedded model: a per-layer set (a transcoder per MLP, all four from one pass)
against a cross-layer transcoder at the same total latents and budget, with and without the skip
connection, informed init and clustered resampling; writes docs/transcoders.md from
docs/transcoders.jsonl.

    python scripts/reproduce/transcoders.py [--seeds 0 1 2] [--tokens 500000] [--dict-size 512] [--k 16]
        [--timing-repeats 3] [--out runs/transcoders] [--render-only]

Every transcoder reads blocks.L.ln2.hook_normalized and writes blocks.L.hook_mlp_out, L = 0 … 3, at
its architecture's default lr (no lr grid: each run costs minutes; as docs/evals.md). L0 is matched by
k (k per layer for the cross-layer transcoder too); the ReLU + L1 pair (per-layer and cross-layer,
the second architecture both kinds train) runs at the default λ, its L0 as measured. Per run: each layer's FVU (1 − explained variance
of the MLP output) and L0 on 65,536 held-out tokens, the CE loss recovered and KL with that layer's
MLP replaced, and with all four replaced at once (`saeforge eval … --together`; the CLT's own
splice). Differences against the reference (the per-layer TopK set) are paired by seed.

Clustered resampling runs every 100 steps (it stops where the lr decay starts, halfway through the
budget), beside AuxK.

Timing: the per-layer set trained in one pass against the four trained one by one (four passes),
interleaved rounds (protocol.interleaved), with the one-pass weights checked against the one-by-one
weights (they are the same runs, to float rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from saeforge.evaluation.protocol import (Results, fmt_interval, interleaved, mean_interval, paired,  # noqa: E402
                                          ratio_interval, table)

LAYERS = 4
HOOKS = ",".join(f"blocks.{i}.ln2.hook_normalized" for i in range(LAYERS))
TARGETS = ",".join(f"blocks.{i}.hook_mlp_out" for i in range(LAYERS))
VARIANTS = {  # name -> flags beside the hooks (k and the size are added)
    "per-layer topk": ["--architecture", "topk"],
    "per-layer topk + skip": ["--architecture", "topk", "--skip-connection"],
    "per-layer topk, mod init": ["--architecture", "topk", "--init", "mod"],
    "per-layer topk, AuxK + clustered": ["--architecture", "topk", "--resample", "clustered", "--resample-every", "100"],
    "per-layer batchtopk": ["--architecture", "batchtopk"],
    "per-layer batchtopk + skip": ["--architecture", "batchtopk", "--skip-connection"],
    "cross-layer topk": ["--architecture", "topk", "--cross-layer"],
    "cross-layer topk, mod init": ["--architecture", "topk", "--cross-layer", "--init", "mod"],
    # the second architecture both kinds train: ReLU + L1 at its default λ (L0 as measured, not matched to k)
    "per-layer standard": ["--architecture", "standard"],
    "cross-layer standard": ["--architecture", "standard", "--cross-layer"],
}
REFERENCE = "per-layer topk"
# (variant, what it is compared with): the TopK variants against the per-layer TopK set; within the others
PAIRS = [(v, REFERENCE) for v in VARIANTS if "topk" in v and v != REFERENCE] + [
    ("per-layer batchtopk + skip", "per-layer batchtopk"), ("cross-layer topk, mod init", "cross-layer topk"),
    ("cross-layer standard", "per-layer standard")]
KEY = ("kind", "variant", "seed", "tokens")


def train(a, variant: str, seed: int) -> dict:
    from saeforge.cli import main as saeforge_main

    out = Path(a.out) / variant.replace(" ", "_").replace(",", "").replace("+", "plus") / f"seed{seed}"
    if not (out / "summary.json").exists():
        args = ["train", "--hooks", HOOKS, "--target-hooks", TARGETS, "--dict-size", str(a.dict_size), "--k", str(a.k),
                "--tokens", str(a.tokens), "--seed", str(seed), "--out", str(out), "--no-progress", *VARIANTS[variant]]
        t0 = time.perf_counter()
        if saeforge_main(args):
            sys.exit(f"failed: saeforge {' '.join(args)}")
        (out / "wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    summary = json.loads((out / "summary.json").read_text())
    wall = json.loads((out / "wall.json").read_text())["wall_s"]
    if summary.get("cross_layer"):
        layers = [{"fvu": 1 - r["explained_variance"], "l0": r["l0"], "dead": r["dead_fraction"]} for r in summary["layers"]]
        together = {k: summary[k] for k in ("ce_loss_recovered", "kl_divergence")}
    else:
        names = sorted(summary["dictionaries"], key=lambda n: int(n.split(".")[1]))
        layers = [{"fvu": 1 - summary["dictionaries"][n]["explained_variance"], "l0": summary["dictionaries"][n]["l0"],
                   "dead": summary["dictionaries"][n]["dead_fraction"],
                   "ce_one": summary["dictionaries"][n]["ce_loss_recovered"],
                   "kl_one": summary["dictionaries"][n]["kl_divergence"]} for n in names]
        together = eval_together(out, names)
    return {"layers": layers, "ce_all": together["ce_loss_recovered"], "kl_all": together["kl_divergence"],
            "fvu_mean": statistics.fmean(r["fvu"] for r in layers), "l0_mean": statistics.fmean(r["l0"] for r in layers),
            "wall_s": wall}


def eval_together(out: Path, names: list[str]) -> dict:
    import contextlib
    import io

    from saeforge.cli import main as saeforge_main

    f = out / "together.json"
    if not f.exists():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            if saeforge_main(["eval", *(str(out / n) for n in names), "--together", "--no-progress"]):
                sys.exit(f"failed: saeforge eval --together on {out}")
        f.write_text(buf.getvalue())
    return json.loads(f.read_text())


def timing(a, res: Results) -> None:
    """The per-layer TopK set from one pass against its layers one by one, interleaved rounds."""
    import shutil

    from saeforge.cli import main as saeforge_main

    base = ["--dict-size", str(a.dict_size), "--k", str(a.k), "--tokens", str(a.tokens), "--seed", "0", "--no-progress",
            "--eval-tokens", "0", "--architecture", "topk"]
    work = Path(a.out) / "timing"

    def one_pass() -> float:
        shutil.rmtree(work / "pass", ignore_errors=True)
        t0 = time.perf_counter()
        assert saeforge_main(["train", "--hooks", HOOKS, "--target-hooks", TARGETS, "--out", str(work / "pass"),
                              *base]) == 0
        return time.perf_counter() - t0

    def one_by_one() -> float:
        t0 = time.perf_counter()
        for i, (h, t) in enumerate(zip(HOOKS.split(","), TARGETS.split(","))):
            shutil.rmtree(work / f"alone{i}", ignore_errors=True)
            assert saeforge_main(["train", "--hook", h, "--target-hook", t, "--out", str(work / f"alone{i}"),
                                  *base]) == 0
        return time.perf_counter() - t0

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        times = interleaved({"one pass": one_pass, "one by one": one_by_one}, repeats=a.timing_repeats)
    import saeforge

    diffs = []
    for i in range(LAYERS):
        together = saeforge.load(next((work / "pass").glob(f"blocks.{i}.*")))
        alone = saeforge.load(work / f"alone{i}")
        diffs.append(max(float((getattr(together, p) - getattr(alone, p)).detach().abs().max())
                         for p in ("W_enc", "b_enc", "W_dec", "b_dec")))
    res.add({"kind": "timing", "variant": "one pass vs one by one", "seed": 0, "tokens": a.tokens,
             "one_pass_s": times["one pass"], "one_by_one_s": times["one by one"], "max_weight_diff": max(diffs)})


def render(rows: list[dict], a, cmd: str) -> str:
    seeds = set(a.seeds)
    runs = {v: {r["seed"]: r for r in rows if r["kind"] == "run" and r["variant"] == v and r["seed"] in seeds
                and r["tokens"] == a.tokens} for v in VARIANTS}
    L = ["# Transcoders and a cross-layer transcoder on the embedded model", "",
         f"Generated by `{cmd}` from [transcoders.jsonl](transcoders.jsonl); the script's docstring says what each "
         "variant is. Rules: [protocol.md](protocol.md) (no lr grid here: each run costs minutes, so every variant "
         "trains at its architecture's default lr, as in [evals.md](evals.md)).", "",
         f"Four MLPs replaced (blocks.L.ln2.hook_normalized → blocks.L.hook_mlp_out), {a.dict_size} latents per layer "
         f"({a.dict_size * LAYERS:,} in all, for the cross-layer transcoder too), k {a.k} per layer, {a.tokens:,} "
         f"training tokens, seeds {sorted(seeds)}; means with 95% t-intervals over seeds. FVU = 1 − explained variance "
         "of the MLP output on 65,536 held-out tokens; CE loss recovered and KL (nats per token) with all four MLPs "
         "replaced at once (the per-layer set: `saeforge eval … --together`). The runs shared this 2-core machine "
         "with one to three others (wall times: the last section, measured apart).", ""]
    body = []
    for v, by in runs.items():
        if not by:
            continue
        rs = list(by.values())
        per_layer = [fmt_interval(*mean_interval([r["layers"][i]["fvu"] for r in rs])) for i in range(LAYERS)]
        body.append([v, len(rs), *per_layer, fmt_interval(*mean_interval([r["l0_mean"] for r in rs]), spec=".1f"),
                     fmt_interval(*mean_interval([r["ce_all"] for r in rs])),
                     fmt_interval(*mean_interval([r["kl_all"] for r in rs]))])
    L += table(["variant", "seeds", *(f"FVU layer {i}" for i in range(LAYERS)), "L0 per layer",
                "CE recovered, all replaced", "KL, all replaced"], body) + [""]
    diffs = []
    for v, base in PAIRS:
        by, ref = runs.get(v), runs.get(base)
        if not by or not ref:
            continue
        for name, key, up in (("mean FVU", "fvu_mean", False), ("CE recovered, all replaced", "ce_all", True),
                              ("KL, all replaced", "kl_all", False)):
            d = paired({s: r[key] for s, r in ref.items()}, {s: r[key] for s, r in by.items()}, higher_is_better=up)
            diffs.append([f"{v} − {base}", name, fmt_interval(d["difference"], *d["interval"], spec=".4f"),
                          d["seeds"], d["verdict"]])
    if diffs:
        L += ["## Differences, paired by seed", "",
              *table(["variant − reference", "metric", "difference [95%]", "seeds", "verdict"], diffs), ""]
    t = [r for r in rows if r["kind"] == "timing" and r["tokens"] == a.tokens]
    if t:
        r = t[-1]
        m, lo, hi = ratio_interval(r["one_by_one_s"], r["one_pass_s"])
        L += ["## One pass against one by one", "",
              f"The per-layer TopK set (seed 0, {a.tokens:,} tokens, no evals) trained from one forward pass against "
              f"its four transcoders trained one by one, {len(r['one_pass_s'])} interleaved rounds on this 2-core "
              "machine (in turn within each round, so a load that comes or goes falls on both): one pass "
              f"{statistics.median(r['one_pass_s']):.1f} s, one by one "
              f"{statistics.median(r['one_by_one_s']):.1f} s (medians): one pass is {m:.2f}× faster [{lo:.2f}, "
              f"{hi:.2f}]; the model's forward is a small share of a step on this 4-layer model, and a pass saves only "
              f"that. The weights of the two agree to {r['max_weight_diff']:.1e} (largest absolute difference over "
              "every tensor of the four transcoders).", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tokens", type=int, default=500_000)
    ap.add_argument("--dict-size", type=int, default=512)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--timing-repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/transcoders")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args(argv)
    docs = Path(a.docs)
    res = Results(docs / "transcoders.jsonl", KEY)
    if not a.render_only:
        for v in a.variants:
            for seed in a.seeds:
                res.cached(lambda: train(a, v, seed), kind="run", variant=v, seed=seed, tokens=a.tokens)
        if a.timing_repeats and res.get(kind="timing", variant="one pass vs one by one", seed=0, tokens=a.tokens) is None:
            timing(a, res)
    cmd = (f"python scripts/reproduce/transcoders.py --seeds {' '.join(map(str, a.seeds))} --tokens {a.tokens} "
           f"--dict-size {a.dict_size} --k {a.k} --timing-repeats {a.timing_repeats}")
    (docs / "transcoders.md").write_text(render(res.rows, a, cmd))
    print(f"wrote {docs / 'transcoders.md'}")


if __name__ == "__main__":
    main()
