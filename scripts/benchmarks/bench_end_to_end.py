"""The README's main job end to end, saeforge against SAELens's LanguageModelSAETrainingRunner, under
the protocol (docs/protocol.md): interleaved repeats per seed, every run a row of docs/end-to-end.jsonl,
docs/end-to-end.md rendered from those rows.

    python scripts/benchmarks/bench_end_to_end.py [--tokens 1000000] [--architecture topk|standard]
        [--seeds 0 1 2] [--repeats 5] [--threads 2] [--render-only]

Three methods per round, in a fresh random order each round (`protocol.interleaved`):
- **saeforge**: `saeforge train` in its own process, as a user runs it;
- **SAELens**: SAELens's runner on TransformerLens's stock model (as its users get it);
- **SAELens + fused attention**: the same runner on saeforge's model, whose attention runs through
  the fused kernel of fast_attention.py: what is left of the gap is the SAE training itself.

Both train on the same HookedTransformer weights (the embedded model, handed to SAELens's runner as
its model; saeforge's copy runs its attention through the fused kernel of fast_attention.py, part of
what is measured, SAELens's is TransformerLens's stock model), the same packed contexts of the embedded stdlib corpus (BOS + n_ctx − 1 tokens, given to
SAELens as a pre-tokenized dataset), the same hook, dictionary size, architecture (TopK k 32 with
AuxK, or ReLU + L1 with λ matched for L0), batch, token budget and lr schedule (warm-up 200 steps,
linear decay over the last 400), position 0 skipped by both (SAELens: seqpos_slice (1, None)),
inputs scaled to E‖x‖² = d_in by both (SAELens: expected_average_only_in, estimated on as many
tokens as saeforge's first buffer fill). Then both dictionaries are scored by the same held-out
evals (saeforge's `evaluate`: explained variance, L0, CE-loss recovered, KL). Prints wall seconds,
training tokens/s, saeforge's time breakdown and the quality figures, and the ratios with bootstrap
intervals over rounds (`protocol.ratio_interval`); each row records the machine's load average.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saeforge.dictionary.io import load
from saeforge.evaluation.protocol import Results, fmt_interval, interleaved, mean_interval, ratio_interval, table
from saeforge.evaluation.evals import evaluate
from saeforge.sources import data
from saeforge.sources.language_model import default_hook, load_model

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("saeforge", "SAELens", "SAELens + fused attention")
KEY = ("architecture", "tokens", "threads", "method", "seed", "round")
QUALITY = (("explained_variance", "EV"), ("ce_loss_recovered", "CE-loss recovered"), ("kl_divergence", "KL"),
           ("l0", "L0"))

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
        device=getattr(a, "device", "cpu"), seed=a.seed, logger=LoggingConfig(log_to_wandb=False), output_path=str(out),
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


def measure(a, models: dict, hook: str, n_ctx: int, results: Results, seed: int, tmp: Path) -> None:
    """`a.repeats` interleaved rounds of the three methods at one seed; each run is a row."""
    a = argparse.Namespace(**{**vars(a), "seed": seed})

    def one(method: str, rnd: int):
        def run() -> float:
            key = dict(architecture=a.architecture, tokens=a.tokens, threads=a.threads, method=method, seed=seed,
                       round=rnd)
            row = results.get(**key)
            if row is None:
                out = tmp / f"{method.replace(' ', '_')}-{seed}-{rnd}"
                load_avg = os.getloadavg()[0]
                if method == "saeforge":
                    s = saeforge_run(a, out)
                    wall, path, extra = s["bench_wall_s"], str(out), {"time_breakdown": s["time_breakdown"]}
                else:
                    info, wall = saelens_run(a, models[method], hook, out, n_ctx)
                    path, extra = info["dictionary"], {}
                row = results.add({**key, "wall_s": wall, "load_avg_1min": load_avg,
                                   **scored(models["saeforge"], path, hook, a.eval_tokens), **extra})
                print(json.dumps({k: row[k] for k in ("method", "seed", "round", "wall_s", "explained_variance")}),
                      flush=True)
            return row["wall_s"]
        return run

    for rnd in range(a.repeats):  # one round at a time, so that a resumed run stays interleaved
        interleaved({m: one(m, rnd) for m in METHODS}, repeats=1, seed=random.Random(seed * 1000 + rnd).randrange(10**6))


def render(rows: list[dict], a) -> str:
    rows = [r for r in rows if r["architecture"] == a.architecture and r["tokens"] == a.tokens
            and r["threads"] == a.threads]
    seeds = sorted({r["seed"] for r in rows})
    cmd = (f"python scripts/benchmarks/bench_end_to_end.py --tokens {a.tokens} --architecture {a.architecture} "
           f"--seeds {' '.join(map(str, seeds))} --repeats {a.repeats} --threads {a.threads}")
    L = ["# End to end: the main job against SAELens's runner, under the protocol", "",
         f"Generated by `{cmd}` from [end-to-end.jsonl](end-to-end.jsonl) (one row per run); the rules are "
         "[protocol.md](protocol.md)'s and the script's docstring says what each method is. "
         f"{a.architecture}, {a.tokens:,} training tokens, {a.threads} threads, on this repository's 2-core CPU "
         "machine (no GPU was lent to this work). In each round the three methods ran back to back in a fresh "
         "random order; a ratio is the median over rounds of one method's wall time over another's, with a "
         "95% bootstrap interval over rounds. The load column is the 1-minute load average when each run "
         "started (above 2 on these 2 cores: the machine was busy).", ""]
    body, ratios = [], []
    for seed in seeds:
        by = {m: sorted((r for r in rows if r["seed"] == seed and r["method"] == m), key=lambda r: r["round"])
              for m in METHODS}
        n = min(len(v) for v in by.values())
        if not n:
            continue
        for m in METHODS:
            rs = by[m][:n]
            walls = [r["wall_s"] for r in rs]
            body.append([seed, m, n, f"{statistics.median(walls):.1f}", f"{min(walls):.1f}–{max(walls):.1f}",
                         f"{statistics.median(r['load_avg_1min'] for r in rs):.1f}",
                         *(fmt_interval(*mean_interval([r[k] for r in rs]), spec=".1f" if k == "l0" else ".4f")
                           for k, _ in QUALITY)])
        w = {m: [r["wall_s"] for r in by[m][:n]] for m in METHODS}
        for other in METHODS[1:]:
            r, lo, hi = ratio_interval(w[other], w["saeforge"])
            ratios.append([seed, f"saeforge / {other}", fmt_interval(1 / r, 1 / hi, 1 / lo, spec=".2f"), n])
        base, fused, ours = (statistics.median(w[m]) for m in ("SAELens", "SAELens + fused attention", "saeforge"))
        ratios.append([seed, "share of the gap the fused attention closes", f"{(base - fused) / (base - ours):.2f}"
                       if base > ours else "—", n])
    L += ["## Wall time and quality per seed", ""]
    L += table(["seed", "method", "rounds", "median wall s", "range s", "load", *(n for _, n in QUALITY)], body) + [""]
    L += ["## Ratios", "", "saeforge's wall time over each SAELens variant's (below 1: saeforge faster), and the share of "
          "saeforge's lead over stock SAELens that giving SAELens the fused attention removes ((SAELens − SAELens "
          "fused) / (SAELens − saeforge), medians).", ""]
    L += table(["seed", "ratio", "median [95%]", "rounds"], ratios) + [""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--architecture", choices=("topk", "standard"), default="topk")
    ap.add_argument("--l1", type=float, default=0.55, help="saeforge's λ (standard)")
    ap.add_argument("--saelens-l1", type=float, default=5.0, help="SAELens's λ (standard; choose it for a like L0)")
    ap.add_argument("--saelens-rescale", choices=("true", "false"), default="true",
                    help="SAELens TopK's rescale_acts_by_decoder_norm (its training default: true)")
    ap.add_argument("--saeforge-flags", default="", help="more `saeforge train` flags, e.g. '--unit-norm-decoder'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args(argv)
    docs = Path(a.docs)
    results = Results(docs / "end-to-end.jsonl", KEY)
    if not a.render_only:
        torch.set_num_threads(a.threads)
        models = {"saeforge": load_model("embedded"),  # attention through the fused kernel (fast_attention.py)
                  "SAELens": load_model("embedded", fused_attention=False)}  # TransformerLens as its users get it
        models["SAELens + fused attention"] = models["saeforge"]
        hook, n_ctx = default_hook(models["saeforge"]), models["saeforge"].cfg.n_ctx
        with tempfile.TemporaryDirectory() as tmp:
            for seed in a.seeds:
                measure(a, models, hook, n_ctx, results, seed, Path(tmp))
    (docs / "end-to-end.md").write_text(render(results.rows, a))
    print(f"wrote {docs / 'end-to-end.md'}")


if __name__ == "__main__":
    main()
