"""HuBERT teacher path: precompute features from a local HF model dir, train the codec on them.

The model is a tiny randomly initialised `transformers.HubertModel` saved to a temporary
directory: nothing is downloaded. Skipped without the [hubert] extra.
"""

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

from gpa_jax.codec import hubert  # noqa: E402
from gpa_jax.codec import train as codec_train  # noqa: E402
from gpa_jax.codec.data import ClipStore, FeatureStore  # noqa: E402
from tests.codec.test_train import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    cfg = transformers.HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    path = str(tmp_path_factory.mktemp("hubert_tiny"))
    transformers.HubertModel(cfg).save_pretrained(path)
    return path


def _clips():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.normal(size=n)).astype(np.float32) for n in (8000, 12800, 6000)]


def test_precompute_writes_aligned_features_per_layer(model_dir, tmp_path):
    clips = _clips()
    ids = [f"u{i}" for i in range(len(clips))]
    store = hubert.precompute(
        model_dir,
        zip(ids, clips, strict=True),
        str(tmp_path / "avg"),
        expected_hop=320,
        progress=False,
    )
    assert isinstance(store, FeatureStore) and store.dim == 32 and store.frame_hop == 320
    model, dim, hop = hubert.load_encoder(model_dir)
    for utt_id, clip in zip(ids, clips, strict=True):
        feats = store.get(utt_id)
        # HuBERT's conv front end: floor((n - 400) / 320) + 1 frames at 50 Hz.
        assert feats.shape == ((len(clip) - 400) // 320 + 1, 32)
        np.testing.assert_allclose(feats, hubert.features(model, clip, "avg"), atol=2e-2)
    last = hubert.features(model, clips[0], "last")
    layer2 = hubert.features(model, clips[0], "2")
    np.testing.assert_allclose(last, layer2, atol=1e-5)  # 2 layers: last == hidden_states[2]
    with pytest.raises(ValueError, match="codec hop is 640"):
        hubert.precompute(model_dir, [], str(tmp_path / "x"), expected_hop=640, progress=False)
    with pytest.raises(FileNotFoundError, match="not a local HuggingFace model"):
        hubert.load_encoder(str(tmp_path))


def test_codec_trains_on_precomputed_features(model_dir, tmp_path):
    clips = _clips()
    ids = [f"u{i}" for i in range(len(clips))]
    feats_dir = str(tmp_path / "feats")
    hubert.precompute(
        model_dir, zip(ids, clips, strict=True), feats_dir, layer="avg", progress=False
    )
    store = ClipStore.write(str(tmp_path / "clips"), ids, clips, sample_rate=16000)
    config = tiny_config(
        **{
            "teacher.kind": "hubert_features",
            "teacher.dim": 32,
            "teacher.path": feats_dir,
            "data.crop_seconds": 0.2,
            "train.num_steps": 2,
        }
    )
    result = codec_train.train(config, str(tmp_path / "w"), clips=store, progress=False)
    assert np.isfinite(result.metrics["loss/distill"])
    wrong = tiny_config(
        **{"teacher.kind": "hubert_features", "teacher.dim": 64, "teacher.path": feats_dir}
    )
    with pytest.raises(ValueError, match="teacher.dim 64"):
        codec_train.train(wrong, str(tmp_path / "w2"), clips=store, progress=False)
