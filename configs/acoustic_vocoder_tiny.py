"""acoustic_vocoder_tiny: the LauraGPT-style one-step codec vocoder (RVQ-1 + voice prompt ->
the codec's summed quantized latent, L1 + L2), same size and data as acoustic_nar_tiny.

`arg`: the token directory, as for acoustic_nar_tiny. The codec (config.codec) provides the
frozen codebooks of the regression target; its checkpoint defaults to the one recorded in
the token shards' manifest.
"""

import importlib.util
import os

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "acoustic_nar_tiny.py")
    spec = importlib.util.spec_from_file_location("_acoustic_nar_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_config("vocoder", arg)
