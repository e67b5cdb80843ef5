"""Speaker similarity for evaluation: pluggable, offline speaker encoders.

    encoder = make_speaker_encoder("resemblyzer")
    emb = encoder.embed(wavs)                  # float32 [N, dim], L2-normalised
    sim = cosine(emb_a, emb_b)                 # in [-1, 1]

An encoder is anything with `embed(wavs: Sequence[np.ndarray]) -> [N, dim]` (16 kHz mono
float waveforms); `SpeakerEncoder` is that protocol. Three are provided:

- "resemblyzer" (`ResemblyzerEncoder`, the default): Resemblyzer's pretrained speaker
  encoder (the GE2E speaker-verification model: a 3-layer LSTM on 40-band mels, 256-dim
  embeddings averaged over 1.6 s windows), weights shipped in its wheel (the `eval` extra),
  run on CPU. Its own preprocessing applies: loudness normalised, long silences cut by
  WebRTC VAD. It needs no fitting on the corpus, so its similarities compare across
  corpora and runs. The two below are fallbacks that need no torch.
- "mfcc" (`MFCCStatsEncoder`): the untrained baseline. Per utterance, the mean and the
  standard deviation over frames of 20 MFCCs (c1..c19 and their deltas; c0, the loudness,
  is dropped), z-scored with statistics of a fitting set when one is given. Utterance-level
  cepstral statistics carry vocal-tract and voice-source traits, which is why they were
  the classic speaker-ID front end; they also carry channel and content, so the margin
  between same- and different-speaker pairs is small.
- "lda" (`LDASpeakerEncoder`): a small speaker-embedding model *trained on the corpus
  speaker labels*: the same statistics, z-scored, projected by linear discriminant
  analysis (scikit-learn) onto the directions that best separate the training speakers
  (at most n_speakers - 1 dims, within-speaker scatter shrunk). LDA on cepstral
  statistics is the classic i-vector/PLDA-era recipe in miniature; it trains in seconds on
  CPU, but only knows the voices it was fitted on.

All are deterministic. `speaker_id_accuracy` (nearest speaker centroid on held-out
utterances) says how much an encoder's similarities can be trusted on a corpus.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import librosa
import numpy as np

SAMPLE_RATE = 16000
ENCODERS = ("resemblyzer", "mfcc", "lda")


@runtime_checkable
class SpeakerEncoder(Protocol):
    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N, d] and [N, d] (or [d] broadcast) embeddings."""
    return np.sum(_normalise(np.atleast_2d(a)) * _normalise(np.atleast_2d(b)), axis=-1)


def cepstral_stats(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mfcc: int = 20) -> np.ndarray:
    """[4 * (n_mfcc - 1)]: mean and std over frames of MFCC c1.. and their deltas."""
    wav = np.asarray(wav, np.float32)
    if wav.ndim != 1 or wav.size < 400:
        raise ValueError(f"speaker embedding needs a mono clip of >= 400 samples, got {wav.shape}")
    mfcc = librosa.feature.mfcc(
        y=wav, sr=sample_rate, n_mfcc=n_mfcc, n_fft=512, hop_length=160, n_mels=40
    )[1:]
    # Frames that are (near) silent say nothing about the voice.
    rms = librosa.feature.rms(y=wav, frame_length=512, hop_length=160)[0][: mfcc.shape[1]]
    keep = rms > 0.1 * np.max(rms) if np.max(rms) > 0 else np.ones_like(rms, bool)
    if keep.sum() >= 3:
        mfcc = mfcc[:, keep]
    width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))
    delta = librosa.feature.delta(mfcc, width=max(3, width)) if mfcc.shape[1] >= 3 else 0 * mfcc
    feats = np.concatenate([mfcc, delta], axis=0)
    return np.concatenate([feats.mean(axis=1), feats.std(axis=1)]).astype(np.float64)


def _stats(wavs: Sequence[np.ndarray]) -> np.ndarray:
    if not len(wavs):
        raise ValueError("no waveforms to embed")
    return np.stack([cepstral_stats(w) for w in wavs])


class MFCCStatsEncoder:
    """Baseline: z-scored cepstral statistics (module docstring)."""

    name = "mfcc"

    def __init__(self, wavs: Sequence[np.ndarray] | None = None):
        if wavs is not None and len(wavs) >= 2:
            stats = _stats(wavs)
            self.mean, self.std = stats.mean(0), stats.std(0) + 1e-8
        else:
            self.mean, self.std = 0.0, 1.0

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        return _normalise((_stats(wavs) - self.mean) / self.std)


