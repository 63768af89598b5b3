"""saeforge: sparse dictionaries for transformer activations.

    import saeforge
    sae, summary = saeforge.train(acts_ND, k=32, steps=2000)   # or a model name + dataset= + hook=
    sae = saeforge.load("runs/my-dictionary")     # saeforge or SAELens directory
    codes = sae.encode(acts); recon = sae(acts)
"""

__version__ = "0.1.0"

from . import init  # noqa: E402  (saeforge.init.initialize: the informed initializations)
from .api import Trained, train  # noqa: E402
from .architectures import ARCHITECTURES, StandardSAE  # noqa: E402
from .config import ActivationTrainConfig, ToyConfig, TrainConfig  # noqa: E402
from .dictionary import load, save  # noqa: E402
from .errors import UserError  # noqa: E402
from .sae import SAE  # noqa: E402

SparseAutoencoder = StandardSAE  # the name of ReLU + L1 before there were several architectures

__all__ = ["train", "Trained", "load", "save", "SAE", "StandardSAE", "SparseAutoencoder", "ARCHITECTURES", "init",
           "TrainConfig", "ToyConfig", "ActivationTrainConfig", "UserError", "__version__"]
