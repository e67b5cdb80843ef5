"""Inputs -> requests: the reference and source rules launch.sample and the server share."""

import numpy as np
import pytest

from gpa_jax.audio.io import AudioError
from gpa_jax.serving.inputs import InputError, InputLimits, RequestBuilder
from tests.serving.conftest import RATE, clip, codec_config, wav_bytes


@pytest.fixture
def limits(lm):
    config, _ = lm
    return InputLimits(config, codec_config())


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_reference_is_read_to_ref_max_frames_and_a_short_one_is_refused(limits, tmp_path):
    assert (limits.ref_max_frames, limits.ref_min_frames, limits.hop) == (150, 50, 320)
    long = limits.load_reference(_write(tmp_path, "long.wav", wav_bytes(5.0)), "--ref")
    assert len(long) == 150 * 320  # 3 s of the 5: the rest is never decoded
    short = _write(tmp_path, "short.wav", wav_bytes(0.5))
    with pytest.raises(InputError, match=r"--ref .*short.wav is 0.50 s \(25 frames\).*ref_min_frames=50.*Try") as error:
        limits.load_reference(short, "--ref", hint=". Try")
    assert error.value.field == "--ref"
    with pytest.raises(InputError, match=r"^voice is 0.50 s"):
        limits.load_reference(short, "voice", name="voice")
    assert len(limits.load_reference(short, "--ref", allow_short=True)) == RATE // 2


def test_reference_is_read_to_the_acoustic_stages_longer_voice_prompt(lm, tmp_path):
    config, _ = lm
    limits = InputLimits(config, codec_config(), voice_frames=200)
    long = limits.load_reference(_write(tmp_path, "long.wav", wav_bytes(5.0)), "--ref")
    assert len(long) == 200 * 320  # the sampler keeps the first ref_max_frames for the LM
    shorter = InputLimits(config, codec_config(), voice_frames=100)  # never below the LM's
    assert len(shorter.load_reference(_write(tmp_path, "l2.wav", wav_bytes(5.0)), "--ref")) == 150 * 320


def test_source_over_the_lm_limit_is_refused_in_seconds_from_the_header(limits, tmp_path):
    asr_limit = limits.max_source_seconds("asr")
    vc_limit = limits.max_source_seconds("vc", clip(2.0))
    assert 4.0 < asr_limit < 4.5 and vc_limit < asr_limit  # max_len 256 tokens
    ok = _write(tmp_path, "ok.wav", wav_bytes(3.0))
    assert len(limits.load_source(ok, "--audio", "asr")) == 3 * RATE
    with pytest.raises(InputError, match=r"^file: too long: 3.00 s .* at most 2.\d\d s of vc source"):
        limits.load_source(ok, "file", "vc", reference_wav=clip(2.0), name="file")
    broken = _write(tmp_path, "broken.wav", b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="broken.wav"):
        limits.load_source(broken, "--audio", "asr")


def test_builder_encodes_sources_and_references_with_the_codec(tiny_codec):
    builder = RequestBuilder(tiny_codec)
    src, ref = clip(1.0, 0), clip(2.0, 1)
    asr = builder.build("asr", source_wav=src, id="a")
    assert asr.task == "asr" and asr.source.shape == (1, 50) and asr.source_features is None
    tts = builder.build("tts", text="hi", reference_wav=ref, seed=3)
    assert tts.reference.shape == (tiny_codec.n_q, 100) and tts.seed == 3 and tts.text == "hi"
    vc = builder.build("vc", source_wav=src, reference_wav=ref)
    np.testing.assert_array_equal(vc.source, asr.source)
    np.testing.assert_array_equal(vc.reference, tts.reference)
    # A continuous-input LM gets feature rows of the same audio, frame for frame.
    rows = RequestBuilder(tiny_codec, lambda wav, frames: np.zeros((frames, 3), np.float32))
    vc = rows.build("vc", source_wav=src, reference_wav=ref)
    assert vc.source_features.shape == (50, 3) and vc.reference_features.shape == (100, 3)


def test_builder_keeps_every_layer_of_an_se_source(tiny_codec):
    """SE's noisy source is the LM's input (RVQ-1) and the acoustic voice prompt (all)."""
    builder = RequestBuilder(tiny_codec, lambda wav, frames: np.ones((frames, 3), np.float32))
    se = builder.build("se", source_wav=clip(1.0, 2), id="n", seed=4)
    assert se.task == "se" and se.source.shape == (tiny_codec.n_q, 50) and se.seed == 4
    assert se.voice_prompt is se.source and se.reference is None
    assert se.source_features.shape == (50, 3)
    asr = builder.build("asr", source_wav=clip(1.0, 2))
    np.testing.assert_array_equal(se.source[:1], asr.source)


def test_se_sources_are_limited_like_vc_ones(limits):
    assert limits.max_source_seconds("se") == pytest.approx(limits.max_source_seconds("vc"))
