"""The TopK step and the whole main job on a GPU, saeforge against SAELens: CUDA-event times, peak
memory, ratios. For a lent GPU machine; on a machine without CUDA it says so and exits 0.

    python scripts/benchmarks/bench_gpu.py [--features 16384 65536 1048576] [--batch 4096] [--d-in 128]
        [--k 32] [--repeats 20] [--rounds 3] [--run-tokens 4000000] [--out runs/gpu]

1. The step: saeforge's TopK step (the sparse step of topk.py: the encoder product and the
   selection block by block over the latents, torch's topk on the GPU, cuSPARSE products, fused
   Adam), in float32 and under bfloat16 autocast (products in bfloat16, float32 accumulation and
   parameters), against SAELens's TopKTrainingSAE step (float32 and autocast) with the same weights,
   interleaved in rounds; each timed by CUDA events over --repeats steps after 3 warm-up steps;
   peak memory by torch.cuda.max_memory_allocated, reset before each contender.
2. The whole run (--run-tokens > 0): `saeforge train --device cuda` (the main job's settings) against
   SAELens's runner on the same model and data (bench_end_to_end.py's settings, on cuda), interleaved,
   --rounds each; wall seconds.
Prints every figure, the device's name, and the ratios (median of rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def step_fns(a, F: int, dev: torch.device) -> dict:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    from saeforge.dictionary.architectures import TopKSAE
    from saeforge.dictionary.init import initialize

    x = torch.randn(a.batch, a.d_in, device=dev)
    ours = TopKSAE(a.d_in, F, k=a.k).to(dev)
    initialize(ours, "orthogonal", seed=0)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-5, fused=True)
    sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=F, k=a.k, device=str(dev)))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sl, name).copy_(getattr(ours, name))
    slopt = torch.optim.Adam(sl.parameters(), lr=1e-5)

    def saeforge_step(bf16: bool):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                ours.step(x, 0.0)
            opt.step()
        return run

    def saelens_step(bf16: bool):
        def run():
            slopt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                              n_training_steps=0, is_logging_step=False))
            out.loss.backward()
            slopt.step()
        return run

    return {"saeforge": saeforge_step(False), "saeforge bf16": saeforge_step(True),
            "SAELens": saelens_step(False), "SAELens bf16": saelens_step(True)}


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds per step by CUDA events, peak GiB allocated)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / repeats, torch.cuda.max_memory_allocated() / 2**30


def bench_steps(a, dev) -> None:
    for F in a.features:
        fns = step_fns(a, F, dev)
        times = {k: [] for k in fns}
        peaks = {}
        for rnd in range(a.rounds):
            order = list(fns)
            order = order[rnd % len(order):] + order[:rnd % len(order)]  # a different order each round
            for name in order:
                try:
                    s, peak = timed(fns[name], a.repeats)
                except torch.OutOfMemoryError:
                    s, peak = float("nan"), float("nan")
                    torch.cuda.empty_cache()
                times[name].append(s)
                peaks[name] = peak
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nTopK k {a.k}, {F:,} latents, d_in {a.d_in}, batch {a.batch} on {torch.cuda.get_device_name(dev)}:")
        for k in fns:
            print(f"  {k:15s} {1e3 * med[k]:9.2f} ms/step  {a.batch / med[k]:12.0f} tokens/s  peak {peaks[k]:7.2f} GiB")
        print(f"  saeforge / SAELens: {med['SAELens'] / med['saeforge']:.2f}x (float32), "
              f"{med['SAELens bf16'] / med['saeforge bf16']:.2f}x (bf16 autocast)")
        del fns
        torch.cuda.empty_cache()


def bench_run(a) -> None:
    walls = {"saeforge": [], "SAELens": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for name in (list(walls) if rnd % 2 == 0 else list(walls)[::-1]):
                out = Path(tmp) / f"{name}-{rnd}"
                if name == "saeforge":
                    cmd = [sys.executable, "-m", "saeforge", "train", "--device", "cuda", "--out", str(out), "--tokens",
                           str(a.run_tokens), "--eval-tokens", "0", "--no-progress", "--checkpoint-every", "0"]
                else:
                    code = ("import argparse, sys; sys.path.insert(0, %r); from bench_end_to_end import saelens_run; "
                            "from saeforge.sources.language_model import default_hook, load_model; "
                            "m = load_model('embedded', 'cuda', fused_attention=False); "
                            "a = argparse.Namespace(tokens=%d, seed=0, architecture='topk', saelens_rescale='true', "
                            "saelens_l1=5.0); saelens_run(a, m, default_hook(m), __import__('pathlib').Path(%r), "
                            "m.cfg.n_ctx)") % (str(Path(__file__).parent), a.run_tokens, str(out))
                    cmd = [sys.executable, "-c", code]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                walls[name].append(time.perf_counter() - t0)
                print(json.dumps({"run": name, "round": rnd, "wall_s": round(walls[name][-1], 2)}), flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nmain job, {a.run_tokens:,} tokens: saeforge {med['saeforge']:.1f} s, SAELens {med['SAELens']:.1f} s: "
          f"saeforge / SAELens {med['SAELens'] / med['saeforge']:.2f}x faster")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, nargs="+", default=[16384, 65536, 1048576])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run-tokens", type=int, default=4_000_000, help="0 skips the whole-run comparison")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device on this machine; nothing measured")
        return
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    bench_steps(a, dev)
    if a.run_tokens:
        bench_run(a)


if __name__ == "__main__":
    main()
