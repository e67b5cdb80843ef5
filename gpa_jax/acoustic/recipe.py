"""What the demo calls: an acoustic stage's config and its training. The evaluation of the
stages against the bounds sits above them, in `gpa_jax.evaluation.acoustic_stages`:

    from gpa_jax.acoustic import recipe
    from gpa_jax.evaluation import acoustic_stages
    tokens = "<workdir>/tokens/synthetic_speech/default"            # launch.tokenize output
    nar = recipe.train_stage("nar", tokens, "<workdir>/acoustic/nar")
    voc = recipe.train_stage("vocoder", tokens, "<workdir>/acoustic/vocoder")
    result = acoustic_stages.evaluate_stages(
        tokens, {"nar": "<workdir>/acoustic/nar", "vocoder": "<workdir>/acoustic/vocoder"},
        out_dir="<workdir>/eval/acoustic/test", data_dir="<workdir>/tfds")
    print(acoustic_stages.format_table(result))

Each call is the same as the command line (`python -m launch.train
--config=configs/acoustic_<variant>_tiny.py:<tokens>` and `python -m launch.eval_acoustic`)
and resumes / reuses what is already in its workdir. `overrides` are the command line's
`key=value` strings (e.g. ("train.num_steps=200",)); `codec_config` / `codec_checkpoint_dir`
name the frozen codec (default: configs/codec_tiny.py and the checkpoint recorded in the
token manifest).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
__all__ = ["stage_config", "train_stage"]


def stage_config(
    variant: str,
    token_dir: str,
    *,
    codec_config: str | None = None,
    codec_checkpoint_dir: str | None = None,
    overrides: Sequence[str] = (),
    size: str = "tiny",
) -> ml_collections.ConfigDict:
    """configs/acoustic_<variant>_<size>.py for `token_dir`, with the codec and overrides."""
    from gpa_jax.config_utils import load_config

    path = os.path.join(REPO, "configs", f"acoustic_{variant}_{size}.py")
    extra = list(overrides)
    if codec_config:
        extra.append(f"codec.config={codec_config}")
    if codec_checkpoint_dir:
        extra.append(f"codec.checkpoint_dir={codec_checkpoint_dir}")
    return load_config(f"{path}:{token_dir}", extra)


def train_stage(variant: str, token_dir: str, workdir: str, **kwargs: Any):
    """Trains (or resumes) one stage with the LM trainer; returns its TrainResult."""
    from gpa_jax.training import trainer

    progress = kwargs.pop("progress", True)
    return trainer.train(stage_config(variant, token_dir, **kwargs), workdir, progress=progress)
