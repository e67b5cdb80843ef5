"""SEANet encoder / decoder of the SpeechTokenizer codec (EnCodec's SEANet with a BiLSTM).

Layout is channels-last throughout: audio [b, samples, 1], latents [b, frames, D].

Architecture (facts from SpeechTokenizer's `modules/seanet.py` + `config/spt_base_cfg.json`,
which reuse EnCodec's SEANet):
- every conv is weight-normed, non-causal, reflect-padded ('same' style, see `Conv1d`);
- encoder: conv k=7 (1 -> n_filters); per stride r in reversed(strides) = (2, 4, 5, 8):
  `n_residual_layers` residual units at the current width, ELU, conv k=2r stride r doubling
  the width; then an LSTM over frames; ELU; conv k=7 to `dimension`;
- residual unit: ELU, conv k=3 dilation dilation_base**j (width -> width / compress), ELU,
  conv k=1 (back to width), added to a k=1 conv shortcut (EnCodec's true_skip=False);
- LSTM: `lstm_layers` stacked layers with hidden size = width plus a skip connection. The
  encoder's is bidirectional (SpeechTokenizer's change to EnCodec): forward and backward
  outputs are concatenated (2 x width) and the skip adds the input repeated twice along
  channels; the final k=7 conv maps 2 x width -> dimension. The decoder's is unidirectional;
- decoder mirrors the encoder: conv k=7 (dimension -> 2^len(strides) n_filters), LSTM,
  then per stride r in strides = (8, 5, 4, 2): ELU, transposed conv k=2r stride r halving
  the width, residual units; ELU; conv k=7 to 1 channel; no output activation.
With strides (8, 5, 4, 2) the hop is 320 samples: 50 frames/s at 16 kHz.

Length rule: a strided conv pads the input's right end (EnCodec's `extra_padding`) so its
last window is full, so the encoder yields ceil(samples / 320) frames for any length; the
decoder yields exactly frames * 320 samples. Callers that want the same numbers for a clip
alone or inside a zero-padded batch pad to a multiple of the hop themselves (`api.py` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DIMS_1D = ("NWC", "WIO", "NWC")
_INIT_CHUNK = 1 << 16


@jax.jit
def _uniform_chunk(key: jax.Array, index: jax.Array) -> jax.Array:
    return jax.random.uniform(jax.random.fold_in(key, index), (_INIT_CHUNK,), jnp.float32)


def uniform_init(key: jax.Array, shape: Sequence[int], bound: float) -> jax.Array:
    """U(-bound, bound) of `shape`, drawn as fixed-size chunks of one jitted generator.

    Why: on XLA-CPU every new shape given to jax.random compiles a fresh threefry kernel
    (~0.3-1 s each), which made building the codec take ~30 s. Chunks of 2^16 compile once;
    outside a trace the slicing runs in numpy (no per-shape compiles either). Eager and
    traced builds draw the same numbers (up to float32 rounding of the affine map).
    """
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    parts = [_uniform_chunk(key, j) for j in range(max(1, -(-n // _INIT_CHUNK)))]
    if any(isinstance(p, jax.core.Tracer) for p in parts):
        flat = jnp.concatenate(parts)[:n] if len(parts) > 1 else parts[0][:n]
        return (2.0 * flat.reshape(shape) - 1.0) * bound
    flat = np.concatenate([np.asarray(p) for p in parts])[:n]
    return jnp.asarray(((2.0 * flat.reshape(shape) - 1.0) * bound).astype(np.float32))


class Dense(nnx.Module):
    """Affine map [..., in] -> [..., out] with torch nn.Linear's init (U +-1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_features)
        self.kernel = nnx.Param(uniform_init(rngs.params(), (in_features, out_features), bound))
        self.bias = nnx.Param(uniform_init(rngs.params(), (out_features,), bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


def pad1d(x: jax.Array, left: int, right: int, mode: str = "reflect") -> jax.Array:
    """Pads the time axis of [b, T, C]; reflect works even when T <= the pad (as EnCodec).

    Reflection needs T > pad; shorter inputs are first zero-extended on the right, reflected,
    then the extension is cut off again, so short clips behave like EnCodec's `pad1d`.
    """
    if left == 0 and right == 0:
        return x
    if mode != "reflect":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode=mode)
    length = x.shape[1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    x = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return x[:, : x.shape[1] - extra] if extra else x


class WeightNorm(nnx.Module):
    """Weight normalisation w = g * v / ||v|| (Salimans & Kingma) as two NNX params.

    `norm_axis` is the kernel axis that keeps one magnitude each; the norm runs over the
    other axes. torch's `weight_norm(dim=0)` norms per output channel of a Conv1d and per
    *input* channel of a ConvTranspose1d (dim 0 of their weights); we keep both choices.
    g starts at ||v||, so the initial kernel equals v.
    """

    def __init__(self, v: jax.Array, norm_axis: int):
        self.norm_axis = norm_axis % v.ndim
        self.v = nnx.Param(v)
        if isinstance(v, jax.core.Tracer):
            g = self._norm(v)
        else:  # numpy: no per-shape compile at build time (see `uniform_init`)
            g = jnp.asarray(self._norm(np.asarray(v), np))
        self.g = nnx.Param(g)

    def _norm(self, v: jax.Array, xp=jnp) -> jax.Array:
        axes = tuple(a for a in range(v.ndim) if a != self.norm_axis)
        return xp.sqrt(xp.maximum(xp.sum(xp.square(v), axis=axes), 1e-24))

    def __call__(self) -> jax.Array:
        v = self.v[...]
        shape = [1] * v.ndim
        shape[self.norm_axis] = v.shape[self.norm_axis]
        return v * (self.g[...] / self._norm(v)).reshape(shape)


class Conv1d(nnx.Module):
    """Non-causal 1-D conv with EnCodec's 'same' padding: [b, T, C_in] -> [b, ceil(T/s), C_out].

    Total padding (k - 1) * dilation - (stride - 1) is split with the extra sample on the
    left (EnCodec's choice for odd totals), plus right padding so the last window is full.
    Init follows torch's Conv1d defaults (uniform +-1/sqrt(fan_in) for kernel and bias), so
    learning rates tuned on the reference implementation carry over.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        weight_norm: bool = True,
        pad_mode: str = "reflect",
        rngs: nnx.Rngs,
    ):
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.pad_mode = pad_mode
        bound = 1.0 / math.sqrt(in_channels * kernel_size)
        v = uniform_init(rngs.params(), (kernel_size, in_channels, out_channels), bound)
        self.weight = WeightNorm(v, norm_axis=-1) if weight_norm else nnx.Param(v)
        self.bias = nnx.Param(uniform_init(rngs.params(), (out_channels,), bound))

    def kernel(self) -> jax.Array:
        w = self.weight
        return w() if isinstance(w, WeightNorm) else w[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, d = self.kernel_size, self.stride, self.dilation
        length = x.shape[1]
        total = (k - 1) * d - (s - 1)
        num_frames = math.ceil((length - k + total) / s + 1)
        extra = (num_frames - 1) * s + (k - total) - length
        right = total // 2
        x = pad1d(x, total - right, right + extra, self.pad_mode)
        y = jax.lax.conv_general_dilated(
            x, self.kernel(), (s,), "VALID", rhs_dilation=(d,), dimension_numbers=_DIMS_1D
        )
        return y + self.bias[...]


class ConvTranspose1d(nnx.Module):
    """Transposed conv [b, T, C_in] -> [b, T * stride, C_out] (any kernel >= stride).

    Computes torch's ConvTranspose1d ((T - 1) * s + k samples) as a conv of the
    stride-dilated input with the flipped kernel, then trims k - s samples, the extra one on
    the left for odd totals (EnCodec's non-causal `SConvTranspose1d`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int,
        weight_norm: bool = True,
        rngs: nnx.Rngs,
    ):
        self.kernel_size, self.stride = kernel_size, stride
        # torch computes fan_in of a transposed conv from its weight's dim 1: out * k.
        bound = 1.0 / math.sqrt(out_channels * kernel_size)
        v = uniform_init(rngs.params(), (kernel_size, in_channels, out_channels), bound)
        self.weight = WeightNorm(v, norm_axis=1) if weight_norm else nnx.Param(v)
        self.bias = nnx.Param(uniform_init(rngs.params(), (out_channels,), bound))

    def kernel(self) -> jax.Array:
        w = self.weight
        return w() if isinstance(w, WeightNorm) else w[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel()[::-1],
            (1,),
            [(k - 1, k - 1)],
            lhs_dilation=(s,),
            dimension_numbers=_DIMS_1D,
        )
        total = k - s
        right = total // 2
        y = y[:, total - right : y.shape[1] - right]
        return y + self.bias[...]


class ResidualUnit(nnx.Module):
    """SEANet residual unit: x + block(x), block = ELU, dilated conv (width/compress), ELU, 1x1."""

    def __init__(
        self,
        dim: int,
        *,
        kernel_size: int,
        dilation: int,
        compress: int,
        true_skip: bool,
        pad_mode: str,
        rngs: nnx.Rngs,
    ):
        hidden = dim // compress
        self.conv1 = Conv1d(
            dim, hidden, kernel_size, dilation=dilation, pad_mode=pad_mode, rngs=rngs
        )
        self.conv2 = Conv1d(hidden, dim, 1, pad_mode=pad_mode, rngs=rngs)
        self.shortcut = None if true_skip else Conv1d(dim, dim, 1, pad_mode=pad_mode, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(jax.nn.elu(self.conv1(jax.nn.elu(x))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + y


def reverse_padded(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Reverses each sequence of [b, T, ...] within its first `lengths[b]` steps.

    The padded tail stays in place, so a backward LSTM starts at each item's true end and
    a batch gives the same states as each item alone. Applying it twice is the identity.
    """
    if lengths is None:
        return x[:, ::-1]
    t = jnp.arange(x.shape[1])[None, :]
    lengths = lengths[:, None]
    idx = jnp.where(t < lengths, lengths - 1 - t, t)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


class LSTMLayer(nnx.Module):
    """One LSTM direction over [b, T, in] (gate order i, f, g, o as torch.nn.LSTM).

    Hand-written instead of nnx.RNN(OptimizedLSTMCell): the input projection for all
    frames is one matmul outside the scan and only h @ W_hh runs per step, which is what
    makes the recurrence cheap on CPU. Init: torch's uniform +-1/sqrt(hidden).
    """

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(hidden)
        self.hidden = hidden
        self.w_ih = nnx.Param(uniform_init(rngs.params(), (in_features, 4 * hidden), bound))
        self.w_hh = nnx.Param(uniform_init(rngs.params(), (hidden, 4 * hidden), bound))
        # torch has two biases (b_ih + b_hh); their sum is one free parameter.
        self.bias = nnx.Param(uniform_init(rngs.params(), (4 * hidden,), bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        b = x.shape[0]
        xw = jnp.einsum("btc,cg->tbg", x, self.w_ih[...]) + self.bias[...]
        w_hh = self.w_hh[...]

        def step(carry, xw_t):
            h, c = carry
            gates = xw_t + h @ w_hh
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((b, self.hidden), xw.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), xw)
        return jnp.swapaxes(hs, 0, 1)


class SkipLSTM(nnx.Module):
    """Stacked (Bi)LSTM with a skip connection, EnCodec/SpeechTokenizer's `SLSTM`.

    Bidirectional: each layer concatenates forward and backward outputs (2 x dim), the next
    layer reads those 2 x dim channels, and the skip adds [x, x]; the output has 2 x dim
    channels. `lengths` (frames per item) keeps padded frames out of the backward pass.
    """

    def __init__(self, dim: int, num_layers: int, bidirectional: bool, *, rngs: nnx.Rngs):
        self.bidirectional = bidirectional
        width = 2 * dim if bidirectional else dim
        self.forward_layers = nnx.List(
            [LSTMLayer(dim if i == 0 else width, dim, rngs=rngs) for i in range(num_layers)]
        )
        self.backward_layers = nnx.List(
            [LSTMLayer(dim if i == 0 else width, dim, rngs=rngs) for i in range(num_layers)]
            if bidirectional
            else []
        )

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        y = x
        for i, fwd in enumerate(self.forward_layers):
            out = fwd(y)
            if self.bidirectional:
                bwd = self.backward_layers[i]
                back = reverse_padded(bwd(reverse_padded(y, lengths)), lengths)
                out = jnp.concatenate([out, back], axis=-1)
            y = out
        skip = jnp.concatenate([x, x], axis=-1) if self.bidirectional else x
        return y + skip


def scale_conv_weights(module: nnx.Module, gain: float) -> None:
    """Multiplies every weight-normed kernel in `module` by `gain` (through g).

    torch's default conv init (uniform +-1/sqrt(fan_in): variance 1 / (3 fan_in)) shrinks
    the signal by about sqrt(3) per layer, so through a SEANet encoder a speech-level input
    reaches the latent ~1000x attenuated and the latent is almost constant in time (the
    biases dominate); a small codec trained for minutes never recovers. gain 2 keeps the
    latent's variation over time at the size of the latent itself (see `codec.conv_init_gain`).
    """
    if gain == 1.0:
        return
    for _, node in nnx.iter_graph(module):
        if isinstance(node, WeightNorm):
            node.g[...] = node.g[...] * gain


def _residual_stack(
    width: int,
    n_residual_layers: int,
    kernel_size: int,
    dilation_base: int,
    compress: int,
    true_skip: bool,
    pad_mode: str,
    rngs: nnx.Rngs,
) -> nnx.List:
    """One SEANet stage's residual units, dilations 1, base, base^2, ... (shared by both sides)."""
    return nnx.List(
        [
            ResidualUnit(
                width,
                kernel_size=kernel_size,
                dilation=dilation_base**j,
                compress=compress,
                true_skip=true_skip,
                pad_mode=pad_mode,
                rngs=rngs,
            )
            for j in range(n_residual_layers)
        ]
    )


class SEANetEncoder(nnx.Module):
    """Waveform [b, samples, 1] -> latent [b, ceil(samples / hop), dimension]."""

    def __init__(
        self,
        *,
        n_filters: int,
        strides: Sequence[int],
        dimension: int,
        n_residual_layers: int = 1,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        compress: int = 2,
        true_skip: bool = False,
        lstm_layers: int = 2,
        bidirectional: bool = True,
        pad_mode: str = "reflect",
        init_gain: float = 1.0,
        rngs: nnx.Rngs,
    ):
        self.hop_length = int(np.prod(strides))
        self.conv_in = Conv1d(1, n_filters, kernel_size, pad_mode=pad_mode, rngs=rngs)
        blocks, downs = [], []
        width = n_filters
        for ratio in reversed(tuple(strides)):
            blocks.append(
                _residual_stack(
                    width,
                    n_residual_layers,
                    residual_kernel_size,
                    dilation_base,
                    compress,
                    true_skip,
                    pad_mode,
                    rngs,
                )
            )
            downs.append(
                Conv1d(width, 2 * width, 2 * ratio, stride=ratio, pad_mode=pad_mode, rngs=rngs)
            )
            width *= 2
        self.blocks = nnx.List(blocks)
        self.downsample = nnx.List(downs)
        self.lstm = SkipLSTM(width, lstm_layers, bidirectional, rngs=rngs) if lstm_layers else None
        out_width = 2 * width if (lstm_layers and bidirectional) else width
        self.conv_out = Conv1d(out_width, dimension, last_kernel_size, pad_mode=pad_mode, rngs=rngs)
        scale_conv_weights(self, init_gain)

    def __call__(self, wav: jax.Array, frame_lengths: jax.Array | None = None) -> jax.Array:
        x = self.conv_in(wav)
        for units, down in zip(self.blocks, self.downsample, strict=True):
            for unit in units:
                x = unit(x)
            x = down(jax.nn.elu(x))
        if self.lstm is not None:
            x = self.lstm(x, frame_lengths)
        return self.conv_out(jax.nn.elu(x))


class SEANetDecoder(nnx.Module):
    """Latent [b, frames, dimension] -> waveform [b, frames * hop, 1]."""

    def __init__(
        self,
        *,
        n_filters: int,
        strides: Sequence[int],
        dimension: int,
        n_residual_layers: int = 1,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        compress: int = 2,
        true_skip: bool = False,
        lstm_layers: int = 2,
        pad_mode: str = "reflect",
        init_gain: float = 1.0,
        rngs: nnx.Rngs,
    ):
        self.hop_length = int(np.prod(strides))
        width = n_filters * 2 ** len(strides)
        self.conv_in = Conv1d(dimension, width, kernel_size, pad_mode=pad_mode, rngs=rngs)
        self.lstm = SkipLSTM(width, lstm_layers, False, rngs=rngs) if lstm_layers else None
        ups, blocks = [], []
        for ratio in strides:
            ups.append(ConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio, rngs=rngs))
            width //= 2
            blocks.append(
                _residual_stack(
                    width,
                    n_residual_layers,
                    residual_kernel_size,
                    dilation_base,
                    compress,
                    true_skip,
                    pad_mode,
                    rngs,
                )
            )
        self.upsample = nnx.List(ups)
        self.blocks = nnx.List(blocks)
        self.conv_out = Conv1d(width, 1, last_kernel_size, pad_mode=pad_mode, rngs=rngs)
        scale_conv_weights(self, init_gain)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.conv_in(z)
        if self.lstm is not None:
            x = self.lstm(x)
        for up, units in zip(self.upsample, self.blocks, strict=True):
            x = up(jax.nn.elu(x))
            for unit in units:
                x = unit(x)
        return self.conv_out(jax.nn.elu(x))
