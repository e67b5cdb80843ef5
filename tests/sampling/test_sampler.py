"""Sampler: prompts equal the SeqIO tasks' model inputs, per-request errors, batching,
per-task defaults and limits, params-only restore from a trainer checkpoint on another mesh."""

import dataclasses
import inspect
import shutil

import jax
import numpy as np
import pytest
import seqio
from flax import nnx

from gpa_jax import sharding
from gpa_jax.models import LMConfig, lm_model_config, mesh_config
from gpa_jax.sampling import Request, Sampler, SamplingParams, sampling_config
from gpa_jax.tasks import pipeline, planning
from gpa_jax.tasks import tasks as tasks_lib
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training.config import lm_config, optimizer_config
from gpa_jax.training.train_step import make_optimizer
from tests.models.helpers import numpy_model
from tests.tasks.conftest import CODEBOOK, N_Q, SEQ_LEN, small_config, write_corpus


@pytest.fixture(scope="module")
def vocab():
    return SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=N_Q, codebook_size=CODEBOOK)


def _config(vocab_size):
    model = lm_model_config(
        vocab_size=vocab_size,
        num_layers=2,
        embed_dim=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        rope_theta=10_000.0,
        max_len=SEQ_LEN,
        dtype="float32",
        scan_layers=False,
        prefix_bidirectional=True,
        init_std=1.0,
    )
    config = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    config.optimizer = optimizer_config()
    return config


@pytest.fixture(scope="module")
def lm(vocab):
    config = _config(vocab.vocab_size)
    return config, numpy_model(LMConfig.from_config(config.model))


def _sampler(lm, vocab, **sampling):
    config, model = lm
    return Sampler(config, model, vocab, sampling=sampling_config(**sampling))


def _codes(frames, seed, layers=N_Q):
    return np.random.default_rng(seed).integers(0, CODEBOOK, (layers, frames))


@pytest.fixture(scope="module")
def registered(tmp_path_factory, vocab):
    directory = str(tmp_path_factory.mktemp("tokens"))
    write_corpus(directory)
    kwargs = dict(namespace="sampler_test")
    if "sequence_length" in inspect.signature(tasks_lib.register_tasks).parameters:
        kwargs["sequence_length"] = SEQ_LEN
    return tasks_lib.register_tasks(directory, vocab, small_config(), **kwargs)


@pytest.mark.parametrize("task", ["asr", "tts", "vc"])
def test_prompt_is_what_the_trainer_feeds_for_the_same_example(registered, vocab, lm, task):
    """[PROMPT_START] + inputs == the converter's decoder_input_tokens over the prefix."""
    sampler = _sampler(lm, vocab, ref_max_frames=40)
    source = registered.sources[task]
    rows, _ = source.plan("train")
    bank = source.bank("train")
    ds = pipeline.make_dataset(
        registered.task_names[task], "train", SEQ_LEN, 1, None, False, pack=False, num_epochs=1
    )

    def utt(u, start=0, n=None):
        s = bank.audio_start[u] + start
        return bank.codes[:, s : s + (bank.frames[u] if n is None else n)]

    for row, ex in list(zip(rows, ds.as_numpy_iterator(), strict=False))[:4]:
        t, r, start, n, src = (int(x) for x in row)
        if task == "asr":
            request = Request.asr(utt(t))
        elif task == "tts":
            request = Request.tts(bank.texts[t], utt(r, start, n))
        else:
            request = Request.vc(utt(src), utt(r, start, n))
        prompt = sampler.prepare(request).prompt
        fed = ex["decoder_input_tokens"][0]
        prefix = ex["decoder_prefix_mask"][0]
        assert prefix.sum() == len(prompt) and prefix[: len(prompt)].all()
        np.testing.assert_array_equal(fed[: len(prompt)], prompt)


