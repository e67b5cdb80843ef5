"""Codec metrics on a corpus split: mel distance, STOI, bitrate (full RVQ and RVQ-1 only).

    python -m launch.eval_codec --config=configs/codec_tiny.py --workdir=W --split=test

For each utterance the codec encodes the waveform once; the codes are decoded with all
n_q layers ("full_rvq") and with the first layer only ("rvq1_only"). Per variant:
- mel_distance: mean |log-mel(x) - log-mel(x_hat)| over frames and bins (80 Slaney mels,
  25 ms / 10 ms frames, natural log floored at 1e-5: `gpa_jax.audio.features.log_mel`),
  averaged over utterances; lower is better;
- stoi: short-time objective intelligibility (pystoi, 16 kHz, classic STOI), mean over
  utterances; 0..1, higher is better;
- bitrate_bps: layers x log2(codebook_size) x frame rate (what the tokens cost);
- cer (when the CTC content teacher is available): character error rate of the teacher's
  greedy transcripts of the reconstructions against the transcripts, next to its CER on
  the original audio: an ASR-judge view of intelligibility.
The result is one JSON-able dict (`evaluate_codec`); `evaluate_workdir` restores the
trained codec of a work directory and writes <workdir>/codec/eval_<split>.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gpa_jax.audio.features import MelConfig, log_mel
from gpa_jax.codec import api
from gpa_jax.codec.model import Codec

VARIANTS = {"full_rvq": None, "rvq1_only": 1}  # name -> number of RVQ layers (None = all)


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = 16000) -> float:
    """Mean absolute log-mel difference (see module doc); estimate is cut to the reference."""
    cfg = MelConfig(sample_rate=sample_rate, fmax=sample_rate / 2)
    n = len(reference)
    est = np.zeros(n, np.float32)
    est[: min(n, len(estimate))] = estimate[:n]
    return float(np.mean(np.abs(log_mel(reference, cfg) - log_mel(est, cfg))))


def stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = 16000) -> float:
    """Classic STOI (pystoi) of the estimate, cut/padded to the reference length."""
    from pystoi import stoi as pystoi_stoi

    n = len(reference)
    est = np.zeros(n, np.float64)
    est[: min(n, len(estimate))] = estimate[:n]
    return float(pystoi_stoi(np.asarray(reference, np.float64), est, sample_rate, extended=False))


def bitrate(codec: Codec, num_layers: int) -> float:
    """Bits per second of `num_layers` RVQ layers at the codec's frame rate."""
    return num_layers * math.log2(codec.codebook_size) * codec.sample_rate / codec.hop_length


