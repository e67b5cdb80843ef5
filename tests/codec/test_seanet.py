"""SEANet building blocks vs NumPy references: padded convs, transposed convs, BiLSTM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.codec.seanet import (
    Conv1d,
    ConvTranspose1d,
    SkipLSTM,
    WeightNorm,
    reverse_padded,
)


def _np_conv1d(x, w, b, stride, dilation):
    """Valid cross-correlation, x [T, Ci], w [k, Ci, Co]."""
    k = w.shape[0]
    span = (k - 1) * dilation + 1
    frames = (x.shape[0] - span) // stride + 1
    out = np.zeros((frames, w.shape[2]))
    for t in range(frames):
        taps = x[t * stride : t * stride + span : dilation]  # [k, Ci]
        out[t] = np.einsum("kc,kco->o", taps, w) + b
    return out


@pytest.mark.parametrize(
    "length,kernel,stride,dilation",
    [(37, 7, 1, 1), (37, 3, 1, 3), (41, 10, 5, 1), (40, 16, 8, 1), (3, 7, 1, 1)],
)
def test_conv1d_matches_encodec_padding(length, kernel, stride, dilation):
    conv = Conv1d(3, 2, kernel, stride=stride, dilation=dilation, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(length, 3))
    total = (kernel - 1) * dilation - (stride - 1)
    frames = int(np.ceil((length - kernel + total) / stride + 1))
    extra = (frames - 1) * stride + (kernel - total) - length
    left, right = total - total // 2, total // 2 + extra
    # Reflect padding; EnCodec zero-extends first when the input is too short to reflect.
    ext = max(left, right) - length + 1 if length <= max(left, right) else 0
    xp = np.pad(np.pad(x, ((0, ext), (0, 0))), ((left, right), (0, 0)), mode="reflect")
    xp = xp[: len(xp) - ext]
    ref = _np_conv1d(xp, np.asarray(conv.kernel()), np.asarray(conv.bias[...]), stride, dilation)
    out = np.asarray(conv(jnp.asarray(x[None], jnp.float32))[0])
    assert out.shape[0] == -(-length // stride)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_conv_transpose_matches_torch_definition():
    conv = ConvTranspose1d(3, 2, 10, stride=5, rngs=nnx.Rngs(1))
    x = np.random.default_rng(1).normal(size=(6, 3))
    w = np.asarray(conv.kernel())  # [k, Ci, Co]
    full = np.zeros(((6 - 1) * 5 + 10, 2))
    for i in range(6):  # out[i * s + j] += x[i] @ w[j]
        full[i * 5 : i * 5 + 10] += np.einsum("c,kco->ko", x[i], w)
    total = 10 - 5
    ref = full[total - total // 2 : len(full) - total // 2] + np.asarray(conv.bias[...])
    out = np.asarray(conv(jnp.asarray(x[None], jnp.float32))[0])
    assert out.shape == (30, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_weight_norm_params_and_kernel():
    conv = Conv1d(4, 5, 3, rngs=nnx.Rngs(2))
    assert isinstance(conv.weight, WeightNorm)
    params = nnx.state(conv, nnx.Param)
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(params)}
    assert shapes == {"weight/v": (3, 4, 5), "weight/g": (5,), "bias": (5,)}
    # Initially w == v; scaling g scales each output channel's kernel.
    np.testing.assert_allclose(conv.kernel(), conv.weight.v[...], rtol=1e-6)
    conv.weight.g[...] = 2.0 * conv.weight.g[...]
    np.testing.assert_allclose(conv.kernel(), 2.0 * conv.weight.v[...], rtol=1e-6)


def test_reverse_padded_is_a_per_item_involution():
    x = jnp.arange(2 * 5).reshape(2, 5, 1)
    lengths = jnp.array([3, 5])
    y = reverse_padded(x, lengths)
    np.testing.assert_array_equal(y[0, :, 0], [2, 1, 0, 3, 4])
    np.testing.assert_array_equal(y[1, :, 0], [9, 8, 7, 6, 5])
    np.testing.assert_array_equal(reverse_padded(y, lengths), x)


def test_bilstm_doubles_width_and_ignores_padding():
    lstm = SkipLSTM(4, 2, bidirectional=True, rngs=nnx.Rngs(3))
    run = nnx.jit(lambda m, x, n: m(x, n))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 6, 4)), jnp.float32)
    alone = run(lstm, x, jnp.array([6]))
    assert alone.shape == (1, 6, 8)
    padded = jnp.concatenate([x, 5.0 * jnp.ones((1, 3, 4))], axis=1)
    batch = run(lstm, jnp.concatenate([padded, padded]), jnp.array([6, 9]))
    np.testing.assert_allclose(batch[0, :6], alone[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(batch[1, :6], alone[0])  # without lengths the padding leaks in
    unidirectional = SkipLSTM(4, 1, bidirectional=False, rngs=nnx.Rngs(3))
    assert unidirectional(x).shape == (1, 6, 4)
    assert np.all(np.isfinite(jax.device_get(alone)))
