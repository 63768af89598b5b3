"""The `saeforge` command. One subcommand per job; flags come from the dataclass configs.

A user's mistake ends in one line `saeforge: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .config import TOY_DEFAULTS, ToyConfig, add_config_flags, build_config
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        sys.stderr.write(f"saeforge: error: {message}\n")
        raise SystemExit(2)


def _cmd_toy(args: argparse.Namespace) -> int:
    from .toy import run_toy

    cfg = build_config(ToyConfig, args, TOY_DEFAULTS)
    summary = run_toy(cfg)
    print(json.dumps({k: summary[k] for k in ("mmcs_initial", "mmcs_final", "steps_to_mmcs", "steps", "wall_s")}))
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
    info = sub.add_parser("info", help="check and describe a dictionary directory")
    info.add_argument("path", help="dictionary directory (saeforge or SAELens)")
    info.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        sys.stderr.write(f"saeforge: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("saeforge: interrupted; the last checkpoint in --out is intact (rerun with --resume)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
