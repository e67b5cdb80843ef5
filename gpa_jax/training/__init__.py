"""LM training: `train(config, workdir)` runs the loop (`trainer`); Orbax in `checkpoint`.

Config sections and the top-level `lm_config` in `config`, loss and optimizer in
`train_step`, batches from `data_iter` (SeqIO task mixture, batch cache or synthetic),
model families through `model_kinds`, metric writers in `metrics`, the per-task
loss-vs-unigram table in `lm_report`.
"""

from gpa_jax.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
