"""The TopK step and the whole main job on a GPU, saeforge against SAELens: CUDA-event times, peak
memory, ratios; rows in docs/gpu.jsonl, the tables rendered into docs/performance.md (between its
`gpu` markers). For a lent GPU machine; `--device cpu` runs every part on small shapes (a smoke run
of the script itself, timed by the wall clock, no memory figure).

    python scripts/benchmarks/bench_gpu.py [--features 16384 65536 1048576] [--batch 4096] [--d-in 128]
        [--k 32] [--repeats 20] [--rounds 3] [--run-tokens 1000000] [--run-rounds 3] [--rows FILE]
        [--render-only]

0. The check: on the device, saeforge's TopK, BatchTopK and Matryoshka steps (AuxK on, a third of the
   latents dead) against autograd on the same loss, whole and over blocks of latents: loss and
   gradients within float32 rounding. A step that is fast and wrong is not measured.
1. The step: saeforge's TopK step (topk.py: the encoder product and the selection block by block over
   the latents, torch's topk on the GPU, sparse products, fused Adam; the last step's gradients freed
   first, as the trainer does), in float32 and under bfloat16 autocast (products in bfloat16, float32
   parameters), against SAELens's TopKTrainingSAE step (float32 and autocast) from the same weights,
   and the six dense products of one step (the floor), in rounds, each round in a rotated order; each
   timed by CUDA events over --repeats steps after 3 warm-up steps; peak memory by
   torch.cuda.max_memory_allocated, reset before each contender.
2. The whole run (--run-tokens > 0): `saeforge train --device cuda` (the main job's settings) against
   SAELens's runner on the same model and data (bench_end_to_end.py's settings, on the device), in
   interleaved rounds; wall seconds of each process.
Any contender that fails (out of memory, an error) is a row with its error, and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from saeforge.evaluation.protocol import Results, fmt_interval, ratio_interval, table, write_section  # noqa: E402

KEY = ("part", "name", "features", "round")


def error_row(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}


# ---- 0. the check ---------------------------------------------------------------------------------

def check(dev: torch.device) -> list[dict]:
    """saeforge's sparse steps against autograd on the device (float32), whole and over blocks."""
    from saeforge.dictionary import blocks
    from saeforge.dictionary.architectures import BatchTopKSAE, MatryoshkaSAE, TopKSAE

    D, F, B = 64, 600, 256
    rows = []
    for cls, kw in ((TopKSAE, {"k": 8}), (BatchTopKSAE, {"k": 8}), (MatryoshkaSAE, {"k": 8, "matryoshka_sizes": "100,300"})):
        for blocked in (False, True):
            saved = blocks.BLOCK_BYTES, blocks.GPU_BLOCK_BYTES
            if blocked:
                blocks.BLOCK_BYTES = blocks.GPU_BLOCK_BYTES = B * 128 * 4  # blocks of 128 latents, the last one short
            try:
                g = torch.Generator().manual_seed(0)
                sae = cls(D, F, aux_k=16, aux_k_coefficient=0.25, **kw)
                with torch.no_grad():
                    for p in sae.parameters():
                        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                sae = sae.to(dev)
                x = torch.randn(B, D, generator=g).to(dev)
                dead = (torch.arange(F) % 3 == 0).to(dev)
                out = sae.step(x, 0.0, dead)
                fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
                for p in sae.parameters():
                    p.grad = None
                ref = sae.loss(x, 0.0, dead)
                ref.total.backward()
                err = max(((fast[n] - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12)).item()
                          for n, p in sae.named_parameters())
                loss_err = abs(out.loss.item() - ref.total.item()) / abs(ref.total.item())
                rows.append({"name": f"{cls.__name__} {'blocked' if blocked else 'whole'}", "grad_rel_err": err, "loss_rel_err": loss_err,
                             "ok": err < 1e-3 and loss_err < 1e-4})
            except Exception as e:  # noqa: BLE001 - a failed check is a row
                traceback.print_exc()
                rows.append({"name": f"{cls.__name__} {'blocked' if blocked else 'whole'}", "ok": False, **error_row(e)})
            finally:
                blocks.BLOCK_BYTES, blocks.GPU_BLOCK_BYTES = saved
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---- 1. the step ----------------------------------------------------------------------------------

