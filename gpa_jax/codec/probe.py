"""Content probe: how much of the words each RVQ layer's codes carry.

    python -m launch.probe_codec --config=configs/codec_tiny.py --workdir=W

For each RVQ layer l in `config.probe.layers` (1-based), every utterance is encoded and
replaced by the sequence of layer l's code vectors (codebook_l[code_l(t)], [T, D]),
standardised with that layer's train-set mean and std (later layers quantize smaller
residuals; the scale must not decide the result). A small CTC character recogniser of
the same size for every layer (`ctc.CTCRecognizer`: `probe.num_layers` conv blocks of
width `probe.hidden`) is trained on `probe.train_utterances` of the training split and
scored by character error rate on `probe.test_utterances` held-out utterances. With
SpeechTokenizer-style distillation, RVQ-1 should give a much lower CER than RVQ-2: RVQ-1
carries content, later layers voice and detail. The probe is deliberately weak (a few
conv layers, minutes of training), so CERs compare layers, not absolute ASR quality.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from gpa_jax import paths
from gpa_jax.codec import api, ctc
from gpa_jax.codec.model import Codec

_FRAME_BUCKET = 100  # probe batches are padded to multiples of 2 s (at 50 Hz)


def encode_all(
    codec: Codec, audio: Sequence[np.ndarray], batch_size: int = 16, progress: bool = False
) -> list[np.ndarray]:
    """Codes [n_q, frames] for every waveform (batched, length buckets of 1 s)."""
    from tqdm import tqdm

    out: list[np.ndarray] = []
    for start in tqdm(
        range(0, len(audio), batch_size), desc="probe encode", unit="batch", disable=not progress
    ):
        chunk = [np.asarray(a, np.float32) for a in audio[start : start + batch_size]]
        out.extend(api.encode_batch(codec, chunk, codec.sample_rate, bucket_frames=50))
    return out


def layer_vectors(
    codebooks: np.ndarray, codes: Sequence[np.ndarray], layer: int
) -> list[np.ndarray]:
    """Layer `layer` (1-based) code vectors [frames, D] per utterance; codebooks [n_q, K, D]."""
    if not 1 <= layer <= len(codebooks):
        raise ValueError(f"probe layer {layer} outside 1..{len(codebooks)}")
    book = np.asarray(codebooks[layer - 1], np.float32)
    return [book[c[layer - 1]] for c in codes]


def codebooks(codec: Codec) -> np.ndarray:
    """The vector each code adds to the decoder input, [n_q, K, D], as numpy."""
    return np.asarray(codec.quantizer.codebooks(), np.float32)


def _apply(model: ctc.CTCRecognizer, x, mask):
    logits, _ = model(x, mask)
    return logits, model.output_mask(mask)


def probe_layers(
    codec: Codec,
    train: tuple[Sequence[np.ndarray], Sequence[str]],
    test: tuple[Sequence[np.ndarray], Sequence[str]],
    *,
    layers: Sequence[int],
    hidden: int,
    num_layers: int,
    kernel_size: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Encodes `train` / `test` (waveforms, transcripts) and runs `probe_codes` on them."""
    t0 = time.time()
    train_codes = encode_all(codec, train[0], progress=progress)
    test_codes = encode_all(codec, test[0], progress=progress)
    encode_seconds = time.time() - t0
    result = probe_codes(
        codebooks(codec),
        (train_codes, train[1]),
        (test_codes, test[1]),
        layers=layers,
        hidden=hidden,
        num_layers=num_layers,
        kernel_size=kernel_size,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
    )
    result["encode_seconds"] = encode_seconds
    return result


def probe_configured(
    config: ml_collections.ConfigDict,
    codec: Codec,
    train: tuple[Sequence[np.ndarray], Sequence[str]],
    test: tuple[Sequence[np.ndarray], Sequence[str]],
    *,
    layers: Sequence[int],
    progress: bool = True,
) -> dict[str, Any]:
    """`probe_layers` with the probe's size, steps and seed from the config."""
    pc = config.probe
    return probe_layers(
        codec,
        train,
        test,
        layers=layers,
        hidden=int(pc.hidden),
        num_layers=int(pc.num_layers),
        kernel_size=int(pc.kernel_size),
        steps=int(pc.steps),
        batch_size=int(pc.batch_size),
        learning_rate=float(pc.learning_rate),
        seed=int(config.seed),
        progress=progress,
    )


