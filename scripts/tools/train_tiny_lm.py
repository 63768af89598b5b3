"""Train saeforge's embedded model: a 4-layer byte-level transformer on Python's standard library.

    python scripts/tools/train_tiny_lm.py --steps 1200 --seed 0   # writes src/saeforge/assets/tiny-stdlib-lm.*

Corpus: the `.py` files of the running Python's standard library (tests excluded), the same
files `saeforge.sources.data` calls the embedded corpus, split by file into train and held-out
(`data.embedded_corpus(split=...)`). Each training context is BOS (byte 0) followed by 255
bytes taken at a random offset of the train stream (documents joined with BOS), exactly the
contexts saeforge later harvests activations from. AdamW (lr 3e-3, betas 0.9/0.95, weight
decay 0.1 on matrices), 50 warm-up steps, cosine decay to 10%, gradient clipping at 1.

Reproducible from the seed on the same Python (the corpus is that Python's stdlib), torch
version and thread count. Reports held-out bits per byte and a sample, stored in the asset's
JSON next to the architecture.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from saeforge.sources import data  # noqa: E402
from saeforge.sources.language_model import BOS, build_model, save_model, tiny_lm_config  # noqa: E402


def byte_stream(split: str) -> torch.Tensor:
    docs = data.embedded_corpus(split)
    parts = []
    for text in docs["text"]:
        parts.append(torch.tensor([BOS], dtype=torch.uint8))
        parts.append(torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8))
    return torch.cat(parts)


def windows(stream: torch.Tensor, starts: torch.Tensor, n_ctx: int) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(n_ctx - 1)[None]
    body = stream[idx].long()
    return torch.cat([torch.full((len(starts), 1), BOS, dtype=torch.long), body], 1)


@torch.no_grad()
def bits_per_byte(model, stream: torch.Tensor, n_ctx: int, n_windows: int = 256, batch: int = 32) -> float:
    """Mean next-byte loss in bits over non-overlapping held-out windows (positions 1..n_ctx-1 predicted)."""
    step = n_ctx - 1
    starts = torch.arange(0, len(stream) - n_ctx, step)[:n_windows]
    total, count = 0.0, 0
    for i in range(0, len(starts), batch):
        toks = windows(stream, starts[i:i + batch], n_ctx)
        loss = model(toks, return_type="loss", loss_per_token=True)[:, 1:]  # skip predicting from BOS alone
        total += loss.sum().item()
        count += loss.numel()
    return total / count / math.log(2)


@torch.no_grad()
def sample(model, prompt: str, n: int, temperature: float, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    toks = model.to_tokens(prompt)
    for _ in range(n):
        logits = model(toks[:, -model.cfg.n_ctx:])[0, -1] / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
        toks = torch.cat([toks, nxt[None]], 1)
    return model.to_string(toks[0, 1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "src/saeforge/assets"))
    ap.add_argument("--eval-every", type=int, default=200)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = tiny_lm_config(seed=args.seed)
    model = build_model(cfg)
    n_ctx = cfg["n_ctx"]
    train, held = byte_stream("train"), byte_stream("test")
    print(f"corpus: {len(train) / 1e6:.2f} MB train, {len(held) / 1e6:.2f} MB held out; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(args.seed)
    warmup = 50
    t0 = time.time()
    history = []
    for step in range(args.steps):
        frac = step / max(1, args.steps - 1)
        lr = args.lr * (min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac))))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - n_ctx, (args.batch,), generator=g)
        loss = model(windows(train, starts, n_ctx), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            bpb = bits_per_byte(model, held, n_ctx, n_windows=64)
            model.train()
            history.append({"step": step + 1, "train_bits": loss.item() / math.log(2), "heldout_bpb": bpb,
                            "elapsed_s": round(time.time() - t0, 1)})
            print(json.dumps(history[-1]), flush=True)

    model.eval()
    bpb = bits_per_byte(model, held, n_ctx)
    text = sample(model, "def ", 300, 0.8, args.seed)
    print(f"held-out bits per byte: {bpb:.3f}\nsample (temperature 0.8, prompt 'def '):\n{text}")
    extra = {"name": "saeforge-tiny-stdlib-lm", "heldout_bits_per_byte": round(bpb, 4), "sample": text,
             "training": {**vars(args), "out": None, "tokens": args.steps * args.batch * n_ctx,
                          "python": sys.version.split()[0], "torch": torch.__version__,
                          "wall_s": round(time.time() - t0, 1), "history": history}}
    out = Path(args.out)
    tmp = out / ".tiny-lm"
    save_model(model, tmp, tokenizer="bytes", extra=extra)
    (tmp / "model.safetensors").replace(out / "tiny-stdlib-lm.safetensors")
    (tmp / "config.json").replace(out / "tiny-stdlib-lm.json")
    tmp.rmdir()
    print(f"wrote {out / 'tiny-stdlib-lm.safetensors'}")


if __name__ == "__main__":
    main()
