"""The pocketsphinx judge on real speech: flite (a corpus voice) speaks known sentences."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from gpa_jax.evaluation.asr_metrics import error_rates
from gpa_jax.evaluation.judge import make_judge

DOMAIN = [
    "there are four horses across the river",
    "the child showed the stone after the rain",
    "a little parrot disappeared near the harbor",
    "the waiter traveled to the city outside the station",
]


def _flite(text, path):
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
    wav, sr = sf.read(str(path), dtype="float32")
    return wav, sr


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) not installed")
def test_domain_lm_judge_transcribes_flite_speech(tmp_path):
    judge = make_judge("pocketsphinx", domain_texts=DOMAIN, workdir=str(tmp_path))
    assert judge.name == "pocketsphinx+domain_lm"
    refs = DOMAIN[:2]
    wavs, rates = [], set()
    for i, text in enumerate(refs):
        wav, sr = _flite(text, tmp_path / f"{i}.wav")
        wavs.append(wav)
        rates.add(sr)
    hyps = judge.transcribe(wavs, sample_rate=rates.pop())
    assert error_rates(refs, hyps).wer <= 0.2, hyps
    # Noise is not speech: the judge must not "hear" the sentences in it.
    noise = np.random.default_rng(0).normal(0, 0.05, 16000).astype(np.float32)
    assert error_rates(refs[:1], judge.transcribe([noise], 16000)).wer >= 0.8


def test_judge_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown judge kind"):
        make_judge("nope")
    with pytest.raises(FileNotFoundError, match="model directory"):
        make_judge("faster_whisper", model_dir=str(tmp_path / "missing"))
    judge = make_judge("pocketsphinx")
    with pytest.raises(ValueError, match="mono"):
        judge.transcribe([np.zeros((2, 100), np.float32)], 16000)
