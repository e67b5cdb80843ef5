"""Constant analysis filters (windows, mel filterbanks) built once in numpy.

They live apart from `stft.py` and `features.py` so both can share one cache without
importing each other. Everything here runs at trace time only: the arrays are baked into
jitted programs as constants, so librosa never sees a tracer.
"""

from __future__ import annotations

import functools
import warnings

import librosa
import numpy as np


@functools.lru_cache(maxsize=64)
def hann_window(win_length: int, n_fft: int | None = None) -> np.ndarray:
    """Periodic Hann window (librosa/torch `fftbins=True` convention), centred in n_fft.

    A window shorter than the FFT is zero-padded on both sides, as librosa.stft does, so
    that the jnp STFT and the librosa reference agree frame for frame.
    """
    n_fft = win_length if n_fft is None else n_fft
    if not 0 < win_length <= n_fft:
        raise ValueError(f"need 0 < win_length <= n_fft, got {win_length=} {n_fft=}")
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    window = np.pad(window, (left, n_fft - win_length - left))
    window = window.astype(np.float32)
    window.setflags(write=False)  # cached: callers must not mutate the shared copy
    return window


@functools.lru_cache(maxsize=64)
def mel_basis(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Mel filterbank as float32 [n_fft // 2 + 1, n_mels] (ready for `power @ basis`).

    Small FFTs with many mels (e.g. the 32-point scale of the multi-scale mel loss) leave
    some filters empty; librosa warns about that, but the zero rows are harmless here
    (both sides of a loss see the same zeros), so the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ee]mpty filters.*")
        basis = librosa.filters.mel(
            sr=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            fmin=fmin,
            fmax=fmax,
            htk=htk,
            norm=norm,
            dtype=np.float64,
        )
    basis = np.ascontiguousarray(basis.T.astype(np.float32))
    basis.setflags(write=False)
    return basis
