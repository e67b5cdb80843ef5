"""The LM <-> HF Qwen3 mapping: round trips (unrolled and scanned layers, tied and untied
output), the refusals, and logit parity with transformers' Qwen3ForCausalLM on a real
prompt of each task."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

from gpa_jax.models import DecoderLM, LMConfig, lm_model_config
from gpa_jax.sampling import Request, Sampler
from gpa_jax.serving import export, qwen3
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training.config import lm_config
from tests.models.helpers import numpy_model
from tests.tasks.conftest import CODEBOOK, N_Q

# fp32 logits of ours and HF's on the same prompt: the same function up to summation
# order. Measured max |difference| on these models: ~1e-5 at logits of size ~30.
PARITY_ATOL = 1e-4

TINY = dict(
    num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
    rope_theta=10_000.0, max_len=256, dtype="float32", init_std=1.0,
)  # fmt: skip
SHAPES = {
    "unrolled_tied": dict(scan_layers=False),
    "scanned_untied": dict(scan_layers=True, tie_embeddings=False),
}


@pytest.fixture(scope="module")
def vocab():
    return SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=N_Q, codebook_size=CODEBOOK)


def _config(vocab, **overrides):
    return lm_config(model=lm_model_config(vocab_size=vocab.vocab_size, **{**TINY, **overrides}))


def _params(model):
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_the_training_only_ctc_head_is_left_out_and_nothing_else(vocab):
    cfg = LMConfig.from_config(_config(vocab, ctc_weight=0.5).model)
    plain = LMConfig.from_config(_config(vocab).model)
    model = numpy_model(cfg, seed=3)
    tensors = qwen3.to_hf_state_dict(cfg, model)
    assert tensors.keys() == qwen3.to_hf_state_dict(plain, numpy_model(plain)).keys()
    fresh = nnx.eval_shape(lambda: DecoderLM(plain, rngs=nnx.Rngs(0)))
    qwen3.load_hf_state_dict(fresh, tensors)
    original, loaded = _params(model), _params(fresh)
    assert {k for k in original if k[0] == "ctc_proj"} == original.keys() - loaded.keys()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_hf_tensors_round_trip_into_a_fresh_model(vocab, shape):
    cfg = LMConfig.from_config(_config(vocab, **SHAPES[shape]).model)
    model = numpy_model(cfg, seed=3)
    tensors = qwen3.to_hf_state_dict(cfg, model)
    assert tensors["model.layers.1.self_attn.q_proj.weight"].shape == (4 * 8, 32)
    assert tensors["model.layers.0.self_attn.o_proj.weight"].shape == (32, 4 * 8)
    assert (qwen3.LM_HEAD in tensors) == (not cfg.tie_embeddings)
    fresh = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    qwen3.load_hf_state_dict(fresh, tensors)
    original, loaded = _params(model), _params(fresh)
    assert original.keys() == loaded.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=str(key))


def test_scanned_and_unrolled_layers_give_the_same_tensors(vocab):
    unrolled = LMConfig.from_config(_config(vocab, scan_layers=False).model)
    scanned = dataclasses.replace(unrolled, scan_layers=True)
    tensors = qwen3.to_hf_state_dict(unrolled, numpy_model(unrolled, seed=1))
    model = nnx.eval_shape(lambda: DecoderLM(scanned, rngs=nnx.Rngs(0)))
    qwen3.load_hf_state_dict(model, tensors)
    again = qwen3.to_hf_state_dict(scanned, model)
    for name, value in tensors.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_what_qwen3_cannot_express_is_refused_in_one_message(vocab):
    cfg = LMConfig.from_config(
        _config(vocab, prefix_bidirectional=True, qk_norm=False, audio_input="continuous").model
    )
    with pytest.raises(qwen3.ExportError) as caught:
        qwen3.check_exportable(cfg)
    message = str(caught.value)
    for name in ("audio_input='continuous'", "prefix_bidirectional=True", "qk_norm=False"):
        assert name in message
    assert qwen3.unsupported_features(LMConfig.from_config(_config(vocab).model)) == []
    hybrid = LMConfig.from_config(_config(vocab, audio_input="hybrid").model)
    assert any("audio_input='hybrid'" in f for f in qwen3.unsupported_features(hybrid))


def test_weights_that_do_not_fit_are_named(vocab):
    cfg = LMConfig.from_config(_config(vocab).model)
    tensors = qwen3.to_hf_state_dict(cfg, numpy_model(cfg))
    tensors.pop("model.norm.weight")
    tensors["model.layers.9.mlp.up_proj.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(qwen3.ExportError, match="missing.*model.norm.weight.*unexpected.*layers.9"):
        qwen3.load_hf_state_dict(numpy_model(cfg), tensors)


def task_requests() -> list[Request]:
    """One request of each task (seeded codes of the test corpus' shape)."""
    rng = np.random.default_rng(0)

    def codes(frames):
        return rng.integers(0, CODEBOOK, (N_Q, frames))

    return [Request.tts("the cat sat on the mat", codes(30)), Request.asr(codes(40)),
            Request.vc(codes(35), reference=codes(25))]  # fmt: skip


def task_prompts(config, model, vocab) -> dict[str, np.ndarray]:
    """The sampler's prompt ([PROMPT_START] ++ the task's inputs) of each `task_requests`."""
    sampler = Sampler(config, model, vocab)
    return {r.task: sampler.prepare(r).prompt for r in task_requests()}


def hf_logits(out_dir, prompts):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen3ForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        return {t: hf(torch.from_numpy(p[None].astype(np.int64))).logits[0].numpy()
                for t, p in prompts.items()}  # fmt: skip


def ours_logits(model, prompts):
    return {t: np.asarray(model(jnp.asarray(p[None])))[0] for t, p in prompts.items()}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_hf_logits_equal_ours_on_a_prompt_of_each_task(tmp_path, vocab, shape):
    pytest.importorskip("transformers")
    config = _config(vocab, **SHAPES[shape])
    model = numpy_model(LMConfig.from_config(config.model))
    export.write_lm(str(tmp_path), config, model, vocab, ref_layers=1, ref_max_frames=40)
    prompts = task_prompts(config, model, vocab)
    assert set(prompts) == {"tts", "asr", "vc"}
    theirs, ours = hf_logits(str(tmp_path), prompts), ours_logits(model, prompts)
    for task in prompts:
        assert theirs[task].shape == (len(prompts[task]), vocab.vocab_size)
        np.testing.assert_allclose(theirs[task], ours[task], rtol=0, atol=PARITY_ATOL, err_msg=task)
