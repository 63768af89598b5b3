"""The README's main job end to end, saeforge against SAELens's LanguageModelSAETrainingRunner, in one run.

    python scripts/benchmarks/bench_end_to_end.py [--tokens 1000000] [--architecture topk|standard] [--repeats 1]
        [--out docs/end-to-end.json]

Both train on the same HookedTransformer weights (the embedded model, handed to SAELens's runner as
its model; saeforge's copy runs its attention through the fused kernel of fast_attention.py, part of
what is measured, SAELens's is TransformerLens's stock model), the same packed contexts of the embedded stdlib corpus (BOS + n_ctx − 1 tokens, given to
SAELens as a pre-tokenized dataset), the same hook, dictionary size, architecture (TopK k 32 with
AuxK, or ReLU + L1 with λ matched for L0), batch, token budget and lr schedule (warm-up 200 steps,
linear decay over the last 400), position 0 skipped by both (SAELens: seqpos_slice (1, None)),
inputs scaled to E‖x‖² = d_in by both (SAELens: expected_average_only_in, estimated on as many
tokens as saeforge's first buffer fill). Then both dictionaries are scored by the same held-out
evals (saeforge's `evaluate`: explained variance, L0, CE-loss recovered, KL). Prints wall seconds,
training tokens/s, saeforge's time breakdown and the quality figures, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saeforge.dictionary.io import load
from saeforge.evaluation.evals import evaluate
from saeforge.sources import data
from saeforge.sources.language_model import default_hook, load_model

LR = {"topk": 3e-3, "standard": 1e-2}


def saeforge_run(a, out: Path) -> dict:
    """`saeforge train` as a user runs it: its own process (imports, model load, its memory settings)."""
    cmd = [sys.executable, "-m", "saeforge", "train", "--out", str(out), "--tokens", str(a.tokens),
           "--architecture", a.architecture, "--eval-tokens", "0", "--no-progress", "--checkpoint-every", "0",
           "--l1-coefficient", str(a.l1), "--seed", str(a.seed), *a.saeforge_flags.split()]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    summary = json.loads((out / "summary.json").read_text())
    summary["bench_wall_s"] = time.perf_counter() - t0
    return summary


def saelens_run(a, model, hook: str, out: Path, n_ctx: int) -> tuple[dict, float]:
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens.config import LoggingConfig

    D = model.cfg.d_model
    rows_needed = a.tokens + 128 * 512 + 300_000  # training + the norm estimate + buffer slack
    tokens = []
    for batch in data.contexts(model, "embedded", "train", seed=a.seed, batch=32):
        tokens.extend(batch.tolist())
        if len(tokens) * (n_ctx - 1) >= rows_needed:
            break
    ds = datasets.Dataset.from_dict({"input_ids": tokens})
    common = dict(d_in=D, d_sae=8 * D, normalize_activations="expected_average_only_in")
    if a.architecture == "topk":
        from sae_lens import TopKTrainingSAEConfig

        sae_cfg = TopKTrainingSAEConfig(k=32, aux_loss_coefficient=1 / 32,
                                        rescale_acts_by_decoder_norm=a.saelens_rescale == "true", **common)
    else:
        from sae_lens import StandardTrainingSAEConfig

        sae_cfg = StandardTrainingSAEConfig(l1_coefficient=a.saelens_l1, l1_warm_up_steps=500, **common)
    steps = -(-a.tokens // 512)
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name="embedded", hook_name=hook, dataset_path="embedded", is_dataset_tokenized=True,
        streaming=False, context_size=n_ctx, seqpos_slice=(1, None), prepend_bos=True,
        training_tokens=steps * 512, train_batch_size_tokens=512, store_batch_size_prompts=32,
        n_batches_in_buffer=32, lr=LR[a.architecture], lr_warm_up_steps=200, lr_decay_steps=400,
        lr_scheduler_name="constant", adam_beta1=0.9, adam_beta2=0.999, dead_feature_window=10,
        n_batches_for_norm_estimate=128,
        device="cpu", seed=a.seed, logger=LoggingConfig(log_to_wandb=False), output_path=str(out),
        checkpoint_path=str(out / "checkpoints"), n_checkpoints=0, verbose=False)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        sae = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model).run()
    wall = time.perf_counter() - t0
    sae.save_inference_model(str(out / "dictionary")) if hasattr(sae, "save_inference_model") else \
        sae.save_model(str(out / "dictionary"))
    return {"dictionary": str(out / "dictionary")}, wall


def scored(model, path: str, hook: str, tokens: int) -> dict:
    held = data.contexts(model, "embedded", "test", seed=0, batch=32, loop=False)
    ev = evaluate(model, load(path), hook, held, tokens, progress=False)  # one model scores both
    return {k: ev[k] for k in ("l0", "explained_variance", "ce_loss_recovered", "kl_divergence", "dead_fraction")
            if k in ev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--architecture", choices=("topk", "standard"), default="topk")
    ap.add_argument("--l1", type=float, default=0.55, help="saeforge's λ (standard)")
    ap.add_argument("--saelens-l1", type=float, default=5.0, help="SAELens's λ (standard; choose it for a like L0)")
    ap.add_argument("--saelens-rescale", choices=("true", "false"), default="true",
                    help="SAELens TopK's rescale_acts_by_decoder_norm (its training default: true)")
    ap.add_argument("--saeforge-flags", default="", help="more `saeforge train` flags, e.g. '--unit-norm-decoder'")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model("embedded")  # saeforge's: attention through the fused kernel (fast_attention.py)
    stock = load_model("embedded", fused_attention=False)  # SAELens's: TransformerLens as its users get it
    hook, n_ctx = default_hook(model), model.cfg.n_ctx
    results = {"saeforge": [], "SAELens": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):  # interleaved: machine noise hits both alike
            s = saeforge_run(a, Path(tmp) / f"sf{i}")
            row = {"wall_s": s["bench_wall_s"], "tokens": s["tokens"], **scored(model, str(Path(tmp) / f"sf{i}"), hook,
                                                                                  a.eval_tokens),
                   "time_breakdown": s["time_breakdown"]}
            results["saeforge"].append(row)
            print(f"saeforge repeat {i}: {json.dumps(row)}", flush=True)
            info, wall = saelens_run(a, stock, hook, Path(tmp) / f"sl{i}", n_ctx)
            row = {"wall_s": wall, "tokens": -(-a.tokens // 512) * 512,
                   **scored(model, info["dictionary"], hook, a.eval_tokens)}
            results["SAELens"].append(row)
            print(f"SAELens repeat {i}: {json.dumps(row)}", flush=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in results.items()}
    print(f"\n{a.architecture}, {a.tokens:,} tokens, {a.threads} threads, torch {torch.__version__}")
    for name, rows in results.items():
        r = rows[-1]
        print(f"  {name:9s} wall {med[name]:7.1f} s  {r['tokens'] / med[name]:8.0f} tokens/s  L0 {r['l0']:.1f}  "
              f"EV {r['explained_variance']:.4f}  CE-rec {r['ce_loss_recovered']:.4f}  KL {r.get('kl_divergence', 0):.4f}")
    print(f"saeforge wall / SAELens wall: {med['saeforge'] / med['SAELens']:.2f}  (target <= 0.5)")
    print(f"saeforge time breakdown (last repeat): {results['saeforge'][-1]['time_breakdown']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results, "ratio": med["saeforge"] / med["SAELens"]},
                                          indent=1) + "\n")


if __name__ == "__main__":
    main()
