"""`--wandb PROJECT`: the scalars of metrics.jsonl, the run's config and its summary, in Weights & Biases.

Optional (`pip install 'saeforge[wandb]'`). The run lives in `<out>/wandb/` and its id in
`<out>/wandb-run.json`, so `--resume` continues the same W&B run. `WANDB_MODE=offline` logs
without a network (`wandb sync <out>/wandb/offline-run-*` uploads it later).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

from saeforge.errors import UserError


def check_available(project: str) -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"--wandb {project}: the wandb package is not installed; "
                        "pip install 'saeforge[wandb]' (or drop --wandb)") from None


class WandbLogger:
    def __init__(self, cfg: Any, out: Path, kind: str):
        import wandb

        id_file = out / "wandb-run.json"
        run_id = json.loads(id_file.read_text()).get("id") if cfg.resume and id_file.is_file() else None
        run_id = run_id if isinstance(run_id, str) else uuid.uuid4().hex[:8]
        self.run = wandb.init(project=cfg.wandb, name=out.name, id=run_id, resume="allow", dir=str(out),
                              job_type=kind, config=dataclasses.asdict(cfg), reinit="create_new")
        id_file.write_text(json.dumps({"id": run_id, "project": cfg.wandb}) + "\n")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=row["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        self.run.finish()
