"""Continuous batching: requests joining and leaving mid-batch get the tokens they get alone;
a request's sampled tokens do not depend on its batch mates; warm-up compiles every bucket."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from gpa_jax import sharding
from gpa_jax.models import LMConfig, mesh_config
from gpa_jax.sampling import Request, Sampler, SamplingParams, decode
from gpa_jax.sampling.engine import Engine, QueueFull
from gpa_jax.training import checkpoint as ckpt
from gpa_jax.training.train_step import make_optimizer
from tests.models.helpers import numpy_model
from tests.sampling.test_sampler import (  # noqa: F401 (fixtures)
    FEAT,
    _codes,
    _config,
    _rows,
    _sampler,
    continuous_lm,
    hybrid_lm,
    lm,
    vocab,
)

GREEDY = SamplingParams()


def _mixed_requests(params=GREEDY):
    """Every task, different prompt lengths and budgets (so requests leave at different steps)."""
    return [
        Request.asr(_codes(30, 0), id="asr", params=params, max_new_tokens=7),
        Request.tts("the cat sat", _codes(20, 1), id="tts", params=params, seed=3,
                    max_new_tokens=19),
        Request.vc(_codes(25, 2), _codes(15, 3), id="vc", params=params, seed=4, max_new_tokens=4),
        Request.tts("a quick brown fox", _codes(12, 5), id="tts2", params=params, seed=5,
                    max_new_tokens=12),
        Request.asr(_codes(9, 6), id="asr2", params=params, max_new_tokens=15),
        Request.tts("hi", _codes(40, 7), id="tts3", params=params, seed=6, max_new_tokens=9),
    ]  # fmt: skip


def _drive(engine, requests):
    """Submits everything, steps until idle; returns {id: tokens} and the occupancy per step."""
    tickets = [engine.submit(r) for r in requests]
    occupancy = []
    while not engine.idle:
        engine.step()
        occupancy.append(sorted(t.request.id for t in tickets if t.slot is not None))
    return {t.request.id: t for t in tickets}, occupancy


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scanned"])
def test_greedy_continuous_batching_equals_one_by_one(lm, vocab, scan):  # noqa: F811
    if scan:  # the stacked cache layout [layers, slots, ...]
        config = _config(vocab.vocab_size)
        config.model.scan_layers = True
        lm = (config, numpy_model(LMConfig.from_config(config.model)))
    sampler = _sampler(lm, vocab)
    engine = Engine(sampler, slots=3, steps_per_call=3, max_join=2)
    requests = _mixed_requests()
    tickets, occupancy = _drive(engine, requests)
    # Requests joined while others were running and left before them.
    assert engine.stats["joins"] >= 3 and max(len(o) for o in occupancy) == 3
    assert any(
        set(a) & set(b) and set(b) - set(a) for a, b in zip(occupancy, occupancy[1:], strict=False)
    )
    for request in requests:
        (alone,) = sampler.generate([request])
        got = tickets[request.id].result
        assert got.ok and alone.ok
        np.testing.assert_array_equal(got.tokens, alone.tokens)
        assert got.stop == alone.stop and got.text == alone.text
        if alone.rvq1 is not None:
            np.testing.assert_array_equal(got.rvq1, alone.rvq1)
    # generate() through the engine: results in order, errors per request.
    bad = Request.tts("", _codes(10, 9), id="bad")
    results = engine.generate([requests[1], bad, requests[0]])
    assert [r.id for r in results] == ["tts", "bad", "asr"]
    assert "empty text" in results[1].error and results[0].ok
    np.testing.assert_array_equal(results[0].tokens, tickets["tts"].result.tokens)


def test_engine_on_a_mesh_serves_what_the_local_engine_does(tmp_path, lm, vocab):  # noqa: F811
    """Params restored sharded onto 8 devices: slots and joins round up to the batch
    axes, the cache is sharded by the model's rules, the tokens are the local ones."""
    config, model = lm
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    manager = ckpt.make_manager(tmp_path / "checkpoints", async_save=False)
    assert ckpt.save_checkpoint(manager, 1, nnx.state((model, optimizer)), config=config)
    manager.close()
    mesh = sharding.make_mesh(mesh_config(shape=(2, 2, 2)), jax.devices()[:8])
    sharded = Sampler.from_checkpoint(str(tmp_path / "checkpoints"), vocab, mesh=mesh)
    engine = Engine(sharded, slots=3, max_join=2, steps_per_call=4)
    assert engine.slots == 4 and engine.join_sizes == [4]
    assert not engine._state["cache"]["k"][0].sharding.is_fully_replicated
    requests = _mixed_requests()[:5]
    local = Engine(_sampler(lm, vocab), slots=2, steps_per_call=3).generate(requests)
    for a, b in zip(local, engine.generate(requests), strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
    # The state keeps its shardings from call to call: one program per variant, not two.
    assert [f._cache_size() for f in engine._advance_fns.values()] == [1]


def test_a_sampled_request_draws_the_same_alone_and_in_a_busy_batch(lm, vocab):  # noqa: F811
    """Its key is fold_in(key(seed), step): not the slot, not the batch mates (greedy ones,
    sampled ones, one with a repetition penalty, joining and leaving around it)."""
    sampler = _sampler(lm, vocab)
    target = Request.tts("hello there friend", _codes(20, 1), id="x", seed=11, max_new_tokens=20,
                         params=SamplingParams(temperature=1.0, top_k=20, top_p=0.9))  # fmt: skip
    alone_engine = Engine(sampler, slots=2, steps_per_call=4)
    (alone,) = alone_engine.generate([target])
    # The same as the fixed-batch decoder with the engine's sampling width.
    mode = decode.Mode(
        greedy=False, num_candidates=sampler.cfg.vocab_size, repetition_penalty=False
    )
    batch, steps = sampler.decode_batch([sampler.prepare(target)])
    out = sampler.decoder(batch, steps, mode)
    n = int(out["num_tokens"][0]) - bool(out["hit_eos"][0])
    np.testing.assert_array_equal(alone.tokens, out["tokens"][0, :n])

    busy = Engine(sampler, slots=4, steps_per_call=3, max_join=2)
    mates = _mixed_requests(SamplingParams(temperature=0.7, top_k=5))
    mates[1] = dataclasses.replace(mates[1], params=SamplingParams(repetition_penalty=1.3))
    mates[3] = dataclasses.replace(mates[3], params=GREEDY)
    tickets, _ = _drive(busy, [*mates[:3], target, *mates[3:]])
    np.testing.assert_array_equal(tickets["x"].result.tokens, alone.tokens)
    assert tickets["x"].slot is None and len(alone.tokens) > 5
    # The seed matters.
    (other,) = alone_engine.generate([dataclasses.replace(target, seed=12)])
    assert other.tokens.tolist() != alone.tokens.tolist()


def test_warmup_compiles_every_bucket_once_and_serving_adds_none(lm, vocab):  # noqa: F811
    sampler = _sampler(lm, vocab)
    engine = Engine(sampler, slots=2, steps_per_call=4, max_join=2)
    assert engine.prompt_buckets == [64, 128, 256] and engine.join_sizes == [1, 2]
    messages = []
    assert engine.warmup(messages.append) == 4 + 2 * 3 == len(messages)
    compiled = engine._join_fn._cache_size() + sum(
        f._cache_size() for f in engine._advance_fns.values()
    )
    assert compiled == 10
    params = [
        GREEDY,
        SamplingParams(temperature=0.9, top_k=7),
        SamplingParams(repetition_penalty=1.2),
    ]
    requests = [
        dataclasses.replace(r, params=params[i % 3]) for i, r in enumerate(_mixed_requests())
    ]
    requests.append(
        Request.tts("a" * 40 + " long text", _codes(100, 3), id="long", max_new_tokens=3)
    )
    assert all(r.ok for r in engine.generate(requests))
    after = engine._join_fn._cache_size() + sum(
        f._cache_size() for f in engine._advance_fns.values()
    )
    assert after == compiled


def test_queue_bound_cancel_and_budget_stops(lm, vocab):  # noqa: F811
    sampler = _sampler(lm, vocab)
    engine = Engine(sampler, slots=2, steps_per_call=2, max_queue=2)
    requests = _mixed_requests()
    a, b = engine.submit(requests[1]), engine.submit(requests[4])
    with pytest.raises(QueueFull, match="2 requests already wait"):
        engine.submit(requests[0])
    engine.step()
    assert a.slot is not None and b.slot is not None and engine.waiting == 0
    c = engine.submit(requests[3])
    engine.cancel(a)  # frees its slot: c joins on the next step
    engine.step()
    assert a.slot is None and a.result is None and a.cancelled and c.slot is not None
    while not engine.idle:
        engine.step()
    for ticket in (b, c):
        (alone,) = sampler.generate([ticket.request])
        np.testing.assert_array_equal(ticket.result.tokens, alone.tokens)
    assert len(b.result.tokens) <= 15 and len(c.result.tokens) <= 12
    # reset(): everything dropped, the programs kept, the next requests served as alone.
    d = engine.submit(requests[0])
    engine.step()
    engine.reset()
    assert d.cancelled and d.slot is None and engine.idle
    (again,) = engine.generate([requests[0]])
    np.testing.assert_array_equal(again.tokens, sampler.generate([requests[0]])[0].tokens)
    # max_new_tokens=1: done at the join, never decoded.
    (one,) = engine.generate([dataclasses.replace(requests[0], max_new_tokens=1)])
    assert one.ok and len(one.tokens) <= 1 and one.max_new_tokens == 1


@pytest.mark.parametrize("variant", ["continuous_lm", "hybrid_lm"])
def test_continuous_input_requests_through_the_engine(request, variant, vocab):  # noqa: F811
    sampler = _sampler(request.getfixturevalue(variant), vocab)
    requests = [
        Request.asr(_codes(30, 0), source_features=_rows(30, 0), id="a", max_new_tokens=6),
        Request.vc(_codes(25, 2), _codes(15, 3), source_features=_rows(25, 2),
                   reference_features=_rows(15, 3), id="v", params=GREEDY, max_new_tokens=9),
    ]  # fmt: skip
    got = Engine(sampler, slots=1, steps_per_call=4).generate(requests)
    for req, result in zip(requests, got, strict=True):
        (alone,) = sampler.generate([req])
        np.testing.assert_array_equal(result.tokens, alone.tokens)
    assert FEAT == sampler.cfg.audio_feature_dim


def test_engine_streams_each_request_on_its_own_schedule(lm, vocab):  # noqa: F811
    """Chunks of every TTS/VC request as its frames come: contiguous, each sample once, the
    utterance of its tokens (exactly, for a frame-local synthesizer); the first window
    waits for chunk_frames new frames; rejected requests get one chunk with the error."""
    import types

    from gpa_jax.sampling.streaming import EngineAudio, stream_engine_audio
    from tests.sampling.test_streaming import _local_synth

    sampler = _sampler(lm, vocab)
    hop = 8
    codec = types.SimpleNamespace(hop_length=hop)
    requests = [r for r in _mixed_requests() if r.task != "asr"]
    requests += [Request.tts("", _codes(10, 1), id="bad"), Request.asr(_codes(9, 2), id="asr")]
    engine = Engine(sampler, slots=2, steps_per_call=2, max_queue=2)
    chunks = list(stream_engine_audio(engine, codec, requests, chunk_frames=5, chunk_growth=2.0,
                                      context_frames=3, overlap_frames=1,
                                      synthesize=_local_synth(hop)))  # fmt: skip
    by_index = {}
    for c in chunks:
        by_index.setdefault(c.index, []).append(c)
    assert "empty text" in by_index[4][0].error and "not 'asr'" in by_index[5][0].error
    results = Engine(sampler, slots=2).generate(requests[:4])
    for i, result in enumerate(results):
        got = by_index[i]
        assert [c.final for c in got] == [False] * (len(got) - 1) + [True]
        assert [c.start for c in got] == np.cumsum([0] + [len(c.wav) for c in got])[:-1].tolist()
        wav = np.concatenate([c.wav for c in got])
        np.testing.assert_allclose(wav, np.repeat(result.rvq1 / 100.0, hop), atol=1e-6)
        if len(result.rvq1) > 5:  # held-back overlap aside, the first window had 5 frames
            assert len(got) > 1 and len(got[0].wav) >= (5 - 1) * hop
    # stream=False: one chunk, the whole utterance, when the request ends.
    audio = EngineAudio(engine, codec, synthesize=_local_synth(hop))
    ticket = engine.submit(requests[0])
    audio.track(ticket, stream=False)
    out = []
    while not engine.idle:
        out += audio.feed(engine.step())
    assert [c.final for _, c in out] == [True] and out[0][0] is ticket
    np.testing.assert_allclose(out[0][1].wav, np.repeat(ticket.result.rvq1 / 100.0, hop))
