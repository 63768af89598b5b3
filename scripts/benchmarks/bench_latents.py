"""The training step as the dictionary grows: time and peak memory per step of saeforge's step,
SAELens's, and the six dense products one step needs (the floor), at 4,096 / 16,384 / 65,536
latents; rows in docs/latents.jsonl, the table rendered into docs/performance.md (between its
`latents` markers for TopK, `latents-standard` / `latents-jumprelu` for the others).

    python scripts/benchmarks/bench_latents.py [--features 4096 16384 65536] [--rounds 3] [--repeats 5]
        [--d-in 128 --batch 4096 --k 32 --threads 2] [--architecture topk|standard|jumprelu] [--render-only]

ReLU + L1 and JumpReLU start with encoder biases such that about k latents fire per input (a trained
dictionary's sparsity; `sparse_biases`): their steps then run the sparse path, block by block over
the latents where [batch, latents] would pass 64 MB (dictionary/blocks.py).

Each measurement is a fresh process (so that its peak resident memory is its own): it runs the
contender once at 16·k latents (libraries loaded, kernels compiled), notes its resident memory,
builds the contender (the SAE and its Adam, or the floor's two
matrices), runs 2 warm-up steps and times `--repeats` more. Peak memory is the process's peak less
that mark: what the contender itself took. "Parameters + Adam" is 3 × the weights' bytes (weights,
exp_avg, exp_avg_sq). The processes run in a fresh random order each round.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from saeforge.evaluation.protocol import Results, fmt_interval, ratio_interval, table, write_section  # noqa: E402

METHODS = ("saeforge", "SAELens", "dense floor")
KEY = ("architecture", "features", "method", "round", "d_in", "batch", "k", "threads")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def sparse_biases(sae, x, L0: int) -> None:
    """ReLU + L1, JumpReLU: encoder biases such that about L0 latents fire per input (as a trained
    dictionary's), from 512 rows, 4,096 latents at a time (no [rows, latents] tensor)."""
    import torch

    rows = x[:512]
    q = int(len(rows) * (1 - L0 / sae.d_sae))
    theta = sae.threshold if hasattr(sae, "threshold") else torch.zeros(sae.d_sae)
    with torch.no_grad():
        for f0 in range(0, sae.d_sae, 4096):
            pre = (rows - sae.b_dec) @ sae.W_enc[:, f0:f0 + 4096] + sae.b_enc[f0:f0 + 4096]
            sae.b_enc[f0:f0 + 4096] -= pre.kthvalue(max(q, 1), dim=0).values - theta[f0:f0 + 4096]


def build(a, method: str, F: int):
    """(the contender's step, parameters + Adam bytes) at F latents."""
    import torch

    from saeforge.dictionary.architectures import JumpReLUSAE, StandardSAE, TopKSAE
    from saeforge.dictionary.init import initialize

    D, B = a.d_in, a.batch
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    ours = {"topk": lambda: TopKSAE(D, F, k=a.k), "standard": lambda: StandardSAE(D, F),
            "jumprelu": lambda: JumpReLUSAE(D, F)}[a.architecture]()
    initialize(ours, "orthogonal", seed=0)
    if a.architecture != "topk":
        sparse_biases(ours, x, a.k)
    state = 3 * sum(p.numel() * p.element_size() for p in ours.parameters())
    if method == "saeforge":
        opt = torch.optim.Adam(ours.parameters(), lr=1e-5, fused=True)

        def step():  # as the trainer runs it: the last step's gradients freed first
            opt.zero_grad(set_to_none=True)
            ours.step(x, 5.0 if a.architecture != "topk" else 0.0)
            opt.step()
    elif method == "SAELens":
        import sae_lens
        from sae_lens.saes.sae import TrainStepInput

        name, kw = {"topk": ("TopK", {"k": a.k}), "standard": ("Standard", {"l1_coefficient": 5.0}),
                    "jumprelu": ("JumpReLU", {"l0_coefficient": 5.0})}[a.architecture]
        cfg = getattr(sae_lens, f"{name}TrainingSAEConfig")(d_in=D, d_sae=F, **kw)
        sl = getattr(sae_lens, f"{name}TrainingSAE")(cfg)
        with torch.no_grad():  # the same weights: the same codes
            for p in ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if a.architecture == "jumprelu" else ()):
                getattr(sl, p).copy_(getattr(ours, p))
        del ours
        opt = torch.optim.Adam(sl.parameters(), lr=1e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 5.0, "l0": 5.0},
                                                          dead_neuron_mask=None, n_training_steps=0,
                                                          is_logging_step=False))
            out.loss.backward()
            opt.step()
    else:
        from bench_train_step import dense_floor

        W_enc, W_dec = ours.W_enc.detach().clone(), ours.W_dec.detach().clone()
        del ours

        def step():
            dense_floor(x, W_enc, W_dec)
    return step, state


def child(a) -> None:
    import torch

    from saeforge.runtime import keep_freed_memory

    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as saeforge's CLI runs
    warm, _ = build(a, a.child, 16 * a.k)  # libraries loaded, kernels compiled, pools started: not the step's
    warm()
    del warm
    base = rss_mb()
    step, state = build(a, a.child, a.child_features)
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        step()
    s = (time.perf_counter() - t0) / a.repeats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(json.dumps({"step_s": s, "tokens_per_s": a.batch / s, "peak_mb": peak, "state_mb": state / 2**20}))