class LDASpeakerEncoder:
    """Cepstral statistics -> LDA trained on speaker labels (module docstring)."""

    name = "lda"

    def __init__(self, wavs: Sequence[np.ndarray], speakers: Sequence[str]):
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        if len(wavs) != len(speakers):
            raise ValueError(f"{len(wavs)} waveforms but {len(speakers)} speaker labels")
        labels = np.asarray(speakers)
        names, counts = np.unique(labels, return_counts=True)
        if len(names) < 2 or counts.min() < 2:
            raise ValueError(
                "the LDA speaker encoder needs >= 2 speakers with >= 2 utterances each; got "
                f"{dict(zip(names.tolist(), counts.tolist(), strict=True))}"
            )
        stats = _stats(wavs)
        self.mean, self.std = stats.mean(0), stats.std(0) + 1e-8
        self.lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
        self.lda.fit((stats - self.mean) / self.std, labels)
        self.speakers = tuple(names.tolist())

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        return _normalise(self.lda.transform((_stats(wavs) - self.mean) / self.std))


class ResemblyzerEncoder:
    """Resemblyzer's pretrained speaker encoder on CPU (module docstring)."""

    name = "resemblyzer"

    def __init__(self, cpu_threads: int = 1):
        # One torch thread by default: the LSTM is small, and more threads only fight the
        # caller's own (a first call on a busy 2-core machine took seconds instead of ms).
        self.cpu_threads = cpu_threads
        try:
            with warnings.catch_warnings():  # it imports a deprecated scipy.ndimage path
                warnings.simplefilter("ignore", DeprecationWarning)
                import resemblyzer
        except ImportError as error:
            raise ImportError(
                "speaker encoder 'resemblyzer' needs the eval extra: see launch/setup_env.sh "
                "(pip install -e '.[eval]' && pip install --no-deps resemblyzer)"
            ) from error
        self._preprocess = resemblyzer.preprocess_wav
        self._encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if not len(wavs):
            raise ValueError("no waveforms to embed")
        threads = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads or threads)
        try:
            out = [self._embed_one(np.asarray(wav, np.float32)) for wav in wavs]
        finally:
            torch.set_num_threads(threads)
        return _normalise(np.stack(out))

    def _embed_one(self, wav: np.ndarray) -> np.ndarray:
        if wav.ndim != 1 or wav.size < 400:
            raise ValueError(f"speaker embedding needs a mono clip of >= 400 samples, got {wav.shape}")
        with np.errstate(all="ignore"):  # a silent clip: its loudness is -inf dBFS
            clean = self._preprocess(wav)
        # VAD found no speech (or a silent clip): embed the clip as it is.
        return self._encoder.embed_utterance(clean if clean.size >= 400 else wav)


def make_speaker_encoder(
    name: str = "resemblyzer",
    *,
    wavs: Sequence[np.ndarray] | None = None,
    speakers: Sequence[str] | None = None,
) -> SpeakerEncoder:
    """'resemblyzer' (pretrained, no fitting), 'mfcc' (fitting set optional, for z-scoring)
    or 'lda' (needs wavs + speaker labels)."""
    if name == "resemblyzer":
        return ResemblyzerEncoder()
    if name == "mfcc":
        return MFCCStatsEncoder(wavs)
    if name == "lda":
        if wavs is None or speakers is None:
            raise ValueError("speaker encoder 'lda' is trained: pass wavs= and speakers=")
        return LDASpeakerEncoder(wavs, speakers)
    raise ValueError(f"unknown speaker encoder {name!r}; known: {ENCODERS}")


def centroids(
    encoder: SpeakerEncoder, wavs: Sequence[np.ndarray], speakers: Sequence[str]
) -> dict[str, np.ndarray]:
    """{speaker: normalised mean embedding} of labelled utterances."""
    emb = encoder.embed(wavs)
    labels = np.asarray(speakers)
    return {s: _normalise(emb[labels == s].mean(0)) for s in sorted(set(speakers))}


def speaker_id_accuracy(
    encoder: SpeakerEncoder,
    centroid_table: dict[str, np.ndarray],
    wavs: Sequence[np.ndarray],
    speakers: Sequence[str],
) -> float:
    """Fraction of utterances whose nearest centroid (cosine) is their own speaker."""
    names = sorted(centroid_table)
    table = np.stack([centroid_table[n] for n in names])
    emb = encoder.embed(wavs)
    guess = np.asarray(names)[np.argmax(emb @ table.T, axis=1)]
    return float(np.mean(guess == np.asarray(speakers)))
