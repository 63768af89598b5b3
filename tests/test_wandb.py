"""--wandb: the metrics.jsonl scalars, config and summary in an offline W&B run; a clear error without wandb."""

import json
import shutil
import subprocess
import sys

import pytest

from saeforge.cli import main

TOY = ["toy", "--d-model", "16", "--n-features", "32", "--steps", "60", "--log-every", "20", "--batch-size", "256",
       "--no-progress"]


def test_offline_run_holds_the_logged_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main([*TOY, "--wandb", "saeforge-test", "--out", str(out)]) == 0
    ident = json.loads((out / "wandb-run.json").read_text())
    assert ident["project"] == "saeforge-test"
    [log] = list((out / "wandb").glob(f"offline-run-*-{ident['id']}/run-{ident['id']}.wandb"))
    wandb_cli = shutil.which("wandb", path=str(__import__("pathlib").Path(sys.executable).parent)) or "wandb"
    records = [json.loads(line) for line in subprocess.run(
        [wandb_cli, "leet", "inspect", "--json", str(log)], capture_output=True, text=True, check=True).stdout.splitlines()]
    history = {r["history"]["item"]["_step"]: r["history"]["item"] for r in records if r.get("type") == "history"}
    rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert sorted(history) == sorted(rows) == [20, 40, 60]
    for step, row in rows.items():
        for key in ("loss", "mse", "l0", "explained_variance", "mmcs"):
            assert history[step][key] == pytest.approx(row[key], rel=1e-6)
    config = next(r["run"]["config"] for r in records if r.get("type") == "run")
    assert "l1_coefficient" in json.dumps(config)
    summary = json.loads((out / "summary.json").read_text())
    final = {}
    for r in records:
        if r.get("type") == "summary":
            final |= r["summary"]["update"]
    assert final["mmcs_final"] == pytest.approx(summary["mmcs_final"])


def test_without_wandb_the_flag_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    assert main([*TOY, "--wandb", "p", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'saeforge[wandb]'" in err[0]
    assert not (tmp_path / "o").exists()
