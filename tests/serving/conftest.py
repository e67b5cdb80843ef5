"""Serving fixtures: the sampler tests' tiny random LM, a tiny random codec whose codes fit
that LM's vocabulary, and audio files to send. The server code under test is real; only
the weights are random. Also the acoustic stage's token corpus, for the exported
stages' round trips."""

import io

import numpy as np
import pytest
import soundfile as sf

from tests.acoustic.conftest import token_corpus  # noqa: F401 (a fixture, used by name)
from tests.sampling.test_sampler import lm, vocab  # noqa: F401 (fixtures)
from tests.tasks.conftest import CODEBOOK, N_Q

RATE = 16000


def codec_config():
    from gpa_jax.config_utils import load_config

    return load_config("configs/codec_tiny.py", {
        "codec.codebook_size": CODEBOOK, "codec.n_q": N_Q, "codec.quantizer": "rvq",
        "teacher.kind": "none", "codec.encoder_layers": 1, "codec.decoder_layers": 1,
        "codec.spectral_width": 32, "codec.dimension": 16,
    })  # fmt: skip


@pytest.fixture(scope="session")
def tiny_codec():
    from flax import nnx

    from gpa_jax.codec.model import Codec

    return Codec.from_config(codec_config(), rngs=nnx.Rngs(0))


def clip(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """A voiced-sounding test clip: a wobbling tone plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 40 * seed + 20 * np.sin(2 * np.pi * 3 * t)
    wav = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / rate) + 0.02 * rng.standard_normal(len(t))
    return wav.astype(np.float32)


def wav_bytes(seconds: float, seed: int = 0, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    sf.write(out, clip(seconds, seed, rate), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def serve_models(lm, vocab, tiny_codec, tmp_path_factory):  # noqa: F811
    """ServeModels over the tiny LM and codec (RVQ-1-only decoding), one named voice."""
    from gpa_jax.sampling import Sampler
    from gpa_jax.serving.inputs import InputLimits
    from gpa_jax.serving.server import ServeModels

    config, model = lm
    sampler = Sampler(config, model, vocab)
    limits = InputLimits(config, codec_config(), sampler.sampling)
    path = tmp_path_factory.mktemp("voices") / "alice.wav"
    path.write_bytes(wav_bytes(2.0, seed=1))
    voice = limits.load_reference(str(path), "voice")
    return ServeModels(sampler, tiny_codec, limits, voices={"alice": voice}, name="tiny")
