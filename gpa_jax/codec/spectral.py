"""Spectral encoder and Vocos decoder: the codec's cheap, fast-converging alternative to SEANet.

Both run only at the codec frame rate (50 Hz), which is what makes them affordable on a CPU:
the SEANet stacks spend most of their time in convolutions at 16 k, 8 k, 2 k and 400 Hz.

- `MelEncoder` (codec.encoder = 'mel'): log-mel at 100 Hz (Whisper's 25 ms / 10 ms / 80
  bins analysis), two frames stacked per codec frame, a kernel-7 conv, ConvNeXt blocks,
  LayerNorm and a projection to the RVQ dimension D. Its input drops the phase, which the
  decoder has to invent anyway.
- `VocosDecoder` (codec.decoder = 'vocos'): Vocos (Siuzdak 2023; WavTokenizer uses it as a
  codec decoder): kernel-7 conv, ConvNeXt blocks, LayerNorm, a linear head giving each
  frame's log-magnitude and phase, and an inverse STFT with n_fft = 4 x hop and 'same'
  padding (`audio.stft.istft`), so F frames give exactly F x hop samples and frame f lands
  on samples [f hop, (f + 1) hop), the span the encoder read it from.

ConvNeXt block (Vocos' variant, 1-D): depthwise conv k=7, LayerNorm, Linear (width ->
mlp_ratio x width), GELU, Linear back, a per-channel layer scale starting at 1 / layers,
residual. Channels-last throughout: [b, frames, channels].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gpa_jax.audio.features import MelConfig, log_mel_jnp
from gpa_jax.audio.stft import istft

# log(mel power) of speech lies in about [-11.5 (the floor), 4]; this keeps it near unit scale.
_LOG_MEL_SHIFT, _LOG_MEL_SCALE = 4.0, 4.0
# Vocos clips the predicted magnitude at 1e2 (exp(4.6)) so early steps cannot explode.
_MAX_LOG_MAGNITUDE = 4.6


class ConvNeXtBlock(nnx.Module):
    """x + scale * MLP(LayerNorm(depthwise_conv(x))) over [b, frames, width]."""

    def __init__(self, width: int, kernel_size: int, mlp_ratio: int, scale: float, *, rngs):
        self.dwconv = nnx.Conv(
            width, width, (kernel_size,), padding="SAME", feature_group_count=width, rngs=rngs
        )
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.up = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
        self.down = nnx.Linear(mlp_ratio * width, width, rngs=rngs)
        self.scale = nnx.Param(jnp.full((width,), scale, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.down(jax.nn.gelu(self.up(self.norm(self.dwconv(x)))))
        return x + self.scale[...] * y


class ConvNeXtStack(nnx.Module):
    """Conv k=7 in -> width, LayerNorm, `layers` ConvNeXt blocks, LayerNorm (Vocos' backbone)."""

    def __init__(
        self, in_features: int, width: int, layers: int, kernel_size: int, mlp_ratio: int, *, rngs
    ):
        self.embed = nnx.Conv(in_features, width, (7,), padding="SAME", rngs=rngs)
        self.norm_in = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.blocks = nnx.List(
            [
                ConvNeXtBlock(width, kernel_size, mlp_ratio, 1.0 / max(layers, 1), rngs=rngs)
                for _ in range(layers)
            ]
        )
        self.norm_out = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm_in(self.embed(x))
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x)


class MelEncoder(nnx.Module):
    """Waveform [b, samples, 1] -> latent [b, ceil(samples / hop), dimension] (module doc)."""

    def __init__(
        self,
        *,
        sample_rate: int,
        hop_length: int,
        dimension: int,
        width: int,
        layers: int,
        n_mels: int,
        kernel_size: int = 7,
        mlp_ratio: int = 3,
        rngs: nnx.Rngs,
    ):
        if hop_length % 2:
            raise ValueError(
                f"the mel encoder stacks two mel frames per hop; hop {hop_length} is odd"
            )
        self.hop_length = hop_length
        self.mel = MelConfig(
            sample_rate=sample_rate,
            n_fft=hop_length * 5 // 4,
            win_length=hop_length * 5 // 4,
            hop_length=hop_length // 2,
            n_mels=n_mels,
            fmax=sample_rate / 2,
        )
        self.stack = ConvNeXtStack(2 * n_mels, width, layers, kernel_size, mlp_ratio, rngs=rngs)
        self.proj = nnx.Linear(width, dimension, rngs=rngs)

    def __call__(self, wav: jax.Array, frame_lengths: jax.Array | None = None) -> jax.Array:
        del frame_lengths  # no recurrence: padding reaches only the last receptive field
        x = wav[..., 0].astype(jnp.float32)
        frames = -(-x.shape[-1] // self.hop_length)
        x = jnp.pad(x, ((0, 0), (0, frames * self.hop_length - x.shape[-1])))
        mel = log_mel_jnp(x, self.mel)[:, : 2 * frames]  # 1 + 2 * frames centred frames
        mel = (mel + _LOG_MEL_SHIFT) / _LOG_MEL_SCALE
        stacked = mel.reshape(mel.shape[0], frames, 2 * self.mel.n_mels)
        return self.proj(self.stack(stacked))


class VocosDecoder(nnx.Module):
    """Latent [b, frames, dimension] -> waveform [b, frames * hop, 1] (module doc)."""

    def __init__(
        self,
        *,
        hop_length: int,
        dimension: int,
        width: int,
        layers: int,
        kernel_size: int = 7,
        mlp_ratio: int = 3,
        rngs: nnx.Rngs,
    ):
        self.hop_length = hop_length
        self.n_fft = 4 * hop_length
        self.stack = ConvNeXtStack(dimension, width, layers, kernel_size, mlp_ratio, rngs=rngs)
        self.head = nnx.Linear(width, 2 * (self.n_fft // 2 + 1), rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        out = self.head(self.stack(z.astype(jnp.float32)))
        log_mag, phase = jnp.split(out, 2, axis=-1)
        mag = jnp.exp(jnp.minimum(log_mag, _MAX_LOG_MAGNITUDE))
        spec = jax.lax.complex(mag * jnp.cos(phase), mag * jnp.sin(phase))
        return istft(spec, self.n_fft, self.hop_length)[..., None]
