"""Speaker encoders: Resemblyzer and the trained LDA encoder tell voices apart; errors are clear."""

import shutil
import subprocess

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from gpa_jax.audio import io as audio_io
from gpa_jax.evaluation import speaker

SR = 16000


def voice(f0: float, formants: tuple[float, ...], seed: int, seconds: float = 0.6) -> np.ndarray:
    """A vowel-like clip: a glottal pulse train at ~f0 (jittered per utterance) through
    resonators at the voice's formants, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    f = f0 * (1 + 0.03 * rng.standard_normal()) * (1 + 0.02 * np.sin(np.linspace(0, 6, n)))
    phase = np.cumsum(2 * np.pi * f / SR)
    src = (np.sin(phase) > 0.95).astype(np.float64) + 0.01 * rng.standard_normal(n)
    out = np.zeros(n)
    for k, fc in enumerate(formants):
        fc = fc * (1 + 0.02 * rng.standard_normal())
        b, a = scipy.signal.iirpeak(fc, Q=5.0, fs=SR)
        out += scipy.signal.lfilter(b, a, src) / (k + 1)
    return (0.3 * out / np.max(np.abs(out))).astype(np.float32)


VOICES = {
    "low": (110.0, (700.0, 1100.0, 2500.0)),
    "mid": (170.0, (500.0, 1700.0, 2600.0)),
    "high": (240.0, (850.0, 2100.0, 3200.0)),
}


def clips(seeds):
    wavs, labels = [], []
    for name, (f0, formants) in VOICES.items():
        for s in seeds:
            wavs.append(voice(f0, formants, seed=1000 * list(VOICES).index(name) + s))
            labels.append(name)
    return wavs, labels


def test_lda_encoder_separates_voices_on_held_out_clips():
    train_wavs, train_labels = clips(range(8))
    test_wavs, test_labels = clips(range(100, 104))
    enc = speaker.make_speaker_encoder("lda", wavs=train_wavs, speakers=train_labels)
    emb = enc.embed(test_wavs)
    assert emb.shape == (len(test_wavs), len(VOICES) - 1)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    table = speaker.centroids(enc, train_wavs, train_labels)
    assert speaker.speaker_id_accuracy(enc, table, test_wavs, test_labels) == 1.0
    same = [speaker.cosine(e, table[lab])[0] for e, lab in zip(emb, test_labels, strict=True)]
    other = [
        speaker.cosine(e, table[o])[0]
        for e, lab in zip(emb, test_labels, strict=True)
        for o in VOICES
        if o != lab
    ]
    assert min(same) > max(other)


def test_mfcc_baseline_ranks_same_voice_higher_on_average():
    wavs, labels = clips(range(6))
    enc = speaker.make_speaker_encoder("mfcc", wavs=wavs)
    emb = enc.embed(wavs)
    sims = emb @ emb.T
    labels = np.asarray(labels)
    same = sims[(labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)]
    diff = sims[labels[:, None] != labels[None]]
    assert same.mean() > diff.mean() + 0.2


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) not installed")
def test_resemblyzer_same_voice_beats_other_voices(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the weights come from the installed wheel
    enc = speaker.make_speaker_encoder("resemblyzer")
    assert enc.name == "resemblyzer" and isinstance(enc, speaker.SpeakerEncoder)
    said = [("slt", "the quick brown fox jumps over the lazy dog"),
            ("slt", "there are four horses across the river"),
            ("awb", "the quick brown fox jumps over the lazy dog"),
            ("rms", "there are four horses across the river")]  # fmt: skip
    wavs = []
    for i, (voice, text) in enumerate(said):
        path = str(tmp_path / f"{i}.wav")
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", path], check=True)
        wav, rate = sf.read(path, dtype="float32")
        wavs.append(audio_io.resample(wav, rate, SR))
    emb = enc.embed(wavs)
    assert emb.shape == (4, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    sims = emb @ emb.T
    # Two sentences by one voice are closer than the same sentence (or any) by another.
    assert sims[0, 1] > max(sims[0, 2], sims[0, 3], sims[1, 2], sims[1, 3]) + 0.2, np.round(sims, 3)
    silent = enc.embed([np.zeros(SR, np.float32)])  # no speech: still a finite embedding
    assert np.isfinite(silent).all()


def test_errors_name_the_problem():
    wavs, labels = clips(range(2))
    with pytest.raises(ValueError, match="speakers="):
        speaker.make_speaker_encoder("lda", wavs=wavs)
    with pytest.raises(ValueError, match="2 speakers"):
        speaker.make_speaker_encoder("lda", wavs=wavs[:2], speakers=labels[:2])
    with pytest.raises(ValueError, match="unknown speaker encoder"):
        speaker.make_speaker_encoder("ecapa")
    with pytest.raises(ValueError, match="400 samples"):
        speaker.MFCCStatsEncoder().embed([np.zeros(100, np.float32)])
