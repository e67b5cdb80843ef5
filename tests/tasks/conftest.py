"""Tiny token corpora written with ShardWriter from random codes (no codec, no audio).

The parallel corpus mirrors the synthetic one: each sentence is spoken by 3 of 4 voices.
It adds the cases the tasks must count: a speaker with a single utterance (no TTS
reference, no VC source), an over-long utterance (dropped) and a long-ish one whose
reference must be trimmed to fit SEQ_LEN. With `features` every utterance also carries
random per-frame features (FEATURE_DIM wide, from their own generator: the codes are
those of the corpus without features); with `noisy` a random SE noisy input (codes, and
features with `features`, from a third generator), SNR and kind.
"""

from __future__ import annotations

import numpy as np
import pytest
import seqio

from gpa_jax.tasks import config as config_lib
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.token_shards import NoisyInput, ShardWriter
from gpa_jax.tasks.vocab import SpeechVocabulary

N_Q = 4
CODEBOOK = 64
SEQ_LEN = 256
FEATURE_DIM = 6
NOISY_SPEC = {"seed": 0, "snr_db": [0.0, 15.0], "kinds": ["pink"], "babble_talkers": 3,
              "babble_ids": []}  # fmt: skip
SPEAKERS = ("alice", "bob", "carol", "dave")
SENTENCES = (
    "the cat sat on the mat",
    "a quick brown fox",
    "hello there world",
    "speech tokens are fun",
    "one two three four",
    "rain falls in spain",
    "good morning",
    "it's a nice day",
)


def write_corpus(
    directory: str,
    parallel: bool = True,
    seed: int = 0,
    features: bool = False,
    noisy: bool = False,
) -> dict[str, dict]:
    """Writes train + validation splits; returns {split: {id: (speaker, text, codes)}}
    (with `features`: {id: (speaker, text, codes, features)}; with `noisy` the tuple ends
    with the NoisyInput)."""
    rng = np.random.default_rng(seed)
    feature_rng = np.random.default_rng(seed + 1000)
    noisy_rng = np.random.default_rng(seed + 2000)
    spec = {"kind": "test", "dim": FEATURE_DIM} if features else None
    noisy_spec = NOISY_SPEC if noisy else None
    written: dict[str, dict] = {}
    for split, sentences in (("train", SENTENCES), ("validation", SENTENCES[:3])):
        utts = []
        for i, sentence in enumerate(sentences):
            voices = [SPEAKERS[(i + k) % len(SPEAKERS)] for k in range(3)]
            for k, speaker in enumerate(voices):
                text = sentence if parallel else f"{sentence} {speaker} {k}"
                frames = int(rng.integers(20, 60))
                utts.append((f"{split}-{i:03d}-{speaker}", speaker, text, frames))
        if split == "train":
            utts.append(("train-solo", "solo", "only one utterance here", 30))
            utts.append(("train-long", "alice", "a very long utterance", 400))
            utts.append(("train-longish", "bob", "a longish one", 224))
        written[split] = {}
        with ShardWriter(
            directory,
            split,
            n_q=N_Q,
            codebook_size=CODEBOOK,
            frame_rate=50,
            records_per_shard=7,
            features=spec,
            noisy=noisy_spec,
        ) as writer:
            for utt_id, speaker, text, frames in utts:
                codes = rng.integers(0, CODEBOOK, size=(N_Q, frames))
                feats = n = None
                if features:
                    feats = feature_rng.standard_normal((frames, FEATURE_DIM)).astype(np.float16)
                if noisy:
                    noisy_feats = None
                    if features:
                        noisy_feats = noisy_rng.standard_normal((frames, FEATURE_DIM)).astype(
                            np.float16
                        )
                    n = NoisyInput(noisy_rng.integers(0, CODEBOOK, size=(N_Q, frames)),
                                   float(noisy_rng.uniform(0, 15)), "pink", noisy_feats)  # fmt: skip
                writer.write(utt_id, speaker, text, codes, feats, n)
                written[split][utt_id] = tuple(
                    x for x in (speaker, text, codes, feats, n) if x is not None
                )
    return written


@pytest.fixture(scope="session")
def parallel_corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("parallel_tokens"))
    return directory, write_corpus(directory, parallel=True)


@pytest.fixture(scope="session")
def feature_corpus(tmp_path_factory):
    """The parallel corpus (same codes) with per-frame features."""
    directory = str(tmp_path_factory.mktemp("feature_tokens"))
    return directory, write_corpus(directory, parallel=True, features=True)


@pytest.fixture(scope="session")
def noisy_corpus(tmp_path_factory):
    """The parallel corpus (same codes and features) with SE noisy inputs."""
    directory = str(tmp_path_factory.mktemp("noisy_tokens"))
    return directory, write_corpus(directory, parallel=True, features=True, noisy=True)


@pytest.fixture(scope="session")
def nonparallel_corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("nonparallel_tokens"))
    return directory, write_corpus(directory, parallel=False, seed=1)


@pytest.fixture(scope="session")
def vocab():
    return SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=N_Q, codebook_size=CODEBOOK)


def small_config(**overrides):
    values = dict(
        ref_max_frames=40,
        ref_min_frames=10,
        vocab=dict(text="byte", audio_streams=N_Q),
    )
    values.update(overrides)
    return config_lib.tasks_config(**values)


@pytest.fixture(scope="session")
def registered(parallel_corpus, vocab):
    directory, written = parallel_corpus
    handle = tasks_lib.register_tasks(
        directory, vocab, small_config(), sequence_length=SEQ_LEN, namespace="test_par"
    )
    return handle, written
