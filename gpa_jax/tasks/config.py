"""`config.tasks`: the one home of the task/mixture settings of LM training.

`gpa_jax.training.config.lm_config` puts `config.tasks = tasks_config()` into every LM
config; config files override fields. Fields:

    corpus            TFDS speech corpus the tokens and the text vocabulary come from
                      ("name/config"); names the default paths below
    token_dir         token-shard directory (gpa_jax.tasks.token_shards); "" = the one
                      `launch.tokenize` writes: <workdir>/tokens/<corpus>
    train_split       split the trainer trains on (and the unigram baseline is counted on)
    eval_split        split of the trainer's evals
    namespace         registry prefix: tasks <ns>_tts/_asr/_vc[/_se], mixture <ns>_mix
    pack              pack several examples per row (else one example per row, padded)
    rates             mixture rates per task (relative numbers of examples). The opt-in
                      tasks (`OPT_IN_TASKS`: speech enhancement, "se") default to 0 and
                      may be absent (configs saved before they existed): at 0 they are
                      neither registered nor planned, and the banks load nothing for
                      them. A positive rate needs token shards tokenized with their
                      inputs (SE: `launch.tokenize --noisy_inputs`).
    ref_max_frames    reference clip crop, frames (150 = 3 s at 50 Hz)
    ref_min_frames    a reference is never trimmed below this to fit L (then: drop)
    ref_layers        RVQ layers in the reference: 1 = RVQ-1 (GPA/USLM default), n = the
                      first n layers, frame-major interleaved (needs vocab.audio_streams >= n)
    trim_ref_to_fit   shorten the reference before dropping an over-long example
    verify_checksums  check shard sha256s against the manifest when loading a split
    tts_text          what a TTS prompt spells: "transcript" (the text ids ASR emits) or
                      "phonemes" (espeak-ng IPA of the transcript, gpa_jax.text.phonemize,
                      in the byte text vocabulary; ASR still emits the transcript)
    vocab.text        "spm" (SentencePiece model) or "byte"
    vocab.spm_model   SentencePiece model path; "" = the one `launch.train_spm` writes by
                      default: <workdir>/spm/<corpus with / as _>_<spm_vocab_size>.model
    vocab.spm_vocab_size  the size asked of `launch.train_spm` (names the default path)
    vocab.audio_streams  audio id ranges in the vocabulary (1 = RVQ-1 only, as the AR LM
                      of GPA/USLM; 8 to give every RVQ layer ids)

Deliberately NOT here (one source of truth each):
- the packed sequence length L is `config.train.seq_len` (the trainer's batch shape;
  the tasks' length rule receives it as `register_tasks(..., sequence_length=L)`);
- the task names and their ids are `TASK_NAMES` below (id i + 1 in `decoder_task_ids`
  is TASK_NAMES[i], its tag token is <|TASK_NAMES[i]|>: gpa_jax.tasks.vocab);
- the data seed is the config's top-level `seed`.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from gpa_jax.text import TTS_TEXT_FRONTENDS

# Append only: the position fixes the task's id in batches and its tag token's id.
TASK_NAMES: tuple[str, ...] = ("tts", "asr", "vc", "se")
# Tasks an LM trains only when its config gives them a positive rate (module docstring).
OPT_IN_TASKS: tuple[str, ...] = ("se",)


def tasks_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Defaults for `config.tasks`; keyword overrides per field (rates and vocab as dicts)."""
    config = ml_collections.ConfigDict(
        dict(
            corpus="synthetic_speech/default",
            token_dir="",
            train_split="train",
            eval_split="validation",
            namespace="gpa",
            pack=True,
            rates=dict(tts=0.4, asr=0.3, vc=0.3, se=0.0),
            ref_max_frames=150,
            ref_min_frames=50,
            ref_layers=1,
            trim_ref_to_fit=True,
            verify_checksums=True,
            tts_text="transcript",
            vocab=dict(text="spm", spm_model="", spm_vocab_size=1024, audio_streams=1),
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


def task_rate(config: ml_collections.ConfigDict, task: str) -> float:
    """config.tasks' mixture rate of `task`; 0 for an opt-in task the config does not name."""
    return float(config.rates.get(task, 0.0))


def registered_tasks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The tasks config.tasks trains: every task but the opt-in ones at rate 0."""
    return tuple(t for t in TASK_NAMES if t not in OPT_IN_TASKS or task_rate(config, t) > 0)


def validate_tasks_config(config: ml_collections.ConfigDict) -> None:
    """Checks the relations between fields that a typo or sweep could break."""
    required = [t for t in TASK_NAMES if t not in OPT_IN_TASKS]
    named = set(config.rates.keys())
    if not set(required) <= named <= set(TASK_NAMES):
        raise ValueError(
            f"tasks.rates must name {tuple(required)} (optionally {OPT_IN_TASKS}), got "
            f"{sorted(config.rates)}"
        )
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
    if config.vocab.text not in ("spm", "byte"):
        raise ValueError(f"tasks.vocab.text={config.vocab.text!r}; expected 'spm' or 'byte'")
    if config.tts_text not in TTS_TEXT_FRONTENDS:
        raise ValueError(
            f"tasks.tts_text={config.tts_text!r}; expected one of {TTS_TEXT_FRONTENDS}"
        )
    if config.tts_text == "phonemes" and config.vocab.text != "byte":
        # IPA letters are not SentencePiece pieces of the corpus transcripts.
        raise ValueError("tasks.tts_text='phonemes' needs tasks.vocab.text='byte'")


def default_token_dir(workdir: str, corpus: str) -> str:
    """Where `launch.tokenize` writes a corpus' shards (gpa_jax.codec.tokenization.tokens_dir)."""
    return os.path.join(workdir, "tokens", *corpus.split("/"))


def default_spm_model(workdir: str, corpus: str, vocab_size: int) -> str:
    """Where `launch.train_spm` writes its model unless told otherwise."""
    return os.path.join(workdir, "spm", f"{corpus.replace('/', '_')}_{vocab_size}.model")


def resolve_paths(config: ml_collections.ConfigDict, workdir: str | None) -> tuple[str, str]:
    """(token_dir, spm_model) of `config.tasks`, defaults filled in from `workdir`.

    spm_model is "" for a byte-level text vocabulary. Raises naming the field when a path
    is needed but neither set nor derivable (no workdir).
    """
    token_dir, spm_model = config.token_dir, config.vocab.spm_model
    if not token_dir:
        if workdir is None:
            raise ValueError("tasks.token_dir is empty and no work directory was given")
        token_dir = default_token_dir(workdir, config.corpus)
    if config.vocab.text == "spm" and not spm_model:
        if workdir is None:
            raise ValueError("tasks.vocab.spm_model is empty and no work directory was given")
        spm_model = default_spm_model(workdir, config.corpus, config.vocab.spm_vocab_size)
    if config.vocab.text != "spm":
        spm_model = ""
    return token_dir, spm_model
