"""Every shipped LM config builds (abstractly) and has the size its name promises."""

import pytest

from gpa_jax.config_utils import load_config_file
from gpa_jax.models import count_params


@pytest.mark.parametrize(
    "name, low, high",
    [
        # The LM benchmarks' default shape: 6.95 M with tied embeddings, + the CTC head.
        ("gpa_tiny", 6.9e6, 7.1e6),
        ("gpa_0p3b", 0.25e9, 0.40e9),
        ("gpa_1b", 0.8e9, 1.4e9),
        ("gpa_8b_pod", 5e9, 10e9),
    ],
)
def test_param_count_in_range(name, low, high):
    config = load_config_file(f"configs/{name}.py")
    assert config.kind == "lm"
    n = count_params(config)  # eval_shape: nothing is allocated
    assert low <= n <= high, f"{name}: {n:,} params"


def test_tiny_count_is_exact():
    # vocab*d + 6 * (attn q,k,v,o + SwiGLU + 2 norms + 2 qk-norms) + final norm
    d, v, layers = 256, 4096, 6
    per_layer = d * 256 + 2 * d * 128 + 256 * d + 3 * d * 1024 + 2 * d + 2 * 64
    lm = v * d + layers * per_layer + d
    assert lm == 6_950_912
    config = load_config_file("configs/gpa_tiny.py")
    # + the training-only ASR CTC head (d x d), there while model.ctc_weight > 0
    assert config.model.ctc_weight > 0
    assert count_params(config) == lm + d * d
    config.model.ctc_weight = 0.0
    assert count_params(config) == lm
