"""Serves the chain trained in a work dir over HTTP (OpenAI-style speech endpoints).

    python -m launch.serve --workdir=W [--port=8000] [--voices=DIR] [--slots=8]

    curl -s localhost:8000/v1/audio/transcriptions -F file=@x.wav
    curl -s localhost:8000/v1/audio/speech -H 'Content-Type: application/json' \\
         -d '{"input": "hello there", "voice": "alice"}' -o y.wav
    curl -s localhost:8000/v1/audio/voice_conversion -F file=@src.wav -F reference=@r.wav -o y.wav

Endpoints, fields and errors: `gpa_jax.serving.server`. Loads the LM (params only, from
<W>/checkpoints), the codec and the acoustic stage (<W>/acoustic/<--acoustic>; "none"
decodes RVQ-1 only), the clips of --voices as named voices (file stem = name), compiles
every continuous-batching bucket (--warmup) and then listens. Requests of every task
share --slots rows of one KV cache; --max_queue more may wait; past that the server
answers 503. SIGTERM / Ctrl-C: new requests get 503, those taken are finished (at most
--drain_timeout seconds), then it exits 0.

Before any model loads: the work dir and its LM checkpoint must exist and the web
dependencies be installed (extra [serve]); else exit 2 with the reason.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from gpa_jax.errors import UserError
from launch import common

_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_ACOUSTIC = flags.DEFINE_enum("acoustic", "nar", ["nar", "vocoder", "none"],
                              "Acoustic stage for TTS/VC (none: RVQ-1-only decoding).")  # fmt: skip
_VOICES = flags.DEFINE_string("voices", None, "Folder of reference clips served as named voices.")
_SLOTS = flags.DEFINE_integer("slots", 8, "Requests decoded together (KV-cache rows).")
_MAX_QUEUE = flags.DEFINE_integer(
    "max_queue", 32, "Requests that may wait for a slot; past it: 503."
)
_STEPS = flags.DEFINE_integer("steps_per_call", 8, "Decode steps between joins of new requests.")
_MAX_JOIN = flags.DEFINE_integer("max_join", 4, "Prompts prefilled together.")
_CANDIDATES = flags.DEFINE_integer(
    "num_candidates", 0, "Sampled top-k width (0: whole vocabulary)."
)
_MAX_UPLOAD = flags.DEFINE_integer("max_upload_mb", 25, "Largest audio upload (MiB); past it: 413.")
_WARMUP = flags.DEFINE_bool("warmup", True, "Compile every bucket before listening.")
_DRAIN = flags.DEFINE_float("drain_timeout", 120.0, "Seconds to finish requests on shutdown.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = common.existing_workdir()
    from gpa_jax.training import checkpoint as ckpt_lib

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    if not ckpt_lib.saved_steps(lm_dir):
        raise UserError(f"no LM checkpoint in {lm_dir}: train the LM first (python -m "
                        f"launch.train --workdir={workdir}, or python -m launch.demo)")  # fmt: skip
    if _VOICES.value and not os.path.isdir(_VOICES.value):
        raise UserError(f"--voices {_VOICES.value!r} is not a folder")
    try:  # fastapi, uvicorn (the serve extra)
        from gpa_jax.serving import server as server_lib
    except ImportError as error:
        raise UserError(f"{error.name or error} is missing: install the serving extra "
                        "(pip install -e '.[serve]')") from None  # fmt: skip

    settings = server_lib.ServerSettings(
        slots=_SLOTS.value, max_queue=_MAX_QUEUE.value, steps_per_call=_STEPS.value,
        max_join=_MAX_JOIN.value, num_candidates=_CANDIDATES.value,
        max_upload_bytes=_MAX_UPLOAD.value << 20, warmup=_WARMUP.value,
        drain_timeout_s=_DRAIN.value, **common.stream_options(),
    )  # fmt: skip
    models = server_lib.ServeModels.from_workdir(workdir, acoustic=_ACOUSTIC.value,
                                                 voices_dir=_VOICES.value)  # fmt: skip
    if models.voices:
        logging.info("voices: %s", ", ".join(sorted(models.voices)))
    app_ = server_lib.create_app(models, settings)
    server_lib.uvicorn_server(app_, host=_HOST.value, port=_PORT.value, log_level="info",
                              timeout_graceful_shutdown=int(_DRAIN.value) or None).run()  # fmt: skip


if __name__ == "__main__":
    common.run(main)
