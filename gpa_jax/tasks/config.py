"""`config.tasks`: the one home of the data/task settings of LM training.

LM config files include it as `config.tasks = tasks_config(...)`. Fields:

    token_dir         token-shard directory (gpa_jax.tasks.token_shards), e.g.
                      <workdir>/tokens/synthetic_speech_default
    namespace         registry prefix: tasks <ns>_tts/_asr/_vc, mixture <ns>_mix
    sequence_length   packed length L; an example is [inputs + targets] <= L (length rule)
    pack              pack several examples per row (else one example per row, padded)
    rates             mixture rates per task (relative numbers of examples)
    ref_max_frames    reference clip crop, frames (150 = 3 s at 50 Hz)
    ref_min_frames    a reference is never trimmed below this to fit L (then: drop)
    ref_layers        RVQ layers in the reference: 1 = RVQ-1 (GPA/USLM default), n = the
                      first n layers, frame-major interleaved (needs vocab.audio_streams >= n)
    trim_ref_to_fit   shorten the reference before dropping an over-long example
    verify_checksums  check shard sha256s against the manifest when loading a split
    vocab.text        "spm" (SentencePiece model at vocab.spm_model) or "byte"
    vocab.spm_model   path written by `python -m launch.train_spm`
    vocab.audio_streams  audio id ranges in the vocabulary (1 = RVQ-1 only, as the AR LM
                      of GPA/USLM; 8 to give every RVQ layer ids)

The data seed is the config's top-level `seed` (passed to make_batches), not a field here.
"""

from __future__ import annotations

from typing import Any

import ml_collections

TASK_NAMES = ("tts", "asr", "vc")


def tasks_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Defaults for `config.tasks`; keyword overrides per field (rates and vocab as dicts)."""
    config = ml_collections.ConfigDict(
        dict(
            token_dir="",
            namespace="gpa",
            sequence_length=1024,
            pack=True,
            rates=dict(tts=0.4, asr=0.3, vc=0.3),
            ref_max_frames=150,
            ref_min_frames=50,
            ref_layers=1,
            trim_ref_to_fit=True,
            verify_checksums=True,
            vocab=dict(text="spm", spm_model="", audio_streams=1),
        )
    )
    unknown = sorted(set(overrides) - set(config.keys()))
    if unknown:
        raise ValueError(f"unknown tasks keys {unknown}; valid: {sorted(config.keys())}")
    for key, value in overrides.items():
        if isinstance(config[key], ml_collections.ConfigDict):
            bad = sorted(set(value) - set(config[key].keys()))
            if bad:
                raise ValueError(f"unknown tasks.{key} keys {bad}; valid: {sorted(config[key])}")
            config[key].update(value)
        else:
            config[key] = value
    validate_tasks_config(config)
    return config


def validate_tasks_config(config: ml_collections.ConfigDict) -> None:
    """Checks the relations between fields that a typo or sweep could break."""
    if sorted(config.rates.keys()) != sorted(TASK_NAMES):
        raise ValueError(f"tasks.rates must name {TASK_NAMES}, got {sorted(config.rates)}")
    if any(r < 0 for r in config.rates.values()) or sum(config.rates.values()) <= 0:
        raise ValueError(f"tasks.rates must be >= 0 with a positive sum, got {dict(config.rates)}")
    if not 1 <= config.ref_layers <= config.vocab.audio_streams:
        raise ValueError(
            f"tasks.ref_layers={config.ref_layers} needs 1 <= ref_layers <= "
            f"vocab.audio_streams={config.vocab.audio_streams}"
        )
    if not 0 < config.ref_min_frames <= config.ref_max_frames:
        raise ValueError(
            f"need 0 < ref_min_frames ({config.ref_min_frames}) <= ref_max_frames "
            f"({config.ref_max_frames})"
        )
    if config.sequence_length < 8:
        raise ValueError(f"tasks.sequence_length={config.sequence_length} is too short")