def measure(a, results: Results) -> None:
    common = dict(architecture=a.architecture, d_in=a.d_in, batch=a.batch, k=a.k, threads=a.threads)
    for rnd in range(a.rounds):
        todo = [(F, m) for F in a.features for m in METHODS]
        random.Random(rnd).shuffle(todo)
        for F, m in todo:
            key = dict(features=F, method=m, round=rnd, **common)
            if results.get(**key):
                continue
            cmd = [sys.executable, __file__, "--child", m, "--child-features", str(F), "--repeats", str(a.repeats),
                   "--d-in", str(a.d_in), "--batch", str(a.batch), "--k", str(a.k), "--threads", str(a.threads),
                   "--architecture", a.architecture]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = results.add({**key, **json.loads(out)})
            print(json.dumps({k: row[k] for k in ("features", "method", "round", "step_s", "peak_mb")}), flush=True)


def render(rows: list[dict], cmd: str) -> list[str]:
    feats = sorted({r["features"] for r in rows})
    by = {}
    for r in rows:
        by.setdefault((r["features"], r["method"]), {})[r["round"]] = r
    body = []
    for F in feats:
        med = {m: statistics.median(r["step_s"] for r in by[F, m].values()) for m in METHODS if (F, m) in by}
        peak = {m: statistics.median(r["peak_mb"] for r in by[F, m].values()) for m in METHODS if (F, m) in by}
        state = next(iter(by[F, "saeforge"].values()))["state_mb"]

        def ratio(m):
            rounds = sorted(by[F, m].keys() & by[F, "saeforge"].keys())
            return fmt_interval(*ratio_interval([by[F, m][i]["step_s"] for i in rounds],
                                                [by[F, "saeforge"][i]["step_s"] for i in rounds]), spec=".2f") + "×"

        body.append([f"{F:,}", f"{1e3 * med['saeforge']:.0f}", f"{1e3 * med['dense floor']:.0f}",
                     f"{1e3 * med['SAELens']:.0f}", ratio("dense floor"), ratio("SAELens"),
                     f"{peak['saeforge']:.0f}", f"{peak['SAELens']:.0f}", f"{peak['dense floor']:.0f}", f"{state:.0f}",
                     f"{peak['saeforge'] / state:.2f}×"])
    r0 = rows[0]
    what = {"topk": f"TopK k {r0['k']}", "standard": f"ReLU + L1 with about {r0['k']} latents firing per input",
            "jumprelu": f"JumpReLU with about {r0['k']} latents firing per input"}[r0["architecture"]]
    L = ["", f"Generated by `{cmd}` from [latents.jsonl](latents.jsonl): {what}, d_in {r0['d_in']}, "
         f"batch {r0['batch']}, {r0['threads']} threads; medians over rounds, each measurement a fresh process in a "
         "fresh random order (the script's docstring). \"saeforge / X\": how many times faster saeforge's step is, "
         "bootstrap 95% interval over rounds. Peak: the process's peak resident memory less its mark before the "
         "contender was built.", ""]
    L += table(["latents", "saeforge ms", "dense floor ms", "SAELens ms", "saeforge / floor", "saeforge / SAELens",
                "saeforge peak MB", "SAELens peak MB", "floor peak MB", "parameters + Adam MB",
                "saeforge peak / (parameters + Adam)"], body)
    med = {(r["features"], r["method"]): statistics.median(x["step_s"] for x in by[r["features"], r["method"]].values())
           for r in rows}
    aims = []
    if (16384, "saeforge") in med and (16384, "dense floor") in med:
        x = med[16384, "dense floor"] / med[16384, "saeforge"]
        aims.append(f"at 16,384 latents saeforge's step ran {x:.2f}× the dense floor (aim ≥ 3: {'met' if x >= 3 else 'not met'})")
    if (65536, "saeforge") in by:
        rs = list(by[65536, "saeforge"].values())
        x = statistics.median(r["peak_mb"] for r in rs) / rs[0]["state_mb"]
        aims.append(f"at 65,536 its peak memory was {x:.2f}× parameters + Adam (aim ≤ 1.5: {'met' if x <= 1.5 else 'not met'})")
    if aims:
        L += ["", "Against the aims: " + "; ".join(aims) + "."]
    return L + [""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32, help="TopK's k; ReLU + L1 and JumpReLU: biases such that about k "
                    "latents fire per input")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--architecture", choices=("topk", "standard", "jumprelu"), default="topk")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-features", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a)
    docs = Path(a.docs)
    results = Results(docs / "latents.jsonl", KEY)
    if not a.render_only:
        measure(a, results)
    cmd = (f"python scripts/benchmarks/bench_latents.py --features {' '.join(map(str, a.features))} --rounds {a.rounds} "
           f"--repeats {a.repeats} --d-in {a.d_in} --batch {a.batch} --k {a.k} --threads {a.threads}"
           + ("" if a.architecture == "topk" else f" --architecture {a.architecture}"))
    block = render([r for r in results.rows if r["features"] in a.features and r["architecture"] == a.architecture], cmd)
    perf = docs / "performance.md"
    write_section(perf, "latents" if a.architecture == "topk" else f"latents-{a.architecture}", block)
    print(f"wrote the latents table into {perf}")


if __name__ == "__main__":
    main()