def test_phoneme_tts_prompt_is_what_the_trainer_feeds(tmp_path, vocab, lm):
    """tasks.tts_text='phonemes' in the LM's config: the sampler spells a TTS request's
    text as phonemes, exactly as the trainer's TTS examples do."""
    directory = str(tmp_path / "tokens")
    write_corpus(directory)
    tasks = small_config(tts_text="phonemes")
    handle = tasks_lib.register_tasks(directory, vocab, tasks, sequence_length=SEQ_LEN,
                                      namespace="sampler_phonemes")  # fmt: skip
    config, model = lm
    config = config.copy_and_resolve_references()
    config.tasks = tasks
    sampler = Sampler(config, model, vocab, sampling=sampling_config(ref_max_frames=40))
    assert sampler.tts_text == "phonemes"
    source = handle.sources["tts"]
    rows, _ = source.plan("train")
    bank = source.bank("train")
    ds = pipeline.make_dataset(handle.task_names["tts"], "train", SEQ_LEN, 1, None, False,
                               pack=False, num_epochs=1)  # fmt: skip
    for row, ex in list(zip(rows, ds.as_numpy_iterator(), strict=False))[:4]:
        t, r, start, n, _ = (int(x) for x in row)
        s = bank.audio_start[r] + start
        prompt = sampler.prepare(Request.tts(bank.texts[t], bank.codes[:, s : s + n])).prompt
        np.testing.assert_array_equal(ex["decoder_input_tokens"][0][: len(prompt)], prompt)
        plain = _sampler(lm, vocab, ref_max_frames=40)
        assert len(plain.prepare(Request.tts(bank.texts[t], bank.codes[:, s : s + n])).prompt) != len(prompt)


def test_bad_requests_get_errors_and_the_rest_is_served(lm, vocab):
    sampler = _sampler(lm, vocab, max_batch=4)
    good = [
        Request.asr(_codes(30, 0), id="asr"),
        Request.tts("hello there", _codes(20, 1), id="tts"),
        Request.vc(_codes(25, 2)[0], _codes(15, 3), id="vc"),
    ]
    bad = [
        (Request("sing", text="la", id="unknown"), "unknown task 'sing'"),
        (Request.tts("  ?! ", _codes(10, 4), id="empty"), "empty text"),
        (Request.tts("hi", None, id="noref"), "needs a reference"),
        (Request.vc(_codes(10, 5), None, id="vc-noref"), "needs a reference"),
        (Request.asr(None, id="nosrc"), "no source"),
        (Request.asr(np.zeros((1, 0), int), id="emptysrc"), "empty"),
        (Request.asr(_codes(10, 6) + CODEBOOK, id="range"), "outside"),
        (Request.asr(_codes(SEQ_LEN, 7), id="long"), "over-long"),
        (Request.tts("hi", _codes(10, 8), params=SamplingParams(top_p=0.0), id="p"), "top_p"),
    ]
    requests = [good[0], bad[0][0], good[1], *[b for b, _ in bad[1:]], good[2]]
    results = sampler.generate(requests)
    assert [r.id for r in results] == [r.id for r in requests]
    by_id = {r.id: r for r in results}
    for request, message in bad:
        assert not by_id[request.id].ok and message in by_id[request.id].error
    for request in good:
        r = by_id[request.id]
        assert r.ok and r.stop in ("eos", "max_length") and len(r.tokens) <= r.max_new_tokens
    # Output ranges: text for ASR, RVQ-1 codes for TTS/VC.
    assert vocab.is_text(by_id["asr"].tokens).all() and isinstance(by_id["asr"].text, str)
    for rid in ("tts", "vc"):
        r = by_id[rid]
        assert r.rvq1.shape == r.tokens.shape and (r.rvq1 < CODEBOOK).all()
    # Budgets come from the input: ASR tokens per source frame, TTS frames per character.
    s = sampling_config()
    assert by_id["asr"].max_new_tokens == int(np.ceil(2 * s.asr.tokens_per_frame * 30)) + 16
    assert by_id["tts"].max_new_tokens == int(np.ceil(2 * s.tts.frames_per_char * 11)) + 16
    assert by_id["vc"].max_new_tokens == int(np.ceil(2 * s.vc.frames_per_frame * 25)) + 16


