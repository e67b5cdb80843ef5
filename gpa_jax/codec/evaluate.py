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
  the original audio;
- judge (when a judge is given; `launch.eval_codec` passes Whisper tiny.en): the judge's
  WER on the recordings and on each variant, as corpus WER and mean per-utterance WER,
  overall and per voice (`judge_report`), with the text normaliser named. The judge and
  its scoring come from `gpa_jax.evaluation` and are passed in: the codec layer imports
  nothing above it.
Utterances are the first `eval.per_voice` of every voice of the split (capped by
`eval.max_utterances`), so each voice weighs alike. The result is one JSON-able dict
(`evaluate_codec`); `evaluate_workdir` restores the trained codec of a work directory and
writes <workdir>/codec/eval_<split>.json.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gpa_jax import paths
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


# judge_report(references, hypotheses, groups) -> JSON-able WER report (corpus and mean
# per-utterance WER, per group): `gpa_jax.evaluation.asr_metrics.judge_wer_report`.
JudgeReport = Callable[[Sequence[str], Sequence[str], Sequence[str] | None], dict[str, Any]]


def resynthesize(
    codec: Codec,
    audio: Sequence[np.ndarray],
    *,
    batch_size: int = 8,
    bucket_frames: int = api.DEFAULT_BUCKET_FRAMES,
    progress: bool = True,
) -> dict[str, list[np.ndarray]]:
    """{variant: decoded waveforms cut to each input's length} for every `VARIANTS` entry."""
    from tqdm import tqdm

    sr = codec.sample_rate
    recon: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
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
    return recon


def judge_variants(
    judge: Any,
    judge_report: JudgeReport,
    audio: Sequence[np.ndarray],
    recon: dict[str, list[np.ndarray]],
    texts: Sequence[str],
    speakers: Sequence[str] | None,
    sample_rate: int,
) -> dict[str, Any]:
    """The judge's WER report on the recordings and on each resynthesis variant."""
    out: dict[str, Any] = {"name": judge.name}
    for name, wavs in {"recordings": list(audio), **recon}.items():
        hyps = judge.transcribe(wavs, sample_rate)
        out[name] = judge_report(texts, hyps, speakers)
        out[name]["hypotheses"] = list(hyps)
    return out


def evaluate_codec(
    codec: Codec,
    audio: Sequence[np.ndarray],
    *,
    texts: Sequence[str] | None = None,
    speakers: Sequence[str] | None = None,
    teacher: Any = None,
    judge: Any = None,
    judge_report: JudgeReport | None = None,
    batch_size: int = 8,
    bucket_frames: int = api.DEFAULT_BUCKET_FRAMES,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of `codec` on waveforms at its rate (see module doc) -> JSON-able dict.

    teacher (a `teacher.ContentTeacher`) with `texts` adds the teacher's CERs; judge (with
    `transcribe(wavs, sample_rate)` and `name`) plus judge_report adds the judge's WERs.
    """
    if not len(audio):
        raise ValueError("evaluate_codec: no utterances")
    if judge is not None and (texts is None or judge_report is None):
        raise ValueError("evaluate_codec: a judge needs texts= and judge_report=")
    sr = codec.sample_rate
    t0 = time.time()
    recon = resynthesize(
        codec, audio, batch_size=batch_size, bucket_frames=bucket_frames, progress=progress
    )
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
    if judge is not None:
        result["judge"] = judge_variants(judge, judge_report, audio, recon, texts, speakers, sr)
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
    if "judge" in result:
        lines.append("")
        lines.append(judge_table(result["judge"]))
    return "\n".join(lines)


def judge_table(judged: dict[str, Any]) -> str:
    """Markdown: the judge's corpus WER (and mean per-utterance WER) per voice and overall,
    on the recordings, the full-RVQ and the RVQ-1-only resynthesis."""
    columns = ["recordings", *VARIANTS]
    first = judged[columns[0]]
    voices = sorted(first.get("per_group", {}))
    head = "| voice | n | " + " | ".join(f"{c} WER (mean utt)" for c in columns) + " |"
    lines = [
        f"judge: {judged['name']}; normaliser: {first.get('normalizer', '?')}; corpus WER "
        "(mean of per-utterance WER)",
        "",
        head,
        "|" + "---|" * (len(columns) + 2),
    ]

    def cell(report: dict[str, Any]) -> str:
        return f"{report['corpus_wer']:.3f} ({report['mean_utterance_wer']:.3f})"

    for voice in voices:
        n = first["per_group"][voice]["num_utterances"]
        cells = " | ".join(cell(judged[c]["per_group"][voice]) for c in columns)
        lines.append(f"| {voice} | {n} | {cells} |")
    cells = " | ".join(f"**{cell(judged[c])}**" for c in columns)
    lines.append(f"| all | {first['num_utterances']} | {cells} |")
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
    judge: Any = None,
    judge_report: JudgeReport | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Restores <workdir>'s codec (and CTC teacher), evaluates `split` (default
    config.eval.split) of `corpus` (default config.data.corpus), writes
    <workdir>/codec/eval_<split>.json and returns the result."""
    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import train as codec_train

    ec = config.eval
    split = split or ec.split
    corpus = corpus or config.data.corpus
    data_dir = data_dir or paths.tfds_dir(workdir)
    limit = int(ec.max_utterances if max_utterances is None else max_utterances) or None
    checkpoint_dir = paths.absolute(checkpoint_dir or codec_train.checkpoint_dir(workdir))
    codec, step = codec_train.restore_codec(config, checkpoint_dir)
    clips = codec_data.load_clips(
        corpus,
        split,
        data_dir=data_dir,
        sample_rate=codec.sample_rate,
        max_seconds=float(config.data.max_seconds),
        limit=limit,
        per_speaker=int(ec.per_voice) or None,
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
        speakers=clips.speakers,
        teacher=teacher,
        judge=judge,
        judge_report=judge_report,
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
    paths.makedirs(os.path.dirname(path))
    paths.atomic_write_json(path, result, indent=1, sort_keys=True)  # whole or absent
    logging.info("eval: wrote %s", path)
    return result
