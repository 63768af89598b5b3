"""Training: the loop and what it calls.

    trainer.py          Adam on an SAE's loss, logging, dead-feature statistics; the loop of every command
    checkpoint.py       the resumable state on disk: schema, reading, atomic writing
    resample.py         dead-feature resampling (anthropic, clustered) and its settings
    feature_shards.py   a dictionary's features split over torchrun ranks (--feature-shards)
    wandb_log.py        --wandb PROJECT: metrics, config and summary in Weights & Biases
"""