def test_batched_equals_one_by_one_with_task_defaults(lm, vocab):
    sampler = _sampler(lm, vocab, max_batch=4)
    requests = [
        Request.asr(_codes(30, 0), id="a"),
        Request.tts("the cat sat", _codes(20, 1), seed=3, id="t"),
        Request.vc(_codes(25, 2), _codes(15, 3), seed=4, id="v"),
        Request.tts("a quick brown fox", _codes(12, 5), seed=5, max_new_tokens=9, id="t2"),
    ]
    together = sampler.generate(requests)
    assert together[3].max_new_tokens == 9 and len(together[3].tokens) <= 9
    for request, batched in zip(requests, together, strict=True):
        (alone,) = sampler.generate([request])
        np.testing.assert_array_equal(alone.tokens, batched.tokens)
        assert alone.stop == batched.stop
    # ASR is greedy by default: the same request with another seed gives the same text;
    # TTS is sampled: another seed gives other codes.
    (asr2,) = sampler.generate([Request.asr(_codes(30, 0), seed=99)])
    np.testing.assert_array_equal(asr2.tokens, together[0].tokens)
    (tts2,) = sampler.generate([Request.tts("the cat sat", _codes(20, 1), seed=99)])
    assert tts2.tokens.tolist() != together[1].tokens.tolist()


def test_reference_is_cropped_and_acoustic_hook_is_called(lm, vocab):
    calls = []

    def complete(rvq1, prompt_codes):
        calls.append((rvq1.copy(), prompt_codes.shape))
        return np.stack([rvq1] * N_Q)

    config, model = lm
    sampler = Sampler(
        config, model, vocab, sampling=sampling_config(ref_max_frames=12), acoustic=complete
    )
    short = sampler.prepare(Request.tts("hi", _codes(12, 1))).prompt
    long = sampler.prepare(Request.tts("hi", _codes(50, 1))).prompt
    np.testing.assert_array_equal(short, long)  # only the first 12 frames are kept
    (r,) = sampler.generate([Request.tts("hi", _codes(50, 1), max_new_tokens=5)])
    assert r.codes.shape == (N_Q, len(r.rvq1)) and calls[0][1] == (N_Q, 50)
    np.testing.assert_array_equal(calls[0][0], r.rvq1)

    class Stage:  # the acoustic API's batched entry point is used when present
        def __init__(self):
            self.batches = []

        def complete_batch(self, rvq1s, prompts):
            self.batches.append(len(rvq1s))
            return [np.stack([t] * N_Q) for t in rvq1s]

        def __call__(self, rvq1, prompt):
            raise AssertionError("the batched entry point should have been used")

    stage = Stage()
    batched = Sampler(config, model, vocab, acoustic=stage)
    results = batched.generate(
        [
            Request.tts("hi", _codes(20, 1), max_new_tokens=4),
            Request.asr(_codes(20, 2)),
            Request.vc(_codes(20, 3), _codes(20, 4), max_new_tokens=4),
        ]
    )
    assert stage.batches == [2] and results[1].codes is None
    assert results[0].codes.shape == (N_Q, len(results[0].rvq1))


