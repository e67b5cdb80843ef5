"""Streaming: chunked decoding gives the one-shot tokens; the crossfader emits every sample
once; streamed TTS audio is the utterance (exactly, for a frame-local synthesizer)."""

import itertools
import types

import numpy as np
import pytest

from gpa_jax.sampling import Request, decode
from gpa_jax.sampling.streaming import Crossfader, stream_audio
from tests.sampling import helpers as h
from tests.sampling.test_sampler import (  # noqa: F401 (fixtures)
    _codes,
    _rows,
    _sampler,
    hybrid_lm,
    lm,
    vocab,
)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_decode_yields_the_one_shot_tokens(chunk):
    dec = decode.Decoder(h.model())
    prompts = h.prompts([6, 11, 4])
    kw = dict(max_new=[9, 14, 5], temperature=[1.0, 0.0, 0.7], top_k=20, top_p=0.9,
              prompt_length=16, batch_size=4, seeds=[5, 6, 7])  # fmt: skip
    batch = h.batch(prompts, **kw)
    whole = dec(batch, 16)
    pieces, last = [], 0
    for lo, hi, tokens, done in dec.stream(batch, 16, chunk):
        assert lo == last and hi - lo == tokens.shape[1] and 0 < hi - lo <= chunk
        pieces.append(tokens)
        last, finished = hi, done
    assert finished.all()
    got = np.concatenate(pieces, axis=1)
    np.testing.assert_array_equal(got, whole["tokens"][:, : got.shape[1]])
    assert (whole["tokens"][:, got.shape[1] :] == decode.PAD_ID).all()


def test_growing_chunks_give_the_same_tokens_in_growing_pieces():
    assert list(itertools.islice(decode.chunk_schedule(3, 2.0, 16), 6)) == [3, 6, 12, 16, 16, 16]
    assert list(itertools.islice(decode.chunk_schedule(5), 3)) == [5, 5, 5]
    with pytest.raises(ValueError, match="growth >= 1"):
        next(decode.chunk_schedule(5, 0.5))
    dec = decode.Decoder(h.model())
    batch = h.batch(h.prompts([6, 11]), max_new=[15, 15], temperature=[1.0, 0.0], top_k=20,
                    top_p=0.9, prompt_length=16, batch_size=2, seeds=[5, 6])  # fmt: skip
    whole = dec(batch, 16)
    pieces = list(dec.stream(batch, 16, 2, growth=2.0, max_chunk_steps=6))
    assert [hi - lo for lo, hi, _, _ in pieces][:3] == [2, 4, 6]
    got = np.concatenate([t for _, _, t, _ in pieces], axis=1)
    np.testing.assert_array_equal(got, whole["tokens"][:, : got.shape[1]])


def test_crossfader_emits_each_sample_once_and_rebuilds_a_consistent_signal():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(1000).astype(np.float32)
    fader, out, pos = Crossfader(overlap=16), [], 0
    for end in (100, 130, 400, 401, 800, 1000):
        start = max(0, pos - 40)  # windows reach back over the held-back samples
        piece = fader.push(signal[start:end], start, final=end == 1000)
        assert fader.emitted == pos + len(piece)
        out.append(piece)
        pos += len(piece)
    # Overlapping decodes that agree crossfade into the signal itself, each sample once.
    np.testing.assert_allclose(np.concatenate(out), signal, atol=1e-6)
    # Disagreeing decodes: the joint ramps from one to the other, nothing repeated.
    fader = Crossfader(overlap=4)
    a = fader.push(np.ones(10, np.float32), 0)
    b = fader.push(np.zeros(10, np.float32), 4, final=True)
    joined = np.concatenate([a, b])
    assert len(joined) == 14 and (joined[:6] == 1).all() and (joined[10:] == 0).all()
    assert np.all(np.diff(joined[5:11]) < 0)  # a monotone fade
    with pytest.raises(ValueError, match="held-back"):
        Crossfader(overlap=4).push(np.ones(10), 3)


def _local_synth(hop):
    """A frame-local 'synthesizer': frame code c -> hop samples of c / 100 (so any window
    of frames decodes to exactly the slice of the whole utterance)."""

    def synth(rvq1s, prompts):
        return [np.repeat(np.asarray(r, np.float32) / 100.0, hop) for r in rvq1s]

    return synth


def test_streamed_tts_is_the_utterance_in_contiguous_chunks(lm, vocab):  # noqa: F811
    sampler = _sampler(lm, vocab, max_batch=4)
    hop = 8
    codec = types.SimpleNamespace(hop_length=hop)  # only hop_length is read with synthesize=
    requests = [
        Request.tts("hello there", _codes(30, 1), id="a", seed=1),
        Request.tts("", _codes(30, 2), id="bad"),
        Request.vc(_codes(20, 3), _codes(30, 4), id="v", seed=2),
        Request.tts("a much longer sentence to say", _codes(30, 5), id="b", seed=3),
    ]
    chunks = list(stream_audio(sampler, codec, requests, chunk_frames=5, context_frames=3,
                               overlap_frames=2, synthesize=_local_synth(hop)))  # fmt: skip
    by_id = {}
    for c in chunks:
        by_id.setdefault(c.id, []).append(c)
    assert [c.final for c in by_id["bad"]] == [True] and "empty text" in by_id["bad"][0].error
    one_shot = {r.id: r for r in sampler.generate([requests[i] for i in (0, 2, 3)])}
    for rid in ("a", "v", "b"):
        got = by_id[rid]
        assert [c.final for c in got] == [False] * (len(got) - 1) + [True]
        assert all(c.error is None for c in got)
        starts = np.cumsum([0] + [len(c.wav) for c in got])[:-1]
        assert [c.start for c in got] == starts.tolist()  # contiguous, nothing repeated
        assert all(x.elapsed_s <= y.elapsed_s for x, y in zip(got, got[1:], strict=False))
        rvq1 = one_shot[rid].rvq1  # the same tokens as one-shot generation
        assert len(rvq1) > 5 and len(got) > 1  # it really streamed
        wav = np.concatenate([c.wav for c in got])
        np.testing.assert_allclose(wav, np.repeat(rvq1 / 100.0, hop), atol=1e-6)


