"""codec_paper: SpeechTokenizer at paper size (16 kHz, 50 Hz, 8 x 1024 RVQ, HuBERT teacher).

n_filters 64, dimension 1024, 2-layer BiLSTM encoder / LSTM decoder, teacher HuBERT-base
features (768-d, average over layers), loss weights of the SpeechTokenizer release. Every
value and its source lives in `gpa_jax.codec.config`; this file only names the preset.
Its token shards hold codes only (data.token_features=""; "log_mel" adds 320 bytes per
frame for the LM's continuous audio input).
"""

import ml_collections

from gpa_jax.codec.config import codec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return codec_config(data=dict(token_features=""))
