"""Export: the chain a work dir trained, as files that other stacks (and this one) load.

    export_workdir(workdir, out_dir, codec_config=..., acoustic=("nar",))

writes

    <out>/config.json              the LM as a Hugging Face Qwen3ForCausalLM (qwen3.hf_config)
    <out>/generation_config.json   <eos> / <pad> ids
    <out>/model.safetensors        its weights, HF names (qwen3.to_hf_state_dict)
    <out>/gpa_vocab.json           the vocabulary layout and each task's prompt layout
    <out>/text_tokenizer.model     the SentencePiece model of the text ids (spm vocabularies)
    <out>/codec/                   config.json (the codec's training config) + model.safetensors
    <out>/acoustic/<variant>/      config.json (the stage's training config) + model.safetensors
    <out>/gpa_export.json          what was exported, from which checkpoint steps

so `transformers.Qwen3ForCausalLM.from_pretrained(out)` (or vLLM, which serves that
architecture) runs the LM, and `load_codec(out/codec)` / `load_acoustic(out/acoustic/nar)`
rebuild the flax modules without the work dir. There is no HF tokenizer: the vocabulary
joins a text tokenizer with control and audio ids, so prompts are token ids built from
gpa_vocab.json (its "tasks" section spells each task's prompt; see `vocabulary_layout`).

Codec and acoustic files hold every variable of the module but its RNG streams (those only
drive training-time randomness: quantizer dropout, k-means restarts), named by their nnx
path joined with dots; the loaders start those streams fresh from seed 0.

The export is written under <out>.partial and renamed into place when complete, so a
folder named <out> is always a whole export.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gpa_jax.errors import UserError
from gpa_jax.models.config import LMConfig
from gpa_jax.serving import qwen3
from gpa_jax.serving.qwen3 import ExportError
from gpa_jax.tasks import layout
from gpa_jax.tasks.vocab import CONTROL_TOKENS, EOS_ID, PAD_ID, TEXT_OFFSET, SpeechVocabulary

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GENERATION_CONFIG = "generation_config.json"
VOCAB_FILE = "gpa_vocab.json"
TEXT_TOKENIZER = "text_tokenizer.model"
MANIFEST = "gpa_export.json"
CODEC_DIR = "codec"
ACOUSTIC_DIR = "acoustic"
FORMAT_VERSION = 1
# Slots of the prompt templates in gpa_vocab.json.
SLOTS = {
    "{text}": "the text's ids: its text-tokenizer ids plus text.offset, after "
    "gpa_jax.text.normalize_transcript (NFKC, lower case, dashes to spaces, then only a-z, "
    "0-9, in-word apostrophes and single spaces)",
    "{reference}": "reference codes [reference.layers, frames] of the target voice (at most "
    "reference.max_frames frames), frame-major: frame f gives audio.stream_ranges[k][0] + "
    "codes[k, f] for k = 0 .. layers-1",
    "{source}": "the source's RVQ-1 codes plus audio.stream_ranges[0][0]",
}


# --- the LM -------------------------------------------------------------------------------


def vocabulary_layout(
    vocab: SpeechVocabulary, *, ref_layers: int, ref_max_frames: int, sampling: Any = None,
    tts_text: str = "transcript",
) -> dict[str, Any]:
    """gpa_vocab.json: the id layout, and per task its prompt template (ids and slots,
    made by `layout.input_segments` itself), output id range and sampling defaults."""
    from gpa_jax.sampling.config import sampling_config

    sampling = sampling_config() if sampling is None else sampling
    text: dict[str, Any] = {"offset": TEXT_OFFSET, "size": vocab.text_size}
    if _spm_file(vocab):
        text.update(kind="sentencepiece", model_file=TEXT_TOKENIZER)
    else:  # seqio.ByteVocabulary: byte b is text id b + its special-token count
        text.update(kind="utf-8 bytes", byte_offset=int(vocab.text_vocab.encode("a")[0]) - ord("a"))
    # What the TTS {text} slot spells (config.tasks.tts_text); ASR always emits the transcript.
    text["tts_text"] = tts_text if tts_text == "transcript" else (
        f"{tts_text}: espeak-ng en-us IPA of the normalised transcript, no stress marks, "
        "words separated by one space (gpa_jax.text.phonemize)")
    tasks = {}
    for task in layout.OUTPUT_KIND:
        pieces = layout.input_segments(
            task, vocab, text="{text}", reference="{reference}", source="{source}"
        )
        template: list[int | str] = [layout.PROMPT_START]
        for piece in pieces:
            template += piece if isinstance(piece, list) else [piece]
        section = sampling[task]
        tasks[task] = {
            "prompt": template,
            "output": layout.OUTPUT_KIND[task],
            "output_ids": list(layout.output_range(task, vocab)),
            "stop_id": EOS_ID,
            "sampling": {
                k: section[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")
            },
        }
    return {
        "format_version": FORMAT_VERSION,
        "vocab_size": vocab.vocab_size,
        "used_size": vocab.used_size,
        "special": {"pad": PAD_ID, "eos": EOS_ID, "prompt_start": layout.PROMPT_START},
        "control_tokens": {name: i for i, name in enumerate(CONTROL_TOKENS)},
        "text": text,
        "audio": {
            "codebook_size": vocab.codebook_size,
            "streams": vocab.num_audio_streams,
            "stream_ranges": [list(vocab.audio_range(k)) for k in range(vocab.num_audio_streams)],
        },
        "reference": {"layers": int(ref_layers), "max_frames": int(ref_max_frames)},
        "slots": SLOTS,
        "tasks": tasks,
        "notes": "A prompt is the task's template with its slots filled; generate until "
        "stop_id, allowing only output_ids (and stop_id). Audio outputs are RVQ-1 codes "
        "(id - stream_ranges[0][0]) for the acoustic stage and the codec decoder.",
    }


def _tts_text(config: ml_collections.ConfigDict) -> str:
    tasks = config.get("tasks")
    return "transcript" if tasks is None else str(tasks.get("tts_text", "transcript"))


def _spm_file(vocab: SpeechVocabulary) -> str:
    return getattr(vocab.text_vocab, "sentencepiece_model_file", "") or ""


def write_lm(
    out_dir: str,
    config: ml_collections.ConfigDict,
    params: nnx.State | nnx.Module,
    vocab: SpeechVocabulary,
    *,
    ref_layers: int,
    ref_max_frames: int,
) -> None:
    """The LM of `config` (its params) as an HF Qwen3ForCausalLM folder + gpa_vocab.json."""
    from safetensors.numpy import save_file

    cfg = LMConfig.from_config(config.model)
    qwen3.check_exportable(cfg)
    if vocab.vocab_size > cfg.vocab_size:
        raise ExportError(f"vocabulary {vocab} has more ids than the model's {cfg.vocab_size}")
    os.makedirs(out_dir, exist_ok=True)
    # transformers refuses safetensors files whose metadata names no known framework.
    save_file(
        qwen3.to_hf_state_dict(cfg, params),
        os.path.join(out_dir, WEIGHTS),
        metadata={"format": "pt"},
    )
    _write_json(os.path.join(out_dir, CONFIG), qwen3.hf_config(cfg))
    _write_json(
        os.path.join(out_dir, GENERATION_CONFIG), {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    )
    layout_json = vocabulary_layout(vocab, ref_layers=ref_layers, ref_max_frames=ref_max_frames,
                                   tts_text=_tts_text(config))
    _write_json(os.path.join(out_dir, VOCAB_FILE), layout_json)
    if _spm_file(vocab):
        shutil.copyfile(_spm_file(vocab), os.path.join(out_dir, TEXT_TOKENIZER))


# --- codec and acoustic stage: module state <-> safetensors ------------------------------------


def module_tensors(module: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of `module` but its RNG streams, as host arrays named by nnx path."""
    state = nnx.state(module, nnx.Not(nnx.RngState))
    return {
        ".".join(str(p) for p in path): np.asarray(jax.device_get(var[...]))
        for path, var in nnx.to_flat_state(state)
    }


