"""`--wandb PROJECT`: the scalars of metrics.jsonl, the run's config and its summary, in Weights & Biases.

Optional (`pip install 'saeforge[wandb]'`). The run lives in `<out>/wandb/` and its id in
`<out>/wandb-run.json`, so `--resume` continues the same W&B run. `WANDB_MODE=offline` logs
without a network (`wandb sync <out>/wandb/offline-run-*` uploads it later).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from saeforge.errors import UserError
from saeforge.runtime import atomic_write_json


def check_available(project: str) -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"--wandb {project}: the wandb package is not installed; "
                        "pip install 'saeforge[wandb]' (or drop --wandb)") from None
    bad = sorted(set(project) & set("/\\#?%:"))
    if bad or len(project) > 128:
        raise UserError(f"--wandb {project!r} is not a W&B project name (at most 128 characters, none of / \\ # ? % :)")


def _run_id(id_file: Path, resume: bool) -> str:
    """The W&B run to continue (its id in `id_file`, on --resume), else a new id."""
    if resume and id_file.is_file():
        try:
            run_id = json.loads(id_file.read_text()).get("id")
        except (OSError, ValueError, AttributeError):
            raise UserError(f"{id_file} is damaged (not a JSON object with the W&B run's id); delete it to log the "
                            "resumed run as a new W&B run") from None
        if isinstance(run_id, str) and run_id.isalnum():
            return run_id
        raise UserError(f"{id_file}: 'id' must be the W&B run's id (letters and digits), got {run_id!r}; delete "
                        "the file to log the resumed run as a new W&B run")
    return uuid.uuid4().hex[:8]


class WandbLogger:
    def __init__(self, cfg: Any, out: Path, kind: str):
        import wandb

        id_file = out / "wandb-run.json"
        run_id = _run_id(id_file, cfg.resume)
        said = io.StringIO()  # W&B's own lines: shown after a good start, dropped with our one-line error
        try:
            with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
                self.run = wandb.init(project=cfg.wandb, name=out.name, id=run_id, resume="allow", dir=str(out),
                                      job_type=kind, config=dataclasses.asdict(cfg), reinit="create_new")
        except wandb.errors.Error as e:
            raise UserError(f"--wandb {cfg.wandb}: {str(e).strip().splitlines()[0]} (WANDB_MODE=offline logs "
                            "without an account)") from None
        if cfg.progress:
            sys.stderr.write(said.getvalue())
        atomic_write_json(id_file, {"id": run_id, "project": cfg.wandb})

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=row["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        self.run.finish()
