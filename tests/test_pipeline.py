"""The real-model pipeline with real parts: a HookedTransformer built from a config, `datasets`
loading local files, the buffer, the cache, training and evals."""

import json

import pytest
import torch

from saeforge.cli import main
from saeforge.errors import UserError
from saeforge.sources import data
from saeforge.sources.buffer import ActivationBuffer, ModelSource
from saeforge.sources.cache import CacheSource, harvest, read_manifest, sha256
from saeforge.sources.language_model import ByteTokenizer, load_model, resolve_hook


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# ------------------------------------------------------------------ models and hooks
def test_byte_tokenizer_round_trip(model):
    text = "def f(x):\n    return x + 'é'\n"
    toks = model.to_tokens(text)
    assert toks[0, 0].item() == 0 and toks.shape[1] == 1 + len(text.encode())
    assert model.to_string(toks[0, 1:]) == text
    assert model.to_tokens(text, prepend_bos=False)[0, 0].item() == ord("d")
    assert ByteTokenizer().decode([104, 105]) == "hi"


def test_local_model_round_trips(model, model_dir):
    again = load_model(str(model_dir))
    toks = model.to_tokens("import os")
    assert torch.equal(model(toks), again(toks))


def test_hook_resolution(model):
    assert resolve_hook(model, "blocks.1.hook_resid_post") == 2
    assert resolve_hook(model, "blocks.0.hook_mlp_out") == 1
    assert resolve_hook(model, "hook_embed") == 0
    with pytest.raises(UserError, match="layer 5 is past the model's depth"):
        resolve_hook(model, "blocks.5.hook_resid_post")
    with pytest.raises(UserError, match="not a hook of this model.*hook_resid_pre"):
        resolve_hook(model, "blocks.0.hook_resid_psot")


def test_missing_model_files_are_user_errors(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="config.json is missing"):
        load_model(str(tmp_path / "m"))


# ------------------------------------------------------------------ data
def test_contexts_are_packed_with_bos_and_deterministic(model, text_dir):
    a = next(data.contexts(model, str(text_dir), "train", seed=1, batch=4))
    b = next(data.contexts(model, str(text_dir), "train", seed=1, batch=4))
    c = next(data.contexts(model, str(text_dir), "train", seed=2, batch=4))
    assert a.shape == (4, 32) and (a[:, 0] == 0).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    text = model.to_string(a[0, 1:])
    assert text in "\n".join(p.read_text() for p in text_dir.iterdir()) or "\x00" in text


def test_heldout_split_is_disjoint_and_fixed(model, text_dir):
    def rows(split, seed):
        return {tuple(r.tolist()) for b in data.contexts(model, str(text_dir), split, seed=seed, batch=1, loop=False)
                for r in b}

    train, test = rows("train", 0), rows("test", 0)
    assert train and test and not (train & test)
    assert rows("test", 5) == test  # the held-out set does not depend on the seed


def test_jsonl_and_parquet_token_columns(model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"x = {i} * {i}\n" * 5}) for i in range(30)))
    got = next(data.contexts(model, str(tmp_path / "a.jsonl"), "train", batch=2))
    assert got.shape == (2, 32)
    pq.write_table(pa.table({"input_ids": [[7, 8, 9] * 20 for _ in range(3)]}), tmp_path / "t.parquet")
    got = next(data.contexts(model, str(tmp_path / "t.parquet"), "train", batch=1))
    assert got[0, 0] == 0 and set(got[0, 1:].tolist()) <= {0, 7, 8, 9}


