"""codec_tiny: a SpeechTokenizer-shaped codec that trains on 2 CPU cores.

Same architecture, strides (hop 320, 50 Hz at 16 kHz), RVQ depth (8 layers), EMA settings
and reconstruction/commitment/distillation weights as `codec_paper`; widths shrink
(n_filters 8: channels 8..128, D 64, 256 codes per layer, one LSTM layer). The semantic
teacher is the offline CTC content recogniser (`gpa_jax.codec.teacher`, 256-d hidden
features), trained on the corpus before the codec, with its tracks centred per crop
(`teacher.center`: otherwise a constant RVQ-1 output already scores well on the D-axis
loss). Conv kernels start at 2x torch's init (`codec.conv_init_gain`): with torch's own
the tiny encoder's latent starts (and, in a few thousand steps, stays) nearly constant in
time and reconstructions stay silent. Short crops, small batch, and the
adversarial terms off: in a CPU budget of minutes the discriminator would halve the
steps while adding sharpness rather than intelligibility (switch it on with
--config.loss.adversarial=True; the 3-scale discriminator below is then used).
"""

import ml_collections

from gpa_jax.codec.config import codec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return codec_config(
        codec=dict(
            n_filters=8,
            dimension=64,
            lstm_layers=1,
            codebook_size=256,
            kmeans_iters=10,
            conv_init_gain=2.0,
        ),
        teacher=dict(kind="ctc", dim=256, layer="last", center=True, ctc_steps=300),
        loss=dict(adversarial=False),
        discriminator=dict(
            filters=8,
            n_ffts=(512, 256, 128),
            hop_lengths=(128, 64, 32),
            win_lengths=(512, 256, 128),
        ),
        optimizer=dict(learning_rate=1e-3, num_train_steps=2000),
        data=dict(crop_seconds=1.0, batch_size=4),
        train=dict(log_every=50, summary_every=500, checkpoint_every=500),
    )