def step_fns(a, F: int, dev: torch.device) -> tuple[dict, float]:
    """The contenders' steps at F latents, and parameters + Adam in GiB. A contender that cannot be built
    (SAELens not importable, say) is a step that raises, so that it is a row with its error."""
    from bench_train_step import dense_floor
    from saeforge.dictionary import blocks
    from saeforge.dictionary.architectures import TopKSAE
    from saeforge.dictionary.init import initialize

    x = torch.randn(a.batch, a.d_in, generator=torch.Generator().manual_seed(0)).to(dev)
    ours = TopKSAE(a.d_in, F, k=a.k)
    initialize(ours, "orthogonal", seed=0)
    ours = ours.to(dev)
    state = 3 * sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30
    opt = torch.optim.Adam(ours.parameters(), lr=1e-5, fused=dev.type == "cuda")
    W_enc, W_dec = ours.W_enc.detach().clone(), ours.W_dec.detach().clone()

    def saeforge_step(bf16: bool, block_bytes: int | None = None):
        def run():
            saved = blocks.BLOCK_BYTES, blocks.GPU_BLOCK_BYTES
            blocks.BLOCK_BYTES = blocks.GPU_BLOCK_BYTES = block_bytes or saved[dev.type != "cpu"]
            try:
                opt.zero_grad(set_to_none=True)  # as the trainer does
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    ours.step(x, 0.0)
                opt.step()
            finally:
                blocks.BLOCK_BYTES, blocks.GPU_BLOCK_BYTES = saved
        return run

    fns = {"saeforge": saeforge_step(False), "saeforge bf16": saeforge_step(True),
           "saeforge 64 MB blocks": saeforge_step(False, 64 * 2**20),
           "saeforge 4 GiB blocks": saeforge_step(False, 4 * 2**30)}
    try:
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput

        sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=F, k=a.k, device=str(dev)))
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sl, name).copy_(getattr(ours, name))
        slopt = torch.optim.Adam(sl.parameters(), lr=1e-5)

        def saelens_step(bf16: bool):
            def run():
                slopt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                                  n_training_steps=0, is_logging_step=False))
                out.loss.backward()
                slopt.step()
            return run

        fns.update({"SAELens": saelens_step(False), "SAELens bf16": saelens_step(True)})
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()

        def failed(e=e):
            raise RuntimeError(f"SAELens not built: {type(e).__name__}: {e}")

        fns.update({"SAELens": failed, "SAELens bf16": failed})
    fns["dense floor"] = lambda: dense_floor(x, W_enc, W_dec)
    return fns, state


def timed(fn, repeats: int, dev: torch.device) -> tuple[float, float, float]:
    """(seconds per step, GiB allocated when the timing starts (every contender's parameters, optimizer
    state and last gradients), peak GiB allocated during it; NaN off CUDA)."""
    for _ in range(3):
        fn()
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats, float("nan"), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() / 2**30
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / repeats, resident, torch.cuda.max_memory_allocated() / 2**30


def bench_steps(a, dev: torch.device, results: Results, device_name: str) -> None:
    for F in a.features:
        try:
            fns, state = step_fns(a, F, dev)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            results.add({"part": "step", "name": "setup", "features": F, "round": 0, "device": device_name, **error_row(e)})
            continue
        for rnd in range(a.rounds):
            order = list(fns)[rnd % len(fns):] + list(fns)[:rnd % len(fns)]  # a different order each round
            for name in order:
                row = {"part": "step", "name": name, "features": F, "round": rnd, "device": device_name,
                       "batch": a.batch, "d_in": a.d_in, "k": a.k, "repeats": a.repeats, "state_gib": state, "cmd": a.cmd}
                try:
                    s, resident, peak = timed(fns[name], a.repeats, dev)
                    row.update(step_s=s, resident_gib=resident, peak_gib=peak, transient_gib=peak - resident)
                except Exception as e:  # noqa: BLE001 - out of memory or an error: a row, and the rest go on
                    row.update(error_row(e))
                finally:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                results.add(row)
                print(json.dumps({k: row.get(k) for k in ("name", "features", "round", "step_s", "transient_gib", "error")}),
                      flush=True)
        del fns
        if dev.type == "cuda":
            torch.cuda.empty_cache()


# ---- 2. the whole run -----------------------------------------------------------------------------

def bench_run(a, dev: torch.device, results: Results, device_name: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.run_rounds):
            for name in (("saeforge", "SAELens") if rnd % 2 == 0 else ("SAELens", "saeforge")):
                out = Path(tmp) / f"{name}-{rnd}"
                if name == "saeforge":
                    cmd = [sys.executable, "-m", "saeforge", "train", "--device", dev.type, "--out", str(out),
                           "--tokens", str(a.run_tokens), "--eval-tokens", "0", "--no-progress",
                           "--checkpoint-every", "0"]
                else:
                    code = ("import argparse, pathlib, sys; sys.path.insert(0, %r); from bench_end_to_end import saelens_run; "
                            "from saeforge.sources.language_model import default_hook, load_model; "
                            "m = load_model('embedded', %r, fused_attention=False); "
                            "a = argparse.Namespace(tokens=%d, seed=0, architecture='topk', saelens_rescale='true', "
                            "saelens_l1=5.0, device=%r); saelens_run(a, m, default_hook(m), pathlib.Path(%r), m.cfg.n_ctx)"
                            ) % (str(Path(__file__).parent), dev.type, a.run_tokens, dev.type, str(out))
                    cmd = [sys.executable, "-c", code]
                row = {"part": "run", "name": name, "features": 0, "round": rnd, "device": device_name,
                       "tokens": a.run_tokens}
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                row["wall_s"] = time.perf_counter() - t0
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    row["error"] = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1][:300]
                elif name == "saeforge":
                    summary = json.loads((out / "summary.json").read_text())
                    row.update({k: summary.get(k) for k in ("time_breakdown", "init_s", "train_s", "steps", "batch_size",
                                                            "train_explained_variance", "train_l0")},
                               inner_wall_s=summary.get("wall_s"))  # its own wall, after imports
                results.add(row)
                print(json.dumps({k: row.get(k) for k in ("name", "round", "wall_s", "error")}), flush=True)


