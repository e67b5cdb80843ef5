"""`sampling_config()`: batching/bucketing, per-task sampling defaults and length limits.

    max_batch        rows per compiled decode call (bigger request lists run in chunks)
    prompt_bucket    prompt lengths are padded up to a multiple of this (one compile per
                     bucket, not per length)
    steps_bucket     the decode loop's step bound is rounded up to a multiple of this
    max_total_len    prompt + generated tokens per row; 0 = the model's max_len
    ref_max_frames   reference frames kept (the first ones) for TTS/VC; 0 = the LM config's
                     tasks.ref_max_frames (what training cropped to), else 150 (3 s)
    ref_layers       RVQ layers in the reference; 0 = the LM config's tasks.ref_layers, else 1
    length_margin    max new tokens = ceil(margin * expected) + length_slack, where the
    length_slack     expected output length comes from the input (per task, below)
    <task>.temperature / top_k / top_p / repetition_penalty
                     temperature 0 = greedy; top_k 0 and top_p 1 = off; penalty 1 = off
    asr.tokens_per_frame   expected text tokens per source audio frame (50 Hz)
    asr.beam / asr.ctc_weight / asr.candidates
                     greedy ASR requests are decoded by the joint CTC/attention beam
                     search (`gpa_jax.sampling.joint_ctc`) when beam > 1 or ctc_weight > 0:
                     `beam` hypotheses, each expanding its `candidates` best tokens, scored
                     (1 - ctc_weight) * attention + ctc_weight * CTC prefix. The CTC term
                     needs an LM trained with its CTC head (model.ctc_weight > 0); for one
                     without, the sampler warns and searches on attention alone.
                     beam 1, ctc_weight 0 = plain greedy decoding. On a sharded mesh the
                     beam is rounded up to a multiple of its batch shards (its rows are
                     one decode batch).
    tts.frames_per_char    expected RVQ-1 frames per character of normalised text
    vc.frames_per_frame    expected output frames per source frame
    se.frames_per_frame    expected output frames per noisy input frame (the clean
                           utterance is as long as its noisy version). SE samples as VC
                           does: greedy RVQ-1 decoding falls into repeating frames.

The expected lengths below are generous (the slow end of speech, byte-level text), so
the fit check asks for room for expected / length_margin output tokens after the prompt:
a TTS/VC request that lacks it first has its reference shortened, as training does (never
below the LM config's tasks.ref_min_frames); a request that still lacks it is rejected as
over-long. Otherwise its new-token budget is capped to what fits.

Length defaults: speech runs at roughly 12-16 characters per second, i.e. 3-4 RVQ-1 frames
per character at 50 Hz (4 is the upper end); with byte text ids one character is one token,
about 0.3 per frame (SentencePiece ids are fewer). The margin 2 lets slow speakers through
while a degenerate generation (no <eos>) stops at about twice the plausible length.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

TASKS = ("tts", "asr", "vc", "se")


def sampling_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Defaults; keyword overrides per field (task sections as dicts), unknown keys error."""
    config = ml_collections.ConfigDict(
        dict(
            max_batch=32,
            prompt_bucket=64,
            steps_bucket=64,
            max_total_len=0,
            ref_max_frames=0,
            ref_layers=0,
            length_margin=2.0,
            length_slack=16,
            asr=dict(
                temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, tokens_per_frame=0.35,
                beam=1, ctc_weight=0.0, candidates=8,
            ),
            tts=dict(
                temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.0, frames_per_char=4.0
            ),
            vc=dict(
                temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.0, frames_per_frame=1.0
            ),
            se=dict(
                temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.0, frames_per_frame=1.0
            ),
        )
    )
    unknown = sorted(set(overrides) - set(config.keys()))
    if unknown:
        raise ValueError(f"unknown sampling keys {unknown}; valid: {sorted(config.keys())}")
    for key, value in overrides.items():
        if isinstance(config[key], ml_collections.ConfigDict):
            bad = sorted(set(value) - set(config[key].keys()))
            if bad:
                raise ValueError(f"unknown sampling.{key} keys {bad}; valid: {sorted(config[key])}")
            config[key].update(value)
        else:
            config[key] = value
    validate_sampling_config(config)
    return config


