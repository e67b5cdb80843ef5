"""acoustic_nar_tiny: the USLM-style NAR acoustic model (RVQ-2..8 from RVQ-1 + voice prompt)
at a size that trains on 2 CPU cores in about 10 minutes.

Matches `codec_tiny` (8 RVQ layers x 256 codes, D 64). 4 adaLN blocks, d 128, 4 heads /
2 kv heads; rows of a 1.5 s voice prompt + up to 2.5 s of target (75 + 125 frames at 50 Hz).
`arg`: the token directory (else set --config.data.token_dir), e.g.
    python -m launch.train --config=configs/acoustic_nar_tiny.py:runs/demo/tokens/synthetic_speech/default
"""

import ml_collections

from gpa_jax.acoustic.config import acoustic_config, codec_section, data_config, model_config
from gpa_jax.models.config import mesh_config
from gpa_jax.training.config import optimizer_config, train_config

VARIANT = "nar"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return tiny_config(VARIANT, arg)


def tiny_config(variant: str, token_dir: str | None) -> ml_collections.ConfigDict:
    """The tiny acoustic config of `variant` (shared with acoustic_vocoder_tiny)."""
    model = model_config(
        variant=variant,
        n_q=8,
        codebook_size=256,
        latent_dim=64,
        num_layers=4,
        embed_dim=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mlp_dim=512,
        max_len=256,
        scan_layers=False,
    )
    return acoustic_config(
        model=model,
        data=data_config(
            token_dir=token_dir or "",
            prompt_max_frames=75,
            prompt_min_frames=25,
            target_max_frames=125,
        ),
        codec=codec_section(config="configs/codec_tiny.py"),
        mesh=mesh_config(shape=(-1, 1, 1)),
        train=train_config(
            num_steps=1500,
            batch_size=8,
            seq_len=200,
            log_every=50,
            eval_every=500,
            eval_steps=4,
            checkpoint_every=500,
            keep_checkpoints=2,
        ),
        optimizer=optimizer_config(
            learning_rate=2e-3, warmup_steps=100, total_steps=1500, weight_decay=0.01, z_loss=0.0
        ),
    )
