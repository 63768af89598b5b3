"""Reading dictionaries: load against the model, splice, feature statistics, the HTML browser
(in a real headless Chromium), and the notebook."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from saeforge.cli import main
from saeforge.errors import UserError
from saeforge.evaluation.analysis import collect, load_with_model, splice
from saeforge.sources import data
from saeforge.sources.language_model import build_model, save_model, tiny_lm_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(model_dir, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dict") / "run"
    assert main(["train", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "8000", "--batch-size",
                 "128", "--dict-size", "96", "--lr", "3e-3", "--l1", "0.3", "--lr-warmup-steps", "5",
                 "--l1-warmup-steps", "10", "--lr-decay-steps", "0", "--buffer-mb", "1", "--eval-tokens", "500",
                 "--no-progress", "--contexts-per-pass", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(trained, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["inspect", str(trained), "--out", str(out), "--features", "12", "--tokens", "2000",
                 "--dataset", str(text_dir), "--no-progress"]) == 0
    return out


def test_splice_replaces_the_activation_and_is_undone(trained, text_dir):
    sae, model, hook = load_with_model(trained)
    tokens = next(data.contexts(model, str(text_dir), "test", batch=4, loop=False))
    clean = model(tokens, return_type="loss").item()
    seen = {}
    with splice(model, sae, hook):
        spliced = model.run_with_hooks(tokens, return_type="loss",
                                       fwd_hooks=[(hook, lambda a, hook: seen.setdefault("x", a.clone()))]).item()
    assert spliced != clean and model(tokens, return_type="loss").item() == clean
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    x = cache[hook]
    torch.testing.assert_close(seen["x"][:, 1:], sae(x[:, 1:]))  # reconstruction at positions 1..
    torch.testing.assert_close(seen["x"][:, 0], x[:, 0])  # BOS untouched


def test_feature_statistics_are_consistent(trained, text_dir):
    sae, model, hook = load_with_model(trained)
    held = data.contexts(model, str(text_dir), "test", batch=8, loop=False)
    rep = collect(model, sae, hook, held, 1500, features=[0, 5, 7], top_k=5)
    assert set(rep.features) == {0, 5, 7}
    assert rep.dead == int((rep.frequency_F == 0).sum()) and 0 <= rep.dense <= sae.d_sae
    for fi, f in rep.features.items():
        acts = [c.activation for c in f.contexts]
        assert acts == sorted(acts, reverse=True)
        if f.frequency > 0:
            assert f.contexts and abs(acts[0] - f.max_activation) < 1e-4
            assert sum(f.histogram) > 0 and len(f.bin_edges) == len(f.histogram) + 1
        assert len(f.promoted) == 10 and f.promoted[0][1] >= f.promoted[-1][1]
        assert f.suppressed[0][1] <= f.suppressed[-1][1]
        for c in f.contexts:
            assert 0 <= c.marked < len(c.tokens) and "⟦" in c.text()
    counts, edges = rep.density_histogram()
    assert sum(counts) == int((rep.frequency_F > 0).sum())


def test_report_files(report):
    html = (report / "index.html").read_text()
    assert html.startswith("<!doctype html>") and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    payload = json.loads(html.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert len(payload["features"]) == 12 and payload["n_features"] == 96
    assert any(f["contexts"] for f in payload["features"])
    for png in ("density.png", "features.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _chrome():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (README's test command installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def test_browser_loads_searches_and_renders_a_feature(report, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _chrome()
    try:
        driver.get((report / "index.html").as_uri())
        items = driver.find_elements(By.CSS_SELECTOR, "#list li")
        assert len(items) == 12
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # search by feature number filters the list to that feature
        first = items[0].get_attribute("data-index")
        box = driver.find_element(By.ID, "search")
        box.send_keys(first)
        shown = driver.find_elements(By.CSS_SELECTOR, "#list li")
        assert 1 <= len(shown) < 12 and first in [li.get_attribute("data-index") for li in shown]
        box.clear()
        box.send_keys("zzzz-no-such-text")
        assert driver.find_elements(By.CSS_SELECTOR, "#list li") == []
        box.clear()
        box.send_keys(" ")  # an input event with an empty query shows everything again
        assert len(driver.find_elements(By.CSS_SELECTOR, "#list li")) == 12
        # sorting by frequency puts the most frequent first
        driver.find_element(By.CSS_SELECTOR, "button[data-k=frequency]").click()
        lis = driver.find_elements(By.CSS_SELECTOR, "#list li")
        freqs = [float(li.text.split("freq ")[1].split()[0]) for li in lis]
        assert freqs == sorted(freqs, reverse=True)
        # a feature's contexts render, with the activating token marked
        lis[0].click()
        ctxs = driver.find_elements(By.CSS_SELECTOR, "#detail .ctx")
        assert ctxs and ctxs[0].find_elements(By.TAG_NAME, "mark")
        assert driver.find_elements(By.CSS_SELECTOR, "#detail svg rect")
        assert driver.find_elements(By.CSS_SELECTOR, "#detail .effects.promoted .tok")
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        driver.get_screenshot_as_file(str(tmp_path / "shot.png"))
        assert (tmp_path / "shot.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_bad_directories_and_mismatched_models(trained, tmp_path, capsys):
    def err_of(args):
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("saeforge: error:"), err
        return err[0]

    bad = tmp_path / "missing"
    shutil.copytree(trained, bad)
    (bad / "cfg.json").unlink()
    assert "cfg.json" in err_of(["inspect", str(bad), "--out", str(tmp_path / "r1"), "--no-progress"])
    cut = tmp_path / "truncated"
    shutil.copytree(trained, cut)
    w = cut / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    assert "sae_weights.safetensors" in err_of(["inspect", str(cut), "--out", str(tmp_path / "r2"), "--no-progress"])
    other_model = build_model(tiny_lm_config(n_layers=2, d_model=48, n_heads=2, d_head=24, d_mlp=96, n_ctx=32))
    other = save_model(other_model, tmp_path / "other")
    assert "was trained on model" in err_of(["inspect", str(trained), "--model", str(other), "--out",
                                             str(tmp_path / "r3"), "--no-progress"])
    with pytest.raises(UserError, match="d_in 32 does not match"):
        load_with_model(trained, model=other_model)
    assert "not 'gelu-4l'" in err_of(["eval", str(trained), "--model", "gelu-4l", "--no-progress"])
    with pytest.raises(UserError, match="hook"):
        load_with_model(trained, hook="blocks.9.hook_resid_post")
    assert not (tmp_path / "r1" / "index.html").exists()


def test_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "inspect_dictionary.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Feature" in outputs and "explained variance" in outputs


def test_features_carry_their_best_python_label(trained, python_dir, tmp_path):
    """On Python source every feature page and list row shows the feature's best label and its F1."""
    from selenium.webdriver.common.by import By

    out = tmp_path / "report"
    assert main(["inspect", str(trained), "--out", str(out), "--features", "6", "--tokens", "2000",
                 "--dataset", str(python_dir), "--no-progress"]) == 0
    html = (out / "index.html").read_text()
    payload = json.loads(html.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert all(f["label"] and 0 <= f["f1"] <= 1 for f in payload["features"])
    assert 0 <= payload["meta"]["labelled_fraction"] <= 1
    driver = _chrome()
    try:
        driver.get((out / "index.html").as_uri())
        lis = driver.find_elements(By.CSS_SELECTOR, "#list li")
        assert all(" F1 " in li.text for li in lis)
        lis[0].click()
        assert "best Python label" in driver.find_element(By.CSS_SELECTOR, "#detail .label").text
    finally:
        driver.quit()
