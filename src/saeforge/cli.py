"""The `saeforge` command. One subcommand per job; flags come from the dataclass configs.

A user's mistake ends in one line `saeforge: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .config import (TOY_DEFAULTS, TRAIN_DEFAULTS, ActivationTrainConfig, HarvestConfig, SweepConfig, ToyConfig,
                     add_config_flags, build_config)
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        sys.stderr.write(f"saeforge: error: {message}\n")
        raise SystemExit(2)


def _cmd_toy(args: argparse.Namespace) -> int:
    from .toy import run_toy

    cfg = build_config(ToyConfig, args, TOY_DEFAULTS)
    summary = run_toy(cfg)
    from . import distributed

    if distributed.is_main():
        print(json.dumps({k: summary[k] for k in ("mmcs_initial", "mmcs_final", "steps_to_mmcs", "steps", "wall_s")}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train

    cfg = build_config(ActivationTrainConfig, args, TRAIN_DEFAULTS)
    summary = run_train(cfg)
    from . import distributed

    keys = ("tokens", "dict_size", "l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "wall_s")
    if distributed.is_main():
        print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    from .cache import run_harvest

    cfg = build_config(HarvestConfig, args)
    m = run_harvest(cfg)
    print(json.dumps({k: m.get(k) for k in ("model", "hook", "dataset", "d_in", "rows", "contexts", "complete")}
                     | {"shards": len(m["shards"])}))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    cfg = build_config(SweepConfig, args)
    rows = run_sweep(cfg)
    if not cfg.suggest:
        print(json.dumps({"runs": len(rows), "results": f"{cfg.out}/runs.jsonl", "fits": f"{cfg.out}/fits.json"}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from . import data
    from .analysis import load_with_model
    from .evals import evaluate
    from .train import pick_device

    if args.tokens < 1:
        raise UserError(f"--tokens must be >= 1, got {args.tokens}")
    device = pick_device(args.device)
    sae, model, hook = load_with_model(args.path, args.model, args.hook, device=str(device))
    meta = sae.metadata
    model_spec = args.model or meta.get("model_name")
    dataset = args.dataset or meta.get("dataset_path") or "embedded"
    held = data.contexts(model, dataset, "test", batch=args.contexts_per_pass, loop=False)
    ev = evaluate(model, sae, hook, held, args.tokens, progress=args.progress)
    ev.pop("firing_frequency")
    print(json.dumps({"model": model_spec, "hook": hook, "dataset": dataset, "d_sae": sae.d_sae, **ev}))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import data, report
    from .analysis import collect, load_with_model
    from .train import pick_device

    for name in ("features", "tokens", "top_k"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = pick_device(args.device)
    sae, model, hook = load_with_model(args.path, args.model, args.hook, device=str(device))
    dataset = args.dataset or sae.metadata.get("dataset_path") or "embedded"
    held = data.contexts(model, dataset, "test", batch=args.contexts_per_pass, loop=False)
    rep = collect(model, sae, hook, held, args.tokens, features=args.features, top_k=args.top_k,
                  progress=args.progress)
    meta = {"dictionary": str(args.path), "model": args.model or sae.metadata.get("model_name"), "hook": hook,
            "dataset": dataset}
    page = report.write(rep, args.out, meta)
    print(json.dumps({"report": str(page), "features": len(rep.features), "tokens": rep.n_tokens,
                      "dead": rep.dead, "dense": rep.dense}))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .dictionary import load, load_sparsity

    sae = load(args.path)
    sp = load_sparsity(args.path)
    info = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
            "metadata": sae.metadata}
    if sp is not None:
        info["dead_features"] = int((sp <= -9.99).sum())
    print(json.dumps(info, indent=2, default=str))
    return 0


def _held_out_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that run a saved dictionary's model on held-out text (eval, inspect)."""
    p.add_argument("--model", help="model (default: the one recorded in cfg.json)")
    p.add_argument("--hook", help="hook point (default: the one recorded in cfg.json)")
    p.add_argument("--dataset", help="dataset whose held-out split to use (default: recorded, else embedded)")
    p.add_argument("--contexts-per-pass", type=int, default=32, help="contexts per forward pass (default: 32)")
    p.add_argument("--device", default="auto", help="torch device (default: auto)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="saeforge", description="Train sparse autoencoders on transformer activations.")
    p.add_argument("--version", action="version", version=f"saeforge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    toy = sub.add_parser("toy", help="train on toy data with known features; report MMCS",
                         description="Train on fresh toy data (known ground-truth features) until MMCS "
                                     ">= --target-mmcs or --steps; writes metrics.jsonl, summary.json and the dictionary to --out.")
    add_config_flags(toy, ToyConfig, TOY_DEFAULTS)
    toy.set_defaults(func=_cmd_toy)
    train = sub.add_parser("train", help="train a dictionary on a model's activations (the main job)",
                           description="Train a dictionary on a model's activations (the embedded model and corpus "
                                       "by default, or --cache), evaluate it on held-out text; writes metrics.jsonl, "
                                       "summary.json, the dictionary and a checkpoint to --out.")
    add_config_flags(train, ActivationTrainConfig, TRAIN_DEFAULTS)
    train.set_defaults(func=_cmd_train)
    harvest = sub.add_parser("harvest", help="write a model's activations to disk once (an activation cache)",
                             description="Run the model over the dataset and write the hook's activations "
                                         "(with their tokens) as safetensors shards plus manifest.json; rerun to resume.")
    add_config_flags(harvest, HarvestConfig)
    harvest.set_defaults(func=_cmd_harvest)
    sweep = sub.add_parser("sweep", help="scaling-law sweep: dictionary sizes × steps (× λ) from one activation cache",
                           description="Train a grid of dictionary sizes × step counts (× L1 coefficients) from one "
                                       "activation cache, measure each run on held-out activations, fit the "
                                       "compute-optimal frontier; resumable. --suggest FLOPS reads a finished sweep.")
    add_config_flags(sweep, SweepConfig)
    sweep.set_defaults(func=_cmd_sweep)
    ev = sub.add_parser("eval", help="CE loss recovered, explained variance, L0 of a saved dictionary",
                        description="Evaluate a saeforge or SAELens dictionary on held-out text of the model it was trained on.")
    ev.add_argument("path", help="dictionary directory")
    ev.add_argument("--tokens", type=int, default=65536, help="held-out tokens to evaluate on (default: 65536)")
    _held_out_flags(ev)
    ev.set_defaults(func=_cmd_eval)
    ins = sub.add_parser("inspect", help="HTML feature browser of a dictionary (contexts, histograms, token effects)",
                         description="Run the dictionary's model on held-out text and write a self-contained HTML "
                                     "feature browser (index.html) plus PNG plots to --out.")
    ins.add_argument("path", help="dictionary directory (saeforge or SAELens)")
    ins.add_argument("--out", required=True, help="report directory (index.html, density.png, features.png)")
    ins.add_argument("--features", type=int, default=32,
                     help="how many alive features to study, spread over the firing frequencies (default: 32)")
    ins.add_argument("--tokens", type=int, default=32768, help="held-out tokens to run (default: 32768)")
    ins.add_argument("--top-k", type=int, default=10, help="top-activating contexts per feature (default: 10)")
    _held_out_flags(ins)
    ins.set_defaults(func=_cmd_inspect)
    info = sub.add_parser("info", help="check and describe a dictionary directory")
    info.add_argument("path", help="dictionary directory (saeforge or SAELens)")
    info.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import distributed

    try:
        return args.func(args)
    except UserError as e:
        if distributed.is_main():  # under torchrun every rank hits the same error: one line
            sys.stderr.write(f"saeforge: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("saeforge: interrupted; the last checkpoint in --out is intact (rerun with --resume)\n")
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
