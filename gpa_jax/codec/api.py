"""numpy-in / numpy-out codec API: waveforms <-> RVQ code arrays, single and batched.

Frame rule (one home for it): a clip of n samples at the codec rate (16 kHz) gives
ceil(n / hop) frames (hop 320 -> 50 Hz), and decoding F frames gives F * hop samples.
A clip at another rate is first resampled with `gpa_jax.audio.io.resample`, whose output
has ceil(n * 16000 / sr) samples, so frames = ceil(ceil(n * 16000 / sr) / 320).

Compiles: one per (batch size, length bucket) for encoding (and per n_q asked for); one
per (batch size, bucket) for decoding whatever the number of layers (codes are padded to
n_q layers and the unused ones masked).

Padding: each clip is zero-padded at the end to a multiple of the hop (so no strided conv
sees a partial window and the last frame covers the tail plus silence), then to a length
bucket of `bucket_frames` frames (default 25 = 0.5 s) so jit compiles once per bucket and
batch size rather than once per length. A batch carries each item's length: the encoder's
BiLSTM runs its backward pass from each item's true end, and frames past an item's end are
dropped. What padding can still change is the last frame or so of a shorter item (its
convs see zeros instead of reflected audio), so batched codes match one-at-a-time codes
except, rarely, near an item's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.audio.io import resample
from gpa_jax.codec.model import Codec

DEFAULT_BUCKET_FRAMES = 25


def num_frames(codec: Codec, num_samples: int, sr: int | None = None) -> int:
    """Frames `encode` returns for a clip of `num_samples` at rate `sr` (default: codec's)."""
    if sr is not None and sr != codec.sample_rate:
        num_samples = int(np.ceil(num_samples * codec.sample_rate / sr))
    return codec.num_frames(num_samples)


def _bucket(frames: int, bucket_frames: int) -> int:
    if bucket_frames < 1:
        raise ValueError(f"bucket_frames must be >= 1, got {bucket_frames}")
    return max(1, -(-frames // bucket_frames)) * bucket_frames


@partial(nnx.jit, static_argnames=("n_q",))
def _encode_padded(codec: Codec, wav: jax.Array, lengths: jax.Array, n_q: int | None):
    return codec.encode(wav, n_q=n_q, lengths=lengths)


@nnx.jit
def _decode_padded(codec: Codec, codes: jax.Array, num_layers: jax.Array) -> jax.Array:
    return codec.decode(codes, num_layers)


def _prepare(codec: Codec, wav: np.ndarray, sr: int) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"expected float audio in [-1, 1], got dtype {wav.dtype}")
    if wav.size == 0:
        return wav.astype(np.float32)
    return resample(wav.astype(np.float32), sr, codec.sample_rate)


def encode_batch(
    codec: Codec,
    wavs: Sequence[np.ndarray],
    sr: int,
    *,
    n_q: int | None = None,
    bucket_frames: int = DEFAULT_BUCKET_FRAMES,
) -> list[np.ndarray]:
    """Mono float waveforms at rate `sr` -> list of int32 codes [n_q, frames_i] (see module doc)."""
    clips = [_prepare(codec, w, sr) for w in wavs]
    if not clips:
        return []
    n = codec.n_q if n_q is None else int(n_q)
    frames = [codec.num_frames(len(c)) for c in clips]
    padded_frames = _bucket(max(frames), bucket_frames)
    batch = np.zeros((len(clips), padded_frames * codec.hop_length), np.float32)
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
    # Lengths in whole frames: the hop padding is part of each item, as for a lone clip.
    lengths = np.asarray(frames, np.int32) * codec.hop_length
    codes = np.asarray(_encode_padded(codec, jnp.asarray(batch), jnp.asarray(lengths), n_q=n_q))
    return [
        np.ascontiguousarray(codes[i, :, :f], dtype=np.int32).reshape(n, f)
        for i, f in enumerate(frames)
    ]


def encode(
    codec: Codec,
    wav: np.ndarray,
    sr: int,
    *,
    n_q: int | None = None,
    bucket_frames: int = DEFAULT_BUCKET_FRAMES,
) -> np.ndarray:
    """Mono float waveform at rate `sr` -> int32 codes [n_q, ceil(samples_16k / hop)]."""
    return encode_batch(codec, [wav], sr, n_q=n_q, bucket_frames=bucket_frames)[0]


def decode_batch(
    codec: Codec,
    codes_list: Sequence[np.ndarray],
    *,
    bucket_frames: int = DEFAULT_BUCKET_FRAMES,
) -> list[np.ndarray]:
    """List of codes [n, frames_i] (same n <= n_q) -> float32 waveforms [frames_i * hop]."""
    if not codes_list:
        return []
    arrays = [np.asarray(c) for c in codes_list]
    layers = {a.shape[0] if a.ndim == 2 else -1 for a in arrays}
    if len(layers) != 1 or -1 in layers:
        raise ValueError(f"codes must be [n, frames] with one n for the batch, got {layers}")
    n = layers.pop()
    if not 1 <= n <= codec.n_q:
        raise ValueError(f"codes have {n} layers; the codec has {codec.n_q}")
    for a in arrays:
        if a.size and (a.min() < 0 or a.max() >= codec.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {codec.codebook_size}), got {a.min()}..{a.max()}"
            )
    frames = [a.shape[1] for a in arrays]
    padded_frames = _bucket(max(frames), bucket_frames)
    # Always n_q layers (unused ones masked), so RVQ-1-only and full decodes share a compile.
    batch = np.zeros((len(arrays), codec.n_q, padded_frames), np.int32)
    for i, a in enumerate(arrays):
        batch[i, :n, : a.shape[1]] = a
    wav = np.asarray(_decode_padded(codec, jnp.asarray(batch), jnp.asarray(n, jnp.int32)))
    hop = codec.hop_length
    return [np.ascontiguousarray(wav[i, : f * hop], dtype=np.float32) for i, f in enumerate(frames)]


def decode(
    codec: Codec, codes: np.ndarray, *, bucket_frames: int = DEFAULT_BUCKET_FRAMES
) -> np.ndarray:
    """Codes [n, frames] (the first n RVQ layers) -> float32 waveform [frames * hop]."""
    return decode_batch(codec, [codes], bucket_frames=bucket_frames)[0]
