"""A learnable token corpus for the acoustic stage (ShardWriter, no codec, no audio).

Each speaker s has its own offsets o[s, l]; every frame draws RVQ-1 freely and the upper
layers follow it: code_l = (3 * l * code_0 + o[s, l]) mod K. So layer l is predictable
from layer 1 *and the speaker*, which only the voice prompt reveals: a model that ignores
the prompt cannot reach full accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpa_jax.tasks.token_shards import ShardWriter

N_Q = 4
CODEBOOK = 16
SPEAKERS = ("anna", "ben", "cleo", "dan")
TEXTS = tuple(f"sentence number {i}" for i in range(6))


def speaker_offsets(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CODEBOOK, (len(SPEAKERS), N_Q))


def utterance_codes(rng, speaker: int, frames: int, offsets: np.ndarray) -> np.ndarray:
    c0 = rng.integers(0, CODEBOOK, frames)
    layers = [(3 * layer * c0 + offsets[speaker, layer]) % CODEBOOK for layer in range(N_Q)]
    layers[0] = c0
    return np.stack(layers).astype(np.int64)


def write_corpus(directory: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + 1)
    offsets = speaker_offsets(seed)
    written = {}
    for split, texts in (("train", TEXTS), ("validation", TEXTS[:3])):
        written[split] = {}
        with ShardWriter(
            directory, split, n_q=N_Q, codebook_size=CODEBOOK, frame_rate=50,
            records_per_shard=5, metadata={"codec_checkpoint": "", "corpus": "test"},
        ) as writer:  # fmt: skip
            for s, speaker in enumerate(SPEAKERS):
                for i, text in enumerate(texts):
                    utt_id = f"{split}-{speaker}-{i}"
                    codes = utterance_codes(rng, s, int(rng.integers(12, 30)), offsets)
                    writer.write(utt_id, speaker, text, codes)
                    written[split][utt_id] = (speaker, text, codes)
            # A speaker with one utterance has no reference: it must be dropped.
            codes = utterance_codes(rng, 0, 20, offsets)
            writer.write(f"{split}-solo-0", "solo", "alone", codes)
            written[split][f"{split}-solo-0"] = ("solo", "alone", codes)
    return written


@pytest.fixture(scope="session")
def token_corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("acoustic_tokens"))
    return directory, write_corpus(directory)


# Overrides that shrink configs/acoustic_nar_tiny.py to the test corpus (command-line syntax).
TINY_OVERRIDES = (
    f"model.n_q={N_Q}",
    f"model.codebook_size={CODEBOOK}",
    "model.latent_dim=8",
    "model.num_layers=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.head_dim=16",
    "model.mlp_dim=64",
    "model.max_len=64",
    "data.prompt_max_frames=16",
    "data.prompt_min_frames=8",
    "data.target_max_frames=24",
    "data.task_names=('rvq2', 'rvq3', 'rvq4')",
    "train.seq_len=40",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=3",
    "train.eval_steps=1",
    "train.checkpoint_every=3",
    "optimizer.warmup_steps=2",
    "optimizer.total_steps=100",
    "optimizer.learning_rate=0.003",
)