def test_params_only_restore_from_trainer_checkpoint_onto_another_mesh(tmp_path, lm, vocab):
    config, model = lm
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    manager = ckpt.make_manager(tmp_path / "checkpoints", async_save=False)
    assert ckpt.save_checkpoint(manager, 7, nnx.state((model, optimizer)), config=config)
    manager.close()
    # Nothing of the optimizer is needed: remove its item altogether.
    shutil.rmtree(tmp_path / "checkpoints" / "7" / ckpt.OPT_STATE)
    mesh = sharding.make_mesh(mesh_config(shape=(2, 2, 2)), jax.devices()[:8])
    restored = Sampler.from_checkpoint(str(tmp_path / "checkpoints"), vocab, mesh=mesh)
    emb = restored.model.embedder.embedding[...]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert restored.batch_multiple == 4
    requests = [
        Request.asr(_codes(30, 0)),
        Request.tts("hello", _codes(20, 1), params=SamplingParams()),
        Request.vc(_codes(25, 2), _codes(15, 3), params=SamplingParams()),
    ]
    local = _sampler(lm, vocab)
    for a, b in zip(local.generate(requests), restored.generate(requests), strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Sampler.from_checkpoint(str(tmp_path / "nothing"), vocab, mesh=mesh)


def test_references_are_trimmed_to_fit_like_training(lm, vocab):
    """prompt + expected output over the limit: the reference shrinks (training's rule),
    never below tasks.ref_min_frames; past that the request is over-long."""
    config, _ = lm
    sampler = _sampler(lm, vocab, ref_max_frames=SEQ_LEN)
    s, limit = sampling_config(), sampler.max_total_len
    ref_min = int(config.tasks.ref_min_frames)
    text = "ab cd " * 4  # 23 normalised characters
    # The fit check asks for room for expected / length_margin output tokens.
    expected = int(np.ceil(s.tts.frames_per_char * len(text.strip()) / s.length_margin))
    fixed = 1 + 4 + len(text.strip())  # PROMPT_START, tag + delimiters, byte text ids
    frames = limit - fixed - expected - 1 + 10  # 10 frames too many for one RVQ-1 layer
    assert frames - 10 >= ref_min
    prepared = sampler.prepare(Request.tts(text, _codes(frames, 0)))
    assert len(prepared.prompt) == fixed + frames - 10
    assert len(prepared.prompt) + expected + 1 == limit
    too_long = "ab cd " * 70  # leaves fewer than ref_min_frames for the reference
    (result,) = sampler.generate([Request.tts(too_long, _codes(frames, 1), id="x")])
    assert not result.ok and "over-long" in result.error


# --- the continuous audio-input variant (LauraGPT) ----------------------------------------

FEAT = 6


@pytest.fixture(scope="module")
def continuous_lm(vocab):
    config = _config(vocab.vocab_size)
    config.model.audio_input = "continuous"
    config.model.audio_encoder_layers = 1
    config.model.audio_feature_dim = FEAT
    return config, numpy_model(LMConfig.from_config(config.model))


def _rows(frames, seed):
    return np.random.default_rng(100 + seed).standard_normal((frames, FEAT)).astype(np.float32)


def test_continuous_prompts_read_the_request_features_at_their_audio_positions(continuous_lm, vocab):
    sampler = _sampler(continuous_lm, vocab, ref_max_frames=12)
    src, ref = _codes(9, 0), _codes(20, 1)
    asr = sampler.prepare(Request.asr(src, source_features=_rows(9, 0)))
    features, mask = asr.audio
    assert len(features) == len(mask) == len(asr.prompt)
    audio_at = np.flatnonzero(mask)
    np.testing.assert_array_equal(audio_at, np.arange(3, 12))  # <start> <|asr|> <|src_audio|>
    np.testing.assert_array_equal(vocab.ids_to_audio(asr.prompt[audio_at], 0), src[0])
    np.testing.assert_array_equal(features[audio_at], _rows(9, 0))
    assert not features[mask == 0].any()
    # A VC reference is cropped to ref_max_frames with its features.
    vc = sampler.prepare(Request.vc(src, ref, source_features=_rows(9, 0),
                                    reference_features=_rows(20, 1)))  # fmt: skip
    features, mask = vc.audio
    np.testing.assert_array_equal(features[mask > 0], np.concatenate([_rows(20, 1)[:12], _rows(9, 0)]))


def test_continuous_requests_decode_alone_as_in_a_batch_and_bad_features_are_named(
    continuous_lm, vocab
):
    sampler = _sampler(continuous_lm, vocab, max_batch=4)
    requests = [
        Request.asr(_codes(30, 0), source_features=_rows(30, 0), id="a"),
        Request.tts("hello there", _codes(20, 1), reference_features=_rows(20, 1), id="t"),
        Request.vc(_codes(25, 2), _codes(15, 3), source_features=_rows(25, 2),
                   reference_features=_rows(15, 3), id="v"),
        Request.asr(_codes(12, 4), id="nofeat"),
        Request.asr(_codes(12, 5), source_features=_rows(11, 5), id="short"),
    ]  # fmt: skip
    together = {r.id: r for r in sampler.generate(requests)}
    assert "needs source_features" in together["nofeat"].error
    assert "11 rows for 12 code frames" in together["short"].error
    for request in requests[:3]:
        alone = sampler.generate([request])[0]
        assert alone.ok and together[request.id].ok
        np.testing.assert_array_equal(alone.tokens, together[request.id].tokens)
    # The features are read: other source features give another ASR prefill.
    other = dataclasses.replace(requests[0], source_features=_rows(30, 9), params=SamplingParams())
    base = dataclasses.replace(requests[0], params=SamplingParams())
    a, b = (sampler.decoder.device_arrays(sampler.decode_batch([sampler.prepare(r)])[0])
            for r in (base, other))  # fmt: skip
    assert not np.array_equal(a["audio_features"], b["audio_features"])


@pytest.fixture(scope="module")
def feature_corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("feature_tokens"))
    return directory, write_corpus(directory, features=True)


