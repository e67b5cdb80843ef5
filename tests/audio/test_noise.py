"""Noisy inputs for SE: deterministic per (seed, id), SNR in range and as drawn, babble of others."""

import numpy as np
import pytest

from gpa_jax.audio import noise

RATE = 16000


def _tone(seconds: float, freq: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def pool():
    speakers = ["alice", "alice", "bob", "carol", "dave", "bob"]
    ids = [f"u{i}" for i in range(len(speakers))]
    wavs = [_tone(0.5 + 0.3 * i, 110.0 * (i + 1), i) for i in range(len(speakers))]
    return noise.BabblePool.from_clips(ids, speakers, wavs)


def test_the_same_seed_and_id_give_the_same_mixture_in_any_order(pool):
    settings = noise.NoiseSettings(seed=7)
    clips = {f"c{i}": _tone(1.0, 200.0 + 30 * i, 100 + i) for i in range(12)}
    forward = {k: noise.make_noisy(w, k, "alice", pool, settings) for k, w in clips.items()}
    backward = {k: noise.make_noisy(clips[k], k, "alice", pool, settings) for k in reversed(clips)}
    for k in clips:
        assert np.array_equal(forward[k].wav, backward[k].wav)
        assert forward[k].snr_db == backward[k].snr_db and forward[k].kind == backward[k].kind
    other = noise.make_noisy(clips["c0"], "c0", "alice", pool, noise.NoiseSettings(seed=8))
    assert not np.array_equal(other.wav, forward["c0"].wav)


def test_snrs_lie_in_the_range_and_are_the_ones_mixed_at(pool):
    settings = noise.NoiseSettings(seed=0, snr_db=(0.0, 15.0))
    snrs, kinds = [], set()
    for i in range(60):
        clean = _tone(1.0, 150.0 + 7 * i, i)
        noisy = noise.make_noisy(clean, f"x{i}", "alice", pool, settings)
        assert 0.0 <= noisy.snr_db <= 15.0
        assert noise.measured_snr_db(clean, noisy) == pytest.approx(noisy.snr_db, abs=0.01)
        assert noisy.wav.shape == clean.shape and np.max(np.abs(noisy.wav)) <= noise.PEAK + 1e-6
        snrs.append(noisy.snr_db)
        kinds.add(noisy.kind)
    assert kinds == set(noise.KINDS)
    assert max(snrs) - min(snrs) > 10.0  # drawn across the range, not a constant


def test_loud_mixtures_are_scaled_as_a_whole_keeping_the_snr(pool):
    clean = 0.95 * np.sign(_tone(1.0, 300.0, 3))  # near full scale: the noise would clip
    noisy = noise.make_noisy(clean, "loud", "alice", pool, noise.NoiseSettings(seed=1))
    assert noisy.gain < 1.0
    assert noise.measured_snr_db(clean, noisy) == pytest.approx(noisy.snr_db, abs=0.01)


def test_babble_is_made_of_other_speakers_only(pool):
    settings = noise.NoiseSettings(seed=3, kinds=("babble",), babble_talkers=3)
    speaker_of = dict(zip(pool.ids, pool.speakers, strict=True))
    for i in range(20):
        noisy = noise.make_noisy(_tone(1.0, 180.0, i), "u2", "bob", pool, settings)
        assert noisy.kind == "babble" and len(noisy.babble_ids) == 3
        assert len(set(noisy.babble_ids)) == 3
        assert all(speaker_of[b] != "bob" for b in noisy.babble_ids)
        assert "u2" not in noisy.babble_ids


def test_babble_without_another_speaker_falls_back_to_a_colour():
    alone = noise.BabblePool.from_clips(
        ["a", "b"], ["solo", "solo"], [_tone(1, 100, 0), _tone(1, 120, 1)]
    )
    noisy = noise.make_noisy(
        _tone(1.0, 200.0, 2), "c", "solo", alone, noise.NoiseSettings(kinds=("babble",))
    )
    assert noisy.kind in noise.COLOURS and noisy.babble_ids == ()


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
def test_coloured_noise_has_its_spectral_slope(colour):
    x = noise.coloured_noise(1 << 16, noise.COLOURS[colour], np.random.default_rng(0))
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.arange(len(power))
    low, high = power[(f > 100) & (f < 200)].mean(), power[(f > 1000) & (f < 2000)].mean()
    # A decade up in frequency, the power falls by 10**exponent.
    assert np.log10(low / high) == pytest.approx(noise.COLOURS[colour], abs=0.15)
    assert np.mean(x**2) == pytest.approx(1.0)


def test_bad_settings_and_silent_audio_are_refused(pool):
    with pytest.raises(ValueError, match="low <= high"):
        noise.NoiseSettings(snr_db=(10, 5))
    with pytest.raises(ValueError, match="noise kinds"):
        noise.NoiseSettings(kinds=("violet",))
    with pytest.raises(ValueError, match="non-silent"):
        noise.make_noisy(np.zeros(100), "z", "alice", pool, noise.NoiseSettings())
    settings = noise.NoiseSettings(seed=4, snr_db=(3, 9))
    assert noise.NoiseSettings.from_dict(settings.as_dict()) == settings
