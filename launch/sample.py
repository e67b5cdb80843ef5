"""Serves one request with the chain trained in a work dir: wav / text in, text / wav out.

    python -m launch.sample --workdir=W --task=asr --audio=x.wav
    python -m launch.sample --workdir=W --task=tts --text="hello there" --ref=r.wav --out=y.wav
    python -m launch.sample --workdir=W --task=vc  --audio=src.wav --ref=r.wav --out=y.wav
    python -m launch.sample --workdir=W --task=se  --audio=noisy.wav --out=clean.wav
    python -m launch.sample --workdir=W --task=tts --text="hello" --ref=r.wav --stream

Audio is read with `gpa_jax.audio.io.load_audio` (any soundfile format, mono-ised,
resampled to the codec's rate; unreadable / empty / truncated / corrupt files are an
error naming the file), encoded by the codec, served by the LM sampler (params only from <W>/checkpoints,
the task's sampling defaults), completed by the acoustic stage (<W>/acoustic/<variant>)
with the reference's codes as the voice prompt, and decoded; ASR loads no acoustic stage. SE (speech enhancement, for an LM trained with
it: tasks.rates.se > 0) takes no --ref: the noisy clip's own codes are the acoustic
stage's voice prompt (the only recording of the voice there is; `Request.se`), so the
acoustic stage may carry some of its noise into RVQ-2..N. An LM trained without SE
refuses --task=se before any model loads.
Before any model loads (seconds): the work dir and its LM checkpoint must exist, --out's
folder is created, and the inputs' headers are read: a source longer than the LM can
take (`max_source_frames`, stated in seconds) is refused undecoded, only the first
ref_max_frames of --ref reach the LM (the acoustic stage's voice prompt reads its own
length, data.prompt_max_frames, when longer), and a --ref shorter than the LM config's
tasks.ref_min_frames is refused (--allow_short_ref serves it with a warning). These and a
request the sampler rejects (empty text, ...) exit with status 2 and the reason.

--stream (tts, vc, se): the audio is made chunk by chunk while the LM generates
(`gpa_jax.sampling.streaming`); each chunk is logged with its time since the request, the
first one being the time to first chunk, and the chunks are joined into --out.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from gpa_jax.errors import UserError
from launch import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TASK = flags.DEFINE_enum("task", None, ["asr", "tts", "vc", "se"], "Task to run.", required=True)
_AUDIO = flags.DEFINE_string("audio", None, "Source speech (asr, vc), noisy speech (se).")
_REF = flags.DEFINE_string("ref", None, "Reference clip of the target voice (tts, vc).")
_TEXT = flags.DEFINE_string("text", None, "Text to speak (tts).")
_OUT = flags.DEFINE_string("out", "sample.wav", "Output wav (tts, vc, se); its folder is created.")
_ACOUSTIC = flags.DEFINE_enum("acoustic", "nar", ["nar", "vocoder"], "Acoustic stage.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (tts, vc).")
_STREAM = flags.DEFINE_bool("stream", False, "tts/vc/se: synthesize in chunks as tokens arrive.")
_SHORT_REF = flags.DEFINE_bool(
    "allow_short_ref", False,
    "Serve a --ref shorter than the LM's tasks.ref_min_frames (with a warning) instead of "
    "refusing it: the LM was trained on longer references and clones such a voice poorly.",
)  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    task = _TASK.value
    needs = {"asr": ("audio",), "tts": ("text", "ref"), "vc": ("audio", "ref"), "se": ("audio",)}[task]
    given = {"audio": _AUDIO.value, "ref": _REF.value, "text": _TEXT.value}
    missing = [f"--{n}" for n in needs if not given[n]]
    if missing:
        raise app.UsageError(f"--task={task} needs {' and '.join(missing)}")
    if task == "asr" and _STREAM.value:
        raise app.UsageError("--stream makes audio (tts, vc, se); --task=asr prints a transcript")

    # Everything that can be checked without a model is checked first, in seconds: the
    # work dir, the output folder, the input files' headers and lengths.
    workdir = common.existing_workdir()
    if task != "asr":
        common.output_file(_OUT.value)
    from gpa_jax import config_utils
    from gpa_jax.sampling import config_from_checkpoint
    from gpa_jax.serving.inputs import InputLimits
    from gpa_jax.training import checkpoint as ckpt_lib

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    if not ckpt_lib.saved_steps(lm_dir):
        raise UserError(f"no LM checkpoint in {lm_dir}: train the LM first (python -m "
                        f"launch.train --workdir={workdir}, or python -m launch.demo)")  # fmt: skip
    lm_config = config_from_checkpoint(lm_dir)
    if task == "se":
        from gpa_jax.tasks.config import task_rate

        if task_rate(lm_config.tasks, "se") <= 0:
            raise UserError(
                f"the LM in {lm_dir} was not trained for se (tasks.rates.se is 0 or absent): "
                "train one with --config=configs/gpa_tiny.py:se on tokens made with "
                "launch.tokenize --noisy_inputs"
            )
    codec_config = config_utils.load_config(os.path.join(REPO, "configs", "codec_tiny.py"))
    limits = InputLimits(lm_config, codec_config)
    rate = limits.sample_rate
    wavs = {}
    if "ref" in needs:
        wavs["ref"] = limits.load_reference(
            given["ref"], "--ref", allow_short=_SHORT_REF.value,
            hint=". Give a longer clip, or --allow_short_ref to serve it",
        )  # fmt: skip
    if "audio" in needs:
        wavs["audio"] = limits.load_source(given["audio"], "--audio", task,
                                           reference_wav=wavs.get("ref"),
                                           hint=". Cut the clip or serve it in parts")  # fmt: skip

    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.audio import io as audio_io
    from gpa_jax.evaluation import harness
    from gpa_jax.serving.inputs import RequestBuilder

    models = harness.load_models(
        workdir, lm_config=lm_config, codec_config=codec_config, speaker_encoder="",
        acoustic_variant=None if task == "asr" else _ACOUSTIC.value,  # ASR needs no acoustic stage
    )  # fmt: skip
    codec = models.codec
    if int(codec.sample_rate) != rate:
        raise ValueError(f"the codec runs at {codec.sample_rate} Hz, expected {rate}")
    if (
        "ref" in wavs and models.acoustic is not None
        and models.acoustic.prompt_frames > limits.frames(wavs["ref"]) >= limits.ref_max_frames
    ):  # fmt: skip
        # The acoustic stage's voice prompt is longer than the LM's reference, which cut
        # the clip: read that much (the sampler keeps the first ref_max_frames for the LM).
        limits.voice_frames = models.acoustic.prompt_frames
        wavs["ref"] = limits.load_reference(given["ref"], "--ref", allow_short=True)
    builder = RequestBuilder.from_models(codec, models.sampler, lm_config, codec_config, workdir)
    inputs = dict(source_wav=wavs.get("audio"), reference_wav=wavs.get("ref"))
    if task == "asr":
        request = builder.build("asr", id=_AUDIO.value, **inputs)
    elif task == "tts":
        request = builder.build("tts", text=_TEXT.value, id="tts", seed=_SEED.value, **inputs)
    else:
        request = builder.build(task, id=_AUDIO.value, seed=_SEED.value, **inputs)
    if _STREAM.value:
        _stream(models, request)
        return
    (result,) = models.sampler.generate([request])
    if not result.ok:
        print(f"request rejected: {result.error}", file=sys.stderr)
        sys.exit(2)
    if task == "asr":
        print(result.text)
        return
    (wav,) = acoustic_api.synthesize(models.acoustic, codec, [result.rvq1], [request.voice_prompt])
    audio_io.save_wav(_OUT.value, wav, rate)
    print(f"wrote {_OUT.value}: {len(wav) / rate:.2f} s ({len(result.rvq1)} frames, stop: {result.stop})")


def _stream(models, request) -> None:
    import numpy as np

    from gpa_jax.audio import io as audio_io
    from gpa_jax.sampling import streaming

    codec = models.codec
    rate = int(codec.sample_rate)
    pieces = []
    for chunk in streaming.stream_audio(
        models.sampler, codec, [request], **common.stream_options(),
        synthesize=streaming.synthesizer(codec, models.acoustic),
    ):  # fmt: skip
        if chunk.error:
            print(f"request rejected: {chunk.error}", file=sys.stderr)
            sys.exit(2)
        pieces.append(chunk.wav)
        print(f"chunk {len(pieces)}: {len(chunk.wav) / rate:.2f} s of audio at "
              f"{chunk.elapsed_s:.3f} s{' (first chunk)' if len(pieces) == 1 else ''}")  # fmt: skip
    wav = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    audio_io.save_wav(_OUT.value, wav, rate)
    print(f"wrote {_OUT.value}: {len(wav) / rate:.2f} s in {len(pieces)} chunks")


if __name__ == "__main__":
    common.run(main)
