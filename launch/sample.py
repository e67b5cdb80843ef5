"""Serves one request with the chain trained in a work dir: wav / text in, text / wav out.

    python -m launch.sample --workdir=W --task=asr --audio=x.wav
    python -m launch.sample --workdir=W --task=tts --text="hello there" --ref=r.wav --out=y.wav
    python -m launch.sample --workdir=W --task=vc  --audio=src.wav --ref=r.wav --out=y.wav
    python -m launch.sample --workdir=W --task=tts --text="hello" --ref=r.wav --stream

Audio is read with `gpa_jax.audio.io.load_audio` (any soundfile format, mono-ised,
resampled to the codec's rate; unreadable / empty / corrupt files are an error naming the
file), encoded by the codec, served by the LM sampler (params only from <W>/checkpoints,
the task's sampling defaults), completed by the acoustic stage (<W>/acoustic/<variant>)
with the reference's codes as the voice prompt, and decoded. A request the sampler
rejects (empty text, over-long input, ...) exits with status 2 and its reason.

--stream (tts, vc): the audio is made chunk by chunk while the LM generates
(`gpa_jax.sampling.streaming`); each chunk is logged with its time since the request, the
first one being the time to first chunk, and the chunks are joined into --out.
"""

from __future__ import annotations

import sys

from absl import app, flags

from launch import common

_TASK = flags.DEFINE_enum("task", None, ["asr", "tts", "vc"], "Task to run.", required=True)
_AUDIO = flags.DEFINE_string("audio", None, "Source speech (asr, vc).")
_REF = flags.DEFINE_string("ref", None, "Reference clip of the target voice (tts, vc).")
_TEXT = flags.DEFINE_string("text", None, "Text to speak (tts).")
_OUT = flags.DEFINE_string("out", "sample.wav", "Output wav (tts, vc).")
_ACOUSTIC = flags.DEFINE_enum("acoustic", "nar", ["nar", "vocoder"], "Acoustic stage.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (tts, vc).")
_STREAM = flags.DEFINE_bool("stream", False, "tts/vc: synthesize in chunks as tokens arrive.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    task = _TASK.value
    needs = {"asr": ("audio",), "tts": ("text", "ref"), "vc": ("audio", "ref")}[task]
    given = {"audio": _AUDIO.value, "ref": _REF.value, "text": _TEXT.value}
    missing = [f"--{n}" for n in needs if not given[n]]
    if missing:
        raise app.UsageError(f"--task={task} needs {' and '.join(missing)}")

    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.audio import io as audio_io
    from gpa_jax.codec import api as codec_api
    from gpa_jax.evaluation import harness
    from gpa_jax.sampling import Request

    # Audio first: a bad file fails in a second, before any model is loaded.
    rate = 16_000  # the codec rate (checked against the loaded codec below)
    wavs = {}
    for name in ("audio", "ref"):
        if given[name] and name in needs:
            try:
                wavs[name] = audio_io.load_audio(given[name], rate)
            except audio_io.AudioError as error:
                print(f"bad --{name}: {error}", file=sys.stderr)
                sys.exit(1)
    models = harness.load_models(common.workdir(), acoustic_variant=_ACOUSTIC.value, speaker_encoder="")
    codec = models.codec
    if int(codec.sample_rate) != rate:
        raise ValueError(f"the codec runs at {codec.sample_rate} Hz, expected {rate}")
    codes = {name: codec_api.encode(codec, wav, rate) for name, wav in wavs.items()}

    if task == "asr":
        request = Request.asr(codes["audio"][:1], id=_AUDIO.value)
    elif task == "tts":
        request = Request.tts(_TEXT.value, codes["ref"], id="tts", seed=_SEED.value)
    else:
        request = Request.vc(codes["audio"][:1], codes["ref"], id=_AUDIO.value, seed=_SEED.value)
    if _STREAM.value and task != "asr":
        _stream(models, request)
        return
    (result,) = models.sampler.generate([request])
    if not result.ok:
        print(f"request rejected: {result.error}", file=sys.stderr)
        sys.exit(2)
    if task == "asr":
        print(result.text)
        return
    (wav,) = acoustic_api.synthesize(models.acoustic, codec, [result.rvq1], [request.reference])
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
    app.run(main)