def test_empty_dataset_is_a_user_error(model, tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(UserError, match="empty|cannot read"):
        next(data.contexts(model, str(tmp_path / "e.jsonl"), "train"))
    with pytest.raises(UserError, match="no such file"):
        next(data.contexts(model, str(tmp_path / "nope.txt"), "train"))


# ------------------------------------------------------------------ buffer
def reference_acts(model, batches, hook="blocks.1.hook_resid_post"):
    out = []
    for t in batches:
        _, cache = model.run_with_cache(t, names_filter=hook, stop_at_layer=2)
        out.append(cache[hook][:, 1:].reshape(-1, model.cfg.d_model))
    return torch.cat(out)


def test_buffer_writes_the_hook_activations_and_serves_each_once(model, text_dir):
    batches = list(data.contexts(model, str(text_dir), "train", batch=4, loop=False))
    assert len(batches) >= 4
    ref = reference_acts(model, batches)
    src = ModelSource(model, "blocks.1.hook_resid_post", iter(batches), stop_at_layer=2)
    n = 2 * 4 * 31 + 10  # not a multiple of a pass: exercises the carry
    buf = ActivationBuffer(src, n, batch_size=16, device="cpu", scale=1.0)
    torch.testing.assert_close(buf.storage, ref[:n])
    served = torch.cat([next(buf) for _ in range(buf.half // 16 + 2)])  # one cycle and a refill
    assert served.shape[1] == 32
    # every served row is a real activation, and none served more often than it occurs
    # (identical rows exist: position 1 after BOS sees the same byte in many contexts)
    from collections import Counter

    have = Counter(tuple(r) for r in ref.tolist())
    got = Counter(tuple(r) for r in served.tolist())
    assert all(have[k] >= n for k, n in got.items())
    assert len(served) > n // 2


def test_buffer_memory_bound_and_bf16(model, text_dir):
    rows = ActivationBuffer.rows_for(1.0, 32, torch.bfloat16, carry_rows=124)
    assert rows == 2**20 // 64 - 124
    stream = data.contexts(model, str(text_dir), "train", batch=4)
    buf = ActivationBuffer(ModelSource(model, "blocks.0.hook_resid_post", stream, 1), rows, 512, "cpu",
                           torch.bfloat16)
    assert buf.storage.dtype == torch.bfloat16
    assert buf.storage.numel() * 2 + 124 * 32 * 2 <= 2**20
    x = next(buf)
    assert x.dtype == torch.float32
    # input scaling: E‖s·x‖² = d_in on the buffer
    assert abs(buf.storage.float().mul(buf.scale).pow(2).sum(-1).mean().item() - 32) < 0.5


def test_buffer_too_small_is_a_user_error(model, text_dir):
    src = ModelSource(model, "blocks.0.hook_resid_post", data.contexts(model, str(text_dir), batch=1), 1)
    with pytest.raises(UserError, match="raise --buffer-mb"):
        ActivationBuffer(src, 100, 64, "cpu")


# ------------------------------------------------------------------ cache
def harvest_to(model, text_dir, out, n_contexts, interrupt_after=None):
    def stream(skip=0):
        it = data.contexts(model, str(text_dir), "train", seed=0, batch=4, skip=skip)
        if interrupt_after is None or skip:
            return it

        def broken():
            for i, b in enumerate(it):
                if i == interrupt_after:
                    raise KeyboardInterrupt
                yield b
        return broken()

    settings = {"model": "tiny", "hook": "blocks.1.hook_resid_post", "dataset": str(text_dir), "split": "train",
                "seed": 0, "n_ctx": 32}
    return harvest(model, "blocks.1.hook_resid_post", 2, stream(), out, settings, n_contexts,
                   contexts_per_shard=8, progress=False, skip_contexts=stream)


def test_harvest_resumes_to_identical_shards(model, text_dir, tmp_path):
    full = harvest_to(model, text_dir, tmp_path / "full", 30)
    assert full["complete"] and full["contexts"] == 30 and len(full["shards"]) == 4
    with pytest.raises(KeyboardInterrupt):
        harvest_to(model, text_dir, tmp_path / "cut", 30, interrupt_after=5)  # dies inside shard 3
    cut = read_manifest(tmp_path / "cut")
    assert not cut["complete"] and len(cut["shards"]) == 2
    again = harvest_to(model, text_dir, tmp_path / "cut", 30)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in full["shards"]]
    # the cached activations are the model's
    t = CacheSource(tmp_path / "full").load_shard(0)
    ref = reference_acts(model, [t["tokens"].long()])
    torch.testing.assert_close(t["activations"], ref)


def test_tampered_or_truncated_shard_is_refused(model, model_dir, text_dir, tmp_path, capsys):
    harvest_to(model, text_dir, tmp_path / "c", 16)
    manifest = read_manifest(tmp_path / "c")
    manifest["model"] = str(model_dir)
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    shard = tmp_path / "c" / "shard_00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    src = CacheSource(tmp_path / "c")
    src.load_shard(0)
    with pytest.raises(UserError, match="tampered"):
        src.load_shard(1)
    code, out, err = run_cli(["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"), *TRAIN], capsys)
    assert code == 2 and err.count("\n") == 1 and "tampered" in err, err
    shard.write_bytes(bytes(raw[:-100]))
    with pytest.raises(UserError, match="truncated"):
        CacheSource(tmp_path / "c")
    assert sha256(tmp_path / "c" / "shard_00000.safetensors")


# ------------------------------------------------------------------ the commands
TRAIN = ["--tokens", "12000", "--batch-size", "128", "--lr", "3e-3", "--l1", "0.3", "--lr-warmup-steps", "10", "--l1-warmup-steps", "10", "--lr-decay-steps", "0", "--buffer-mb", "1", "--eval-tokens", "1500",
         "--no-progress", "--log-every", "20", "--dict-size", "128", "--contexts-per-pass", "8"]


def test_harvest_then_train_from_cache_then_eval(model_dir, text_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, err = run_cli(["harvest", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "6000",
                              "--contexts-per-shard", "16", "--out", str(cache), "--no-progress"], capsys)
    assert code == 0, err
    m = read_manifest(cache)
    assert m["complete"] and m["d_in"] == 32 and m["hook"] == "blocks.1.hook_resid_post"
    assert m["rows"] >= 6000
    code, out, err = run_cli(["train", "--cache", str(cache), "--out", str(tmp_path / "run"),
                              "--dataset", str(text_dir), *TRAIN], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["cache"] == str(cache) and s["tokens"] >= 12000 and s["dict_size"] == 128
    for k in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_loss_recovered", "explained_variance", "l0",
              "dead_fraction"):
        assert k in s and s[k] == s[k]
    assert s["explained_variance"] > 0.3  # trained, not the initial reconstruction
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mse"] < rows[0]["mse"]
    # the saved dictionary acts on raw activations (the input scale is folded in)
    code, out, err = run_cli(["eval", str(tmp_path / "run"), "--tokens", "1500", "--no-progress",
                              "--dataset", str(text_dir)], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert abs(ev["explained_variance"] - s["explained_variance"]) < 1e-4
    assert abs(ev["ce_loss_recovered"] - s["ce_loss_recovered"]) < 1e-4


def test_train_from_live_buffer_and_resume(model_dir, text_dir, tmp_path, capsys):
    args = ["train", "--model", str(model_dir), "--dataset", str(text_dir), "--out", str(tmp_path / "live"),
            "--checkpoint-every", "40", *TRAIN]
    code, out, err = run_cli([*args, "--tokens", "6000"], capsys)  # a first leg of the budget
    assert code == 0, err
    first = json.loads((tmp_path / "live" / "summary.json").read_text())
    code, out, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert s["tokens"] >= 12000 and s["steps"] > first["steps"]
    state = json.loads((tmp_path / "live" / "checkpoint" / "state.json").read_text())
    assert state["data_position"]["contexts_read"] > 0
    assert s["explained_variance"] > 0.3


def test_user_errors_of_the_pipeline(model_dir, text_dir, tmp_path, capsys):
    base = ["train", "--model", str(model_dir), "--dataset", str(text_dir), *TRAIN]
    cases = [
        (["--hook", "blocks.0.hook_nope", "--out", str(tmp_path / "a")], "not a hook of this model"),
        (["--hook", "blocks.9.hook_resid_post", "--out", str(tmp_path / "b")], "past the model's depth"),
        (["--cache", str(tmp_path / "nocache"), "--out", str(tmp_path / "c")], "no such directory"),
        (["--buffer-dtype", "int8", "--out", str(tmp_path / "d")], "--buffer-dtype"),
    ]
    for flags, msg in cases:
        code, out, err = run_cli([*base, *flags], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("saeforge: error:") and msg in lines[0], err
    (tmp_path / "empty.jsonl").write_text("")
    code, out, err = run_cli(["train", "--model", str(model_dir), "--dataset", str(tmp_path / "empty.jsonl"),
                              "--out", str(tmp_path / "e"), *TRAIN], capsys)
    assert code == 2 and "saeforge: error:" in err and len(err.strip().splitlines()) == 1
    # a dictionary whose d_in is not the model's
    from saeforge import SparseAutoencoder, save

    sae = SparseAutoencoder(48, 64)
    sae.metadata.update(model_name=str(model_dir), hook_name="blocks.1.hook_resid_post")
    save(sae, tmp_path / "wrong")
    code, out, err = run_cli(["eval", str(tmp_path / "wrong"), "--no-progress"], capsys)
    assert code == 2 and "d_in 48 does not match" in err


def test_embedded_model_is_a_language_model():
    """The shipped model loads offline and predicts held-out stdlib source far better than chance."""
    import math

    m = load_model("embedded")
    assert (m.cfg.n_layers, m.cfg.d_model, m.cfg.d_vocab, m.cfg.n_ctx) == (4, 128, 256, 256)
    toks = next(data.contexts(m, "embedded", "test", batch=4))
    with torch.no_grad():
        bits = m(toks, return_type="loss").item() / math.log(2)
    assert bits < 2.2, bits  # uniform bytes would be 8 bits; the model reports ~1.5 held out
    assert m.to_string(m.to_tokens("import sys\n", prepend_bos=False)[0]) == "import sys\n"
