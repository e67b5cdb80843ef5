"""KV-cache decoding: cache logits == full recompute, batching, stops, masks, sampling knobs.

Tolerance: the cache path runs the same float32 ops on the same values, in another
order (padding, one token at a time); logits agree to 1e-4 absolute (they are O(10)).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpa_jax.sampling import decode
from tests.sampling import helpers as h

ATOL = 1e-4


@pytest.mark.parametrize(
    "overrides",
    [{}, {"prefix_bidirectional": False}, {"scan_layers": True}],
    ids=["prefix", "causal", "scan"],
)
def test_cache_logits_equal_full_recompute(overrides):
    m = h.model(**overrides)
    lengths = [9, 4, 6]
    prompts = h.prompts(lengths)
    cont = np.random.default_rng(1).integers(2, h.BASE.vocab_size, (3, 5)).astype(np.int32)
    P, T = max(lengths), cont.shape[1]
    b = h.batch(prompts, max_new=T)
    pad = P - b.lengths
    slots = np.arange(P)[None]
    seg = (slots >= pad[:, None]).astype(np.int32)
    pos = np.maximum(slots - pad[:, None], 0)

    @nnx.jit
    def run(m, tokens, seg, pos, cont):
        hid, cache = m.prefill(tokens, seg, pos, seg, P + T)
        steps = [m.logits(hid)]
        for t in range(T):
            kv = (jnp.arange(P + T)[None] >= pad[:, None]) & (jnp.arange(P + T)[None] <= P + t)
            logits, cache = m.decode_step(
                cont[:, t : t + 1], jnp.asarray(b.lengths + t)[:, None], kv, cache, P + t
            )
            steps.append(logits)
        return jnp.concatenate(steps, axis=1)

    logits = np.asarray(run(m, *(jnp.asarray(a) for a in (b.tokens, seg, pos, cont))))
    got = [logits[i, pad[i] :] for i in range(3)]
    for i in range(3):
        want = h.full_logits(m, prompts[i], cont[i])
        np.testing.assert_allclose(got[i], want, atol=ATOL)


def test_greedy_decode_equals_recompute_and_batched_equals_one_by_one():
    m = h.model()
    dec = decode.Decoder(m)
    prompts = h.prompts([7, 3, 12, 5])
    b = h.batch(prompts, max_new=10, prompt_length=16, batch_size=4)
    out = dec(b, 16)
    for i, p in enumerate(prompts):
        want = h.greedy_reference(m, p, 10, id_range=(2, h.BASE.vocab_size))
        assert out["tokens"][i, :10].tolist() == want
        assert (out["tokens"][i, 10:] == decode.PAD_ID).all()
        assert out["num_tokens"][i] == 10 and not out["hit_eos"][i]
        alone = dec(h.batch([p], max_new=10, prompt_length=16, batch_size=4), 16)
        np.testing.assert_array_equal(alone["tokens"][0], out["tokens"][i])


def test_sampled_batched_equals_one_by_one():
    m = h.model()
    dec = decode.Decoder(m)
    prompts = h.prompts([6, 11, 4])
    kw = dict(max_new=8, temperature=1.0, top_k=20, top_p=0.9, prompt_length=16, batch_size=4)
    out = dec(h.batch(prompts, seeds=[5, 6, 7], **kw), 16)
    for i, p in enumerate(prompts):
        alone = dec(h.batch([p], seeds=[5 + i], **kw), 16)
        np.testing.assert_array_equal(alone["tokens"][0], out["tokens"][i])
    other = dec(h.batch(prompts, seeds=[50, 60, 70], **kw), 16)
    assert (other["tokens"] != out["tokens"]).any()  # the seed matters


def test_stops_on_eos_and_on_each_rows_max_length():
    base = h.model()
    prompts = h.prompts([5, 8])
    ref = [h.greedy_reference(base, p, 12) for p in prompts]
    # Make <eos> tie with the token row 0 emits at step 4 (tied embeddings: same logit,
    # and argmax takes the lower id): greedy then ends there with <eos>.
    target = ref[0][4]
    stop_at = ref[0].index(target)
    m = nnx.clone(base)
    table = m.embedder.embedding[...]
    m.embedder.embedding[...] = table.at[decode.EOS_ID].set(table[target])
    dec = decode.Decoder(m)
    out = dec(h.batch(prompts, max_new=[12, 6], allow_eos=True, prompt_length=8), 16)
    assert out["hit_eos"][0] and out["num_tokens"][0] == stop_at + 1
    assert out["tokens"][0, :stop_at].tolist() == ref[0][:stop_at]
    assert out["tokens"][0, stop_at] == decode.EOS_ID
    assert (out["tokens"][0, stop_at + 1 :] == decode.PAD_ID).all()
    if target not in ref[1][:6]:
        assert not out["hit_eos"][1] and out["num_tokens"][1] == 6
        assert out["tokens"][1, :6].tolist() == ref[1][:6]
        assert (out["tokens"][1, 6:] == decode.PAD_ID).all()
    # The loop ends once every row has stopped, not at max_steps.
    assert int(out["steps"]) <= 6 + 1 or int(out["steps"]) <= stop_at + 1


def test_id_range_mask_restricts_output():
    m = h.model()
    dec = decode.Decoder(m)
    prompts = h.prompts([6, 9])
    lo, hi = 40, 60
    out = dec(h.batch(prompts, max_new=10, id_range=(lo, hi)), 16)
    assert ((out["tokens"][:, :10] >= lo) & (out["tokens"][:, :10] < hi)).all()
    for i, p in enumerate(prompts):
        assert out["tokens"][i, :10].tolist() == h.greedy_reference(m, p, 10, id_range=(lo, hi))
    sampled = dec(h.batch(prompts, max_new=10, id_range=(lo, hi), temperature=1.5), 16)
    assert ((sampled["tokens"][:, :10] >= lo) & (sampled["tokens"][:, :10] < hi)).all()


def test_top_k_one_and_tiny_top_p_are_greedy():
    m = h.model()
    dec = decode.Decoder(m)
    prompts = h.prompts([6, 9, 3])
    greedy = dec(h.batch(prompts, max_new=10), 16)["tokens"]
    top1 = dec(h.batch(prompts, max_new=10, temperature=1.0, top_k=1), 16)["tokens"]
    tiny_p = dec(h.batch(prompts, max_new=10, temperature=1.0, top_p=1e-6), 16)["tokens"]
    cold = dec(h.batch(prompts, max_new=10, temperature=1e-4), 16)["tokens"]
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(tiny_p, greedy)
    np.testing.assert_array_equal(cold, greedy)


def _first_token_draws(dec, prompt, n, **kw):
    out = dec(h.batch([prompt] * n, max_new=1, seeds=list(range(n)), **kw), 1)
    return out["tokens"][:, 0]


def test_top_k_top_p_and_temperature_shape_the_distribution():
    m = h.model()
    dec = decode.Decoder(m)
    prompt = h.prompts([7])[0]
    logits = h.full_logits(m, prompt, [])[-1].astype(np.float64)
    logits[:2] = -np.inf  # id range (2, V)
    order = np.argsort(-logits)
    # Temperatures relative to the logit gaps (the numpy-init logits are O(10)).
    gap = logits[order[0]] - logits[order[4]]
    n = 256
    # top-k 5: only the 5 best ids, and more than one of them.
    draws = _first_token_draws(dec, prompt, n, temperature=gap, top_k=5)
    assert set(draws.tolist()) <= set(order[:5].tolist()) and len(set(draws.tolist())) > 1
    # top-p 0.5: only the nucleus (the smallest prefix with mass >= 0.5).
    t = 2 * gap
    p = np.exp((logits - logits.max()) / t)
    p /= p.sum()
    cum = np.cumsum(p[order])
    nucleus = set(order[: int(np.searchsorted(cum, 0.5) + 1)].tolist())
    draws = _first_token_draws(dec, prompt, n, temperature=t, top_p=0.5)
    assert set(draws.tolist()) <= nucleus

    # Unrestricted sampling follows softmax(logits / T): the frequency of the best id,
    # at the temperatures that give it probability 0.3 and 0.7.
    def best_prob(temperature):
        q = np.exp((logits - logits.max()) / temperature)
        return q[order[0]] / q.sum()

    for target in (0.3, 0.7):
        lo, hi = 1e-3, 1e3  # best_prob falls as the temperature rises
        for _ in range(60):
            mid = np.sqrt(lo * hi)
            lo, hi = (mid, hi) if best_prob(mid) > target else (lo, mid)
        draws = _first_token_draws(dec, prompt, n, temperature=float(lo))
        freq = np.mean(draws == order[0])
        assert abs(freq - target) < 4 * np.sqrt(target * (1 - target) / n)


def test_repetition_penalty_stops_repeats():
    m = h.model()
    dec = decode.Decoder(m)
    prompts = h.prompts([4, 6, 5])
    plain = dec(h.batch(prompts, max_new=24), 32)["tokens"][:, :24]
    assert any(len(set(r.tolist())) < 24 for r in plain)  # greedy repeats itself here
    pen = dec(h.batch(prompts, max_new=24, penalty=1e6), 32)["tokens"][:, :24]
    for row in pen:
        assert len(set(row.tolist())) == 24


def test_choose_mode_and_make_batch_errors():
    b = h.batch(h.prompts([3, 4]), max_new=4, temperature=[0.0, 1.0], top_k=[0, 20])
    assert decode.choose_mode(b, 128) == decode.Mode(False, 32, False)
    b = h.batch(h.prompts([3]), max_new=4, temperature=1.0, top_p=0.9)
    assert decode.choose_mode(b, 128) == decode.Mode(False, 128, False)
    assert decode.choose_mode(h.batch(h.prompts([3]), max_new=4), 128).greedy
    with pytest.raises(ValueError, match="exceeds prompt_length"):
        h.batch(h.prompts([9]), max_new=4, prompt_length=8)
    with pytest.raises(ValueError, match="max_len"):
        decode.Decoder(h.model())(h.batch(h.prompts([100]), max_new=40), 40)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scanned_layers_decode_inside_the_loop(dtype):
    """nnx.scan over stacked layers runs inside the while_loop (module rebuilt there)."""
    m = h.model(scan_layers=True, dtype=dtype)
    prompts = h.prompts([5, 8])
    out = decode.Decoder(m)(h.batch(prompts, max_new=6), 8)
    assert out["num_tokens"].tolist() == [6, 6]
    if dtype == "float32":
        for i, p in enumerate(prompts):
            assert out["tokens"][i, :6].tolist() == h.greedy_reference(m, p, 6)
