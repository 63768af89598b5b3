"""Evaluation: what a dictionary is worth, and how to read it.

    metrics.py          MMCS, L0, explained variance, MSE, dead fraction (every caller's one source)
    evals.py            with the model: CE loss and KL with the dictionary spliced in
    analysis.py         load against the model, splice, per-feature statistics and top contexts
    report.py           the HTML feature browser (saeforge inspect)
    scaling.py          FLOPs, IsoFLOP optima, power-law fits and plots (saeforge sweep)
"""