def evaluate_codec(
    codec: Codec,
    audio: Sequence[np.ndarray],
    *,
    texts: Sequence[str] | None = None,
    teacher: Any = None,
    batch_size: int = 8,
    bucket_frames: int = api.DEFAULT_BUCKET_FRAMES,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of `codec` on waveforms at its rate (see module doc) -> JSON-able dict.

    teacher (a `teacher.ContentTeacher`) with `texts` adds the ASR-judge CERs.
    """
    from tqdm import tqdm

    if not len(audio):
        raise ValueError("evaluate_codec: no utterances")
    sr = codec.sample_rate
    recon: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    t0 = time.time()
    bar = tqdm(total=len(audio), desc="eval codec", unit="utt", disable=not progress)
    for start in range(0, len(audio), batch_size):
        chunk = [np.asarray(a, np.float32) for a in audio[start : start + batch_size]]
        codes = api.encode_batch(codec, chunk, sr, bucket_frames=bucket_frames)
        for name, layers in VARIANTS.items():
            picked = [c if layers is None else c[:layers] for c in codes]
            wavs = api.decode_batch(codec, picked, bucket_frames=bucket_frames)
            recon[name].extend(w[: len(a)] for w, a in zip(wavs, chunk, strict=True))
        bar.update(len(chunk))
    bar.close()
    codec_seconds = time.time() - t0
    seconds = float(sum(len(a) for a in audio) / sr)
    result: dict[str, Any] = {
        "num_utterances": len(audio),
        "audio_seconds": seconds,
        "codec_seconds": codec_seconds,
        "variants": {},
    }
    for name, layers in VARIANTS.items():
        n_layers = codec.n_q if layers is None else layers
        result["variants"][name] = {
            "n_q": n_layers,
            "bitrate_bps": bitrate(codec, n_layers),
            "mel_distance": float(
                np.mean([mel_distance(a, r, sr) for a, r in zip(audio, recon[name], strict=True)])
            ),
            "stoi": float(
                np.mean([stoi(a, r, sr) for a, r in zip(audio, recon[name], strict=True)])
            ),
        }
    if teacher is not None and texts is not None:
        from gpa_jax.codec import ctc
        from gpa_jax.codec.teacher import transcribe_waveforms

        originals = transcribe_waveforms(teacher, list(audio), sample_rate=sr)
        result["original"] = {"cer": ctc.char_error_rate(texts, originals)}
        for name in VARIANTS:
            hyps = transcribe_waveforms(teacher, recon[name], sample_rate=sr)
            result["variants"][name]["cer"] = ctc.char_error_rate(texts, hyps)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The variants as a fixed-width table (the launcher prints it)."""
    has_cer = any("cer" in v for v in result["variants"].values())
    head = f"{'variant':<11} {'n_q':>3} {'kbps':>6} {'mel dist':>9} {'STOI':>6}"
    head += f" {'CER':>6}" if has_cer else ""
    lines = [head]
    for name, v in result["variants"].items():
        row = (
            f"{name:<11} {v['n_q']:>3} {v['bitrate_bps'] / 1000:>6.2f} "
            f"{v['mel_distance']:>9.3f} {v['stoi']:>6.3f}"
        )
        if has_cer:
            row += f" {v.get('cer', float('nan')):>6.3f}"
        lines.append(row)
    if "original" in result:
        lines.append(
            f"{'original':<11} {'':>3} {'':>6} {'':>9} {'':>6} {result['original']['cer']:>6.3f}"
        )
    return "\n".join(lines)


def eval_path(workdir: str, split: str) -> str:
    return os.path.join(workdir, "codec", f"eval_{split}.json")


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    corpus: str | None = None,
    max_utterances: int | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Restores <workdir>'s codec (and CTC teacher), evaluates `split` (default
    config.eval.split) of `corpus` (default config.data.corpus), writes
    <workdir>/codec/eval_<split>.json and returns the result."""
    from gpa_jax import paths
    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import train as codec_train

    ec = config.eval
    split = split or ec.split
    corpus = corpus or config.data.corpus
    data_dir = data_dir or paths.tfds_dir(workdir)
    limit = int(ec.max_utterances if max_utterances is None else max_utterances) or None
    checkpoint_dir = os.path.abspath(checkpoint_dir or codec_train.checkpoint_dir(workdir))
    codec, step = codec_train.restore_codec(config, checkpoint_dir)
    clips = codec_data.load_clips(
        corpus,
        split,
        data_dir=data_dir,
        sample_rate=codec.sample_rate,
        max_seconds=float(config.data.max_seconds),
        limit=limit,
    )
    teacher = None
    if ec.teacher_cer and config.teacher.kind == "ctc":
        from gpa_jax.codec import teacher as teacher_lib

        directory = teacher_lib.teacher_dir(config, workdir)
        if os.path.isfile(os.path.join(directory, "meta.json")):
            teacher = teacher_lib.load_teacher(config, directory)
        else:
            logging.warning("eval: no CTC teacher in %s, so no CER", directory)
    result = evaluate_codec(
        codec,
        clips.audio,
        texts=clips.texts,
        teacher=teacher,
        batch_size=int(ec.batch_size),
        progress=progress,
    )
    result.update(
        corpus=corpus,
        split=split,
        codec_checkpoint=checkpoint_dir,
        codec_step=step,
        skipped=clips.skipped,
    )
    path = eval_path(workdir, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    logging.info("eval: wrote %s", path)
    return result