def validate_sampling_config(config: ml_collections.ConfigDict) -> None:
    for name in ("max_batch", "prompt_bucket", "steps_bucket"):
        if config[name] < 1:
            raise ValueError(f"sampling.{name}={config[name]} must be >= 1")
    if config.length_margin < 1.0 or config.length_slack < 0:
        raise ValueError("sampling.length_margin must be >= 1 and length_slack >= 0")
    for task in TASKS:
        check_params(config[task], f"sampling.{task}")
    asr = config.asr
    if asr.beam < 1 or not 0.0 <= asr.ctc_weight <= 1.0 or asr.candidates < asr.beam:
        raise ValueError(
            f"sampling.asr needs beam >= 1, 0 <= ctc_weight <= 1 and candidates >= beam; got "
            f"beam={asr.beam}, ctc_weight={asr.ctc_weight}, candidates={asr.candidates}"
        )


def asr_decoding(sampling: ml_collections.ConfigDict, has_ctc_head: bool) -> str:
    """How a sampler with these settings decodes greedy ASR requests, in words (reports);
    the CTC term counts only for an LM with a CTC head (module docstring)."""
    beam, weight = int(sampling.asr.beam), float(sampling.asr.ctc_weight) if has_ctc_head else 0.0
    if beam == 1 and weight == 0:
        return "greedy"
    if weight == 0:
        return f"attention beam search (beam {beam})"
    return f"joint CTC/attention beam search (ctc_weight {weight:g}, beam {beam})"


def lm_sampling(lm_config: Any) -> ml_collections.ConfigDict:
    """The sampling settings an LM config recommends (its `sampling` section, e.g. the joint
    CTC/attention ASR search of configs/gpa_tiny.py) over the defaults; the defaults alone
    for a config without one (checkpoints saved before the section existed)."""
    section = lm_config.get("sampling") if hasattr(lm_config, "get") else None
    if section is None:
        return sampling_config()
    return sampling_config(**section.to_dict())


def check_params(p: Any, where: str) -> None:
    """Raises ValueError naming `where` if sampling parameters are out of range."""
    if p.temperature < 0:
        raise ValueError(f"{where}.temperature={p.temperature} must be >= 0 (0 = greedy)")
    if p.top_k < 0:
        raise ValueError(f"{where}.top_k={p.top_k} must be >= 0 (0 = off)")
    if not 0.0 < p.top_p <= 1.0:
        raise ValueError(f"{where}.top_p={p.top_p} must be in (0, 1] (1 = off)")
    if p.repetition_penalty <= 0:
        raise ValueError(f"{where}.repetition_penalty={p.repetition_penalty} must be > 0")


def max_source_frames(
    task: str, max_total_len: int, sampling: ml_collections.ConfigDict, *, reference_ids: int = 0
) -> int:
    """The longest source (RVQ-1 frames) an asr / vc / se request can have and still pass the fit
    check of `Sampler.prepare`: source + `reference_ids` (the fewest the reference can be
    cut to) + expected / length_margin + 1 output tokens within `max_total_len`. The few
    control ids of the prompt are left out, so this is an upper bound: a caller can reject
    a longer input from its duration alone, before encoding it (`launch.sample`)."""
    per_frame = {
        "asr": sampling.asr.tokens_per_frame,
        "vc": sampling.vc.frames_per_frame,
        "se": sampling.se.frames_per_frame,
    }
    if task not in per_frame:
        raise ValueError(f"task {task!r} has no source audio; expected asr, vc or se")
    room = max_total_len - 1 - reference_ids
    return max(0, math.floor(room / (1.0 + per_frame[task] / sampling.length_margin)))
