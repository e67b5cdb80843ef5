"""codec_tiny: a SpeechTokenizer-shaped codec that trains on 2 CPU cores.

Same architecture, strides (hop 320, 50 Hz at 16 kHz), RVQ depth (8 layers), EMA settings
and loss weights as `codec_paper`; only widths shrink: n_filters 8 (channels 8..128),
D 64, 256 codes per layer, one LSTM layer, and a 32-bin log-mel stand-in teacher computed
on the fly (no HuBERT on CPU). Short crops, small batch, a 3-scale discriminator.
"""

import ml_collections

from gpa_jax.codec.config import codec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return codec_config(
        codec=dict(n_filters=8, dimension=64, lstm_layers=1, codebook_size=256, kmeans_iters=10),
        teacher=dict(kind="log_mel", dim=32, layer=""),
        discriminator=dict(
            filters=8,
            n_ffts=(512, 256, 128),
            hop_lengths=(128, 64, 32),
            win_lengths=(512, 256, 128),
        ),
        optimizer=dict(learning_rate=1e-3, num_train_steps=2000),
        data=dict(crop_seconds=1.0, batch_size=4),
    )
