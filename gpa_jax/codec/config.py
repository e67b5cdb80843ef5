"""Codec config builder: the one home of every codec hyper-parameter and its source.

`codec_config(**section_overrides)` returns the SpeechTokenizer paper-size config; a
config file states only what differs (`configs/codec_tiny.py`). Layout (`kind='codec'`):

    seed           root of every random choice (params, RVQ k-means / dead codes, data)
    codec          model: SEANet widths and strides, LSTM, RVQ (sizes, EMA, dead codes)
    teacher        semantic teacher: kind none|hubert_features|ctc|log_mel, dim, path, layer
    loss           weights of the generator terms, adversarial switch, mel-loss settings
    discriminator  MS-STFT discriminator (used when loss.adversarial)
    optimizer      Adam settings for `gpa_jax.codec.train`
    data           training corpus (TFDS name, splits), crop length, batch size, workers
    train          run length and the log / summary / checkpoint cadence
    eval           codec metrics job (split, utterances, batch)
    probe          per-RVQ-layer content probe (layers, data sizes, probe size)
    curves         quality per kept checkpoint (`curves.py`)

Sources of the defaults: SpeechTokenizer (Zhang et al. 2023/ICLR 2024) and its release,
`config/spt_base_cfg.json` + `modules/seanet.py` + `quantization/vq.py`
(github.com/ZhangXInFD/SpeechTokenizer); EnCodec (Défossez et al. 2022) for the SEANet
defaults, the discriminator and the loss forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


def _codec_defaults() -> dict[str, Any]:
    return dict(
        sample_rate=16000,
        # SpeechTokenizer release: n_filters 64, strides [8, 5, 4, 2] (hop 320 -> 50 Hz),
        # dimension 1024, 1 residual unit per stage with kernel 3 and dilation base 2,
        # 2-layer LSTM, bidirectional in the encoder, ELU activations.
        n_filters=64,
        strides=(8, 5, 4, 2),
        dimension=1024,
        n_residual_layers=1,
        residual_kernel_size=3,
        dilation_base=2,
        lstm_layers=2,
        encoder_bidirectional=True,
        # EnCodec SEANet defaults that SpeechTokenizer keeps: first/last conv kernel 7,
        # residual hidden width / 2, 1x1-conv shortcut (true_skip False), reflect padding.
        kernel_size=7,
        last_kernel_size=7,
        compress=2,
        true_skip=False,
        pad_mode="reflect",
        # Conv kernels start as torch's default init times conv_init_gain (1 = the
        # reference's init; see `seanet.scale_conv_weights` for why small fast runs use 2).
        conv_init_gain=1.0,
        # RVQ: 8 layers x 1024 codes (release config); EMA decay 0.99, Laplace epsilon 1e-5,
        # k-means init with 50 iterations, dead-code threshold 2 (release `vq.py` /
        # `core_vq.py` defaults). SpeechTokenizer trains with all 8 layers every step
        # (no quantizer dropout); EnCodec-style bitrate dropout is available.
        n_q=8,
        codebook_size=1024,
        ema_decay=0.99,
        ema_epsilon=1e-5,
        kmeans_init=True,
        kmeans_iters=50,
        dead_code_threshold=2.0,
        quantizer_dropout=0.0,
        # quantizer: 'rvq' (the paper's), 'split' (`rvq.SplitQuantizer`: RVQ-1 is a VQ of
        # its own semantic_dim projection of the latent, 0 = dimension; Mimi's split) or
        # 'teacher' (`rvq.TeacherCodeQuantizer`: RVQ-1 codes are the frozen CTC teacher's
        # VQ codes, teacher.ctc_vq_codes = codebook_size; no distillation).
        quantizer="rvq",
        semantic_dim=0,
        # encoder: 'seanet' (the paper's waveform encoder) or 'mel' (`spectral.MelEncoder`);
        # decoder: 'seanet' or 'vocos' (`spectral.VocosDecoder`, an inverse-STFT head). The
        # spectral pair runs at the frame rate only; the next fields size it.
        encoder="seanet",
        decoder="seanet",
        spectral_width=512,
        encoder_layers=8,
        decoder_layers=8,
        spectral_n_mels=80,
        convnext_mlp_ratio=3,
    )


def _teacher_defaults() -> dict[str, Any]:
    # HuBERT-base features (768-d), averaged over all layers ("semantic_model_layer": "avg"
    # in the release config; the paper found the average the better RVQ-1 teacher).
    # path: the FeatureStore of precomputed features (hubert_features) or the CTC
    # teacher's directory (ctc; "" = <workdir>/codec/teacher, trained there if missing).
    # center: subtract each teacher track's mean over the crop before the D-axis loss
    # (not in the paper; see `losses._centered`).
    # ctc_*: the offline CTC content teacher (`gpa_jax.codec.teacher`; our choice, sized
    # to train in a few minutes on 2 CPU cores): dim = its hidden width, `layer` one of
    # last|avg|<block index>.
    return dict(
        kind="hubert_features",
        dim=768,
        layer="avg",
        path="",
        center=False,
        ctc_layers=4,
        ctc_kernel_size=5,
        ctc_dilations=(1,),
        ctc_n_mels=80,
        ctc_steps=600,
        ctc_batch_size=16,
        ctc_learning_rate=2e-3,
        ctc_max_seconds=8.0,
        ctc_eval_utterances=200,
        ctc_checkpoint_every=250,  # a stopped teacher run resumes from its last save
        # VQ bottleneck of ctc_vq_codes EMA codes before the character head (0 = none),
        # commitment weight ctc_vq_commit (VQ-VAE's beta): its codes are content tokens.
        ctc_vq_codes=0,
        ctc_vq_commit=0.25,
    )


def _loss_defaults() -> dict[str, Any]:
    # Weights: SpeechTokenizer release config (recon_loss_lambda 500, mel 45 on its main
    # mel scale, commitment_loss_lambda 10, distill_loss_lambda 120; its trainer adds the
    # adversarial and feature-matching terms with weight 1). Caveat: its mel term is an L1
    # of log-mel at 4 resolutions (lambdas [45, 1, 1, 1]); ours is the paper's multi-scale
    # mel loss (EnCodec's form: 64 mels, windows 2^5..2^11), weighted by lambda_mel. For
    # EnCodec's own balance use lambda_wave 0.1, lambda_mel 1, lambda_adv 3, lambda_fm 3
    # (the EnCodec paper's lambda_t, lambda_f, lambda_g, lambda_feat).
    return dict(
        lambda_wave=500.0,
        lambda_mel=45.0,
        lambda_commit=10.0,
        lambda_distill=120.0,
        # L1 of natural-log mel (80 bins, 25 ms / 10 ms: what Whisper-style recognisers
        # read; HiFi-GAN / Vocos weight it 45). 0 = off, as in the paper.
        lambda_log_mel=0.0,
        lambda_adv=1.0,
        lambda_fm=1.0,
        adversarial=True,
        mel_n_mels=64,
        mel_scales=tuple(range(5, 12)),
    )


def _discriminator_defaults() -> dict[str, Any]:
    # EnCodec MS-STFTD: 32 filters, 5 scales with windows 2048..128 and hop = window / 4.
    return dict(
        filters=32,
        n_ffts=(2048, 1024, 512, 256, 128),
        hop_lengths=(512, 256, 128, 64, 32),
        win_lengths=(2048, 1024, 512, 256, 128),
    )


def _optimizer_defaults() -> dict[str, Any]:
    # Release config: Adam lr 1e-4, betas (0.9, 0.99), no weight decay, no warm-up, cosine
    # annealing over the run; the discriminator uses the same settings.
    return dict(
        learning_rate=1e-4,
        b1=0.9,
        b2=0.99,
        weight_decay=0.0,
        warmup_steps=0,
        schedule="cosine",
        num_train_steps=400_000,
        grad_clip_norm=0.0,
    )


def _data_defaults() -> dict[str, Any]:
    # Release config: segment_size 48000 samples (3 s at 16 kHz), batch_size 6 per GPU.
    # The corpus is any `gpa_jax.corpora` speech corpus ("name/config"); clips longer than
    # max_seconds are skipped and counted. num_workers 0 reads in the training process.
    # token_features: what the tokenization job stores per code frame besides the codes
    # ("" none; "log_mel" the token-aligned log-mel the LM reads with
    # model.audio_input="continuous", 320 bytes per frame: off at paper scale).
    # noisy_inputs: the job also stores each utterance's speech-enhancement input, the
    # codes (and features) of a noisy version of its clip (`gpa_jax.audio.noise`: coloured
    # noise or babble at an SNR drawn uniformly in noise_snr_db, deterministic from
    # noise_seed and the utterance id); off by default: it encodes every clip twice.
    return dict(
        crop_seconds=3.0,
        batch_size=6,
        corpus="synthetic_speech/default",
        split="train",
        validation_split="validation",
        max_seconds=60.0,
        num_workers=0,
        token_features="",
        noisy_inputs=False,
        noise_seed=0,
        noise_snr_db=(0.0, 15.0),
    )


def _train_defaults() -> dict[str, Any]:
    # num_steps 0 runs the whole schedule (optimizer.num_train_steps); a smaller value
    # stops early and a later run with a larger one resumes from the last checkpoint.
    # summary_seconds: length of the fixed validation clip of the audio summaries;
    # keep_checkpoints 0 keeps every checkpoint (the quality curves score each).
    # divergence_factor: a finite generator loss (or CTC teacher loss) above this times its
    # running average marks the checkpoints saved around it as diverged; the newest good
    # one is always kept (gpa_jax.recovery; 0 = off).
    return dict(
        num_steps=0,
        log_every=50,
        summary_every=1000,
        checkpoint_every=1000,
        keep_checkpoints=3,
        summary_seconds=4.0,
        divergence_factor=4.0,
    )


def _eval_defaults() -> dict[str, Any]:
    # `gpa_jax.codec.evaluate` (launch.eval_codec): the first per_voice utterances of every
    # voice of the split (0 = all), at most max_utterances (0 = no cap), encode/decode
    # batch, and whether to transcribe reconstructions with the CTC teacher.
    return dict(split="test", per_voice=12, max_utterances=0, batch_size=8, teacher_cer=True)


def _probe_defaults() -> dict[str, Any]:
    # `gpa_jax.codec.probe` (launch.probe_codec): one small CTC recogniser per RVQ layer
    # (1-based layer numbers) on that layer's code embeddings, trained on
    # train_utterances of the training split, scored (CER) on test_utterances of `split`.
    return dict(
        layers=(1, 2),
        split="test",
        train_utterances=600,
        test_utterances=200,
        hidden=128,
        num_layers=2,
        kernel_size=5,
        steps=300,
        batch_size=16,
        learning_rate=2e-3,
    )


def _curves_defaults() -> dict[str, Any]:
    # `gpa_jax.codec.curves`: utterances per voice of eval.split scored at every kept
    # checkpoint (judge WER of the resynthesis; the RVQ-1 probe uses the probe section).
    return dict(per_voice=4)


_SECTIONS = {
    "codec": _codec_defaults,
    "teacher": _teacher_defaults,
    "loss": _loss_defaults,
    "discriminator": _discriminator_defaults,
    "optimizer": _optimizer_defaults,
    "data": _data_defaults,
    "train": _train_defaults,
    "eval": _eval_defaults,
    "probe": _probe_defaults,
    "curves": _curves_defaults,
}


def codec_config(
    seed: int = 1234, **section_overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Paper-size codec config with per-section overrides, e.g. codec={'n_filters': 8}.

    Unknown sections or keys raise KeyError, so a typo cannot add a silent new field.
    """
    config = ml_collections.ConfigDict()
    config.kind = "codec"
    config.seed = seed  # release config's seed
    unknown = set(section_overrides) - set(_SECTIONS)
    if unknown:
        raise KeyError(
            f"unknown codec config sections {sorted(unknown)}; valid: {sorted(_SECTIONS)}"
        )
    for name, defaults_fn in _SECTIONS.items():
        values = defaults_fn()
        overrides = dict(section_overrides.get(name, {}))
        bad = set(overrides) - set(values)
        if bad:
            raise KeyError(f"unknown keys {sorted(bad)} in codec config section {name!r}")
        values.update(overrides)
        config[name] = ml_collections.ConfigDict(values)
    return config
