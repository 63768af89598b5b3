"""The `saeforge` command. One subcommand per job; flags come from the dataclass configs.

A user's mistake ends in one line `saeforge: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from saeforge import __version__
from saeforge.config import (ActivationTrainConfig, EvalConfig, ExportConfig, HarvestConfig, InspectConfig,
                             SweepConfig, ToyConfig, add_config_flags, build_config)
from saeforge.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        sys.stderr.write(f"saeforge: error: {message}\n")
        raise SystemExit(2)


def _cmd_toy(args: argparse.Namespace) -> int:
    from saeforge.pipeline.toy import run_toy

    cfg = build_config(ToyConfig, args)
    summary = run_toy(cfg)
    from saeforge import distributed

    if distributed.is_main():
        print(json.dumps({k: summary[k] for k in ("mmcs_initial", "mmcs_final", "steps_to_mmcs", "steps", "wall_s")}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from saeforge.pipeline.train import run_train

    cfg = build_config(ActivationTrainConfig, args)
    summary = run_train(cfg)
    from saeforge import distributed

    keys = ("tokens", "dict_size", "l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "wall_s")
    if distributed.is_main():
        if "dictionaries" in summary:  # several from one pass: a line per dictionary
            for name, s in summary["dictionaries"].items():
                print(json.dumps({"dictionary": name} | {k: s[k] for k in keys if k in s}))
            print(json.dumps({"wall_s": summary["wall_s"]}))
        else:
            print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    from saeforge.pipeline.harvest import run_harvest

    cfg = build_config(HarvestConfig, args)
    m = run_harvest(cfg)
    print(json.dumps({k: m.get(k) for k in ("model", "hook", "dataset", "d_in", "rows", "contexts", "complete")}
                     | {"shards": len(m["shards"])}))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from saeforge.pipeline.sweep import run_sweep

    cfg = build_config(SweepConfig, args)
    rows = run_sweep(cfg)
    if not cfg.suggest:
        print(json.dumps({"runs": len(rows), "results": f"{cfg.out}/runs.jsonl", "fits": f"{cfg.out}/fits.json"}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from saeforge.evaluation.analysis import load_others, load_with_model, target_hook
    from saeforge.evaluation.evals import evaluate
    from saeforge.runtime import check_out_dir, pick_device
    from saeforge.sources import data

    cfg = build_config(EvalConfig, args)
    if cfg.out:
        check_out_dir(cfg.out, outputs=("interp.json", "interp.png"))
    if cfg.together and (cfg.interp or cfg.stability):
        raise UserError("--together evaluates a replacement model; --interp and --stability compare dictionaries of "
                        "one hook: run them separately")
    device = pick_device(cfg.device)
    from saeforge.dictionary.crosslayer import is_clt

    if is_clt(cfg.path):
        return _eval_clt(cfg, device)
    sae, model, hook = load_with_model(cfg.path, cfg.model or None, cfg.hook or None, device=str(device))
    if cfg.together:
        return _eval_together(cfg, sae, model, hook, device)
    saes = [sae, *load_others(sae, cfg.more, hook, device=str(device))]
    meta = sae.metadata
    model_spec = cfg.model or meta.get("model_name")
    dataset = cfg.dataset or meta.get("dataset_path") or "embedded"
    rows = []
    for path, one in zip((cfg.path, *cfg.more), saes):
        held = data.contexts(model, dataset, "test", batch=cfg.contexts_per_pass, loop=False)
        ev = evaluate(model, one, hook, held, cfg.tokens, progress=cfg.progress, target_hook=target_hook(one, path))
        ev.pop("firing_frequency")
        rows.append({"path": str(path), "d_sae": one.d_sae, **ev})
    out: dict = {"model": model_spec, "hook": hook, "dataset": dataset}
    out |= rows[0] if len(rows) == 1 else {"dictionaries": rows}
    if cfg.interp:
        from saeforge.evaluation import interp

        suite = interp.run_suite(model, saes, hook, dataset, cfg.interp_tokens, seed=cfg.seed, progress=cfg.progress)
        for row, res in zip(rows, suite["dictionaries"]):
            res["path"] = row["path"]
        if cfg.out:
            interp.write(suite, cfg.out, {**out, "dictionaries": rows})
        out["interp"] = interp.summary(suite)
    elif cfg.stability:
        from saeforge.evaluation.interp import stability

        out["stability"] = stability(saes)
    print(json.dumps(out))
    return 0


def _eval_clt(cfg, device) -> int:
    """`saeforge eval CLT_DIR`: the cross-layer transcoder spliced in at every layer."""
    from saeforge.dictionary.io import load
    from saeforge.evaluation.evals import evaluate_clt
    from saeforge.sources import data
    from saeforge.sources.language_model import hook_width, load_model

    if cfg.more or cfg.interp or cfg.stability or cfg.together:
        raise UserError("a cross-layer transcoder is evaluated alone (no more dictionaries, --interp, --stability or "
                        "--together)")
    clt = load(cfg.path, device=str(device))
    meta = clt.metadata
    spec = cfg.model or meta.get("model_name")
    if not spec or not meta.get("hook_names"):
        raise UserError(f"{cfg.path} does not record its model and hooks; pass --model")
    model = load_model(spec, str(device))
    hooks, targets = meta["hook_names"], meta["hook_names_out"]
    for h, width in [*((h, clt.layer_in) for h in hooks), *((t, clt.layer_out) for t in targets)]:
        if hook_width(model, h) != width:
            raise UserError(f"{cfg.path}: {h} of the model is {hook_width(model, h)} wide, the transcoder's {width}")
    dataset = cfg.dataset or meta.get("dataset_path") or "embedded"
    held = data.contexts(model, dataset, "test", batch=cfg.contexts_per_pass, loop=False)
    ev = evaluate_clt(model, clt, hooks, targets, held, cfg.tokens, progress=cfg.progress)
    for row in ev["layers"]:
        row.pop("firing_frequency")
    print(json.dumps({"model": spec, "dataset": dataset, "path": str(cfg.path), **ev}))
    return 0


def _eval_together(cfg, first, model, hook: str, device) -> int:
    """`saeforge eval A B … --together`: every dictionary spliced at once, each at its own hooks."""
    from saeforge.evaluation.analysis import load_with_model, target_hook
    from saeforge.evaluation.evals import evaluate_splices
    from saeforge.sources import data

    saes, hooks = [first], [hook]
    for path in cfg.more:
        one, _, h = load_with_model(path, model, None, device=str(device))
        saes.append(one)
        hooks.append(h)
    splices = [(one, h, target_hook(one, path)) for one, h, path in zip(saes, hooks, (cfg.path, *cfg.more))]
    written = [t or h for _, h, t in splices]
    if len(set(written)) < len(written):
        raise UserError("--together: two dictionaries write the same hook; give one per hook")
    dataset = cfg.dataset or first.metadata.get("dataset_path") or "embedded"
    held = data.contexts(model, dataset, "test", batch=cfg.contexts_per_pass, loop=False)
    ev = evaluate_splices(model, splices, held, cfg.tokens, progress=cfg.progress)
    for path, (one, h, t), row in zip((cfg.path, *cfg.more), splices, ev["dictionaries"]):
        row.pop("firing_frequency")
        row |= {"path": str(path), "hook": h, "target_hook": t, "d_sae": one.d_sae}
    print(json.dumps({"model": cfg.model or first.metadata.get("model_name"), "dataset": dataset, **ev}))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from saeforge.evaluation import report
    from saeforge.evaluation.analysis import collect, load_with_model, target_hook
    from saeforge.runtime import check_out_dir, pick_device
    from saeforge.sources import data

    cfg = build_config(InspectConfig, args)
    check_out_dir(cfg.out, outputs=("index.html", "density.png", "features.png"))
    from saeforge.dictionary.crosslayer import is_clt

    device = pick_device(cfg.device)
    if is_clt(cfg.path):  # one layer's features: what they read there, what they write over every later layer
        from saeforge.dictionary.io import load
        from saeforge.sources.language_model import load_model

        sae = load(cfg.path, device=str(device)).layer_view(cfg.layer)
        spec = cfg.model or sae.metadata.get("model_name")
        if not spec or not sae.metadata.get("hook_name"):
            raise UserError(f"{cfg.path} does not record its model and hooks; pass --model and --hook")
        model, hook = load_model(spec, str(device)), cfg.hook or sae.metadata["hook_name"]
        sae = sae.to(next(model.parameters()).device)
    else:
        sae, model, hook = load_with_model(cfg.path, cfg.model or None, cfg.hook or None, device=str(device))
    dataset = cfg.dataset or sae.metadata.get("dataset_path") or "embedded"
    held = data.contexts(model, dataset, "test", batch=cfg.contexts_per_pass, loop=False)
    rep = collect(model, sae, hook, held, cfg.tokens, features=cfg.features, top_k=cfg.top_k,
                  progress=cfg.progress)
    meta = {"dictionary": str(cfg.path), "model": cfg.model or sae.metadata.get("model_name"), "hook": hook,
            "dataset": dataset}
    if sae.transcoder:  # a transcoder's features read `hook` (their contexts) and write here (their token effects)
        meta["hook"] = f"{hook} → {target_hook(sae, cfg.path)}"
    if cfg.labels:
        from saeforge.evaluation.interp import latent_labels

        try:
            labels = latent_labels(model, sae, hook, dataset, cfg.tokens)
        except UserError as e:  # not Python source: a browser without labels
            meta["labels"] = f"none ({e})"
        else:
            for f in rep.features.values():
                f.label = labels[f.index]
            meta["labelled_fraction"] = sum(lab["f1"] >= 0.5 for lab in labels) / len(labels)
    page = report.write(rep, cfg.out, meta)
    print(json.dumps({"report": str(page), "features": len(rep.features), "tokens": rep.n_tokens,
                      "dead": rep.dead, "dense": rep.dense}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saeforge.dictionary.formats import write_circuit_tracer
    from saeforge.dictionary.io import load
    from saeforge.runtime import check_out_dir

    cfg = build_config(ExportConfig, args)
    if not cfg.paths or not cfg.out:
        raise UserError("export needs the transcoder directories (or a pass's --out) and --out")
    dirs = []
    for p in map(Path, cfg.paths):
        if (p / "cfg.json").is_file():
            dirs.append(p)
        elif p.is_dir() and sorted(p.glob("*/cfg.json")):
            dirs += [c.parent for c in sorted(p.glob("*/cfg.json"))]
        else:
            raise UserError(f"{p} is neither a dictionary directory nor a directory of them")
    check_out_dir(cfg.out, outputs=("config.yaml",))
    if (Path(cfg.out) / "config.yaml").exists():
        raise UserError(f"--out {cfg.out} already holds a transcoder set (config.yaml); choose another --out")
    saes = [load(d) for d in dirs]
    out = write_circuit_tracer(saes, cfg.out, scan=cfg.scan or None, where=[str(d) for d in dirs])
    print(json.dumps({"format": cfg.format, "out": str(out), "layers": len(saes)}))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from saeforge.dictionary.io import load, load_sparsity

    sae = load(args.path)
    sp = load_sparsity(args.path)
    info = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
            "metadata": sae.metadata}
    if sae.transcoder:
        info |= {"d_out": sae.d_out, "skip_connection": sae.W_skip is not None}
    if sp is not None:
        info["dead_features"] = int((sp <= -9.99).sum())
    print(json.dumps(info, indent=2, default=str))
    return 0


COMMANDS = [  # name, config class (= its flags), function, help, description
    ("toy", ToyConfig, _cmd_toy, "train on toy data with known features; report MMCS",
     "Train on fresh toy data (known ground-truth features) until MMCS >= --target-mmcs or --steps; writes "
     "metrics.jsonl, summary.json and the dictionary to --out."),
    ("train", ActivationTrainConfig, _cmd_train, "train a dictionary on a model's activations (the main job)",
     "Train a dictionary on a model's activations (the embedded model and corpus by default, or --cache), evaluate "
     "it on held-out text; writes metrics.jsonl, summary.json, the dictionary and a checkpoint to --out."),
    ("harvest", HarvestConfig, _cmd_harvest, "write a model's activations to disk once (an activation cache)",
     "Run the model over the dataset and write the hook's activations (with their tokens) as safetensors shards "
     "plus manifest.json; rerun to resume."),
    ("sweep", SweepConfig, _cmd_sweep, "scaling-law sweep: dictionary sizes × steps (× λ) from one activation cache",
     "Train a grid of dictionary sizes × step counts (× L1 coefficients) from one activation cache, measure each "
     "run on held-out activations, fit the compute-optimal frontier; resumable. --suggest FLOPS reads a finished "
     "sweep."),
    ("eval", EvalConfig, _cmd_eval, "CE loss recovered, EV, L0 of saved dictionaries; --interp: are they interpretable",
     "Evaluate saeforge or SAELens dictionaries on held-out text of the model they were trained on; with --interp, "
     "the interpretability suite on Python labelled by tokenize / ast (probing, labelled latents, absorption, and "
     "stability across several dictionaries)."),
    ("export", ExportConfig, _cmd_export, "write transcoders in circuit-tracer's layout (a per-layer transcoder set)",
     "Write saved transcoders, one per layer, as a circuit-tracer transcoder set (config.yaml and "
     "layer_{i}.safetensors) that circuit-tracer's load_transcoder_set reads."),
    ("inspect", InspectConfig, _cmd_inspect, "HTML feature browser of a dictionary (contexts, histograms, token effects)",
     "Run the dictionary's model on held-out text and write a self-contained HTML feature browser (index.html) "
     "plus PNG plots to --out."),
]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="saeforge", description="Train sparse autoencoders on transformer activations.")
    p.add_argument("--version", action="version", version=f"saeforge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, cls, func, help_, description in COMMANDS:
        cmd = sub.add_parser(name, help=help_, description=description)
        add_config_flags(cmd, cls)
        cmd.set_defaults(func=func)
    info = sub.add_parser("info", help="check and describe a dictionary directory")
    info.add_argument("path", help="dictionary directory (saeforge or SAELens)")
    info.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from saeforge import distributed
    from saeforge.runtime import keep_freed_memory, release_run_dirs

    keep_freed_memory()  # no page-fault churn on the per-step tensors (docs/performance.md, section 3)

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
        release_run_dirs()
        distributed.shutdown()


def run() -> None:
    """The `saeforge` program (console script and `python -m saeforge`): main(), then an exit
    that skips interpreter finalization. Every file is written and closed by then; at
    finalization native thread pools (Arrow's under `datasets`) can still be torn down with a
    live worker and abort a finished run (std::terminate, exit 134: seen on a torchrun rank).
    main() itself never exits, so in-process callers are unaffected."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    run()
