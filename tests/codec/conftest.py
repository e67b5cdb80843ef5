"""Shared codec fixtures: one tiny corpus and a codec trained on it for one step."""

import pytest

CORPUS = "synthetic_speech/tiny"


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """(config, workdir): the tiny synthetic corpus in <workdir>/tfds and a 1-step codec."""
    from data import synthetic_speech
    from gpa_jax import paths
    from gpa_jax.codec import train as codec_train
    from tests.codec.test_train import tiny_config

    workdir = str(tmp_path_factory.mktemp("codec_workdir"))
    data_dir = paths.tfds_dir(workdir)
    synthetic_speech.build("tiny", data_dir)
    config = tiny_config(**{"train.num_steps": 1, "data.corpus": CORPUS})
    codec_train.train(config, workdir, data_dir=data_dir, progress=False)
    return config, workdir
