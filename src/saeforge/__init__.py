"""saeforge: sparse dictionaries for transformer activations.

    import saeforge
    sae = saeforge.load("runs/my-dictionary")     # saeforge or SAELens directory
    codes = sae.encode(acts); recon = sae(acts)
"""

__version__ = "0.1.0"

from .dictionary import load, save  # noqa: E402
from .sae import SparseAutoencoder  # noqa: E402

__all__ = ["load", "save", "SparseAutoencoder", "__version__"]
