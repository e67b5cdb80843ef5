"""codec_tiny: the demo's SpeechTokenizer-structured codec, sized to train on 2 CPU cores.

Kept from SpeechTokenizer: 50 Hz frames at 16 kHz (hop 320), an 8-layer EMA RVQ whose
first layer is distilled (D-axis loss, weight 120) towards a content teacher, the
commitment and multi-scale mel terms. Changed, because in a CPU budget of minutes the
SEANet pair did not become intelligible (Whisper WER 1.02 after 2000 steps vs 0.27 on
the recordings): a log-mel ConvNeXt encoder and a Vocos decoder (`gpa_jax.codec.spectral`:
both run at 50 Hz only, the decoder predicts STFT magnitude and phase and inverts it),
an L1 log-mel term in the Whisper-like analysis instead of the waveform L1 (which asks
an inverse-STFT head for the exact phase), and no discriminator (adversarial terms add
sharpness, not words; switch on with --config.loss.adversarial=True).

The content teacher is the offline CTC character recogniser (`gpa_jax.codec.teacher`),
trained on the corpus before the codec; its tracks are centred per crop
(`teacher.center`: otherwise a constant RVQ-1 output already scores well on the D-axis
loss).
"""

import ml_collections

from gpa_jax.codec.config import codec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return codec_config(
        codec=dict(
            encoder="mel",
            decoder="vocos",
            spectral_width=256,
            encoder_layers=6,
            decoder_layers=8,
            dimension=64,
            codebook_size=256,
            kmeans_iters=10,
            quantizer="teacher",
        ),
        teacher=dict(
            kind="ctc",
            dim=256,
            layer="last",
            center=True,
            ctc_layers=6,
            ctc_dilations=(1, 2, 4, 1, 2, 4),
            ctc_steps=1500,
            ctc_vq_codes=256,
        ),
        loss=dict(adversarial=False, lambda_wave=0.0, lambda_mel=15.0, lambda_log_mel=45.0),
        discriminator=dict(
            filters=8,
            n_ffts=(512, 256, 128),
            hop_lengths=(128, 64, 32),
            win_lengths=(512, 256, 128),
        ),
        optimizer=dict(learning_rate=1e-3, warmup_steps=100, num_train_steps=5500),
        # Token shards carry the token-aligned log-mel too (the LM's continuous audio
        # input): cheap on the small embedded corpus.
        data=dict(crop_seconds=1.0, batch_size=8, token_features="log_mel"),
        # Every checkpoint is kept: the quality curves (`codec/curves.py`) score each.
        train=dict(log_every=50, summary_every=500, checkpoint_every=1000, keep_checkpoints=0),
    )
