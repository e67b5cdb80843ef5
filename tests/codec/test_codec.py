"""Codec model + API: frame rule, batching, RVQ-1 decode, configs, and overfitting one batch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gpa_jax.codec import CodebookState, Codec, decode, encode, encode_batch
from gpa_jax.codec.losses import generator_loss, teacher_features
from gpa_jax.codec.model import TRAINABLE
from gpa_jax.config_utils import ConfigError, load_config

# Every clip below is <= 24000 samples, so one length bucket (75 frames) serves them all and
# each API entry point compiles once.
BUCKET = 75


@pytest.fixture(scope="module")
def tiny():
    config = load_config("configs/codec_tiny.py")
    return config, Codec.from_config(config)


def _clip(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.normal(size=n)).astype(np.float32)


def test_configs_load_validate_and_paper_size():
    paper = load_config("configs/codec_paper.py")
    assert paper.kind == "codec" and tuple(paper.codec.strides) == (8, 5, 4, 2)
    assert (paper.codec.n_filters, paper.codec.dimension, paper.codec.n_q) == (64, 1024, 8)
    assert (paper.codec.codebook_size, paper.teacher.dim, paper.codec.lstm_layers) == (1024, 768, 2)
    abstract = nnx.eval_shape(lambda: Codec.from_config(paper))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert 90e6 < params < 120e6, params  # SpeechTokenizer is ~100 M parameters
    assert abstract.hop_length == 320
    tiny = load_config("configs/codec_tiny.py", ["codec.quantizer_dropout=0.5"])
    assert tiny.codec.quantizer_dropout == 0.5 and tiny.codec.n_q == 8
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config("configs/codec_tiny.py", ["codec.n_filter=4"])


def test_frame_count_rule_for_many_lengths(tiny):
    _, codec = tiny
    lengths = [1, 319, 320, 321, 16000, 16001, *np.random.default_rng(0).integers(2, 24000, 3)]
    for n in lengths:
        codes = encode(codec, _clip(int(n)), 16000, bucket_frames=BUCKET)
        frames = math.ceil(n / 320)
        assert codes.shape == (8, frames) and codes.dtype == np.int32
        assert codes.min() >= 0 and codes.max() < 256
        wav = decode(codec, codes, bucket_frames=BUCKET)
        assert wav.shape == (frames * 320,) and wav.dtype == np.float32
        assert np.all(np.isfinite(wav))
    # Other rates are resampled first: frames = ceil(ceil(n * 16000 / sr) / 320).
    codes = encode(codec, _clip(4001), 8000, bucket_frames=BUCKET)
    assert codes.shape == (8, math.ceil(8002 / 320))
    assert encode(codec, np.zeros(0, np.float32), 8000, bucket_frames=BUCKET).shape == (8, 0)
    assert decode(codec, np.zeros((8, 0), np.int32), bucket_frames=BUCKET).shape == (0,)


def test_batched_encode_decode_match_single(tiny):
    _, codec = tiny
    clips = [_clip(n, seed) for seed, n in enumerate((5000, 16001, 9600))]
    batched = encode_batch(codec, clips, 16000, bucket_frames=BUCKET)
    for clip, codes in zip(clips, batched, strict=True):
        single = encode(codec, clip, 16000, bucket_frames=BUCKET)
        assert codes.shape == single.shape
        # Away from the clip's end (where padding replaces reflected audio) codes agree.
        np.testing.assert_array_equal(codes[:, :-2], single[:, :-2])


def test_decode_with_rvq1_only(tiny):
    _, codec = tiny
    codes = encode(codec, _clip(6400), 16000, bucket_frames=BUCKET)
    full = decode(codec, codes, bucket_frames=BUCKET)
    coarse = decode(codec, codes[:1], bucket_frames=BUCKET)
    assert coarse.shape == full.shape == (20 * 320,)
    assert np.all(np.isfinite(coarse)) and not np.allclose(coarse, full)
    with pytest.raises(ValueError, match="codes must lie"):
        decode(codec, np.full((1, 3), 256), bucket_frames=BUCKET)


def test_forward_outputs_and_state_partition(tiny):
    config, codec = tiny
    out = nnx.eval_shape(lambda c, w: c(w, train=True), codec, jnp.zeros((2, 8001)))
    assert out["recon"].shape == (2, 8001)
    assert out["codes"].shape == (2, 8, 26)
    assert out["rvq1"].shape == out["quantized"].shape == (2, 26, 64)
    # codec_tiny's RVQ-1 is the teacher's codes: no semantic head, nothing to distil.
    assert config.codec.quantizer == "teacher" and out["semantic_pred"] is None
    assert out["commit_loss"].shape == ()
    params = nnx.state(codec, nnx.Param)
    buffers = nnx.state(codec, CodebookState)
    param_paths = {p for p, _ in nnx.to_flat_state(params)}
    buffer_paths = {p for p, _ in nnx.to_flat_state(buffers)}
    assert not param_paths & buffer_paths
    assert {p[-1] for p in buffer_paths} == {"embed", "embed_sum", "cluster_size", "initialized"}
    # Codebooks are EMA buffers; the only quantizer parameter is RVQ-1's decoder-side table.
    assert {p for p in param_paths if p[0] == "quantizer"} == {("quantizer", "first_embed")}
    # The optimizer trains everything but the frozen teacher (which holds parameters).
    trainable = {p for p, _ in nnx.to_flat_state(nnx.state(codec, TRAINABLE))}
    assert trainable == {p for p in param_paths if p[0] != "teacher"}
    assert any(p[0] == "teacher" for p in param_paths)


@pytest.mark.slow
def test_overfits_one_batch():
    """80 Adam steps on two 0.25 s clips cut the multi-scale mel loss by > 4x (~7x seen)."""
    config = load_config(
        "configs/codec_tiny.py",
        {"loss.adversarial": False, "teacher.kind": "log_mel", "teacher.dim": 32,
         "codec.quantizer": "rvq"},  # fmt: skip
    )
    codec = Codec.from_config(config)
    t = np.arange(4000) / 16000
    tone = sum(0.3 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 5))
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 0.5 * 1600 * t**2))
    wav = jnp.asarray(np.stack([tone, chirp]), jnp.float32)
    teacher = teacher_features(wav, config)
    optimizer = nnx.Optimizer(codec, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(codec, optimizer, wav, teacher):
        def loss_fn(codec):
            return generator_loss(codec(wav, train=True), wav, config, teacher=teacher)

        (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(codec)
        optimizer.update(codec, grads)
        return metrics

    history = [step(codec, optimizer, wav, teacher) for _ in range(80)]
    first, last = float(history[0]["mel"]), float(history[-1]["mel"])
    assert np.isfinite(last) and last < first / 4, (first, last)
    assert float(history[-1]["distill"]) < float(history[0]["distill"])
    assert bool(jnp.all(codec.quantizer.initialized[...]))  # k-means ran on the first batch
