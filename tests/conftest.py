import os

import pytest
import torch

from saeforge.sources.language_model import build_model, load_model, save_model, tiny_lm_config

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


# A real HookedTransformer built from a config, and real text files, shared by the pipeline tests.
SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = build_model(tiny_lm_config(**SMALL))
    return save_model(m, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(str(model_dir))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """25 small documents of real Python source, as .txt files."""
    import argparse

    src = open(argparse.__file__).read().splitlines()
    d = tmp_path_factory.mktemp("text")
    for i in range(25):
        (d / f"doc{i:02d}.txt").write_text("\n".join(src[i * 40: i * 40 + 30]) + "\n")
    return d




@pytest.fixture(scope="module")
def python_dir(tmp_path_factory):
    """12 whole modules of Python's standard library, as .py documents (fewer than 20: all held out)."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    d = tmp_path_factory.mktemp("py")
    picked = [f for f in sorted(root.glob("*.py")) if 3000 < f.stat().st_size < 12000][:12]
    for f in picked:
        (d / f.name).write_text(f.read_text())
    return d
