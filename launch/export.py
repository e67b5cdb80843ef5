"""Exports the chain trained in a work dir: the LM as a Hugging Face Qwen3 checkpoint, the
codec and acoustic stage as safetensors (gpa_jax.serving.export says what goes where).

    python -m launch.export --workdir=W --out=DIR
    python -m launch.export --workdir=W --out=DIR --acoustic=nar,vocoder --step=2000
    python -m launch.export --workdir=W --out=DIR --nocodec --acoustic=none   # the LM only

The LM must be one Qwen3ForCausalLM can represent: model.audio_input='tokens', a causal
prompt (model.prefix_bidirectional=False) and QK-norm; anything else is refused, naming
each feature, before any weights are read (exit status 2, like every user error).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from launch import common

_OUT = flags.DEFINE_string(
    "out", None, "Folder to write the export into (new or empty).", required=True
)
_CODEC_CONFIG = flags.DEFINE_string(
    "codec_config", "configs/codec_tiny.py", "Codec config the work dir's codec was trained with."
)
_CODEC = flags.DEFINE_bool("codec", True, "Export the codec (<W>/codec).")
_ACOUSTIC = flags.DEFINE_list(
    "acoustic",
    ["nar"],
    "Acoustic stages to export (<W>/acoustic/<variant>): nar, vocoder; none for none.",
)
_STEP = flags.DEFINE_integer("step", None, "LM checkpoint step (default: the latest).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier export in --out.")
_VARIANTS = ("nar", "vocoder")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    acoustic = [] if _ACOUSTIC.value == ["none"] else list(_ACOUSTIC.value)
    unknown = sorted(set(acoustic) - set(_VARIANTS))
    if unknown:
        raise app.UsageError(f"--acoustic={','.join(_ACOUSTIC.value)}: unknown {unknown}; "
                             f"give some of {', '.join(_VARIANTS)}, or none")  # fmt: skip
    workdir = common.existing_workdir()
    from gpa_jax import config_utils
    from gpa_jax.serving import export

    spec = _CODEC_CONFIG.value
    if not os.path.isfile(spec.partition(":")[0]) and os.path.isfile(
        os.path.join(REPO, spec.partition(":")[0])
    ):
        spec = os.path.join(REPO, spec)  # the default names the repository's configs/
    codec_config = config_utils.load_config(spec) if _CODEC.value else None
    manifest = export.export_workdir(
        workdir, _OUT.value, codec_config=codec_config, acoustic=acoustic, step=_STEP.value,
        overwrite=_OVERWRITE.value,
    )  # fmt: skip
    print(f"wrote {_OUT.value}")
    print(json.dumps(manifest))


if __name__ == "__main__":
    common.run(main)
