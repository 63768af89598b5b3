"""The commands' pipelines, above everything else: each assembles the stages for one job.

    train.py    saeforge train     model or cache → buffer → SAE(s) → trainer(s) → evals (one pass, one
                                   or several dictionaries: dictionaries.py, the --hooks/--dictionaries specs)
    toy.py      saeforge toy       toy data with known features → SAE → trainer → MMCS
    sweep.py    saeforge sweep     a grid of runs from one cache → scaling-law fits
    harvest.py  saeforge harvest   model → activation cache on disk
    common.py   the construction path train, toy and sweep share
"""
