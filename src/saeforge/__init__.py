"""saeforge: sparse dictionaries for transformer activations.

    import saeforge
    sae, summary = saeforge.train(acts_ND, k=32, steps=2000)   # or a model name + dataset= + hook=
    sae = saeforge.load("runs/my-dictionary")     # saeforge or SAELens directory
    codes = sae.encode(acts); recon = sae(acts)
    tc, _ = saeforge.train("embedded", hook="blocks.1.ln2.hook_normalized", target_hook="blocks.1.hook_mlp_out")
    saeforge.write_circuit_tracer([tc0, tc1, ...], "runs/ct")   # a transcoder per layer, circuit-tracer's layout
"""

__version__ = "0.1.0"

from saeforge.api import Trained, interpretability, train  # noqa: E402
from saeforge.config import ActivationTrainConfig, ToyConfig, TrainConfig  # noqa: E402
from saeforge.dictionary import init  # noqa: E402  (saeforge.init.initialize: the informed initializations)
from saeforge.dictionary.architectures import ARCHITECTURES, StandardSAE  # noqa: E402
from saeforge.dictionary.formats import read_circuit_tracer, write_circuit_tracer  # noqa: E402
from saeforge.dictionary.io import load, save  # noqa: E402
from saeforge.dictionary.sae import SAE  # noqa: E402
from saeforge.errors import UserError  # noqa: E402

SparseAutoencoder = StandardSAE  # the name of ReLU + L1 before there were several architectures

__all__ = ["train", "Trained", "interpretability", "load", "save", "read_circuit_tracer", "write_circuit_tracer", "SAE", "StandardSAE", "SparseAutoencoder", "ARCHITECTURES", "init",
           "TrainConfig", "ToyConfig", "ActivationTrainConfig", "UserError", "__version__"]
