"""Audio layer: file I/O and validation, log-mel features, jnp STFT and codec losses;
`voices` (the synthetic corpus' espeak-ng / flite voices) is imported on its own.

Note: the re-exported function `stft` shadows the submodule attribute, so
`import gpa_jax.audio.stft as m` binds the function; use
`from gpa_jax.audio.stft import ...` (or `from gpa_jax.audio import stft`) instead.
"""

from gpa_jax.audio.features import (
    TOKEN_FEATURE_DIM,
    MelConfig,
    log_mel,
    log_mel_jnp,
    mel_filterbank,
    num_frames,
    token_aligned_log_mel,
)
from gpa_jax.audio.io import (
    AudioError,
    check_waveform,
    float_to_int16,
    int16_to_float,
    load_audio,
    resample,
    save_wav,
    to_mono,
)
from gpa_jax.audio.stft import (
    DEFAULT_STFT_RESOLUTIONS,
    STFTResolution,
    multi_resolution_stft_loss,
    multi_scale_mel_loss,
    stft,
)

__all__ = [
    "DEFAULT_STFT_RESOLUTIONS",
    "AudioError",
    "MelConfig",
    "STFTResolution",
    "TOKEN_FEATURE_DIM",
    "check_waveform",
    "float_to_int16",
    "int16_to_float",
    "load_audio",
    "log_mel",
    "log_mel_jnp",
    "mel_filterbank",
    "multi_resolution_stft_loss",
    "multi_scale_mel_loss",
    "num_frames",
    "resample",
    "save_wav",
    "stft",
    "to_mono",
    "token_aligned_log_mel",
]
