"""The acoustic stages' trainer-row keys and token-shard location, without TensorFlow
(the training host's import path: gpa_jax.acoustic.kind; the SeqIO task that makes the
rows is gpa_jax.acoustic.data)."""

from __future__ import annotations

import ml_collections

ROW_KEYS = (
    "codes",
    "prompt_mask",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
    "stage",
)
TASK_IDS_KEY = "decoder_task_ids"


def token_dir(config: ml_collections.ConfigDict) -> str:
    directory = config.data.token_dir
    if not directory:
        raise ValueError(
            "config.data.token_dir is empty: set it to the token shards of the corpus "
            "(python -m launch.tokenize writes <workdir>/tokens/<corpus>)"
        )
    return directory