def test_stream_with_the_codec_decoder_matches_one_shot_decoding(lm, vocab):  # noqa: F811
    """RVQ-1-only decoding by the real (untrained) tiny codec: the streamed utterance has
    the one-shot length and stays close to the one-shot decode (windows see left context
    only, so the joints differ a little)."""
    from flax import nnx

    from gpa_jax.codec import api as codec_api
    from gpa_jax.codec.model import Codec
    from gpa_jax.config_utils import load_config

    codec = Codec.from_config(load_config("configs/codec_tiny.py"), rngs=nnx.Rngs(0))
    sampler = _sampler(lm, vocab, max_batch=2)
    request = Request.tts("stream me", _codes(30, 7), id="s", seed=4)
    got = list(stream_audio(sampler, codec, [request], chunk_frames=8, context_frames=8))
    rvq1 = sampler.generate([request])[0].rvq1
    whole = codec_api.decode(codec, rvq1[None])
    wav = np.concatenate([c.wav for c in got])
    assert len(got) > 1 and wav.shape == whole.shape == (len(rvq1) * codec.hop_length,)
    err = np.abs(wav - whole).mean() / (np.abs(whole).mean() + 1e-9)
    assert err < 0.5, err


def test_streamed_hybrid_tts_reads_its_reference_rows_and_gives_the_one_shot_audio(
    hybrid_lm, vocab  # noqa: F811
):
    """A hybrid LM streams like the others: prefill with the reference's rows, then chunks
    of null-row decode steps, the same tokens as one-shot generation."""
    sampler = _sampler(hybrid_lm, vocab)
    hop = 8
    codec = types.SimpleNamespace(hop_length=hop)
    # Seed 3 draws no early <eos>: 20 frames, several chunks.
    request = Request.tts("hello there", _codes(30, 1), reference_features=_rows(30, 1), id="a",
                          seed=3, max_new_tokens=20)  # fmt: skip
    got = list(stream_audio(sampler, codec, [request], chunk_frames=5, context_frames=3,
                            overlap_frames=2, synthesize=_local_synth(hop)))  # fmt: skip
    (one_shot,) = sampler.generate([request])
    assert len(got) > 1 and all(c.error is None for c in got) and got[-1].final
    wav = np.concatenate([c.wav for c in got])
    np.testing.assert_allclose(wav, np.repeat(one_shot.rvq1 / 100.0, hop), atol=1e-6)


def test_streamed_se_renders_with_its_noisy_input_as_the_voice_prompt(vocab):  # noqa: F811
    """SE streams like TTS/VC (the one-shot tokens, contiguous chunks); every window is
    rendered with the noisy input's codes as the voice prompt, through stream_audio and
    through continuous batching. An LM not trained for SE refuses it on one chunk."""
    from gpa_jax.models.config import LMConfig
    from gpa_jax.sampling import Sampler
    from gpa_jax.sampling.config import sampling_config
    from gpa_jax.sampling.engine import Engine
    from gpa_jax.sampling.streaming import stream_engine_audio
    from tests.models.helpers import numpy_model
    from tests.sampling.test_sampler import SE_RATES, _config

    config = _config(vocab.vocab_size)
    config.tasks.rates = SE_RATES
    sampler = Sampler(config, numpy_model(LMConfig.from_config(config.model)), vocab,
                      sampling=sampling_config(max_batch=2))  # fmt: skip
    hop = 8
    prompts = []

    def synth(rvq1s, voice_prompts):
        prompts.extend(np.asarray(p) for p in voice_prompts)
        return _local_synth(hop)(rvq1s, voice_prompts)

    noisy = _codes(24, 7)
    request = Request.se(noisy, id="se", seed=4, max_new_tokens=14)
    (one_shot,) = sampler.generate([request])
    codec = types.SimpleNamespace(hop_length=hop)
    runs = [list(stream_audio(sampler, codec, [request], chunk_frames=4, context_frames=2,
                              overlap_frames=1, synthesize=synth))]  # fmt: skip
    engine = Engine(sampler, slots=2, steps_per_call=3)
    runs.append(list(stream_engine_audio(engine, codec, [request], chunk_frames=4, context_frames=2,
                                         overlap_frames=1, synthesize=synth)))  # fmt: skip
    for chunks in runs:
        assert all(c.error is None for c in chunks) and len(chunks) > 1 and chunks[-1].final
        assert [c.start for c in chunks] == np.cumsum([0] + [len(c.wav) for c in chunks])[:-1].tolist()
        wav = np.concatenate([c.wav for c in chunks])
        np.testing.assert_allclose(wav, np.repeat(one_shot.rvq1 / 100.0, hop), atol=1e-6)
    assert prompts and all(np.array_equal(p, noisy) for p in prompts)  # every layer, every window
    untrained = _sampler((_config(vocab.vocab_size), sampler.model), vocab)
    (refused,) = stream_audio(untrained, codec, [Request.se(noisy, id="x")], synthesize=synth)
    assert refused.final and "not trained for se" in refused.error
