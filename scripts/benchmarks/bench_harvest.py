"""Activation tokens/s of the ActivationBuffer fill against a bare run_with_cache loop (and SAELens).

    python scripts/benchmarks/bench_harvest.py [--model embedded] [--batches 24] [--contexts-per-pass 32] [--repeats 3]

All three consume the same pre-tokenized context batches (tokenization excluded), in the same
process, interleaved over --repeats rounds; the best round of each is reported (the machines
are shared and noisy). Prints tokens/s and the ratios:

- bare: `model.run_with_cache(tokens, names_filter=hook, stop_at_layer=L+1)`, activations kept;
- saeforge: `ActivationBuffer(ModelSource(...))` filling rows for exactly those batches
  (the hook writes straight into the preallocated storage), then serving every row once;
- SAELens: `ActivationsStore` on the same contexts (as a pre-tokenized dataset), `next(store)`
  for as many activation rows (its forward, mixing buffer and batching), where installed.

Target (issue 3): the saeforge fill costs ≤ 10% over the bare forward (ratio ≥ 0.91).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from saeforge.sources import data  # noqa: E402
from saeforge.sources.buffer import ActivationBuffer, ModelSource  # noqa: E402
from saeforge.sources.language_model import default_hook, load_model, resolve_hook  # noqa: E402


def bare(model, hook, stop, batches) -> float:
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad():
        for t in batches:
            _, cache = model.run_with_cache(t, names_filter=hook, stop_at_layer=stop)
            acts = cache[hook][:, 1:].reshape(-1, model.cfg.d_model)
            n += acts.shape[0]
    return n / (time.perf_counter() - t0)


def saeforge_fill(model, hook, stop, batches, batch_size: int) -> tuple[float, float]:
    rows = sum(t.shape[0] * (t.shape[1] - 1) for t in batches)
    t0 = time.perf_counter()
    buf = ActivationBuffer(ModelSource(model, hook, iter(batches), stop), rows, batch_size, "cpu", scale=1.0)
    fill = rows / (time.perf_counter() - t0)
    t1 = time.perf_counter()
    served = 0
    while served + batch_size <= buf.half:
        next(buf)
        served += batch_size
    serve = served / (time.perf_counter() - t1)
    return fill, serve


def saelens(model, hook, batches, batch_size: int) -> float | None:
    try:
        from datasets import Dataset
        from sae_lens.training.activations_store import ActivationsStore
    except ImportError:
        return None
    toks = torch.cat(batches)
    ds = Dataset.from_dict({"tokens": toks.tolist()})
    n_ctx = toks.shape[1]
    store = ActivationsStore(model=model, dataset=ds, streaming=False, hook_name=hook, hook_head_index=None,
                             context_size=n_ctx, d_in=model.cfg.d_model, n_batches_in_buffer=len(batches),
                             total_training_tokens=10**9, store_batch_size_prompts=batches[0].shape[0],
                             train_batch_size_tokens=batch_size, prepend_bos=False, normalize_activations="none",
                             device=torch.device("cpu"), dtype="float32")
    rows = toks.numel()
    t0 = time.perf_counter()
    served = 0
    while served < rows // 2:  # its mixing buffer fills len(batches) batches, then serves half
        served += next(store).shape[0]
    return served / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--hook", default="")
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--contexts-per-pass", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    hook = args.hook or default_hook(model)
    stop = resolve_hook(model, hook)
    it = data.contexts(model, "embedded", "train", seed=0, batch=args.contexts_per_pass)
    batches = [next(it) for _ in range(args.batches)]
    print(f"model {args.model}, hook {hook}, {args.batches} passes x {args.contexts_per_pass} contexts x "
          f"{model.cfg.n_ctx} tokens, torch {torch.__version__}, {args.threads} threads")
    bare(model, hook, stop, batches[:2])  # warm-up
    best = {"bare": 0.0, "fill": 0.0, "serve": 0.0, "saelens": 0.0}
    for r in range(args.repeats):
        best["bare"] = max(best["bare"], bare(model, hook, stop, batches))
        fill, serve = saeforge_fill(model, hook, stop, batches, args.batch_size)
        best["fill"] = max(best["fill"], fill)
        best["serve"] = max(best["serve"], serve)
        sl = saelens(model, hook, batches, args.batch_size)
        if sl is not None:
            best["saelens"] = max(best["saelens"], sl)
    print(f"bare run_with_cache loop : {best['bare']:>12,.0f} activation tokens/s")
    print(f"saeforge buffer fill     : {best['fill']:>12,.0f} activation tokens/s   "
          f"ratio to bare {best['fill'] / best['bare']:.3f} (overhead {100 * (best['bare'] / best['fill'] - 1):+.1f}%)")
    print(f"saeforge batch serving   : {best['serve']:>12,.0f} activation tokens/s   (gather + scale, per served row)")
    if best["saelens"]:
        print(f"SAELens ActivationsStore : {best['saelens']:>12,.0f} activation tokens/s   "
              f"saeforge fill / SAELens {best['fill'] / best['saelens']:.2f}x")
    else:
        print("SAELens ActivationsStore : not installed")


if __name__ == "__main__":
    main()
