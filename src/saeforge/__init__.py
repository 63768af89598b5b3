"""saeforge: sparse dictionaries for transformer activations.

    import saeforge
    sae = saeforge.load("runs/my-dictionary")     # saeforge or SAELens directory
    codes = sae.encode(acts); recon = sae(acts)
"""

__version__ = "0.1.0"

from .architectures import ARCHITECTURES, StandardSAE  # noqa: E402
from .dictionary import load, save  # noqa: E402
from .sae import SAE  # noqa: E402

SparseAutoencoder = StandardSAE  # the name of ReLU + L1 before there were several architectures

__all__ = ["load", "save", "SAE", "StandardSAE", "SparseAutoencoder", "ARCHITECTURES", "__version__"]
