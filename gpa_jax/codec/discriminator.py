"""EnCodec's multi-scale STFT discriminator (MS-STFTD) in NNX.

Facts from the EnCodec paper (Défossez et al. 2022, Sec. 3.4) and `encodec/msstftd.py`:
each sub-discriminator sees the complex STFT of one scale as two channels (real, imag),
laid out [b, frames, freq, 2]; a normalised STFT (divided by sqrt(sum window^2), torch's
`normalized=True`) without centring; a Conv2d (3, 9) to `filters` channels, three Conv2d
(3, 9) with stride (1, 2) over (time, freq) and time dilations 1, 2, 4, a Conv2d (3, 3),
each followed by LeakyReLU(0.2) and kept as a feature map, then a Conv2d (3, 3) to one
logit channel. Paddings keep the time length ((k - 1) * d // 2). Weight norm everywhere
but the first conv (as the reference). The paper uses 5 scales with windows
2048, 1024, 512, 256, 128 and hop = window / 4, 32 filters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.audio.filters import hann_window
from gpa_jax.audio.stft import stft
from gpa_jax.codec.seanet import WeightNorm, uniform_init

_DIMS_2D = ("NHWC", "HWIO", "NHWC")


class Conv2d(nnx.Module):
    """2-D conv on [b, H=time, W=freq, C] with explicit symmetric padding (torch init)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        *,
        stride: tuple[int, int] = (1, 1),
        dilation: tuple[int, int] = (1, 1),
        weight_norm: bool = True,
        rngs: nnx.Rngs,
    ):
        kh, kw = kernel_size
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.padding = (((kh - 1) * dilation[0]) // 2, ((kw - 1) * dilation[1]) // 2)
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        v = uniform_init(rngs.params(), (kh, kw, in_channels, out_channels), bound)
        self.weight = WeightNorm(v, norm_axis=-1) if weight_norm else nnx.Param(v)
        self.bias = nnx.Param(uniform_init(rngs.params(), (out_channels,), bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight() if isinstance(self.weight, WeightNorm) else self.weight[...]
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            w,
            self.stride,
            [(ph, ph), (pw, pw)],
            rhs_dilation=self.dilation,
            dimension_numbers=_DIMS_2D,
        )
        return y + self.bias[...]


class STFTDiscriminator(nnx.Module):
    """One scale: waveform [b, samples] -> (logits [b, frames, freq', 1], feature maps)."""

    def __init__(
        self,
        *,
        n_fft: int,
        hop_length: int,
        win_length: int,
        filters: int = 32,
        kernel_size: tuple[int, int] = (3, 9),
        stride: tuple[int, int] = (1, 2),
        dilations: Sequence[int] = (1, 2, 4),
        rngs: nnx.Rngs,
    ):
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.norm = float(np.sqrt(np.sum(np.square(hann_window(win_length, n_fft)))))
        k = tuple(kernel_size)
        convs = [Conv2d(2, filters, k, weight_norm=False, rngs=rngs)]
        for d in dilations:
            convs.append(Conv2d(filters, filters, k, stride=stride, dilation=(d, 1), rngs=rngs))
        convs.append(Conv2d(filters, filters, (k[0], k[0]), rngs=rngs))
        self.convs = nnx.List(convs)
        self.conv_post = Conv2d(filters, 1, (k[0], k[0]), rngs=rngs)

    def __call__(self, wav: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        spec = stft(wav, self.n_fft, self.hop_length, self.win_length, center=False) / self.norm
        z = jnp.stack([spec.real, spec.imag], axis=-1)  # [b, frames, freq, 2]
        fmaps = []
        for conv in self.convs:
            z = jax.nn.leaky_relu(conv(z), 0.2)
            fmaps.append(z)
        return self.conv_post(z), fmaps


class MultiScaleSTFTDiscriminator(nnx.Module):
    """Several `STFTDiscriminator`s, one per (n_fft, hop, window) scale."""

    def __init__(
        self,
        *,
        filters: int,
        n_ffts: Sequence[int],
        hop_lengths: Sequence[int],
        win_lengths: Sequence[int],
        rngs: nnx.Rngs,
    ):
        if not len(n_ffts) == len(hop_lengths) == len(win_lengths):
            raise ValueError("n_ffts, hop_lengths and win_lengths must have equal lengths")
        self.discriminators = nnx.List(
            [
                STFTDiscriminator(n_fft=n, hop_length=h, win_length=w, filters=filters, rngs=rngs)
                for n, h, w in zip(n_ffts, hop_lengths, win_lengths, strict=True)
            ]
        )

    @classmethod
    def from_config(cls, config, rngs: nnx.Rngs | None = None) -> MultiScaleSTFTDiscriminator:
        """From a codec config's `discriminator` section (seeded by config.seed + 1)."""
        d = config.discriminator
        return cls(
            filters=d.filters,
            n_ffts=d.n_ffts,
            hop_lengths=d.hop_lengths,
            win_lengths=d.win_lengths,
            rngs=rngs or nnx.Rngs(config.seed + 1),
        )

    def __call__(self, wav: jax.Array) -> tuple[list[jax.Array], list[list[jax.Array]]]:
        """wav [b, samples] -> (logits per scale, feature maps per scale)."""
        logits, fmaps = [], []
        for disc in self.discriminators:
            logit, fmap = disc(wav)
            logits.append(logit)
            fmaps.append(fmap)
        return logits, fmaps
