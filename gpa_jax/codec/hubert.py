"""HuBERT (or any HuggingFace audio encoder) teacher features, precomputed offline.

Needs the `[hubert]` extra (transformers + torch). The model is read from a LOCAL
directory (`from_pretrained(model_dir, local_files_only=True)`): nothing is downloaded.
Each utterance runs alone (no padding, so no attention-mask questions), in eval mode,
with `output_hidden_states=True`; `layer` picks the target:
- "avg": the mean of all returned hidden states (the embedding output and every
  transformer layer), SpeechTokenizer's `semantic_model_layer: "avg"`;
- "<k>": hidden state k (0 = the embedding output, k = transformer layer k);
- "last": `last_hidden_state`.
The features [frames, hidden_size] go to a `data.FeatureStore` (float16), which the codec
trainer reads with `teacher.kind=hubert_features`, `teacher.path=<store>`,
`teacher.dim=<hidden_size>`. The encoder's frame hop (product of its conv strides, 320
for HuBERT) must equal the codec hop, so crops and features stay aligned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gpa_jax.codec.data import FeatureStore


def load_encoder(model_dir: str) -> tuple[Any, int, int]:
    """(model in eval mode, hidden size, frame hop in samples) from a local directory."""
    import os

    try:
        import torch  # noqa: F401
        from transformers import AutoModel
    except ImportError as error:
        raise ImportError(
            "precomputing HuBERT features needs the [hubert] extra: "
            'pip install -e ".[hubert]" -c constraints.txt'
        ) from error
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(
            f"{model_dir!r} is not a local HuggingFace model directory (no config.json); "
            "save one with model.save_pretrained(dir) on a machine that has it"
        )
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    cfg = model.config
    hop = math.prod(getattr(cfg, "conv_stride", [1]))
    return model, int(cfg.hidden_size), int(hop)


def features(
    model: Any, wav: np.ndarray, layer: str = "avg", normalize: bool = False
) -> np.ndarray:
    """Teacher features [frames, hidden] of one 16 kHz waveform (see module doc)."""
    import torch

    x = np.asarray(wav, np.float32)
    if normalize:  # what a feature extractor with do_normalize=True does
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    with torch.inference_mode():
        out = model(torch.from_numpy(x)[None], output_hidden_states=True)
    if layer == "last":
        h = out.last_hidden_state
    elif layer == "avg":
        h = torch.stack(out.hidden_states, 0).mean(0)
    elif layer.isdigit() and int(layer) < len(out.hidden_states):
        h = out.hidden_states[int(layer)]
    else:
        raise ValueError(f"layer {layer!r}: expected avg, last or 0..{len(out.hidden_states) - 1}")
    return h[0].float().numpy()


def precompute(
    model_dir: str,
    utterances: Iterable[tuple[str, np.ndarray]],
    out_dir: str,
    *,
    layer: str = "avg",
    expected_hop: int | None = None,
    progress: bool = True,
    total: int | None = None,
) -> FeatureStore:
    """Runs the encoder of `model_dir` over (id, 16 kHz waveform) pairs into a FeatureStore."""
    from tqdm import tqdm

    model, dim, hop = load_encoder(model_dir)
    if expected_hop is not None and hop != expected_hop:
        raise ValueError(
            f"{model_dir}: encoder frame hop {hop} samples, but the codec hop is {expected_hop}"
        )
    normalize = _wants_normalize(model_dir)

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for utt_id, wav in tqdm(
            utterances, desc="teacher features", total=total, disable=not progress
        ):
            yield utt_id, features(model, wav, layer, normalize)

    return FeatureStore.write(
        out_dir,
        items(),
        dim=dim,
        frame_hop=hop,
        source={"model_dir": model_dir, "layer": layer, "normalize": normalize},
    )


def _wants_normalize(model_dir: str) -> bool:
    """do_normalize of the directory's feature extractor config (False when absent)."""
    import json
    import os

    path = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get("do_normalize", False))