@pytest.mark.parametrize("task", ["asr", "tts", "vc"])
def test_continuous_prompt_rows_are_what_the_trainer_feeds(feature_corpus, vocab, task):
    """Features and mask of the sampler's prompt == the trainer's batch over the prefix."""
    from gpa_jax.training.data_iter import gather_audio_features
    from tests.tasks.conftest import FEATURE_DIM

    config = _config(vocab.vocab_size)
    config.model.audio_input = "continuous"
    config.model.audio_encoder_layers = 1
    config.model.audio_feature_dim = FEATURE_DIM
    sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab,
                      sampling=sampling_config(ref_max_frames=40))  # fmt: skip
    handle = tasks_lib.register_tasks(feature_corpus[0], vocab, small_config(), sequence_length=SEQ_LEN,
                                      namespace="sampler_feat", audio_features=True)  # fmt: skip
    source = handle.sources[task]
    rows, _ = source.plan("train")
    bank = source.bank("train")
    ds = pipeline.make_dataset(
        handle.task_names[task], "train", SEQ_LEN, 1, None, False, pack=False, num_epochs=1
    )
    for row, ex in list(zip(rows, ds.as_numpy_iterator(), strict=False))[:3]:
        t, r, start, n, src = (int(x) for x in row)
        ref = dict(reference=bank.utterance_codes(r, start, n),
                   reference_features=bank.utterance_features(r, start, n))  # fmt: skip
        if task == "asr":
            request = Request.asr(bank.utterance_codes(t), source_features=bank.utterance_features(t))
        elif task == "tts":
            request = Request("tts", text=bank.texts[t], **ref)
        else:
            request = Request("vc", source=bank.utterance_codes(src),
                              source_features=bank.utterance_features(src), **ref)  # fmt: skip
        prepared = sampler.prepare(request)
        fed = gather_audio_features(bank, ex["decoder_audio_frames"])
        n_prompt = len(prepared.prompt)
        np.testing.assert_array_equal(fed["decoder_audio_mask"][0, :n_prompt], prepared.audio[1])
        np.testing.assert_allclose(fed["decoder_audio_features"][0, :n_prompt], prepared.audio[0])
        assert prepared.audio[1].sum() > 0


# --- the hybrid audio-input variant (WHISPER-GPT) ----------------------------------------


@pytest.fixture(scope="module")
def hybrid_lm(vocab):
    config = _config(vocab.vocab_size)
    config.model.audio_input = "hybrid"
    config.model.audio_encoder_layers = 1
    config.model.audio_feature_dim = FEAT
    return config, numpy_model(LMConfig.from_config(config.model))


