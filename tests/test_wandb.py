"""--wandb: the metrics.jsonl scalars, config and summary in an offline W&B run; a clear error without wandb."""

import json
import shutil
import subprocess
import sys

import pytest

from saeforge.cli import main

TOY = ["toy", "--d-model", "16", "--n-features", "32", "--steps", "60", "--log-every", "20", "--batch-size", "256",
       "--no-progress"]


@pytest.fixture(autouse=True)
def fresh_wandb():
    """W&B keeps its settings per process (its mode among them): each test starts from none."""
    try:
        import wandb
    except ImportError:
        yield
        return
    wandb.teardown()
    yield
    wandb.teardown()


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


@pytest.mark.parametrize("project, env, says", [
    ("a/b", {"WANDB_MODE": "offline"}, "is not a W&B project name"),
    ("saeforge-test", {"WANDB_MODE": "online"}, "API key"),  # no credentials anywhere: one line, no prompt
], ids=["bad-name", "no-credentials"])
def test_a_wandb_refusal_is_one_line_and_leaves_no_out(project, env, says, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc credentials
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    assert main([*TOY, "--wandb", project, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeforge: error: --wandb") and says in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_damaged_wandb_run_file_on_resume_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main([*TOY, "--wandb", "saeforge-test", "--out", str(out), "--checkpoint-every", "20"]) == 0
    (out / "wandb-run.json").write_text("{not json")
    capsys.readouterr()
    assert main([*TOY[:5], "--steps", "80", *TOY[7:], "--wandb", "saeforge-test", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb-run.json is damaged" in err[0], err


@pytest.mark.parametrize("content", [
    "", "{not json", "[]", "null", "3", '"abc"', "{}", '{"id": null}', '{"id": 5}', '{"id": ["a"]}', '{"id": ""}',
    '{"id": "../x"}', '{"id": "ab cd"}', '{"id": {"a": 1}}', '{"id": true}', '{"project": "p"}', b"\xff\xfe",
    '{"id": "abc123", "project": 7}'])
def test_every_damage_to_the_wandb_run_file_is_one_line_or_resumes_its_run(content, tmp_path):
    """The W&B state saeforge reads back (its run id, on --resume), mutated: the id it holds is used,
    or the resume is refused in one line saying what to do — never a traceback, never a wrong id."""
    from saeforge.errors import UserError
    from saeforge.training.wandb_log import _run_id

    f = tmp_path / "wandb-run.json"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        run_id = _run_id(f, resume=True)
    except UserError as e:
        assert "\n" not in str(e) and "delete" in str(e)
    else:
        assert run_id == json.loads(content)["id"] and run_id.isalnum()