def write_module(out_dir: str, module: nnx.Module, config: ml_collections.ConfigDict) -> None:
    """config.json (the module's training config) + model.safetensors (`module_tensors`)."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    save_file(
        module_tensors(module), os.path.join(out_dir, WEIGHTS), metadata={"format": "gpa_jax"}
    )
    _write_json(os.path.join(out_dir, CONFIG), json.loads(config.to_json_best_effort()))


def read_module_config(directory: str) -> ml_collections.ConfigDict:
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} missing: {directory!r} is not an exported codec / acoustic stage"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def fill_module(module: nnx.Module, directory: str) -> nnx.Module:
    """Sets every variable of `module` (abstract or not) from <directory>/model.safetensors;
    RNG streams start fresh from seed 0. Names, shapes and dtypes must match exactly."""
    from safetensors.numpy import load_file

    path = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} missing: {directory!r} is not an exported codec / acoustic stage"
        )
    tensors = load_file(path)
    wanted = set()
    for keys, var in nnx.to_flat_state(nnx.state(module)):
        name = ".".join(str(p) for p in keys)
        if isinstance(var, nnx.RngKey):
            var.set_value(jax.random.key(0))
            continue
        if isinstance(var, nnx.RngCount):
            var.set_value(jnp.zeros(var.shape, var.dtype))
            continue
        wanted.add(name)
        if name not in tensors:
            raise ExportError(f"{path} has no tensor {name!r} (a {var.dtype} {tuple(var.shape)}); "
                              "was it exported from a module of this config?")  # fmt: skip
        value = tensors[name]
        if value.shape != tuple(var.shape) or value.dtype != np.dtype(var.dtype):
            raise ExportError(f"{path}: tensor {name!r} is {value.dtype} {value.shape}, the "
                              f"module of its config.json needs {np.dtype(var.dtype)} {tuple(var.shape)}")  # fmt: skip
        var.set_value(jnp.asarray(value))
    extra = sorted(set(tensors) - wanted)
    if extra:
        raise ExportError(f"{path} has tensors the module of its config.json lacks: {extra[:8]}")
    return module


def load_codec(directory: str):
    """The Codec exported into `directory` (config.json + model.safetensors)."""
    from gpa_jax.codec.model import Codec

    config = read_module_config(directory)
    return fill_module(nnx.eval_shape(lambda: Codec.from_config(config)), directory)


def load_acoustic(directory: str):
    """The AcousticModel exported into `directory` (config.json + model.safetensors)."""
    from gpa_jax.acoustic.config import AcousticConfig
    from gpa_jax.acoustic.model import AcousticModel

    config = read_module_config(directory)
    cfg = AcousticConfig.from_config(config.model)
    # The vocoder's codebooks are a variable of the model, read from the file like the rest.
    books = np.zeros((cfg.n_q, cfg.codebook_size, cfg.latent_dim), np.float32)
    model = nnx.eval_shape(lambda: AcousticModel(
        cfg, rngs=nnx.Rngs(0), sharding_rules=config.get("sharding_rules"),
        codebooks=books if cfg.variant == "vocoder" else None,
    ))  # fmt: skip
    return fill_module(model, directory)


def load_acoustic_stage(directory: str, codec=None, **kwargs):
    """`AcousticStage` of an exported acoustic stage, with its training prompt / chunk
    lengths. NAR's default ("expected") decoding reads the codebooks of `codec` (the
    exported one: `load_codec`); without it pass nar_decoding="greedy"."""
    from gpa_jax.acoustic.api import DEFAULT_NAR_DECODING, AcousticStage

    config = read_module_config(directory)
    expected = kwargs.get("nar_decoding", DEFAULT_NAR_DECODING) == "expected"
    if config.model.variant == "nar" and expected and codec is None and "codebooks" not in kwargs:
        raise ValueError("the NAR stage's expected decoding needs the codec's codebooks: pass "
                         "codec=load_codec(<export>/codec), or nar_decoding='greedy'")  # fmt: skip
    return AcousticStage.from_model(load_acoustic(directory), config, codec=codec, **kwargs)


# --- a work dir ---------------------------------------------------------------------------------


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def _one_device_mesh():
    from gpa_jax import sharding as sharding_lib
    from gpa_jax.models.config import mesh_config

    # Export reads everything to the host: one device holds the restored arrays.
    return sharding_lib.make_mesh(mesh_config(shape=(1, 1, 1)), devices=jax.devices()[:1])


def _checked_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.isfile(out_dir):
        raise UserError(f"--out {out_dir!r} is a file; give a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
            raise UserError(f"--out {out_dir!r} is a non-empty folder that holds no export "
                            f"({MANIFEST}); give a new or empty folder")  # fmt: skip
        if not overwrite:
            raise UserError(f"--out {out_dir!r} holds an earlier export; pass --overwrite to "
                            "replace it")  # fmt: skip
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {parent!r} for --out: {error.strerror}") from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write --out {out_dir!r}: {parent!r} is not writable")


def export_workdir(
    workdir: str,
    out_dir: str,
    *,
    codec_config: ml_collections.ConfigDict | None,
    acoustic: Sequence[str] = (),
    step: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports the LM (step `step`, default latest), the codec (unless codec_config is None)
    and the `acoustic` stages (<workdir>/acoustic/<variant>) into `out_dir`; returns the
    manifest. Every check that needs no model (paths, steps, what Qwen3 can express) runs
    before anything is restored."""
    from gpa_jax.codec import train as codec_train
    from gpa_jax.sampling import config_from_checkpoint, sampling_config
    from gpa_jax.training import checkpoint as ckpt_lib
    from gpa_jax.training.data_iter import task_vocabulary

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    steps = ckpt_lib.saved_steps(lm_dir)
    if not steps:
        raise UserError(f"no LM checkpoint in {lm_dir}: train the LM first (python -m "
                        f"launch.train --workdir={workdir}, or python -m launch.demo)")  # fmt: skip
    if step is not None and step not in steps:
        raise UserError(f"--step={step}: {lm_dir} holds steps {steps}")
    lm_step = steps[-1] if step is None else step
    lm_config = config_from_checkpoint(lm_dir, lm_step)
    qwen3.check_exportable(LMConfig.from_config(lm_config.model))
    codec_dir = codec_train.checkpoint_dir(workdir)
    if codec_config is not None and not ckpt_lib.saved_steps(codec_dir):
        raise UserError(f"no codec checkpoint in {codec_dir}; train it (python -m "
                        "launch.train_codec) or export without it (--nocodec)")  # fmt: skip
    stage_dirs = {}
    for variant in acoustic:
        stage_ckpt = ckpt_lib.checkpoint_dir(os.path.join(workdir, ACOUSTIC_DIR, variant))
        if not ckpt_lib.saved_steps(stage_ckpt):
            raise UserError(f"no {variant} acoustic checkpoint in {stage_ckpt}; train it or "
                            "leave it out (--acoustic=none exports no stage)")  # fmt: skip
        stage_dirs[variant] = stage_ckpt
    _checked_out_dir(out_dir, overwrite)
    vocab = task_vocabulary(lm_config, workdir)

    partial = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # an earlier export that did not finish
    try:
        mesh = _one_device_mesh()
        sampling = sampling_config()
        tasks = lm_config.tasks
        params = ckpt_lib.restore_params_only(lm_dir, lm_config, mesh, lm_step)
        write_lm(
            partial, lm_config, params, vocab,
            ref_layers=int(sampling.ref_layers or tasks.ref_layers),
            ref_max_frames=int(sampling.ref_max_frames or tasks.ref_max_frames),
        )  # fmt: skip
        del params
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "workdir": os.path.abspath(workdir),
            "lm": {
                "checkpoint": os.path.abspath(lm_dir),
                "step": lm_step,
                "architecture": "Qwen3ForCausalLM",
            },
            "codec": None,
            "acoustic": {},
        }
        if codec_config is not None:
            codec, codec_step = codec_train.restore_codec(codec_config, codec_dir)
            write_module(os.path.join(partial, CODEC_DIR), codec, codec_config)
            manifest["codec"] = {"checkpoint": os.path.abspath(codec_dir), "step": codec_step,
                                 "folder": CODEC_DIR}  # fmt: skip
        for variant, stage_ckpt in stage_dirs.items():
            stage_config = config_from_checkpoint(stage_ckpt)
            stage_step = ckpt_lib.saved_steps(stage_ckpt)[-1]
            model = ckpt_lib.restore_model(stage_ckpt, stage_config, mesh, stage_step)
            folder = os.path.join(ACOUSTIC_DIR, variant)
            write_module(os.path.join(partial, folder), model, stage_config)
            manifest["acoustic"][variant] = {"checkpoint": os.path.abspath(stage_ckpt),
                                             "step": stage_step, "folder": folder}  # fmt: skip
        _write_json(os.path.join(partial, MANIFEST), manifest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # no half export left (full disk, ^C)
        raise
    if os.path.isdir(out_dir):  # empty, or an earlier export that --overwrite replaces
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return manifest