# ---- rendering ------------------------------------------------------------------------------------

def render(rows: list[dict], cmd: str) -> list[str]:
    if not rows:
        return ["", "No GPU figures yet: run `python scripts/benchmarks/bench_gpu.py` on a machine with CUDA.", ""]
    dev = rows[0]["device"]
    cmd = next((r["cmd"] for r in rows if "cmd" in r), cmd)
    L = ["", f"Generated by `{cmd}` from [gpu.jsonl](gpu.jsonl), on **{dev}**.", ""]
    checks = [r for r in rows if r["part"] == "check"]
    if checks:
        bad = [r for r in checks if not r["ok"]]
        worst = max((r.get("grad_rel_err", float("nan")) for r in checks), default=float("nan"))
        L += [f"The check: saeforge's TopK, BatchTopK and Matryoshka steps (AuxK on) against autograd on the device, "
              f"whole and over blocks of latents: {len(checks) - len(bad)} of {len(checks)} agree (largest gradient "
              f"error {worst:.1e} of the gradient's largest entry)" +
              ("." if not bad else "; failed: " + ", ".join(f"{r['name']} ({r.get('error', 'mismatch')})" for r in bad) + "."), ""]
    steps = [r for r in rows if r["part"] == "step" and r["name"] != "setup"]
    if steps:
        r0 = steps[0]
        by: dict = {}
        for r in steps:
            by.setdefault((r["features"], r["name"]), {})[r["round"]] = r
        body = []
        for F in sorted({r["features"] for r in steps}):
            def med(name, field="step_s"):
                vals = [r[field] for r in by.get((F, name), {}).values() if field in r]
                return statistics.median(vals) if vals else None

            def ratio(base, name):
                a_, b_ = by.get((F, base), {}), by.get((F, name), {})
                rounds = sorted(i for i in a_.keys() & b_.keys() if "step_s" in a_[i] and "step_s" in b_[i])
                if not rounds:
                    return "—"
                return fmt_interval(*ratio_interval([a_[i]["step_s"] for i in rounds], [b_[i]["step_s"] for i in rounds]),
                                    spec=".2f") + "×"

            def ms(name):
                m = med(name)
                if m is None:
                    errs = [r.get("error", "") for r in by.get((F, name), {}).values()]
                    return "failed (" + (errs[0].split(":")[0] if errs else "missing") + ")"
                return f"{1e3 * m:.2f}"

            def gib(name):
                m = med(name, "transient_gib")
                return "—" if m is None else f"{m:.2f}"

            state = next(iter(by[F, "saeforge"].values()))["state_gib"] if (F, "saeforge") in by else float("nan")
            body.append([f"{F:,}", ms("saeforge"), ms("saeforge bf16"), ms("saeforge 64 MB blocks"),
                         ms("saeforge 4 GiB blocks"), ms("SAELens"), ms("SAELens bf16"), ms("dense floor"),
                         ratio("SAELens", "saeforge"), ratio("SAELens bf16", "saeforge bf16"),
                         ratio("dense floor", "saeforge"), f"{state:.2f}", gib("saeforge"), gib("SAELens")])
        L += [f"The TopK step (k {r0['k']}, d_in {r0['d_in']}, batch {r0['batch']}): median ms per step over rounds "
              f"(CUDA events over {r0['repeats']} steps each, after 3 warm-up steps); saeforge's blocks of latents are "
              "1 GiB of pre-activations on a GPU (`blocks.GPU_BLOCK_BYTES`), 64 MB and 4 GiB beside it; \"saeforge / X\": "
              "how many times faster saeforge's step is, bootstrap 95% interval over rounds. Working memory: the "
              "step's peak allocation (`torch.cuda.max_memory_allocated`) above what was allocated when its timing "
              "began (parameters, Adam's state and the last gradients of every contender), float32.", ""]
        L += table(["latents", "saeforge ms", "saeforge bf16 ms", "saeforge, 64 MB blocks ms",
                    "saeforge, 4 GiB blocks ms", "SAELens ms", "SAELens bf16 ms", "dense floor ms",
                    "saeforge / SAELens", "bf16: saeforge / SAELens", "saeforge / floor", "parameters + Adam GiB",
                    "saeforge working GiB", "SAELens working GiB"], body)
        reading = []
        for F in sorted({r["features"] for r in steps}):
            if (F, "saeforge 64 MB blocks") in by and (F, "saeforge") in by:
                reading.append(f"{F:,} latents {ratio('saeforge 64 MB blocks', 'saeforge')}")
        if reading:
            L += ["", "1 GiB blocks against the CPU's 64 MB (how many times faster): " + "; ".join(reading) + "."]
        L += [""]
    runs = [r for r in rows if r["part"] == "run"]
    if runs:
        walls = {n: {r["round"]: r["wall_s"] for r in runs if r["name"] == n and "error" not in r}
                 for n in ("saeforge", "SAELens")}
        errs = [f"{r['name']} round {r['round']}: {r['error']}" for r in runs if "error" in r]
        rounds = sorted(walls["saeforge"].keys() & walls["SAELens"].keys())
        if rounds:
            m = {n: statistics.median(walls[n][i] for i in rounds) for n in walls}
            x = fmt_interval(*ratio_interval([walls["SAELens"][i] for i in rounds],
                                             [walls["saeforge"][i] for i in rounds]), spec=".2f")
            L += [f"The whole main job ({runs[0]['tokens']:,} tokens, TopK k 32, 1,024 latents, no evals), each a fresh "
                  f"process, {len(rounds)} interleaved rounds: saeforge {m['saeforge']:.1f} s, SAELens's runner "
                  f"{m['SAELens']:.1f} s (median walls, imports and model load included): saeforge {x}× faster."]
            ours = [r for r in runs if r["name"] == "saeforge" and "error" not in r and r.get("time_breakdown")]
            if ours:
                def mid(f):
                    return statistics.median(f(r) for r in ours)
                tb = lambda r: r["time_breakdown"]  # noqa: E731
                L += ["", f"Where saeforge's {mid(lambda r: r['wall_s']):.1f} s go (medians of its summary.json): "
                      f"{mid(lambda r: r['wall_s'] - r['inner_wall_s']):.1f} s before its `train` starts (Python, "
                      f"imports), {mid(lambda r: r['inner_wall_s'] - r['train_s']):.1f} s inside `train` but outside "
                      "its training loop (model load, CUDA start-up, init, saving: not broken down further), "
                      f"{mid(lambda r: r['train_s']):.1f} s training: "
                      f"{mid(lambda r: tb(r)['step_s']):.1f} s in {ours[0]['steps']:,} steps of "
                      f"{ours[0]['batch_size']} tokens ({1e3 * mid(lambda r: tb(r)['step_s'] / r['steps']):.1f} ms "
                      f"each), {mid(lambda r: tb(r)['model_forward_s'] + tb(r)['first_fill_s']):.1f} s in the "
                      f"model's forward passes. Training EV {mid(lambda r: r['train_explained_variance']):.3f}."]
        if errs:
            L += ["", "Failed runs: " + "; ".join(errs) + "."]
        L += [""]
    return L


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--features", type=int, nargs="+", default=[16384, 65536, 1048576])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run-tokens", type=int, default=1_000_000, help="0 skips the whole-run comparison")
    ap.add_argument("--run-rounds", type=int, default=3)
    ap.add_argument("--rows", default=None, help="the rows file (default: DOCS/gpu.jsonl)")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args(argv)
    results = Results(a.rows or Path(a.docs) / "gpu.jsonl", KEY)
    cmd = (f"python scripts/benchmarks/bench_gpu.py --features {' '.join(map(str, a.features))} --batch {a.batch} "
           f"--d-in {a.d_in} --k {a.k} --repeats {a.repeats} --rounds {a.rounds} --run-tokens {a.run_tokens} "
           f"--run-rounds {a.run_rounds}")
    a.cmd = cmd
    if not a.render_only:
        dev = torch.device(a.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            print("bench_gpu.py: no CUDA device on this machine; nothing measured")
            return
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (smoke run)"
        print(f"device: {name}, torch {torch.__version__}", flush=True)
        for r in check(dev):
            results.add({"part": "check", "features": 600, "round": 0, "device": name, **r})
        bench_steps(a, dev, results, name)
        if a.run_tokens:
            bench_run(a, dev, results, name)
        if dev.type != "cuda":
            return  # a smoke run renders nothing
    write_section(Path(a.docs) / "performance.md", "gpu", render(results.rows, cmd))
    print(f"wrote the gpu section into {Path(a.docs) / 'performance.md'}")


if __name__ == "__main__":
    main()
