"""Export: codec and acoustic stages round-trip through safetensors (same variables, same
outputs), a work dir's chain exports into one folder (LM as HF Qwen3 with logit parity,
the vocabulary side file builds the sampler's prompts), and what cannot be exported is
refused with one message (status 2 from the command line)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from seqio import ByteVocabulary

from gpa_jax.acoustic.api import AcousticStage
from gpa_jax.acoustic.config import AcousticConfig
from gpa_jax.acoustic.model import AcousticModel
from gpa_jax.codec import api as codec_api
from gpa_jax.codec import train as codec_train
from gpa_jax.codec.model import Codec
from gpa_jax.config_utils import load_config
from gpa_jax.errors import UserError
from gpa_jax.models import LMConfig, lm_model_config
from gpa_jax.serving import export
from gpa_jax.tasks.config import default_token_dir
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training.config import lm_config, optimizer_config
from gpa_jax.training.data_iter import task_vocabulary
from gpa_jax.training.train_step import make_optimizer
from tests.acoustic.test_data import tiny_config as acoustic_tiny_config
from tests.codec.test_train import tiny_config as codec_tiny_config
from tests.conftest import REPO
from tests.models.helpers import numpy_model
from tests.serving.test_qwen3 import (
    PARITY_ATOL,
    TINY,
    hf_logits,
    ours_logits,
    task_prompts,
    task_requests,
)
from tests.tasks.conftest import CODEBOOK, N_Q, small_config, write_corpus


def random_module(make, seed=0):
    """The module `make` builds, every variable drawn with numpy (no JAX RNG compiles);
    codebook flags set, so the quantizers count as initialised."""
    module = nnx.eval_shape(make)
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(module)):
        if isinstance(var, nnx.RngKey):
            var.set_value(jax.random.key(seed))
        elif isinstance(var, nnx.RngCount):
            var.set_value(jnp.zeros(var.shape, var.dtype))
        elif np.dtype(var.dtype) == np.bool_:
            var.set_value(jnp.ones(var.shape, bool))
        else:
            var.set_value(jnp.asarray(0.2 * rng.standard_normal(var.shape), var.dtype))
    return module


def assert_same_tensors(a: nnx.Module, b: nnx.Module):
    ta, tb = export.module_tensors(a), export.module_tensors(b)
    assert ta.keys() == tb.keys()
    for name, value in ta.items():
        assert tb[name].dtype == value.dtype, name
        np.testing.assert_array_equal(tb[name], value, err_msg=name)


# --- codec and acoustic stage ---------------------------------------------------------------


def test_codec_round_trips_and_codes_and_decodes_alike(tmp_path):
    """codec_tiny (RVQ-1 from its CTC content teacher, which the export carries)."""
    config = load_config(os.path.join(REPO, "configs", "codec_tiny.py"))
    codec = random_module(lambda: Codec.from_config(config))
    export.write_module(str(tmp_path), codec, config)
    loaded = export.load_codec(str(tmp_path))
    assert_same_tensors(codec, loaded)
    wav = 0.1 * np.sin(np.arange(4000) * 0.05).astype(np.float32)
    codes = codec_api.encode(codec, wav, codec.sample_rate)
    np.testing.assert_array_equal(codec_api.encode(loaded, wav, codec.sample_rate), codes)
    np.testing.assert_array_equal(codec_api.decode(loaded, codes), codec_api.decode(codec, codes))


def _acoustic(token_dir, variant):
    extra = ["model.variant=vocoder", "data.task_names=('latent',)"] if variant == "vocoder" else []
    config = acoustic_tiny_config(token_dir, *extra)
    cfg = AcousticConfig.from_config(config.model)
    books = np.random.default_rng(5).standard_normal((cfg.n_q, cfg.codebook_size, cfg.latent_dim))
    books = books.astype(np.float32) if variant == "vocoder" else None
    return config, random_module(lambda: AcousticModel(cfg, rngs=nnx.Rngs(0), codebooks=books))


@pytest.mark.parametrize("variant", ["nar", "vocoder"])
def test_acoustic_stage_round_trips_and_completes_alike(tmp_path, token_corpus, variant):
    config, model = _acoustic(token_corpus[0], variant)
    export.write_module(str(tmp_path), model, config)
    loaded = export.load_acoustic(str(tmp_path))
    assert_same_tensors(model, loaded)
    rng = np.random.default_rng(0)
    rvq1 = rng.integers(0, model.cfg.codebook_size, 20)
    prompt = rng.integers(0, model.cfg.codebook_size, (model.cfg.n_q, 12))
    stage = export.load_acoustic_stage(str(tmp_path), nar_decoding="greedy")
    assert stage.prompt_frames == int(config.data.prompt_max_frames)
    want = AcousticStage.from_model(model, config, nar_decoding="greedy").complete(rvq1, prompt)
    np.testing.assert_array_equal(stage.complete(rvq1, prompt), want)


def test_exported_files_that_do_not_fit_are_named(tmp_path, token_corpus):
    config, model = _acoustic(token_corpus[0], "nar")
    export.write_module(str(tmp_path), model, config)
    with open(tmp_path / "config.json") as f:
        changed = json.load(f)
    changed["model"]["num_layers"] += 1
    (tmp_path / "config.json").write_text(json.dumps(changed))
    with pytest.raises(export.ExportError, match=r"model.safetensors has no tensor 'layers\.2\."):
        export.load_acoustic(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not an exported"):
        export.load_codec(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="codebooks"):
        export.load_acoustic_stage(str(tmp_path))


# --- a work dir ----------------------------------------------------------------------------


def _lm_config(**model):
    vocab_size = SpeechVocabulary(
        ByteVocabulary(), num_audio_streams=N_Q, codebook_size=CODEBOOK
    ).vocab_size
    config = lm_config(model=lm_model_config(vocab_size=vocab_size, **{**TINY, **model}),
                       tasks=small_config())  # fmt: skip
    config.optimizer = optimizer_config()
    return config


def _save_trainer_checkpoint(directory, config, model, step):
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    manager = ckpt.make_manager(directory, async_save=False)
    assert ckpt.save_checkpoint(manager, step, nnx.state((model, optimizer)), config=config)
    manager.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, token_corpus):
    """A work dir as the trainers leave it: token shards, the LM (step 7), the codec (step 3)
    and the NAR acoustic stage (step 5). Returns (workdir, LM config, LM, codec, stage)."""
    root = str(tmp_path_factory.mktemp("export_workdir"))
    config = _lm_config()
    write_corpus(default_token_dir(root, config.tasks.corpus))
    model = numpy_model(LMConfig.from_config(config.model), seed=2)
    _save_trainer_checkpoint(ckpt.checkpoint_dir(root), config, model, 7)
    codec = random_module(lambda: Codec.from_config(codec_tiny_config()))
    manager = codec_train.checkpoint_manager(codec_train.checkpoint_dir(root))
    # The item restore_codec reads (the codec trainer also saves discriminator and optimizers).
    item = ocp.args.StandardSave(codec_train._saveable(codec))
    ckpt.save_step(manager, 3, ocp.args.Composite(model=item), wait=True)
    manager.close()
    stage_config, stage = _acoustic(token_corpus[0], "nar")
    stage_dir = ckpt.checkpoint_dir(os.path.join(root, "acoustic", "nar"))
    _save_trainer_checkpoint(stage_dir, stage_config, stage, 5)
    return root, config, model, codec, stage


def test_workdir_exports_lm_codec_and_acoustic_stage(workdir, tmp_path):
    root, _, _, codec, stage = workdir
    out = str(tmp_path / "export")
    manifest = export.export_workdir(root, out, codec_config=codec_tiny_config(), acoustic=["nar"])
    assert manifest["lm"]["step"] == 7 and manifest["codec"]["step"] == 3
    assert manifest["acoustic"]["nar"]["step"] == 5
    assert not os.path.exists(out + ".partial")
    for name in ("config.json", "generation_config.json", "model.safetensors", "gpa_vocab.json",
                 "gpa_export.json", "codec/config.json", "codec/model.safetensors",
                 "acoustic/nar/config.json", "acoustic/nar/model.safetensors"):  # fmt: skip
        assert os.path.isfile(os.path.join(out, name)), name
    assert_same_tensors(codec, export.load_codec(os.path.join(out, "codec")))
    assert_same_tensors(stage, export.load_acoustic(os.path.join(out, "acoustic", "nar")))
    with open(os.path.join(out, "config.json")) as f:
        hf = json.load(f)
    assert hf["architectures"] == ["Qwen3ForCausalLM"] and hf["num_hidden_layers"] == 2
    with pytest.raises(UserError, match="--overwrite"):
        export.export_workdir(root, out, codec_config=None)
    export.export_workdir(root, out, codec_config=None, overwrite=True)
    assert not os.path.exists(os.path.join(out, "codec"))  # the earlier export is replaced
    with pytest.raises(UserError, match="no vocoder acoustic checkpoint"):
        export.export_workdir(
            root, str(tmp_path / "other"), codec_config=None, acoustic=["vocoder"]
        )
    assert not os.path.exists(tmp_path / "other")


def test_vocab_side_file_builds_the_samplers_prompts(workdir, tmp_path):
    """A client with only gpa_vocab.json (no gpa_jax) builds the prompts the sampler does."""
    root, config, model, _, _ = workdir
    export.export_workdir(root, str(tmp_path / "out"), codec_config=None)
    layout = json.loads((tmp_path / "out" / "gpa_vocab.json").read_text())
    sampler_prompts = task_prompts(config, model, task_vocabulary(config, root))
    ranges, text = layout["audio"]["stream_ranges"], layout["text"]
    layers, max_frames = layout["reference"]["layers"], layout["reference"]["max_frames"]

    def reference(codes):
        codes = codes[:layers, :max_frames]
        return [
            ranges[k][0] + int(codes[k, f]) for f in range(codes.shape[1]) for k in range(layers)
        ]

    for request in task_requests():
        fill = {
            "{text}": [text["offset"] + text["byte_offset"] + b for b in (request.text or "").encode()],
            "{reference}": None if request.reference is None else reference(request.reference),
            "{source}": None if request.source is None else [ranges[0][0] + int(c) for c in request.source[0]],
        }  # fmt: skip
        prompt = []
        for item in layout["tasks"][request.task]["prompt"]:
            prompt += fill[item] if isinstance(item, str) else [item]
        np.testing.assert_array_equal(prompt, sampler_prompts[request.task], err_msg=request.task)
    assert layout["tasks"]["asr"]["output_ids"][1] == text["offset"] + text["size"]
    assert layout["tasks"]["tts"]["output_ids"] == ranges[0]
    assert layout["control_tokens"]["<|tts|>"] == layout["tasks"]["tts"]["prompt"][1]
    assert text["tts_text"] == "transcript"  # the fixture's LM spells TTS text as transcripts
    phonemes = export.vocabulary_layout(task_vocabulary(config, root), ref_layers=layers,
                                        ref_max_frames=max_frames, tts_text="phonemes")  # fmt: skip
    assert phonemes["text"]["tts_text"].startswith("phonemes: espeak-ng en-us IPA")


def test_sentencepiece_text_ships_its_model_and_encodes_as_the_vocabulary(tmp_path):
    import sentencepiece
    import seqio

    from gpa_jax.tasks import spm

    model_file = str(tmp_path / "text.model")
    spm.train_sentencepiece(["the cat sat on the mat", "a dog ran", "hello there"] * 4,
                            model_file, vocab_size=40)  # fmt: skip
    vocab = SpeechVocabulary(seqio.SentencePieceVocabulary(model_file), num_audio_streams=N_Q,
                             codebook_size=CODEBOOK)  # fmt: skip
    config = lm_config(model=lm_model_config(vocab_size=vocab.vocab_size, **TINY))
    model = numpy_model(LMConfig.from_config(config.model))
    out = tmp_path / "out"
    export.write_lm(str(out), config, model, vocab, ref_layers=1, ref_max_frames=40)
    text = json.loads((out / "gpa_vocab.json").read_text())["text"]
    assert text["kind"] == "sentencepiece" and text["size"] == vocab.text_size
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(out / text["model_file"]))
    ids = [text["offset"] + i for i in pieces.encode("the cat ran")]
    assert ids == list(vocab.encode("the cat ran"))


def _run_export(*flags):
    env = {**os.environ, "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "launch.export", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_command_exports_an_lm_hf_loads_with_equal_logits(workdir, tmp_path):
    root, config, model, _, _ = workdir
    out = str(tmp_path / "hf")
    result = _run_export(f"--workdir={root}", f"--out={out}", "--nocodec", "--acoustic=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "gpa_export.json",
                                       "gpa_vocab.json", "model.safetensors"]  # fmt: skip
    pytest.importorskip("transformers")
    prompts = task_prompts(config, model, task_vocabulary(config, root))
    theirs, ours = hf_logits(out, prompts), ours_logits(model, prompts)
    for task in prompts:
        np.testing.assert_allclose(theirs[task], ours[task], rtol=0, atol=PARITY_ATOL, err_msg=task)


def test_command_refuses_what_qwen3_cannot_express(tmp_path):
    config = _lm_config(prefix_bidirectional=True)
    model = numpy_model(LMConfig.from_config(config.model))
    _save_trainer_checkpoint(tmp_path / "w" / "checkpoints", config, model, 1)
    out = tmp_path / "out"
    result = _run_export(f"--workdir={tmp_path / 'w'}", f"--out={out}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert (
        lines[-1].startswith("launch.export: error: ") and "prefix_bidirectional=True" in lines[-1]
    )
    assert not out.exists()
