"""SpeechTokenizer-style audio codec: SEANet encoder/decoder, EMA RVQ, semantic distillation.

Modules: `seanet` (conv/LSTM encoder and decoder), `rvq` (residual vector quantizer with
EMA codebooks), `model` (`Codec`), `api` (numpy waveforms <-> code arrays), `losses`
(generator/discriminator objectives), `discriminator` (MS-STFT discriminator), `config`
(the hyper-parameters and their sources), `data` (clip/feature stores, crop pipeline),
`train` (the trainer), `teacher` + `ctc` (the offline CTC content teacher), `hubert`
(precomputed HF-encoder features, extra [hubert]), `tokenization` (the token-shard job),
`evaluate` (mel distance / STOI / bitrate), `probe` (content per RVQ layer), `jobs` (the
stage as functions for the demo). pyproject.toml's contracts state their layering.
"""

from gpa_jax.codec.api import decode, decode_batch, encode, encode_batch, num_frames
from gpa_jax.codec.config import codec_config
from gpa_jax.codec.discriminator import MultiScaleSTFTDiscriminator
from gpa_jax.codec.model import Codec
from gpa_jax.codec.rvq import CodebookState, ResidualVectorQuantizer

__all__ = [
    "Codec",
    "CodebookState",
    "MultiScaleSTFTDiscriminator",
    "ResidualVectorQuantizer",
    "codec_config",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "num_frames",
]