def probe_codes(
    books: np.ndarray,
    train: tuple[Sequence[np.ndarray], Sequence[str]],
    test: tuple[Sequence[np.ndarray], Sequence[str]],
    *,
    layers: Sequence[int],
    hidden: int,
    num_layers: int,
    kernel_size: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """One probe per layer on (codes [n_q, T], transcript) pairs; codebooks [n_q, K, D].

    Returns {"layers": {"rvq<l>": {"cer", "train_seconds", "final_loss", "example"}}, ...}.
    """
    train_codes, test_codes = train[0], test[0]
    dim = int(books.shape[-1])
    result: dict[str, Any] = {
        "train_utterances": len(train_codes),
        "test_utterances": len(test_codes),
        "probe": {
            "hidden": hidden,
            "num_layers": num_layers,
            "kernel_size": kernel_size,
            "steps": steps,
        },
        "layers": {},
    }
    for layer in layers:
        x_train = layer_vectors(books, train_codes, layer)
        x_test = layer_vectors(books, test_codes, layer)
        flat = np.concatenate(x_train)
        mean, std = flat.mean(0), flat.std(0) + 1e-5
        x_train = [(x - mean) / std for x in x_train]
        x_test = [(x - mean) / std for x in x_test]
        model = ctc.CTCRecognizer(
            dim,
            hidden,
            num_layers,
            kernel_size,
            stride=1,
            rngs=nnx.Rngs(seed + layer),
        )
        fit = ctc.train_ctc(
            model,
            _apply,
            [ctc.CTCExample(x, s) for x, s in zip(x_train, train[1], strict=True)],
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            length_multiple=_FRAME_BUCKET,
            seed=seed,
            desc=f"probe rvq{layer}",
            progress=progress,
        )
        hyps = ctc.transcribe(
            model, _apply, x_test, batch_size=batch_size, length_multiple=_FRAME_BUCKET
        )
        cer = ctc.char_error_rate(test[1], hyps)
        result["layers"][f"rvq{layer}"] = {
            "layer": layer,
            "cer": cer,
            "final_loss": fit.final_loss,
            "train_seconds": fit.seconds,
            "example": {"ref": test[1][0], "hyp": hyps[0]},
        }
        logging.info("probe: RVQ-%d CER %.3f", layer, cer)
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'layer':<7} {'CER':>6}  (probe trained on {result['train_utterances']} utts, "
        f"scored on {result['test_utterances']})"
    ]
    for name, v in result["layers"].items():
        lines.append(f"{name:<7} {v['cer']:>6.3f}")
    return "\n".join(lines)


def probe_path(workdir: str, split: str) -> str:
    return os.path.join(workdir, "codec", f"probe_{split}.json")


def probe_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Restores <workdir>'s codec, runs the probe (config.probe), writes
    <workdir>/codec/probe_<split>.json and returns the result."""
    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import train as codec_train

    pc = config.probe
    split = split or pc.split
    data_dir = data_dir or paths.tfds_dir(workdir)
    checkpoint_dir = paths.absolute(checkpoint_dir or codec_train.checkpoint_dir(workdir))
    codec, step = codec_train.restore_codec(config, checkpoint_dir)
    load = dict(
        data_dir=data_dir, sample_rate=codec.sample_rate, max_seconds=config.data.max_seconds
    )
    train = codec_data.load_clips(
        config.data.corpus, config.data.split, limit=int(pc.train_utterances), **load
    )
    test = codec_data.load_clips(config.data.corpus, split, limit=int(pc.test_utterances), **load)
    result = probe_configured(
        config,
        codec,
        (train.audio, train.texts),
        (test.audio, test.texts),
        layers=[int(x) for x in pc.layers],
        progress=progress,
    )
    result.update(
        corpus=config.data.corpus, split=split, codec_step=step, codec_checkpoint=checkpoint_dir
    )
    path = probe_path(workdir, split)
    paths.makedirs(os.path.dirname(path))
    paths.atomic_write_json(path, result, indent=1, sort_keys=True)  # whole or absent
    return result