def _recompute_greedy(model, prepared, steps):
    """Greedy decoding by a full forward pass per step over prompt + generated tokens, the
    prompt's rows where recorded and none past it (what training shows an output). The
    sequence is padded at its end to one length (one compile); a causal model's logits at
    position n - 1 do not see it."""
    import jax.numpy as jnp

    features, mask = prepared.audio
    lo, hi = prepared.id_range
    P, total = len(prepared.prompt), len(prepared.prompt) + steps
    prefix = (np.arange(total) < P).astype(np.int32)[None]
    rows = np.pad(features, ((0, steps), (0, 0)))[None]
    row_mask = np.pad(mask, (0, steps))[None]
    forward = nnx.jit(lambda m, seq: m(seq, jnp.ones_like(seq), None, prefix,
                                       audio_features=rows, audio_mask=row_mask))  # fmt: skip
    ids = np.arange(model.cfg.vocab_size)
    allowed = ((ids >= lo) & (ids < hi)) | (ids == 1)
    seq = np.zeros((1, total), np.int32)
    seq[0, :P] = prepared.prompt
    out = []
    for n in range(P, total):
        logits = np.asarray(forward(model, seq))[0, n - 1]
        token = int(np.argmax(np.where(allowed, logits, -np.inf)))
        if token == 1:  # <eos>
            break
        out.append(token)
        seq[0, n] = token
    return np.asarray(out, np.int32)


@pytest.mark.parametrize("task", ["asr", "tts", "vc"])
def test_hybrid_cached_decoding_equals_full_recompute(hybrid_lm, vocab, task):
    from gpa_jax.sampling.decode import EOS_ID

    assert EOS_ID == 1
    sampler = _sampler(hybrid_lm, vocab, ref_max_frames=12)
    src, ref = _codes(9, 0), _codes(15, 1)
    request = {
        "asr": Request.asr(src, source_features=_rows(9, 0), max_new_tokens=8),
        "tts": Request.tts("hi there", ref, reference_features=_rows(15, 1),
                           params=SamplingParams(), max_new_tokens=8),
        "vc": Request.vc(src, ref, source_features=_rows(9, 0), reference_features=_rows(15, 1),
                         params=SamplingParams(), max_new_tokens=8),
    }[task]  # fmt: skip
    (result,) = sampler.generate([request])
    assert result.ok and len(result.tokens) >= 1
    expected = _recompute_greedy(hybrid_lm[1], sampler.prepare(request), 8)
    np.testing.assert_array_equal(result.tokens, expected)


def test_hybrid_requests_read_their_rows_and_decode_alone_as_in_a_batch(hybrid_lm, vocab):
    sampler = _sampler(hybrid_lm, vocab, max_batch=4)
    requests = [
        Request.asr(_codes(30, 0), source_features=_rows(30, 0), id="a", max_new_tokens=6),
        Request.tts("hello there", _codes(20, 1), reference_features=_rows(20, 1), id="t",
                    max_new_tokens=10),
        Request.vc(_codes(25, 2), _codes(15, 3), source_features=_rows(25, 2),
                   reference_features=_rows(15, 3), id="v", max_new_tokens=10),
        Request.asr(_codes(12, 4), id="nofeat"),
    ]  # fmt: skip
    together = {r.id: r for r in sampler.generate(requests)}
    assert "'hybrid' needs source_features" in together["nofeat"].error
    for request in requests[:3]:
        alone = sampler.generate([request])[0]
        assert alone.ok and together[request.id].ok
        np.testing.assert_array_equal(alone.tokens, together[request.id].tokens)
    # The rows are read: other source rows give other ASR logits at the prompt's end.
    logits = []
    for rows in (_rows(30, 0), _rows(30, 9)):
        prepared = sampler.prepare(dataclasses.replace(requests[0], source_features=rows))
        features, mask = prepared.audio
        n = len(prepared.prompt)
        logits.append(np.asarray(hybrid_lm[1](
            prepared.prompt[None], np.ones((1, n), np.int32), None, np.ones((1, n), np.int32),
            audio_features=features[None], audio_mask=mask[None])[0, -1]))  # fmt: skip
    assert np.abs(logits[0] - logits[1]).max() > 1e-3


