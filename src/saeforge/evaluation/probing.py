"""The probes of the interpretability suite, as SAEBench trains its sparse probes: the k columns whose
class means differ most, then a logistic regression (scikit-learn, L2, C = 1, 1000 iterations)."""

from __future__ import annotations

import numpy as np
import torch


def top_k_mean_diff(x_BF: torch.Tensor, y_B: torch.Tensor, k: int) -> torch.Tensor:
    """The k columns whose class means differ most (SAEBench's `get_top_k_mean_diff_mask`)."""
    diff_F = (x_BF[y_B == 1].mean(0) - x_BF[y_B == 0].mean(0)).abs()
    return torch.argsort(diff_F, descending=True)[:k]


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """A logistic regression as SAEBench trains its sparse probes (L2, C = 1, 1000 iterations);
    its predictions on `x_test`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(C=1.0, max_iter=1000).fit(x_train, y_train)
    return probe.predict(x_test)


def fit_dense_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor) -> np.ndarray:
    """The "all latents" probe: the same logistic regression on every column, standardized
    (SAEBench trains this one as a linear layer with Adam; on thousands of unscaled columns
    L-BFGS would not converge in its 1000 iterations)."""
    x_train, x_test = x_train.double(), x_test.double()
    mu, sd = x_train.mean(0), x_train.std(0)
    live = sd > 1e-6  # a column constant on the training half (a latent that never fired there) carries nothing
    z = lambda x: ((x[:, live] - mu[live]) / sd[live]).numpy()  # noqa: E731
    if not live.any():
        return np.full(len(x_test), int(y_train.float().mean() >= 0.5))
    return fit_probe(z(x_train), y_train.numpy(), z(x_test))


def document_resamples(n_docs: int, seed: int, n: int = 200) -> list[np.ndarray]:
    """`n` bootstrap resamples of the documents, as a weight (count) per document."""
    rng = np.random.default_rng(seed)
    return [np.bincount(rng.integers(0, n_docs, n_docs), minlength=n_docs) for _ in range(n)]


def interval(values) -> list[float]:
    """The 95% percentile interval of bootstrap figures."""
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
