"""Semantic teachers for RVQ-1 distillation, and the offline one that is trained here.

`teacher.kind` (config section `teacher`) picks the D-axis target of the codec's RVQ-1:
- 'ctc' (the CPU default, `configs/codec_tiny.py`): `ContentTeacher`, a small conv CTC
  character recogniser on log-mel, trained on the corpus transcripts across all training
  voices before the codec (`train_teacher`, a few minutes on 2 cores). Its last hidden
  layer is what a character classifier reads out, so it tracks the words; training on
  every voice with one shared output, on per-utterance-normalised log-mel, pushes it to
  ignore the voice. That is the property SpeechTokenizer takes from HuBERT, here without
  a download. Its features run inside the codec's train step on the same crops.
- 'hubert_features': features of a HuggingFace audio encoder, precomputed offline by
  `launch/precompute_hubert.py` (extra `[hubert]`) into a `FeatureStore` at
  `teacher.path`; the crop pipeline slices them frame-aligned with the audio.
- 'log_mel': log-mel at the codec frame rate, a stand-in that only exercises the path.
- 'none': no distillation.

Why a CTC recogniser rather than phone labels: `flite -psdur` segments exist only for the
4 flite voices and espeak-ng gives phonemes without times, while every utterance has its
transcript, and CTC needs no alignment. A character error rate on held-out sentences
(`meta.json`: `validation_cer`) shows the teacher learnt content.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from gpa_jax import paths
from gpa_jax.audio.features import MelConfig, log_mel_jnp
from gpa_jax.codec import ctc
from gpa_jax.codec.rvq import ResidualVectorQuantizer

# Log-mel front end: Whisper-like 25 ms / 10 ms frames (100 Hz), so the recogniser's one
# stride-2 conv lands on the codec's 50 Hz frames.
_HOP = 160
_WIN = 400


def _mel_config(config: ml_collections.ConfigDict) -> MelConfig:
    sr = int(config.codec.sample_rate)
    return MelConfig(
        sample_rate=sr,
        n_fft=_WIN,
        win_length=_WIN,
        hop_length=_HOP,
        n_mels=int(config.teacher.ctc_n_mels),
        fmax=sr / 2,
    )


def _hop(config: ml_collections.ConfigDict) -> int:
    return int(np.prod([int(s) for s in config.codec.strides]))


class ContentTeacher(nnx.Module):
    """Waveform [b, n] -> content features [b, ceil(n / hop), teacher.dim] (see module doc)."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        t = config.teacher
        if int(config.codec.sample_rate) // _HOP * _HOP != int(config.codec.sample_rate):
            raise ValueError("the CTC teacher's front end expects a sample rate divisible by 160")
        if _hop(config) != 2 * _HOP:
            raise ValueError(
                f"the CTC teacher yields frames every {2 * _HOP} samples; the codec hop is "
                f"{_hop(config)} (strides {tuple(config.codec.strides)})"
            )
        self.mel = _mel_config(config)
        self.hop = _hop(config)
        self.dim = int(t.dim)
        self.layer = str(t.layer)
        self.net = ctc.CTCRecognizer(
            int(t.ctc_n_mels),
            int(t.dim),
            int(t.ctc_layers),
            int(t.ctc_kernel_size),
            stride=2,
            dilations=tuple(int(d) for d in t.ctc_dilations),
            rngs=rngs,
        )
        self._check_layer(int(t.ctc_layers))
        # Optional VQ bottleneck between the last block and the character head: trained by
        # the CTC loss (straight-through) plus commitment, its codes are content tokens.
        codes = int(t.ctc_vq_codes)
        self.vq = (
            ResidualVectorQuantizer(
                dimension=int(t.dim), n_q=1, codebook_size=codes, kmeans_iters=10, rngs=rngs
            )
            if codes
            else None
        )
        self.vq_commit = float(t.ctc_vq_commit)

    def _check_layer(self, num_layers: int) -> None:
        if self.layer in ("", "last", "avg"):
            return
        if not self.layer.isdigit() or not 0 <= int(self.layer) < num_layers:
            raise ValueError(
                f"teacher.layer {self.layer!r}: expected 'last', 'avg' or a block index "
                f"0..{num_layers - 1} for the CTC teacher"
            )

    def frontend(self, wav: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-utterance normalised log-mel [b, frames, n_mels] and its frame mask."""
        mel = log_mel_jnp(wav.astype(jnp.float32), self.mel)
        frames = mel.shape[1]
        valid = 1 + lengths // _HOP
        mask = (jnp.arange(frames)[None, :] < valid[:, None]).astype(jnp.float32)
        m = mask[..., None]
        count = jnp.maximum(jnp.sum(m, 1, keepdims=True), 1.0)
        mean = jnp.sum(mel * m, 1, keepdims=True) / count
        var = jnp.sum(jnp.square(mel - mean) * m, 1, keepdims=True) / count
        return (mel - mean) * jax.lax.rsqrt(var + 1e-5) * m, mask

    def forward(
        self, wav: jax.Array, lengths: jax.Array, train: bool = False
    ) -> dict[str, jax.Array | list[jax.Array]]:
        """'logits' [b, T', vocab], 'mask' [b, T'], 'hidden' (per block), and with the VQ
        bottleneck 'codes' int32 [b, T'] and 'commit' (train=True updates the codebook)."""
        x, mask = self.frontend(wav, lengths)
        hidden = self.net.features(x, mask)
        out_mask = self.net.output_mask(mask)
        out: dict[str, Any] = {"mask": out_mask, "hidden": hidden}
        last = hidden[-1]
        if self.vq is not None:
            last, codes, aux = self.vq.quantize(last, train=train)
            last = last * out_mask[..., None]
            out.update(codes=codes[:, 0], commit=aux["commit_loss"])
        out["logits"] = self.net.head(last)
        return out

    def logits(self, wav: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """CTC logits [b, T', vocab] and output frame mask (transcription)."""
        out = self.forward(wav, lengths)
        return out["logits"], out["mask"]

    def codes(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """The VQ bottleneck's codes int32 [b, ceil(n / hop)] of waveforms [b, n]."""
        if self.vq is None:
            raise ValueError("this CTC teacher has no VQ bottleneck (teacher.ctc_vq_codes=0)")
        b, n = wav.shape
        if lengths is None:
            lengths = jnp.full((b,), n, jnp.int32)
        return self.forward(wav, lengths)["codes"][:, : -(-n // self.hop)]

    def __call__(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """Distillation target [b, ceil(n / hop), dim] for waveforms [b, n]."""
        b, n = wav.shape
        if lengths is None:
            lengths = jnp.full((b,), n, jnp.int32)
        x, mask = self.frontend(wav, lengths)
        hidden = self.net.features(x, mask)
        if self.layer in ("", "last"):
            feats = hidden[-1]
        elif self.layer == "avg":
            feats = sum(hidden) / len(hidden)
        else:
            feats = hidden[int(self.layer)]
        frames = -(-n // self.hop)
        return jax.lax.stop_gradient(feats[:, :frames])


# content_rows pads a clip to whole buckets of this many frames, so tokenizing a corpus
# compiles one shape per bucket rather than one per clip length. Whole buckets also fix
# the parity of the 10 ms frame count, on which the stride-2 'SAME' convolution's frame
# grid depends: every clip's rows come from the same grid.
_ROWS_BUCKET_FRAMES = 25


@nnx.jit
def _content(model: ContentTeacher, wav: jax.Array, lengths: jax.Array) -> jax.Array:
    return model(wav, lengths)


def content_rows(model: ContentTeacher, wav: np.ndarray, frames: int) -> np.ndarray:
    """float32 [frames, dim]: the teacher's distillation features of one clip, one row per
    codec frame (the clip's first `frames` frames; rows past its end are zeros). These are
    the `ctc_teacher` token features (`gpa_jax.codec.tokenization.TOKEN_FEATURES`)."""
    n = max(len(wav), 1)
    bucket = _ROWS_BUCKET_FRAMES * model.hop
    padded = np.zeros((1, -(-n // bucket) * bucket), np.float32)
    padded[0, : len(wav)] = wav
    feats = np.asarray(_content(model, jnp.asarray(padded), jnp.asarray([n], jnp.int32)))[0]
    rows = np.zeros((frames, feats.shape[-1]), np.float32)
    kept = min(frames, feats.shape[0])
    rows[:kept] = feats[:kept]
    return rows


def _apply_wav(model: ContentTeacher, wav: jax.Array, mask: jax.Array):
    return model.logits(wav, jnp.sum(mask, -1).astype(jnp.int32))


def _train_apply_wav(model: ContentTeacher, wav: jax.Array, mask: jax.Array):
    out = model.forward(wav, jnp.sum(mask, -1).astype(jnp.int32), train=True)
    if model.vq is None:
        return out["logits"], out["mask"]
    return out["logits"], out["mask"], model.vq_commit * out["commit"]


def teacher_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where the CTC teacher lives: teacher.path, else <workdir>/codec/teacher."""
    return config.teacher.path or os.path.join(workdir, "codec", "teacher")


def _meta_matches(meta: dict[str, Any], config: ml_collections.ConfigDict) -> bool:
    return meta.get("teacher_config") == _arch(config)


def _arch(config: ml_collections.ConfigDict) -> dict[str, Any]:
    t = config.teacher
    arch = {
        "dim": int(t.dim),
        "ctc_layers": int(t.ctc_layers),
        "ctc_kernel_size": int(t.ctc_kernel_size),
        "ctc_dilations": [int(d) for d in t.ctc_dilations],
        "ctc_n_mels": int(t.ctc_n_mels),
        "sample_rate": int(config.codec.sample_rate),
    }
    if int(t.ctc_vq_codes):  # only when set, so teachers saved before it still match
        arch["ctc_vq_codes"] = int(t.ctc_vq_codes)
    return arch


def load_teacher(config: ml_collections.ConfigDict, directory: str) -> ContentTeacher:
    """The trained CTC teacher in `directory` (its architecture must match the config)."""

    meta_path = os.path.join(directory, "meta.json")
    if not paths.isfile(meta_path):
        raise FileNotFoundError(f"no CTC teacher in {directory!r} (missing meta.json)")
    meta = paths.read_json(meta_path)
    if not _meta_matches(meta, config):
        raise ValueError(
            f"teacher in {directory!r} was trained with {meta.get('teacher_config')}, but the "
            f"config asks for {_arch(config)}: retrain it (delete the directory) or fix teacher.*"
        )
    model = ContentTeacher(config, rngs=nnx.Rngs(0))
    ctc.load_module(model, directory)
    return model


def train_teacher(
    config: ml_collections.ConfigDict,
    directory: str,
    *,
    data_dir: str | None = None,
    train_set: tuple[list[np.ndarray], list[str]] | None = None,
    validation_set: tuple[list[np.ndarray], list[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains the CTC content teacher and saves it to `directory`; returns its meta.

    Data: (waveforms, transcripts) given directly, else config.data.corpus's train and
    validation splits from `data_dir`. meta: training time, final loss, validation CER.
    """
    from gpa_jax.codec import data as codec_data

    t = config.teacher
    sr = int(config.codec.sample_rate)
    if train_set is None:
        clips = codec_data.load_clips(
            config.data.corpus,
            config.data.split,
            data_dir=data_dir,
            sample_rate=sr,
            max_seconds=float(t.ctc_max_seconds),
        )
        train_set = (clips.audio, clips.texts)
    if validation_set is None and data_dir is not None:
        val = codec_data.load_clips(
            config.data.corpus,
            config.data.validation_split,
            data_dir=data_dir,
            sample_rate=sr,
            max_seconds=float(t.ctc_max_seconds),
            limit=int(t.ctc_eval_utterances),
        )
        validation_set = (val.audio, val.texts)
    examples = [ctc.CTCExample(w, s) for w, s in zip(*train_set, strict=True)]
    model = ContentTeacher(config, rngs=nnx.Rngs(int(config.seed) + 101))
    length_multiple = 2 * sr  # 2 s buckets
    logging.info("teacher: training a CTC recogniser on %d utterances", len(examples))
    result = ctc.train_ctc(
        model,
        _train_apply_wav,
        examples,
        steps=int(t.ctc_steps),
        batch_size=int(t.ctc_batch_size),
        learning_rate=float(t.ctc_learning_rate),
        length_multiple=length_multiple,
        seed=int(config.seed) + 7,
        desc="teacher",
        progress=progress,
        checkpoint_dir=os.path.join(directory, "train_state"),
        checkpoint_every=int(t.ctc_checkpoint_every),
        divergence_factor=float(config.train.divergence_factor),
    )
    meta: dict[str, Any] = {
        "teacher_config": _arch(config),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "train_seconds": result.seconds,
        "train_utterances": len(examples),
    }
    if validation_set is not None and validation_set[0]:
        hyps = ctc.transcribe(
            model,
            _apply_wav,
            validation_set[0],
            batch_size=int(t.ctc_batch_size),
            length_multiple=length_multiple,
        )
        meta["validation_cer"] = ctc.char_error_rate(validation_set[1], hyps)
        meta["validation_utterances"] = len(hyps)
        meta["validation_examples"] = [
            {"ref": r, "hyp": h} for r, h in list(zip(validation_set[1], hyps, strict=True))[:3]
        ]
    ctc.save_module(model, directory, meta)
    logging.info("teacher: saved to %s (%s)", directory, {k: meta[k] for k in meta if "cer" in k})
    return meta


def transcribe_waveforms(
    model: ContentTeacher, wavs: list[np.ndarray], batch_size: int = 16, sample_rate: int = 16000
) -> list[str]:
    """Greedy transcripts of waveforms by the CTC teacher (an ASR judge for codec output)."""
    return ctc.transcribe(
        model, _apply_wav, wavs, batch_size=batch_size, length_multiple=2 * sample_rate
    )


def waveform_logits(
    model: ContentTeacher, wavs: list[np.ndarray], batch_size: int = 16, sample_rate: int = 16000
) -> list[np.ndarray]:
    """The CTC teacher's logits [codec frames of the clip, ctc.VOCAB_SIZE] of each waveform
    (e.g. for `ctc.forced_alignment`)."""
    return ctc.batched_logits(
        model, _apply_wav, wavs, batch_size=batch_size, length_multiple=2 * sample_rate
    )
