"""Codec encode + decode speed on this machine: real-time factor and peak memory.

    python -m launch.bench_codec --config=configs/codec_tiny.py [--workdir=W]

Times `gpa_jax.codec.api.encode_batch` / `decode_batch` (full RVQ) on --num_clips
synthetic speech-like clips of --seconds each, after one warm-up call per shape so that
compilation is reported separately (`compile_s`) rather than mixed into the rate. The
codec is the trained one in <workdir>/codec/checkpoints when there is one (speed does not
depend on the weights), else freshly initialised from the config.

Figures: rtf = (encode + decode seconds) / audio seconds for the batched call (target for
codec_tiny on CPU: <= 0.05), encode_rtf, decode_rtf, the same for one clip at a time
(`rtf_batch1`, the baseline of this invocation) and `batch_speedup` = rtf_batch1 / rtf;
peak_mb = the process's peak resident memory. The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import time

from absl import app, flags

from gpa_jax import config_utils, paths
from launch import common

config_utils.define_config_flag("configs/codec_tiny.py")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 8, "Clips per batch.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Length of each clip.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (the best is reported).")


def speechlike(num: int, seconds: float, sr: int, seed: int = 0):
    """Harmonic tones with a syllable-rate envelope and noise: deterministic test audio."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = []
    for _ in range(num):
        f0 = rng.uniform(90, 250)
        wav = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
        env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t))
        out.append((0.1 * wav * env + 0.005 * rng.normal(size=n)).astype(np.float32))
    return out


def bench(codec, clips, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` encode / decode seconds for `clips` as one batch."""
    from gpa_jax.codec import api

    sr = codec.sample_rate
    t0 = time.perf_counter()
    codes = api.encode_batch(codec, clips, sr)
    api.decode_batch(codec, codes)
    first = time.perf_counter() - t0
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        codes = api.encode_batch(codec, clips, sr)
        t1 = time.perf_counter()
        api.decode_batch(codec, codes)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    return {"encode_s": min(enc), "decode_s": min(dec), "first_call_s": first}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    import jax

    from gpa_jax.codec import train as codec_train
    from gpa_jax.codec.model import Codec

    # The work dir is optional here: without a trained codec the bench times a fresh one.
    ckpt = codec_train.checkpoint_dir(flags.FLAGS.workdir or paths.default_workdir())
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        codec, step = codec_train.restore_codec(config, ckpt)
        source = f"checkpoint step {step}"
    else:
        codec, source = Codec.from_config(config), "fresh init"
    sr = codec.sample_rate
    clips = speechlike(_NUM_CLIPS.value, _SECONDS.value, sr)
    audio_s = len(clips) * _SECONDS.value
    batched = bench(codec, clips, _REPEATS.value)
    single = bench(codec, clips[:1], _REPEATS.value)
    rtf = (batched["encode_s"] + batched["decode_s"]) / audio_s
    rtf1 = (single["encode_s"] + single["decode_s"]) / _SECONDS.value
    result = {
        "rtf": rtf,
        "encode_rtf": batched["encode_s"] / audio_s,
        "decode_rtf": batched["decode_s"] / audio_s,
        "rtf_batch1": rtf1,
        "batch_speedup": rtf1 / rtf,
        "compile_s": batched["first_call_s"] - batched["encode_s"] - batched["decode_s"],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "audio_seconds": audio_s,
        "batch": len(clips),
        "target_rtf": 0.05,
        "meets_target": rtf <= 0.05,
        "codec": source,
        "devices": f"{jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} CPUs",
    }
    print(
        f"codec {source}: {len(clips)} x {_SECONDS.value:g} s, RTF {rtf:.4f} "
        f"(encode {result['encode_rtf']:.4f}, decode {result['decode_rtf']:.4f}); "
        f"one clip at a time {rtf1:.4f}; peak {result['peak_mb']:.0f} MB"
    )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    common.run(main)
