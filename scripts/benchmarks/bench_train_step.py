"""Training-step throughput of saeforge against baselines measured in the same process.

    python scripts/benchmarks/bench_train_step.py [--d-in 128 --features 4096 --batch 4096 --repeats 5]
        [--architecture standard|topk|jumprelu --k 32] [--sparse-l0 K] [--default-allocator] [--autocast]
        [--dead N]

Prints tokens/s for: saeforge's step (the architecture's fast step + fused Adam: standard.py's
hand-written backward, or topk.py's sparse step), the bare matrix products one dense autograd
step needs (6: encoder, decoder, and their backward products, the "matrix-product floor"), the
same SAE trained by plain autograd, and SAELens's StandardTrainingSAE / TopKTrainingSAE step
(if sae-lens is installed), interleaved in rounds so that machine noise hits all of them alike;
then the ratios. `--autocast` adds saeforge's and SAELens's steps under bfloat16 autocast
(`saeforge train --autocast`; SAELens's runner `autocast=True`). Also the toy generator's batch cost against
a step on that batch (the generator must be cheaper).

`--sparse-l0 K` (standard, jumprelu) sets each encoder bias to minus the (1 − K/F) quantile of its
feature's pre-activations on the batch, so that K of F features fire per input on average, as in a
trained dictionary (the same weights go to SAELens's SAE); without it about half fire.

`--dead N` (topk) adds both steps with N dead latents (a fixed random set), so that AuxK acts in
saeforge's step and in SAELens's (its `dead_neuron_mask`): AuxK's cost against the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saeforge.dictionary.architectures import JumpReLUSAE, StandardSAE, TopKSAE
from saeforge.dictionary.architectures.standard import fast_step
from saeforge.dictionary.init import initialize
from saeforge.runtime import keep_freed_memory
from saeforge.sources.toy import ToyData


def timed(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def dense_floor(x, W_enc, W_dec) -> None:
    """The six dense matrix products one autograd step of an SAE needs (the "floor")."""
    a_ = x @ W_enc              # encoder forward
    b_ = a_ @ W_dec             # decoder forward
    c_ = b_ @ W_dec.T           # grad wrt codes
    _ = a_.T @ b_               # grad W_dec
    _ = x.T @ c_                # grad W_enc
    _ = c_ @ W_enc.T            # grad through x - b_dec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--architecture", choices=("standard", "topk", "jumprelu"), default="standard")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--sparse-step", choices=("auto", "on"), default="auto",
                    help="standard, jumprelu: the step's own choice (below SPARSE_BELOW of codes firing), or always sparse")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's allocator as it is (by default the bench calls runtime.keep_freed_memory, as "
                         "saeforge's CLI does, so no run pays page faults for its large temporaries)")
    ap.add_argument("--autocast", action="store_true", help="also time both steps under bfloat16 autocast")
    ap.add_argument("--dead", type=int, default=0, help="topk: also time both steps with this many dead latents (AuxK)")
    ap.add_argument("--sparse-l0", type=float, default=0.0,
                    help="standard, jumprelu: biases such that this many features fire per input (0: about half)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kept = False if a.default_allocator else keep_freed_memory()
    D, F, B = a.d_in, a.features, a.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    dead_F = torch.zeros(F, dtype=torch.bool)
    dead_F[torch.randperm(F, generator=g)[:a.dead]] = True

    def make():
        sae = {"standard": lambda: StandardSAE(D, F), "topk": lambda: TopKSAE(D, F, k=a.k),
               "jumprelu": lambda: JumpReLUSAE(D, F)}[a.architecture]()
        initialize(sae, "orthogonal", seed=0)
        if a.sparse_l0 and a.architecture != "topk":
            with torch.no_grad():
                pre_BF = sae.pre(x) if hasattr(sae, "pre") else (x - sae.b_dec) @ sae.W_enc + sae.b_enc
                theta = sae.threshold if a.architecture == "jumprelu" else 0.0
                sae.b_enc.sub_(torch.quantile(pre_BF[:2048], 1 - a.sparse_l0 / F, dim=0) - theta)
        return sae

    ours = make()
    opt = torch.optim.Adam(ours.parameters(), lr=1e-5, fused=True)

    force = True if a.sparse_step == "on" else None

    def saeforge_step(dead=None):
        if a.architecture == "standard":
            fast_step(ours, x, 5.0, sparse=force)
        elif a.architecture == "jumprelu":
            ours.step(x, 5.0, sparse=force)
        else:
            ours.step(x, 5.0, dead)
        opt.step()

    dense = make()  # the same step with the sparse path switched off (standard, jumprelu)
    dopt = torch.optim.Adam(dense.parameters(), lr=1e-5, fused=True)

    def saeforge_dense_step():
        if a.architecture == "standard":
            fast_step(dense, x, 5.0, sparse=False)
        else:
            dense.step(x, 5.0, sparse=False)
        dopt.step()

    plain = make()
    popt = torch.optim.Adam(plain.parameters(), lr=1e-5)

    def autograd_step():
        popt.zero_grad(set_to_none=True)
        plain.loss(x, 5.0).total.backward()
        popt.step()

    W_enc, W_dec = ours.W_enc.detach().clone(), ours.W_dec.detach().clone()

    def floor():
        dense_floor(x, W_enc, W_dec)

    def bf16(step):
        def run():
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                step()
        return run

    runs = {"saeforge": saeforge_step, "matmul floor": floor, "autograd torch": autograd_step}
    if a.dead and a.architecture == "topk":
        runs["saeforge, AuxK"] = lambda: saeforge_step(dead_F)
    if a.autocast:
        runs["saeforge, bf16 autocast"] = bf16(saeforge_step)
    if a.architecture != "topk":
        runs["saeforge, dense step forced"] = saeforge_dense_step
    try:
        from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput

        if a.architecture == "standard":
            sl = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=F, l1_coefficient=5.0))
        elif a.architecture == "jumprelu":
            from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

            sl = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D, d_sae=F, l0_coefficient=5.0))
        else:
            sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=F, k=a.k))
        with torch.no_grad():  # the same weights: the same codes, the same sparsity
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sl, name).copy_(getattr(ours, name))
            if a.architecture == "jumprelu":
                sl.threshold.copy_(ours.threshold)
        slopt = torch.optim.Adam(sl.parameters(), lr=1e-5)

        def saelens_step(dead=None):
            slopt.zero_grad(set_to_none=True)
            out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 5.0, "l0": 5.0},
                                                          dead_neuron_mask=dead, n_training_steps=0,
                                                          is_logging_step=False))
            out.loss.backward()
            slopt.step()

        runs["SAELens"] = saelens_step
        if "saeforge, AuxK" in runs:
            runs["SAELens, AuxK"] = lambda: saelens_step(dead_F)
        if a.autocast:
            runs["SAELens, bf16 autocast"] = bf16(saelens_step)
    except Exception as e:  # noqa: BLE001
        print(f"(SAELens baseline skipped: {e})")

    toy = ToyData(D, F, seed=0)
    runs["toy batch generation"] = lambda: toy.batch(0, B)

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, warmup=1, repeats=a.repeats))
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.no_grad():
        l0 = float((ours.encode(x) > 0).sum(1).float().mean())
    print(f"{a.architecture}{f' k {a.k}' if a.architecture == 'topk' else ''}, L0 {l0:.1f} of {F}, "
          f"d_in {D}, features {F}, batch {B}, {a.threads} threads, torch {torch.__version__}, "
          f"{'keep_freed_memory' if kept else 'default allocator'}, "
          f"median of {a.rounds} rounds x {a.repeats} steps")
    for name, t in med.items():
        print(f"  {name:30s} {B / t:10.0f} tokens/s   ({t * 1e3:7.1f} ms)")
    s = med["saeforge"]
    print(f"saeforge / matmul floor:  {med['matmul floor'] / s:.2f}x  (targets: dense codes >= 0.75; sparse codes "
          "(L0 32 of 4096) and topk k 32 >= 2)")
    print(f"saeforge / autograd torch: {med['autograd torch'] / s:.2f}x")
    if "saeforge, dense step forced" in med:
        print(f"saeforge / its dense step: {med['saeforge, dense step forced'] / s:.2f}x  (the sparse path's gain)")
    if "SAELens" in med:
        print(f"saeforge / SAELens:       {med['SAELens'] / s:.2f}x  (targets: dense codes >= 1.5; sparse codes >= 3; "
              "topk >= 2)")
    if "saeforge, AuxK" in med:
        h = med["saeforge, AuxK"]
        print(f"saeforge with AuxK ({a.dead} dead) / saeforge without: {s / h:.2f}x")
        if "SAELens, AuxK" in med:
            print(f"saeforge AuxK / SAELens AuxK: {med['SAELens, AuxK'] / h:.2f}x")
    if "saeforge, bf16 autocast" in med:
        h = med["saeforge, bf16 autocast"]
        print(f"saeforge bf16 / saeforge float32: {s / h:.2f}x")
        if "SAELens, bf16 autocast" in med:
            print(f"saeforge bf16 / SAELens bf16: {med['SAELens, bf16 autocast'] / h:.2f}x")
    print(f"toy batch generation / saeforge step: {med['toy batch generation'] / s:.2f}  (< 1 required)")


if __name__ == "__main__":
    main()