# --- speech enhancement (opt-in task) ------------------------------------------------------

SE_RATES = dict(tts=0.3, asr=0.3, vc=0.2, se=0.2)


@pytest.mark.parametrize("audio_input", ["tokens", "continuous", "hybrid"])
def test_se_prompt_is_what_the_trainer_feeds_for_each_audio_input(tmp_path_factory, vocab, audio_input):
    """Tokens and (continuous / hybrid) the noisy input's rows == the trainer's batch."""
    from gpa_jax.training.data_iter import gather_audio_features
    from tests.tasks.conftest import FEATURE_DIM

    directory = str(tmp_path_factory.mktemp("noisy"))
    write_corpus(directory, features=True, noisy=True)
    config = _config(vocab.vocab_size)
    config.tasks.rates = SE_RATES
    reads_rows = audio_input != "tokens"
    if reads_rows:
        config.model.audio_input = audio_input
        config.model.audio_encoder_layers = 1
        config.model.audio_feature_dim = FEATURE_DIM
    sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab)
    handle = tasks_lib.register_tasks(
        directory, vocab, small_config(rates=SE_RATES), sequence_length=SEQ_LEN,
        namespace=f"sampler_se_{audio_input}", audio_features=reads_rows,
    )  # fmt: skip
    source = handle.sources["se"]
    rows, _ = source.plan("train")
    bank = source.bank("train")
    ds = pipeline.make_dataset(
        handle.task_names["se"], "train", SEQ_LEN, 1, None, False, pack=False, num_epochs=1
    )
    for row, ex in list(zip(rows, ds.as_numpy_iterator(), strict=False))[:3]:
        u = int(row[planning.SRC])  # the target itself, read noisy
        request = Request.se(bank.utterance_noisy_codes(u),
                             source_features=bank.utterance_noisy_features(u))  # fmt: skip
        prepared = sampler.prepare(request)
        n_prompt = len(prepared.prompt)
        assert ex["decoder_prefix_mask"][0].sum() == n_prompt
        np.testing.assert_array_equal(ex["decoder_input_tokens"][0, :n_prompt], prepared.prompt)
        if reads_rows:
            fed = gather_audio_features(bank, ex["decoder_audio_frames"])
            np.testing.assert_array_equal(fed["decoder_audio_mask"][0, :n_prompt], prepared.audio[1])
            np.testing.assert_allclose(fed["decoder_audio_features"][0, :n_prompt], prepared.audio[0])
            assert prepared.audio[1].sum() == bank.frames[u]
        else:
            assert prepared.audio is None


def test_se_is_refused_by_an_lm_trained_without_it(lm, vocab):
    (result,) = _sampler(lm, vocab).generate([Request.se(_codes(20, 1))])
    assert result.error and "not trained for se" in result.error and "tasks.rates.se" in result.error


def test_se_results_are_completed_with_the_noisy_input_as_the_voice_prompt(vocab):
    config = _config(vocab.vocab_size)
    config.tasks.rates = SE_RATES
    prompts = []

    def complete(rvq1, prompt_codes):
        prompts.append(np.asarray(prompt_codes))
        return np.stack([rvq1] * N_Q)

    sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab, acoustic=complete)
    noisy = _codes(30, 5)
    (r,) = sampler.generate([Request.se(noisy, max_new_tokens=6)])
    assert r.ok and r.task == "se" and 0 < len(r.rvq1) <= 6
    assert r.codes.shape == (N_Q, len(r.rvq1))
    np.testing.assert_array_equal(prompts[0], noisy)  # every layer of the noisy source
    lo, hi = vocab.audio_range(0)
    assert ((r.tokens >= lo) & (r.tokens < hi)).all()
    # The budget follows the source's length (se.frames_per_frame), like VC's.
    assert sampler.prepare(Request.se(noisy)).max_new == sampler.prepare(
        Request.vc(noisy, _codes(20, 6))
    ).max_new
